//! The raft log, hard state and configuration state, kept in the member's fjall database.
//!
//! Keyspace `raft_log` maps index (big-endian) → encoded entry; keyspace `raft_state` holds
//! the hard state, the index/term the log was trimmed at, and this member's id. Entries
//! since the trim point are also held in memory, which is what raft-rs reads through
//! [`Storage`]. Writes are staged in a fjall batch by the Ready loop, which syncs once per
//! Ready.
//!
//! The raft configuration (conf state) is not kept here but with the MVCC state, as of the
//! applied index: on restart raft replays the committed entries after it, configuration
//! changes included, exactly as the state machine does.

use fjall::{Database, Keyspace, OwnedWriteBatch};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::Error;
use crate::mvcc::keyspace_options;

const HARD_STATE: &[u8] = b"hard_state";
const TRIMMED: &[u8] = b"trimmed";
const MEMBER_ID: &[u8] = b"member_id";

fn trim_point(index: u64, term: u64) -> Vec<u8> {
    let mut b = index.to_be_bytes().to_vec();
    b.extend_from_slice(&term.to_be_bytes());
    b
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("raft {what}"))
}

/// Raft storage on fjall; see the module docs.
pub struct RaftStorage {
    log: Keyspace,
    state: Keyspace,
    hard_state: HardState,
    conf_state: ConfState,
    /// The log was trimmed up to and including this index (0: never).
    trimmed_index: u64,
    trimmed_term: u64,
    /// Entries `trimmed_index + 1 ..= last_index`.
    entries: Vec<Entry>,
    /// The state machine's applied index: what a snapshot sent now would hold.
    applied: u64,
}

impl RaftStorage {
    /// The id this member was given when it first started, if it has started before.
    pub fn stored_member_id(db: &Database) -> Result<Option<u64>, Error> {
        let state = db.keyspace("raft_state", keyspace_options)?;
        match state.get(MEMBER_ID)? {
            Some(b) => Ok(Some(u64::from_be_bytes(
                b.as_ref().try_into().map_err(|_| corrupt("member id"))?,
            ))),
            None => Ok(None),
        }
    }

    pub fn store_member_id(db: &Database, id: u64) -> Result<(), Error> {
        let state = db.keyspace("raft_state", keyspace_options)?;
        state.insert(MEMBER_ID, id.to_be_bytes())?;
        db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }

