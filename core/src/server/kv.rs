//! The KV service: validates, routes writes through raft and reads through the read
//! barrier, maps errors once. Semantics live in `apply::kv`.

use std::sync::Arc;

use cairn_api::cairnpb::internal_request::Request as Internal;
use cairn_api::etcdserverpb::{
    kv_server::Kv, request_op::Request, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use tonic::{Request as GrpcRequest, Response, Status};

use super::validate;
use crate::apply::{kv, Applied};
use crate::node::Node;

pub struct KvService {
    node: Arc<Node>,
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(node: Arc<Node>, max_txn_ops: usize) -> Self {
        KvService { node, max_txn_ops }
    }
}

fn is_serializable(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: GrpcRequest<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let who = admit_range(&self.node, &req).await?;
        let auth = self.node.store.auth();
        let r = req.into_inner();
        let mut resp = if is_small(&r) {
            kv::range(&self.node.store.read()?, &r)?
        } else {
            // A range over many keys reads their values for a while: off the async workers
            // (on a 2-core machine there is one), so other requests and headers go on.
            let store = self.node.store.clone();
            tokio::task::spawn_blocking(move || kv::range(&store.read()?, &r))
                .await
                .map_err(|e| Status::internal(e.to_string()))??
        };
        stale_auth(auth, &who)?;
        self.node.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: GrpcRequest<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::check_put(req.get_ref())?;
        let who = super::auth::who(&self.node, &req).await?;
        let p = req.into_inner();
        self.node.check_quota(put_cost(&p)).await?;
        Ok(Response::new(
            self.node.propose_for(&who, Internal::Put(p)).await?,
        ))
    }

    async fn delete_range(
        &self,
        req: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::check_delete(req.get_ref())?;
        let who = super::auth::who(&self.node, &req).await?;
        let d = req.into_inner();
        Ok(Response::new(
            self.node
                .propose_for(&who, Internal::DeleteRange(d))
                .await?,
        ))
    }

    async fn txn(&self, req: GrpcRequest<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::check_txn(req.get_ref(), self.max_txn_ops)?;
        validate::check_duplicates(&req.get_ref().success)?;
        validate::check_duplicates(&req.get_ref().failure)?;
        if kv::is_read_only(req.get_ref()) {
            // Reads need no log entry: serve them behind the read barrier, checked after it.
            if !is_serializable(req.get_ref()) {
                self.node.wait_linearizable().await?;
            }
            let who = super::auth::who(&self.node, &req).await?;
            let t = req.into_inner();
            let store = &self.node.store;
            store.auth().check_txn(&who, &t, store.lessor())?;
            let store = self.node.store.clone();
            let small = all_small(&t);
            let read = move || {
                let view = store.read()?;
                kv::txn_read_only(&view, &t, view.compact_rev())
            };
            let mut resp = if small {
                read()?
            } else {
                tokio::task::spawn_blocking(read)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??
            };
            stale_auth(self.node.store.auth(), &who)?;
            self.node.fill_header(&mut resp.header);
            return Ok(Response::new(resp));
        }
        let who = super::auth::who(&self.node, &req).await?;
        let t = req.into_inner();
        self.node.check_quota(txn_cost(&t)).await?;
        Ok(Response::new(
            self.node.propose_for(&who, Internal::Txn(t)).await?,
        ))
    }

    async fn compact(
        &self,
        req: GrpcRequest<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // No permission needed (etcd's rule), but a token given must check out.
        let who = super::auth::who(&self.node, &req).await?;
        let c = req.into_inner();
        let physical = c.physical;
        let rev = match self.node.propose_as(&who, Internal::Compaction(c)).await? {
            Applied::Compaction(rev) => rev,
            // Each request kind is answered with its own response kind by the apply loop.
            other => {
                return Err(Status::internal(format!(
                    "unexpected apply result {other:?}"
                )))
            }
        };
        if physical {
            // As etcd: answer once the compacted history is gone from storage.
            self.node.wait_compacted(c.revision).await?;
        }
        Ok(Response::new(CompactionResponse {
            header: Some(self.node.header(rev)),
        }))
    }
}

/// What a Range passes before it is read, as etcd does it: the request is validated, then
/// (after the read barrier, so the auth state is as recent as the data) its permission
/// checked. Returns who asked, for [`stale_auth`] after the read.
pub(super) async fn admit_range(
    node: &Node,
    req: &GrpcRequest<RangeRequest>,
) -> Result<crate::auth::AuthInfo, Status> {
    validate::check_range(req.get_ref())?;
    if !req.get_ref().serializable {
        node.wait_linearizable().await?;
    }
    let who = super::auth::who(node, req).await?;
    node.store.auth().check_range(&who, req.get_ref())?;
    Ok(who)
}

/// etcd's rule for reads: one that raced an auth change (the credentials were checked at
/// an older auth revision than the one now) is not answered, the client logs in again.
pub(super) fn stale_auth(
    auth: &crate::auth::AuthStore,
    who: &crate::auth::AuthInfo,
) -> Result<(), Status> {
    if auth.is_enabled() && who.revision != 0 && who.revision != auth.revision() {
        return Err(crate::error::Error::AuthOldRevision.into());
    }
    Ok(())
}

/// Whether a range reads one key, so it is served on the async worker itself. Any other
/// range counts every key it covers (limit or not), so it goes to a blocking thread.
fn is_small(r: &RangeRequest) -> bool {
    r.range_end.is_empty()
}

/// Whether every range of a read-only txn (nested ones too) is small.
fn all_small(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => is_small(r),
            Some(Request::RequestTxn(t)) => all_small(t),
            _ => true,
        })
}

/// Bytes a put adds for the storage quota: key, value and etcd's per-record overhead.
fn put_cost(p: &PutRequest) -> u64 {
    const OVERHEAD: u64 = 256;
    OVERHEAD + (p.key.len() + p.value.len()) as u64
}

/// The bytes of every put in a txn, in either branch and nested txns (as etcd counts).
fn txn_cost(t: &TxnRequest) -> u64 {
    t.success
        .iter()
        .chain(t.failure.iter())
        .map(|op| match &op.request {
            Some(Request::RequestPut(p)) => put_cost(p),
            Some(Request::RequestTxn(t)) => txn_cost(t),
            _ => 0,
        })
        .sum()
}
