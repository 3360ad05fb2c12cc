//! Operations over the whole store, for the Maintenance API and raft snapshots: a
//! consistent dump and its restore, the hashes members compare, sizes and defragmentation.

use std::collections::HashSet;
use std::path::Path;

use cairn_api::cairnpb::ClusterState;
use cairn_api::etcdserverpb::AlarmMember;
use cairn_api::mvccpb::KeyValue;
use cairn_client::backup::etcd::{self, Crc32c};
use prost::Message;

use fjall::{PersistMode, Readable};

use super::load::load_state;
use super::revision::Revision;
use super::store::{
    keyspace_options, Record, Space, Store, META_COMPACT_REV, META_CURRENT_REV, META_MEMBERS,
};
use crate::error::Error;

/// Keys per hold of the state lock while HashKV works out what compaction keeps.
const KEEP_CHUNK: usize = 10_000;

/// The leading 32 bits of a digest.
fn leading_u32(digest: &[u8]) -> u32 {
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A consistent copy of the whole state as of a batch boundary, for a backup: the records
/// of each keyspace and the revisions they are at.
pub struct StateCopy {
    snap: fjall::Snapshot,
    spaces: [(Space, fjall::Keyspace); 4],
    meta: fjall::Keyspace,
    /// The revision of the newest change.
    pub current_rev: i64,
    /// The compaction point (-1: never compacted). History below it may still be there if
    /// the compactor was at work.
    pub compact_rev: i64,
    /// The raft index the copy is at.
    pub applied_index: u64,
    pub alarms: Vec<AlarmMember>,
}

/// One record of a keyspace.
pub type RawRecord = (fjall::Slice, fjall::Slice);

impl StateCopy {
    /// The records of one keyspace in key order.
    pub fn records(&self, space: Space) -> impl Iterator<Item = Result<RawRecord, Error>> + '_ {
        let ks = &self
            .spaces
            .iter()
            .find(|(s, _)| *s == space)
            .expect("every space")
            .1;
        self.snap
            .iter(ks)
            .map(|item| item.into_inner().map_err(Error::from))
    }

    /// The membership of the cluster the copy was taken in.
    pub fn members(&self) -> Result<Option<ClusterState>, Error> {
        match self.snap.get(&self.meta, META_MEMBERS)? {
            Some(v) => Ok(Some(ClusterState::decode(v.as_ref())?)),
            None => Ok(None),
        }
    }
}

impl Store {
    /// A consistent copy of the state for a backup (cheap: a database snapshot).
    pub fn copy(&self) -> Result<StateCopy, Error> {
        let s = self.read_state()?;
        Ok(StateCopy {
            snap: self.db.snapshot(),
            spaces: [
                (Space::Kv, self.kv.clone()),
                (Space::Meta, self.meta.clone()),
                (Space::Lease, self.leases.clone()),
                (Space::Auth, self.auth.keyspace().clone()),
            ],
            meta: self.meta.clone(),
            current_rev: s.current_rev,
            compact_rev: s.compact_rev,
            applied_index: s.applied_index,
            alarms: s.alarms.clone(),
        })
    }

