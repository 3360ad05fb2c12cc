//! Txn: every compare target and result, ranges in compares, nested txns, reads of the
//! txn's own writes, read-only txns.

use crate::harness::Embedded;
use cairn_api::etcdserverpb::{
    compare::{CompareResult as R, CompareTarget as T, TargetUnion as U},
    response_op::Response,
    Compare, RangeRequest, TxnResponse,
};

use crate::ops::*;

fn succeeded(r: &TxnResponse) -> bool {
    r.succeeded
}

#[tokio::test]
async fn every_compare_target_and_result() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("k", "m")).await.unwrap(); // create 2
    kv.put(put("k", "m")).await.unwrap(); // mod 3, version 2
    let cases: Vec<(T, U, [bool; 4])> = vec![
        // [EQUAL, GREATER, LESS, NOT_EQUAL] of the key's value against the operand.
        (T::Version, U::Version(2), [true, false, false, false]),
        (T::Version, U::Version(1), [false, true, false, true]),
        (T::Create, U::CreateRevision(3), [false, false, true, true]),
        (T::Mod, U::ModRevision(3), [true, false, false, false]),
        (T::Mod, U::ModRevision(2), [false, true, false, true]),
        (
            T::Value,
            U::Value(b"m".to_vec()),
            [true, false, false, false],
        ),
        (
            T::Value,
            U::Value(b"a".to_vec()),
            [false, true, false, true],
        ),
        (
            T::Value,
            U::Value(b"z".to_vec()),
            [false, false, true, true],
        ),
        (T::Lease, U::Lease(0), [true, false, false, false]),
        (T::Lease, U::Lease(5), [false, false, true, true]),
    ];
    for (target, operand, want) in cases {
        for (result, expect) in [R::Equal, R::Greater, R::Less, R::NotEqual]
            .into_iter()
            .zip(want)
        {
            let t = txn(
                vec![cmp("k", target, result, operand.clone())],
                vec![],
                vec![],
            );
            let r = kv.txn(t).await.unwrap().into_inner();
            assert_eq!(succeeded(&r), expect, "{target:?} {result:?} {operand:?}");
        }
    }
    m.stop().await;
}

#[tokio::test]
async fn compares_on_missing_keys_and_ranges() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    // A missing key has version/create/mod 0; a value compare on it always fails.
    let t = txn(
        vec![cmp("nope", T::Version, R::Equal, U::Version(0))],
        vec![],
        vec![],
    );
    assert!(kv.txn(t).await.unwrap().into_inner().succeeded);
    let t = txn(
        vec![cmp("nope", T::Value, R::NotEqual, U::Value(b"x".to_vec()))],
        vec![],
        vec![],
    );
    assert!(!kv.txn(t).await.unwrap().into_inner().succeeded);
    kv.put(put("r/1", "a")).await.unwrap();
    kv.put(put("r/2", "b")).await.unwrap();
    let over = |result, v: &str| Compare {
        range_end: prefix_end("r/"),
        ..cmp("r/", T::Value, result, U::Value(v.into()))
    };
    // Every key in the range must satisfy the compare.
    assert!(
        kv.txn(txn(vec![over(R::Greater, "0")], vec![], vec![]))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );
    assert!(
        !kv.txn(txn(vec![over(R::Equal, "a")], vec![], vec![]))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );
    m.stop().await;
}

#[tokio::test]
async fn success_and_failure_branches_apply_at_one_revision() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    let t = txn(
        vec![cmp("lock", T::Create, R::Equal, U::CreateRevision(0))],
        vec![
            op_put("lock", "me"),
            op_put("other", "x"),
            op_get(get("lock")),
        ],
        vec![op_get(get("lock"))],
    );
    let r = kv.txn(t.clone()).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert_eq!(r.header.as_ref().unwrap().revision, 2);
    let Some(Response::ResponseRange(read)) = &r.responses[2].response else {
        panic!("range response")
    };
    // Reads inside the txn see its own writes.
    assert_eq!(read.kvs[0].value, b"me");
    assert_eq!(read.kvs[0].mod_revision, 2);
    let other = kv.range(get("other")).await.unwrap().into_inner();
    assert_eq!(other.kvs[0].mod_revision, 2);
    let r = kv.txn(t).await.unwrap().into_inner();
    assert!(!r.succeeded);
    // A txn that writes nothing creates no revision.
    assert_eq!(r.header.unwrap().revision, 2);
    m.stop().await;
}

