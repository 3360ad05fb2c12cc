//! The key ranges etcd requests name with a `(key, range_end)` pair, in one place: Range,
//! DeleteRange, Txn compares, watches and (later) permissions all use the same encoding.

use std::ops::Bound;

/// A range as `BTreeMap::range` takes it.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a `(key, range_end)` pair selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// `range_end` empty: the single key.
    One(&'a [u8]),
    /// `range_end` is `"\0"`: every key from `key` on (with `key` `"\0"` too: every key).
    From(&'a [u8]),
    /// The half-open range `[key, range_end)`.
    Between(&'a [u8], &'a [u8]),
    /// `range_end` at or before `key`: nothing.
    Empty,
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> KeyRange<'a> {
        match end {
            [] => KeyRange::One(key),
            [0] => KeyRange::From(key),
            _ if end > key => KeyRange::Between(key, end),
            _ => KeyRange::Empty,
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::One(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
            KeyRange::Empty => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == KeyRange::Empty
    }

    /// The range as map bounds; `None` when it selects nothing (`BTreeMap::range` panics on
    /// an inverted range).
    pub fn bounds(&self) -> Option<KeyBounds<'a>> {
        match *self {
            KeyRange::One(key) => Some((Bound::Included(key), Bound::Included(key))),
            KeyRange::From(key) => Some((Bound::Included(key), Bound::Unbounded)),
            KeyRange::Between(key, end) => Some((Bound::Included(key), Bound::Excluded(end))),
            KeyRange::Empty => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_selects_etcds_keys() {
        assert!(KeyRange::new(b"b", b"").contains(b"b"));
        assert!(!KeyRange::new(b"b", b"").contains(b"ba"));
        assert!(KeyRange::new(b"b", b"\0").contains(b"z"));
        assert!(!KeyRange::new(b"b", b"\0").contains(b"a"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\0"));
        assert!(KeyRange::new(b"a", b"c").contains(b"b"));
        assert!(!KeyRange::new(b"a", b"c").contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(KeyRange::new(b"c", b"c").is_empty());
        assert_eq!(KeyRange::new(b"c", b"a").bounds(), None);
    }
}
