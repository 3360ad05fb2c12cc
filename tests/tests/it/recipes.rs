//! The recipes under real concurrency: mutual exclusion with increasing fencing tokens,
//! release by lease expiry, FIFO hand-over, try/timeout leaving no trace, and elections with
//! one leader at a time and observers that see every change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions, Compare, GetOptions, Op, Txn};
use cairn_recipes::{Election, Error, InstanceEvent, Mutex, Queue, ServiceRegistry, Session};
use futures::StreamExt;

use crate::harness::Embedded;

pub(crate) async fn client(m: &Embedded) -> Client {
    Client::connect([m.addr.to_string()], ClientOptions::default())
        .await
        .expect("connect")
}

pub(crate) async fn keys_under(c: &Client, prefix: &str) -> i64 {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    )
    .await
    .expect("count")
    .count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutex_never_has_two_holders_and_fencing_tokens_increase() {
    let m = Embedded::start().await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client(&m).await);
    }
    contend(clients, "locks/counter", 10).await;
    assert_eq!(keys_under(&client(&m).await, "locks/counter/").await, 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_take_the_lock_in_arrival_order_and_a_dead_holder_releases_it() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    // The holder's process "dies": its keep-alives stop and its key stays until expiry.
    let dead = Session::new(&c, 2).await.expect("session");
    let guard = Mutex::new(&dead, "locks/q").lock().await.expect("lock");
    std::mem::forget(guard);
    let died_at = Instant::now();
    drop(dead);

    let order = Arc::new(StdMutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let wc = client(&m).await;
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let s = Session::new(&wc, 10).await.expect("session");
            let g = Mutex::new(&s, "locks/q").lock().await.expect("lock");
            order.lock().expect("order").push((i, Instant::now()));
            g.unlock().await.expect("unlock");
            s.close().await.expect("close");
        }));
        // Queue them one after another (each has created its key before the next starts).
        let deadline = Instant::now() + Duration::from_secs(10);
        while keys_under(&c, "locks/q/").await < i + 2 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::task::yield_now().await;
        }
    }
    for w in waiters {
        w.await.expect("waiter");
    }
    let order = order.lock().expect("order").clone();
    let ids: Vec<i64> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(ids, vec![0, 1, 2], "first come, first served");
    let released = order[0].1.duration_since(died_at);
    assert!(
        released < Duration::from_secs(2) + Duration::from_millis(2500),
        "the dead holder's lock was released after {released:?} (TTL 2 s)"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_and_timeouts_leave_no_trace() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let a = Session::new(&c, 10).await.expect("session");
    let b = Session::new(&c, 10).await.expect("session");
    let held = Mutex::new(&a, "locks/t").lock().await.expect("lock");
    let other = Mutex::new(&b, "locks/t");
    assert!(matches!(other.try_lock().await, Err(Error::Locked)));
    assert!(matches!(
        other.lock_timeout(Duration::from_millis(300)).await,
        Err(Error::Timeout)
    ));
    // Only the holder's key is left (the timed-out waiter's key is removed in the
    // background as its future is dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys_under(&c, "locks/t/").await != 1 {
        assert!(Instant::now() < deadline, "a waiter's key was left behind");
        tokio::task::yield_now().await;
    }
    held.unlock().await.expect("unlock");
    let g = other.try_lock().await.expect("free now");
    g.unlock().await.expect("unlock");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_and_observers_see_every_change() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let watcher = Session::new(&c, 10).await.expect("session");
    let mut observed = Election::new(&watcher, "elections/s").observe();

    let s1 = Session::new(&c, 10).await.expect("session");
    let s2 = Session::new(&c, 10).await.expect("session");
    let e1 = Election::new(&s1, "elections/s");
    let e2 = Election::new(&s2, "elections/s");
    let first = e1.campaign("one").await.expect("campaign");
    let second = tokio::spawn({
        let c = c.clone();
        async move {
            let s = Session::new(&c, 10).await.expect("session");
            let e = Election::new(&s, "elections/s");
            let l = e.campaign("three").await.expect("campaign");
            let v = e.leader().await.expect("leader").value;
            l.resign().await.expect("resign");
            v
        }
    });
    // One leader: the second candidate waits.
    assert_eq!(e2.leader().await.expect("leader").value, b"one");
    first.proclaim("one, again").await.expect("proclaim");
    first.resign().await.expect("resign");
    assert_eq!(second.await.expect("third candidate"), b"three");

    let mut seen = Vec::new();
    while seen.last().map(Vec::as_slice) != Some(&b"three"[..]) {
        let kv = tokio::time::timeout(Duration::from_secs(10), observed.next())
            .await
            .expect("observer keeps up")
            .expect("open")
            .expect("ok");
        seen.push(kv.value);
    }
    assert_eq!(
        seen,
        vec![b"one".to_vec(), b"one, again".to_vec(), b"three".to_vec()],
        "observers see every leader and proclamation in order"
    );
    drop(e2);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_consumers_take_every_queue_item_exactly_once() {
    let m = Embedded::start().await;
    let total = 200;
    let producer = Queue::new(client(&m).await, "queues/jobs");
    let mut consumers = Vec::new();
    for _ in 0..8 {
        consumers.push(Queue::new(client(&m).await, "queues/jobs"));
    }
    let consuming = Consumers::spawn(consumers);
    for i in 0..total {
        producer
            .enqueue(format!("job-{i:04}"))
            .await
            .expect("enqueue");
    }
    consuming.each_item_once(&producer, total).await;
    assert_eq!(
        keys_under(&client(&m).await, "queues/jobs.taken/").await,
        0,
        "receipts are cleaned up"
    );
    assert_eq!(producer.try_dequeue().await.expect("empty"), None);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_instance_disappears_within_its_ttl_when_its_process_dies() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let registry = ServiceRegistry::new(c.clone(), "services/");
    let alive = Session::new(&c, 10).await.expect("session");
    registry
        .register(&alive, "api", "api-1", "10.0.0.1:80")
        .await
        .expect("register");
    let mut events = Box::pin(registry.watch("api").await.expect("watch"));
    let first = events.next().await.expect("event").expect("ok");
    assert!(matches!(first, InstanceEvent::Added(ref i) if i.id == "api-1"));

    let dying = Session::new(&c, 2).await.expect("session");
    registry
        .register(&dying, "api", "api-2", "10.0.0.2:80")
        .await
        .expect("register");
    registry
        .register(&alive, "api", "api-1", "10.0.0.1:81")
        .await
        .expect("update");
    assert!(matches!(events.next().await.expect("event").expect("ok"),
        InstanceEvent::Added(ref i) if i.id == "api-2"));
    assert!(matches!(events.next().await.expect("event").expect("ok"),
        InstanceEvent::Updated(ref i) if i.id == "api-1" && i.value == b"10.0.0.1:81"));
    let ids: Vec<String> = registry
        .discover("api")
        .await
        .expect("discover")
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec!["api-1", "api-2"]);

    // The process of api-2 dies: its heartbeats stop.
    let died = Instant::now();
    drop(dying);
    let removed = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("removal seen")
        .expect("event")
        .expect("ok");
    assert_eq!(removed, InstanceEvent::Removed("api-2".into()));
    let after = died.elapsed();
    assert!(
        after < Duration::from_millis(2000 + 1500),
        "removed {after:?} after death (TTL 2 s)"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_and_election_services_speak_etcds_api() {
    use cairn_api::v3electionpb::{
        election_client::ElectionClient, CampaignRequest, LeaderRequest, ProclaimRequest,
        ResignRequest,
    };
    use cairn_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};

    let m = Embedded::start().await;
    let c = client(&m).await;
    let ch = crate::harness::channel(m.addr).await;
    let l1 = c.lease_grant(60, 0).await.expect("grant").id;
    let l2 = c.lease_grant(60, 0).await.expect("grant").id;
    let mut locks = LockClient::new(ch.clone());
    let first = locks
        .lock(LockRequest {
            name: b"jobs".to_vec(),
            lease: l1,
        })
        .await
        .expect("lock")
        .into_inner()
        .key;
    assert!(first.starts_with(b"jobs/"));
    let mut second_locks = locks.clone();
    let second = tokio::spawn(async move {
        second_locks
            .lock(LockRequest {
                name: b"jobs".to_vec(),
                lease: l2,
            })
            .await
            .expect("lock")
            .into_inner()
            .key
    });
    // Held: the second caller waits.
    let mut second = std::pin::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err()
    );
    locks
        .unlock(UnlockRequest { key: first.clone() })
        .await
        .expect("unlock");
    let key2 = second.await.expect("second holder");
    assert_ne!(key2, first);
    locks
        .unlock(UnlockRequest { key: key2 })
        .await
        .expect("unlock");

    let mut elections = ElectionClient::new(ch);
    let leader = elections
        .campaign(CampaignRequest {
            name: b"sched".to_vec(),
            lease: l1,
            value: b"a".to_vec(),
        })
        .await
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    let mut observe = elections
        .observe(LeaderRequest {
            name: b"sched".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();
    let seen = observe.message().await.expect("ok").expect("leader");
    assert_eq!(seen.kv.expect("kv").value, b"a");
    elections
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"b".to_vec(),
        })
        .await
        .expect("proclaim");
    let seen = observe.message().await.expect("ok").expect("leader");
    assert_eq!(seen.kv.expect("kv").value, b"b");
    let now = elections
        .leader(LeaderRequest {
            name: b"sched".to_vec(),
        })
        .await
        .expect("leader")
        .into_inner();
    assert_eq!(now.kv.expect("kv").value, b"b");
    elections
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await
        .expect("resign");
    let none = elections
        .leader(LeaderRequest {
            name: b"sched".to_vec(),
        })
        .await
        .expect_err("no leader");
    assert_eq!(none.message(), "election: no leader");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutex_across_three_members_has_one_holder_at_a_time() {
    let cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    // Each contender talks to one member: the lock is decided by the replicated log, not
    // by any one member.
    let mut clients = Vec::new();
    for i in 0..6 {
        let addr = cluster.members[i % 3].process.addr.to_string();
        clients.push(
            Client::connect([addr], ClientOptions::default())
                .await
                .expect("connect"),
        );
    }
    contend(clients, "locks/shared", 8).await;
}

