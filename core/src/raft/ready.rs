//! The Ready loop: one thread owns the raft `RawNode` and drives it.
//!
//! Each turn it takes every queued command (so many proposals share one Ready and one disk
//! sync: group commit), ticks the logical clock, and handles a Ready in raft-rs's order:
//!
//! 1. send the leader's messages (raft allows this before its own append is durable);
//! 2. install a snapshot from the leader, if any: the apply loop restores the state first
//!    (durably), then the log restarts after it — never the other way round, so a crash in
//!    between leaves a state machine ahead of the log, which the log catches up to;
//! 3. hand already-committed entries to the apply loop, in log order, applying configuration
//!    changes to raft as they go by;
//! 4. persist new entries and the hard state, then sync once;
//! 5. only then send messages that acknowledge the persisted state (votes, append acks);
//! 6. advance, and hand over what became committed by our own persistence.
//!
//! Nothing is acknowledged to a client before step 4: the apply loop only sees entries that
//! raft reports committed, and commitment requires the entry to be synced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use super::snapshot::{remove_others, snap_path};
use super::{logger, Command, RaftStatus, RaftStorage, Transport};
use crate::apply::ApplyTask;
use crate::error::Error;
use crate::lease::Lessor;
use crate::wait::Waiters;

/// Commands taken per turn at most, so one Ready stays bounded.
const MAX_BATCH: usize = 4096;
/// Raft ticks per heartbeat interval. Randomized election timeouts are whole ticks, so with
/// one tick per heartbeat two followers that started together pick the same timeout one
/// time in five, campaign in the same millisecond and split the vote, costing another
/// election round; ten ticks per heartbeat make that rare.
pub const TICKS_PER_HEARTBEAT: u64 = 10;
/// Entries kept behind the applied index when the log is compacted, so a briefly lagging
/// follower catches up from the log rather than by snapshot (etcd keeps 5,000).
const CATCH_UP_ENTRIES: u64 = 5_000;

pub struct ReadyLoopConfig {
    pub member_id: u64,
    /// One raft tick: a tenth of the heartbeat interval (see `TICKS_PER_HEARTBEAT`).
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    pub applied_index: u64,
    /// Leases start their deadlines when this member becomes leader, and stop tracking them
    /// when it steps down.
    pub lessor: Arc<Lessor>,
    pub transport: Arc<Transport>,
    /// Where received snapshots are stored.
    pub snap_dir: PathBuf,
    /// Applied entries that trigger a log compaction (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Campaign at once: the only voter of a new cluster need not wait out a timeout.
    pub campaign: bool,
}

/// A follower's plan to take over from a leader whose process is gone, without waiting out
/// the election timeout (see [`ReadyLoop::leader_down`]).
struct Takeover {
    leader: u64,
    /// The tick at which to campaign, staggered by rank so survivors do not split the vote.
    at: u64,
}

/// Read-index requests waiting for raft to confirm leadership.
struct PendingReads {
    queued: Vec<oneshot::Sender<u64>>,
    /// Contexts are the member's id and a counter seeded from the clock: unique across
    /// members and across this member's restarts, so a leader's late answer to a read this
    /// member's previous process asked for can never be taken for the answer to a new one
    /// (its index may predate writes acknowledged since), and two members' reads never
    /// share a context (raft drops a read whose context is already pending).
    member: u64,
    next_ctx: u64,
    /// Issued requests by context, with the tick they were (re)issued at.
    inflight: HashMap<Vec<u8>, (Vec<oneshot::Sender<u64>>, u64)>,
}

impl PendingReads {
    fn new(member: u64) -> PendingReads {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        PendingReads {
            queued: Vec::new(),
            member,
            next_ctx: nanos,
            inflight: HashMap::new(),
        }
    }

    fn next_ctx(&mut self) -> Vec<u8> {
        let ctx = [self.member.to_be_bytes(), self.next_ctx.to_be_bytes()].concat();
        self.next_ctx = self.next_ctx.wrapping_add(1);
        ctx
    }

