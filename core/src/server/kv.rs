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
        let r = req.into_inner();
        validate::check_range(&r)?;
        if !r.serializable {
            self.node.wait_linearizable().await?;
        }
        let mut resp = kv::range(&self.node.store.read(), &r)?;
        self.node.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: GrpcRequest<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let p = req.into_inner();
        validate::check_put(&p)?;
        self.node.check_quota(put_cost(&p)).await?;
        Ok(Response::new(
            self.node.propose_for(Internal::Put(p)).await?,
        ))
    }

    async fn delete_range(
        &self,
        req: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let d = req.into_inner();
        validate::check_delete(&d)?;
        Ok(Response::new(
            self.node.propose_for(Internal::DeleteRange(d)).await?,
        ))
    }

    async fn txn(&self, req: GrpcRequest<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let t = req.into_inner();
        validate::check_txn(&t, self.max_txn_ops)?;
        validate::check_duplicates(&t.success)?;
        validate::check_duplicates(&t.failure)?;
        if kv::is_read_only(&t) {
            // Reads need no log entry: serve them behind the read barrier.
            if !is_serializable(&t) {
                self.node.wait_linearizable().await?;
            }
            let view = self.node.store.read();
            let mut resp = kv::txn_read_only(&view, &t, view.compact_rev())?;
            drop(view);
            self.node.fill_header(&mut resp.header);
            return Ok(Response::new(resp));
        }
        self.node.check_quota(txn_cost(&t)).await?;
        Ok(Response::new(
            self.node.propose_for(Internal::Txn(t)).await?,
        ))
    }

    async fn compact(
        &self,
        req: GrpcRequest<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let c = req.into_inner();
        // Compaction runs inside the apply loop, so `physical` (wait until the records are
        // gone) holds for every compaction.
        match self.node.propose_and_wait(Internal::Compaction(c)).await? {
            Applied::Compaction(rev) => Ok(Response::new(CompactionResponse {
                header: Some(self.node.header(rev)),
            })),
            // Each request kind is answered with its own response kind by the apply loop.
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }
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
