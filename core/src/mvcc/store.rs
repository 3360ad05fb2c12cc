//! The revisioned key space on fjall.
//!
//! Storage layout (one fjall database, shared with the raft log so one journal sync covers
//! both):
//! - keyspace `kv`: revision key → encoded `mvccpb.KeyValue` (a tombstone record holds only
//!   the key and its mod revision). Every key's whole history, until compaction.
//! - keyspace `meta`: the applied raft index, the current and the compacted revision, written
//!   in the same atomic batch as the state they describe.
//!
//! The in-memory [`TreeIndex`] sits behind one lock. The apply loop holds it exclusively for
//! one batch of raft entries ([`WriteBatch`]), so a reader sees either none or all of a
//! batch; the background compactor holds it for one chunk of keys at a time. A reader holds
//! it only while it walks the index: the values come from a database snapshot taken with
//! the read revision, so a long range never keeps the apply loop waiting for its values.
//! Revisions that headers and metrics report are published after each commit and read
//! without the lock.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cairn_api::cairnpb::ClusterState;
use cairn_api::etcdserverpb::{AlarmMember, AlarmType};
use cairn_api::mvccpb::KeyValue;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Slice, Snapshot};
use prost::Message;

use super::compactor::Compactor;
use super::key_index::KeyAt;
use super::load::load_state;
use super::revision::Revision;
use super::tree_index::TreeIndex;
use super::write::WriteBatch;
use crate::auth::AuthStore;
use crate::error::Error;
use crate::lease::Lessor;

pub(super) const META_APPLIED: &[u8] = b"applied_index";
pub(super) const META_APPLIED_TERM: &[u8] = b"applied_term";
/// The raft configuration (an encoded eraftpb.ConfState) as of the applied index.
pub(super) const META_CONF_STATE: &[u8] = b"conf_state";
/// The membership (an encoded cairnpb.ClusterState) as of the applied index.
pub(super) const META_MEMBERS: &[u8] = b"members";
// Keyspace `lease` maps lease id → granted TTL (both big-endian i64).
pub const META_CURRENT_REV: &[u8] = b"current_rev";
/// The raised alarms (an encoded etcdserverpb.AlarmResponse).
pub const META_ALARMS: &[u8] = b"alarms";
/// The compaction point: reads below it fail (etcd's scheduledCompactRev).
pub const META_COMPACT_REV: &[u8] = b"compact_rev";
/// Up to where history is physically gone (etcd's finishedCompactRev).
pub(super) const META_FINISHED_COMPACT_REV: &[u8] = b"finished_compact_rev";

/// Keys the index walks per hold of the state lock during a read, so a range over a
/// million keys lets the apply loop in between.
#[cfg(not(test))]
const WALK_CHUNK: usize = 10_000;
/// Small in unit tests, so ranges cross many chunk boundaries.
#[cfg(test)]
const WALK_CHUNK: usize = 7;

/// Options of a raw range read (etcd's `mvcc.RangeOptions`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many keys (0: all).
    pub limit: i64,
    /// Read at this revision (<= 0: the newest).
    pub rev: i64,
    /// Only count the keys.
    pub count_only: bool,
}

/// What a raw range read found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range at the read revision (before `limit`).
    pub count: i64,
    /// The store's current revision (not the read revision), as etcd reports it.
    pub rev: i64,
}

/// One record of history: its main revision, whether it is a deletion, and the record.
pub type HistoryRecord = (i64, bool, KeyValue);

/// Anything a range can be read from: a read transaction, or a write transaction that must
/// see its own earlier changes.
pub trait ReadView {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, Error>;
    /// The revision reads without an explicit revision see.
    fn rev(&self) -> i64;
}

pub(super) struct State {
    pub(super) index: TreeIndex,
    pub(super) current_rev: i64,
    /// The compaction point (scheduled; the compactor removes the history behind it).
    pub(super) compact_rev: i64,
    pub(super) applied_index: u64,
    pub(super) applied_term: u64,
    pub(super) alarms: Vec<AlarmMember>,
    /// Bumped when a snapshot replaces the state, so a compaction pass over the old index
    /// never deletes from the new one.
    pub(super) epoch: u64,
}

