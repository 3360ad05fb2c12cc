//! The Lease service, and the leader's expiry loop that revokes leases whose deadline
//! passed (through raft, so every member deletes the same keys at the same revision).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::cairnpb::internal_request::Request as Internal;
use cairn_api::cairnpb::peer_client::PeerClient;
use cairn_api::cairnpb::LeaseExpiry;
use cairn_api::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::lease::MAX_LEASE_TTL;
use crate::node::Node;

pub struct LeaseService {
    node: Arc<Node>,
    /// Flips to true when the server stops: keep-alive streams end.
    shutdown: watch::Receiver<bool>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>, shutdown: watch::Receiver<bool>) -> Self {
        LeaseService { node, shutdown }
    }
}

/// How long a call forwarded to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Renews a lease for a keep-alive on the leader, once it has applied everything it
/// committed (so a lease granted just before is known). Unknown leases answer TTL 0.
pub(super) async fn renew_local(node: &Node, id: i64) -> Result<i64, Error> {
    node.wait_linearizable().await?;
    match node.store.lessor().renew(id) {
        Ok(ttl) => Ok(ttl),
        Err(Error::LeaseNotFound) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The leader's Peer service, to which followers forward lease calls: only the leader
/// tracks deadlines.
pub(super) fn leader_peer(node: &Node) -> Result<PeerClient<Channel>, Error> {
    match node.raft_status.leader() {
        0 => Err(Error::NoLeader),
        leader => node.transport.client(leader).ok_or(Error::NoLeader),
    }
}

fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(FORWARD_TIMEOUT);
    r
}

/// Renews a lease on whichever member leads.
async fn renew(node: &Node, id: i64) -> Result<i64, Status> {
    if node.is_leader() {
        return Ok(renew_local(node, id).await?);
    }
    let resp = leader_peer(node)?
        .lease_renew(forwarded(LeaseKeepAliveRequest { id }))
        .await?;
    Ok(resp.into_inner().ttl)
}

/// TimeToLive as the leader answers it (the remaining time is known there only).
pub(super) async fn time_to_live_local(
    node: &Node,
    r: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Error> {
    node.wait_linearizable().await?;
    let header = Some(node.header(0));
    Ok(match node.store.lessor().time_to_live(r.id) {
        Some(info) => LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: info.remaining,
            granted_ttl: info.granted_ttl,
            keys: if r.keys { info.keys } else { vec![] },
        },
        // An unknown (or expired) lease answers TTL -1, not an error, as etcd.
        None => LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: -1,
            ..Default::default()
        },
    })
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // No permission needed (etcd's rule), but a token given must check out.
        let who = super::auth::who(&self.node, &req).await?;
        let mut g = req.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge.into());
        }
        if g.id == 0 {
            // The proposer picks the id, so every member grants the same lease.
            g.id = (self.node.next_request_id() & (i64::MAX as u64)) as i64;
        }
        // etcd's per-lease overhead.
        self.node.check_quota(64).await?;
        Ok(Response::new(
            self.node.propose_for(&who, Internal::LeaseGrant(g)).await?,
        ))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: the apply step checks write on each.
        let who = super::auth::who(&self.node, &req).await?;
        let revoke = Internal::LeaseRevoke(req.into_inner());
        Ok(Response::new(self.node.propose_for(&who, revoke).await?))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let ka = tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(ka)) => ka,
                        Ok(None) | Err(_) => return,
                    },
                    _ = super::stopped(&mut shutdown) => return,
                };
                let resp = match renew(&node, ka.id).await {
                    Ok(ttl) => Ok(LeaseKeepAliveResponse {
                        header: Some(node.header(0)),
                        id: ka.id,
                        ttl,
                    }),
                    Err(e) => Err(e),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        if self.node.is_leader() {
            return Ok(Response::new(time_to_live_local(&self.node, r).await?));
        }
        let mut resp = leader_peer(&self.node)?
            .lease_time_to_live(forwarded(r))
            .await?
            .into_inner();
        // The header names the member that answered the client.
        resp.header = Some(self.node.header(0));
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node.wait_linearizable().await?;
        let leases = self
            .node
            .store
            .lessor()
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.header(0)),
            leases,
        }))
    }
}

/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);
/// Leases revoked per raft entry, and such entries in flight at once. A write proposed
/// during an expiry storm waits behind what is in flight, so this bounds what a storm adds
/// to a put's latency (about 2 × 250 revocations) while the pipeline stays full: in the lease
/// storm bench (docs/benchmarks.md) 250 × 2 halved the put p99 of 1,000 × 4 during the storm
/// and cleared a million leases no later.
const EXPIRY_BATCH: usize = 250;
/// See [`EXPIRY_BATCH`].
const EXPIRY_IN_FLIGHT: usize = 2;

/// Runs on every member: while this member leads (its lessor is primary), it proposes
/// revoking expired leases, many per entry and a few entries at a time, and again after
/// `2 × election_timeout` for any such revoke not applied by then.
pub async fn expiry_loop(
    node: Arc<Node>,
    election_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
        // The raft loop promotes the lessor when this member becomes leader.
        let lessor = node.store.lessor();
        if !lessor.is_primary() {
            continue;
        }
        while in_flight.len() < EXPIRY_IN_FLIGHT {
            let ids = lessor.expired(Instant::now(), election_timeout * 2, EXPIRY_BATCH);
            if ids.is_empty() {
                break;
            }
            let node = node.clone();
            in_flight.spawn(async move {
                let n = ids.len();
                let expiry = Internal::LeaseExpiry(LeaseExpiry { ids });
                match node.propose_and_wait(expiry).await {
                    Ok(_) => tracing::debug!(leases = n, "expired leases revoked"),
                    Err(e) => {
                        tracing::warn!(leases = n, error = %e, "revoking expired leases failed; will retry")
                    }
                }
            });
        }
    }
}
