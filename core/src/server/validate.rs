//! Request checks done at the gRPC edge before anything is proposed, with etcd's errors
//! (etcd's `v3rpc/key.go`). They reject requests no member could apply.

use std::collections::HashSet;

use cairn_api::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::error::Error;

pub fn check_range(r: &RangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(p: &PutRequest) -> Result<(), Error> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(d: &DeleteRangeRequest) -> Result<(), Error> {
    if d.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Checks a txn and its nested txns; nested ones share what is left of the op budget.
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(op, max_ops - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: usize) -> Result<(), Error> {
    match &op.request {
        Some(Request::RequestRange(r)) => check_range(r),
        Some(Request::RequestPut(p)) => check_put(p),
        Some(Request::RequestDeleteRange(d)) => check_delete(d),
        Some(Request::RequestTxn(t)) => check_txn(t, max_ops),
        // An empty op names no key.
        None => Err(Error::KeyNotFound),
    }
}

/// Key intervals deleted by a list of ops: `(key, None)` is one key, `(key, Some(end))`
/// the range `[key, end)`.
#[derive(Default)]
struct Deletes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Deletes {
    fn contains(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(b, e)| match e {
            None => b.as_slice() == k,
            Some(e) => b.as_slice() <= k && k < e.as_slice(),
        })
    }
}

/// Rejects a txn branch that writes one key twice, or puts a key it also deletes, across
/// nested txns too (the two branches of one nested txn exclude each other).
pub fn check_duplicates(ops: &[RequestOp]) -> Result<(), Error> {
    intervals(ops).map(|_| ())
}

fn intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), Error> {
    let mut dels = Deletes::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            let end = (!d.range_end.is_empty()).then(|| d.range_end.clone());
            dels.0.push((d.key.clone(), end));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || dels.contains(&k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || dels.contains(&p.key) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    #[test]
    fn duplicate_puts_and_put_over_delete_are_rejected() {
        assert_eq!(
            check_duplicates(&[put("a"), put("a")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_duplicates(&[del("a", "c"), put("b")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(check_duplicates(&[del("a", "c"), put("c")]), Ok(()));
        assert_eq!(check_duplicates(&[del("a", ""), del("a", "")]), Ok(()));
        // A from-key delete ("\0" end) is an empty interval here, as in etcd.
        assert_eq!(check_duplicates(&[del("a", "\0"), put("b")]), Ok(()));
    }

    #[test]
    fn nested_branches_exclude_each_other_but_not_the_parent() {
        assert_eq!(
            check_duplicates(&[txn(vec![put("a")], vec![put("a")])]),
            Ok(())
        );
        assert_eq!(
            check_duplicates(&[txn(vec![put("a")], vec![]), put("a")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_duplicates(&[txn(vec![del("a", "")], vec![]), put("a")]),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_duplicates(&[del("a", ""), txn(vec![put("a")], vec![])]),
            Err(Error::DuplicateKey)
        );
    }

    #[test]
    fn op_budget_is_shared_with_nested_txns() {
        let t = TxnRequest {
            success: (0..3).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&t, 3), Ok(()));
        assert_eq!(check_txn(&t, 2), Err(Error::TooManyOps));
        let outer = TxnRequest {
            success: vec![txn(vec![put("a"), put("b")], vec![])],
            ..Default::default()
        };
        assert_eq!(check_txn(&outer, 3), Ok(()));
        assert_eq!(check_txn(&outer, 2), Err(Error::TooManyOps));
        let empty = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty, 128), Err(Error::KeyNotFound));
    }
}
