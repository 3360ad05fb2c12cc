//! The fault suite proper: a cluster, every workload at once, the nemesis for the run's
//! length, then healing, convergence and the checks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{
    maintenance_client::MaintenanceClient, HashKvRequest, PutRequest, RangeRequest, StatusRequest,
};
use rand::Rng;

use crate::cluster_harness::{Cluster, ELECTION_MS};
use crate::harness::{channel, kv};
use crate::linearizability::{self, Verdict};
use crate::nemesis::Nemesis;
use crate::{lazy_channel, leases, locks, register, timed, watchers};

/// Leases (the lease workload's and the lock sessions') live this long; pauses outlast it.
const TTL: Duration = Duration::from_secs(3);
/// Search steps the checker may spend on one register's history.
pub(crate) const BUDGET: u64 = 50_000_000;

fn run_seconds() -> u64 {
    std::env::var("CAIRN_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

pub(crate) fn seed() -> u64 {
    std::env::var("CAIRN_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_stay_correct_under_faults() {
    under_faults(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_stay_correct_under_faults() {
    under_faults(5).await;
}

async fn revision(addr: std::net::SocketAddr) -> i64 {
    let r = kv(&channel(addr).await)
        .range(RangeRequest {
            key: b"\0".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("range");
    r.into_inner().header.expect("header").revision
}

async fn under_faults(n: usize) {
    under_faults_with(n, run_seconds(), false).await;
}

/// The suite on `n` members for `secs` seconds of faults. A `soak` runs without SIGKILL, adds
/// a topic, and samples the members' memory and open files to check that they stay flat.
pub(crate) async fn under_faults_with(n: usize, secs: u64, soak: bool) {
    let seed = seed();
    eprintln!("fault suite: {n} members, {secs} s of faults, CAIRN_FAULTS_SEED={seed}");
    // A soak keeps its history bounded, as a production cluster does.
    let extra: &[&str] = if soak {
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=20000",
        ]
    } else {
        &[]
    };
    let mut cluster = Cluster::start(n, extra).await;
    let addrs: Vec<_> = cluster.members.iter().map(|m| m.process.addr).collect();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(cluster.member_id(i).await);
    }
    let from = revision(addrs[0]).await + 1;

    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicI64::new(0));
    let mut watchers: Vec<_> = addrs
        .iter()
        .map(|a| watchers::spawn(*a, from, until.clone(), false))
        .collect();
    watchers.push(watchers::spawn(addrs[0], from, until.clone(), true));
    let registers = register::spawn(&addrs, 2 * n, seed, stop.clone());
    let leases = leases::spawn(&addrs, 2, TTL, seed, stop.clone());
    // A soak's writers overwrite a ring of keys, so the live data stays bounded.
    let appends = spawn_appenders(&addrs, stop.clone(), soak.then_some(2000));
    let mut locks = locks::Locks::start(&addrs, 3, 2, TTL.as_secs()).await;

    let pause = TTL + Duration::from_millis(1500);
    let mut nemesis = Nemesis::new(seed, ids.clone(), Box::new(locks.holders()), pause);
    if soak {
        nemesis = nemesis.without_kills();
    }
    let pids: Vec<u32> = cluster
        .members
        .iter()
        .filter_map(|m| m.process.pid())
        .collect();
    let samples = soak.then(|| crate::soak::sample(pids, stop.clone()));
    let topic = soak.then(|| crate::soak::topic(&addrs, stop.clone()));
    nemesis
        .run(&mut cluster, Instant::now() + Duration::from_secs(secs))
        .await;

    // Healed: the workloads go on a little against a whole cluster, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let histories = registers.await.expect("register clients");
    let lives = leases.await.expect("lease clients");
    let acked = appends.await.expect("appenders");
    let lock_run = locks.stop(&nemesis.log);
    if let Some(samples) = samples {
        crate::soak::flat(&samples.await.expect("sampler"))
            .unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    }
    if let Some(topic) = topic {
        let t = topic.await.expect("topic");
        eprintln!(
            "soak: topic {} published, {} delivered in order, {} resubscriptions",
            t.published, t.delivered, t.resubscribed
        );
        assert!(t.published > 0, "the topic published nothing");
    }

    // Converged: every member at the same revision, with the same hash of it.
    let last = converge(&addrs).await;
    until.store(last, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("watchers reach the last revision")
                .expect("watcher"),
        );
    }

    let mut hashes = Vec::new();
    for a in &addrs {
        let r = MaintenanceClient::new(channel(*a).await)
            .hash_kv(HashKvRequest { revision: last })
            .await
            .expect("HashKV")
            .into_inner();
        hashes.push(r.hash);
    }

    // The checks.
    let mut ops = 0;
    let mut unknown = 0;
    for (key, history) in &histories {
        ops += history.len();
        unknown += history.iter().filter(|o| o.ret == u64::MAX).count();
        let verdict = linearizability::check(history, BUDGET);
        if verdict != Verdict::Linearizable {
            let path = std::env::temp_dir().join(format!("cairn-faults-{seed}.history"));
            let _ = std::fs::write(&path, format!("{key}\n{history:#?}\n"));
            // CI keeps only the output: the operations around the violation and the
            // faults of the run go there too.
            if let Verdict::Violation { call, .. } = verdict {
                eprintln!(
                    "register {key} around the violation (ms on the run clock):\n{}",
                    linearizability::neighbourhood(history, call, 2_000_000_000)
                );
            }
            eprintln!(
                "members by index: {ids:x?}; faults (began, healed ms): {:?}",
                nemesis.schedule()
            );
            panic!(
                "register {key}: {verdict:?} (seed {seed}; history in {})",
                path.display()
            );
        }
    }
    let lost = lost_writes(&addrs, &acked).await;
    assert_eq!(lost, 0, "acknowledged writes lost (seed {seed})");
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "members disagree on the hash at revision {last}: {hashes:?} (seed {seed})"
    );
    watchers::check(&seen, from, last).unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    let election = Duration::from_millis(ELECTION_MS);
    leases::check(&lives, TTL, election, &nemesis.disturbances())
        .unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    let lock = locks::check(&lock_run).unwrap_or_else(|e| panic!("{e} (seed {seed})"));

    // Progress under faults, or the run proved nothing.
    assert!(ops > 100 && acked.len() > 100, "too little work done");
    assert!(
        lock.sections - lock.leaderships > 5 && lock.leaderships > 2,
        "the lock or the election was hardly taken: {lock:?}"
    );
    // Checks that saw nothing to check proved nothing.
    assert!(
        seen.iter().any(|w| !w.progress.is_empty()),
        "no watcher got a progress notification"
    );
    assert!(
        seen.iter().any(|w| w.filtered && !w.events.is_empty()),
        "the filtered watcher saw no delete"
    );

    eprintln!(
        "fault suite result: members={n} seed={seed} secs={secs} faults={:?} \
         registers={} register_ops={ops} indeterminate={unknown} linearizable=all \
         acked_writes={} lost=0 revisions={} watchers={} reconnects={} progress_notifications={} \
         filtered_deletes={} multi_event_revisions={} \
         lock_sections={} leaderships={} stale_writes_caught={} overlaps_caught={} unsafe_overlaps=0 \
         ended_by_lost={} lost_late=0 \
         leases={} leases_late=0 hashes_equal=true",
        nemesis.counts(),
        histories.len(),
        acked.len(),
        last - from + 1,
        seen.len(),
        seen.iter().map(|w| w.reconnects).sum::<usize>(),
        seen.iter().map(|w| w.progress.len()).sum::<usize>(),
        seen.iter()
            .filter(|w| w.filtered)
            .map(|w| w.events.len())
            .sum::<usize>(),
        seen[0]
            .events
            .windows(2)
            .filter(|p| p[0].rev == p[1].rev)
            .count(),
        lock.sections - lock.leaderships,
        lock.leaderships,
        lock.stale_writes,
        lock.overlaps,
        lock.lost,
        lives.len(),
    );
}

/// An acknowledged write of the appenders: key and the number it wrote there.
pub(crate) type Acked = (String, u64);

/// Workload (5): one writer per member puts keys holding the write's number and remembers
/// the acknowledged; with a `ring`, keys are reused modulo it.
pub(crate) fn spawn_appenders(
    addrs: &[std::net::SocketAddr],
    stop: Arc<AtomicBool>,
    ring: Option<u64>,
) -> tokio::task::JoinHandle<Vec<Acked>> {
    let tasks: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut kv = cairn_api::etcdserverpb::kv_client::KvClient::new(lazy_channel(*a));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("ack/{i}/{:08}", ring.map_or(n, |r| n % r));
                    let put = timed(PutRequest {
                        key: key.clone().into(),
                        value: n.to_string().into(),
                        ..Default::default()
                    });
                    if kv.put(put).await.is_ok() {
                        acked.push((key, n));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                acked
            })
        })
        .collect();
    tokio::spawn(async move {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("appender"));
        }
        all
    })
}

