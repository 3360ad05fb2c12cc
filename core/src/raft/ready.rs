//! The Ready loop: one thread owns the raft `RawNode` and drives it.
//!
//! Each turn it takes every queued command (so many proposals share one Ready and one disk
//! sync: group commit), ticks the logical clock, and handles a Ready in raft-rs's order:
//!
//! 1. send the leader's messages (raft allows this before its own append is durable);
//! 2. hand already-committed entries to the apply loop, in log order;
//! 3. persist new entries and the hard state, then sync once;
//! 4. only then send messages that acknowledge the persisted state (votes, append acks);
//! 5. advance, and hand over what became committed by our own persistence.
//!
//! Nothing is acknowledged to a client before step 3: the apply loop only sees entries that
//! raft reports committed, and commitment requires the entry to be synced.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};
use raft::eraftpb::{Entry, Message};
use raft::{RawNode, StateRole};
use tokio::sync::{oneshot, watch};

use super::{logger, Command, RaftStatus, RaftStorage};
use crate::error::Error;
use crate::lease::Lessor;
use crate::wait::Waiters;

/// Entries kept in the log behind the applied index (for slow followers, once there are any).
const LOG_KEEP: u64 = 10_000;
/// Commands taken per turn at most, so one Ready stays bounded.
const MAX_BATCH: usize = 4096;

pub struct ReadyLoopConfig {
    pub member_id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub applied_index: u64,
    /// Leases start their deadlines when this member becomes leader, and stop tracking them
    /// when it steps down.
    pub lessor: Arc<Lessor>,
}

/// Read-index requests waiting for raft to confirm leadership.
#[derive(Default)]
struct PendingReads {
    queued: Vec<oneshot::Sender<u64>>,
    next_ctx: u64,
    /// Issued requests by context, with the tick they were (re)issued at.
    inflight: HashMap<Vec<u8>, (Vec<oneshot::Sender<u64>>, u64)>,
}

pub struct ReadyLoop {
    node: RawNode<RaftStorage>,
    db: Database,
    commands: mpsc::Receiver<Command>,
    apply: mpsc::Sender<Vec<Entry>>,
    waiters: Arc<Waiters>,
    status: Arc<RaftStatus>,
    applied: watch::Receiver<u64>,
    tick: Duration,
    ticks: u64,
    election_ticks: usize,
    lessor: Arc<Lessor>,
    reads: PendingReads,
}

