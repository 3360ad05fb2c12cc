//! Backups and consistency hashes: a backup saved under write load restores into a new
//! three-member cluster with every key and revision; members agree on HashKV after a random
//! workload with compactions, before and after defragmentation; stock etcdctl saves
//! backups, defragments and prints hashes against Cairn.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions, Compare, GetOptions, KeyValue, Op, Txn};
use rand::{Rng, SeedableRng};

use crate::cluster_harness::{member_args, Cluster, CLUSTERS};
use crate::harness::{etcdctl_binary, free_port, wait_ready, Process};

pub(crate) fn cairnctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"))
}

/// Runs a tool; returns (success, stdout, stderr).
pub(crate) fn run(bin: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin).args(args).output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn client(addr: std::net::SocketAddr) -> Client {
    Client::connect([addr.to_string()], ClientOptions::default())
        .await
        .expect("connect")
}

/// The store's current revision, as a read reports it.
async fn revision(c: &Client) -> i64 {
    let got = c.get("x", None).await.expect("get");
    got.header.expect("header").revision
}

/// Every key at revision `rev` (0: the newest).
async fn all_keys(c: &Client, rev: i64) -> Vec<KeyValue> {
    let opts = GetOptions::new().with_from_key().with_revision(rev);
    c.get(vec![0u8], Some(opts)).await.expect("range").kvs
}

