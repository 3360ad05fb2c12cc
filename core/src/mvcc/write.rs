//! The apply loop's side of the store: a [`WriteBatch`] is one batch of raft entries,
//! committed atomically with the applied index; a [`WriteTxn`] is one request inside it
//! (one revision at most), which either ends or aborts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::RwLockWriteGuard;

use cairn_api::cairnpb::ClusterState;
use cairn_api::etcdserverpb::{AlarmMember, AlarmResponse, AlarmType};
use cairn_api::mvccpb::KeyValue;
use fjall::OwnedWriteBatch;
use prost::Message;

use super::revision::Revision;
use super::store::{
    read_rev, RangeOptions, RangeResult, ReadView, State, Store, META_ALARMS, META_APPLIED,
    META_APPLIED_TERM, META_COMPACT_REV, META_CONF_STATE, META_CURRENT_REV, META_MEMBERS,
};
use crate::error::Error;
use crate::lease::Lessor;

/// The changes of one batch of raft entries, committed atomically with the applied index.
///
/// The index and revisions change in place as requests apply, before the batch commits;
/// readers are kept out by the exclusive lock until [`WriteBatch::commit`], and a panic in
/// between poisons the lock so that nothing is read from it (see `Store::read_state`).
pub struct WriteBatch<'a> {
    store: &'a Store,
    state: RwLockWriteGuard<'a, State>,
    batch: OwnedWriteBatch,
    /// Values written in this batch, not yet readable from fjall.
    pending: HashMap<Revision, KeyValue>,
    /// Bytes this batch adds to (or, revoking leases, takes from) the quota's accounting.
    size_delta: i64,
    /// A compaction was scheduled: the compactor is woken once the batch is committed.
    compacted: bool,
}

impl<'a> WriteBatch<'a> {
    pub(super) fn new(store: &'a Store, state: RwLockWriteGuard<'a, State>) -> WriteBatch<'a> {
        WriteBatch {
            store,
            state,
            batch: store.db.batch(),
            pending: HashMap::new(),
            size_delta: 0,
            compacted: false,
        }
    }

    /// Begins the changes of one write request (one revision at most).
    pub fn txn(&mut self) -> WriteTxn<'_, 'a> {
        let begin_rev = self.state.current_rev;
        WriteTxn {
            wb: self,
            begin_rev,
            changes: Vec::new(),
            staged: Vec::new(),
            lease_moves: Vec::new(),
        }
    }

    pub fn current_rev(&self) -> i64 {
        self.state.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }

    pub fn lessor(&self) -> &Lessor {
        &self.store.lessor
    }

    /// The store this batch writes to (for the auth store beside the key space).
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// The batch itself, for state kept beside the key space (auth) that commits with it.
    pub fn batch_mut(&mut self) -> &mut OwnedWriteBatch {
        &mut self.batch
    }

    /// Compacts history at `rev`, as etcd's apply step does: reads below it fail from the
    /// moment this batch commits, and the background compactor then removes the records no
    /// read at or above it can reach, in chunks, without holding up writes. The caller has
    /// checked `rev` is in range.
    pub fn compact(&mut self, rev: i64) {
        self.state.compact_rev = rev;
        self.batch.insert(
            &self.store.meta,
            META_COMPACT_REV,
            rev.to_be_bytes().to_vec(),
        );
        self.compacted = true;
        tracing::info!(rev, "compaction scheduled");
    }

    /// Grants a lease; returns its effective TTL.
    pub fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<i64, Error> {
        let ttl = self.store.lessor.grant(id, ttl)?;
        self.size_delta += 16;
        self.batch.insert(
            &self.store.leases,
            id.to_be_bytes().to_vec(),
            ttl.to_be_bytes().to_vec(),
        );
        Ok(ttl)
    }

    /// Revokes a lease: its keys are deleted at one revision, in key order (so every member
    /// produces the same events). Returns the deletions.
    pub fn revoke_lease(&mut self, id: i64) -> Result<Vec<KeyValue>, Error> {
        // Revoked first: the lease hands over its keys instead of copying them, and the
        // deletions then find the keys already detached (an expiry storm revokes a million).
        let keys = self.store.lessor.revoke(id)?;
        let mut txn = self.txn();
        for k in &keys {
            txn.delete_range(k, &[]);
        }
        let changes = txn.end();
        self.size_delta -= 16;
        self.batch
            .remove(&self.store.leases, id.to_be_bytes().to_vec());
        Ok(changes)
    }

    /// Whether an alarm of this type is raised on any member.
    pub fn alarmed(&self, alarm: AlarmType) -> bool {
        self.state.alarms.iter().any(|a| a.alarm == alarm as i32)
    }

    /// Raises (`on`) or clears an alarm; returns it if that changed anything.
    pub fn set_alarm(&mut self, alarm: AlarmMember, on: bool) -> Option<AlarmMember> {
        let alarms = &mut self.state.alarms;
        let present = alarms.iter().position(|a| *a == alarm);
        match (present, on) {
            (None, true) => alarms.push(alarm),
            (Some(i), false) => {
                alarms.remove(i);
            }
            _ => return None,
        }
        let encoded = AlarmResponse {
            header: None,
            alarms: alarms.clone(),
        }
        .encode_to_vec();
        self.batch.insert(&self.store.meta, META_ALARMS, encoded);
        Some(alarm)
    }

    /// Records a raft configuration change (encoded eraftpb.ConfState) and the membership
    /// after it.
    pub fn set_membership(&mut self, conf_state: Option<Vec<u8>>, members: &ClusterState) {
        if let Some(cs) = conf_state {
            self.batch.insert(&self.store.meta, META_CONF_STATE, cs);
        }
        self.batch
            .insert(&self.store.meta, META_MEMBERS, members.encode_to_vec());
    }

    /// Writes the batch and the applied index together; readers see it once this returns.
    pub fn commit(mut self, applied_index: u64, applied_term: u64) -> Result<(), Error> {
        let meta = &self.store.meta;
        let cur = self.state.current_rev;
        self.batch
            .insert(meta, META_CURRENT_REV, cur.to_be_bytes().to_vec());
        self.batch.insert(
            meta,
            META_APPLIED,
            (applied_index as i64).to_be_bytes().to_vec(),
        );
        self.batch.insert(
            meta,
            META_APPLIED_TERM,
            (applied_term as i64).to_be_bytes().to_vec(),
        );
        let batch = std::mem::replace(&mut self.batch, self.store.db.batch());
        batch.commit()?;
        self.state.applied_index = applied_index;
        self.state.applied_term = applied_term;
        self.store.published.set(&self.state);
        let size = &self.store.size_in_use;
        if self.size_delta >= 0 {
            size.fetch_add(self.size_delta as u64, Ordering::Relaxed);
        } else {
            let freed = self.size_delta.unsigned_abs();
            let _ = size.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_sub(freed))
            });
        }
        let (store, compacted) = (self.store, self.compacted);
        // The compactor takes the state lock: release it first.
        drop(self);
        if compacted {
            store.compactor.wake();
        }
        Ok(())
    }
}

