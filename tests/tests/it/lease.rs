//! Leases: grant, revoke, time-to-live, list, keep-alive, expiry, and survival of a SIGKILL.

use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, WatchCreateRequest,
};
use cairn_api::mvccpb::event::EventType;
use tonic::transport::Channel;
use tonic::Code;

use crate::harness::{channel, Embedded, Process, WatchConn};
use crate::ops::*;

async fn lease_client(addr: std::net::SocketAddr) -> LeaseClient<Channel> {
    LeaseClient::new(channel(addr).await)
}

fn grant(ttl: i64, id: i64) -> LeaseGrantRequest {
    LeaseGrantRequest { ttl, id }
}

fn put_leased(k: &str, lease: i64) -> PutRequest {
    PutRequest {
        lease,
        ..put(k, "v")
    }
}

#[tokio::test]
async fn grant_revoke_time_to_live_and_list() {
    let m = Embedded::start().await;
    let mut leases = lease_client(m.addr).await;
    let mut kv = m.kv().await;
    let g = leases.lease_grant(grant(60, 0)).await.unwrap().into_inner();
    assert!(g.id > 0);
    assert_eq!((g.ttl, g.header.unwrap().revision), (60, 1));
    // Below the minimum (1.5 election timeouts, rounded up) the TTL is raised.
    assert_eq!(
        leases
            .lease_grant(grant(1, 1000))
            .await
            .unwrap()
            .into_inner()
            .ttl,
        2
    );
    let dup = leases.lease_grant(grant(10, 1000)).await.unwrap_err();
    assert_eq!(
        (dup.code(), dup.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let big = leases
        .lease_grant(grant(9_000_000_001, 0))
        .await
        .unwrap_err();
    assert_eq!(
        (big.code(), big.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    kv.put(put_leased("l/a", g.id)).await.unwrap(); // 2
    kv.put(put_leased("l/b", g.id)).await.unwrap(); // 3
    kv.put(put_leased("l/c", 1000)).await.unwrap(); // 4
    kv.put(put_leased("l/c", g.id)).await.unwrap(); // 5: moves to the other lease
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ttl.granted_ttl, ttl.keys),
        (60, vec![b"l/a".to_vec(), b"l/b".to_vec(), b"l/c".to_vec()])
    );
    assert!(ttl.ttl > 55 && ttl.ttl <= 60);
    let other = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 1000,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.keys.is_empty());
    let mut listed: Vec<i64> = leases
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    listed.sort();
    assert_eq!(listed, {
        let mut v = vec![g.id, 1000];
        v.sort();
        v
    });

    let mut w = WatchConn::open(m.addr).await;
    w.create(WatchCreateRequest {
        key: b"l/".to_vec(),
        range_end: prefix_end("l/"),
        ..Default::default()
    })
    .await;
    let r = leases
        .lease_revoke(LeaseRevokeRequest { id: g.id })
        .await
        .unwrap()
        .into_inner();
    // All of the lease's keys go at one revision.
    assert_eq!(r.header.unwrap().revision, 6);
    let ev = w.next().await;
    let deleted: Vec<(i32, Vec<u8>, i64)> = ev
        .events
        .iter()
        .map(|e| {
            (
                e.r#type,
                e.kv.clone().unwrap().key,
                e.kv.clone().unwrap().mod_revision,
            )
        })
        .collect();
    let del = EventType::Delete as i32;
    assert_eq!(
        deleted,
        vec![
            (del, b"l/a".to_vec(), 6),
            (del, b"l/b".to_vec(), 6),
            (del, b"l/c".to_vec(), 6)
        ]
    );
    assert_eq!(
        kv.range(range("l/", "l0"))
            .await
            .unwrap()
            .into_inner()
            .count,
        0
    );

    let gone = leases
        .lease_revoke(LeaseRevokeRequest { id: g.id })
        .await
        .unwrap_err();
    assert_eq!(
        (gone.code(), gone.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    let e = kv.put(put_leased("x", g.id)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    m.stop().await;
}

#[tokio::test]
async fn a_key_on_a_3s_lease_expires_after_3_to_4_seconds() {
    let m = Embedded::start().await;
    let mut leases = lease_client(m.addr).await;
    let mut kv = m.kv().await;
    let started = Instant::now();
    let g = leases.lease_grant(grant(3, 0)).await.unwrap().into_inner();
    kv.put(put_leased("ephemeral", g.id)).await.unwrap();
    loop {
        let present = !kv
            .range(get("ephemeral"))
            .await
            .unwrap()
            .into_inner()
            .kvs
            .is_empty();
        let elapsed = started.elapsed();
        if !present {
            assert!(
                elapsed >= Duration::from_millis(2900),
                "expired early, after {elapsed:?}"
            );
            break;
        }
        assert!(
            elapsed < Duration::from_millis(4000),
            "still there after {elapsed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    m.stop().await;
}

#[tokio::test]
async fn keep_alive_keeps_a_3s_lease_past_10s() {
    let m = Embedded::start().await;
    let mut leases = lease_client(m.addr).await;
    let mut kv = m.kv().await;
    let g = leases.lease_grant(grant(3, 0)).await.unwrap().into_inner();
    kv.put(put_leased("kept", g.id)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        tx.send(LeaseKeepAliveRequest { id: g.id }).await.unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!((r.id, r.ttl), (g.id, 3));
        // A client renews at a third of the TTL, as etcd's clients do.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        kv.range(get("kept")).await.unwrap().into_inner().kvs.len(),
        1
    );
    // Keep-alive of an unknown lease answers TTL 0.
    tx.send(LeaseKeepAliveRequest { id: 424242 }).await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().ttl, 0);
    m.stop().await;
}

#[tokio::test]
async fn leases_and_their_keys_survive_sigkill() {
    let mut member = Process::cairn().await;
    let mut leases = lease_client(member.addr).await;
    let mut kv = member.kv().await;
    let g = leases
        .lease_grant(grant(100, 0))
        .await
        .unwrap()
        .into_inner();
    kv.put(put_leased("svc/1", g.id)).await.unwrap();
    kv.put(put_leased("svc/2", g.id)).await.unwrap();
    kv.delete_range(del("svc/2", "")).await.unwrap();
    member.kill9();
    member.restart().await;
    let mut leases = lease_client(member.addr).await;
    let mut kv = member.kv().await;
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    // After a restart the remaining TTL starts again from the granted TTL.
    assert_eq!((ttl.granted_ttl, ttl.keys), (100, vec![b"svc/1".to_vec()]));
    assert!(ttl.ttl > 90);
    leases
        .lease_revoke(LeaseRevokeRequest { id: g.id })
        .await
        .unwrap();
    assert!(kv
        .range(get("svc/1"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
}
