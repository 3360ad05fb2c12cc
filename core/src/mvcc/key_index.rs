//! The history of one key, as etcd's `keyIndex`: a list of generations.
//!
//! A generation runs from the put that (re)creates the key to the tombstone that deletes it.
//! The last generation is the current one; it is empty while the key is deleted. Versions
//! count puts inside a generation, so a re-created key starts again at version 1.

use smallvec::SmallVec;

use super::revision::Revision;

#[derive(Debug, Clone, Default, PartialEq)]
struct Generation {
    /// Version of the key at the generation's last revision.
    ver: i64,
    /// Revision that created the key in this generation.
    created: Revision,
    /// Every revision of this generation in order; the last one of a finished (non-current)
    /// generation is its tombstone. Most keys are written once or a few times between
    /// compactions, so one revision is kept inline rather than in a heap allocation of four.
    revs: SmallVec<[Revision; 1]>,
}

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

/// One key's generations; see the module docs. The index holds one per key, so its size is
/// most of a member's memory with many keys: a key never deleted has one generation, kept
/// inline.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyIndex {
    generations: SmallVec<[Generation; 1]>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            generations: smallvec::smallvec![Generation::default()],
        }
    }
}

impl KeyIndex {
    fn current(&mut self) -> &mut Generation {
        // Invariant: there is always at least one (possibly empty) generation.
        let last = self.generations.len() - 1;
        &mut self.generations[last]
    }

