//! The raft-rs driver: the Ready loop thread that owns the `RawNode`, the raft log storage on
//! fjall, and the handle the rest of the server uses to propose entries and ask for read
//! indexes.

mod logger;
mod ready;
mod storage;

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

pub use ready::{ReadyLoop, ReadyLoopConfig};
pub use storage::RaftStorage;

/// What the server asks of the raft thread.
pub enum Command {
    /// Propose an encoded request; the apply loop answers the waiter registered under `id`.
    Propose { id: u64, data: Vec<u8> },
    /// Ask for a read index: reads may be served once the applied index reaches it.
    ReadIndex(oneshot::Sender<u64>),
}

/// Raft facts published by the raft thread for Status, headers and health.
#[derive(Default, Debug)]
pub struct RaftStatus {
    term: AtomicU64,
    leader: AtomicU64,
    commit_index: AtomicU64,
}

impl RaftStatus {
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Relaxed)
    }

    /// The leader's member id; 0 while there is none.
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Relaxed)
    }
}