/// What readers see without the state lock: set after each batch is committed, so they
/// never report a revision that is not in storage.
#[derive(Default)]
pub(super) struct Published {
    pub(super) current_rev: AtomicI64,
    pub(super) compact_rev: AtomicI64,
    pub(super) applied_index: AtomicU64,
}

impl Published {
    pub(super) fn set(&self, s: &State) {
        self.current_rev.store(s.current_rev, Ordering::Release);
        self.compact_rev.store(s.compact_rev, Ordering::Release);
        self.applied_index.store(s.applied_index, Ordering::Release);
    }
}

/// One record of a snapshot: its keyspace, key and value.
pub type Record = (Space, Vec<u8>, Vec<u8>);

/// Which keyspace a snapshot record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Kv = 0,
    Meta = 1,
    Lease = 2,
    /// Users, roles, permissions and the auth switch.
    Auth = 3,
}

impl Space {
    pub fn from_tag(tag: u8) -> Option<Space> {
        match tag {
            0 => Some(Space::Kv),
            1 => Some(Space::Meta),
            2 => Some(Space::Lease),
            3 => Some(Space::Auth),
            _ => None,
        }
    }
}

/// Options of every keyspace in a member's database. Memtables of 16 MiB rather than
/// fjall's 64: the store's and the raft log's memtables take every write, and at 64 MiB
/// each (plus sealed ones waiting to flush) they made a member that just took a million
/// writes hold ~150 MiB more than the same member after a restart.
pub(crate) fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(16 * 1024 * 1024)
}

/// The MVCC store. See the module docs.
pub struct Store {
    pub(super) db: Database,
    /// The database's directory (for its size on disk).
    pub(super) dir: std::path::PathBuf,
    pub(super) kv: Keyspace,
    pub(super) meta: Keyspace,
    pub(super) leases: Keyspace,
    pub(super) lessor: Arc<Lessor>,
    pub(super) state: RwLock<State>,
    pub(super) published: Published,
    /// Bytes of key history and leases (keys plus values), what the storage quota limits.
    /// The compactor lowers it as it deletes, outside the state lock.
    pub(super) size_in_use: AtomicU64,
    pub(super) compactor: Compactor,
    pub(super) reads: Reads,
    /// Users, roles and permissions: replicated state beside the key space.
    pub(super) auth: AuthStore,
}

pub(super) fn read_i64(ks: &Keyspace, key: &[u8]) -> Result<Option<i64>, Error> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt(format!("meta {key:?}")))?;
            Ok(Some(i64::from_be_bytes(b)))
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `db`, rebuilds the index from storage, restores the
    /// leases with their attached keys into `lessor`, and starts the background compactor
    /// (which resumes a compaction a restart interrupted).
    pub fn open(db: &Database, dir: &Path, lessor: Arc<Lessor>) -> Result<Arc<Store>, Error> {
        let kv = db.keyspace("kv", keyspace_options)?;
        let meta = db.keyspace("meta", keyspace_options)?;
        let leases = db.keyspace("lease", keyspace_options)?;
        let (state, size_in_use) = load_state(&kv, &meta, &leases, &lessor, 0)?;
        let finished = read_i64(&meta, META_FINISHED_COMPACT_REV)?.unwrap_or(-1);
        let auth = AuthStore::open(db)?;
        let published = Published::default();
        published.set(&state);
        let store = Arc::new(Store {
            db: db.clone(),
            dir: dir.to_path_buf(),
            kv,
            meta,
            leases,
            lessor,
            state: RwLock::new(state),
            published,
            size_in_use: AtomicU64::new(size_in_use),
            compactor: Compactor::new(finished),
            reads: Reads::default(),
            auth,
        });
        Compactor::start(&store)?;
        Ok(store)
    }
}

impl Store {
    /// Opens the fjall database of a member's data directory.
    pub fn open_database(dir: &Path) -> Result<Database, Error> {
        Ok(Database::builder(dir).open()?)
    }

