//! The revisioned key space on fjall.
//!
//! Storage layout (one fjall database, shared with the raft log so one journal sync covers
//! both):
//! - keyspace `kv`: revision key → encoded `mvccpb.KeyValue` (a tombstone record holds only
//!   the key and its mod revision). Every key's whole history, until compaction.
//! - keyspace `meta`: the applied raft index, the current and the compacted revision, written
//!   in the same atomic batch as the state they describe.
//!
//! Readers take a shared lock on the in-memory [`TreeIndex`] and read values from fjall. The
//! apply loop is the only writer: it holds the exclusive lock for one batch of raft entries,
//! so a reader sees either none or all of a batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cairn_api::cairnpb::ClusterState;
use cairn_api::etcdserverpb::{AlarmMember, AlarmResponse, AlarmType};
use cairn_api::mvccpb::KeyValue;
use fjall::Readable;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use prost::Message;

use super::revision::Revision;
use super::tree_index::TreeIndex;
use crate::error::Error;
use crate::lease::Lessor;

const META_APPLIED: &[u8] = b"applied_index";
const META_APPLIED_TERM: &[u8] = b"applied_term";
/// The raft configuration (an encoded eraftpb.ConfState) as of the applied index.
const META_CONF_STATE: &[u8] = b"conf_state";
/// The membership (an encoded cairnpb.ClusterState) as of the applied index.
const META_MEMBERS: &[u8] = b"members";
// Keyspace `lease` maps lease id → granted TTL (both big-endian i64).
const META_CURRENT_REV: &[u8] = b"current_rev";
/// The raised alarms (an encoded etcdserverpb.AlarmResponse).
const META_ALARMS: &[u8] = b"alarms";
const META_COMPACT_REV: &[u8] = b"compact_rev";

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

struct State {
    index: TreeIndex,
    current_rev: i64,
    compact_rev: i64,
    applied_index: u64,
    applied_term: u64,
    /// Bytes of key history and leases (keys plus values), what the storage quota limits.
    size_in_use: u64,
    alarms: Vec<AlarmMember>,
}

/// One record of a snapshot: its keyspace, key and value.
pub type Record = (Space, Vec<u8>, Vec<u8>);

/// Which keyspace a snapshot record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Kv = 0,
    Meta = 1,
    Lease = 2,
}

impl Space {
    pub fn from_tag(tag: u8) -> Option<Space> {
        match tag {
            0 => Some(Space::Kv),
            1 => Some(Space::Meta),
            2 => Some(Space::Lease),
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
    db: Database,
    /// The database's directory (for its size on disk).
    dir: std::path::PathBuf,
    kv: Keyspace,
    meta: Keyspace,
    leases: Keyspace,
    lessor: Arc<Lessor>,
    state: RwLock<State>,
}

fn read_i64(ks: &Keyspace, key: &[u8]) -> Result<Option<i64>, Error> {
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
    /// Opens (or creates) the store in `db`, rebuilds the index from storage and restores
    /// the leases with their attached keys into `lessor`.
    pub fn open(db: &Database, dir: &Path, lessor: Arc<Lessor>) -> Result<Store, Error> {
        let kv = db.keyspace("kv", keyspace_options)?;
        let meta = db.keyspace("meta", keyspace_options)?;
        let leases = db.keyspace("lease", keyspace_options)?;
        let state = load_state(&kv, &meta, &leases, &lessor)?;
        Ok(Store {
            db: db.clone(),
            dir: dir.to_path_buf(),
            kv,
            meta,
            leases,
            lessor,
            state: RwLock::new(state),
        })
    }
}

/// Rebuilds the in-memory state from storage: the key index from the history, the leases
/// with their attached keys into `lessor`, the revisions and applied index from meta.
fn load_state(
    kv: &Keyspace,
    meta: &Keyspace,
    leases: &Keyspace,
    lessor: &Lessor,
) -> Result<State, Error> {
    let mut size_in_use = 0u64;
    for item in leases.iter() {
        let (k, v) = item.into_inner()?;
        size_in_use += (k.len() + v.len()) as u64;
        let id = i64::from_be_bytes(
            k.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("lease id".into()))?,
        );
        let ttl = i64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("lease ttl".into()))?,
        );
        lessor.restore(id, ttl);
    }
    let mut index = TreeIndex::default();
    // The lease of each key's newest record (records come in revision order).
    let mut key_leases: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut max_rev = 1;
    for item in kv.iter() {
        let (k, v) = item.into_inner()?;
        size_in_use += (k.len() + v.len()) as u64;
        let (rev, tombstone) =
            Revision::from_key(&k).ok_or_else(|| Error::Corrupt("revision key".into()))?;
        let kv = KeyValue::decode(v.as_ref())?;
        if tombstone {
            index.tombstone(&kv.key, rev);
            key_leases.remove(&kv.key);
        } else {
            index.restore_put(
                &kv.key,
                rev,
                Revision::new(kv.create_revision, 0),
                kv.version,
            );
            if kv.lease != 0 {
                key_leases.insert(kv.key, kv.lease);
            } else {
                key_leases.remove(&kv.key);
            }
        }
        max_rev = max_rev.max(rev.main);
    }
    for (key, lease) in key_leases {
        lessor.move_key(&key, lease);
    }
    // -1 until the first compaction, as etcd: compacting at 0 is then allowed once.
    let compact_rev = read_i64(meta, META_COMPACT_REV)?.unwrap_or(-1);
    // A fresh store is at revision 1; compaction may have removed the newest record.
    let current_rev = read_i64(meta, META_CURRENT_REV)?.unwrap_or(1).max(max_rev);
    let applied_index = read_i64(meta, META_APPLIED)?.unwrap_or(0) as u64;
    let applied_term = read_i64(meta, META_APPLIED_TERM)?.unwrap_or(0) as u64;
    let alarms = match meta.get(META_ALARMS)? {
        Some(v) => AlarmResponse::decode(v.as_ref())?.alarms,
        None => Vec::new(),
    };
    tracing::info!(
        keys = index.len(),
        current_rev,
        compact_rev,
        applied_index,
        "mvcc store loaded"
    );
    Ok(State {
        index,
        current_rev,
        compact_rev,
        applied_index,
        applied_term,
        size_in_use,
        alarms,
    })
}