/// The member's HashKV at `rev`, waiting until it has applied that far.
async fn hash_at(c: &Client, endpoint: &str, rev: i64) -> (u32, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.hash_kv(endpoint, rev).await {
            Ok(h) => return (h.hash, h.compact_revision),
            Err(e) => assert!(Instant::now() < deadline, "hashkv on {endpoint}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_saved_under_write_load_restores_into_a_new_three_member_cluster() {
    let source = Process::cairn().await;
    let c = client(source.addr).await;
    let lease = c.lease_grant(600, 0).await.expect("lease").id;
    c.put(
        "leased",
        "v",
        Some(cairn_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put");
    // Writers keep going while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load/{w}/{}", i % 50);
                if i % 7 == 6 {
                    c.delete(key, None).await.expect("delete");
                } else {
                    c.put(key, format!("{i}"), None).await.expect("put");
                }
                i += 1;
            }
            i
        }));
    }
    while revision(&c).await < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("backup.db");
    let file_s = file.display().to_string();
    let endpoint = format!("--endpoints={}", source.addr);
    let (ok, out, err) = run(&cairnctl(), &[&endpoint, "snapshot", "save", &file_s]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, format!("Snapshot saved at {file_s}\n"));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let (ok, status, _) = run(&cairnctl(), &["snapshot", "status", &file_s, "-w", "json"]);
    assert!(ok, "{status}");
    let rev: i64 = status
        .split("\"revision\":")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("revision in status");
    assert!(rev >= 300, "backup at revision {rev}");
    let expected = all_keys(&c, rev).await;
    let expected_hash = hash_at(&c, &format!("http://{}", source.addr), rev).await.0;

    // Restore into three new members, then start them as a new cluster.
    let _exclusive = CLUSTERS.clone().lock_owned().await;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("r{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, &(client_port, peer)) in ports.iter().enumerate() {
        let name = format!("r{i}");
        let mut args = member_args(&name, peer, &initial, "new", false);
        args.push("--initial-cluster-token=restored".into());
        let restore = |data: &Path| {
            let (ok, out, err) = run(
                &cairnctl(),
                &[
                    "snapshot",
                    "restore",
                    &file_s,
                    &format!("--data-dir={}", data.display()),
                    &format!("--name={name}"),
                    &format!("--initial-cluster={initial}"),
                    "--initial-cluster-token=restored",
                    &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                ],
            );
            assert!(ok, "restore: {out}{err}");
        };
        members.push(Process::member_with(
            PathBuf::from(env!("CARGO_BIN_EXE_cairn-member")),
            client_port,
            args,
            restore,
        ));
    }
    for m in &members {
        wait_ready(m.addr).await;
    }
    let restored = client(members[2].addr).await;
    let got = all_keys(&restored, 0).await;
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "every key with its revisions and lease");
    let header = restored
        .get("x", None)
        .await
        .expect("get")
        .header
        .expect("h");
    assert_eq!(header.revision, rev);
    let ttl = restored
        .lease_time_to_live(lease, false)
        .await
        .expect("ttl");
    assert!(ttl.ttl > 0, "the lease is restored: {ttl:?}");
    for m in &members {
        let (hash, _) = hash_at(&restored, &format!("http://{}", m.addr), rev).await;
        assert_eq!(
            hash, expected_hash,
            "member {} agrees with the source",
            m.addr
        );
    }
    // A different cluster from the source's, and it takes writes after the restored state.
    assert_ne!(
        header.cluster_id,
        c.get("x", None)
            .await
            .expect("get")
            .header
            .expect("h")
            .cluster_id
    );
    let put = restored.put("after", "restore", None).await.expect("put");
    assert_eq!(put.header.expect("h").revision, rev + 1);

    // A damaged backup is refused, and an existing data dir is never overwritten.
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[40] ^= 0xff;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, bytes).expect("write");
    let target = dir.path().join("never");
    let (ok, _, err) = run(
        &cairnctl(),
        &[
            "snapshot",
            "restore",
            &damaged.display().to_string(),
            &format!("--data-dir={}", target.display()),
        ],
    );
    assert!(!ok && err.contains("Error: expected sha256"), "{err}");
    assert!(!target.exists());
    let (ok, _, err) = run(
        &cairnctl(),
        &[
            "snapshot",
            "restore",
            &file_s,
            &format!("--data-dir={}", members[0].data_dir().display()),
        ],
    );
    assert!(!ok && err.contains("exists"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_agree_on_hashkv_after_a_random_workload_with_compactions() {
    let cluster = Cluster::start(3, &[]).await;
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| format!("http://{}", m.process.addr))
        .collect();
    let c = Client::connect(urls.clone(), ClientOptions::default())
        .await
        .expect("connect");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut compacted = 0;
    let mut last_compacted = 0;
    for i in 0..300 {
        let key = format!("k{}", rng.gen_range(0..40));
        match rng.gen_range(0..10) {
            0..=5 => {
                c.put(key, format!("v{i}"), None).await.expect("put");
            }
            6 | 7 => {
                c.delete(key, None).await.expect("delete");
            }
            8 => {
                let txn = Txn::new()
                    .when([Compare::version(key.clone()).gt(1)])
                    .and_then([Op::put(key.clone(), "big", None)])
                    .or_else([Op::delete(key, None)]);
                c.txn(txn).await.expect("txn");
            }
            _ => {
                let rev = revision(&c).await;
                let target = rev - rng.gen_range(0..5);
                if target > last_compacted {
                    c.compact(target, false).await.expect("compact");
                    last_compacted = target;
                    compacted += 1;
                }
            }
        }
    }
    assert!(compacted > 0);
    // A last write, so every member that reached this revision has applied the compactions.
    c.put("last", "write", None).await.expect("put");
    let rev = revision(&c).await;
    let mut hashes = Vec::new();
    for u in &urls {
        hashes.push(hash_at(&c, u, rev).await);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // Defragmenting changes the files, not the state.
    for u in &urls {
        c.defragment(u).await.expect("defrag");
    }
    for u in &urls {
        assert_eq!(hash_at(&c, u, rev).await, hashes[0], "after defrag on {u}");
    }
    // A revision below the compacted one, or above the newest, is etcd's error.
    let compact_rev = hashes[0].1;
    let err = c
        .hash_kv(&urls[0], compact_rev - 1)
        .await
        .expect_err("compacted");
    assert!(
        matches!(err, cairn_client::Error::Compacted { .. }),
        "{err}"
    );
    let err = c.hash_kv(&urls[0], rev + 1000).await.expect_err("future");
    assert!(matches!(err, cairn_client::Error::FutureRevision), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_etcdctl_saves_backups_defragments_and_hashes_against_cairn() {
    let Some(etcdctl) = etcdctl_binary() else {
        panic!("etcdctl not installed (apt-get install -y etcd-client)");
    };
    let member = Process::cairn().await;
    let c = client(member.addr).await;
    for i in 0..20 {
        c.put(format!("k{i}"), vec![b'x'; 1000], None)
            .await
            .expect("put");
    }
    let rev = revision(&c).await;
    c.compact(rev, true).await.expect("compact");
    let endpoint = format!("--endpoints={}", member.addr);
    let dir = tempfile::tempdir().expect("dir");
    let by_etcdctl = dir.path().join("etcdctl.db").display().to_string();
    let by_cairnctl = dir.path().join("cairnctl.db").display().to_string();
    let (ok, out, err) = run(&etcdctl, &[&endpoint, "snapshot", "save", &by_etcdctl]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, format!("Snapshot saved at {by_etcdctl}\n"));
    let (ok, out, err) = run(&cairnctl(), &[&endpoint, "snapshot", "save", &by_cairnctl]);
    assert!(ok, "{out}{err}");
    // Both files are the same backup, and cairnctl reads etcdctl's.
    let status = |f: &str| run(&cairnctl(), &["snapshot", "status", f]);
    let (ok, from_etcdctl, _) = status(&by_etcdctl);
    assert!(ok);
    assert_eq!(from_etcdctl, status(&by_cairnctl).1);
    assert!(
        from_etcdctl.contains(&format!(", {rev}, ")),
        "{from_etcdctl}"
    );

    let (ok, out, err) = run(&etcdctl, &[&endpoint, "defrag"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!("Finished defragmenting etcd member[{}]\n", member.addr)
    );
    assert_eq!(run(&cairnctl(), &[&endpoint, "defrag"]).1, out);

    let (ok, out, err) = run(&etcdctl, &[&endpoint, "endpoint", "hashkv"]);
    assert!(ok, "{err}");
    let hash = c
        .hash_kv(&format!("http://{}", member.addr), 0)
        .await
        .expect("hashkv")
        .hash;
    assert_eq!(out, format!("{}, {hash}\n", member.addr));
    assert_eq!(run(&cairnctl(), &[&endpoint, "endpoint", "hashkv"]).1, out);
    let (ok, json, _) = run(&etcdctl, &[&endpoint, "endpoint", "hashkv", "-w", "json"]);
    assert!(ok && json.contains(&format!("\"hash\":{hash}")), "{json}");
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_data_dir_stops_the_member_naming_the_file() {
    let mut m = crate::harness::Embedded::start().await;
    let c = client(m.addr).await;
    for i in 0..300 {
        c.put(format!("k{i:03}"), vec![b'v'; 300], None)
            .await
            .expect("put");
    }
    // Moves the keys from the journal into tables.
    c.defragment(&format!("http://{}", m.addr))
        .await
        .expect("defrag");
    let data = m.dir.path().join("data");
    let config = || {
        let mut cfg = cairn_core::Config::new();
        cfg.data_dir = Some(data.clone());
        cfg.listen_client_urls = vec!["http://127.0.0.1:0".into()];
        cfg.listen_peer_urls = vec!["http://127.0.0.1:0".into()];
        cfg
    };
    m.server.take().expect("running").stop().await;
    // An intact directory starts (and is checked) again.
    let again = cairn_core::Server::start(config()).await.expect("restart");
    again.stop().await;

    let table = files(&data.join("member/db/keyspaces"))
        .into_iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("tables")))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a table file");
    let mut bytes = std::fs::read(&table).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&table, &bytes).expect("write");
    let err = match cairn_core::Server::start(config()).await {
        Ok(s) => {
            s.stop().await;
            panic!("a member with a damaged table started");
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&table.display().to_string()) && err.contains("checksum mismatch"),
        "{err}"
    );
}

/// Restores backup `file` with `cairnctl snapshot restore` into a new single-member cluster
/// and starts it.
pub(crate) async fn restore_and_start(file: &Path) -> Process {
    let (client_port, peer) = (free_port(), free_port());
    let initial = format!("solo=http://127.0.0.1:{peer}");
    let args = member_args("solo", peer, &initial, "new", false);
    let file = file.display().to_string();
    let restore = |data: &Path| {
        let (ok, out, err) = run(
            &cairnctl(),
            &[
                "snapshot",
                "restore",
                &file,
                &format!("--data-dir={}", data.display()),
                "--name=solo",
                &format!("--initial-cluster={initial}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            ],
        );
        assert!(ok, "restore: {out}{err}");
    };
    let m = Process::member_with(
        PathBuf::from(env!("CARGO_BIN_EXE_cairn-member")),
        client_port,
        args,
        restore,
    );
    wait_ready(m.addr).await;
    m
}
