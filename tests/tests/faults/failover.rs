//! Leader failover under write load: after a SIGKILL of the leader, writes resume well
//! before any follower's election timeout could fire (the survivors see the leader's port
//! refuse connections and take over at once), and nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster_harness::{wait_holds, Cluster, ELECTION_MS};
use crate::harness::kv;
use cairn_api::etcdserverpb::PutRequest;

/// Leader kills per test. The fast takeover needs the survivors to see a refused
/// connection; should one kill fall back to an ordinary election (a survivor whose
/// campaign loses, then the next in rank, or raft's randomized timeouts), that costs an
/// election timeout or two. So the half-timeout bound is asserted on the median of the
/// kills, and every kill must still resume within four timeouts.
const KILLS: usize = 5;

/// What the writers share: who runs, when to stop, and every acknowledged write with when
/// it was sent and when it was acknowledged.
#[derive(Default)]
struct Load {
    running: Mutex<Vec<bool>>,
    stop: AtomicBool,
    count: AtomicUsize,
    acked: Mutex<Vec<(String, Instant, Instant)>>,
}

async fn leader_failover_under_load(n: usize) {
    let mut cluster = Cluster::start(n, &[]).await;
    let load = Arc::new(Load {
        running: Mutex::new(vec![true; n]),
        ..Default::default()
    });
    // One writer per member, as many clients would be: "writes resume" is when the cluster
    // takes writes again, not when one client's request stuck on the dead leader times out.
    let writers: Vec<_> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| spawn_writer(i, m.process.addr, load.clone()))
        .collect();

    let mut resumed = Vec::new();
    for _ in 0..KILLS {
        // Under load first: the kill lands in the middle of a stream of writes.
        acknowledged(&load, 20).await;
        let leader = cluster.leader().await;
        load.running.lock().expect("lock")[leader] = false;
        let killed_at = Instant::now();
        cluster.members[leader].process.kill9();
        let new_leader = cluster.leader().await;
        assert_ne!(new_leader, leader);
        acknowledged(&load, 50).await;
        // Writes sent before the kill may still be acknowledged after it; the first write
        // sent after the kill shows when the cluster took writes again.
        let first = load
            .acked
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, sent, _)| *sent > killed_at)
            .map(|(_, _, at)| at.duration_since(killed_at))
            .min()
            .expect("writes resumed after the leader was killed");
        eprintln!("{n} members: first write acknowledged {first:?} after SIGKILL of the leader");
        resumed.push(first);
        // The killed member restarts from its data directory and catches up.
        cluster.members[leader].process.restart().await;
        load.running.lock().expect("lock")[leader] = true;
    }
    load.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }

    resumed.sort();
    let timeout = Duration::from_millis(ELECTION_MS);
    // No follower's election timer fires before a full timeout (plus two heartbeats) of
    // silence, so resuming within half of one is the takeover's doing.
    assert!(
        resumed[KILLS / 2] <= timeout / 2,
        "writes resumed after {resumed:?} (median over half an election timeout: {:?})",
        timeout / 2
    );
    assert!(
        resumed[KILLS - 1] <= 4 * timeout,
        "writes resumed after {resumed:?} (one kill over four election timeouts)"
    );

    // Every member holds every acknowledged write.
    let acked: BTreeMap<Vec<u8>, Vec<u8>> = std::mem::take(&mut *load.acked.lock().expect("lock"))
        .into_iter()
        .map(|(k, _, _)| (k.clone().into_bytes(), k.into_bytes()))
        .collect();
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

/// Waits until `more` writes beyond those acknowledged so far are acknowledged.
async fn acknowledged(load: &Load, more: usize) {
    let target = load.count.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.count.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "writes stopped being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes continuously to member `i` while it runs, until told to stop.
fn spawn_writer(
    i: usize,
    addr: std::net::SocketAddr,
    load: Arc<Load>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let channel = crate::lazy_channel(addr);
        let mut n = 0u64;
        while !load.stop.load(Ordering::Relaxed) {
            if !load.running.lock().expect("lock")[i] {
                // The member is down; write again once it is back.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let key = format!("load/{i}/{n:08}");
            let sent = Instant::now();
            let mut req = tonic::Request::new(PutRequest {
                key: key.clone().into(),
                value: key.clone().into(),
                ..Default::default()
            });
            req.set_timeout(Duration::from_millis(1500));
            if kv(&channel).put(req).await.is_ok() {
                load.acked
                    .lock()
                    .expect("lock")
                    .push((key, sent, Instant::now()));
                load.count.fetch_add(1, Ordering::Relaxed);
            } else {
                // "no leader" comes back at once; retry as a client would, without spinning
                // the cores the election needs.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n += 1;
        }
    })
}
