//! Physical compaction in the background, as etcd's `scheduleCompaction`.
//!
//! Applying a Compact request only moves the compaction point (reads below it fail from
//! then on). This thread then walks the key index a chunk of keys at a time: under the
//! state lock it compacts those keys' history in the index, and outside it deletes the
//! records that no read at or after the point can reach, in a batch of their own. The apply
//! loop waits for at most one chunk of index work, never for the deletions, and the raft
//! log's journal never carries one giant batch. Once a pass is through, the point is
//! recorded as finished; a restart that finds it unfinished walks the rebuilt index again,
//! which holds only the records still on disk, so the work resumes where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::store::{Store, META_FINISHED_COMPACT_REV};
use crate::error::Error;

/// Keys compacted per hold of the state lock.
const CHUNK_KEYS: usize = 1_000;
/// How long the hashes wait for a pass to finish before they give up.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// The compactor's handle in the store.
pub(super) struct Compactor {
    wake: Mutex<Option<SyncSender<()>>>,
    stopping: AtomicBool,
    /// Held for each chunk (index work and its deletions) and by what must not interleave
    /// with one: a snapshot restore, and the hashes, which need the history to be exactly
    /// what the compaction point keeps.
    gate: Mutex<()>,
    /// The compaction point whose pass has finished (-1: none, or not known).
    finished: Mutex<i64>,
    finished_changed: Condvar,
    finished_watch: tokio::sync::watch::Sender<i64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment or a chunk that leaves the store
    // consistent; a panic leaves nothing half-done to protect.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Compactor {
    pub(super) fn new(finished: i64) -> Compactor {
        Compactor {
            wake: Mutex::new(None),
            stopping: AtomicBool::new(false),
            gate: Mutex::new(()),
            finished: Mutex::new(finished),
            finished_changed: Condvar::new(),
            finished_watch: tokio::sync::watch::Sender::new(finished),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread; it works whenever a compaction point is ahead of the finished one
    /// and ends with the store (or at [`Store::stop_compactor`]).
    pub(super) fn start(store: &Arc<Store>) -> Result<(), Error> {
        let (tx, rx) = sync_channel(1);
        let weak = Arc::downgrade(store);
        let handle = std::thread::Builder::new()
            .name("mvcc-compact".into())
            .spawn(move || run(weak, rx))?;
        *lock(&store.compactor.thread) = Some(handle);
        *lock(&store.compactor.wake) = Some(tx);
        // A pass a restart interrupted (or a restored snapshot's) resumes now.
        store.compactor.wake();
        Ok(())
    }

    /// There may be work: a compaction point moved.
    pub(super) fn wake(&self) {
        if let Some(tx) = lock(&self.wake).as_ref() {
            // A full channel already holds a wake-up.
            let _ = tx.try_send(());
        }
    }

    pub(super) fn gate(&self) -> MutexGuard<'_, ()> {
        lock(&self.gate)
    }

    /// The state was replaced (a snapshot restored): nothing is known to be finished.
    pub(super) fn reset(&self) {
        self.set_finished(-1);
        self.wake();
    }

    fn set_finished(&self, rev: i64) {
        *lock(&self.finished) = rev;
        self.finished_changed.notify_all();
        self.finished_watch.send_replace(rev);
    }

    fn finished(&self) -> i64 {
        *lock(&self.finished)
    }
}

impl Store {
    /// Follows the compaction point whose history is physically gone (for `physical`
    /// compactions, which answer only then).
    pub fn compacted(&self) -> tokio::sync::watch::Receiver<i64> {
        self.compactor.finished_watch.subscribe()
    }

    /// Waits until no compaction is in progress and returns holding the compactor's gate,
    /// so none starts: the history is then exactly what the compaction point keeps, on
    /// every member alike (what the hashes need).
    pub(super) fn compaction_idle(&self) -> Result<MutexGuard<'_, ()>, Error> {
        let deadline = Instant::now() + IDLE_WAIT;
        loop {
            let gate = self.compactor.gate();
            let target = self.read_state()?.compact_rev;
            if self.compactor.finished() >= target {
                return Ok(gate);
            }
            drop(gate);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.compactor.stopping.load(Ordering::Relaxed) {
                return Err(Error::Timeout);
            }
            let finished = lock(&self.compactor.finished);
            let _ = self
                .compactor
                .finished_changed
                .wait_timeout_while(finished, left, |f| *f < target);
        }
    }