    /// The state for reading. A poisoned lock means the apply loop panicked in the middle
    /// of a batch, after changing the index and revisions in place but before they were
    /// committed: nothing may be read from it, so this member serves no more reads.
    pub(super) fn read_state(&self) -> Result<RwLockReadGuard<'_, State>, Error> {
        self.state.read().map_err(|_| {
            tracing::error!("the apply loop failed in the middle of a batch; refusing reads");
            Error::Stopped
        })
    }

    /// The state for the apply loop and the compactor (see [`Store::read_state`]).
    pub(super) fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>, Error> {
        self.state.write().map_err(|_| Error::Stopped)
    }

    /// A consistent read view at the current revision. While it lives, the compactor leaves
    /// the history it can read alone (see [`Reads`]).
    pub fn read(&self) -> Result<ReadTxn<'_>, Error> {
        let st = self.read_state()?;
        // Registered under the lock, so a compaction chunk (which takes it exclusively)
        // either sees this read or ran before it began.
        self.reads.enter(st.compact_rev);
        Ok(ReadTxn {
            store: self,
            rev: st.current_rev,
            floor: st.compact_rev,
            epoch: st.epoch,
            snapshot: self.db.snapshot(),
        })
    }

    /// The newest committed revision.
    pub fn current_rev(&self) -> i64 {
        self.published.current_rev.load(Ordering::Acquire)
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// The compaction point: reads below it fail.
    pub fn compact_rev(&self) -> i64 {
        self.published.compact_rev.load(Ordering::Acquire)
    }

    pub fn applied_index(&self) -> u64 {
        self.published.applied_index.load(Ordering::Acquire)
    }

    /// The applied index and the term of the entry at it.
    pub fn applied(&self) -> (u64, u64) {
        match self.read_state() {
            Ok(s) => (s.applied_index, s.applied_term),
            Err(_) => (self.applied_index(), 0),
        }
    }

    /// The stored raft configuration (encoded eraftpb.ConfState), if any.
    pub fn conf_state(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.meta.get(META_CONF_STATE)?.map(|v| v.to_vec()))
    }

    /// The stored membership, if any.
    pub fn members(&self) -> Result<Option<ClusterState>, Error> {
        match self.meta.get(META_MEMBERS)? {
            Some(v) => Ok(Some(ClusterState::decode(v.as_ref())?)),
            None => Ok(None),
        }
    }

    /// Writes the starting point of a new member: the applied index and term its raft log
    /// begins after, its raft configuration and membership. Only for an empty store.
    pub fn bootstrap(
        &self,
        index: u64,
        term: u64,
        conf_state: Vec<u8>,
        members: &ClusterState,
    ) -> Result<(), Error> {
        let mut state = self.write_state()?;
        let mut b = self.db.batch();
        b.insert(
            &self.meta,
            META_APPLIED,
            (index as i64).to_be_bytes().to_vec(),
        );
        b.insert(
            &self.meta,
            META_APPLIED_TERM,
            (term as i64).to_be_bytes().to_vec(),
        );
        b.insert(&self.meta, META_CONF_STATE, conf_state);
        b.insert(&self.meta, META_MEMBERS, members.encode_to_vec());
        b.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        state.applied_index = index;
        state.applied_term = term;
        self.published.set(&state);
        Ok(())
    }

    /// Bytes of key history and leases: what compaction frees and the storage quota limits.
    pub fn size_in_use(&self) -> u64 {
        self.size_in_use.load(Ordering::Relaxed)
    }

    /// The raised alarms.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.read_state()
            .map(|s| s.alarms.clone())
            .unwrap_or_default()
    }

    /// Whether an alarm of this type is raised on any member.
    pub fn alarmed(&self, alarm: AlarmType) -> bool {
        self.read_state()
            .is_ok_and(|s| s.alarms.iter().any(|a| a.alarm == alarm as i32))
    }

    /// A consistent view of the history for the watch sync thread: the compaction point and
    /// the current revision with a snapshot taken together, so a compaction that commits
    /// while a watcher catches up cannot remove records from under it unnoticed.
    pub fn history_view(&self) -> Result<HistoryView<'_>, Error> {
        let st = self.read_state()?;
        Ok(HistoryView {
            store: self,
            compact_rev: st.compact_rev,
            current_rev: st.current_rev,
            snapshot: self.db.snapshot(),
        })
    }

    /// Starts applying a batch of raft entries; only the apply loop calls this.
    pub fn write_batch(&self) -> Result<WriteBatch<'_>, Error> {
        Ok(WriteBatch::new(self, self.write_state()?))
    }

    /// Waits (up to `limit`) until the engine has no flush or compaction running, so its
    /// files stop changing; true if it got there. Only meaningful once writes have stopped.
    pub fn quiesce(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        true
    }

    /// Forces everything written so far to disk (used on clean shutdown).
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// The record at `rev`: from `pending` (written in this batch, not yet in fjall), else
    /// from `from` (a snapshot, or the live keyspace for the apply loop).
    pub(super) fn load(
        &self,
        from: Option<&Snapshot>,
        rev: Revision,
        pending: Option<&HashMap<Revision, KeyValue>>,
    ) -> Result<KeyValue, Error> {
        if let Some(kv) = pending.and_then(|p| p.get(&rev)) {
            return Ok(kv.clone());
        }
        Ok(KeyValue::decode(self.record(from, rev)?.as_ref())?)
    }

    /// The stored record of the put at `rev` (an encoded `KeyValue`), from `from` if given.
    pub(super) fn record(&self, from: Option<&Snapshot>, rev: Revision) -> Result<Slice, Error> {
        let key = rev.to_key(false);
        let bytes = match from {
            Some(snap) => snap.get(&self.kv, &key)?,
            None => self.kv.get(&key)?,
        };
        bytes.ok_or_else(|| Error::Corrupt(format!("revision {}/{} missing", rev.main, rev.sub)))
    }
}