#[tokio::test]
async fn nested_txns_decide_against_the_state_before_the_txn() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("a", "1")).await.unwrap(); // 2
    let inner = txn(
        // Evaluated before the outer put below runs: a is still "1".
        vec![cmp("a", T::Value, R::Equal, U::Value(b"1".to_vec()))],
        vec![op_put("b", "inner-success")],
        vec![op_put("b", "inner-failure")],
    );
    let outer = txn(
        vec![cmp("a", T::Version, R::Equal, U::Version(1))],
        vec![op_put("a", "2"), op_txn(inner)],
        vec![],
    );
    let r = kv.txn(outer).await.unwrap().into_inner();
    assert!(r.succeeded);
    let Some(Response::ResponseTxn(nested)) = &r.responses[1].response else {
        panic!("txn response")
    };
    assert!(nested.succeeded);
    assert_eq!(nested.header.as_ref().map(|h| h.revision), Some(0));
    assert_eq!(
        kv.range(get("b")).await.unwrap().into_inner().kvs[0].value,
        b"inner-success"
    );
    assert_eq!(
        kv.range(get("b")).await.unwrap().into_inner().kvs[0].mod_revision,
        3
    );
    m.stop().await;
}

#[tokio::test]
async fn read_only_txn_reads_without_a_new_revision() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("x", "1")).await.unwrap();
    let t = txn(
        vec![],
        vec![
            op_get(RangeRequest {
                serializable: true,
                ..get("x")
            }),
            op_get(get("y")),
        ],
        vec![],
    );
    let r = kv.txn(t).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 2);
    assert_eq!(r.responses.len(), 2);
    m.stop().await;
}

#[tokio::test]
async fn delete_in_txn_reports_prev_kvs_and_revision() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("d", "1")).await.unwrap();
    let d = cairn_api::etcdserverpb::DeleteRangeRequest {
        prev_kv: true,
        ..del("d", "")
    };
    let r = kv
        .txn(txn(vec![], vec![op_del(d), op_put("e", "2")], vec![]))
        .await
        .unwrap()
        .into_inner();
    let Some(Response::ResponseDeleteRange(dr)) = &r.responses[0].response else {
        panic!("delete response")
    };
    assert_eq!(
        (
            dr.deleted,
            dr.header.as_ref().unwrap().revision,
            dr.prev_kvs.len()
        ),
        (1, 3, 1)
    );
    m.stop().await;
}

#[tokio::test]
async fn a_txn_that_fails_midway_changes_nothing() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("a", "1")).await.unwrap(); // 2
    kv.put(put("b", "2")).await.unwrap(); // 3

    // The put needs the value of a key the same txn just deleted. (etcd 3.4 panics here.)
    let keep = cairn_api::etcdserverpb::PutRequest {
        ignore_value: true,
        ..put("b", "")
    };
    let t = txn(
        vec![],
        vec![op_put("c", "3"), op_del(del("a", "\0")), op_put_req(keep)],
        vec![],
    );
    let err = kv.txn(t).await.unwrap_err();
    assert_eq!(err.message(), "etcdserver: key not found");
    let all = kv.range(range("a", "\0")).await.unwrap().into_inner();
    assert_eq!(all.header.unwrap().revision, 3);
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        [b"a".to_vec(), b"b".to_vec()]
    );
    assert_eq!(all.kvs[1].version, 1);
    // And the store moves on normally.
    assert_eq!(
        kv.put(put("c", "3"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        4
    );
    m.stop().await;
}
