//! The Maintenance service: member status, alarms, hashes, defragmentation, leadership
//! transfer and backups.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use cairn_api::cairnpb::internal_request::Request as Internal;
use cairn_api::etcdserverpb::{
    alarm_request::AlarmAction, maintenance_server::Maintenance, AlarmMember, AlarmRequest,
    AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::node::Node;

/// How long MoveLeader waits for the transferee to take over.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// The etcd API version Cairn implements; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.4.0";
/// The cluster version reported beside it (`/version`): every member speaks the same one.
pub const ETCD_CLUSTER_VERSION: &str = ETCD_API_VERSION;

/// An alarm as etcd prints it (protobuf's text form of `AlarmMember`: zero fields left
/// out, each field followed by a space).
fn alarm_text(a: &AlarmMember) -> String {
    let mut text = String::new();
    if a.member_id != 0 {
        text.push_str(&format!("memberID:{} ", a.member_id));
    }
    if a.alarm != 0 {
        match AlarmType::try_from(a.alarm) {
            Ok(t) => text.push_str(&format!("alarm:{} ", t.as_str_name())),
            Err(_) => text.push_str(&format!("alarm:{} ", a.alarm)),
        }
    }
    text
}

/// Bytes of backup per Snapshot message.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

pub struct MaintenanceService {
    node: Arc<Node>,
    /// Where backups are written before they are streamed.
    backup_dir: PathBuf,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl MaintenanceService {
    pub fn new(
        node: Arc<Node>,
        backup_dir: PathBuf,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        MaintenanceService {
            node,
            backup_dir,
            shutdown,
        }
    }
}

impl MaintenanceService {
    /// etcd's check for defragment, snapshot and the hashes: the administrator only, and
    /// the auth package's errors as they are (UNKNOWN, `auth: …`).
    async fn admin<T: Sync>(&self, req: &Request<T>) -> Result<(), Status> {
        let who = super::auth::who(&self.node, req)
            .await
            .map_err(Error::raw_auth_status)?;
        self.node
            .store
            .auth()
            .check_admin(&who)
            .map_err(Error::raw_auth_status)
    }
}

/// Streams a backup file in chunks with the bytes still to come and then its SHA-256 in a
/// message of its own, as etcd does; the file is removed once sent, once the client goes
/// away, or when the server stops (a stalled client holds up neither shutdown nor a
/// blocking thread).
fn stream_backup(
    file: crate::backup::BackupFile,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<SnapshotResponse, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut f = match std::fs::File::open(&file.path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("backup file: {e}"))))
                    .await;
                return;
            }
        };
        let mut sent = 0u64;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let mut blob = vec![0u8; SNAPSHOT_CHUNK];
                let n = std::io::Read::read(&mut f, &mut blob);
                (
                    f,
                    n.map(|n| {
                        blob.truncate(n);
                        blob
                    }),
                )
            })
            .await;
            let blob = match read {
                Ok((back, Ok(blob))) => {
                    f = back;
                    blob
                }
                Ok((_, Err(e))) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("backup file: {e}"))))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            if blob.is_empty() {
                let m = SnapshotResponse {
                    header: None,
                    remaining_bytes: 0,
                    blob: sha.finish().as_ref().to_vec(),
                };
                tokio::select! {
                    _ = tx.send(Ok(m)) => {},
                    _ = super::stopped(&mut shutdown) => {},
                }
                return;
            }
            sent += blob.len() as u64;
            sha.update(&blob);
            // As etcd's, the chunks carry no header.
            let m = SnapshotResponse {
                header: None,
                remaining_bytes: file.size.saturating_sub(sent),
                blob,
            };
            tokio::select! {
                r = tx.send(Ok(m)) => if r.is_err() { return },
                _ = super::stopped(&mut shutdown) => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = BoxStream<SnapshotResponse>;

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        // Walking the data directory and the meta keyspace is file work: off the workers.
        let store = node.store.clone();
        let (db_size, in_use) = tokio::task::spawn_blocking(move || {
            (store.db_size(), store.size_in_use() + store.meta_size())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        // As etcd: each raised alarm, in its text form.
        let errors = node.store.alarms().iter().map(alarm_text).collect();
        Ok(Response::new(StatusResponse {
            header: Some(node.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size: db_size as i64,
            leader: node.raft_status.leader(),
            raft_index: node.raft_status.commit_index(),
            raft_term: node.raft_status.term(),
            raft_applied_index: node.applied_index(),
            errors,
            db_size_in_use: in_use as i64,
            is_learner: node
                .membership
                .member(node.membership.local_id)
                .is_some_and(|m| m.is_learner),
        }))
    }

    /// Hands leadership to another voting member; only the leader can (as etcd).
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let node = &self.node;
        if !node.is_leader() {
            return Err(Error::NotLeader.into());
        }
        match node.membership.member(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(Error::BadLeaderTransferee.into()),
        }
        if target != node.membership.local_id {
            node.transfer_leader(target)?;
            let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
            while node.raft_status.leader() != target {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::LeaderTransferTimeout.into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(node.header(0)),
        }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<BoxStream<SnapshotResponse>>, Status> {
        self.admin(&req).await?;
        let store = self.node.store.clone();
        let dir = self.backup_dir.clone();
        let file = tokio::task::spawn_blocking(move || crate::backup::write(&store, &dir))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        tracing::info!(bytes = file.size, "streaming a backup");
        let stream = stream_backup(file, self.shutdown.clone());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req).await?;
        let store = self.node.store.clone();
        tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        // As etcd: no header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req).await?;
        let store = self.node.store.clone();
        let (hash, rev) = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let mut header = self.node.header(0);
        header.revision = rev;
        Ok(Response::new(HashResponse {
            header: Some(header),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req).await?;
        let rev = req.into_inner().revision;
        let store = self.node.store.clone();
        let (hash, compact_revision, current) =
            tokio::task::spawn_blocking(move || store.hash_kv(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        let mut header = self.node.header(0);
        header.revision = current;
        Ok(Response::new(HashKvResponse {
            header: Some(header),
            hash,
            compact_revision,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No permission needed (etcd's rule), but a token given must check out; as the
        // admin checks here, the failure is the auth package's own.
        let who = super::auth::who(&self.node, &req)
            .await
            .map_err(Error::raw_auth_status)?;
        let req = req.into_inner();
        match AlarmAction::try_from(req.action) {
            // As etcd, alarm answers carry no header.
            // As etcd: NONE lists every alarm, another type only its own.
            Ok(AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: None,
                alarms: self
                    .node
                    .store
                    .alarms()
                    .into_iter()
                    .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                    .collect(),
            })),
            // Raised and cleared through raft, so every member agrees on them.
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                if AlarmType::try_from(req.alarm).is_err() {
                    return Err(Status::invalid_argument("etcdserver: unknown alarm type"));
                }
                // As etcd 3.4: raising NONE is a no-op; an alarm is kept under whatever
                // member ID it names (0 too), and enforced and cleared like any other.
                let activate = req.action == AlarmAction::Activate as i32;
                if activate && req.alarm == AlarmType::None as i32 {
                    return Ok(Response::new(AlarmResponse {
                        header: None,
                        alarms: vec![],
                    }));
                }
                let mut resp: AlarmResponse =
                    self.node.propose_for(&who, Internal::Alarm(req)).await?;
                resp.header = None;
                Ok(Response::new(resp))
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }
}
