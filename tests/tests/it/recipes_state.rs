//! The recipes that hold state for their users: a Cache that stays equal to a fresh listing
//! across random writes, a member kill and a compaction it missed; Config reloads seen by
//! every subscriber, bad edits refused, atomic multi-key updates and rollback; STM keeping a
//! sum under contention, and the lost update read-committed allows.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use cairn_client::{Client, ClientOptions, GetOptions, KeyValue, Op, Txn, WatchOptions};
use cairn_recipes::{Cache, CacheEvent, Config, Error, Format, Isolation, Stm};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::harness::Embedded;
use crate::recipes::client;

/// Within this, everything the tests wait for happens.
const PATIENCE: Duration = Duration::from_secs(30);

/// The sum of the numbers stored under `prefix` (the accounts of an STM bank).
pub(crate) async fn sum_under(c: &Client, prefix: &str) -> i64 {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("accounts")
        .kvs
        .iter()
        .map(|kv| {
            String::from_utf8_lossy(&kv.value)
                .parse::<i64>()
                .expect("number")
        })
        .sum()
}

pub(crate) async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn revision(header: Option<cairn_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

/// The prefix as a fresh listing sees it at `rev`.
async fn listing(c: &Client, prefix: &str, rev: i64) -> Vec<KeyValue> {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_revision(rev)),
    )
    .await
    .expect("list")
    .kvs
}

/// A subscriber's own copy, started from the cache's contents.
fn mirror_of(cache: &Cache) -> BTreeMap<Vec<u8>, KeyValue> {
    cache
        .snapshot()
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect()
}

/// A subscriber's own copy, kept from the change stream only.
fn follow(mirror: &mut BTreeMap<Vec<u8>, KeyValue>, e: CacheEvent, relisted: &mut u32) {
    match e {
        CacheEvent::Added(kv) | CacheEvent::Modified { kv, .. } => {
            mirror.insert(kv.key.clone(), kv);
        }
        CacheEvent::Deleted { prev, .. } => {
            mirror.remove(&prev.key);
        }
        CacheEvent::Relisted { .. } => *relisted += 1,
        CacheEvent::Lagged(n) => panic!("the subscriber lagged by {n}"),
    }
}

