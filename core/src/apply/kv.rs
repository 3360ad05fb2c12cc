//! The KV semantics of etcd's applier: Range options, Put, DeleteRange and Txn evaluated
//! against a read or write view of the MVCC store. Every member runs these on the same log
//! entries and gets the same revisions and responses.

use std::cmp::Ordering;

use cairn_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use cairn_api::mvccpb::KeyValue;

use crate::error::Error;
use crate::lease::Lessor;
use crate::mvcc::{RangeOptions, ReadView, WriteTxn};

/// The header the applier puts on a response: the revision; the gRPC edge fills in who
/// answered.
pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Serves a Range with all of etcd's options.
pub fn range(view: &impl ReadView, r: &RangeRequest) -> Result<RangeResponse, Error> {
    let sort_order = SortOrder::try_from(r.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let sort_target = SortTarget::try_from(r.sort_target).map_err(|_| Error::InvalidSortOption)?;
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Results come in ascending key order already, so for that order the limit goes to the
    // read (one past it, to learn whether there are more); any other order, and filters,
    // need every key first. Any other target sorts ascending by default, as etcd does.
    let order = match (sort_order, sort_target) {
        (SortOrder::None | SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let limit = if order != SortOrder::None || filtered {
        0
    } else if r.limit > 0 {
        // Saturating: a limit of i64::MAX must not overflow (it panicked the apply thread
        // of every member in debug builds when it came inside a txn).
        r.limit.saturating_add(1)
    } else {
        r.limit
    };
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
    };
    let mut rr = view.range(&r.key, &r.range_end, opts)?;

    if filtered {
        rr.kvs.retain(|kv| {
            !(r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision
                || r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision
                || r.max_create_revision != 0 && kv.create_revision > r.max_create_revision
                || r.min_create_revision != 0 && kv.create_revision < r.min_create_revision)
        });
    }

    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            rr.kvs.sort_by(|a, b| cmp(b, a));
        } else {
            rr.kvs.sort_by(cmp);
        }
    }

    let mut more = false;
    if r.limit > 0 && rr.kvs.len() > r.limit as usize {
        rr.kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut rr.kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(rr.rev),
        kvs: rr.kvs,
        more,
        count: rr.count,
    })
}

fn previous(txn: &WriteTxn<'_, '_>, key: &[u8]) -> Result<Option<KeyValue>, Error> {
    Ok(txn
        .range(key, &[], RangeOptions::default())?
        .kvs
        .into_iter()
        .next())
}

/// Applies a Put whose lease and ignore flags were checked (see [`check_put`]).
pub fn put(txn: &mut WriteTxn<'_, '_>, p: PutRequest) -> Result<PutResponse, Error> {
    let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
        previous(txn, &p.key)?
    } else {
        None
    };
    let mut value = p.value;
    let mut lease = p.lease;
    if p.ignore_value || p.ignore_lease {
        let Some(prev) = &prev else {
            return Err(Error::KeyNotFound);
        };
        if p.ignore_value {
            value = prev.value.clone();
        }
        if p.ignore_lease {
            lease = prev.lease;
        }
    }
    let rev = txn.put(&p.key, value, lease);
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

