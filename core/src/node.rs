//! The local member as the gRPC services see it: propose a request and wait for it to be
//! applied, pass a linearizable read barrier, read the store, fill response headers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::cairnpb::{
    internal_request::Request, ConfChangeContext, InternalRequest, RequestHeader,
};
use cairn_api::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, Member, ResponseHeader,
};
use prost::Message;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tokio::sync::{oneshot, watch};

use crate::apply::{Answer, Applied};
use crate::auth::AuthInfo;
use crate::error::Error;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::raft::{Command, RaftStatus, Transport};
use crate::wait::{IdGenerator, Registration, Waiters};

pub struct Node {
    pub store: Arc<Store>,
    pub membership: Arc<Membership>,
    pub raft_status: Arc<RaftStatus>,
    pub transport: Arc<Transport>,
    commands: mpsc::Sender<Command>,
    waiters: Arc<Waiters>,
    ids: IdGenerator,
    applied: watch::Receiver<u64>,
    max_request_bytes: usize,
    request_timeout: Duration,
    quota: Option<u64>,
    max_pending: usize,
    /// Linearizable reads waiting for their read index.
    pending_reads: AtomicUsize,
    /// `--client-cert-auth`: a certificate's Common Name identifies a client without a token.
    client_cert_auth: bool,
}

/// etcd's `maxGapBetweenApplyAndCommitIndex`: proposals are refused while applying lags
/// this far behind committing, so a slow apply cannot let the backlog grow without bound.
const MAX_APPLY_GAP: u64 = 5_000;

pub struct NodeParts {
    pub store: Arc<Store>,
    pub membership: Arc<Membership>,
    pub raft_status: Arc<RaftStatus>,
    pub transport: Arc<Transport>,
    pub commands: mpsc::Sender<Command>,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    /// Storage quota (`--quota-backend-bytes`), if any.
    pub quota: Option<u64>,
    /// `--experimental-max-pending-requests`.
    pub max_pending: usize,
    pub client_cert_auth: bool,
}

impl Node {
    pub fn new(p: NodeParts) -> Node {
        Node {
            ids: IdGenerator::new(p.membership.local_id),
            store: p.store,
            membership: p.membership,
            raft_status: p.raft_status,
            transport: p.transport,
            commands: p.commands,
            waiters: p.waiters,
            applied: p.applied,
            max_request_bytes: p.max_request_bytes,
            request_timeout: p.request_timeout,
            quota: p.quota,
            max_pending: p.max_pending.max(1),
            pending_reads: AtomicUsize::new(0),
            client_cert_auth: p.client_cert_auth,
        }
    }

    /// A fresh id, unique across members (request ids, server-chosen lease ids).
    pub fn next_request_id(&self) -> u64 {
        self.ids.next()
    }

    /// Replicates `request` through raft and returns what applying it produced. Returns only
    /// after the entry is durable on a quorum and applied to this member's store. For the
    /// member's own requests, which auth never refuses; a client's go through
    /// [`Node::propose_as`].
    pub async fn propose_and_wait(&self, request: Request) -> Result<Applied, Error> {
        self.propose(None, request).await
    }

    /// [`Node::propose_and_wait`] for a client's request: the apply step checks it against
    /// `who`'s permissions at its place in the log.
    pub async fn propose_as(&self, who: &AuthInfo, request: Request) -> Result<Applied, Error> {
        self.propose(Some(who.header()), request).await
    }