    /// Moves the reads that waited longer than `patience` ticks onto fresh contexts, which
    /// the caller asks raft for; reads whose callers gave up are dropped. The old context
    /// is never asked again. raft counts a heartbeat's acknowledgement towards whichever
    /// pending read has its context, and resolves every read queued before it: a context
    /// asked twice lets an acknowledgement of the first asking, delayed in a queue (by a
    /// pause of the leader's process, say), confirm the second — and with it a read that
    /// a deposed leader registered at its stale commit index. The hour soak caught exactly
    /// that (docs/reliability.md).
    fn reissue_stale(&mut self, ticks: u64, patience: u64) -> Vec<Vec<u8>> {
        self.inflight
            .retain(|_, (waiting, _)| waiting.iter().any(|w| !w.is_closed()));
        let stale: Vec<_> = self
            .inflight
            .extract_if(|_, (_, at)| ticks > *at + patience)
            .collect();
        stale
            .into_iter()
            .map(|(old, (waiting, _))| {
                let ctx = self.next_ctx();
                tracing::debug!(
                    old = ctx_number(&old),
                    new = ctx_number(&ctx),
                    reads = waiting.len(),
                    "read index asked again under a new context"
                );
                self.inflight.insert(ctx.clone(), (waiting, ticks));
                ctx
            })
            .collect()
    }
}