    /// Records a put at `rev`.
    pub fn put(&mut self, rev: Revision) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Records a put read back from storage, where earlier history may have been compacted
    /// away: the record itself says when the key was created and which version it is.
    pub fn restore_put(&mut self, rev: Revision, created: Revision, version: i64) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.ver = version;
    }

    /// Records a deletion at `rev`; false if the key is already deleted.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.is_deleted() {
            return false;
        }
        // The tombstone counts as a version of its generation, so versions of the earlier
        // revisions come out right when counted back from the end.
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Takes back the newest [`KeyIndex::put`] (a failed txn is undone in reverse order).
    pub fn undo_put(&mut self) {
        let g = self.current();
        if g.revs.pop().is_some() {
            g.ver -= 1;
        }
    }

    /// Takes back the newest [`KeyIndex::tombstone`].
    pub fn undo_tombstone(&mut self) {
        if self.generations.len() > 1 && self.is_deleted() {
            self.generations.pop();
            self.undo_put();
        }
    }

    /// True while the key does not exist at the newest revision.
    pub fn is_deleted(&self) -> bool {
        self.generations.last().is_none_or(|g| g.revs.is_empty())
    }

    /// True when no history is left (only an empty current generation).
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }

    /// The key as of revision `at`, or None if it did not exist then.
    pub fn get(&self, at: i64) -> Option<KeyAt> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(tail)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            if i != last && tail.main <= at {
                // The generation holding `at` ended with a tombstone at or before it.
                return None;
            }
            if first.main <= at {
                let n = g.revs.iter().rposition(|r| r.main <= at)?;
                return Some(KeyAt {
                    modified: g.revs[n],
                    created: g.created,
                    version: g.ver - (g.revs.len() - n - 1) as i64,
                });
            }
        }
        None
    }

    /// Drops the history that compaction at `at` makes unreachable: every revision at or
    /// below `at` except the newest one of a key still alive at `at`. Each dropped revision
    /// is pushed to `removed` with its tombstone mark, so storage can delete the same records.
    /// The revision a compaction at `at` would keep, as etcd's `keyIndex.keep`: the newest
    /// one at or below `at` in the generation `at` falls in.
    pub fn kept_at(&self, at: i64) -> Option<Revision> {
        let last = self.generations.len() - 1;
        let mut gi = 0;
        while gi < last
            && self.generations[gi]
                .revs
                .last()
                .is_some_and(|t| t.main <= at)
        {
            gi += 1;
        }
        self.generations[gi]
            .revs
            .iter()
            .rev()
            .find(|r| r.main <= at)
            .copied()
    }

    pub fn compact(&mut self, at: i64, removed: &mut Vec<(Revision, bool)>) {
        let last = self.generations.len() - 1;
        // Skip whole generations whose tombstone is at or below `at`: nothing in them is
        // visible at `at` or later.
        let mut gi = 0;
        while gi < last
            && self.generations[gi]
                .revs
                .last()
                .is_some_and(|t| t.main <= at)
        {
            let g = &self.generations[gi];
            let n = g.revs.len();
            removed.extend(g.revs.iter().enumerate().map(|(j, r)| (*r, j + 1 == n)));
            gi += 1;
        }
        let g = &mut self.generations[gi];
        if let Some(keep) = g.revs.iter().rposition(|r| r.main <= at) {
            removed.extend(g.revs.drain(..keep).map(|r| (r, false)));
        }
        self.generations.drain(..gi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_count_puts_and_reset_after_delete() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(3));
        assert!(ki.tombstone(rev(4)));
        assert!(!ki.tombstone(rev(5)));
        ki.put(rev(6));
        assert_eq!(ki.get(1), None);
        assert_eq!(
            ki.get(2),
            Some(KeyAt {
                modified: rev(2),
                created: rev(2),
                version: 1
            })
        );
        assert_eq!(
            ki.get(3),
            Some(KeyAt {
                modified: rev(3),
                created: rev(2),
                version: 2
            })
        );
        assert_eq!(ki.get(4), None);
        assert_eq!(ki.get(5), None);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: rev(6),
                created: rev(6),
                version: 1
            })
        );
    }

    #[test]
    fn compaction_keeps_the_newest_live_revision() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(3));
        ki.put(rev(5));
        let mut removed = vec![];
        ki.compact(4, &mut removed);
        assert_eq!(removed, vec![(rev(2), false)]);
        assert_eq!(ki.get(4).map(|k| k.modified), Some(rev(3)));
        assert_eq!(ki.get(5).map(|k| k.version), Some(3));
    }

    #[test]
    fn kept_at_is_what_compaction_keeps() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(3));
        ki.tombstone(rev(6));
        ki.put(rev(7));
        assert_eq!(ki.kept_at(1), None);
        assert_eq!(ki.kept_at(4), Some(rev(3)));
        // A generation closed at or below `at` keeps nothing.
        assert_eq!(ki.kept_at(6), None);
        assert_eq!(ki.kept_at(9), Some(rev(7)));
        for at in [4, 9] {
            let mut compacted = ki.clone();
            compacted.compact(at, &mut vec![]);
            assert_eq!(compacted.kept_at(at), ki.kept_at(at));
        }
    }

    #[test]
    fn compaction_drops_deleted_generations_and_empties_the_key() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.tombstone(rev(3));
        let mut removed = vec![];
        ki.compact(3, &mut removed);
        assert_eq!(removed, vec![(rev(2), false), (rev(3), true)]);
        assert!(ki.is_empty());
    }

    #[test]
    fn compaction_below_a_tombstone_keeps_the_generation() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        ki.put(rev(3));
        ki.tombstone(rev(6));
        ki.put(rev(7));
        let mut removed = vec![];
        ki.compact(4, &mut removed);
        assert_eq!(removed, vec![(rev(2), false)]);
        assert_eq!(ki.get(4).map(|k| k.version), Some(2));
        assert_eq!(ki.get(6), None);
        assert_eq!(ki.get(7).map(|k| k.version), Some(1));
    }

    #[test]
    fn undo_restores_the_previous_state() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2));
        let before = ki.clone();
        ki.put(rev(3));
        ki.tombstone(rev(4));
        ki.undo_tombstone();
        ki.undo_put();
        assert_eq!(ki, before);
    }

    #[test]
    fn restored_puts_keep_their_recorded_version() {
        let mut ki = KeyIndex::default();
        ki.restore_put(rev(8), rev(2), 4);
        ki.put(rev(9));
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: rev(9),
                created: rev(2),
                version: 5
            })
        );
    }
}