/// The leading 32 bits of a digest.
fn leading_u32(digest: &[u8]) -> u32 {
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Store {
    /// Opens the fjall database of a member's data directory.
    pub fn open_database(dir: &Path) -> Result<Database, Error> {
        Ok(Database::builder(dir).open()?)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A poisoned lock means the apply loop panicked mid-batch; the state it guards is
        // still the last fully applied one for readers, so recover the guard.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent read view at the current revision.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            store: self,
            state: self.read_state(),
        }
    }

    pub fn current_rev(&self) -> i64 {
        self.read_state().current_rev
    }

    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn compact_rev(&self) -> i64 {
        self.read_state().compact_rev
    }

    pub fn applied_index(&self) -> u64 {
        self.read_state().applied_index
    }

    /// The applied index and the term of the entry at it.
    pub fn applied(&self) -> (u64, u64) {
        let s = self.read_state();
        (s.applied_index, s.applied_term)
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
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
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
        Ok(())
    }

    /// Walks a consistent copy of the whole state (history, leases, meta), as of a batch
    /// boundary, calling `f` with each record; returns the applied index and term it is at.
    pub fn dump(
        &self,
        mut f: impl FnMut(Space, &[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<(u64, u64), Error> {
        // The apply loop holds the write lock for a whole batch, so a database snapshot
        // opened under the read lock never sees half a batch.
        let (snap, applied) = {
            let s = self.read_state();
            (self.db.snapshot(), (s.applied_index, s.applied_term))
        };
        for (space, ks) in [
            (Space::Meta, &self.meta),
            (Space::Lease, &self.leases),
            (Space::Kv, &self.kv),
        ] {
            for item in snap.iter(ks) {
                let (k, v) = item.into_inner()?;
                f(space, &k, &v)?;
            }
        }
        Ok(applied)
    }

    /// Replaces the whole state with the records of a snapshot, atomically and durably, and
    /// rebuilds the in-memory index and leases from them. Only the apply loop calls this.
    pub fn restore(
        &self,
        records: impl IntoIterator<Item = Result<Record, Error>>,
    ) -> Result<(), Error> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut b = self.db.batch();
        for ks in [&self.meta, &self.leases, &self.kv] {
            for item in ks.iter() {
                b.remove(ks, item.key()?.to_vec());
            }
        }
        for r in records {
            let (space, k, v) = r?;
            let ks = match space {
                Space::Kv => &self.kv,
                Space::Meta => &self.meta,
                Space::Lease => &self.leases,
            };
            b.insert(ks, k, v);
        }
        b.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        self.lessor.clear();
        *state = load_state(&self.kv, &self.meta, &self.leases, &self.lessor)?;
        Ok(())
    }

    /// On-disk size of the database in bytes: the blocks its files occupy (the active
    /// journal is preallocated sparse, so its nominal length would overstate it).
    pub fn db_size(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    #[cfg(unix)]
                    Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                    #[cfg(not(unix))]
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }

    /// Bytes of key history and leases: what compaction frees and the storage quota limits.
    pub fn size_in_use(&self) -> u64 {
        self.read_state().size_in_use
    }

    /// Bytes of the member's bookkeeping (revisions, raft position, membership, alarms):
    /// with [`Store::size_in_use`], the whole state machine.
    pub fn meta_size(&self) -> u64 {
        self.meta
            .iter()
            .filter_map(|item| item.into_inner().ok())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// The raised alarms.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.read_state().alarms.clone()
    }

    /// Whether an alarm of this type is raised on any member.
    pub fn alarmed(&self, alarm: AlarmType) -> bool {
        self.read_state()
            .alarms
            .iter()
            .any(|a| a.alarm == alarm as i32)
    }

    /// Whether a meta record belongs in a backup: the revision counters do; the raft
    /// position, configuration and membership belong to the cluster it came from.
    pub fn is_portable_meta(key: &[u8]) -> bool {
        key == META_CURRENT_REV || key == META_COMPACT_REV
    }

    /// etcd's HashKV: a digest of the key history at revisions up to `rev` (0: the
    /// current one) that compaction kept, with the compacted and current revisions. Every
    /// member that applied the same log gets the same digest.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), Error> {
        let (snap, compact_rev, current_rev) = {
            let s = self.read_state();
            (self.db.snapshot(), s.compact_rev, s.current_rev)
        };
        // As etcd: the compacted revision itself can no longer be hashed.
        if rev > 0 && rev <= compact_rev {
            return Err(Error::Compacted);
        }
        if rev > current_rev {
            return Err(Error::FutureRev);
        }
        let rev = if rev <= 0 { current_rev } else { rev };
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let end = Revision::new(rev.saturating_add(1), 0).to_key(false);
        for item in snap.range(&self.kv, ..end) {
            let (k, v) = item.into_inner()?;
            sha.update(&(k.len() as u32).to_be_bytes());
            sha.update(&k);
            sha.update(&(v.len() as u32).to_be_bytes());
            sha.update(&v);
        }
        Ok((leading_u32(sha.finish().as_ref()), compact_rev, current_rev))
    }

    /// etcd's Hash: a digest of everything a backup holds (key history, leases, revision
    /// counters), with the current revision.
    pub fn hash(&self) -> Result<(u32, i64), Error> {
        // The revision is read from the same copy as everything hashed.
        let mut current_rev = 0;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        self.dump(|space, k, v| {
            if space == Space::Meta && k == META_CURRENT_REV {
                let b: [u8; 8] = v
                    .try_into()
                    .map_err(|_| Error::Corrupt("current revision".into()))?;
                current_rev = i64::from_be_bytes(b);
            }
            if space != Space::Meta || Store::is_portable_meta(k) {
                sha.update(&[space as u8]);
                sha.update(&(k.len() as u32).to_be_bytes());
                sha.update(k);
                sha.update(&(v.len() as u32).to_be_bytes());
                sha.update(v);
            }
            Ok(())
        })?;
        Ok((leading_u32(sha.finish().as_ref()), current_rev))
    }

    /// Rewrites every keyspace of the database (the store's and the raft log's) without
    /// what compaction and log truncation deleted, so their space is returned to the file
    /// system (etcd's defragmentation); flushes memtables first so old journals can go.
    pub fn defragment(&self) -> Result<(), Error> {
        let before = self.db_size();
        for name in self.db.list_keyspace_names() {
            let ks = self.db.keyspace(&name, keyspace_options)?;
            ks.rotate_memtable_and_wait()?;
            ks.major_compact()?;
        }
        self.db.persist(PersistMode::SyncAll)?;
        tracing::info!(before, after = self.db_size(), "defragmented");
        Ok(())
    }

    /// Committed changes with revisions in `from..=to`, in revision order, as (revision,
    /// tombstone, record). Stops early at a revision boundary once `limit` records are read;
    /// the second value is the last revision fully read. Compaction may have removed records
    /// below the compacted revision; callers check it.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<(Vec<HistoryRecord>, i64), Error> {
        let mut out: Vec<HistoryRecord> = Vec::new();
        let start = Revision::new(from.max(0), 0).to_key(false);
        let end = Revision::new(to.saturating_add(1), 0).to_key(false);
        for item in self.kv.range(start..end) {
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

    /// Starts applying a batch of raft entries; only the apply loop calls this.
    pub fn write_batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            store: self,
            state: self.state.write().unwrap_or_else(|p| p.into_inner()),
            batch: self.db.batch(),
            pending: HashMap::new(),
        }
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

    fn load(
        &self,
        rev: Revision,
        pending: Option<&HashMap<Revision, KeyValue>>,
    ) -> Result<KeyValue, Error> {
        if let Some(kv) = pending.and_then(|p| p.get(&rev)) {
            return Ok(kv.clone());
        }
        let bytes = self
            .kv
            .get(rev.to_key(false))?
            .ok_or_else(|| Error::Corrupt(format!("revision {}/{} missing", rev.main, rev.sub)))?;
        Ok(KeyValue::decode(bytes.as_ref())?)
    }
}

fn range_at(
    store: &Store,
    state: &State,
    pending: Option<&HashMap<Revision, KeyValue>>,
    key: &[u8],
    end: &[u8],
    cur_rev: i64,
    opts: RangeOptions,
) -> Result<RangeResult, Error> {
    if opts.rev > cur_rev {
        return Err(Error::FutureRev);
    }
    let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
    if rev < state.compact_rev {
        return Err(Error::Compacted);
    }
    let mut matching = state.index.range(key, end, rev);
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
            kvs.push(store.load(at.modified, pending)?);
        }
    }
    Ok(RangeResult {
        kvs,
        count,
        rev: cur_rev,
    })
}

