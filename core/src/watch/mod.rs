//! The watch hub (etcd's `watchable_store`): delivers every change to the watchers whose
//! key range it falls in, in revision order, with bounded memory.
//!
//! A watcher is either *synced* (it has everything up to the newest revision and gets new
//! events as the apply loop publishes them) or *unsynced* (it starts in the past, or its
//! stream's bounded channel was full when an event came). Unsynced watchers are refilled
//! from the revision history in storage by the sync thread and rejoin the synced set once
//! caught up, so a slow reader costs storage reads, never unbounded buffers, and never loses,
//! duplicates or reorders an event.

mod hub;
mod sync;

pub use hub::{Delivery, WatchHub, WatchSpec, WatcherHandle};

use cairn_api::mvccpb::{event::EventType, Event, KeyValue};

use crate::mvcc::KeyRange;

/// The watch event of one change: a tombstone (version 0, as stored and as the apply loop
/// reports deletions) is a DELETE, anything else a PUT.
pub fn event(kv: KeyValue) -> Event {
    let kind = if kv.version == 0 {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

/// Turns the changes of a write into watch events.
pub fn to_events(changes: Vec<KeyValue>) -> Vec<Event> {
    changes.into_iter().map(event).collect()
}

/// Whether a watcher with `spec` wants event `e` (its key range and filters).
pub fn matches(spec: &WatchSpec, e: &Event) -> bool {
    let key = e.kv.as_ref().map_or(&[][..], |kv| kv.key.as_slice());
    let put = e.r#type == EventType::Put as i32;
    KeyRange::new(&spec.key, &spec.end).contains(key)
        && if put { !spec.no_put } else { !spec.no_delete }
}
