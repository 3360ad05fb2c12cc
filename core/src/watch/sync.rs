//! The sync thread: refills unsynced watchers from the revision history in storage.
//!
//! Each round takes the unsynced watchers, cancels those whose next revision is compacted,
//! reads a bounded slice of history from the smallest next revision on for the watchers
//! whose streams have room, hands each its events, and moves the watchers that reached the
//! newest revision back to the synced set, under the hub lock so no publication slips
//! between. A watcher whose stream is full waits for a later round and costs no read
//! meanwhile: a client that stopped reading would otherwise have the same history read for
//! it every round for as long as it stays stopped.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use cairn_api::mvccpb::Event;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::hub::{Delivery, WatchHub, WatchSpec, WatcherHandle};

/// Records read from storage per round at most (bounds the sync thread's memory).
const HISTORY_BATCH: usize = 10_000;
/// How often the thread looks for work when nobody woke it.
const IDLE: Duration = Duration::from_millis(100);
/// Pause between rounds that could not deliver (streams full).
const BACKOFF: Duration = Duration::from_millis(10);

pub(super) fn spawn(hub: Weak<WatchHub>, woken: Receiver<()>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("watch-sync".into())
        .spawn(move || loop {
            match woken.recv_timeout(IDLE) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(hub) = hub.upgrade() else { return };
            loop {
                match round(&hub) {
                    Ok(Round::Idle) => break,
                    Ok(Round::Progress) => continue,
                    Ok(Round::Blocked) => thread::sleep(BACKOFF),
                    Err(e) => {
                        tracing::error!(error = %e, "watch sync failed; retrying");
                        thread::sleep(IDLE);
                        break;
                    }
                }
            }
        })?;
    Ok(())
}

enum Round {
    /// Nothing unsynced.
    Idle,
    /// Something was delivered; go again.
    Progress,
    /// Work left but no stream could take it.
    Blocked,
}

struct Pending {
    handle: WatcherHandle,
    spec: WatchSpec,
    next_rev: i64,
    tx: mpsc::Sender<Delivery>,
}

fn round(hub: &Arc<WatchHub>) -> Result<Round, crate::error::Error> {
    let (pending, current) = {
        let st = hub.lock();
        if st.unsynced.is_empty() {
            return Ok(Round::Idle);
        }
        let pending: Vec<Pending> = st
            .unsynced
            .iter()
            .filter_map(|h| st.watchers.get(h).map(|w| (h, w)))
            .map(|(h, w)| Pending {
                handle: *h,
                spec: w.spec.clone(),
                next_rev: w.next_rev,
                tx: w.tx.clone(),
            })
            .collect();
        (pending, st.current_rev)
    };
    // The compaction point and the history come from one view: a compaction that commits
    // after this cannot remove what a watcher at or past the point still needs.
    let view = hub.store.history_view()?;
    let compact_rev = view.compact_rev;
    let mut progressed = false;
    let mut live = Vec::new();
    for p in pending {
        if p.next_rev < compact_rev {
            match p.tx.try_send(Delivery::Compacted {
                handle: p.handle,
                compact_revision: compact_rev,
            }) {
                Ok(()) | Err(TrySendError::Closed(_)) => {
                    hub.lock().remove(p.handle);
                    progressed = true;
                }
                Err(TrySendError::Full(_)) => {}
            }
        } else if p.tx.capacity() > 0 {
            live.push(p);
        }
    }

    let mut advanced: HashMap<WatcherHandle, i64> = HashMap::new();
    if let Some(from) = live
        .iter()
        .map(|p| p.next_rev)
        .min()
        .filter(|from| *from <= current)
    {
        let (records, upto) = view.history(from, current.min(view.current_rev), HISTORY_BATCH)?;
        let events: Vec<(i64, Event)> = records
            .into_iter()
            .map(|(rev, _, kv)| (rev, super::event(kv)))
            .collect();
        for p in &live {
            if p.next_rev > upto {
                continue;
            }
            let mine: Vec<Event> = events
                .iter()
                .filter(|(rev, _)| *rev >= p.next_rev)
                .map(|(_, e)| e)
                .filter(|e| super::matches(&p.spec, e))
                .cloned()
                .collect();
            if mine.is_empty() {
                advanced.insert(p.handle, upto + 1);
                continue;
            }
            match p.tx.try_send(Delivery::Events {
                handle: p.handle,
                revision: current,
                events: mine.into(),
            }) {
                Ok(()) => {
                    advanced.insert(p.handle, upto + 1);
                }
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Closed(_)) => {
                    hub.lock().remove(p.handle);
                }
            }
        }
    } else {
        // Everyone starts after the newest revision: nothing to read.
        for p in &live {
            advanced.insert(p.handle, p.next_rev);
        }
    }

    let mut st = hub.lock();
    for (h, next_rev) in advanced {
        let Some(w) = st.watchers.get_mut(&h) else {
            continue;
        };
        if w.synced {
            continue;
        }
        progressed |= w.next_rev != next_rev;
        w.next_rev = next_rev;
        if next_rev > st.current_rev {
            st.mark_synced(h);
            progressed = true;
        }
    }
    Ok(match (st.unsynced.is_empty(), progressed) {
        (true, _) => Round::Idle,
        (false, true) => Round::Progress,
        (false, false) => Round::Blocked,
    })
}
