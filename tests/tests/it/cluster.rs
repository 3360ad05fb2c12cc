//! Multi-member clusters of real `cairn` processes: replication, leader failover under write
//! load, restart and catch-up, isolation (fault injection in the peer transport), and a
//! member added after log compaction brought up by snapshot.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{
    cluster_client::ClusterClient, MemberAddRequest, MemberListRequest, PutRequest,
};

use crate::cluster_harness::*;
use crate::harness::{channel, free_port, kv, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_accepts_no_write_serves_no_stale_read_and_converges() {
    let cluster = Cluster::start(3, &[]).await;
    let addr = |i: usize| cluster.members[i].process.addr;
    assert!(put(addr(0), "k", "v1", Duration::from_secs(5)).await);
    let old = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.member_id(i).await);
    }
    // Cut the leader off both ways.
    cluster
        .block(old, others.iter().map(|i| ids[*i]).collect())
        .await;
    for &i in &others {
        cluster.block(i, vec![ids[old]]).await;
    }
    // The majority elects a new leader and takes a write.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !put(addr(others[0]), "k", "v2", Duration::from_secs(1)).await {
        assert!(
            Instant::now() < deadline,
            "the majority never accepted a write"
        );
    }
    // The isolated member takes no write and serves no stale linearizable read.
    assert!(
        !put(addr(old), "k", "v3", Duration::from_secs(3)).await,
        "an isolated member accepted a write"
    );
    match get(addr(old), "k", false, Duration::from_secs(3)).await {
        Ok(v) => panic!("an isolated member answered a linearizable read: {v:?}"),
        Err(e) => eprintln!("isolated member refuses the read: {e}"),
    }
    // Serializable reads are local by definition and may be stale.
    let stale = get(addr(old), "k", true, Duration::from_secs(3)).await;
    assert_eq!(stale.expect("serializable read"), Some(b"v1".to_vec()));

    // Heal: the old leader rejoins, and converges on the majority's history.
    for i in 0..3 {
        cluster.block(i, vec![]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(v)) = get(addr(old), "k", false, Duration::from_secs(2)).await {
            assert_eq!(
                v,
                b"v2".to_vec(),
                "the healed member must not keep a lost write"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the healed member never converged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_log_compaction_is_caught_up_by_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-count=50"]).await;
    let addr0 = cluster.members[0].process.addr;
    let mut acked = BTreeMap::new();
    for i in 0..300 {
        let key = format!("load/{i:04}");
        assert!(put(addr0, &key, &key, Duration::from_secs(5)).await);
        acked.insert(key.clone().into_bytes(), key.into_bytes());
    }
    // A lease with a key: the snapshot carries leases too.
    let mut lease = cairn_api::etcdserverpb::lease_client::LeaseClient::new(channel(addr0).await);
    let lease_id = lease
        .lease_grant(cairn_api::etcdserverpb::LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let mut leased = kv(&channel(addr0).await);
    leased
        .put(PutRequest {
            key: b"load/leased".to_vec(),
            value: b"load/leased".to_vec(),
            lease: lease_id,
            ..Default::default()
        })
        .await
        .expect("leased put");
    acked.insert(b"load/leased".to_vec(), b"load/leased".to_vec());
    for i in 300..360 {
        let key = format!("load/{i:04}");
        assert!(put(addr0, &key, &key, Duration::from_secs(5)).await);
        acked.insert(key.clone().into_bytes(), key.into_bytes());
    }
    let peer = free_port();
    let mut members = ClusterClient::new(channel(addr0).await);
    let added = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![format!("http://127.0.0.1:{peer}")],
            is_learner: false,
        })
        .await
        .expect("member add")
        .into_inner();
    assert_eq!(added.members.len(), 4);
    let new = cluster.join("late", peer);
    wait_ready(cluster.members[new].process.addr).await;
    wait_holds(&cluster, new, &acked).await;
    // It got there by snapshot: the leader's log no longer starts at the beginning.
    let snap_dir = cluster.members[new]
        .process
        .data_dir()
        .join("member")
        .join("snap");
    let snaps: Vec<_> = std::fs::read_dir(&snap_dir)
        .expect("snapshot directory")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "expected one received snapshot");
    let leases = cairn_api::etcdserverpb::lease_client::LeaseClient::new(
        channel(cluster.members[new].process.addr).await,
    )
    .lease_leases(cairn_api::etcdserverpb::LeaseLeasesRequest {})
    .await
    .expect("leases on the new member")
    .into_inner();
    assert_eq!(leases.leases.len(), 1);
    assert_eq!(leases.leases[0].id, lease_id);
    // The new member takes part: its name and client URL are listed once it published.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = members
            .member_list(MemberListRequest::default())
            .await
            .expect("member list")
            .into_inner();
        if list
            .members
            .iter()
            .any(|m| m.name == "late" && !m.client_ur_ls.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new member never listed: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And writes through it reach everyone.
    assert!(
        put(
            cluster.members[new].process.addr,
            "load/late",
            "load/late",
            Duration::from_secs(5)
        )
        .await
    );
    acked.insert(b"load/late".to_vec(), b"load/late".to_vec());
    for i in 0..cluster.members.len() {
        wait_holds(&cluster, i, &acked).await;
    }
}

/// Replaces member/cluster ids (hex) and numbers (ports, raft indexes and terms, versions)
/// with placeholders, and sorts the lines: member order follows ids, which differ between
/// two clusters.
fn normalize_membership(out: &str) -> String {
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            // ETCD_INITIAL_CLUSTER lists members in id order.
            let l = match l.strip_prefix("ETCD_INITIAL_CLUSTER=") {
                Some(list) => {
                    let mut entries: Vec<&str> = list.trim_matches('"').split(',').collect();
                    entries.sort();
                    format!("ETCD_INITIAL_CLUSTER={}", entries.join(","))
                }
                None => l.to_string(),
            };
            let mut o = String::new();
            // Ids are printed padded to 16 columns: runs of separators count as one.
            for word in l
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                let hex = word.len() >= 10 && word.chars().all(|c| c.is_ascii_hexdigit());
                let number = word.starts_with(|c: char| c.is_ascii_digit());
                o.push_str(if hex {
                    "ID"
                } else if number {
                    "N"
                } else {
                    word
                });
                o.push('|');
            }
            o
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

fn ctl(bin: &std::path::Path, endpoints: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .output()
        .expect("run etcdctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn endpoints(c: &Cluster) -> String {
    c.members
        .iter()
        .filter(|m| m.process.is_running())
        .map(|m| m.process.addr.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs etcdctl until it succeeds (etcd refuses reconfiguration with "unhealthy cluster"
/// until its members have been connected for a while; an operator retries too), records
/// its normalized output and returns the raw one.
async fn run(
    outputs: &mut Vec<String>,
    bin: &std::path::Path,
    c: &Cluster,
    args: &[&str],
) -> String {
    run_on(outputs, bin, &endpoints(c), args).await
}

/// [`run`] through chosen endpoints. Retries only etcd's "not now" answers: a retried
/// mutation whose first attempt was applied would answer differently.
async fn run_on(
    outputs: &mut Vec<String>,
    bin: &std::path::Path,
    endpoints: &str,
    args: &[&str],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = ctl(bin, endpoints, args);
        if ok {
            outputs.push(format!(
                "{}\n{}",
                normalize_membership(&args.join(" ")),
                normalize_membership(&out)
            ));
            return out;
        }
        let not_now = [
            "unhealthy cluster",
            "in sync with leader",
            "not supported for learner",
        ]
        .iter()
        .any(|m| out.contains(m));
        assert!(
            not_now && Instant::now() < deadline,
            "etcdctl {args:?} failed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the membership commands of etcdctl against a three-member cluster; returns each
/// command's normalized output.
async fn membership_session(mut cluster: Cluster, bin: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    run(&mut out, bin, &cluster, &["member", "list"]).await;
    let status = run(
        &mut out,
        bin,
        &cluster,
        &["endpoint", "status", "--cluster", "-w", "json"],
    )
    .await;
    assert_eq!(status.matches("\"Endpoint\"").count(), 3, "{status}");
    run(
        &mut out,
        bin,
        &cluster,
        &["endpoint", "health", "--cluster"],
    )
    .await;

    let peer = free_port();
    let peer_url = format!("--peer-urls=http://127.0.0.1:{peer}");
    let added = run(
        &mut out,
        bin,
        &cluster,
        &["member", "add", "m3", &peer_url, "--learner"],
    )
    .await;
    let id = added
        .split_whitespace()
        .nth(1)
        .expect("Member <id> added")
        .to_string();
    let new = cluster.join("m3", peer);
    wait_ready(cluster.members[new].process.addr).await;
    // A learner is promoted once it has caught up with the leader's log.
    run(&mut out, bin, &cluster, &["member", "promote", &id]).await;
    run(&mut out, bin, &cluster, &["member", "list"]).await;
    // The same peer URL again: the member keeps working, the update still goes through raft.
    run(
        &mut out,
        bin,
        &cluster,
        &["member", "update", &id, &peer_url],
    )
    .await;
    run(&mut out, bin, &cluster, &["move-leader", &id]).await;
    assert_eq!(
        cluster.leader().await,
        new,
        "leadership moved to the new member"
    );
    let first = format!("{:x}", cluster.member_id(0).await);
    // Ask the others: the removed member shuts down as it applies its own removal.
    let others = endpoints(&cluster)
        .split(',')
        .skip(1)
        .collect::<Vec<_>>()
        .join(",");
    run_on(&mut out, bin, &others, &["member", "remove", &first]).await;
    assert!(
        cluster.members[0]
            .process
            .exits_within(Duration::from_secs(15))
            .await,
        "a removed member shuts down"
    );
    run(&mut out, bin, &cluster, &["member", "list"]).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_membership_commands_work_as_against_etcd() {
    let Some(etcdctl) = crate::harness::reference(crate::harness::etcdctl_binary(), "etcdctl")
    else {
        return;
    };
    let cairnctl = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"));
    let cairn = membership_session(Cluster::start(3, &[]).await, &etcdctl).await;
    let ours = membership_session(Cluster::start(3, &[]).await, &cairnctl).await;
    for (e, c) in cairn.iter().zip(&ours) {
        assert_eq!(e, c, "cairnctl and etcdctl differ against Cairn");
    }
    let Some(bin) = crate::harness::reference(crate::harness::etcd_binary(), "etcd") else {
        return;
    };
    let etcd = membership_session(Cluster::start_etcd(bin, 3).await, &etcdctl).await;
    for (c, e) in cairn.iter().zip(&etcd) {
        assert_eq!(c, e, "Cairn and etcd differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_lease_keep_alives_work_on_a_follower() {
    use cairn_api::etcdserverpb::{
        lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
        LeaseTimeToLiveRequest, WatchCreateRequest,
    };
    use cairn_api::mvccpb::event::EventType;

    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let f_addr = cluster.members[follower].process.addr;
    let mut lease = LeaseClient::new(channel(f_addr).await);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 2, id: 0 })
        .await
        .expect("grant on a follower")
        .into_inner()
        .id;
    let mut watch = crate::harness::WatchConn::open(f_addr).await;
    watch
        .create(WatchCreateRequest {
            key: b"svc/".to_vec(),
            range_end: b"svc0".to_vec(),
            ..Default::default()
        })
        .await;
    // A write through another member reaches the follower's watcher.
    let put = PutRequest {
        key: b"svc/a".to_vec(),
        value: b"1".to_vec(),
        lease: id,
        ..Default::default()
    };
    kv(&channel(cluster.members[other].process.addr).await)
        .put(put)
        .await
        .expect("put");
    let ev = watch.next().await;
    assert_eq!(ev.events[0].r#type, EventType::Put as i32);

    // Keep-alives sent to the follower (forwarded to the leader) hold the lease past its TTL.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("keep-alive stream")
        .into_inner();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
        let ack = acks.message().await.expect("ack").expect("ack");
        assert_eq!(ack.ttl, 2, "the leader renewed the lease");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("time to live on a follower")
        .into_inner();
    assert!(ttl.ttl > 0 && ttl.ttl <= 2, "remaining {} of 2", ttl.ttl);
    assert_eq!(ttl.keys, vec![b"svc/a".to_vec()]);
    drop(tx);
    // Without keep-alives it expires, and the follower's watcher sees the delete.
    let ev = watch.next().await;
    assert_eq!(ev.events[0].r#type, EventType::Delete as i32);
}
