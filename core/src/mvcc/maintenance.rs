//! Operations over the whole store, for the Maintenance API and raft snapshots: a
//! consistent dump and its restore, the hashes members compare, sizes and defragmentation.

use std::path::Path;

use fjall::{PersistMode, Readable};

use super::revision::Revision;
use super::store::{
    keyspace_options, load_state, Record, Space, Store, META_COMPACT_REV, META_CURRENT_REV,
};
use crate::error::Error;

/// The leading 32 bits of a digest.
fn leading_u32(digest: &[u8]) -> u32 {
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Store {
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

    /// etcd's HashKV: a digest of the key history at revisions up to `rev` (0: the
    /// current one) that compaction kept, with the compacted and current revisions. Every
    /// member that applied the same log gets the same digest: it waits for a compaction in
    /// progress, so the history hashed is exactly what the compaction point keeps.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), Error> {
        let gate = self.compaction_idle()?;
        let (snap, compact_rev, current_rev) = {
            let s = self.read_state()?;
            (self.db.snapshot(), s.compact_rev, s.current_rev)
        };
        drop(gate);
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
