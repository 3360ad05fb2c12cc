//! The in-memory index over every key's history, as etcd's `treeIndex`: an ordered map from
//! key to [`KeyIndex`]. Range reads find revisions here and fetch values from storage. It is
//! rebuilt from storage on start.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::key_index::{KeyAt, KeyIndex};
use super::revision::Revision;

#[derive(Debug, Default)]
pub struct TreeIndex {
    // Boxed slices: a key needs no spare capacity, and the map holds a million of them.
    keys: BTreeMap<Box<[u8]>, KeyIndex>,
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys a request names: `end` empty means the single key, `[0]` every key from `key`
/// on, anything else the half-open range `[key, end)`.
fn bounds<'a>(key: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    match end {
        [] => Some((Bound::Included(key), Bound::Included(key))),
        [0] => Some((Bound::Included(key), Bound::Unbounded)),
        _ if end > key => Some((Bound::Included(key), Bound::Excluded(end))),
        // An empty or inverted range selects nothing (and BTreeMap::range would panic on it).
        _ => None,
    }
}

impl TreeIndex {
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        self.keys.entry(key.into()).or_default().put(rev);
    }

    pub fn restore_put(&mut self, key: &[u8], rev: Revision, created: Revision, version: i64) {
        self.keys
            .entry(key.into())
            .or_default()
            .restore_put(rev, created, version);
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> bool {
        self.keys.get_mut(key).is_some_and(|ki| ki.tombstone(rev))
    }

    /// Takes back the newest put of `key`.
    pub fn undo_put(&mut self, key: &[u8]) {
        if let Some(ki) = self.keys.get_mut(key) {
            ki.undo_put();
            if ki.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Takes back the newest tombstone of `key`.
    pub fn undo_tombstone(&mut self, key: &[u8]) {
        if let Some(ki) = self.keys.get_mut(key) {
            ki.undo_tombstone();
        }
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<KeyAt> {
        self.keys.get(key).and_then(|ki| ki.get(at))
    }

    /// Keys alive at `at` in the range, in key order.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        end: &'a [u8],
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], KeyAt)> + 'a {
        let iter = bounds(key, end).map(|b| self.keys.range::<[u8], _>(b));
        iter.into_iter()
            .flatten()
            .filter_map(move |(k, ki)| ki.get(at).map(|a| (&**k, a)))
    }

    /// Compacts every key at `at`; returns the revisions storage must delete.
    pub fn compact(&mut self, at: i64) -> Vec<(Revision, bool)> {
        let mut removed = Vec::new();
        self.keys.retain(|_, ki| {
            ki.compact(at, &mut removed);
            !ki.is_empty()
        });
        removed
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_forms_select_the_right_keys() {
        let mut ti = TreeIndex::default();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            ti.put(k.as_bytes(), Revision::new(2 + i as i64, 0));
        }
        let keys = |k: &str, e: &[u8]| -> Vec<Vec<u8>> {
            ti.range(k.as_bytes(), e, 10)
                .map(|(k, _)| k.to_vec())
                .collect()
        };
        assert_eq!(keys("b", b""), vec![b"b".to_vec()]);
        assert_eq!(keys("b", b"\0"), vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(keys("a", b"c"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(keys("c", b"a").is_empty());
        assert_eq!(ti.range(b"a", b"\0", 3).count(), 2);
    }

    #[test]
    fn compaction_removes_dead_keys() {
        let mut ti = TreeIndex::default();
        ti.put(b"a", Revision::new(2, 0));
        assert!(ti.tombstone(b"a", Revision::new(3, 0)));
        ti.put(b"b", Revision::new(4, 0));
        let removed = ti.compact(4);
        assert_eq!(removed.len(), 2);
        assert_eq!(ti.len(), 1);
    }
}
