//! The Peer service on the peer URLs: raft messages and snapshots from other members, the
//! member list for joining members, and lease calls forwarded to the leader.

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use cairn_api::cairnpb::{
    peer_server::Peer, ClusterState, FaultRequest, MembersRequest, RaftAck, RaftEnvelope,
    SnapshotChunk,
};
use cairn_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberPromoteRequest,
};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tonic::{Request, Response, Status, Streaming};

use super::lease;
use crate::error::Error;
use crate::node::Node;
use crate::raft::snapshot::{snap_path, Receiver};
use crate::raft::Command;

pub struct PeerService {
    node: Arc<Node>,
    commands: std_mpsc::Sender<Command>,
    snap_dir: PathBuf,
    fault_injection: bool,
    /// Peer streams never end on their own; they end when the server stops.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    pub fn new(
        node: Arc<Node>,
        commands: std_mpsc::Sender<Command>,
        snap_dir: PathBuf,
        fault_injection: bool,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        PeerService {
            node,
            commands,
            snap_dir,
            fault_injection,
            shutdown,
        }
    }

    fn step(&self, m: Message) -> Result<(), Status> {
        if self.node.transport.is_blocked(m.from) {
            return Ok(());
        }
        if let Err(why) = self.admissible(&m) {
            // Raft trusts what it is stepped: a commit index past the log aborts raft-rs,
            // a stranger's term deposes a leader. Only members' network messages pass.
            tracing::warn!(
                from = format!("{:x}", m.from),
                to = format!("{:x}", m.to),
                kind = ?m.get_msg_type(),
                "raft message refused: {why}"
            );
            return Err(Status::permission_denied(format!(
                "raft message refused: {why}"
            )));
        }
        self.commands
            .send(Command::Step(m))
            .map_err(|_| Status::from(Error::Stopped))
    }

    /// Whether a raft message may be stepped: addressed to this member, from another
    /// current member, and of a kind members send each other (not one raft makes locally,
    /// such as a campaign trigger).
    fn admissible(&self, m: &Message) -> Result<(), &'static str> {
        let membership = &self.node.membership;
        if m.to != membership.local_id {
            return Err("addressed to another member");
        }
        if m.from == membership.local_id || !membership.is_member(m.from) {
            return Err("not from a member of this cluster");
        }
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => Err("a message raft only makes locally"),
            _ => Ok(()),
        }
    }
}

/// Runs a received snapshot's file work on the blocking pool: this service runs on the
/// raft-net thread, which also carries heartbeats, and syncing a large file can take longer
/// than an election timeout.
async fn on_disk<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("snapshot file: {e}")))?
}

fn decode(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn stream(
        &self,
        req: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut inbound = req.into_inner();
        let mut shutdown = self.shutdown.clone();
        loop {
            let env = tokio::select! {
                env = inbound.message() => env?,
                _ = super::stopped(&mut shutdown) => None,
            };
            let Some(env) = env else {
                return Ok(Response::new(RaftAck {}));
            };
            self.step(decode(&env.message)?)?;
        }
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut inbound = req.into_inner();
        let io = |e: std::io::Error| Status::internal(format!("snapshot file: {e}"));
        let dir = self.snap_dir.clone();
        let mut file = on_disk(move || Receiver::create(&dir).map_err(io)).await?;
        while let Some(chunk) = inbound.message().await? {
            if !chunk.data.is_empty() {
                let data = chunk.data;
                file = on_disk(move || {
                    file.write(&data).map_err(io)?;
                    Ok(file)
                })
                .await?;
            }
            if chunk.message.is_empty() {
                continue;
            }
            // The last chunk: the raft message, once every byte it describes is on disk.
            let m = decode(&chunk.message)?;
            let meta = m.get_snapshot().get_metadata();
            let path = snap_path(&self.snap_dir, meta.term, meta.index);
            let checksum = chunk.checksum;
            on_disk(move || Ok(file.finish(&checksum, &path)?)).await?;
            tracing::info!(
                from = format!("{:x}", m.from),
                index = meta.index,
                "snapshot received"
            );
            self.step(m)?;
            return Ok(Response::new(RaftAck {}));
        }
        Err(Status::aborted("snapshot stream ended early"))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<ClusterState>, Status> {
        Ok(Response::new(self.node.membership.state()))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        let ttl = lease::renew_local(&self.node, id).await?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: Some(self.node.header(0)),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(
            lease::time_to_live_local(&self.node, req.into_inner()).await?,
        ))
    }

    async fn learner_ready(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<RaftAck>, Status> {
        super::cluster::learner_ready(&self.node, req.into_inner().id).await?;
        Ok(Response::new(RaftAck {}))
    }

    async fn fault(&self, req: Request<FaultRequest>) -> Result<Response<RaftAck>, Status> {
        if !self.fault_injection {
            return Err(Status::unimplemented(
                "fault injection needs --experimental-fault-injection",
            ));
        }
        self.node.transport.set_blocked(&req.into_inner().blocked);
        Ok(Response::new(RaftAck {}))
    }
}
