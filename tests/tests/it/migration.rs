//! Moving between etcd and Cairn: a Cairn backup is an etcd 3.4 database that etcdctl checks
//! and restores into a real etcd, and an etcd backup restores into Cairn; either way the new
//! member serves the same keys at every retained revision, the same HashKV, leases, users
//! and roles as the one the backup came from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_client::{Client, ClientOptions, GetOptions, Op, Txn};
use cairn_client::{Permission, PermissionType as Type};

use crate::backup::{cairnctl, run};
use crate::cluster_harness::member_args;
use crate::harness::{etcd_binary, etcdctl_binary, free_port, reference, wait_ready, Process};

async fn connect(addr: std::net::SocketAddr, root: bool) -> Client {
    let opts = if root {
        ClientOptions::default().with_user("root", "rootpw")
    } else {
        ClientOptions::default()
    };
    Client::connect([addr.to_string()], opts)
        .await
        .expect("connect")
}

/// History worth carrying: overwrites, deletions and re-creations, a txn's sub-revisions,
/// a value past a page, leases with and without keys, a compaction with history after it,
/// and users and roles with auth on. Returns the compaction point.
async fn workload(c: &Client) -> i64 {
    for i in 0..40 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    for i in 0..10 {
        c.put(format!("k{i:02}"), format!("again{i}"), None)
            .await
            .expect("put");
    }
    c.delete("k05", None).await.expect("delete");
    c.delete("k1", Some(cairn_client::DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix");
    c.put("k05", "reborn", None).await.expect("put");
    c.txn(Txn::new().and_then([
        Op::put("t1", "a", None),
        Op::put("t2", "b", None),
        Op::delete("k20", None),
    ]))
    .await
    .expect("txn");
    c.put("big", vec![b'x'; 100_000], None).await.expect("put");
    let lease = c.lease_grant(600, 0).await.expect("grant").id;
    c.put(
        "leased",
        "x",
        Some(cairn_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put");
    c.lease_grant(900, 0).await.expect("grant");
    let compact = c
        .get("x", None)
        .await
        .expect("get")
        .header
        .expect("header")
        .revision
        - 3;
    c.compact(compact, true).await.expect("compact");
    for i in 30..35 {
        c.put(format!("k{i:02}"), "after", None).await.expect("put");
    }
    c.delete("t1", None).await.expect("delete");

    c.user_add("root", "rootpw", false).await.expect("root");
    c.role_add("root").await.expect("root role");
    c.user_grant_role("root", "root").await.expect("grant");
    c.role_add("reader").await.expect("role");
    c.role_grant_permission("reader", Permission::range(Type::Read, "k", "l"))
        .await
        .expect("permission");
    c.user_add("alice", "alicepw", false).await.expect("alice");
    c.user_grant_role("alice", "reader").await.expect("grant");
    c.auth_enable().await.expect("auth enable");
    compact
}

/// What a member serves, compared between the original and the restored one.
#[derive(Debug, PartialEq)]
struct Served {
    revision: i64,
    compact_revision: i64,
    /// Every key at each revision from the compaction point on.
    ranges: Vec<Vec<cairn_client::KeyValue>>,
    /// HashKV at each revision after the compaction point.
    hashes: Vec<u32>,
    /// Lease IDs with their granted TTLs and keys.
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    users: Vec<(String, Vec<String>)>,
    roles: Vec<String>,
    auth_enabled: bool,
}

async fn served(addr: std::net::SocketAddr, compact: i64) -> Served {
    let c = &connect(addr, true).await;
    let endpoint = format!("http://{addr}");
    let revision = c
        .get("x", None)
        .await
        .expect("get")
        .header
        .expect("header")
        .revision;
    let mut ranges = Vec::new();
    for rev in compact..=revision {
        let opts = GetOptions::new().with_from_key().with_revision(rev);
        ranges.push(c.get(vec![0u8], Some(opts)).await.expect("range").kvs);
    }
    let mut hashes = Vec::new();
    let mut compact_revision = 0;
    for rev in compact + 1..=revision {
        let h = c.hash_kv(&endpoint, rev).await.expect("hashkv");
        compact_revision = h.compact_revision;
        hashes.push(h.hash);
    }
    let mut leases = Vec::new();
    for l in c.leases().await.expect("leases").leases {
        let ttl = c.lease_time_to_live(l.id, true).await.expect("ttl");
        leases.push((l.id, ttl.granted_ttl, ttl.keys));
    }
    leases.sort();
    let mut users = Vec::new();
    for u in c.user_list().await.expect("users").users {
        let roles = c.user_get(&u).await.expect("user").roles;
        users.push((u, roles));
    }
    let roles = c.role_list().await.expect("roles").roles;
    Served {
        revision,
        compact_revision,
        ranges,
        hashes,
        leases,
        users,
        roles,
        // etcd 3.4 has no AuthStatus: a request without a user says.
        auth_enabled: connect(addr, false).await.get("k00", None).await.is_err(),
    }
}

/// Saves a backup of `member` with stock etcdctl; returns the file (in `dir`).
fn save(etcdctl: &Path, member: &Process, dir: &Path) -> PathBuf {
    let file = dir.join("backup.db");
    let (ok, out, err) = run(
        etcdctl,
        &[
            &format!("--endpoints={}", member.addr),
            "--user=root:rootpw",
            "snapshot",
            "save",
            &file.display().to_string(),
        ],
    );
    assert!(ok, "snapshot save: {out}{err}");
    file
}

/// `snapshot status -w json` by a tool.
fn status(tool: &Path, file: &Path) -> String {
    let (ok, out, err) = run(
        tool,
        &[
            "snapshot",
            "status",
            &file.display().to_string(),
            "-w",
            "json",
        ],
    );
    assert!(ok, "snapshot status: {out}{err}");
    out.trim().to_string()
}

/// Restores `file` with `tool` (etcdctl or cairnctl, same flags) and starts `server` on it.
async fn restore_and_start(tool: &Path, server: PathBuf, file: &Path, etcd: bool) -> Process {
    let (port, peer) = (free_port(), free_port());
    let initial = format!("solo=http://127.0.0.1:{peer}");
    let args = member_args("solo", peer, &initial, "new", etcd);
    let m = Process::member_with(server, port, args, |data| {
        let (ok, out, err) = run(
            tool,
            &[
                "snapshot",
                "restore",
                &file.display().to_string(),
                &format!("--data-dir={}", data.display()),
                "--name=solo",
                &format!("--initial-cluster={initial}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            ],
        );
        assert!(ok, "restore: {out}{err}");
    });
    wait_ready(m.addr).await;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cairn_backup_restores_into_etcd_which_serves_the_same_data() {
    let (Some(etcdctl), Some(etcd)) = (
        reference(etcdctl_binary(), "etcdctl"),
        reference(etcd_binary(), "etcd"),
    ) else {
        return;
    };
    let cairn = Process::cairn().await;
    let compact = workload(&connect(cairn.addr, false).await).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = save(&etcdctl, &cairn, dir.path());
    // etcdctl checks the database (bbolt's own consistency check) and agrees with cairnctl.
    let by_etcdctl = status(&etcdctl, &file);
    assert_eq!(by_etcdctl, status(&cairnctl(), &file));
    let want = served(cairn.addr, compact).await;
    assert!(
        by_etcdctl.contains(&format!("\"revision\":{}", want.revision)),
        "{by_etcdctl}"
    );

    let restored = restore_and_start(&etcdctl, etcd, &file, true).await;
    let c = connect(restored.addr, true).await;
    let got = served(restored.addr, compact).await;
    assert_eq!(got, want);
    // History below the compaction point is gone there too, and alice's rights came along.
    let below = GetOptions::new().with_revision(compact - 1);
    assert!(c.get("k00", Some(below)).await.is_err());
    let alice = Client::connect(
        [restored.addr.to_string()],
        ClientOptions::default().with_user("alice", "alicepw"),
    )
    .await
    .expect("alice logs in with her password");
    assert!(alice.get("k00", None).await.is_ok());
    assert!(alice.put("k00", "no", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_backup_restores_into_cairn_which_serves_the_same_data() {
    let (Some(etcdctl), Some(etcd)) = (
        reference(etcdctl_binary(), "etcdctl"),
        reference(Process::etcd().await, "etcd"),
    ) else {
        return;
    };
    let compact = workload(&connect(etcd.addr, false).await).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = save(&etcdctl, &etcd, dir.path());
    assert_eq!(status(&cairnctl(), &file), status(&etcdctl, &file));
    let want = served(etcd.addr, compact).await;

    let member = PathBuf::from(env!("CARGO_BIN_EXE_cairn-member"));
    let restored = restore_and_start(&cairnctl(), member, &file, false).await;
    let c = connect(restored.addr, true).await;
    let got = served(restored.addr, compact).await;
    assert_eq!(got, want);
    // etcd's bcrypt hashes check out in Cairn.
    let alice = Client::connect(
        [restored.addr.to_string()],
        ClientOptions::default().with_user("alice", "alicepw"),
    )
    .await
    .expect("alice logs in with her password");
    assert!(alice.put("k00", "no", None).await.is_err());
    // The restored member takes writes from where etcd was.
    let put = c.put("new", "v", None).await.expect("put");
    assert_eq!(put.header.expect("header").revision, want.revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_copied_from_an_etcd_data_dir_restores_with_skip_hash_check() {
    let (Some(etcdctl), Some(etcd)) = (
        reference(etcdctl_binary(), "etcdctl"),
        reference(Process::etcd().await, "etcd"),
    ) else {
        return;
    };
    let c = connect(etcd.addr, false).await;
    for i in 0..20 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let want = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("range")
        .kvs;
    let db = etcd.data_dir().join("member/snap/db");
    let dir = tempfile::tempdir().expect("dir");
    let copy = dir.path().join("db");
    // etcd commits its backend every 100 ms: wait until the copy holds the last put.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        std::fs::copy(&db, &copy).expect("copy db");
        if status(&cairnctl(), &copy).contains("\"revision\":21") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "etcd never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(etcd);
    let copy_arg = copy.display().to_string();
    for tool in [&etcdctl, &cairnctl()] {
        let target = dir.path().join("refused");
        let (ok, _, err) = run(
            tool,
            &[
                "snapshot",
                "restore",
                &copy_arg,
                &format!("--data-dir={}", target.display()),
            ],
        );
        assert!(!ok);
        assert!(
            err.contains("Error: snapshot missing hash but --skip-hash-check=false"),
            "{err}"
        );
    }
    let (port, peer) = (free_port(), free_port());
    let initial = format!("solo=http://127.0.0.1:{peer}");
    let args = member_args("solo", peer, &initial, "new", false);
    let member = PathBuf::from(env!("CARGO_BIN_EXE_cairn-member"));
    let restored = Process::member_with(member, port, args, |data| {
        let (ok, out, err) = run(
            &cairnctl(),
            &[
                "snapshot",
                "restore",
                &copy_arg,
                "--skip-hash-check",
                &format!("--data-dir={}", data.display()),
                "--name=solo",
                &format!("--initial-cluster={initial}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            ],
        );
        assert!(ok, "restore: {out}{err}");
    });
    wait_ready(restored.addr).await;
    let c = connect(restored.addr, false).await;
    let got = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("range")
        .kvs;
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_as_etcdctl_refuses_them() {
    let Some(etcdctl) = reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let cairn = Process::cairn().await;
    let c = connect(cairn.addr, false).await;
    c.put("k", "v", None).await.expect("put");
    c.user_add("root", "rootpw", false).await.expect("root");
    c.user_grant_role("root", "root").await.ok();
    let dir = tempfile::tempdir().expect("dir");
    let file = save(&etcdctl, &cairn, dir.path());
    let bytes = std::fs::read(&file).expect("read");
    let file_arg = |p: &Path| p.display().to_string();

    // Not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 40_000]).expect("write");
    for tool in [&etcdctl, &cairnctl()] {
        let (ok, _, err) = run(tool, &["snapshot", "status", &file_arg(&junk)]);
        assert!(!ok && err.contains("Error: invalid database"), "{err}");
    }
    // A flipped byte in the data: the digest no longer matches.
    let mut flipped = bytes.clone();
    flipped[5000] ^= 1;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &flipped).expect("write");
    for tool in [&etcdctl, &cairnctl()] {
        let target = dir.path().join("out");
        let (ok, _, err) = run(
            tool,
            &[
                "snapshot",
                "restore",
                &file_arg(&damaged),
                &format!("--data-dir={}", target.display()),
            ],
        );
        assert!(!ok && err.contains("Error: expected sha256"), "{err}");
    }
    // A page pointing at a page that does not exist: the consistency check says so.
    let mut broken = bytes.clone();
    let meta_root = u64::from_le_bytes(broken[32..40].try_into().expect("8 bytes"));
    let root_page = meta_root as usize * 4096;
    // The first bucket's value in the root leaf: point it past the end.
    let pos = u32::from_le_bytes(
        broken[root_page + 20..root_page + 24]
            .try_into()
            .expect("4"),
    );
    let ksize = u32::from_le_bytes(
        broken[root_page + 24..root_page + 28]
            .try_into()
            .expect("4"),
    );
    let value = root_page + 16 + pos as usize + ksize as usize;
    broken[value..value + 8].copy_from_slice(&9999u64.to_le_bytes());
    let broken_file = dir.path().join("broken.db");
    std::fs::write(&broken_file, &broken[..broken.len() - 32]).expect("write");
    let (ok, _, err) = run(
        &cairnctl(),
        &["snapshot", "status", &file_arg(&broken_file)],
    );
    assert!(
        !ok && err.contains("snapshot file integrity check failed"),
        "{err}"
    );
    let (ok, _, err) = run(&etcdctl, &["snapshot", "status", &file_arg(&broken_file)]);
    assert!(!ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_in_cairns_first_format_still_restores() {
    use cairn_client::backup::cairn::{encode_record, padding, MAGIC, SPACE_KV, SPACE_META};
    use prost::Message;
    let record = |key: &str, main: i64, version: i64| {
        let kv = cairn_api::mvccpb::KeyValue {
            key: key.into(),
            create_revision: main - version + 1,
            mod_revision: main,
            version,
            value: format!("v{main}").into(),
            lease: 0,
        };
        let mut rev = (main as u64).to_be_bytes().to_vec();
        rev.extend_from_slice(&0u64.to_be_bytes());
        (rev, kv.encode_to_vec())
    };
    let mut body = MAGIC.to_vec();
    encode_record(&mut body, SPACE_META, b"current_rev", &4i64.to_be_bytes());
    for (key, main, version) in [("a", 2, 1), ("b", 3, 1), ("a", 4, 2)] {
        let (k, v) = record(key, main, version);
        encode_record(&mut body, SPACE_KV, &k, &v);
    }
    let pad = padding(body.len());
    body.extend_from_slice(&pad);
    let digest = ring_digest(&body);
    body.extend_from_slice(&digest);
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("old.db");
    std::fs::write(&file, &body).expect("write");
    let (ok, out, _) = run(
        &cairnctl(),
        &[
            "snapshot",
            "status",
            &file.display().to_string(),
            "-w",
            "json",
        ],
    );
    assert!(ok && out.contains("\"revision\":4"), "{out}");

    let member = PathBuf::from(env!("CARGO_BIN_EXE_cairn-member"));
    let restored = restore_and_start(&cairnctl(), member, &file, false).await;
    let c = connect(restored.addr, false).await;
    let a = c.get("a", None).await.expect("get");
    assert_eq!(a.kvs[0].value, b"v4");
    assert_eq!(a.kvs[0].version, 2);
    let old = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("get");
    assert_eq!(old.kvs[0].value, b"v2");
}

fn ring_digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Background processes a document started (`… &`), killed when it is done.
struct Background(Vec<std::process::Child>);

impl Drop for Background {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_guide_runs_as_written() {
    use crate::console::{blocks, fits, learn_lease_ids, steps};
    let (Some(etcdctl), Some(etcd)) = (
        reference(etcdctl_binary(), "etcdctl"),
        reference(etcd_binary(), "etcd"),
    ) else {
        return;
    };
    let bin = tempfile::tempdir().expect("dir");
    for (name, target) in [
        ("cairn", PathBuf::from(env!("CARGO_BIN_EXE_cairn-member"))),
        ("cairnctl", cairnctl()),
        ("etcd", etcd),
        ("etcdctl", etcdctl),
    ] {
        std::os::unix::fs::symlink(target, bin.path().join(name)).expect("link");
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The guide's ports → free ones.
    let mut names: Vec<(String, String)> = [
        "2379", "2380", "3379", "3380", "4379", "4380", "5379", "5380",
    ]
    .iter()
    .map(|p| (format!(":{p}"), format!(":{}", free_port())))
    .collect();
    let rename = |s: &str, names: &[(String, String)]| {
        names
            .iter()
            .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
    };
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/migration.md"))
            .expect("docs/migration.md");
    let work = tempfile::tempdir().expect("dir");
    let mut background = Background(Vec::new());
    let shell = |command: &str| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(command)
            .current_dir(work.path())
            .env("PATH", &path)
            .env("ETCDCTL_API", "3");
        c
    };
    for block in blocks(&guide, "```console") {
        for step in steps(&block) {
            let command = rename(&step.command, &names);
            if let Some(command) = command.strip_suffix(" &") {
                let child = shell(&format!("exec {command}"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn");
                background.0.push(child);
                // A server: wait until it serves.
                if let Some(port) = command
                    .split("--listen-client-urls http://127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    wait_ready(([127, 0, 0, 1], port).into()).await;
                }
                continue;
            }
            // A read may wait for a mirror to catch up; nothing else is retried.
            let deadline = std::time::Instant::now()
                + if command.contains(" get ") {
                    Duration::from_secs(20)
                } else {
                    Duration::ZERO
                };
            loop {
                let out = tokio::task::spawn_blocking({
                    let mut c = shell(&format!("{command} 2>&1"));
                    move || c.output().expect("bash")
                })
                .await
                .expect("command");
                let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.starts_with("{\"level\":"))
                    .map(str::to_string)
                    .collect();
                learn_lease_ids(&step.expected, &printed, &mut names);
                let expected: Vec<String> =
                    step.expected.iter().map(|l| rename(l, &names)).collect();
                let ok = expected.len() == printed.len()
                    && expected.iter().zip(&printed).all(|(w, g)| fits(w, g));
                if ok {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "docs/migration.md: `{}` printed\n{}\nbut the guide shows\n{}",
                    step.command,
                    printed.join("\n"),
                    expected.join("\n")
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
