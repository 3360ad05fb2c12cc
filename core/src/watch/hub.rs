//! The hub's state: watchers by handle, the synced index, and publication.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_api::mvccpb::Event;
use tokio::sync::mpsc;

use super::{matches, to_events};
use crate::apply::Changes;
use crate::mvcc::Store;

/// Identifies a watcher across the hub (stream-local watch ids may repeat).
pub type WatcherHandle = u64;

/// What the hub hands a watch stream.
#[derive(Debug)]
pub enum Delivery {
    /// Events for one watcher, all of complete revisions, in order. Shared: a revision
    /// that every watcher of a key takes whole is one allocation, not one per watcher.
    Events {
        handle: WatcherHandle,
        revision: i64,
        events: Arc<[Event]>,
    },
    /// The watcher's start revision is compacted; it is removed from the hub.
    Compacted {
        handle: WatcherHandle,
        compact_revision: i64,
    },
    /// Nothing new for the watcher up to `revision`.
    Progress {
        handle: WatcherHandle,
        revision: i64,
    },
    /// Every event up to `revision` for the stream's watchers is queued ahead of this
    /// (the answer to a stream's progress request).
    StreamProgress { revision: i64 },
}

impl Delivery {
    /// The watcher it is for (none for a stream-wide marker).
    pub fn handle(&self) -> Option<WatcherHandle> {
        match self {
            Delivery::Events { handle, .. }
            | Delivery::Compacted { handle, .. }
            | Delivery::Progress { handle, .. } => Some(*handle),
            Delivery::StreamProgress { .. } => None,
        }
    }
}

/// What a watcher watches.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    /// Empty: the single key; `[0]`: every key from `key` on; else `[key, end)`.
    pub end: Vec<u8>,
    /// First revision to deliver; 0 means after the current one.
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
}

pub(super) struct Watcher {
    pub spec: WatchSpec,
    /// The first revision not yet delivered.
    pub next_rev: i64,
    pub tx: mpsc::Sender<Delivery>,
    pub synced: bool,
}

impl Watcher {
    /// The events of one revision this watcher wants: none, `all` itself when it wants
    /// every one, else a copy of its own. Range watchers are asked about every revision,
    /// so one that wants nothing costs no allocation.
    pub fn select(&self, all: &Arc<[Event]>) -> Option<Arc<[Event]>> {
        match all.iter().filter(|e| matches(&self.spec, e)).count() {
            0 => None,
            n if n == all.len() => Some(all.clone()),
            _ => Some(
                all.iter()
                    .filter(|e| matches(&self.spec, e))
                    .cloned()
                    .collect(),
            ),
        }
    }
}

#[derive(Default)]
pub(super) struct HubState {
    /// The newest revision published.
    pub current_rev: i64,
    pub watchers: HashMap<WatcherHandle, Watcher>,
    /// Synced single-key watchers by key.
    by_key: HashMap<Vec<u8>, HashSet<WatcherHandle>>,
    /// Synced range watchers.
    ranges: HashSet<WatcherHandle>,
    pub unsynced: HashSet<WatcherHandle>,
    next_handle: WatcherHandle,
}

impl HubState {
    pub fn mark_synced(&mut self, h: WatcherHandle) {
        let Some(w) = self.watchers.get_mut(&h) else {
            return;
        };
        w.synced = true;
        self.unsynced.remove(&h);
        if w.spec.end.is_empty() {
            self.by_key.entry(w.spec.key.clone()).or_default().insert(h);
        } else {
            self.ranges.insert(h);
        }
    }

    pub fn mark_unsynced(&mut self, h: WatcherHandle, next_rev: i64) {
        let Some(w) = self.watchers.get_mut(&h) else {
            return;
        };
        w.synced = false;
        w.next_rev = next_rev;
        self.unsynced.insert(h);
        self.ranges.remove(&h);
        if let Some(set) = self.by_key.get_mut(&w.spec.key) {
            set.remove(&h);
            if set.is_empty() {
                self.by_key.remove(&w.spec.key);
            }
        }
    }

    pub fn remove(&mut self, h: WatcherHandle) {
        self.mark_unsynced(h, 0);
        self.unsynced.remove(&h);
        self.watchers.remove(&h);
    }

    fn synced_for(&self, key: &[u8]) -> impl Iterator<Item = WatcherHandle> + '_ {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .chain(self.ranges.iter())
            .copied()
    }
}

/// The hub; see the module docs.
pub struct WatchHub {
    pub(super) store: Arc<Store>,
    pub(super) state: Mutex<HubState>,
    pub(super) wake: std::sync::mpsc::SyncSender<()>,
}

