//! Cluster membership and maintenance calls.

use cairn_api::etcdserverpb::{
    alarm_request::AlarmAction, cluster_client::ClusterClient,
    maintenance_client::MaintenanceClient, AlarmMember, AlarmRequest, AlarmResponse,
    DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};

use crate::client::{request, Retry};
use crate::{Client, Error};

impl Client {
    /// Every member of the cluster.
    pub async fn member_list(&self) -> Result<MemberListResponse, Error> {
        self.call(Retry::Always, |ch, t| async move {
            Ok(ClusterClient::new(ch)
                .member_list(request(MemberListRequest::default(), t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Adds a member (as a learner if asked); start it with `--initial-cluster-state existing`.
    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse, Error> {
        let req = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner,
        };
        self.call(Retry::IfNotApplied, |ch, t| {
            let req = req.clone();
            async move {
                Ok(ClusterClient::new(ch)
                    .member_add(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Removes a member; a removed member shuts itself down.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse, Error> {
        self.call(Retry::IfNotApplied, |ch, t| async move {
            Ok(ClusterClient::new(ch)
                .member_remove(request(MemberRemoveRequest { id }, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Changes a member's peer URLs.
    pub async fn member_update(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse, Error> {
        let req = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        // Setting the same URLs twice is harmless.
        self.call(Retry::Always, |ch, t| {
            let req = req.clone();
            async move {
                Ok(ClusterClient::new(ch)
                    .member_update(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Makes a learner a voting member (once it has caught up with the leader).
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, Error> {
        self.call(Retry::IfNotApplied, |ch, t| async move {
            Ok(ClusterClient::new(ch)
                .member_promote(request(MemberPromoteRequest { id }, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// The status of the member behind `endpoint` (one of [`Client::endpoints`], or any
    /// other client URL).
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse, Error> {
        let t = self.inner.options.request_timeout;
        Ok(self
            .maintenance(endpoint)
            .await?
            .status(request(StatusRequest {}, t))
            .await?
            .into_inner())
    }

    /// A Maintenance client for the member behind `endpoint`.
    async fn maintenance(
        &self,
        endpoint: &str,
    ) -> Result<MaintenanceClient<crate::auth::AuthChannel>, Error> {
        let channel = match self.inner.endpoints.iter().find(|(u, _)| u == endpoint) {
            Some((_, ch)) => ch.clone(),
            None => {
                self.inner
                    .options
                    .endpoint(endpoint)?
                    .connect_with_connector(self.inner.connector.clone())
                    .await?
            }
        };
        Ok(MaintenanceClient::new(self.stamped(channel)).max_decoding_message_size(usize::MAX))
    }

    /// The raised alarms (NOSPACE when the storage quota was exhausted), cluster-wide.
    pub async fn alarm_list(&self) -> Result<AlarmResponse, Error> {
        let req = AlarmRequest {
            action: AlarmAction::Get as i32,
            ..Default::default()
        };
        self.call(Retry::Always, |ch, t| async move {
            Ok(MaintenanceClient::new(ch)
                .alarm(request(req, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Clears every raised alarm (as `etcdctl alarm disarm`); returns those cleared. Writes
    /// refused for NOSPACE are accepted again (until the quota is exceeded again).
    pub async fn alarm_disarm(&self) -> Result<Vec<AlarmMember>, Error> {
        let mut cleared = Vec::new();
        for alarm in self.alarm_list().await?.alarms {
            let req = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: alarm.member_id,
                alarm: alarm.alarm,
            };
            let resp = self
                .call(Retry::Always, |ch, t| async move {
                    Ok(MaintenanceClient::new(ch)
                        .alarm(request(req, t))
                        .await?
                        .into_inner())
                })
                .await?;
            cleared.extend(resp.alarms);
        }
        Ok(cleared)
    }

    /// Rewrites the storage of the member behind `endpoint` to return the space compaction
    /// freed (may take a while on a large store; not limited by the request timeout).
    pub async fn defragment(&self, endpoint: &str) -> Result<DefragmentResponse, Error> {
        Ok(self
            .maintenance(endpoint)
            .await?
            .defragment(DefragmentRequest {})
            .await?
            .into_inner())
    }

    /// A digest of the key history up to `revision` (0: the current one) on the member
    /// behind `endpoint`; members that applied the same log agree on it.
    pub async fn hash_kv(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse, Error> {
        let t = self.inner.options.request_timeout;
        Ok(self
            .maintenance(endpoint)
            .await?
            .hash_kv(request(HashKvRequest { revision }, t))
            .await?
            .into_inner())
    }

    /// A backup of the member behind `endpoint`, as a stream of chunks (each says how many
    /// bytes are still to come). Write the blobs in order to get the file
    /// [`crate::backup`] describes.
    pub async fn snapshot(
        &self,
        endpoint: &str,
    ) -> Result<tonic::Streaming<SnapshotResponse>, Error> {
        Ok(self
            .maintenance(endpoint)
            .await?
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner())
    }

    /// Asks the leader to hand leadership to member `target` (finds the leader itself).
    pub async fn move_leader(&self, target: u64) -> Result<MoveLeaderResponse, Error> {
        let mut last = Error::NoLeader;
        for url in self.endpoints() {
            match self.status(&url).await {
                Ok(s) if s.header.as_ref().is_some_and(|h| h.member_id == s.leader) => {
                    let channel = self
                        .inner
                        .endpoints
                        .iter()
                        .find(|(u, _)| *u == url)
                        .map(|(_, c)| c.clone())
                        .ok_or(Error::NoLeader)?;
                    return Ok(MaintenanceClient::new(self.stamped(channel))
                        .move_leader(MoveLeaderRequest { target_id: target })
                        .await?
                        .into_inner());
                }
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