/// Each client takes and releases the mutex `name` `rounds` times concurrently with the
/// others: never two holders at once, and fencing tokens strictly increase. Inside the
/// critical section each holder does a read-modify-write of a shared counter across real
/// round trips, the write guarded by its holder key (the fencing check a protected resource
/// would make): a mutex that admitted two holders would lose an increment or fail a guard.
async fn contend(clients: Vec<Client>, name: &'static str, rounds: usize) {
    let inside = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(StdMutex::new(Vec::new()));
    let counter = format!("{name}-counter");
    let contenders = clients.len();
    let mut tasks = Vec::new();
    let reader = clients[0].clone();
    for c in clients {
        let (inside, tokens, counter) = (inside.clone(), tokens.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&c, 10).await.expect("session");
            let mutex = Mutex::new(&session, name);
            for _ in 0..rounds {
                let guard = mutex.lock().await.expect("lock");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                tokens.lock().expect("tokens").push(guard.fencing_token());
                let seen = c.get(counter.as_str(), None).await.expect("read counter");
                let n: u64 = seen.kvs.first().map_or(0, |kv| {
                    String::from_utf8_lossy(&kv.value).parse().expect("number")
                });
                let write = Txn::new()
                    .when([Compare::create_revision(guard.key()).eq(guard.fencing_token())])
                    .and_then([Op::put(counter.as_str(), (n + 1).to_string(), None)]);
                let done = c.txn(write).await.expect("guarded write");
                assert!(
                    done.succeeded,
                    "the holder's fencing check failed while it held the lock"
                );
                assert!(
                    inside.load(Ordering::SeqCst),
                    "the flag was cleared by another holder"
                );
                inside.store(false, Ordering::SeqCst);
                guard.unlock().await.expect("unlock");
            }
            session.close().await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("contender");
    }
    let tokens = tokens.lock().expect("tokens").clone();
    assert_eq!(tokens.len(), contenders * rounds);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens strictly increase: {tokens:?}"
    );
    let total = reader
        .get(counter.as_str(), None)
        .await
        .expect("read counter");
    assert_eq!(
        total.kvs[0].value,
        (contenders * rounds).to_string().into_bytes(),
        "an increment was lost: two holders overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_items_go_to_exactly_one_consumer_across_a_leader_kill() {
    let mut cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let connect = || Client::connect(endpoints.clone(), ClientOptions::default());
    let producer = Queue::new(connect().await.expect("connect"), "queues/work");
    let total = 120;
    let mut consumers = Vec::new();
    for _ in 0..4 {
        consumers.push(Queue::new(connect().await.expect("connect"), "queues/work"));
    }
    let consuming = Consumers::spawn(consumers);
    for i in 0..total {
        if i == total / 2 {
            // Mid-stream, the leader dies: takes in flight get "leader changed" or lose
            // their answers; the receipts decide who got what.
            let leader = cluster.leader().await;
            cluster.members[leader].process.kill9();
            cluster.members[leader].process.restart().await;
        }
        producer
            .enqueue(format!("item-{i:04}"))
            .await
            .expect("enqueue");
    }
    consuming.each_item_once(&producer, total).await;
}

