//! The in-memory index over every key's history, as etcd's `treeIndex`: an ordered map from
//! key to [`KeyIndex`]. Range reads find revisions here and fetch values from storage. It is
//! rebuilt from storage on start.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::key_range::KeyRange;

use super::key_index::{KeyAt, KeyIndex};
use super::revision::Revision;

#[derive(Debug, Default)]
pub struct TreeIndex {
    // Boxed slices: a key needs no spare capacity, and the map holds a million of them.
    keys: BTreeMap<Box<[u8]>, KeyIndex>,
}

impl TreeIndex {
    /// Records a put of `key` whose stored record is `size` bytes (0: not known).
    pub fn put(&mut self, key: &[u8], rev: Revision, size: u32) {
        self.keys.entry(key.into()).or_default().put(rev, size);
    }

    pub fn restore_put(
        &mut self,
        key: &[u8],
        rev: Revision,
        created: i64,
        version: i64,
        size: u32,
    ) {
        self.keys
            .entry(key.into())
            .or_default()
            .restore_put(rev, created, version, size);
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
        self.range_after(key, false, end, at)
    }

    /// [`TreeIndex::range`] from `start` on (`start` itself left out if `exclusive`), for a
    /// walk that resumes where it stopped.
    pub fn range_after<'a>(
        &'a self,
        start: &'a [u8],
        exclusive: bool,
        end: &'a [u8],
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], KeyAt)> + 'a {
        self.entries_after(start, exclusive, end)
            .filter_map(move |(k, ki)| ki.get(at).map(|a| (&**k, a)))
    }

    /// One chunk of a walk: at most `max` keys of the range from `start` on, alive at `at`
    /// or not (a range of mostly deleted keys costs its walk too); `f` gets those alive.
    /// Returns the last key visited when the chunk ended before the range did.
    pub fn visit_chunk(
        &self,
        start: &[u8],
        exclusive: bool,
        end: &[u8],
        at: i64,
        max: usize,
        mut f: impl FnMut(&[u8], KeyAt),
    ) -> Option<Vec<u8>> {
        for (n, (k, ki)) in self.entries_after(start, exclusive, end).enumerate() {
            if let Some(a) = ki.get(at) {
                f(k, a);
            }
            if n + 1 == max {
                return Some(k.to_vec());
            }
        }
        None
    }

    /// Every entry of the range from `start` on, alive or not.
    fn entries_after<'a>(
        &'a self,
        start: &'a [u8],
        exclusive: bool,
        end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a KeyIndex)> + 'a {
        let bounds = KeyRange::new(start, end).bounds().map(|(lo, hi)| {
            let lo = match lo {
                Bound::Included(k) if exclusive => Bound::Excluded(k),
                lo => lo,
            };
            (lo, hi)
        });
        let bounds = bounds.filter(|(lo, hi)| match (lo, hi) {
            // A resumed walk of a single key has nothing after it.
            (Bound::Excluded(a), Bound::Included(b)) => a < b,
            _ => true,
        });
        bounds
            .map(|b| self.keys.range::<[u8], _>(b))
            .into_iter()
            .flatten()
    }

    /// Compacts every key at `at`; returns the revisions storage must delete.
    #[cfg(test)]
    pub fn compact(&mut self, at: i64) -> Vec<(Revision, bool)> {
        let mut removed = Vec::new();
        let mut from = None;
        loop {
            let next = self.compact_chunk(from.as_deref(), usize::MAX, at, &mut removed);
            match next {
                Some(k) => from = Some(k),
                None => return removed,
            }
        }
    }

    /// Compacts at `at` up to `max` keys from `from` on (the first key when `None`),
    /// pushing the revisions storage must delete to `removed`; returns the key to go on
    /// from, or `None` when the walk is done.
    pub fn compact_chunk(
        &mut self,
        from: Option<&[u8]>,
        max: usize,
        at: i64,
        removed: &mut Vec<(Revision, bool)>,
    ) -> Option<Box<[u8]>> {
        let lo = from.map_or(Bound::Unbounded, Bound::Included);
        let mut emptied = Vec::new();
        let mut next = None;
        for (n, (k, ki)) in self
            .keys
            .range_mut::<[u8], _>((lo, Bound::Unbounded))
            .enumerate()
        {
            if n == max {
                next = Some(k.clone());
                break;
            }
            ki.compact(at, removed);
            if ki.is_empty() {
                emptied.push(k.clone());
            }
        }
        for k in emptied {
            self.keys.remove(&k);
        }
        next
    }

    /// What a compaction at `at` keeps of up to `max` keys from `from` on (etcd's
    /// `treeIndex.Keep`, in chunks); returns the key to go on from, or `None` when done.
    pub fn keep_chunk(
        &self,
        from: Option<&[u8]>,
        max: usize,
        at: i64,
        kept: &mut std::collections::HashSet<Revision>,
    ) -> Option<Box<[u8]>> {
        let lo = from.map_or(Bound::Unbounded, Bound::Included);
        for (n, (k, ki)) in self
            .keys
            .range::<[u8], _>((lo, Bound::Unbounded))
            .enumerate()
        {
            if n == max {
                return Some(k.clone());
            }
            kept.extend(ki.kept_at(at));
        }
        None
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
            ti.put(k.as_bytes(), Revision::new(2 + i as i64, 0), 0);
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
        ti.put(b"a", Revision::new(2, 0), 0);
        assert!(ti.tombstone(b"a", Revision::new(3, 0)));
        ti.put(b"b", Revision::new(4, 0), 0);
        let removed = ti.compact(4);
        assert_eq!(removed.len(), 2);
        assert_eq!(ti.len(), 1);
    }
}