impl ReadyLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ReadyLoopConfig,
        storage: RaftStorage,
        db: Database,
        commands: mpsc::Receiver<Command>,
        apply: mpsc::Sender<Vec<Entry>>,
        waiters: Arc<Waiters>,
        status: Arc<RaftStatus>,
        applied: watch::Receiver<u64>,
    ) -> Result<ReadyLoop, Error> {
        let raft_cfg = raft::Config {
            id: cfg.member_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: 1,
            applied: cfg.applied_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| Error::Storage(format!("raft config: {e}")))?;
        let single = storage.conf_state_voters() == [cfg.member_id];
        let mut node = RawNode::new(&raft_cfg, storage, &logger::logger(cfg.member_id))
            .map_err(|e| Error::Storage(format!("raft: {e}")))?;
        if single {
            // The only voter need not wait out an election timeout to lead.
            node.campaign()
                .map_err(|e| Error::Storage(format!("raft campaign: {e}")))?;
        }
        Ok(ReadyLoop {
            node,
            db,
            commands,
            apply,
            waiters,
            status,
            applied,
            tick: cfg.tick,
            election_ticks: cfg.election_ticks,
            lessor: cfg.lessor,
            ticks: 0,
            reads: PendingReads::default(),
        })
    }

    /// Runs until every command sender is dropped (server shutdown) or storage fails.
    pub fn run(mut self) -> Result<(), Error> {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            match self
                .commands
                .recv_timeout(next_tick.saturating_duration_since(Instant::now()))
            {
                Ok(cmd) => {
                    self.handle(cmd);
                    for _ in 0..MAX_BATCH {
                        let Ok(cmd) = self.commands.try_recv() else {
                            break;
                        };
                        self.handle(cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                self.ticks += 1;
                next_tick = Instant::now() + self.tick;
                self.reissue_stale_reads();
            }
            self.issue_reads();
            if self.node.has_ready() {
                self.on_ready()?;
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data } => {
                if self.node.propose(vec![], data).is_err() {
                    // Dropped: no leader to forward to (or a leadership transfer).
                    self.waiters.trigger(id, Err(Error::NoLeader));
                }
            }
            Command::ReadIndex(tx) => self.reads.queued.push(tx),
        }
    }

    /// One read index serves every read queued this turn (batched ReadIndex).
    fn issue_reads(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        let ctx = self.reads.next_ctx.to_be_bytes().to_vec();
        self.reads.next_ctx += 1;
        let waiting = std::mem::take(&mut self.reads.queued);
        self.reads
            .inflight
            .insert(ctx.clone(), (waiting, self.ticks));
        self.node.read_index(ctx);
    }

    /// raft drops a read index silently when it cannot serve it yet (no leader, or a new
    /// leader that has not committed in its term); ask again until the caller times out.
    fn reissue_stale_reads(&mut self) {
        let ticks = self.ticks;
        let stale: Vec<Vec<u8>> = self
            .reads
            .inflight
            .iter_mut()
            .filter(|(_, (waiting, at))| ticks > *at + 1 && waiting.iter().any(|w| !w.is_closed()))
            .map(|(ctx, (_, at))| {
                *at = ticks;
                ctx.clone()
            })
            .collect();
        self.reads
            .inflight
            .retain(|_, (waiting, _)| waiting.iter().any(|w| !w.is_closed()));
        for ctx in stale {
            self.node.read_index(ctx);
        }
    }

    fn on_ready(&mut self) -> Result<(), Error> {
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            let leader = ss.leader_id;
            if self.status.leader.swap(leader, Ordering::Relaxed) != leader {
                tracing::info!(
                    leader = format!("{leader:x}"),
                    term = self.node.raft.term,
                    "leader changed"
                );
            }
            // Deadlines restart from the full TTL plus an election timeout on the new
            // leader, so the election itself never expires a healthy lease.
            match (ss.raft_state == StateRole::Leader, self.lessor.is_primary()) {
                (true, false) => self.lessor.promote(self.tick * self.election_ticks as u32),
                (false, true) => self.lessor.demote(),
                _ => {}
            }
        }
        // 1. Leader messages may go out before the leader's own append is durable.
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            return Err(Error::Storage(
                "received a raft snapshot; snapshots need a multi-member cluster".into(),
            ));
        }
        // 2. Entries committed earlier, in log order.
        self.hand_to_apply(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            if let Some((waiting, _)) = self.reads.inflight.remove(&rs.request_ctx) {
                for tx in waiting {
                    let _ = tx.send(rs.index);
                }
            }
        }
        // 3. Persist and sync once for everything in this Ready (group commit).
        let mut batch = self.db.batch();
        self.node.mut_store().append(rd.entries(), &mut batch)?;
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs.clone(), &mut batch);
        }
        batch.commit()?;
        if rd.must_sync() {
            self.db.persist(PersistMode::SyncData)?;
        }
        // 4. Acknowledgements of persisted state.
        self.send(rd.take_persisted_messages());
        // 5. What our own persistence committed.
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut batch = self.db.batch();
            self.node.mut_store().set_commit(commit, &mut batch);
            batch.commit()?;
        }
        self.send(light.take_messages());
        self.hand_to_apply(light.take_committed_entries())?;
        self.node.advance_apply();

        self.status
            .term
            .store(self.node.raft.term, Ordering::Relaxed);
        self.status
            .commit_index
            .store(self.node.raft.raft_log.committed, Ordering::Relaxed);
        self.trim_log()
    }

    fn hand_to_apply(&self, entries: Vec<Entry>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        self.apply.send(entries).map_err(|_| Error::Stopped)
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            // A single-voter group has no peers to talk to; the peer transport arrives with
            // multi-member clusters.
            tracing::debug!(to = m.to, kind = ?m.get_msg_type(), "raft message without a peer transport");
        }
    }

    /// Keeps the in-memory log bounded: entries well behind the applied index go.
    fn trim_log(&mut self) -> Result<(), Error> {
        if (self.node.store().entry_count() as u64) < 2 * LOG_KEEP {
            return Ok(());
        }
        let applied = *self.applied.borrow();
        if applied <= LOG_KEEP {
            return Ok(());
        }
        let mut batch = self.db.batch();
        self.node.mut_store().trim(applied - LOG_KEEP, &mut batch);
        batch.commit()?;
        Ok(())
    }
}
