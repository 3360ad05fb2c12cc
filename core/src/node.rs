//! The local member as the gRPC services see it: propose a request and wait for it to be
//! applied, pass a linearizable read barrier, read the store, fill response headers.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::cairnpb::{internal_request::Request, InternalRequest};
use cairn_api::etcdserverpb::ResponseHeader;
use prost::Message;
use tokio::sync::{oneshot, watch};

use crate::apply::{Answer, Applied};
use crate::error::Error;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::raft::{Command, RaftStatus};
use crate::wait::{IdGenerator, Waiters};

pub struct Node {
    pub store: Arc<Store>,
    pub membership: Membership,
    pub raft_status: Arc<RaftStatus>,
    commands: mpsc::Sender<Command>,
    waiters: Arc<Waiters>,
    ids: IdGenerator,
    applied: watch::Receiver<u64>,
    max_request_bytes: usize,
    request_timeout: Duration,
}

pub struct NodeParts {
    pub store: Arc<Store>,
    pub membership: Membership,
    pub raft_status: Arc<RaftStatus>,
    pub commands: mpsc::Sender<Command>,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
}

impl Node {
    pub fn new(p: NodeParts) -> Node {
        Node {
            ids: IdGenerator::new(p.membership.local_id),
            store: p.store,
            membership: p.membership,
            raft_status: p.raft_status,
            commands: p.commands,
            waiters: p.waiters,
            applied: p.applied,
            max_request_bytes: p.max_request_bytes,
            request_timeout: p.request_timeout,
        }
    }

    /// A fresh id, unique across members (request ids, server-chosen lease ids).
    pub fn next_request_id(&self) -> u64 {
        self.ids.next()
    }

    /// Replicates `request` through raft and returns what applying it produced. Returns only
    /// after the entry is durable on a quorum and applied to this member's store.
    pub async fn propose_and_wait(&self, request: Request) -> Result<Applied, Error> {
        let id = self.ids.next();
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let rx = self.waiters.register(id);
        if self.commands.send(Command::Propose { id, data }).is_err() {
            self.waiters.cancel(id);
            return Err(Error::Stopped);
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.waiters.cancel(id);
                Err(Error::Timeout)
            }
        }
    }

    /// [`Node::propose_and_wait`] for requests answered with a response of kind `T`, its
    /// header completed with this member's identity.
    pub async fn propose_for<T: Answer>(&self, request: Request) -> Result<T, Error> {
        let applied = self.propose_and_wait(request).await?;
        // Each request kind is answered with its own response kind by the apply loop.
        let mut resp = T::from_applied(applied)
            .ok_or_else(|| Error::Storage("apply answered with another kind".into()))?;
        self.fill_header(resp.header_mut());
        Ok(resp)
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by the leader (ReadIndex): a read after this sees every acknowledged write.
    pub async fn wait_linearizable(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ReadIndex(tx))
            .map_err(|_| Error::Stopped)?;
        let index = match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) => return Err(Error::Stopped),
            Err(_) => return Err(Error::Timeout),
        };
        self.wait_applied(index).await
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
