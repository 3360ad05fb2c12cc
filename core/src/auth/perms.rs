//! One user's key permissions, merged across their roles (etcd's `range_perm_cache`): for
//! reading and for writing, the union of the granted ranges as disjoint intervals ordered
//! by start. A request is allowed when one interval covers its whole range, so a check is
//! one ordered-map lookup, however many roles and permissions the user has.

use std::collections::BTreeMap;

use cairn_api::authpb::{permission::Type, Permission};

/// Where an interval ends (exclusive).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    /// Every key from the start on (`range_end` `"\0"`).
    Unbounded,
}

/// The interval `(key, range_end)` names, as etcd's auth reads it: an empty end is the one
/// key (`[key, key + "\0")`), `"\0"` every key from `key` on, anything else `[key, end)`.
/// `None` when it holds no key.
fn interval(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, End)> {
    let end = match range_end {
        [] => {
            let mut e = key.to_vec();
            e.push(0);
            End::Key(e)
        }
        [0] => End::Unbounded,
        e if e > key => End::Key(e.to_vec()),
        _ => return None,
    };
    Some((key.to_vec(), end))
}

/// Disjoint, non-adjacent intervals by start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Intervals(BTreeMap<Vec<u8>, End>);

impl Intervals {
    fn build(mut all: Vec<(Vec<u8>, End)>) -> Intervals {
        all.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(all.len());
        for (start, end) in all {
            if let Some((_, last_end)) = merged.last_mut() {
                // Overlapping or touching: [a, b) ∪ [b, c) is [a, c).
                let touches = match &*last_end {
                    End::Unbounded => true,
                    End::Key(e) => *e >= start,
                };
                if touches {
                    if end > *last_end {
                        *last_end = end;
                    }
                    continue;
                }
            }
            merged.push((start, end));
        }
        Intervals(merged.into_iter().collect())
    }

    /// Whether `[start, end)` lies inside one interval.
    fn covers(&self, start: &[u8], end: &End) -> bool {
        let below = (std::ops::Bound::Unbounded, std::ops::Bound::Included(start));
        let Some((_, have)) = self.0.range::<[u8], _>(below).next_back() else {
            return false;
        };
        match have {
            End::Unbounded => true,
            End::Key(have) => match end {
                End::Unbounded => false,
                End::Key(want) => want <= have && start < have.as_slice(),
            },
        }
    }
}

/// What one user may read and write.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserPerms {
    read: Intervals,
    write: Intervals,
}

impl UserPerms {
    /// The union of every permission of the user's roles.
    pub fn build<'a>(perms: impl IntoIterator<Item = &'a Permission>) -> UserPerms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for p in perms {
            let Some(iv) = interval(&p.key, &p.range_end) else {
                continue;
            };
            match Type::try_from(p.perm_type) {
                Ok(Type::Read) => read.push(iv),
                Ok(Type::Write) => write.push(iv),
                Ok(Type::Readwrite) => {
                    read.push(iv.clone());
                    write.push(iv);
                }
                Err(_) => {}
            }
        }
        UserPerms {
            read: Intervals::build(read),
            write: Intervals::build(write),
        }
    }

    /// Whether the user may read every key of `(key, range_end)`.
    pub fn can_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        covered(&self.read, key, range_end)
    }

    /// Whether the user may write every key of `(key, range_end)`.
    pub fn can_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        covered(&self.write, key, range_end)
    }
}

fn covered(have: &Intervals, key: &[u8], range_end: &[u8]) -> bool {
    // A request for nothing (an end before its key) is not covered, as in etcd.
    interval(key, range_end).is_some_and(|(start, end)| have.covers(&start, &end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_key_a_range_a_prefix_and_from_key_cover_what_etcd_lets_through() {
        let p = UserPerms::build(&[
            perm(Type::Read, "k1", ""),
            perm(Type::Readwrite, "b", "d"),
            perm(Type::Read, "p/", "p0"),
            perm(Type::Write, "y", "\0"),
            perm(Type::Write, "wo", ""),
        ]);
        // A key permission covers that key only.
        assert!(p.can_read(b"k1", b""));
        assert!(p.can_read(b"k1", b"k1\0"));
        assert!(!p.can_read(b"k1", b"k2"));
        assert!(!p.can_read(b"k1", b"\0"));
        // A range covers its subranges, end exclusive.
        assert!(p.can_read(b"b", b"") && p.can_read(b"bb", b"bc") && p.can_read(b"b", b"d"));
        assert!(!p.can_read(b"d", b"") && !p.can_read(b"b", b"e") && !p.can_read(b"a", b"c"));
        assert!(p.can_write(b"c", b""));
        assert!(p.can_read(b"p/x", b"") && !p.can_read(b"p", b"q"));
        // From-key: everything after, write only.
        assert!(p.can_write(b"zzz", b"") && p.can_write(b"y", b"\0"));
        assert!(!p.can_read(b"y1", b"") && !p.can_write(b"x", b"\0"));
        // Write does not imply read.
        assert!(p.can_write(b"wo", b"") && !p.can_read(b"wo", b""));
        // A request for nothing is not covered.
        assert!(!p.can_read(b"c", b"b"));
    }

    #[test]
    fn coverage_is_by_the_union_of_every_role_s_ranges() {
        let p = UserPerms::build(&[perm(Type::Read, "b", "d"), perm(Type::Read, "d", "f")]);
        assert!(p.can_read(b"b", b"f"));
        assert!(!p.can_read(b"b", b"g"));
        let whole = UserPerms::build(&[perm(Type::Read, "\0", "\0")]);
        assert!(whole.can_read(b"\0", b"\0") && whole.can_read(b"k1", b"\0"));
        assert!(!whole.can_write(b"k1", b""));
    }
}