/// Consumers taking items until each gets "stop".
struct Consumers {
    taken: Arc<StdMutex<Vec<Vec<u8>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumers {
    fn spawn(queues: Vec<Queue>) -> Consumers {
        let taken = Arc::new(StdMutex::new(Vec::new()));
        let tasks = queues
            .into_iter()
            .map(|q| {
                let taken = taken.clone();
                tokio::spawn(async move {
                    loop {
                        let item = q.dequeue().await.expect("dequeue");
                        if item == b"stop" {
                            return;
                        }
                        taken.lock().expect("taken").push(item);
                    }
                })
            })
            .collect();
        Consumers { taken, tasks }
    }

    /// Waits until `total` items are taken, stops the consumers, and checks that every
    /// item was taken exactly once.
    async fn each_item_once(self, producer: &Queue, total: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.taken.lock().expect("taken").len() < total {
            assert!(Instant::now() < deadline, "items were not all consumed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..self.tasks.len() {
            producer.enqueue("stop").await.expect("enqueue");
        }
        for c in self.tasks {
            c.await.expect("consumer");
        }
        let mut items = self.taken.lock().expect("taken").clone();
        assert_eq!(items.len(), total, "as many items taken as enqueued");
        items.sort();
        items.dedup();
        assert_eq!(items.len(), total, "every item exactly once");
    }
}