    /// Walks a consistent copy of the whole state (history, leases, meta), as of a batch
    /// boundary, calling `f` with each record; returns the applied index and term it is at.
    /// History the compactor has not removed yet may be in it; whoever loads it compacts
    /// it again.
    pub fn dump(
        &self,
        f: impl FnMut(Space, &[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<(u64, u64), Error> {
        // The apply loop holds the write lock for a whole batch, so a database snapshot
        // opened under the read lock never sees half a batch.
        let (snap, applied) = {
            let s = self.read_state()?;
            (self.db.snapshot(), (s.applied_index, s.applied_term))
        };
        self.dump_from(&snap, f)?;
        Ok(applied)
    }

    fn dump_from(
        &self,
        snap: &fjall::Snapshot,
        mut f: impl FnMut(Space, &[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for (space, ks) in [
            (Space::Meta, &self.meta),
            (Space::Lease, &self.leases),
            (Space::Auth, self.auth.keyspace()),
            (Space::Kv, &self.kv),
        ] {
            for item in snap.iter(ks) {
                let (k, v) = item.into_inner()?;
                f(space, &k, &v)?;
            }
        }
        Ok(())
    }

    /// Replaces the whole state with the records of a snapshot, atomically and durably, and
    /// rebuilds the in-memory index and leases from them. Only the apply loop calls this.
    pub fn restore(
        &self,
        records: impl IntoIterator<Item = Result<Record, Error>>,
    ) -> Result<(), Error> {
        // No compaction chunk may be between its index work and its deletions.
        let _gate = self.compactor.gate();
        let mut state = self.write_state()?;
        let mut b = self.db.batch();
        for ks in [&self.meta, &self.leases, self.auth.keyspace(), &self.kv] {
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
                Space::Auth => self.auth.keyspace(),
            };
            b.insert(ks, k, v);
        }
        b.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        self.lessor.clear();
        let epoch = state.epoch + 1;
        let (loaded, size) = load_state(&self.kv, &self.meta, &self.leases, &self.lessor, epoch)?;
        *state = loaded;
        self.published.set(&state);
        self.size_in_use
            .store(size, std::sync::atomic::Ordering::Relaxed);
        self.auth.reload()?;
        drop(state);
        self.compactor.reset();
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

    /// Bytes of the member's bookkeeping (revisions, raft position, membership, alarms):
    /// with [`Store::size_in_use`], the whole state machine.
    pub fn meta_size(&self) -> u64 {
        self.meta
            .iter()
            .filter_map(|item| item.into_inner().ok())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Whether a meta record belongs in a backup: the revision counters do; the raft
    /// position, configuration and membership belong to the cluster it came from.
    pub fn is_portable_meta(key: &[u8]) -> bool {
        key == META_CURRENT_REV || key == META_COMPACT_REV
    }

    /// etcd's HashKV, computed exactly as etcd 3.4 does, so a member holding the same
    /// history as an etcd member (restored from its backup, say) gives the same hash: the
    /// CRC-32C of `key` and then of every record up to `rev` (0: the current revision) in
    /// etcd's encoding, where a record at or below the compaction point counts only if a
    /// compaction at `rev` would keep it. Returns it with the compacted and current
    /// revisions. Physical compaction removes only records that do not count, so members
    /// agree whether or not theirs has finished.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), Error> {
        // No compaction chunk changes the index while what it keeps is worked out.
        let gate = self.compactor.gate();
        let (snap, compact_rev, current_rev) = {
            let s = self.read_state()?;
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
        let lower = Revision::new(compact_rev.saturating_add(1), 0);
        // Only records below `lower` are filtered; there are none before a compaction.
        let kept = if compact_rev > 0 {
            self.kept_at(rev)?
        } else {
            HashSet::new()
        };
        drop(gate);
        let mut hash = Crc32c::default();
        hash.update(etcd::KEY);
        let end = Revision::new(rev.saturating_add(1), 0).to_key(false);
        for item in snap.range(&self.kv, ..end) {
            let (k, v) = item.into_inner()?;
            let (r, tombstone) =
                Revision::from_key(&k).ok_or_else(|| Error::Corrupt("revision key".into()))?;
            // etcd's quirk: with nothing kept at all, nothing is filtered.
            if r < lower && !kept.is_empty() && !kept.contains(&r) {
                continue;
            }
            hash.update(&etcd::revision_key(r.main, r.sub, tombstone));
            if tombstone {
                // etcd's deletion record is the key alone; Cairn's also has the revision.
                let kv = KeyValue::decode(v.as_ref())?;
                hash.update(&etcd::tombstone_value(&kv.key));
            } else {
                hash.update(&v);
            }
        }
        Ok((hash.finish(), compact_rev, current_rev))
    }

    /// The revision of each key that a compaction at `at` keeps, walked a chunk of keys per
    /// hold of the state lock. The caller holds the compaction gate.
    fn kept_at(&self, at: i64) -> Result<HashSet<Revision>, Error> {
        let mut kept = HashSet::new();
        let mut from: Option<Box<[u8]>> = None;
        loop {
            let s = self.read_state()?;
            from = s
                .index
                .keep_chunk(from.as_deref(), KEEP_CHUNK, at, &mut kept);
            drop(s);
            if from.is_none() {
                return Ok(kept);
            }
        }
    }

    /// etcd's Hash: a digest of everything a backup holds (key history, leases, revision
    /// counters), with the current revision.
    pub fn hash(&self) -> Result<(u32, i64), Error> {
        // The gate only while the copy is taken: a snapshot install must not wait for the
        // whole digest.
        let snap = {
            let _gate = self.compaction_idle()?;
            let _consistent = self.read_state()?;
            self.db.snapshot()
        };
        // The revision is read from the same copy as everything hashed.
        let mut current_rev = 0;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        self.dump_from(&snap, |space, k, v| {
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
}
