//! The `cairn-client` crate against live members: the txn builder's compares, failover
//! across endpoints, watches that survive their member, a lease keeper across a leader
//! change.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_client::{
    Client, ClientOptions, Compare, DeleteOptions, Error, EventType, GetOptions, Op, PutOptions,
    Txn, WatchOptions,
};
use futures::StreamExt;

use crate::cluster_harness::Cluster;
use crate::harness::Embedded;

fn opts() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

async fn holds(client: &Client, c: Compare) -> bool {
    client
        .txn(Txn::new().when([c]))
        .await
        .expect("txn")
        .succeeded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_txn_builder_states_every_compare_and_branch() {
    let m = Embedded::start().await;
    let client = Client::connect([m.addr.to_string()], opts())
        .await
        .expect("connect");
    let lease = client.lease_grant(60, 0).await.expect("grant").id;
    let first = client.put("k", "b", None).await.expect("put");
    let created = first.header.expect("header").revision;
    let second = client
        .put("k", "b", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let modified = second.header.expect("header").revision;
    client.put("k2", "z", None).await.expect("put");

    // Each target with each operator, once true and once false.
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("k").eq("b"), true),
        (Compare::value("k").eq("c"), false),
        (Compare::value("k").ne("c"), true),
        (Compare::value("k").gt("a"), true),
        (Compare::value("k").lt("a"), false),
        (Compare::version("k").eq(2), true),
        (Compare::version("k").gt(2), false),
        (Compare::version("k").lt(3), true),
        (Compare::version("k").ne(2), false),
        (Compare::create_revision("k").eq(created), true),
        (Compare::create_revision("nope").eq(0), true),
        (Compare::create_revision("k").lt(created), false),
        (Compare::mod_revision("k").eq(modified), true),
        (Compare::mod_revision("k").gt(modified), false),
        (Compare::mod_revision("k").ne(created), true),
        (Compare::lease("k").eq(lease), true),
        (Compare::lease("k2").eq(0), true),
        (Compare::lease("k").ne(lease), false),
        (Compare::value("k").with_prefix().gt("a"), true),
        (Compare::version("k").with_range("k3").eq(2), false),
    ];
    for (i, (c, expected)) in cases.into_iter().enumerate() {
        assert_eq!(holds(&client, c).await, expected, "case {i}");
    }

    // Branches: and_then runs when all hold, or_else otherwise; nested txns and reads.
    let resp =
        client
            .txn(
                Txn::new()
                    .when([Compare::value("k").eq("b"), Compare::version("k2").eq(1)])
                    .and_then([
                        Op::put("k", "c", None),
                        Op::get("k", None),
                        Op::txn(Txn::new().when([Compare::value("k2").eq("nope")]).or_else([
                            Op::delete("k2", Some(DeleteOptions::new().with_prev_kv())),
                        ])),
                    ])
                    .or_else([Op::put("k", "never", None)]),
            )
            .await
            .expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.responses.len(), 3);
    let left = client
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(left.kvs.len(), 1);
    assert_eq!(left.kvs[0].value, b"c");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_across_three_members_with_one_down() {
    let mut cluster = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let client = Client::connect(&endpoints, opts()).await.expect("connect");
    client.put("before", "1", None).await.expect("put");
    // The member the client talks to goes down: calls move to the others.
    cluster.members[0].process.kill9();
    let got = client.get("before", None).await.expect("read fails over");
    assert_eq!(got.kvs[0].value, b"1");
    for i in 0..20 {
        client
            .put(format!("after/{i}"), "x", None)
            .await
            .expect("write fails over");
    }
    let n = client
        .get(
            "after/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count;
    assert_eq!(n, 20);
    // A new client whose first endpoint is down still connects.
    let late = Client::connect(&endpoints, opts()).await.expect("connect");
    assert_eq!(late.get("before", None).await.expect("get").kvs.len(), 1);
}

/// Creates `key` exactly once, retrying a write whose outcome is unknown (the leader died
/// while it was in flight) under a compare that its own success falsifies.
async fn create(client: &Client, key: String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone()).eq(0)])
            .and_then([Op::put(key.clone(), "x", None)]);
        match client.txn(txn).await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "cannot create {key}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_the_loss_of_its_member_and_delivers_every_event_once() {
    let mut cluster = Cluster::start(3, &[]).await;
    let addrs: Vec<String> = cluster.client_endpoints();
    let addr = |i: usize| addrs[i].clone();
    // The watcher streams from member 0 first; the writer writes through the others.
    let watcher = Client::connect([addr(0), addr(1), addr(2)], opts())
        .await
        .expect("connect");
    let writer = Client::connect([addr(1), addr(2)], opts())
        .await
        .expect("connect");
    // The watch starts at the first write's revision: created after it (the watch is
    // set up in the background), it still replays it rather than waiting for ever.
    let at = writer
        .put("w/0000", "0", None)
        .await
        .expect("put")
        .header
        .map_or(0, |h| h.revision);
    let mut watch = watcher.watch(
        "w/",
        Some(WatchOptions::new().with_prefix().with_start_revision(at)),
    );
    let first = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the first event")
        .expect("event")
        .expect("batch");
    assert_eq!(first.events[0].kv.as_ref().expect("kv").key, b"w/0000");
    let mut seen = vec![first.events[0].kv.clone().expect("kv")];

    let total = 200;
    let deadline = Instant::now() + Duration::from_secs(60);
    let next_event = async |watch: &mut cairn_client::Watch, seen: &mut Vec<_>| {
        let batch = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .expect("events keep coming")
            .expect("stream open")
            .expect("no watch error");
        for e in batch.events {
            assert_eq!(e.r#type, EventType::Put as i32);
            seen.push(e.kv.expect("kv"));
        }
    };
    // Half the writes stream from member 0 ...
    for i in 1..total / 2 {
        create(&writer, format!("w/{i:04}")).await;
    }
    while seen.len() < total / 2 {
        next_event(&mut watch, &mut seen).await;
    }
    // ... which then dies; the other half must come through another member.
    cluster.members[0].process.kill9();
    for i in total / 2..total {
        create(&writer, format!("w/{i:04}")).await;
    }
    while seen.len() < total {
        next_event(&mut watch, &mut seen).await;
    }
    let keys: Vec<Vec<u8>> = seen.iter().map(|kv| kv.key.clone()).collect();
    let unique: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), total, "every event exactly once");
    assert!(
        seen.windows(2)
            .all(|w| w[0].mod_revision < w[1].mod_revision),
        "events in revision order"
    );
    // Member 0 comes back; the watch carries on (now from another member).
    cluster.members[0].process.restart().await;
    let client = Client::connect([addr(0)], opts()).await.expect("connect");
    client.put("w/last", "x", None).await.expect("put");
    let batch = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("event")
        .expect("open")
        .expect("ok");
    assert_eq!(batch.events[0].kv.as_ref().expect("kv").key, b"w/last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeper_survives_a_leader_change_and_reports_loss() {
    let mut cluster = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let client = Client::connect(&endpoints, opts()).await.expect("connect");
    let lease = client.lease_grant(3, 0).await.expect("grant");
    let mut keeper = client.keep_alive(lease.id, lease.ttl);
    client
        .put("reg/a", "1", Some(PutOptions::new().with_lease(lease.id)))
        .await
        .expect("put");
    let leader = cluster.leader().await;
    cluster.members[leader].process.kill9();
    // Well past the TTL, through the election, the key is still there.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert!(!keeper.is_lost(), "keeper lost the lease");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = client.get("reg/a", None).await.expect("get");
    assert_eq!(
        got.kvs.len(),
        1,
        "the leased key outlived its TTL under keep-alive"
    );
    // Revoked: the keeper says so.
    client.lease_revoke(lease.id).await.expect("revoke");
    let why = tokio::time::timeout(Duration::from_secs(10), keeper.lost())
        .await
        .expect("keeper notices");
    assert!(matches!(why, Error::LeaseLost(id) if id == lease.id));
}