/// A read-only view; holds the shared lock until dropped.
pub struct ReadTxn<'a> {
    store: &'a Store,
    state: RwLockReadGuard<'a, State>,
}

impl ReadTxn<'_> {
    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }
}

impl ReadView for ReadTxn<'_> {
    fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult, Error> {
        range_at(
            self.store,
            &self.state,
            None,
            key,
            end,
            self.state.current_rev,
            opts,
        )
    }

    fn rev(&self) -> i64 {
        self.state.current_rev
    }
}

/// The changes of one batch of raft entries, committed atomically with the applied index.
pub struct WriteBatch<'a> {
    store: &'a Store,
    state: RwLockWriteGuard<'a, State>,
    batch: OwnedWriteBatch,
    /// Values written in this batch, not yet readable from fjall.
    pending: HashMap<Revision, KeyValue>,
}

impl<'a> WriteBatch<'a> {
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

    fn flush(&mut self) -> Result<(), Error> {
        let batch = std::mem::replace(&mut self.batch, self.store.db.batch());
        batch.commit()?;
        self.pending.clear();
        Ok(())
    }

    /// Compacts history at `rev`: reads below it fail from now on, and the records no read at
    /// or above it can reach are deleted. The caller has checked `rev` is in range.
    pub fn compact(&mut self, rev: i64) -> Result<(), Error> {
        // Earlier puts of this batch must be in fjall before deletions of the same keys are
        // staged, so a record is never inserted and removed in one batch.
        self.flush()?;
        let removed = self.state.index.compact(rev);
        for (r, tombstone) in &removed {
            let key = r.to_key(*tombstone);
            // Only the quota's accounting depends on it: a failed read must not stop apply.
            if let Ok(Some(len)) = self.store.kv.size_of(&key) {
                let freed = (key.len() + len as usize) as u64;
                self.state.size_in_use = self.state.size_in_use.saturating_sub(freed);
            }
            self.batch.remove(&self.store.kv, key);
        }
        self.state.compact_rev = rev;
        self.batch.insert(
            &self.store.meta,
            META_COMPACT_REV,
            rev.to_be_bytes().to_vec(),
        );
        tracing::info!(rev, removed = removed.len(), "compacted");
        Ok(())
    }

    /// Grants a lease; returns its effective TTL.
    pub fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<i64, Error> {
        let ttl = self.store.lessor.grant(id, ttl)?;
        self.state.size_in_use += 16;
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
        let keys = self.store.lessor.keys(id).ok_or(Error::LeaseNotFound)?;
        let mut txn = self.txn();
        for k in &keys {
            txn.delete_range(k, &[]);
        }
        let changes = txn.end();
        self.store.lessor.revoke(id)?;
        self.state.size_in_use = self.state.size_in_use.saturating_sub(16);
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
        self.state.applied_index = applied_index;
        self.state.applied_term = applied_term;
        self.flush()
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
            Some(at) => (at.created.main, at.version + 1),
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
        self.staged.push((rev.to_key(false), kv.encode_to_vec()));
        self.lease_moves.push((key.to_vec(), lease));
        self.wb.state.index.put(key, rev);
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
            self.wb.state.size_in_use += (k.len() + v.len()) as u64;
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
        range_at(
            wb.store,
            &wb.state,
            Some(&wb.pending),
            key,
            end,
            self.rev(),
            opts,
        )
    }

    fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }
}