/// A read context's counter, for the logs (the member id is the log line's own).
fn ctx_number(ctx: &[u8]) -> u64 {
    ctx.get(8..16)
        .and_then(|c| c.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

pub struct ReadyLoop {
    node: RawNode<RaftStorage>,
    db: Database,
    commands: mpsc::Receiver<Command>,
    apply: mpsc::SyncSender<ApplyTask>,
    waiters: Arc<Waiters>,
    status: Arc<RaftStatus>,
    applied: watch::Receiver<u64>,
    tick: Duration,
    ticks: u64,
    election_ticks: usize,
    heartbeat_ticks: usize,
    lessor: Arc<Lessor>,
    reads: PendingReads,
    takeover: Option<Takeover>,
    transport: Arc<Transport>,
    snap_dir: PathBuf,
    snapshot_count: u64,
}

impl ReadyLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ReadyLoopConfig,
        storage: RaftStorage,
        db: Database,
        commands: mpsc::Receiver<Command>,
        apply: mpsc::SyncSender<ApplyTask>,
        waiters: Arc<Waiters>,
        status: Arc<RaftStatus>,
        applied: watch::Receiver<u64>,
    ) -> Result<ReadyLoop, Error> {
        let raft_cfg = raft::Config {
            id: cfg.member_id,
            election_tick: cfg.election_ticks,
            // Randomized timeouts start two heartbeats after the election timeout: with
            // check-quorum a follower refuses (pre-)votes while it heard from the leader
            // within one election timeout, and the first follower to time out must find the
            // others already out of that lease, or its pre-vote fails and the election takes
            // another round. They end at 1.5 timeouts (raft's default is 2): pre-vote keeps
            // split votes harmless, and a dead leader is replaced sooner.
            min_election_tick: cfg.election_ticks + 2 * cfg.heartbeat_ticks,
            max_election_tick: cfg.election_ticks * 3 / 2 + 2 * cfg.heartbeat_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
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
        if single && cfg.campaign {
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
            heartbeat_ticks: cfg.heartbeat_ticks,
            lessor: cfg.lessor,
            ticks: 0,
            reads: PendingReads::new(cfg.member_id),
            takeover: None,
            transport: cfg.transport,
            snap_dir: cfg.snap_dir,
            snapshot_count: cfg.snapshot_count.max(1),
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
                    if !self.handle(cmd) {
                        return Ok(());
                    }
                    for _ in 0..MAX_BATCH {
                        let Ok(cmd) = self.commands.try_recv() else {
                            break;
                        };
                        if !self.handle(cmd) {
                            return Ok(());
                        }
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
                self.take_over();
            }
            self.issue_reads();
            if self.node.has_ready() {
                self.on_ready()?;
            }
        }
    }

    /// Handles one command; false means stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Propose { id, data } => {
                if self.node.propose(vec![], data).is_err() {
                    // Dropped: no leader to forward to (or a leadership transfer).
                    self.waiters.trigger(id, Err(Error::NoLeader));
                }
            }
            Command::ProposeConfChange { id, cc } => {
                if let Err(e) = self.node.propose_conf_change(vec![], cc) {
                    tracing::warn!(error = %e, "configuration change not proposed");
                    self.waiters.trigger(id, Err(Error::NoLeader));
                }
            }
            Command::ReadIndex(tx) => self.reads.queued.push(tx),
            Command::Step(m) => {
                // Messages from members outside the configuration (or stale ones) are
                // refused by raft; that is not this member's failure.
                if let Err(e) = self.node.step(m) {
                    tracing::debug!(error = %e, "raft message refused");
                }
            }
            Command::Unreachable(id) => self.node.report_unreachable(id),
            Command::PeerDown(id) => self.leader_down(id),
            Command::SnapshotStatus(id, ok) => self.node.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            Command::TransferLeader(id) => self.node.transfer_leader(id),
            Command::Progress { id, reply } => {
                let raft = &self.node.raft;
                let answer = (raft.state == StateRole::Leader)
                    .then(|| {
                        raft.prs()
                            .get(id)
                            .map(|p| (p.matched, raft.raft_log.committed))
                    })
                    .flatten();
                let _ = reply.send(answer);
            }
            Command::Stop => return false,
        }
        true
    }

    /// The leader's process is gone (its host refused our connection): rather than wait out
    /// an election timeout of silence, the voters left campaign now. An ordinary campaign
    /// would be refused: with check-quorum the others ignore votes while they heard from a
    /// leader within the timeout, and they heard from it a moment ago. So the campaign is
    /// the one a leadership transfer starts (raft's MsgTimeoutNow, as if the leader had
    /// handed over), which those leases do not block. Raft's safety does not rest on the
    /// leases; they only keep a partitioned member from disrupting a live leader, and a
    /// refused connection is not a partition. Survivors go in rank order, one heartbeat
    /// apart, so they do not split the vote; a later one goes only if no leader emerged.
    fn leader_down(&mut self, id: u64) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Follower || raft.leader_id != id || self.takeover.is_some() {
            return;
        }
        let (me, voters) = (raft.id, raft.prs().conf().voters());
        if !voters.contains(me) {
            return; // a learner does not campaign
        }
        // Our place among the surviving voters by id.
        let rank = voters.ids().iter().filter(|v| *v != id && *v < me).count();
        tracing::info!(
            leader = format!("{id:x}"),
            rank,
            "leader's process is gone; taking over without waiting for the election timeout"
        );
        self.takeover = Some(Takeover {
            leader: id,
            at: self.ticks + rank as u64 * self.heartbeat_ticks as u64,
        });
    }

    fn take_over(&mut self) {
        let Some(t) = self.takeover.as_ref() else {
            return;
        };
        if self.ticks < t.at {
            return;
        }
        let dead = t.leader;
        self.takeover = None;
        let raft = &self.node.raft;
        // Someone else won (or is winning) in the meantime: nothing to do.
        if raft.state != StateRole::Follower || (raft.leader_id != dead && raft.leader_id != 0) {
            return;
        }
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
        m.from = dead;
        m.to = raft.id;
        m.term = raft.term;
        if let Err(e) = self.node.step(m) {
            tracing::debug!(error = %e, "takeover campaign not started");
        }
    }

    /// One read index serves every read queued this turn (batched ReadIndex).
    fn issue_reads(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        let ctx = self.reads.next_ctx();
        let waiting = std::mem::take(&mut self.reads.queued);
        let raft = &self.node.raft;
        tracing::debug!(
            member = format!("{:x}", raft.id),
            ctx = ctx_number(&ctx),
            reads = waiting.len(),
            role = ?raft.state,
            term = raft.term,
            leader = format!("{:x}", raft.leader_id),
            committed = raft.raft_log.committed,
            "read index asked"
        );
        self.reads
            .inflight
            .insert(ctx.clone(), (waiting, self.ticks));
        self.node.read_index(ctx);
    }

    /// raft drops a read index silently when it cannot serve it yet (no leader, or a new
    /// leader that has not committed in its term); ask again until the caller times out.
    fn reissue_stale_reads(&mut self) {
        let asks = self
            .reads
            .reissue_stale(self.ticks, self.heartbeat_ticks as u64);
        for ctx in asks {
            self.node.read_index(ctx);
        }
    }

    fn on_ready(&mut self) -> Result<(), Error> {
        let mut rd = self.node.ready();
        if let Some(ss) = rd.ss() {
            let leader = ss.leader_id;
            let previous = self.status.leader.swap(leader, Ordering::Relaxed);
            if previous != leader {
                if leader != 0 {
                    crate::metrics::METRICS.leader_changes.inc();
                }
                let name = if leader == 0 {
                    "none".to_string()
                } else {
                    format!("{leader:x}")
                };
                tracing::info!(leader = name, term = self.node.raft.term, "leader changed");
                if previous != 0 {
                    // Proposals in flight went to a leader that is gone: tell their
                    // clients now rather than at their timeout (they may still commit, as
                    // after any timeout).
                    self.waiters.fail_all(Error::LeaderChanged);
                }
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
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        // 3. Entries committed earlier, in log order.
        self.hand_to_apply(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            let raft = &self.node.raft;
            tracing::debug!(
                member = format!("{:x}", raft.id),
                ctx = ctx_number(&rs.request_ctx),
                index = rs.index,
                role = ?raft.state,
                term = raft.term,
                committed = raft.raft_log.committed,
                applied = *self.applied.borrow(),
                "read index answered"
            );
            if let Some((waiting, _)) = self.reads.inflight.remove(&rs.request_ctx) {
                for tx in waiting {
                    let _ = tx.send(rs.index);
                }
            }
        }
        // 4. Persist and sync once for everything in this Ready (group commit).
        let mut batch = self.db.batch();
        self.node.mut_store().append(rd.entries(), &mut batch)?;
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs.clone(), &mut batch);
        }
        batch.commit()?;
        if rd.must_sync() {
            let started = Instant::now();
            self.db.persist(PersistMode::SyncData)?;
            crate::metrics::METRICS
                .wal_fsync
                .observe(crate::metrics::seconds(started.elapsed()));
        }
        // 5. Acknowledgements of persisted state.
        self.send(rd.take_persisted_messages());
        // 6. What our own persistence committed.
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
        self.status
            .last_index
            .store(self.node.store().last_log_index(), Ordering::Relaxed);
        self.trim_log()
    }

    /// The apply loop restores the state from the received snapshot file (and syncs it);
    /// only then does the log restart after the snapshot.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Error> {
        let meta = snap.get_metadata();
        let path = snap_path(&self.snap_dir, meta.term, meta.index);
        tracing::info!(index = meta.index, term = meta.term, "installing snapshot");
        let (done, restored) = mpsc::channel();
        self.apply
            .send(ApplyTask::Snapshot {
                path: path.clone(),
                done,
            })
            .map_err(|_| Error::Stopped)?;
        restored.recv().map_err(|_| Error::Stopped)??;
        let mut batch = self.db.batch();
        self.node.mut_store().apply_snapshot(snap, &mut batch);
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        remove_others(&self.snap_dir, &path);
        Ok(())
    }

    /// Hands committed entries to the apply loop. Configuration changes take effect in raft
    /// here, in log order; the apply loop records the resulting configuration with the state.
    fn hand_to_apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conf_states: HashMap<u64, Option<ConfState>> = HashMap::new();
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryConfChangeV2 {
                continue;
            }
            let applied = ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| raft::Error::ConfChangeError(err.to_string()))
                .and_then(|cc| self.node.apply_conf_change(&cc));
            match applied {
                Ok(cs) => {
                    tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
                    self.node.mut_store().set_conf_state(cs.clone());
                    conf_states.insert(e.index, Some(cs));
                }
                Err(err) => {
                    // raft refused it on every member alike: the membership stays as is.
                    tracing::warn!(index = e.index, error = %err, "configuration change refused");
                    conf_states.insert(e.index, None);
                }
            }
        }
        self.apply
            .send(ApplyTask::Entries {
                entries,
                conf_states,
            })
            .map_err(|_| Error::Stopped)
    }

    fn send(&self, msgs: Vec<raft::eraftpb::Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    /// Compacts the log once `--snapshot-count` entries were applied since the last time,
    /// keeping a tail for followers that lag a little; one further behind gets a snapshot.
    fn trim_log(&mut self) -> Result<(), Error> {
        let applied = *self.applied.borrow();
        self.node.mut_store().set_applied(applied);
        let first = self.node.store().first_log_index();
        if applied < first + self.snapshot_count {
            return Ok(());
        }
        let keep = CATCH_UP_ENTRIES.min(self.snapshot_count);
        let mut batch = self.db.batch();
        self.node.mut_store().trim(applied - keep, &mut batch);
        batch.commit()?;
        tracing::debug!(upto = applied - keep, "raft log compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PendingReads;
    use std::collections::HashSet;

    /// raft matches a heartbeat's acknowledgement to a pending read by context alone: a
    /// context used twice lets an old acknowledgement confirm a new read.
    #[test]
    fn read_contexts_never_repeat_across_members_and_restarts() {
        let mut seen = HashSet::new();
        let mut first = PendingReads::new(7);
        for _ in 0..100 {
            assert!(seen.insert(first.next_ctx()));
        }
        let mut other = PendingReads::new(8);
        for _ in 0..100 {
            assert!(seen.insert(other.next_ctx()));
        }
        // The same member restarted: its counter starts from the clock, past every context
        // the previous process issued (one per batch of reads, far fewer than one per ns).
        let issued = first.next_ctx;
        while PendingReads::new(7).next_ctx <= issued {
            std::hint::spin_loop();
        }
        let mut again = PendingReads::new(7);
        for _ in 0..100 {
            assert!(seen.insert(again.next_ctx()));
        }
    }

    /// A read asked again goes under a context never asked before; an answer to the old
    /// one finds nothing; a read whose caller gave up is not asked again.
    #[test]
    fn a_read_asked_again_gets_a_new_context() {
        let mut reads = PendingReads::new(7);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<u64>();
        let (gone, gone_rx) = tokio::sync::oneshot::channel::<u64>();
        drop(gone_rx);
        let first = reads.next_ctx();
        reads.inflight.insert(first.clone(), (vec![tx], 0));
        let abandoned = reads.next_ctx();
        reads.inflight.insert(abandoned.clone(), (vec![gone], 0));

        // Not yet past its patience: nothing to ask again.
        assert!(reads.reissue_stale(3, 3).is_empty());
        assert!(reads.inflight.contains_key(&first));

        let asked = reads.reissue_stale(4, 3);
        assert_eq!(
            asked.len(),
            1,
            "the abandoned read is dropped, not asked again"
        );
        let second = asked[0].clone();
        assert_ne!(second, first);
        assert_ne!(second, abandoned);
        assert!(
            !reads.inflight.contains_key(&first),
            "the old context is gone"
        );
        assert!(!reads.inflight.contains_key(&abandoned));

        // Asked again once more, later: a third context, never one of the earlier two.
        let third = reads.reissue_stale(8, 3);
        assert_eq!(third.len(), 1);
        assert!(third[0] != first && third[0] != second);

        // The waiter is still the same read, answered under the newest context.
        let (waiting, _) = reads.inflight.remove(&third[0]).expect("pending");
        for w in waiting {
            let _ = w.send(42);
        }
        assert_eq!(rx.try_recv(), Ok(42));
    }
}