/// Random puts, deletes and multi-key txns under `prefix` and beside it; the last revision.
/// Each is sent again while the cluster cannot answer (a member is being killed): every one
/// of them may apply twice without harm, and the cache is compared with a listing, not with
/// a model.
async fn random_writes(c: &Client, prefix: &str, rng: &mut rand::rngs::StdRng, n: usize) -> i64 {
    let mut rev = 0;
    for _ in 0..n {
        let key = format!("{prefix}{}", rng.gen_range(0..40));
        let txn = match rng.gen_range(0..10) {
            0..=5 => Txn::new().and_then([Op::put(key, format!("v{}", rng.gen::<u32>()), None)]),
            6 | 7 => Txn::new().and_then([Op::delete(key, None)]),
            8 => Txn::new().and_then([Op::put(format!("beside/{}", rng.gen::<u8>()), "x", None)]),
            _ => {
                // A txn may not name one key twice.
                let other = format!("{key}-other");
                Txn::new().and_then([
                    Op::put(key, "txn", None),
                    Op::delete(other.clone(), None),
                    Op::put(format!("{other}/child"), "txn", None),
                ])
            }
        };
        let answer = within("a write", async {
            loop {
                match c.txn(txn.clone()).await {
                    Err(e) if e.is_unavailable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    r => break r.expect("write"),
                }
            }
        })
        .await;
        rev = rev.max(revision(answer.header));
    }
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_stays_equal_to_a_fresh_listing_across_writes_and_a_member_kill() {
    let mut cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let writer = Client::connect(endpoints.clone(), ClientOptions::default())
        .await
        .expect("connect");
    writer.put("cfg/seed", "1", None).await.expect("put");
    // The cache's client starts on the first member: that is the one killed.
    let reader = Client::connect(endpoints, ClientOptions::default())
        .await
        .expect("connect");
    let cache = Cache::new(&reader, "cfg/").await.expect("cache");
    let mut changes = Box::pin(cache.changes());
    let mut mirror = mirror_of(&cache);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut last = random_writes(&writer, "cfg/", &mut rng, 150).await;
    cluster.members[0].process.kill9();
    last = last.max(random_writes(&writer, "cfg/", &mut rng, 100).await);
    cluster.members[0].process.restart().await;
    last = last.max(random_writes(&writer, "cfg/", &mut rng, 100).await);

    within("the cache catching up", cache.wait_for_revision(last))
        .await
        .expect("caught up");
    let snapshot = cache.snapshot();
    assert!(snapshot.revision >= last);
    assert_eq!(
        snapshot.kvs,
        listing(&writer, "cfg/", snapshot.revision).await
    );
    let mut relisted = 0;
    while mirror.len() != snapshot.kvs.len()
        || mirror.values().cloned().collect::<Vec<_>>() != snapshot.kvs
    {
        let e = within("the change stream", changes.next())
            .await
            .expect("open");
        follow(&mut mirror, e, &mut relisted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_missed_compacted_history_lists_again_and_says_so() {
    let m = Embedded::start().await;
    let direct = client(&m).await;
    let proxy = Proxy::start(m.addr).await;
    let through = Client::connect([proxy.addr.to_string()], ClientOptions::default())
        .await
        .expect("connect");
    for i in 0..10 {
        direct
            .put(format!("app/{i}"), "old", None)
            .await
            .expect("put");
    }
    let cache = Cache::new(&through, "app/").await.expect("cache");
    let mut changes = Box::pin(cache.changes());
    let mut mirror = mirror_of(&cache);
    let at = revision(direct.put("app/0", "seen", None).await.expect("put").header);
    within("the first change", cache.wait_for_revision(at))
        .await
        .expect("caught up");

    // The cache's connection goes away while keys change and their history is compacted.
    proxy.cut();
    for i in 0..5 {
        direct
            .delete(format!("app/{i}"), None)
            .await
            .expect("delete");
    }
    direct.put("app/7", "new", None).await.expect("put");
    let last = revision(
        direct
            .put("app/new", "new", None)
            .await
            .expect("put")
            .header,
    );
    direct.compact(last, true).await.expect("compact");
    proxy.mend();

    within("the re-list", async {
        while cache.relists() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cache.wait_for_revision(last).await.expect("caught up");
    let snapshot = cache.snapshot();
    assert_eq!(
        snapshot.kvs,
        listing(&direct, "app/", snapshot.revision).await
    );
    let mut relisted = 0;
    while relisted == 0 || mirror.values().cloned().collect::<Vec<_>>() != snapshot.kvs {
        let e = within("the change stream", changes.next())
            .await
            .expect("open");
        follow(&mut mirror, e, &mut relisted);
    }
    assert_eq!(relisted, 1);

    // A cache of every key (the empty prefix) lists and follows them all.
    let everything = Cache::new(&direct, "").await.expect("cache");
    let all = direct
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .expect("get");
    assert_eq!(everything.snapshot().kvs, all.kvs);

    // A write elsewhere: the member vouches for its revision when asked.
    let beside = revision(
        direct
            .put("elsewhere", "x", None)
            .await
            .expect("put")
            .header,
    );
    within("progress", cache.wait_for_revision(beside))
        .await
        .expect("progress");
    assert!(cache.revision() >= beside);
    within(
        "the write in the whole-store cache",
        everything.wait_for_revision(beside),
    )
    .await
    .expect("seen");
    assert!(everything.get(b"elsewhere").is_some());
    m.stop().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Limits {
    requests_per_second: u32,
    burst: u32,
}

fn positive(l: &Limits) -> Result<(), String> {
    match l.requests_per_second {
        0 => Err("requests_per_second must be positive".into()),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_reaches_every_subscriber_and_bad_edits_are_refused() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    // A key the configuration's key prefixes is not part of it.
    c.put("config/limits.bak", "not a config", None)
        .await
        .expect("put");
    let open = || {
        Config::<Limits>::key("config/limits", Format::Json)
            .with_default(Limits {
                requests_per_second: 100,
                burst: 10,
            })
            .with_validator(positive)
            .open(&c)
    };
    let mut subscribers = Vec::new();
    for _ in 0..10 {
        subscribers.push(open().await.expect("open"));
    }
    assert_eq!(subscribers[0].get().requests_per_second, 100, "the default");

    let want = Limits {
        requests_per_second: 250,
        burst: 50,
    };
    let first = subscribers[0].set(&want).await.expect("set");
    for s in &subscribers {
        let mut changes = s.changes();
        within("the reload", changes.wait_for(|v| v.revision >= first))
            .await
            .expect("open");
        assert_eq!(*s.get(), want);
    }
    let stored = c.get("config/limits", None).await.expect("get").kvs;
    assert_eq!(
        serde_json::from_slice::<Limits>(&stored[0].value).expect("JSON"),
        want
    );

    // The validator refuses before anything is written.
    let refused = subscribers[0].set(&Limits {
        requests_per_second: 0,
        burst: 1,
    });
    assert!(matches!(refused.await, Err(Error::InvalidConfig(_))));
    assert_eq!(c.get("config/limits", None).await.expect("get").kvs, stored);

    // Edits made beside the recipe that do not decode or pass are reported, not published.
    for bad in ["{not json", r#"{"requests_per_second":0,"burst":1}"#] {
        let at = revision(c.put("config/limits", bad, None).await.expect("put").header);
        for s in &subscribers {
            within("the refusal", s.wait_for_revision(at))
                .await
                .expect("seen");
            assert_eq!(*s.get(), want, "the last good value stays");
            assert_eq!(s.rejected().map(|r| r.revision), Some(at));
        }
    }

    // An update from a value that is no longer what is stored is refused, not retried.
    let stale = subscribers[1].update(|l| Limits {
        burst: l.burst + 1,
        ..l.clone()
    });
    assert!(matches!(stale.await, Err(Error::InvalidConfig(_))));

    // Back to what was stored at `first`, in one call.
    let back = subscribers[3].rollback(first).await.expect("rollback");
    for s in &subscribers {
        within("the rollback", s.wait_for_revision(back))
            .await
            .expect("seen");
        assert_eq!(*s.get(), want);
        assert_eq!(s.versioned().revision, back);
        assert_eq!(s.rejected(), None);
    }
    let beside = c.get("config/limits.bak", None).await.expect("get").kvs;
    assert_eq!(
        beside[0].value, b"not a config",
        "set and rollback left it alone"
    );
    m.stop().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Service {
    name: String,
    limits: Limits,
    replicas: Vec<String>,
    debug: Option<bool>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_under_a_prefix_changes_its_keys_in_one_transaction() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let open = || Config::<Service>::prefix("svc/", Format::Toml).open(&c);
    assert!(
        matches!(open().await, Err(Error::InvalidConfig(_))),
        "nothing stored and no default"
    );
    c.put("svc/name", r#""billing""#, None).await.expect("put");
    c.put("svc/limits", "requests_per_second = 5\nburst = 10\n", None)
        .await
        .expect("put");
    c.put("svc/replicas", r#"["a:1","b:1"]"#, None)
        .await
        .expect("put");
    let (one, two) = (open().await.expect("open"), open().await.expect("open"));
    assert_eq!(
        *one.get(),
        Service {
            name: "billing".into(),
            limits: Limits {
                requests_per_second: 5,
                burst: 10
            },
            replicas: vec!["a:1".into(), "b:1".into()],
            debug: None,
        }
    );

    // Two updates of different fields from two places: both survive.
    let from = one.versioned().revision.max(two.versioned().revision);
    let mut watch = c.watch(
        "svc/",
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(from + 1),
        ),
    );
    let (a, b) = tokio::join!(
        one.update(|s| Service {
            name: "payments".into(),
            debug: Some(true),
            ..s.clone()
        }),
        two.update(|s| Service {
            replicas: vec!["c:1".into()],
            ..s.clone()
        }),
    );
    let (a, b) = (a.expect("update"), b.expect("update"));
    let last = a.max(b);
    one.wait_for_revision(last).await.expect("seen");
    let now = one.get();
    assert_eq!((now.name.as_str(), now.debug), ("payments", Some(true)));
    assert_eq!(now.replicas, vec!["c:1".to_string()]);
    assert_eq!(
        c.get("svc/debug", None).await.expect("get").kvs[0].value,
        b"true"
    );
    // The two-field update arrived as one revision.
    let mut batches = Vec::new();
    while batches
        .iter()
        .map(|b: &cairn_client::WatchBatch| b.revision)
        .max()
        < Some(last)
    {
        batches.push(
            within("events", watch.next())
                .await
                .expect("open")
                .expect("batch"),
        );
    }
    let mut per_revision: BTreeMap<i64, usize> = BTreeMap::new();
    for e in batches.iter().flat_map(|b| &b.events) {
        *per_revision
            .entry(e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
            .or_default() += 1;
    }
    assert!(per_revision.values().any(|n| *n == 2), "{batches:?}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stm_keeps_a_sum_under_contention_where_its_isolation_promises_it() {
    let m = Embedded::start().await;
    for (i, iso) in [
        Isolation::SerializableSnapshot,
        Isolation::Serializable,
        Isolation::RepeatableReads,
    ]
    .into_iter()
    .enumerate()
    {
        let accounts: Vec<String> = (0..5).map(|a| format!("bank{i}/{a}")).collect();
        let c = client(&m).await;
        for a in &accounts {
            c.put(a.as_str(), "100", None).await.expect("put");
        }
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let stm = Stm::new(&client(&m).await, iso);
            let accounts = accounts.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..8 {
                    let from = accounts[rng.gen_range(0..accounts.len())].clone();
                    let to = accounts[rng.gen_range(0..accounts.len())].clone();
                    let amount = rng.gen_range(1..20);
                    let (from, to) = (&from, &to);
                    stm.run(move |tx| async move {
                        let a: i64 = tx.get_string(from.as_str()).await?.parse().unwrap_or(0);
                        let b: i64 = tx.get_string(to.as_str()).await?.parse().unwrap_or(0);
                        if from != to {
                            tx.put(from.as_str(), (a - amount).to_string());
                            tx.put(to.as_str(), (b + amount).to_string());
                        }
                        Ok(())
                    })
                    .await
                    .expect("transfer");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(
            sum_under(&c, &format!("bank{i}/")).await,
            500,
            "{iso:?} lost money"
        );
    }
    m.stop().await;
}

/// Two increments of one counter, the second committing between the first's read and its
/// commit: the last writer wins under read-committed (one increment lost), while
/// repeatable reads runs the first again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_loses_an_update_that_repeatable_reads_keeps() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    for (iso, want) in [
        (Isolation::ReadCommitted, "1"),
        (Isolation::RepeatableReads, "2"),
    ] {
        let key = format!("counter/{iso:?}");
        c.put(key.as_str(), "0", None).await.expect("put");
        let stm = Stm::new(&c, iso);
        let attempts = Arc::new(StdMutex::new(0));
        let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        // Taken by the first attempt only.
        let pause = Arc::new(StdMutex::new(Some((read_tx, go_rx))));
        let slow = {
            let (stm, key, attempts) = (stm.clone(), key.clone(), attempts.clone());
            tokio::spawn(async move {
                let key = &key;
                stm.run(|tx| {
                    let (attempts, pause) = (attempts.clone(), pause.clone());
                    async move {
                        *attempts.lock().expect("attempts") += 1;
                        let n: i64 = tx.get_string(key.as_str()).await?.parse().unwrap_or(0);
                        // Let the other writer in between this read and the commit.
                        let first = pause.lock().expect("pause").take();
                        if let Some((read, go)) = first {
                            let _ = read.send(());
                            let _ = go.await;
                        }
                        tx.put(key.as_str(), (n + 1).to_string());
                        Ok(())
                    }
                })
                .await
                .expect("slow increment");
            })
        };
        read_rx.await.expect("read");
        let key_ref = &key;
        stm.run(|tx| async move {
            let n: i64 = tx.get_string(key_ref.as_str()).await?.parse().unwrap_or(0);
            tx.put(key_ref.as_str(), (n + 1).to_string());
            Ok(())
        })
        .await
        .expect("fast increment");
        go_tx.send(()).expect("go");
        slow.await.expect("slow");
        let got = c.get(key.as_str(), None).await.expect("get").kvs[0]
            .value
            .clone();
        assert_eq!(got, want.as_bytes(), "{iso:?}");
        let tries = *attempts.lock().expect("attempts");
        assert_eq!(tries, if want == "2" { 2 } else { 1 }, "{iso:?}");
    }
    m.stop().await;
}

/// A TCP proxy a test can cut (every connection closed, new ones refused) and mend.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<StdMutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(StdMutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (open, conns) = (open.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let conn = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().expect("conns").push(conn);
                }
            }
        });
        Proxy {
            addr,
            open,
            conns,
            accept,
        }
    }

    pub(crate) fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            c.abort();
        }
    }

    pub(crate) fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
