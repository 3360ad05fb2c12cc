//! The recipes that follow others: a gRPC client balanced over registered instances that
//! drops one whose process was killed, in the registry's layout and etcd's endpoints one;
//! group membership across a leader failover; several locks taken without deadlock; delayed
//! items in due order; and `lost()` of a leadership firing before the next leader is elected.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
use cairn_client::{Client, ClientOptions};
use cairn_recipes::{
    DelayQueue, Election, EndpointManager, GroupMember, GroupView, MultiLock, ServiceRegistry,
    Session,
};

use crate::harness::{Embedded, Process};
use crate::recipes::client;
use crate::recipes_state::within;

/// Which member answered a Range through `channel`.
async fn answered_by(channel: tonic::transport::Channel) -> Result<u64, tonic::Status> {
    let r = KvClient::new(channel)
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map_or(0, |h| h.member_id))
}

async fn member_id(p: &Process) -> u64 {
    let c = Client::connect([p.addr.to_string()], ClientOptions::default())
        .await
        .expect("connect");
    c.get("x", None)
        .await
        .expect("get")
        .header
        .map_or(0, |h| h.member_id)
}

/// Three Cairn members serve as the "instances" (any gRPC server would do: the calls are
/// their KV Range); the registry lives on a fourth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_channel_drops_an_instance_whose_process_was_killed() {
    let store = Embedded::start().await;
    let c = client(&store).await;
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(Process::cairn().await);
    }
    let mut ids = Vec::new();
    for b in &backends {
        ids.push(member_id(b).await);
    }
    // Two registered in the registry's layout, one in etcd's endpoints layout; each on a
    // short lease of its own, as each instance would hold.
    let registry = ServiceRegistry::new(c.clone(), "services/");
    let mut sessions = Vec::new();
    for (i, b) in backends.iter().enumerate().take(2) {
        let s = Session::new(&c, 2).await.expect("session");
        registry
            .register(&s, "kv", &format!("kv-{i}"), b.addr.to_string())
            .await
            .expect("register");
        sessions.push(s);
    }
    let s = Session::new(&c, 2).await.expect("session");
    let endpoints = EndpointManager::new(c.clone(), "services/kv");
    endpoints
        .add(
            &s,
            "kv-2",
            &backends[2].addr.to_string(),
            serde_json::json!({"zone": "b"}),
        )
        .await
        .expect("add");
    sessions.push(s);
    let listed = endpoints.list().await.expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let raw = c.get("services/kv/kv-2", None).await.expect("get").kvs;
    let stored: serde_json::Value = serde_json::from_slice(&raw[0].value).expect("JSON");
    assert_eq!(
        stored,
        serde_json::json!({"Op": 0, "Addr": backends[2].addr.to_string(), "Metadata": {"zone": "b"}})
    );

    let balanced = registry.discovery("kv").channel().await.expect("channel");
    assert_eq!(balanced.instances().len(), 3);
    let mut seen = BTreeSet::new();
    within("calls reaching every instance", async {
        while seen.len() < 3 {
            if let Ok(id) = answered_by(balanced.channel()).await {
                seen.insert(id);
            }
        }
    })
    .await;
    assert_eq!(seen, ids.iter().copied().collect());

    // The first instance's process dies, and with it its keep-alives.
    backends[0].kill9();
    let killed = Instant::now();
    drop(sessions.remove(0));
    within("the instance's removal", async {
        while balanced.instances().contains_key("kv-0") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The lease is 2 s; its expiry is checked every 500 ms, and the leader may extend a
    // lease by an election timeout.
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    // From then on every call succeeds, and none goes to the dead instance.
    let mut after = BTreeSet::new();
    for _ in 0..40 {
        let id = within("a call", answered_by(balanced.channel()))
            .await
            .expect("a call after the removal");
        after.insert(id);
    }
    assert!(!after.contains(&ids[0]), "{after:?}");
    assert!(after.is_subset(&ids[1..].iter().copied().collect()));
    store.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_membership_stays_true_across_a_leader_kill() {
    let mut cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let connect = || Client::connect(endpoints.clone(), ClientOptions::default());
    let (a, b, watcher) = (
        connect().await.expect("connect"),
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    );
    let (sa, sb) = (
        Session::new(&a, 5).await.expect("session"),
        Session::new(&b, 2).await.expect("session"),
    );
    let one = GroupMember::join(&sa, "groups/workers", "w1", "10.0.0.1")
        .await
        .expect("join");
    let two = GroupMember::join(&sb, "groups/workers", "w2", "10.0.0.2")
        .await
        .expect("join");
    let view = GroupView::new(&watcher, "groups/workers")
        .await
        .expect("view");
    let ids = |m: std::collections::BTreeMap<String, Vec<u8>>| m.into_keys().collect::<Vec<_>>();
    within("both members seen", async {
        while ids(view.members()) != ["w1", "w2"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let leader = cluster.leader().await;
    cluster.members[leader].process.kill9();
    let at = two.set_payload("10.0.0.22").await.expect("payload");
    within("the new payload", one.view().cache().wait_for_revision(at))
        .await
        .expect("seen");
    assert_eq!(one.members()["w2"], b"10.0.0.22");
    // w2's process "dies": its lease lapses and the group shrinks everywhere.
    drop(two);
    drop(sb);
    within("w2 gone", async {
        while ids(view.members()) != ["w1"] || ids(one.members()) != ["w1"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cluster.members[leader].process.restart().await;
    one.leave().await.expect("leave");
    within("w1 gone", async {
        while !view.members().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multilocks_over_overlapping_sets_never_deadlock_or_overlap() {
    let m = Embedded::start().await;
    let held: Arc<StdMutex<BTreeSet<String>>> = Arc::default();
    let sets: [&[&str]; 4] = [
        &["locks/a", "locks/b"],
        &["locks/b", "locks/a"],
        &["locks/c", "locks/b", "locks/a"],
        &["locks/a", "locks/c"],
    ];
    let mut tasks = Vec::new();
    for set in sets {
        let c = client(&m).await;
        let held = held.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&c, 10).await.expect("session");
            let lock = MultiLock::new(&session, set.iter().copied());
            for _ in 0..5 {
                let guard = lock.lock().await.expect("lock");
                {
                    let mut h = held.lock().expect("held");
                    for name in set {
                        assert!(h.insert(name.to_string()), "{name} held twice");
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                {
                    let mut h = held.lock().expect("held");
                    for name in set {
                        h.remove(*name);
                    }
                }
                assert_eq!(guard.fencing_tokens().len(), set.len());
                guard.unlock().await.expect("unlock");
            }
        }));
    }
    within("every task's rounds (a deadlock never ends)", async {
        for t in tasks {
            t.await.expect("task");
        }
    })
    .await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_items_come_in_due_order_and_not_before_their_time() {
    let m = Embedded::start().await;
    let q = DelayQueue::new(client(&m).await, "queues/later");
    let now = SystemTime::now();
    for (item, ms) in [("third", 900u64), ("first", 300), ("second", 600)] {
        q.enqueue_at(item, now + Duration::from_millis(ms))
            .await
            .expect("enqueue");
    }
    assert_eq!(q.try_dequeue().await.expect("try"), None, "nothing due yet");
    for (want, ms) in [("first", 300u64), ("second", 600), ("third", 900)] {
        let item = within("an item", q.dequeue()).await.expect("dequeue");
        assert_eq!(item, want.as_bytes());
        let due = now + Duration::from_millis(ms);
        assert!(SystemTime::now() >= due, "{want} came early");
    }
    // An item due sooner than the one waited for is taken at its own time.
    q.enqueue_after("late", Duration::from_secs(20))
        .await
        .expect("enqueue");
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.dequeue().await })
    };
    // Whether the consumer is already waiting on "late" or not, "soon" comes first.
    q.enqueue_after("soon", Duration::from_millis(200))
        .await
        .expect("enqueue");
    let got = within("the sooner item", waiting)
        .await
        .expect("task")
        .expect("dequeue");
    assert_eq!(got, b"soon");
    m.stop().await;
}

/// The leader's process is cut off from the cluster (its keep-alives stop reaching it):
/// its `lost()` fires no later than a TTL after its last acknowledged renewal was sent,
/// which is before the cluster expires the lease and lets the next candidate lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderships_lost_fires_before_the_next_leader_is_elected() {
    let m = Embedded::start().await;
    let proxy = crate::recipes_state::Proxy::start(m.addr).await;
    let cut_off = Client::connect([proxy.addr.to_string()], ClientOptions::default())
        .await
        .expect("connect");
    let s1 = Session::new(&cut_off, 2).await.expect("session");
    let leader = Election::new(&s1, "elections/sched")
        .campaign("node-1")
        .await
        .expect("campaign");
    let c2 = client(&m).await;
    let next = tokio::spawn(async move {
        let s2 = Session::new(&c2, 10).await.expect("session");
        let l = Election::new(&s2, "elections/sched")
            .campaign("node-2")
            .await
            .expect("campaign");
        let at = Instant::now();
        drop(l);
        at
    });
    proxy.cut();
    within("lost()", leader.lost()).await;
    let lost = Instant::now();
    let elected = within("the next leader", next).await.expect("task");
    assert!(
        lost <= elected,
        "lost() fired after the next leader was elected"
    );
    m.stop().await;
}
