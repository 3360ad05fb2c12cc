//! Leader failover under write load, in a test binary of its own: cargo runs test binaries
//! one after another, so these timing bounds (writes resume within two election timeouts)
//! are measured without the rest of the suite competing for the two cores.

#![allow(dead_code)]

#[path = "../it/harness.rs"]
mod harness;

#[path = "../it/cluster_harness.rs"]
mod cluster_harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::PutRequest;
use cluster_harness::{wait_holds, Cluster, ELECTION_MS};
use harness::kv;

async fn leader_failover_under_load(n: usize) {
    let mut cluster = Cluster::start(n, &[]).await;
    let addrs: Vec<_> = cluster.members.iter().map(|m| m.process.addr).collect();
    let running = Arc::new(Mutex::new(vec![true; n]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writer = spawn_writer(addrs, running.clone(), stop.clone(), count.clone());
    // Under load first: the kill lands in the middle of a stream of writes.
    acknowledged(&count, 20).await;
    let leader = cluster.leader().await;
    running.lock().expect("lock")[leader] = false;
    let killed_at = Instant::now();
    cluster.members[leader].process.kill9();
    // Let the writer run on the new leader for a while.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let before = count.load(Ordering::Relaxed);
    acknowledged(&count, before + 50).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");

    // Writes sent before the kill may still be acknowledged after it; the first write sent
    // after the kill shows when the cluster took writes again.
    let resumed = acked
        .iter()
        .find(|(_, sent, _)| *sent > killed_at)
        .map(|(_, _, at)| at.duration_since(killed_at))
        .expect("writes resumed after the leader was killed");
    eprintln!("{n} members: first write acknowledged {resumed:?} after SIGKILL of the leader");
    assert!(
        resumed <= Duration::from_millis(2 * ELECTION_MS),
        "writes resumed only after {resumed:?} (two election timeouts: {}ms)",
        2 * ELECTION_MS
    );

    // The killed member restarts from its data directory and catches up; every member then
    // holds every acknowledged write.
    cluster.members[leader].process.restart().await;
    let acked: BTreeMap<Vec<u8>, Vec<u8>> = acked
        .into_iter()
        .map(|(k, _, _)| (k.clone().into_bytes(), k.into_bytes()))
        .collect();
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    for i in 0..n {
        wait_holds(&cluster, i, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_fail_over_when_the_leader_is_killed_and_lose_nothing() {
    leader_failover_under_load(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_fail_over_when_the_leader_is_killed_and_lose_nothing() {
    leader_failover_under_load(5).await;
}

/// Writes continuously, round-robin over the running members, until told to stop; records
/// every acknowledged write with when it was sent and when it was acknowledged.
/// Waits until `count` reaches `n` acknowledged writes.
async fn acknowledged(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "writes stopped being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn_writer(
    addrs: Vec<std::net::SocketAddr>,
    running: Arc<Mutex<Vec<bool>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    count: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<(String, Instant, Instant)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut n = 0u64;
        // One lazily (re)connecting channel per member, as a real client keeps.
        let channels: Vec<tonic::transport::Channel> = addrs
            .iter()
            .map(|a| {
                tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy()
            })
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let target = {
                let r = running.lock().expect("lock");
                let alive: Vec<usize> = (0..addrs.len()).filter(|i| r[*i]).collect();
                alive[(n as usize) % alive.len()]
            };
            let key = format!("load/{n:08}");
            let sent = Instant::now();
            let mut req = tonic::Request::new(PutRequest {
                key: key.clone().into(),
                value: key.clone().into(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_millis(1500));
            if kv(&channels[target]).put(req).await.is_ok() {
                acked.push((key, sent, Instant::now()));
                count.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        acked
    })
}