/// Waits until every member reports the same revision and applied index, and returns the
/// revision.
pub(crate) async fn converge(addrs: &[std::net::SocketAddr]) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut states = BTreeMap::new();
        for a in addrs {
            let r = MaintenanceClient::new(channel(*a).await)
                .status(StatusRequest {})
                .await;
            if let Ok(s) = r {
                let s = s.into_inner();
                let rev = s.header.map_or(0, |h| h.revision);
                *states.entry((rev, s.raft_applied_index)).or_insert(0) += 1;
            }
        }
        if states.len() == 1 && states.values().sum::<usize>() == addrs.len() {
            return states.keys().next().expect("one state").0;
        }
        assert!(
            Instant::now() < deadline,
            "members never converged: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledged writes some member does not hold: a key must hold the last number
/// acknowledged there, or a later one (a write whose answer was lost may have applied).
pub(crate) async fn lost_writes(addrs: &[std::net::SocketAddr], acked: &[Acked]) -> usize {
    let mut last: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (k, n) in acked {
        let e = last.entry(k.as_str()).or_default();
        *e = (*e).max(*n);
    }
    let mut lost = 0;
    for a in addrs {
        let held = local_keys_paged(*a, "ack/").await;
        lost += last
            .iter()
            .filter(|(k, n)| {
                let have = held
                    .get(k.as_bytes())
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
                have.is_none_or(|h| h < **n)
            })
            .count();
    }
    lost
}

/// Every key under `prefix` a member holds, read locally a page at a time (a long run
/// writes more than one answer may carry).
async fn local_keys_paged(addr: std::net::SocketAddr, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut kv = kv(&channel(addr).await);
    let end = cairn_client::prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut held = BTreeMap::new();
    loop {
        let r = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                serializable: true,
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("serializable range")
            .into_inner();
        let Some(last) = r.kvs.last() else {
            return held;
        };
        from = [last.key.as_slice(), &[0]].concat();
        held.extend(r.kvs.into_iter().map(|kv| (kv.key, kv.value)));
        if !r.more {
            return held;
        }
    }
}