/// Applies a DeleteRange.
pub fn delete_range(
    txn: &mut WriteTxn<'_, '_>,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Error> {
    let prev_kvs = if d.prev_kv {
        txn.range(&d.key, &d.range_end, RangeOptions::default())?
            .kvs
    } else {
        vec![]
    };
    let (deleted, rev) = txn.delete_range(&d.key, &d.range_end);
    Ok(DeleteRangeResponse {
        header: header(rev),
        deleted,
        prev_kvs,
    })
}

/// Checks what a Put needs from the current state before anything is changed, so a txn
/// fails as a whole instead of half-applied.
/// Inside a txn etcd checks the key before the lease.
pub fn check_put(view: &impl ReadView, p: &PutRequest, lessor: &Lessor) -> Result<(), Error> {
    if p.ignore_value || p.ignore_lease {
        let found = view.range(&p.key, &[], RangeOptions::default())?;
        if found.kvs.is_empty() {
            return Err(Error::KeyNotFound);
        }
    }
    check_lease(lessor, p.lease)
}

/// A put may only attach an existing lease.
pub fn check_lease(lessor: &Lessor, lease: i64) -> Result<(), Error> {
    if lease != 0 && !lessor.contains(lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

fn check_range(view: &impl ReadView, r: &RangeRequest, compact_rev: i64) -> Result<(), Error> {
    // The compacted revision is -1 until the first compaction, so inside a txn a negative
    // revision below it is reported as compacted (a plain Range reads the newest instead).
    match r.revision {
        0 => Ok(()),
        rev if rev > view.rev() => Err(Error::FutureRev),
        rev if rev < compact_rev => Err(Error::Compacted),
        _ => Ok(()),
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int = |v: i64| match (c.target_union.as_ref(), CompareTarget::try_from(c.target)) {
        (Some(TargetUnion::Version(x)), Ok(CompareTarget::Version))
        | (Some(TargetUnion::CreateRevision(x)), Ok(CompareTarget::Create))
        | (Some(TargetUnion::ModRevision(x)), Ok(CompareTarget::Mod))
        | (Some(TargetUnion::Lease(x)), Ok(CompareTarget::Lease)) => v.cmp(x),
        // A target union that does not match the target compares against zero, as etcd.
        _ => v.cmp(&0),
    };
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => match &c.target_union {
            Some(TargetUnion::Value(v)) => kv.value.as_slice().cmp(v.as_slice()),
            _ => kv.value.as_slice().cmp(&[][..]),
        },
        Ok(CompareTarget::Version) => int(kv.version),
        Ok(CompareTarget::Create) => int(kv.create_revision),
        Ok(CompareTarget::Mod) => int(kv.mod_revision),
        Ok(CompareTarget::Lease) => int(kv.lease),
        Err(_) => return true,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Evaluates one compare over its key or range; every key in the range must satisfy it.
/// A read that fails is an error, never a false compare: turning a storage failure on one
/// member into the failure branch would make members diverge.
fn compare(view: &impl ReadView, c: &Compare) -> Result<bool, Error> {
    let rr = view.range(&c.key, &c.range_end, RangeOptions::default())?;
    if rr.kvs.is_empty() {
        // A missing key has no value to compare (gRPC cannot tell nil from empty), so value
        // compares fail; other targets compare against zero.
        return Ok(
            CompareTarget::try_from(c.target) != Ok(CompareTarget::Value)
                && compare_kv(c, &KeyValue::default()),
        );
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// The branch every (nested) txn takes, in depth-first order, all decided against the state
/// before the txn runs.
fn compare_to_path(
    view: &impl ReadView,
    t: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), Error> {
    let mut ok = true;
    for c in &t.compare {
        if !compare(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(Request::RequestTxn(nested)) = &op.request {
            compare_to_path(view, nested, path)?;
        }
    }
    Ok(())
}

/// Walks the taken branches and checks each op that could fail, so nothing is applied when
/// any would.
fn check_path(
    view: &impl ReadView,
    t: &TxnRequest,
    path: &[bool],
    compact_rev: i64,
    writes: Option<&Lessor>,
) -> Result<usize, Error> {
    let mut used = 1;
    let ops = if path[0] { &t.success } else { &t.failure };
    for op in ops {
        match (&op.request, writes) {
            (Some(Request::RequestPut(p)), Some(lessor)) => check_put(view, p, lessor)?,
            (Some(Request::RequestRange(r)), None) => check_range(view, r, compact_rev)?,
            (Some(Request::RequestTxn(nested)), _) => {
                used += check_path(view, nested, &path[used..], compact_rev, writes)?;
            }
            _ => {}
        }
    }
    Ok(used)
}

/// True when no branch of the txn can write.
/// Whether a txn has a put in either branch, at any depth.
pub fn has_put(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => has_put(t),
            _ => false,
        })
}

pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// Decides and checks a txn against a view. Returns the branch path. Puts are checked
/// (against `lessor`) only for a txn that can write.
fn plan(
    view: &impl ReadView,
    t: &TxnRequest,
    compact_rev: i64,
    lessor: Option<&Lessor>,
) -> Result<Vec<bool>, Error> {
    let mut path = Vec::new();
    compare_to_path(view, t, &mut path)?;
    if let Some(lessor) = lessor.filter(|_| !is_read_only(t)) {
        check_path(view, t, &path, compact_rev, Some(lessor))?;
    }
    check_path(view, t, &path, compact_rev, None)?;
    Ok(path)
}

/// Serves a txn with only Range ops from a read view, without going through raft.
pub fn txn_read_only(
    view: &impl ReadView,
    t: &TxnRequest,
    compact_rev: i64,
) -> Result<TxnResponse, Error> {
    let path = plan(view, t, compact_rev, None)?;
    let ops = if path[0] { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        if let Some(Request::RequestRange(r)) = &op.request {
            responses.push(ResponseOp {
                response: Some(Response::ResponseRange(range(view, r)?)),
            });
        }
    }
    Ok(TxnResponse {
        header: header(view.rev()),
        succeeded: path[0],
        responses,
    })
}

/// Applies a txn in a write transaction: the whole txn is one revision (or none if it
/// changes nothing). An op that fails after earlier ops changed the store (a put with
/// ignore_value of a key the txn itself deleted) fails the txn; the caller aborts it.
pub fn txn(txn: &mut WriteTxn<'_, '_>, t: TxnRequest) -> Result<TxnResponse, Error> {
    let compact_rev = txn.compact_rev();
    let path = plan(&*txn, &t, compact_rev, Some(txn.lessor()))?;
    let mut resp = apply_path(txn, t, &path, &mut 0)?;
    resp.header = header(txn.rev());
    Ok(resp)
}

fn apply_path(
    txn: &mut WriteTxn<'_, '_>,
    t: TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse, Error> {
    let succeeded = path[*pos];
    *pos += 1;
    let ops: Vec<RequestOp> = if succeeded { t.success } else { t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op.request {
            Some(Request::RequestRange(r)) => Response::ResponseRange(range(&*txn, &r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(put(txn, p)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(delete_range(txn, &d)?)
            }
            Some(Request::RequestTxn(nested)) => {
                // Nested txn responses carry an empty header, as etcd's do.
                let mut r = apply_path(txn, nested, path, pos)?;
                r.header = Some(ResponseHeader::default());
                Response::ResponseTxn(r)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::RangeResult;

    /// A view whose storage fails on every read.
    struct Failing;

    impl ReadView for Failing {
        fn range(&self, _: &[u8], _: &[u8], _: RangeOptions) -> Result<RangeResult, Error> {
            Err(Error::Storage("injected read failure".into()))
        }
        fn rev(&self) -> i64 {
            1
        }
    }

    #[test]
    fn a_compare_whose_read_fails_fails_the_txn_instead_of_taking_the_failure_branch() {
        let t = TxnRequest {
            compare: vec![Compare {
                key: b"k".to_vec(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(0)),
                ..Default::default()
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            txn_read_only(&Failing, &t, 0),
            Err(Error::Storage("injected read failure".into()))
        );
    }
}