/// The changes of one write request: every change gets the revision `begin_rev + 1` with
/// increasing sub revisions; reads see the changes made so far. It either ends (the changes
/// join the batch) or aborts (the index is restored and nothing is written).
pub struct WriteTxn<'b, 'a> {
    wb: &'b mut WriteBatch<'a>,
    begin_rev: i64,
    changes: Vec<KeyValue>,
    /// Storage records of the changes, written to the batch only when the request ends.
    staged: Vec<(Vec<u8>, Vec<u8>)>,
    /// Lease attachments the changes make (key, new lease), applied when the request ends.
    lease_moves: Vec<(Vec<u8>, i64)>,
}

impl WriteTxn<'_, '_> {
    fn next_rev(&self) -> Revision {
        Revision::new(self.begin_rev + 1, self.changes.len() as i64)
    }

    /// Writes `key`; returns the revision of the write.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let rev = self.next_rev();
        let (create_revision, version) = match self.wb.state.index.get(key, rev.main) {
            Some(at) => (at.created, at.version + 1),
            None => (rev.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        let record = kv.encode_to_vec();
        // A record past 4 GiB cannot be (requests are far smaller); 0 would only mean unknown.
        let size = u32::try_from(record.len()).unwrap_or(0);
        self.staged.push((rev.to_key(false), record));
        self.lease_moves.push((key.to_vec(), lease));
        self.wb.state.index.put(key, rev, size);
        self.wb.pending.insert(rev, kv.clone());
        self.changes.push(kv);
        rev.main
    }

    /// Deletes every key alive in the range; returns how many and the revision.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> (i64, i64) {
        let at = self.rev();
        let keys: Vec<Vec<u8>> = self
            .wb
            .state
            .index
            .range(key, end, at)
            .map(|(k, _)| k.to_vec())
            .collect();
        for k in &keys {
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: k.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.staged.push((rev.to_key(true), tomb.encode_to_vec()));
            self.lease_moves.push((k.clone(), 0));
            self.wb.state.index.tombstone(k, rev);
            self.changes.push(tomb);
        }
        if keys.is_empty() && self.changes.is_empty() {
            (0, self.begin_rev)
        } else {
            (keys.len() as i64, self.begin_rev + 1)
        }
    }

    pub fn compact_rev(&self) -> i64 {
        self.wb.state.compact_rev
    }

    pub fn lessor(&self) -> &Lessor {
        &self.wb.store.lessor
    }

    /// Ends the request: the store moves to the new revision if anything changed. Returns
    /// the changes in order (tombstones carry only key and mod revision).
    pub fn end(self) -> Vec<KeyValue> {
        if !self.changes.is_empty() {
            self.wb.state.current_rev = self.begin_rev + 1;
        }
        for (k, v) in self.staged {
            self.wb.size_delta += (k.len() + v.len()) as i64;
            self.wb.batch.insert(&self.wb.store.kv, k, v);
        }
        for (k, lease) in self.lease_moves {
            self.wb.store.lessor.move_key(&k, lease);
        }
        self.changes
    }

    /// Undoes every change of this request: the index and the store are as before it.
    pub fn abort(self) {
        for (sub, kv) in self.changes.iter().enumerate().rev() {
            let rev = Revision::new(self.begin_rev + 1, sub as i64);
            if self.wb.pending.remove(&rev).is_some() {
                self.wb.state.index.undo_put(&kv.key);
            } else {
                self.wb.state.index.undo_tombstone(&kv.key);
            }
        }
    }
}

impl ReadView for WriteTxn<'_, '_> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, Error> {
        let wb = &*self.wb;
        let cur_rev = self.rev();
        let rev = read_rev(&opts, cur_rev, wb.state.compact_rev)?;
        let mut matching = wb.state.index.range(key, end, rev);
        if opts.count_only {
            return Ok(RangeResult {
                kvs: vec![],
                count: matching.count() as i64,
                rev: cur_rev,
            });
        }
        let limit = if opts.limit > 0 {
            opts.limit as usize
        } else {
            usize::MAX
        };
        let mut kvs = Vec::new();
        let mut count = 0i64;
        for (_, at) in matching.by_ref() {
            count += 1;
            if kvs.len() < limit {
                kvs.push(wb.store.load(None, at.modified, Some(&wb.pending))?);
            }
        }
        Ok(RangeResult {
            kvs,
            count,
            rev: cur_rev,
        })
    }

    fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }
}
