//! The Cluster service: the member list and membership changes (add, remove, update,
//! promote), each a raft configuration change or a replicated update.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::cairnpb::internal_request::Request as Internal;
use cairn_api::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use raft::eraftpb::ConfChangeType;
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::error::Error;
use crate::membership::member_id;
use crate::node::Node;

/// etcd's rule, on the leader: a learner is ready once its log matches 90% of the commit
/// index.
pub(super) async fn learner_ready(node: &Node, id: u64) -> Result<(), Error> {
    match node.progress(id).await {
        Some((matched, committed)) if (matched as f64) >= committed as f64 * 0.9 => Ok(()),
        Some(_) => Err(Error::LearnerNotReady),
        // Leadership moved while asking.
        None => Err(Error::NotLeader),
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

/// etcd's cluster service answers with a header that has no revision (membership is not
/// in the key space).
fn membership_header(node: &Node) -> ResponseHeader {
    ResponseHeader {
        revision: 0,
        ..node.header(0)
    }
}

impl ClusterService {
    /// Membership changes are the administrator's (etcd's
    /// `checkMembershipOperationPermission`); listing members is anyone's.
    async fn admin<T: Sync>(&self, req: &Request<T>) -> Result<(), Status> {
        let who = super::auth::who(&self.node, req).await?;
        self.node.store.auth().check_admin(&who)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: Some(membership_header(&self.node)),
            members: self.node.membership.members(),
        }))
    }

    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let node = &self.node;
        // As etcd: the URLs are checked before the caller's permission.
        node.membership
            .check_add(&req.get_ref().peer_ur_ls, req.get_ref().is_learner)?;
        self.admin(&req).await?;
        let r = req.into_inner();
        // As etcd, the id mixes in the time, so a member re-added at the same URL is new.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let salt = format!("{:x}", node.membership.cluster_id);
        let member = Member {
            id: member_id(&r.peer_ur_ls, &salt, Some(now)),
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: vec![],
            is_learner: r.is_learner,
        };
        let change = if r.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = node
            .propose_conf_change(change, member.id, Some(member.clone()))
            .await?;
        tracing::info!(member = format!("{:x}", member.id), urls = ?member.peer_ur_ls, learner = member.is_learner, "member added");
        Ok(Response::new(MemberAddResponse {
            header: Some(membership_header(node)),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin(&req).await?;
        let id = req.into_inner().id;
        let node = &self.node;
        if node.membership.member(id).is_none() {
            return Err(Error::MemberNotFound.into());
        }
        let members = node
            .propose_conf_change(ConfChangeType::RemoveNode, id, None)
            .await?;
        tracing::info!(member = format!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: Some(membership_header(node)),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        let node = &self.node;
        node.membership.check_update(r.id, &r.peer_ur_ls)?;
        let members = match node.propose_and_wait(Internal::MemberUpdate(r)).await? {
            Applied::Members(m) => m,
            _ => return Err(Error::Storage("apply answered with another kind".into()).into()),
        };
        Ok(Response::new(MemberUpdateResponse {
            header: Some(membership_header(node)),
            members,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin(&req).await?;
        let id = req.into_inner().id;
        let node = &self.node;
        match node.membership.member(id) {
            None => return Err(Error::MemberNotFound.into()),
            Some(m) if !m.is_learner => return Err(Error::MemberNotLearner.into()),
            Some(_) => {}
        }
        // Only the leader knows how far the learner's log matches: a follower asks it, as
        // etcd forwards the promotion.
        if node.is_leader() {
            learner_ready(node, id).await?;
        } else {
            super::lease::leader_peer(node)?
                .learner_ready(MemberPromoteRequest { id })
                .await?;
        }
        let members = node
            .propose_conf_change(ConfChangeType::AddNode, id, None)
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(membership_header(node)),
            members,
        }))
    }
}
