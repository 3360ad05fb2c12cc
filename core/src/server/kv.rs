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
use crate::error::Error;
use crate::node::Node;

pub struct KvService {
    node: Arc<Node>,
    max_txn_ops: usize,
}

impl KvService {
    pub fn new(node: Arc<Node>, max_txn_ops: usize) -> Self {
        KvService { node, max_txn_ops }
    }

    async fn propose(&self, req: Internal) -> Result<Applied, Error> {
        self.node.propose_and_wait(req).await
    }
}

fn unexpected(a: Applied) -> Status {
    // The apply loop answers each request kind with its own response kind.
    Status::internal(format!("unexpected apply result {a:?}"))
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
        match self.propose(Internal::Put(p)).await? {
            Applied::Put(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let d = req.into_inner();
        validate::check_delete(&d)?;
        match self.propose(Internal::DeleteRange(d)).await? {
            Applied::DeleteRange(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
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
        match self.propose(Internal::Txn(t)).await? {
            Applied::Txn(mut resp) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: GrpcRequest<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let c = req.into_inner();
        // Compaction runs inside the apply loop, so `physical` (wait until the records are
        // gone) holds for every compaction.
        match self.propose(Internal::Compaction(c)).await? {
            Applied::Compaction(rev) => Ok(Response::new(CompactionResponse {
                header: Some(self.node.header(rev)),
            })),
            other => Err(unexpected(other)),
        }
    }
}