    async fn propose(
        &self,
        header: Option<RequestHeader>,
        request: Request,
    ) -> Result<Applied, Error> {
        let id = self.ids.next();
        let data = InternalRequest {
            id,
            header,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        if self.raft_status.commit_index() > self.applied_index() + MAX_APPLY_GAP
            || self.waiters.pending() >= self.max_pending
        {
            crate::metrics::METRICS.proposals_failed.inc();
            return Err(Error::TooManyRequests);
        }
        let waiting = self.waiters.register(id);
        let result = self.wait_for(waiting, Command::Propose { id, data }).await;
        if let Err(Error::NoLeader | Error::LeaderChanged | Error::Timeout | Error::Stopped) =
            &result
        {
            crate::metrics::METRICS.proposals_failed.inc();
        }
        result
    }

    pub fn client_cert_auth(&self) -> bool {
        self.client_cert_auth
    }

    /// Proposals waiting to be applied.
    pub fn pending_proposals(&self) -> usize {
        self.waiters.pending()
    }

    /// Sends `cmd` to the raft thread and waits for the answer to its request. The waiter
    /// is withdrawn however this ends, including when the caller drops the future.
    async fn wait_for(
        &self,
        mut waiting: Registration<'_>,
        cmd: Command,
    ) -> Result<Applied, Error> {
        if self.commands.send(cmd).is_err() {
            return Err(Error::Stopped);
        }
        match tokio::time::timeout(self.request_timeout, waiting.answer()).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Proposes a configuration change of member `node_id` and waits until it is applied
    /// here; returns the members after it.
    pub async fn propose_conf_change(
        &self,
        change: ConfChangeType,
        node_id: u64,
        member: Option<Member>,
    ) -> Result<Vec<Member>, Error> {
        let id = self.ids.next();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = node_id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.set_context(
            ConfChangeContext {
                request_id: id,
                member,
            }
            .encode_to_vec()
            .into(),
        );
        let waiting = self.waiters.register(id);
        match self
            .wait_for(waiting, Command::ProposeConfChange { id, cc })
            .await?
        {
            Applied::Members(m) => Ok(m),
            _ => Err(Error::Storage("apply answered with another kind".into())),
        }
    }

    /// Whether this member is the raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft_status.leader() == self.membership.local_id
    }

    /// On the leader: (match index of member `id`, commit index).
    pub async fn progress(&self, id: u64) -> Option<(u64, u64)> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Progress { id, reply }).ok()?;
        rx.await.ok().flatten()
    }

    /// Asks raft to hand leadership to `id`.
    pub fn transfer_leader(&self, id: u64) -> Result<(), Error> {
        self.commands
            .send(Command::TransferLeader(id))
            .map_err(|_| Error::Stopped)
    }

    /// Stops the raft loop.
    pub fn stop_raft(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// etcd's quota check before a write that adds `cost` bytes: refused while the NOSPACE
    /// alarm is raised; a write that would go over the quota raises it (through raft, so
    /// every member refuses such writes from then on) and is refused.
    pub async fn check_quota(&self, cost: u64) -> Result<(), Error> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        // What adds nothing (a txn that only deletes) goes even under NOSPACE.
        if cost == 0 {
            return Ok(());
        }
        if self.store.alarmed(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        let used = self.store.size_in_use();
        // As etcd: a write fits only strictly below the quota.
        if used + cost < quota {
            return Ok(());
        }
        tracing::warn!(used, cost, quota, "storage quota exceeded; raising NOSPACE");
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.membership.local_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.propose_and_wait(Request::Alarm(alarm)).await {
            tracing::warn!(error = %e, "raising NOSPACE");
        }
        Err(Error::NoSpace)
    }

    /// [`Node::propose_as`] for requests answered with a response of kind `T`, its header
    /// completed with this member's identity.
    pub async fn propose_for<T: Answer>(
        &self,
        who: &AuthInfo,
        request: Request,
    ) -> Result<T, Error> {
        let applied = self.propose_as(who, request).await?;
        // Each request kind is answered with its own response kind by the apply loop.
        let mut resp = T::from_applied(applied)
            .ok_or_else(|| Error::Storage("apply answered with another kind".into()))?;
        self.fill_header(resp.header_mut());
        Ok(resp)
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by the leader (ReadIndex): a read after this sees every acknowledged write.
    pub async fn wait_linearizable(&self) -> Result<(), Error> {
        let _counted = PendingRead::enter(&self.pending_reads, self.max_pending)?;
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ReadIndex(tx))
            .map_err(|_| Error::Stopped)?;
        let index = match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) => return Err(Error::Stopped),
            Err(_) => return Err(Error::Timeout),
        };
        self.wait_applied(index).await?;
        tracing::debug!(
            member = format!("{:x}", self.membership.local_id),
            index,
            applied = *self.applied.borrow(),
            rev = self.store.current_rev(),
            "linearizable read may proceed"
        );
        Ok(())
    }

    /// Waits until the apply loop has applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), Error> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout(self.request_timeout, async {
            applied.wait_for(|a| *a >= index).await.map(|_| ())
        })
        .await;
        match reached {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Waits until the history compacted at `rev` is gone from this member's storage, as
    /// long as that takes: etcd's physical compaction waits without a deadline too (on a
    /// big store it takes minutes), and a client that gives up drops the wait.
    pub async fn wait_compacted(&self, rev: i64) -> Result<(), Error> {
        let mut finished = self.store.compacted();
        let done = finished.wait_for(|f| *f >= rev).await.map(|_| ());
        done.map_err(|_| Error::Stopped)
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A top-level response header; a zero `revision` means the current one.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.membership.cluster_id,
            member_id: self.membership.local_id,
            revision: if revision == 0 {
                self.store.current_rev()
            } else {
                revision
            },
            raft_term: self.raft_status.term(),
        }
    }

    /// Fills the identity fields of a header built by the applier.
    pub fn fill_header(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}

/// One linearizable read counted against the pending limit while it waits.
struct PendingRead<'a>(&'a AtomicUsize);

impl<'a> PendingRead<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Result<PendingRead<'a>, Error> {
        if count.fetch_add(1, Ordering::Relaxed) >= max {
            count.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::TooManyRequests);
        }
        Ok(PendingRead(count))
    }
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