/// Checks a read revision against the current and the compacted one; returns the revision
/// to read at.
pub(super) fn read_rev(opts: &RangeOptions, cur_rev: i64, compact_rev: i64) -> Result<i64, Error> {
    if opts.rev > cur_rev {
        return Err(Error::FutureRev);
    }
    let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
    if rev < compact_rev {
        return Err(Error::Compacted);
    }
    Ok(rev)
}

/// A read-only view at one revision. It holds no lock: each range walks the index under
/// the shared lock (chunk by chunk) and reads the values from the snapshot taken with the
/// revision, which compaction cannot change.
pub struct ReadTxn<'a> {
    pub(super) store: &'a Store,
    pub(super) rev: i64,
    /// The compaction point when the view was taken: the oldest revision it may read.
    floor: i64,
    epoch: u64,
    pub(super) snapshot: Snapshot,
}

impl Drop for ReadTxn<'_> {
    fn drop(&mut self) {
        self.store.reads.leave(self.floor);
    }
}

/// The reads in progress, by the compaction point they started at. A compaction chunk at
/// point T waits until none that began below T is left, so a read never finds the history
/// it may read (at or above its own start point) removed from the index under it.
#[derive(Default)]
pub(super) struct Reads {
    by_floor: std::sync::Mutex<std::collections::BTreeMap<i64, usize>>,
    left: std::sync::Condvar,
}

impl Reads {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<i64, usize>> {
        // Each operation is one map change.
        self.by_floor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, floor: i64) {
        *self.lock().entry(floor).or_default() += 1;
    }

    fn leave(&self, floor: i64) {
        let mut m = self.lock();
        if let Some(n) = m.get_mut(&floor) {
            *n -= 1;
            if *n == 0 {
                m.remove(&floor);
                self.left.notify_all();
            }
        }
    }

    /// Waits up to `limit` until no read that began below `point` is in progress; true if
    /// none is.
    pub(super) fn wait_below(&self, point: i64, limit: std::time::Duration) -> bool {
        let m = self.lock();
        let (m, _) = self
            .left
            .wait_timeout_while(m, limit, |m| m.keys().next().is_some_and(|f| *f < point))
            .unwrap_or_else(|p| p.into_inner());
        m.keys().next().is_none_or(|f| *f >= point)
    }
}

impl ReadTxn<'_> {
    /// The compaction point now.
    pub fn compact_rev(&self) -> i64 {
        self.store.compact_rev()
    }

    /// Walks the keys alive at `rev` in the range, in key order, handing each to `take`;
    /// returns how many there were.
    pub(super) fn walk(
        &self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        mut take: impl FnMut(&KeyAt),
    ) -> Result<i64, Error> {
        let mut count = 0i64;
        let mut from: Option<Vec<u8>> = None;
        loop {
            let st = self.store.read_state()?;
            // A snapshot restored meanwhile replaced the index this view's data belongs to.
            if st.epoch != self.epoch {
                return Err(Error::Timeout);
            }
            // No compaction removes what this read needs: the compactor waits for reads
            // below its point (`Store::reads`).
            let start = from.as_deref().unwrap_or(key);
            let last =
                st.index
                    .visit_chunk(start, from.is_some(), end, rev, WALK_CHUNK, |_, at| {
                        count += 1;
                        take(&at);
                    });
            drop(st);
            match last {
                // The walk goes on after the last key it took.
                Some(k) => from = Some(k),
                None => return Ok(count),
            }
        }
    }
}

