//! Every error a KV request can get, with etcd's gRPC code and text; the member keeps
//! serving after each.

use crate::harness::Embedded;
use cairn_api::etcdserverpb::{
    compare::{CompareResult as R, CompareTarget as T, TargetUnion as U},
    CompactionRequest, PutRequest, RangeRequest, RequestOp,
};
use tonic::Code;

use crate::ops::*;

fn expect(err: tonic::Status, code: Code, text: &str) {
    assert_eq!((err.code(), err.message()), (code, text));
}

#[tokio::test]
async fn invalid_requests_get_etcds_errors_and_the_member_keeps_serving() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    let empty = "etcdserver: key is not provided";
    expect(
        kv.range(get("")).await.unwrap_err(),
        Code::InvalidArgument,
        empty,
    );
    expect(
        kv.put(put("", "v")).await.unwrap_err(),
        Code::InvalidArgument,
        empty,
    );
    expect(
        kv.delete_range(del("", "")).await.unwrap_err(),
        Code::InvalidArgument,
        empty,
    );
    let t = txn(
        vec![cmp("", T::Version, R::Equal, U::Version(0))],
        vec![],
        vec![],
    );
    expect(kv.txn(t).await.unwrap_err(), Code::InvalidArgument, empty);
    let t = txn(vec![], vec![op_put("", "v")], vec![]);
    expect(kv.txn(t).await.unwrap_err(), Code::InvalidArgument, empty);

    let iv = PutRequest {
        ignore_value: true,
        ..put("absent", "")
    };
    expect(
        kv.put(iv).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    let il = PutRequest {
        ignore_lease: true,
        ..put("absent", "v")
    };
    expect(
        kv.put(il).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    let vp = PutRequest {
        ignore_value: true,
        ..put("k", "v")
    };
    expect(
        kv.put(vp).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    let lp = PutRequest {
        ignore_lease: true,
        lease: 7,
        ..put("k", "v")
    };
    expect(
        kv.put(lp).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    let ln = PutRequest {
        lease: 12345,
        ..put("k", "v")
    };
    expect(
        kv.put(ln).await.unwrap_err(),
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    let many = txn(
        vec![],
        (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        vec![],
    );
    expect(
        kv.txn(many).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let ok = txn(
        vec![],
        (0..128).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        vec![],
    );
    kv.txn(ok).await.unwrap();
    let dup = txn(vec![], vec![op_put("a", "1"), op_put("a", "2")], vec![]);
    expect(
        kv.txn(dup).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let empty_op = txn(vec![], vec![RequestOp { request: None }], vec![]);
    expect(
        kv.txn(empty_op).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: key not found",
    );

    let rev = kv
        .put(put("k", "v"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let future = "etcdserver: mvcc: required revision is a future revision";
    expect(
        kv.range(RangeRequest {
            revision: rev + 1,
            ..get("k")
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        future,
    );
    let t = txn(
        vec![],
        vec![op_get(RangeRequest {
            revision: rev + 5,
            ..get("k")
        })],
        vec![],
    );
    expect(kv.txn(t).await.unwrap_err(), Code::OutOfRange, future);
    expect(
        kv.compact(CompactionRequest {
            revision: rev + 1,
            physical: false,
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        future,
    );
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    expect(
        kv.range(RangeRequest {
            revision: rev - 1,
            ..get("k")
        })
        .await
        .unwrap_err(),
        Code::OutOfRange,
        compacted,
    );
    let t = txn(
        vec![],
        vec![
            op_put("x", "1"),
            op_get(RangeRequest {
                revision: 2,
                ..get("k")
            }),
        ],
        vec![],
    );
    expect(kv.txn(t).await.unwrap_err(), Code::OutOfRange, compacted);
    // The failed txn applied nothing.
    assert!(kv
        .range(get("x"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());

    let bad_sort = RangeRequest {
        sort_order: 9,
        ..get("k")
    };
    expect(
        kv.range(bad_sort).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    );

    // Still serving.
    assert_eq!(
        kv.range(get("k")).await.unwrap().into_inner().kvs[0].value,
        b"v"
    );
    m.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_and_the_member_keeps_serving() {
    let m = Embedded::start_with(|c| c.max_request_bytes = 64 * 1024).await;
    let mut kv = m.kv().await;
    let big = PutRequest {
        key: b"big".to_vec(),
        value: vec![7; 100 * 1024],
        ..Default::default()
    };
    expect(
        kv.put(big).await.unwrap_err(),
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    // Past the gRPC limit (request + 512 KiB) the transport itself refuses the message.
    let huge = PutRequest {
        key: b"huge".to_vec(),
        value: vec![7; 700 * 1024],
        ..Default::default()
    };
    assert!(kv.put(huge).await.is_err());
    kv.put(put("small", "ok")).await.unwrap();
    assert_eq!(
        kv.range(get("small")).await.unwrap().into_inner().kvs[0].value,
        b"ok"
    );
    m.stop().await;
}

#[tokio::test]
async fn malformed_bytes_on_the_client_port_do_not_stop_the_member() {
    use tokio::io::AsyncWriteExt;
    let m = Embedded::start().await;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 64][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff",
    ] {
        let mut s = tokio::net::TcpStream::connect(m.addr).await.unwrap();
        let _ = s.write_all(garbage).await;
        drop(s);
    }
    let mut kv = m.kv().await;
    kv.put(put("after", "garbage")).await.unwrap();
    m.stop().await;
}