    /// Stops the compactor after the chunk it is in (server shutdown); the rest of its pass
    /// resumes at the next start.
    pub fn stop_compactor(&self) {
        self.compactor.stopping.store(true, Ordering::Relaxed);
        lock(&self.compactor.wake).take();
        let thread = lock(&self.compactor.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Pause between two chunks, so the apply loop's writes get the cores and the storage
/// engine's flushes keep up with the deletions.
const CHUNK_PAUSE: Duration = Duration::from_millis(10);
/// The pause after a chunk that removed nothing, as most do on a big store with few changed
/// keys: the engine got no work, but the apply loop still gets the lock between chunks (at
/// 10 ms such a pass over 1 M keys took 10 s and did nothing else).
const EMPTY_CHUNK_PAUSE: Duration = Duration::from_millis(1);
/// Sealed memtables of the key history above which the compactor waits for flushes: the
/// storage engine halts every writer at four, and the apply loop must never be the one.
const MAX_SEALED: usize = 1;
/// Level-0 tables above which it waits for the engine's compactions (it slows writers from
/// twenty on).
const MAX_L0_TABLES: usize = 12;

/// Waits between chunks: a pause, and while the engine has flushes or compactions queued,
/// until they are done (at most a second, so a stuck engine never stops the pass). Returns
/// how long it waited for the engine, beyond the pause.
fn yield_to_writes(store: &Store, pause: Duration) -> Duration {
    std::thread::sleep(pause);
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(1);
    while (store.kv.sealed_memtable_count() > MAX_SEALED
        || store.kv.l0_table_count() > MAX_L0_TABLES)
        && Instant::now() < deadline
        && !store.compactor.stopping.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    waiting.elapsed()
}

/// How long after a failed pass the compactor tries again.
const RETRY: Duration = Duration::from_secs(1);

fn run(store: Weak<Store>, woken: Receiver<()>) {
    let mut retry = false;
    loop {
        // Woken by a new compaction point; after a failure, also by the retry timer.
        let woken = if retry {
            !matches!(
                woken.recv_timeout(RETRY),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
            )
        } else {
            woken.recv().is_ok()
        };
        if !woken {
            return;
        }
        retry = false;
        let Some(store) = store.upgrade() else { return };
        loop {
            if store.compactor.stopping.load(Ordering::Relaxed) {
                return;
            }
            let (target, epoch) = match store.read_state() {
                Ok(st) => (st.compact_rev, st.epoch),
                Err(_) => return,
            };
            if target <= store.compactor.finished() {
                break;
            }
            match pass(&store, target, epoch) {
                // Done (and recorded), or superseded by a later point or a restored
                // snapshot, or stopping: look again.
                Ok(()) => continue,
                Err(e) => {
                    // Only deletions of unreachable records failed: reads stay correct.
                    tracing::error!(error = %e, rev = target, "compaction pass failed; will retry");
                    retry = true;
                    break;
                }
            }
        }
    }
}

/// One pass at `target`, recorded as finished when it gets through; it gives up early on a
/// newer point, a restore or a stop.
fn pass(store: &Store, target: i64, epoch: u64) -> Result<(), Error> {
    let started = Instant::now();
    let mut from: Option<Box<[u8]>> = None;
    let mut removed_total = 0usize;
    // Where a long pass went: pauses, and waits for the engine (the log line at the end).
    let (mut paused, mut engine_wait) = (Duration::ZERO, Duration::ZERO);
    loop {
        // Reads that began below the point may still need what this chunk removes.
        while !store.reads.wait_below(target, Duration::from_millis(100)) {
            if store.compactor.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        if store.compactor.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let gate = store.compactor.gate();
        let mut removed = Vec::new();
        let next = {
            let mut st = store.write_state()?;
            if st.compact_rev != target || st.epoch != epoch {
                return Ok(());
            }
            st.index
                .compact_chunk(from.as_deref(), CHUNK_KEYS, target, &mut removed)
        };
        if !removed.is_empty() {
            let mut batch = store.db.batch();
            let mut freed = 0u64;
            for (rev, tombstone) in &removed {
                let key = rev.to_key(*tombstone);
                if let Some(len) = store.kv.size_of(&key)? {
                    freed += key.len() as u64 + u64::from(len);
                }
                batch.remove(&store.kv, key);
            }
            batch.commit()?;
            let _ = store
                .size_in_use
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(freed))
                });
            removed_total += removed.len();
        }
        drop(gate);
        let pause = if removed.is_empty() {
            EMPTY_CHUNK_PAUSE
        } else {
            CHUNK_PAUSE
        };
        paused += pause;
        engine_wait += yield_to_writes(store, pause);
        match next {
            Some(k) => from = Some(k),
            None => break,
        }
    }
    let _gate = store.compactor.gate();
    if store.read_state()?.epoch != epoch {
        return Ok(());
    }
    // After every deletion in the journal: a restart that finds this finished finds them.
    let mut batch = store.db.batch();
    batch.insert(
        &store.meta,
        META_FINISHED_COMPACT_REV,
        target.to_be_bytes().to_vec(),
    );
    batch.commit()?;
    tracing::info!(
        rev = target,
        removed = removed_total,
        took_ms = started.elapsed().as_millis() as u64,
        paused_ms = paused.as_millis() as u64,
        engine_wait_ms = engine_wait.as_millis() as u64,
        "compaction finished"
    );
    // Under the gate: a restore cannot slip between this and the record above.
    store.compactor.set_finished(target);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::mvcc::store::open_for_test as open;
    use crate::mvcc::{RangeOptions, ReadView, Store};
    use prost::Message;

    /// Writes `rounds` versions of `keys` keys, one revision per key per round, from
    /// raft index `index` on; returns the next index.
    fn write(store: &Store, keys: usize, rounds: usize, mut index: u64) -> u64 {
        for r in 0..rounds {
            let mut wb = store.write_batch().expect("batch");
            for k in 0..keys {
                let mut t = wb.txn();
                t.put(
                    format!("k{k:05}").as_bytes(),
                    format!("v{r}").into_bytes(),
                    0,
                );
                t.end();
            }
            index += 1;
            wb.commit(index, 1).expect("commit");
        }
        index
    }

    fn compact(store: &Store, rev: i64, index: u64) {
        let mut wb = store.write_batch().expect("batch");
        wb.compact(rev);
        wb.commit(index, 1).expect("commit");
    }

    fn wait_finished(store: &Store, rev: i64) {
        let mut finished = store.compacted();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|f| *f >= rev))
                .await
                .expect("compaction finishes")
                .expect("compactor alive");
        });
    }

    #[test]
    fn an_encoded_range_reads_what_a_later_compaction_removes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(dir.path());
        let index = write(&store, 10, 1, 1);
        let first = store.current_rev();
        let index = write(&store, 10, 2, index);
        let plan = store
            .read()
            .expect("view")
            .encoded_range(b"k", b"l", first, 0)
            .expect("plan");
        compact(&store, store.current_rev(), index + 1);
        wait_finished(&store, store.compact_rev());
        // The view is gone and its records deleted, but the plan's snapshot still has them.
        let values: Vec<Vec<u8>> = plan
            .records()
            .map(|r| {
                let kv = cairn_api::mvccpb::KeyValue::decode(r.expect("record").as_ref());
                kv.expect("decode").value
            })
            .collect();
        assert_eq!(values, vec![b"v0".to_vec(); 10]);
    }

    #[test]
    fn a_history_view_keeps_what_a_later_compaction_removes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(dir.path());
        let index = write(&store, 10, 5, 1);
        let view = store.history_view().expect("view");
        let (before, _) = view
            .history(2, view.current_rev, usize::MAX)
            .expect("history");
        compact(&store, store.current_rev(), index + 1);
        wait_finished(&store, store.compact_rev());
        // The records are gone from storage, but not from the view taken before.
        let fresh = store.history_view().expect("view");
        let (after, _) = fresh
            .history(2, fresh.current_rev, usize::MAX)
            .expect("history");
        assert!(after.len() < before.len());
        let (again, _) = view
            .history(2, view.current_rev, usize::MAX)
            .expect("history");
        assert_eq!(again, before);
    }

    #[test]
    fn reads_at_and_after_the_point_are_unchanged_by_the_background_pass() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(dir.path());
        let index = write(&store, 50, 4, 1);
        let at = store.current_rev() - 30;
        let read = |rev| {
            let opts = RangeOptions {
                rev,
                ..Default::default()
            };
            store
                .read()
                .expect("read")
                .range(b"k", b"\0", opts)
                .expect("range")
        };
        let (at_point, newest) = (read(at), read(0));
        compact(&store, at, index + 1);
        wait_finished(&store, at);
        assert_eq!(read(at), at_point);
        assert_eq!(read(0), newest);
        assert_eq!(
            store.read().expect("read").range(
                b"k",
                b"\0",
                RangeOptions {
                    rev: at - 1,
                    ..Default::default()
                }
            ),
            Err(crate::error::Error::Compacted)
        );
    }

    #[test]
    fn an_interrupted_pass_resumes_after_a_restart_and_ends_where_an_uninterrupted_one_does() {
        let run = |interrupt: bool| {
            let dir = tempfile::tempdir().expect("dir");
            let store = open(dir.path());
            let index = write(&store, 3_000, 3, 1);
            let at = store.current_rev() - 1_000;
            if interrupt {
                // The compaction point is recorded, but the pass never runs before the
                // "crash": the restart must do all of it.
                store.stop_compactor();
                compact(&store, at, index + 1);
                assert!(store.compactor.finished() < at);
                store.sync().expect("sync");
                drop(store);
                let store = open(dir.path());
                wait_finished(&store, at);
                let hash = store.hash_kv(0).expect("hash");
                (hash, store.size_in_use())
            } else {
                compact(&store, at, index + 1);
                wait_finished(&store, at);
                let hash = store.hash_kv(0).expect("hash");
                (hash, store.size_in_use())
            }
        };
        assert_eq!(run(true), run(false));
    }
}