impl ReadView for ReadTxn<'_> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, Error> {
        let rev = read_rev(&opts, self.rev, self.store.compact_rev())?;
        let limit = if opts.limit > 0 {
            opts.limit as usize
        } else {
            usize::MAX
        };
        let mut revs = Vec::new();
        let count = self.walk(key, end, rev, |at| {
            if !opts.count_only && revs.len() < limit {
                revs.push(at.modified);
            }
        })?;
        let mut kvs = Vec::with_capacity(revs.len());
        for r in revs {
            kvs.push(self.store.load(Some(&self.snapshot), r, None)?);
        }
        Ok(RangeResult {
            kvs,
            count,
            rev: self.rev,
        })
    }

    fn rev(&self) -> i64 {
        self.rev
    }
}

/// See [`Store::history_view`].
pub struct HistoryView<'a> {
    store: &'a Store,
    pub compact_rev: i64,
    pub current_rev: i64,
    snapshot: Snapshot,
}

impl HistoryView<'_> {
    /// Committed changes with revisions in `from..=to`, in revision order, as (revision,
    /// tombstone, record). Stops early at a revision boundary once `limit` records are read;
    /// the second value is the last revision fully read. Below the compaction point records
    /// may be gone; callers check `compact_rev` first.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<(Vec<HistoryRecord>, i64), Error> {
        let mut out: Vec<HistoryRecord> = Vec::new();
        let start = Revision::new(from.max(0), 0).to_key(false);
        let end = Revision::new(to.saturating_add(1), 0).to_key(false);
        for item in self.snapshot.range(&self.store.kv, start..end) {
            let (k, v) = item.into_inner()?;
            let (rev, tombstone) =
                Revision::from_key(&k).ok_or_else(|| Error::Corrupt("revision key".into()))?;
            if out.len() >= limit && out.last().is_some_and(|(r, _, _)| *r != rev.main) {
                let last = out.last().map_or(from - 1, |(r, _, _)| *r);
                return Ok((out, last));
            }
            let mut kv = KeyValue::decode(v.as_ref())?;
            if tombstone {
                kv.mod_revision = rev.main;
            }
            out.push((rev.main, tombstone, kv));
        }
        Ok((out, to))
    }
}

/// A store of its own in `dir`, for unit tests.
#[cfg(test)]
pub(crate) fn open_for_test(dir: &Path) -> Arc<Store> {
    let db = Store::open_database(dir).expect("database");
    Store::open(&db, dir, Arc::new(Lessor::new(1))).expect("store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_walked_in_chunks_sees_every_key_once_and_counts_them() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_for_test(dir.path());
        let mut wb = store.write_batch().expect("batch");
        for k in 0..100 {
            let mut t = wb.txn();
            t.put(format!("k{k:03}").as_bytes(), vec![k as u8], 0);
            t.end();
        }
        wb.commit(2, 1).expect("commit");
        let read = |key: &[u8], end: &[u8], limit| {
            let opts = RangeOptions {
                limit,
                ..Default::default()
            };
            store
                .read()
                .expect("view")
                .range(key, end, opts)
                .expect("range")
        };
        let all = read(b"k", b"\0", 0);
        assert_eq!(all.count, 100);
        let keys: Vec<Vec<u8>> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
        let expected: Vec<Vec<u8>> = (0..100).map(|k| format!("k{k:03}").into_bytes()).collect();
        assert_eq!(keys, expected);
        let some = read(b"k010", b"k030", 15);
        assert_eq!((some.count, some.kvs.len()), (20, 15));
        assert_eq!(some.kvs[14].key, b"k024".to_vec());
        assert_eq!(read(b"k007", b"", 0).count, 1);
    }
}
