//! The transaction builder: compares that read like the condition they state, and the
//! operations to run when they all hold (`and_then`) or not (`or_else`).
//!
//! ```
//! use cairn_client::{Compare, Op, Txn};
//! // "If nobody has created the lock key, take it; otherwise read who holds it."
//! let txn = Txn::new()
//!     .when([Compare::create_revision("lock").eq(0)])
//!     .and_then([Op::put("lock", "me", None)])
//!     .or_else([Op::get("lock", None)]);
//! let req = txn.into_request();
//! assert_eq!(req.compare.len(), 1);
//! assert_eq!(req.success.len(), 1);
//! ```

use cairn_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op, Compare as CompareProto, RequestOp, TxnRequest, TxnResponse,
};

use crate::client::{request, Retry};
use crate::kv::{prefix_end, DeleteOptions, GetOptions, PutOptions};
use crate::{Client, Error};

/// One condition of a transaction.
#[derive(Debug, Clone)]
pub struct Compare(pub(crate) CompareProto);

/// A compare on a key's value, waiting for its operator.
#[derive(Debug, Clone)]
pub struct ValueCompare {
    key: Vec<u8>,
    range_end: Vec<u8>,
}

/// A compare on a number (version, create/mod revision, lease), waiting for its operator.
#[derive(Debug, Clone)]
pub struct NumberCompare {
    key: Vec<u8>,
    range_end: Vec<u8>,
    target: CompareTarget,
}

impl Compare {
    /// The key's value (bytes; compared lexically).
    pub fn value(key: impl Into<Vec<u8>>) -> ValueCompare {
        ValueCompare {
            key: key.into(),
            range_end: vec![],
        }
    }
    /// The key's version: 0 if it does not exist, 1 after its creation, +1 per put.
    pub fn version(key: impl Into<Vec<u8>>) -> NumberCompare {
        NumberCompare::new(key, CompareTarget::Version)
    }
    /// The revision the key was created at (0 if it does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>) -> NumberCompare {
        NumberCompare::new(key, CompareTarget::Create)
    }
    /// The revision the key was last modified at.
    pub fn mod_revision(key: impl Into<Vec<u8>>) -> NumberCompare {
        NumberCompare::new(key, CompareTarget::Mod)
    }
    /// The lease the key is attached to (0: none).
    pub fn lease(key: impl Into<Vec<u8>>) -> NumberCompare {
        NumberCompare::new(key, CompareTarget::Lease)
    }
    /// The compare as sent on the wire.
    pub fn into_proto(self) -> CompareProto {
        self.0
    }
}

fn compare(
    key: Vec<u8>,
    range_end: Vec<u8>,
    target: CompareTarget,
    result: CompareResult,
    value: TargetUnion,
) -> Compare {
    Compare(CompareProto {
        result: result as i32,
        target: target as i32,
        key,
        range_end,
        target_union: Some(value),
    })
}

impl ValueCompare {
    /// Compare every key with this prefix (all must satisfy it).
    pub fn with_prefix(mut self) -> Self {
        self.range_end = prefix_end(&self.key);
        self
    }
    /// Compare every key in `[key, end)`.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    fn done(self, result: CompareResult, v: impl Into<Vec<u8>>) -> Compare {
        compare(
            self.key,
            self.range_end,
            CompareTarget::Value,
            result,
            TargetUnion::Value(v.into()),
        )
    }
    /// Holds when the value equals `v`.
    pub fn eq(self, v: impl Into<Vec<u8>>) -> Compare {
        self.done(CompareResult::Equal, v)
    }
    /// Holds when the value differs from `v`.
    pub fn ne(self, v: impl Into<Vec<u8>>) -> Compare {
        self.done(CompareResult::NotEqual, v)
    }
    /// Holds when the value sorts after `v`.
    pub fn gt(self, v: impl Into<Vec<u8>>) -> Compare {
        self.done(CompareResult::Greater, v)
    }
    /// Holds when the value sorts before `v`.
    pub fn lt(self, v: impl Into<Vec<u8>>) -> Compare {
        self.done(CompareResult::Less, v)
    }
}