    /// Loads the raft state. `conf_state` and `applied`/`applied_term` come from the state
    /// machine: the configuration as of the index it has durably applied.
    pub fn open(
        db: &Database,
        conf_state: ConfState,
        applied: u64,
        applied_term: u64,
    ) -> Result<RaftStorage, Error> {
        let log = db.keyspace("raft_log", keyspace_options)?;
        let state = db.keyspace("raft_state", keyspace_options)?;
        let mut hard_state = match state.get(HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|_| corrupt("hard state"))?,
            None => HardState::default(),
        };
        let (mut trimmed_index, mut trimmed_term) = match state.get(TRIMMED)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().map_err(|_| corrupt("trim"))?),
                u64::from_be_bytes(b[8..].try_into().map_err(|_| corrupt("trim"))?),
            ),
            Some(_) => return Err(corrupt("trim point")),
            None => (0, 0),
        };
        let mut entries = Vec::new();
        for item in log.range((trimmed_index + 1).to_be_bytes()..) {
            let (_, v) = item.into_inner()?;
            let e = Entry::parse_from_bytes(&v).map_err(|_| corrupt("entry"))?;
            if e.index != trimmed_index + 1 + entries.len() as u64 {
                return Err(corrupt("log has a gap"));
            }
            entries.push(e);
        }
        let mut last = trimmed_index + entries.len() as u64;
        if applied > last {
            // A new member's bootstrap point, or a snapshot restored to the state machine
            // before the log learned of it: the log starts after what was applied.
            let mut b = db.batch();
            for e in entries.drain(..) {
                b.remove(&log, e.index.to_be_bytes());
            }
            trimmed_index = applied;
            trimmed_term = applied_term;
            b.insert(&state, TRIMMED, trim_point(applied, applied_term));
            b.commit()?;
            last = applied;
        }
        hard_state.term = hard_state.term.max(trimmed_term);
        // The commit index is persisted lazily; what was applied was committed.
        hard_state.commit = hard_state.commit.max(applied).min(last);
        tracing::info!(
            first = trimmed_index + 1,
            last,
            commit = hard_state.commit,
            term = hard_state.term,
            "raft log loaded"
        );
        Ok(RaftStorage {
            log,
            state,
            hard_state,
            conf_state,
            trimmed_index,
            trimmed_term,
            entries,
            applied,
        })
    }

    /// The applied index moved: a snapshot sent from now on holds at least this.
    pub fn set_applied(&mut self, applied: u64) {
        self.applied = applied;
    }

    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Installs a snapshot the state machine has already restored: the log restarts after
    /// it.
    pub fn apply_snapshot(&mut self, snap: &Snapshot, batch: &mut OwnedWriteBatch) {
        let meta = snap.get_metadata();
        for e in self.entries.drain(..) {
            batch.remove(&self.log, e.index.to_be_bytes());
        }
        self.trimmed_index = meta.index;
        self.trimmed_term = meta.term;
        batch.insert(&self.state, TRIMMED, trim_point(meta.index, meta.term));
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.put_hard_state(batch);
    }

    fn put_hard_state(&self, batch: &mut OwnedWriteBatch) {
        // Encoding a message into a Vec cannot fail.
        if let Ok(b) = self.hard_state.write_to_bytes() {
            batch.insert(&self.state, HARD_STATE, b);
        }
    }

    /// Stages new entries, replacing any conflicting suffix.
    pub fn append(&mut self, ents: &[Entry], batch: &mut OwnedWriteBatch) -> Result<(), Error> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.trimmed_index {
            return Err(Error::Corrupt(format!(
                "append at {} below trimmed log",
                first.index
            )));
        }
        let keep = (first.index - self.trimmed_index - 1) as usize;
        if keep > self.entries.len() {
            return Err(Error::Corrupt(format!(
                "append at {} leaves a gap",
                first.index
            )));
        }
        let old_last = self.last();
        self.entries.truncate(keep);
        for e in ents {
            let b = e.write_to_bytes().map_err(|_| corrupt("entry encoding"))?;
            batch.insert(&self.log, e.index.to_be_bytes(), b);
            self.entries.push(e.clone());
        }
        for stale in self.last() + 1..=old_last {
            batch.remove(&self.log, stale.to_be_bytes());
        }
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState, batch: &mut OwnedWriteBatch) {
        self.hard_state = hs;
        self.put_hard_state(batch);
    }

    pub fn set_commit(&mut self, commit: u64, batch: &mut OwnedWriteBatch) {
        self.hard_state.commit = commit;
        self.put_hard_state(batch);
    }

    /// Drops entries up to and including `index` (which must be applied).
    pub fn trim(&mut self, index: u64, batch: &mut OwnedWriteBatch) {
        if index <= self.trimmed_index || index > self.last() {
            return;
        }
        let n = (index - self.trimmed_index) as usize;
        let term = self.entries[n - 1].term;
        for e in self.entries.drain(..n) {
            batch.remove(&self.log, e.index.to_be_bytes());
        }
        self.trimmed_index = index;
        self.trimmed_term = term;
        batch.insert(&self.state, TRIMMED, trim_point(index, term));
    }

    /// The voters of the current configuration.
    pub fn conf_state_voters(&self) -> &[u64] {
        &self.conf_state.voters
    }

    pub fn first_log_index(&self) -> u64 {
        self.first()
    }

    pub fn last_log_index(&self) -> u64 {
        self.last()
    }

    /// Entries held (not yet trimmed).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn first(&self) -> u64 {
        self.trimmed_index + 1
    }

    fn last(&self) -> u64 {
        self.trimmed_index + self.entries.len() as u64
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.trimmed_index {
            return Ok(self.trimmed_term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Metadata only: the transport dumps the state when it sends the message and sets
        // the index and term to what it dumped.
        let index = self.applied.max(self.trimmed_index);
        let term = self
            .term(index)
            .map_err(|_| raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_log_behind_the_state_machine_restarts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let mut s = RaftStorage::open(&db, voters(&[1]), 0, 0).unwrap();
        let mut b = db.batch();
        s.append(&[entry(1, 1), entry(2, 1)], &mut b).unwrap();
        b.commit().unwrap();
        drop(s);
        // The state machine restored a snapshot at 5 (term 3) before the log heard of it.
        let s = RaftStorage::open(&db, voters(&[1, 2]), 5, 3).unwrap();
        assert_eq!((s.first_log_index(), s.last_log_index()), (6, 5));
        assert_eq!(s.term(5).unwrap(), 3);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 5);
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 5);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 4;
        let mut s = s;
        let mut b = db.batch();
        s.apply_snapshot(&snap, &mut b);
        b.commit().unwrap();
        assert_eq!((s.first_log_index(), s.last_log_index()), (10, 9));
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_reopen_and_conflicts_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let mut s = RaftStorage::open(&db, voters(&[7]), 0, 0).unwrap();
        let mut b = db.batch();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b)
            .unwrap();
        s.append(&[entry(2, 2)], &mut b).unwrap();
        s.set_hard_state(
            HardState {
                term: 2,
                vote: 7,
                commit: 2,
                ..Default::default()
            },
            &mut b,
        );
        b.commit().unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        drop(s);
        let s = RaftStorage::open(&db, voters(&[7]), 2, 0).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![7]);
        assert_eq!(s.initial_state().unwrap().hard_state.term, 2);
    }

    #[test]
    fn trimming_moves_the_first_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let mut s = RaftStorage::open(&db, voters(&[1]), 0, 0).unwrap();
        let mut b = db.batch();
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        s.append(&ents, &mut b).unwrap();
        s.trim(6, &mut b);
        b.commit().unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 1);
        assert!(s
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err());
        drop(s);
        let s = RaftStorage::open(&db, voters(&[1]), 8, 0).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (7, 10));
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 8);
    }
}
