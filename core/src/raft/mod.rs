//! The raft-rs driver: the Ready loop thread that owns the `RawNode`, the raft log storage on
//! fjall, and the handle the rest of the server uses to propose entries and ask for read
//! indexes.

mod logger;
mod ready;
pub mod snapshot;
mod storage;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};

use raft::eraftpb::{ConfChangeV2, Message};
use tokio::sync::oneshot;

pub use ready::{ReadyLoop, ReadyLoopConfig, TICKS_PER_HEARTBEAT};
pub use storage::RaftStorage;
pub use transport::Transport;

/// What the server asks of the raft thread.
pub enum Command {
    /// Propose an encoded request; the apply loop answers the waiter registered under `id`.
    Propose { id: u64, data: Vec<u8> },
    /// Propose a configuration change; its context carries the waiter's id.
    ProposeConfChange { id: u64, cc: ConfChangeV2 },
    /// Ask for a read index: reads may be served once the applied index reaches it.
    ReadIndex(oneshot::Sender<u64>),
    /// A raft message from a peer.
    Step(Message),
    /// The transport could not reach this member.
    Unreachable(u64),
    /// This member's host refused a connection: its process is gone (killed, crashed,
    /// stopped), not merely slow or cut off.
    PeerDown(u64),
    /// Whether a snapshot reached this member.
    SnapshotStatus(u64, bool),
    /// Hand leadership to this member (leader only).
    TransferLeader(u64),
    /// On the leader: how far this member's log matches (its match index), and the commit
    /// index; `None` elsewhere.
    Progress {
        id: u64,
        reply: oneshot::Sender<Option<(u64, u64)>>,
    },
    /// Stop the raft loop (server shutdown).
    Stop,
}

/// Raft facts published by the raft thread for Status, headers and health.
#[derive(Default, Debug)]
pub struct RaftStatus {
    term: AtomicU64,
    leader: AtomicU64,
    commit_index: AtomicU64,
    last_index: AtomicU64,
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

    /// The last index in this member's raft log.
    pub fn last_index(&self) -> u64 {
        self.last_index.load(Ordering::Relaxed)
    }
}
