//! The Maintenance and Cluster services: member status, alarms and the member list.

use std::sync::Arc;

use cairn_api::etcdserverpb::{
    alarm_request::AlarmAction, cluster_server::Cluster, maintenance_server::Maintenance,
    AlarmRequest, AlarmResponse, MemberListRequest, MemberListResponse, StatusRequest,
    StatusResponse,
};
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The etcd API version Cairn implements; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let db_size = node.store.db_size() as i64;
        Ok(Response::new(StatusResponse {
            header: Some(node.header(0)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: node.raft_status.leader(),
            raft_index: node.raft_status.commit_index(),
            raft_term: node.raft_status.term(),
            raft_applied_index: node.applied_index(),
            errors: vec![],
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        match AlarmAction::try_from(req.into_inner().action) {
            // No alarm can be raised yet (storage quotas arrive with the operations work),
            // so there is none to list or disarm.
            Ok(AlarmAction::Get | AlarmAction::Deactivate) => Ok(Response::new(AlarmResponse {
                header: Some(self.node.header(0)),
                alarms: vec![],
            })),
            Ok(AlarmAction::Activate) => {
                Err(Status::unimplemented("raising alarms is not supported yet"))
            }
            Err(_) => Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        }
    }
}

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(0)),
            members: self.node.membership.to_proto(),
        }))
    }
}
