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
    /// Main revision that created the key in this generation (a create revision has no
    /// sub-revision in the API; 8 bytes a key less, which pays for `size`).
    created: i64,
    /// Every revision of this generation in order; the last one of a finished (non-current)
    /// generation is its tombstone. Most keys are written once or a few times between
    /// compactions, so one revision is kept inline rather than in a heap allocation of four.
    revs: SmallVec<[Revision; 1]>,
    /// Bytes of the stored record of the newest revision (0: not known), so a range can
    /// frame its answer before it reads the records (`mvcc::encoded`).
    size: u32,
}

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    /// Main revision that created the key.
    pub created: i64,
    pub version: i64,
    /// Bytes of the record at `modified`, when the index knows them (0: read it to learn).
    pub size: u32,
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

    /// Records a put at `rev` whose stored record is `size` bytes (0: not known).
    pub fn put(&mut self, rev: Revision, size: u32) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = rev.main;
        }
        g.revs.push(rev);
        g.ver += 1;
        g.size = size;
    }

    /// Records a put read back from storage, where earlier history may have been compacted
    /// away: the record itself says when the key was created and which version it is.
    pub fn restore_put(&mut self, rev: Revision, created: i64, version: i64, size: u32) {
        let g = self.current();
        if g.revs.is_empty() {
            g.created = created;
        }
        g.revs.push(rev);
        g.ver = version;
        g.size = size;
    }

    /// Records a deletion at `rev`; false if the key is already deleted.
    pub fn tombstone(&mut self, rev: Revision) -> bool {
        if self.is_deleted() {
            return false;
        }
        // The tombstone counts as a version of its generation, so versions of the earlier
        // revisions come out right when counted back from the end.
        self.put(rev, 0);
        self.generations.push(Generation::default());
        true
    }

    /// Takes back the newest [`KeyIndex::put`] (a failed txn is undone in reverse order).
    pub fn undo_put(&mut self) {
        let g = self.current();
        if g.revs.pop().is_some() {
            g.ver -= 1;
            // The record before is not the one the size was of.
            g.size = 0;
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
                let newest = n + 1 == g.revs.len();
                return Some(KeyAt {
                    modified: g.revs[n],
                    created: g.created,
                    version: g.ver - (g.revs.len() - n - 1) as i64,
                    size: if newest { g.size } else { 0 },
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
        ki.put(rev(2), 0);
        ki.put(rev(3), 0);
        assert!(ki.tombstone(rev(4)));
        assert!(!ki.tombstone(rev(5)));
        ki.put(rev(6), 0);
        assert_eq!(ki.get(1), None);
        assert_eq!(
            ki.get(2),
            Some(KeyAt {
                modified: rev(2),
                created: 2,
                version: 1,
                size: 0
            })
        );
        assert_eq!(
            ki.get(3),
            Some(KeyAt {
                modified: rev(3),
                created: 2,
                version: 2,
                size: 0
            })
        );
        assert_eq!(ki.get(4), None);
        assert_eq!(ki.get(5), None);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: rev(6),
                created: 6,
                version: 1,
                size: 0
            })
        );
    }

    #[test]
    fn compaction_keeps_the_newest_live_revision() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2), 0);
        ki.put(rev(3), 0);
        ki.put(rev(5), 0);
        let mut removed = vec![];
        ki.compact(4, &mut removed);
        assert_eq!(removed, vec![(rev(2), false)]);
        assert_eq!(ki.get(4).map(|k| k.modified), Some(rev(3)));
        assert_eq!(ki.get(5).map(|k| k.version), Some(3));
    }

    #[test]
    fn kept_at_is_what_compaction_keeps() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2), 0);
        ki.put(rev(3), 0);
        ki.tombstone(rev(6));
        ki.put(rev(7), 0);
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
        ki.put(rev(2), 0);
        ki.tombstone(rev(3));
        let mut removed = vec![];
        ki.compact(3, &mut removed);
        assert_eq!(removed, vec![(rev(2), false), (rev(3), true)]);
        assert!(ki.is_empty());
    }

    #[test]
    fn compaction_below_a_tombstone_keeps_the_generation() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2), 0);
        ki.put(rev(3), 0);
        ki.tombstone(rev(6));
        ki.put(rev(7), 0);
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
        ki.put(rev(2), 0);
        let before = ki.clone();
        ki.put(rev(3), 0);
        ki.tombstone(rev(4));
        ki.undo_tombstone();
        ki.undo_put();
        assert_eq!(ki, before);
    }

    #[test]
    fn restored_puts_keep_their_recorded_version() {
        let mut ki = KeyIndex::default();
        ki.restore_put(rev(8), 2, 4, 0);
        ki.put(rev(9), 0);
        assert_eq!(
            ki.get(9),
            Some(KeyAt {
                modified: rev(9),
                created: 2,
                version: 5,
                size: 0
            })
        );
    }

    #[test]
    fn the_size_is_known_for_the_newest_record_only() {
        let mut ki = KeyIndex::default();
        ki.put(rev(2), 40);
        assert_eq!(ki.get(2).map(|k| k.size), Some(40));
        ki.put(rev(3), 50);
        assert_eq!(ki.get(2).map(|k| k.size), Some(0));
        assert_eq!(ki.get(3).map(|k| k.size), Some(50));
        // Undone, the newest record is one whose size the index never had.
        ki.undo_put();
        assert_eq!(ki.get(3).map(|k| k.size), Some(0));
        ki.tombstone(rev(4));
        ki.put(rev(5), 60);
        assert_eq!(ki.get(5).map(|k| k.size), Some(60));
    }

    #[test]
    fn a_key_written_once_costs_no_more_than_it_did() {
        // Most of a member's memory with many keys is this (docs/storage.md); the size of
        // the newest record fits where the create revision's sub-revision used to be.
        assert_eq!(std::mem::size_of::<Generation>(), 48);
        assert_eq!(std::mem::size_of::<KeyIndex>(), 56);
    }
}