impl WatchHub {
    /// Creates the hub and starts its sync thread (which ends when the hub is dropped).
    pub fn start(store: Arc<Store>) -> std::io::Result<Arc<WatchHub>> {
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let state = HubState {
            current_rev: store.current_rev(),
            ..Default::default()
        };
        let hub = Arc::new(WatchHub {
            store,
            state: Mutex::new(state),
            wake,
        });
        super::sync::spawn(Arc::downgrade(&hub), woken)?;
        Ok(hub)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn wake_sync(&self) {
        // A full channel already holds a wake-up.
        let _ = self.wake.try_send(());
    }

    /// Adds a watcher delivering into `tx`; returns its handle and the revision it was
    /// created at (events after it, or from `start_revision`, will come).
    pub fn watch(&self, spec: WatchSpec, tx: mpsc::Sender<Delivery>) -> (WatcherHandle, i64) {
        let mut st = self.lock();
        let current = st.current_rev;
        let handle = st.next_handle;
        st.next_handle += 1;
        let next_rev = if spec.start_revision > 0 {
            spec.start_revision
        } else {
            current + 1
        };
        st.watchers.insert(
            handle,
            Watcher {
                spec,
                next_rev,
                tx,
                synced: false,
            },
        );
        if next_rev > current {
            st.mark_synced(handle);
        } else {
            st.unsynced.insert(handle);
            drop(st);
            self.wake_sync();
        }
        (handle, current)
    }

    pub fn cancel(&self, handle: WatcherHandle) {
        self.lock().remove(handle);
    }

    /// Sends a progress notification if the watcher is caught up (as etcd, an unsynced
    /// watcher gets none: its next events will show progress).
    pub fn progress(&self, handle: WatcherHandle) {
        let st = self.lock();
        if let Some(w) = st.watchers.get(&handle).filter(|w| w.synced) {
            let _ = w.tx.try_send(Delivery::Progress {
                handle,
                revision: st.current_rev,
            });
        }
    }

    /// Queues a stream-wide progress marker on `tx` if every watcher delivering into it is
    /// synced, so each event up to the marked revision is already queued ahead of it (as
    /// etcd 3.5 does; an unsynced watcher would still owe older events). False if that has
    /// to wait: a watcher is catching up, or the channel is full.
    pub fn progress_stream(&self, tx: &mpsc::Sender<Delivery>) -> bool {
        let st = self.lock();
        let behind = st
            .unsynced
            .iter()
            .filter_map(|h| st.watchers.get(h))
            .any(|w| w.tx.same_channel(tx));
        if behind {
            return false;
        }
        !matches!(
            tx.try_send(Delivery::StreamProgress {
                revision: st.current_rev
            }),
            Err(mpsc::error::TrySendError::Full(_))
        )
    }

    /// The newest published revision.
    pub fn current_rev(&self) -> i64 {
        self.lock().current_rev
    }

    /// The store was replaced by a raft snapshot at `rev`: every watcher catches up from
    /// the restored history (or learns it was compacted), starting after what it has seen.
    pub fn restored(&self, rev: i64) {
        let mut st = self.lock();
        let seen = st.current_rev + 1;
        let synced: Vec<(WatcherHandle, i64)> = st
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(h, w)| (*h, w.next_rev.max(seen)))
            .collect();
        for (h, next) in &synced {
            st.mark_unsynced(*h, *next);
        }
        st.current_rev = rev;
        drop(st);
        tracing::info!(
            rev,
            watchers = synced.len(),
            "watchers resync after snapshot"
        );
        self.wake_sync();
    }

    /// Delivers newly committed revisions (in order) to synced watchers. A watcher whose
    /// stream cannot take more is moved to catch-up at the first revision it missed.
    pub fn publish(&self, changes: Vec<Changes>) {
        if changes.is_empty() {
            return;
        }
        let mut st = self.lock();
        let mut fell_behind = false;
        for (rev, kvs) in changes {
            let events: Arc<[Event]> = to_events(kvs).into();
            let mut targets: Vec<WatcherHandle> = Vec::new();
            let mut seen = HashSet::new();
            for e in events.iter() {
                let key = e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice());
                targets.extend(st.synced_for(key).filter(|h| seen.insert(*h)));
            }
            for h in targets {
                let Some(w) = st.watchers.get_mut(&h) else {
                    continue;
                };
                if rev < w.next_rev {
                    continue;
                }
                let Some(mine) = w.select(&events) else {
                    continue;
                };
                match w.tx.try_send(Delivery::Events {
                    handle: h,
                    revision: rev,
                    events: mine,
                }) {
                    Ok(()) => w.next_rev = rev + 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        st.mark_unsynced(h, rev);
                        fell_behind = true;
                    }
                    // The stream is gone; it cancels its watchers as it closes.
                    Err(mpsc::error::TrySendError::Closed(_)) => st.remove(h),
                }
            }
            st.current_rev = rev;
        }
        drop(st);
        if fell_behind {
            self.wake_sync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::mvccpb::KeyValue;

    fn watcher(key: &[u8], end: &[u8], no_delete: bool) -> Watcher {
        let (tx, _rx) = mpsc::channel(1);
        Watcher {
            spec: WatchSpec {
                key: key.to_vec(),
                end: end.to_vec(),
                start_revision: 0,
                no_put: false,
                no_delete,
            },
            next_rev: 0,
            tx,
            synced: true,
        }
    }

    fn revision() -> Arc<[Event]> {
        let kv = |key: &[u8], version| KeyValue {
            key: key.to_vec(),
            version,
            ..Default::default()
        };
        to_events(vec![kv(b"a", 1), kv(b"b", 0), kv(b"c", 2)]).into()
    }

    #[test]
    fn a_watcher_that_wants_every_event_shares_them_and_others_get_their_own() {
        let all = revision();
        let everything = watcher(b"a", b"d", false).select(&all).expect("all");
        assert!(Arc::ptr_eq(&everything, &all));
        let keys = |events: &[Event]| -> Vec<Vec<u8>> {
            events.iter().map(|e| e.kv.clone().unwrap().key).collect()
        };
        let part = watcher(b"b", b"d", false).select(&all).expect("part");
        assert_eq!(keys(&part), [b"b".to_vec(), b"c".to_vec()]);
        let puts = watcher(b"a", b"d", true).select(&all).expect("puts");
        assert_eq!(keys(&puts), [b"a".to_vec(), b"c".to_vec()]);
        assert!(watcher(b"x", b"", false).select(&all).is_none());
    }
}