impl NumberCompare {
    fn new(key: impl Into<Vec<u8>>, target: CompareTarget) -> Self {
        NumberCompare {
            key: key.into(),
            range_end: vec![],
            target,
        }
    }
    /// Compare every key with this prefix (all must satisfy it).
    pub fn with_prefix(mut self) -> Self {
        self.range_end = prefix_end(&self.key);
        self
    }
    /// Compare every key in `[key, end)`.
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    fn done(self, result: CompareResult, n: i64) -> Compare {
        let value = match self.target {
            CompareTarget::Version => TargetUnion::Version(n),
            CompareTarget::Create => TargetUnion::CreateRevision(n),
            CompareTarget::Mod => TargetUnion::ModRevision(n),
            CompareTarget::Lease => TargetUnion::Lease(n),
            // NumberCompare is only built for the numeric targets above.
            CompareTarget::Value => TargetUnion::Version(n),
        };
        compare(self.key, self.range_end, self.target, result, value)
    }
    /// Holds when the number equals `n`.
    pub fn eq(self, n: i64) -> Compare {
        self.done(CompareResult::Equal, n)
    }
    /// Holds when the number differs from `n`.
    pub fn ne(self, n: i64) -> Compare {
        self.done(CompareResult::NotEqual, n)
    }
    /// Holds when the number is greater than `n`.
    pub fn gt(self, n: i64) -> Compare {
        self.done(CompareResult::Greater, n)
    }
    /// Holds when the number is less than `n`.
    pub fn lt(self, n: i64) -> Compare {
        self.done(CompareResult::Less, n)
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
pub struct Op(pub(crate) RequestOp);

impl Op {
    /// Read `key` (or a range, with options).
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Op {
        let r = options.unwrap_or_default().into_request(key.into());
        Op(RequestOp {
            request: Some(request_op::Request::RequestRange(r)),
        })
    }
    /// Write `key`.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Op {
        let r = options
            .unwrap_or_default()
            .into_request(key.into(), value.into());
        Op(RequestOp {
            request: Some(request_op::Request::RequestPut(r)),
        })
    }
    /// Delete `key` (or a range, with options).
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> Op {
        let r = options.unwrap_or_default().into_request(key.into());
        Op(RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(r)),
        })
    }
    /// A nested transaction.
    pub fn txn(txn: Txn) -> Op {
        Op(RequestOp {
            request: Some(request_op::Request::RequestTxn(txn.into_request())),
        })
    }
}

/// A transaction: if every compare holds, the `and_then` operations run, else the
/// `or_else` ones — atomically, at one revision.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl Txn {
    /// An empty transaction: no compares (so `and_then` runs).
    pub fn new() -> Txn {
        Txn::default()
    }
    /// The conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(compares);
        self
    }
    /// What to do when they hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }
    /// What to do otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }
    /// Whether neither branch writes (nested transactions count as writes).
    fn read_only(&self) -> bool {
        self.success
            .iter()
            .chain(&self.failure)
            .all(|o| matches!(o.0.request, Some(request_op::Request::RequestRange(_))))
    }
    /// The request as sent on the wire.
    pub fn into_request(self) -> TxnRequest {
        TxnRequest {
            compare: self.compares.into_iter().map(|c| c.0).collect(),
            success: self.success.into_iter().map(|o| o.0).collect(),
            failure: self.failure.into_iter().map(|o| o.0).collect(),
        }
    }
}

impl Client {
    /// Runs a transaction. A read-only one is retried on another member like a read; one
    /// that writes only when it cannot have been applied (as a put). To make a write safe to
    /// retry yourself, guard it with a compare its own success falsifies (e.g.
    /// `create_revision == 0` before creating the key).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let retry = if txn.read_only() {
            Retry::Always
        } else {
            Retry::IfNotApplied
        };
        let req = txn.into_request();
        self.call(retry, |ch, t| {
            let req = req.clone();
            async move {
                Ok(KvClient::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .txn(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }
}
