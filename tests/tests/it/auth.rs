//! Auth: stock etcdctl drives users, roles, permissions and refusals against etcd and Cairn
//! and every line must match; each permission kind over each API path, on one member and
//! on three; restart and backups keep auth; the gateway logs in; certificate identities;
//! the client logs in again when its token stops working.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_client::{
    Client, ClientOptions, Compare, Error, Op, Permission, PermissionType, PutOptions, Txn,
    WatchOptions,
};
use futures::StreamExt;

use crate::cluster_harness::Cluster;
use crate::harness::{etcdctl_binary, reference, Process};

/// etcdctl `args` against `addr` (killed after 20 s: a watch that is not refused would run
/// on), its exit code and output with what differs between servers blanked.
fn ctl(bin: &Path, addr: SocketAddr, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={addr}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl");
    if let Some(input) = stdin {
        let _ = child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let pid = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("etcdctl output");
    drop(killer);
    let text = format!(
        "exit={:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    crate::etcdctl::normalize(&text).replace(&addr.to_string(), "ENDPOINT")
}

/// The users, roles, grants, refusals and management errors of etcd's auth, in the order a
/// newcomer would meet them; `None` as stdin for most.
fn script() -> Vec<(Vec<&'static str>, Option<&'static str>)> {
    let root = "--user=root:rootpw";
    let alice = "--user=alice:apw";
    vec![
        // Before auth: management as anyone.
        (vec!["user", "add", "root:rootpw"], None),
        (vec!["user", "add", "root:other"], None),
        (vec!["user", "add", "alice:apw"], None),
        (vec!["user", "add", "bob:bpw"], None),
        (vec!["user", "add", "nopass", "--no-password"], None),
        (
            vec!["user", "add", "carol", "--interactive=false"],
            Some("cpw\n"),
        ),
        (vec!["user", "get", "root"], None),
        (vec!["user", "get", "nosuch"], None),
        (vec!["user", "list"], None),
        (vec!["user", "list", "-w", "json"], None),
        (vec!["auth", "enable"], None),
        (vec!["role", "add", "r1"], None),
        (vec!["role", "add", "r1"], None),
        (vec!["role", "grant-permission", "r1", "read", "k1"], None),
        (
            vec!["role", "grant-permission", "r1", "readwrite", "b", "d"],
            None,
        ),
        (
            vec!["role", "grant-permission", "r1", "read", "--prefix", "p/"],
            None,
        ),
        (
            vec!["role", "grant-permission", "r1", "write", "--from-key", "y"],
            None,
        ),
        (vec!["role", "grant-permission", "r1", "write", "wo"], None),
        (
            vec!["role", "grant-permission", "r1", "READ", "upper"],
            None,
        ),
        (
            vec!["role", "grant-permission", "nosuch", "read", "x"],
            None,
        ),
        (vec!["role", "get", "r1"], None),
        (vec!["role", "get", "r1", "-w", "json"], None),
        (vec!["role", "get", "nosuch"], None),
        (vec!["role", "list"], None),
        (vec!["role", "revoke-permission", "r1", "upper"], None),
        (vec!["role", "revoke-permission", "r1", "notgranted"], None),
        (vec!["user", "grant-role", "alice", "r1"], None),
        (vec!["user", "grant-role", "alice", "r1"], None),
        (vec!["user", "grant-role", "alice", "nosuch"], None),
        (vec!["user", "grant-role", "nosuch", "r1"], None),
        (vec!["user", "revoke-role", "bob", "r1"], None),
        (vec!["user", "get", "alice"], None),
        (vec!["user", "get", "alice", "--detail"], None),
        // etcdctl gives root its role itself when the server says it lacks it.
        (vec!["auth", "enable"], None),
        (vec!["auth", "enable", root], None),
        // With auth on.
        (vec!["get", "foo"], None),
        (vec!["put", "foo", "bar"], None),
        (vec![root, "put", "k1", "v1"], None),
        (vec![root, "put", "b", "vb"], None),
        (vec![root, "put", "wo", "w0"], None),
        (vec![root, "get", "", "--prefix"], None),
        (vec![alice, "get", "k1"], None),
        (vec![alice, "get", "k1", "--prefix"], None),
        (vec![alice, "get", "b", "d"], None),
        (vec![alice, "get", "bb", "bc"], None),
        (vec![alice, "get", "b", "e"], None),
        (vec![alice, "get", "a", "c"], None),
        (vec![alice, "get", "p/x"], None),
        (vec![alice, "get", "--prefix", "p/"], None),
        (vec![alice, "get", "--prefix", "p"], None),
        (vec![alice, "put", "wo", "v2"], None),
        (vec![alice, "get", "wo"], None),
        (vec![alice, "put", "wo", "v3", "--prev-kv"], None),
        (vec![alice, "put", "b", "v4", "--prev-kv"], None),
        (vec![alice, "put", "k1", "nope"], None),
        (vec![alice, "put", "y1", "z"], None),
        (vec![alice, "put", "x", "no"], None),
        (vec![alice, "get", "y1"], None),
        (vec![alice, "del", "--prev-kv", "wo"], None),
        (vec![alice, "del", "wo"], None),
        (vec![alice, "del", "--prefix", "p/"], None),
        (vec![alice, "del", "--from-key", "y"], None),
        (
            vec![alice, "txn"],
            Some("value(\"k1\") = \"v1\"\n\nput wo txn\n\n\n"),
        ),
        (
            vec![alice, "txn"],
            Some("value(\"wo\") = \"x\"\n\nput b t\n\n\n"),
        ),
        (
            vec![alice, "txn"],
            Some("value(\"k1\") = \"v1\"\n\nput b t\n\nput x t\n\n"),
        ),
        (vec![alice, "txn"], Some("\nget k1\n\nget wo\n\n")),
        (vec![alice, "watch", "wo"], None),
        (vec![alice, "watch", "--prefix", "k1"], None),
        (vec!["watch", "foo"], None),
        (vec![alice, "lock", "mylock", "echo", "locked"], None),
        (vec![alice, "elect", "myelection", "cand"], None),
        (vec![alice, "compaction", "2"], None),
        (vec![alice, "defrag"], None),
        (vec![alice, "endpoint", "hashkv"], None),
        (vec![alice, "alarm", "list"], None),
        (
            vec![
                alice,
                "member",
                "add",
                "m9",
                "--peer-urls=http://127.0.0.1:1",
            ],
            None,
        ),
        (vec![alice, "user", "get", "alice"], None),
        (vec![alice, "user", "get", "bob"], None),
        (vec![alice, "user", "get", "nosuch"], None),
        (vec![alice, "role", "get", "r1"], None),
        (vec![alice, "role", "get", "root"], None),
        (vec![alice, "user", "list"], None),
        (vec![alice, "role", "list"], None),
        (vec![alice, "user", "add", "eve:x"], None),
        (vec![alice, "auth", "disable"], None),
        (vec!["user", "list"], None),
        (vec!["--user=root:wrong", "get", "foo"], None),
        (vec!["--user=nosuch:x", "get", "foo"], None),
        (vec!["--user=nopass:x", "get", "foo"], None),
        (vec!["--user=root", "--password=rootpw", "get", "k1"], None),
        (vec![root, "user", "get", "root", "--detail"], None),
        (vec![root, "user", "delete", "root"], None),
        (vec![root, "role", "delete", "root"], None),
        (vec![root, "user", "revoke-role", "root", "root"], None),
        (vec![root, "user", "delete", "nosuch"], None),
        // A changed password: the old one no longer logs in.
        (
            vec![root, "user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        (vec![alice, "get", "k1"], None),
        (vec!["--user=alice:newpw", "get", "k1"], None),
        (vec![root, "role", "revoke-permission", "r1", "k1"], None),
        (
            vec![root, "role", "revoke-permission", "r1", "b", "d"],
            None,
        ),
        (
            vec![root, "role", "revoke-permission", "r1", "--prefix", "p/"],
            None,
        ),
        (
            vec![root, "role", "revoke-permission", "r1", "--from-key", "y"],
            None,
        ),
        (vec!["--user=alice:newpw", "get", "k1"], None),
        (vec![root, "user", "revoke-role", "alice", "r1"], None),
        (vec![root, "role", "delete", "r1"], None),
        (vec![root, "user", "get", "alice"], None),
        (vec![root, "user", "delete", "bob"], None),
        (vec![root, "user", "list"], None),
        (vec![root, "auth", "disable"], None),
        (vec!["auth", "disable"], None),
        (vec!["get", "k1"], None),
        (vec!["user", "delete", "root"], None),
        (vec!["role", "list"], None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_commands_print_the_same_against_cairn_and_etcd() {
    let Some(bin) = reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let Some(etcd) = reference(Process::etcd().await, "etcd") else {
        return;
    };
    let cairn = Process::cairn().await;
    for (args, stdin) in script() {
        let want = ctl(&bin, etcd.addr, &args, stdin);
        let got = ctl(&bin, cairn.addr, &args, stdin);
        assert_eq!(got, want, "etcdctl {args:?} differs");
    }
}

/// cairnctl runs the same script against one Cairn member as etcdctl against another, and
/// prints the same (but etcdctl's client log lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_auth_commands_print_what_etcdctl_prints() {
    let Some(etcdctl) = reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let cairnctl = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"));
    let (a, b) = (Process::cairn().await, Process::cairn().await);
    let without_logs = |out: String| -> String {
        out.lines()
            .filter(|l| !l.starts_with("{\"level\":"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for (args, stdin) in script() {
        let want = without_logs(ctl(&etcdctl, a.addr, &args, stdin));
        let got = without_logs(ctl(&cairnctl, b.addr, &args, stdin));
        assert_eq!(got, want, "cairnctl {args:?} differs from etcdctl");
    }
}

/// Sets up root, auth on, and `users` each with one role of the given permissions; returns
/// the root client.
async fn with_users(endpoints: &[String], users: &[(&str, Vec<Permission>)]) -> Client {
    let c = Client::connect(endpoints, ClientOptions::default())
        .await
        .expect("connect");
    c.user_add("root", "rootpw", false).await.expect("root");
    c.user_grant_role("root", "root").await.expect("root role");
    for (user, perms) in users {
        let role = format!("{user}-role");
        c.role_add(&role).await.expect("role");
        for p in perms {
            c.role_grant_permission(&role, p.clone())
                .await
                .expect("grant");
        }
        c.user_add(user, "pw", false).await.expect("user");
        c.user_grant_role(user, &role).await.expect("grant role");
    }
    c.auth_enable().await.expect("enable");
    Client::connect(
        endpoints,
        ClientOptions::default().with_user("root", "rootpw"),
    )
    .await
    .expect("root login")
}

async fn login(endpoints: &[String], user: &str) -> Client {
    Client::connect(endpoints, ClientOptions::default().with_user(user, "pw"))
        .await
        .expect("login")
}

fn denied<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e) if e.is_permission_denied() => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

/// A watch that the server refuses answers with its cancel reason as the stream's error.
async fn watch_refused(c: &Client, key: &str, options: Option<WatchOptions>) -> bool {
    let mut w = c.watch(key, options);
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Err(e))) => e.to_string().contains("permission denied"),
        Ok(other) => panic!("watch {key}: {other:?}"),
        Err(_) => false,
    }
}

/// Every permission kind (key, range, prefix, from-key × read, write, readwrite) over every
/// path that reads or writes keys: range, put (with prev_kv and a lease), delete, txn
/// (compares, both branches, nested), watch, lease revoke, lock and election. Each member
/// of `endpoints` serves some of the calls.
async fn permission_kinds_hold_on_every_path(endpoints: Vec<String>) {
    use PermissionType::{Read, Readwrite, Write};
    let each = |i: usize| vec![endpoints[i % endpoints.len()].clone()];
    let root = with_users(
        &endpoints,
        &[
            (
                "reader",
                vec![
                    Permission::key(Read, "k"),
                    Permission::range(Read, "r/a", "r/m"),
                ],
            ),
            ("writer", vec![Permission::prefix(Write, "w/")]),
            (
                "owner",
                vec![
                    Permission::prefix(Readwrite, "app/"),
                    Permission::from_key(Readwrite, "zz"),
                    Permission::prefix(Readwrite, "locks/"),
                    Permission::prefix(Readwrite, "elections/"),
                ],
            ),
        ],
    )
    .await;
    root.put("k", "v", None)
        .await
        .expect("root writes anywhere");
    root.put("r/b", "v", None).await.expect("put");
    root.put("secret", "s", None).await.expect("put");
    let reader = login(&each(0), "reader").await;
    let writer = login(&each(1), "writer").await;
    let owner = login(&each(2), "owner").await;

    // Key and range reads.
    assert_eq!(reader.get("k", None).await.expect("read k").kvs.len(), 1);
    denied(reader.put("k", "x", None).await, "read-only key");
    assert_eq!(
        reader
            .get(
                "r/a",
                Some(cairn_client::GetOptions::new().with_range("r/c"))
            )
            .await
            .expect("subrange")
            .kvs
            .len(),
        1
    );
    denied(
        reader
            .get(
                "r/a",
                Some(cairn_client::GetOptions::new().with_range("r/z")),
            )
            .await,
        "past the range",
    );
    denied(reader.get("secret", None).await, "no permission");
    // Prefix writes: write without read.
    writer.put("w/1", "x", None).await.expect("write w/");
    denied(writer.get("w/1", None).await, "write-only");
    denied(
        writer
            .put("w/1", "y", Some(PutOptions::new().with_prev_kv()))
            .await,
        "prev_kv needs read",
    );
    writer.delete("w/1", None).await.expect("delete w/");
    denied(writer.put("x/1", "x", None).await, "outside the prefix");
    // From-key and prefix read-write.
    owner.put("zzz", "1", None).await.expect("from-key");
    owner.put("app/a", "1", None).await.expect("prefix");
    assert_eq!(
        owner
            .get("app/", Some(cairn_client::GetOptions::new().with_prefix()))
            .await
            .expect("prefix read")
            .kvs
            .len(),
        1
    );
    owner
        .get("zz", Some(cairn_client::GetOptions::new().with_prefix()))
        .await
        .expect("a prefix inside the from-key range");
    denied(owner.get("z", None).await, "before the from-key start");

    // Txns: compares need read, both branches and nested txns are checked.
    let ok = Txn::new()
        .when([Compare::version("app/a").gt(0)])
        .and_then([Op::put("app/b", "2", None)]);
    assert!(owner.txn(ok).await.expect("txn").succeeded);
    denied(
        owner
            .txn(Txn::new().when([Compare::version("secret").gt(0)]))
            .await,
        "compare without read",
    );
    denied(
        owner
            .txn(
                Txn::new()
                    .and_then([Op::put("app/c", "3", None)])
                    .or_else([Op::put("secret", "x", None)]),
            )
            .await,
        "the branch not taken is checked too",
    );
    denied(
        owner
            .txn(
                Txn::new().and_then([Op::txn(Txn::new().and_then([Op::put("secret", "x", None)]))]),
            )
            .await,
        "a nested txn is checked",
    );

    // Watches: refused on what the user cannot read, and a from-key watch needs all of it.
    assert!(watch_refused(&reader, "secret", None).await);
    assert!(watch_refused(&owner, "a", Some(WatchOptions::new().with_from_key())).await);
    let now = owner
        .get("app/a", None)
        .await
        .expect("get")
        .header
        .expect("header")
        .revision;
    let from_now = WatchOptions::new()
        .with_prefix()
        .with_start_revision(now + 1);
    let mut fine = owner.watch("app/", Some(from_now));
    root.put("app/d", "4", None).await.expect("put");
    let batch = tokio::time::timeout(Duration::from_secs(10), fine.next())
        .await
        .expect("event in time")
        .expect("open")
        .expect("events");
    assert_eq!(batch.events[0].kv.as_ref().expect("kv").key, b"app/d");

    // Leases: grant needs nothing; revoking one deletes its keys, so write on each.
    let lease = root.lease_grant(60, 0).await.expect("grant");
    root.put(
        "secret",
        "leased",
        Some(PutOptions::new().with_lease(lease.id)),
    )
    .await
    .expect("attach");
    denied(
        owner.lease_revoke(lease.id).await,
        "revoke a lease with others' keys",
    );
    denied(
        owner
            .put("app/l", "x", Some(PutOptions::new().with_lease(lease.id)))
            .await,
        "attach to a lease with others' keys",
    );
    let own = owner.lease_grant(60, 0).await.expect("anyone grants");
    owner
        .put("app/l", "x", Some(PutOptions::new().with_lease(own.id)))
        .await
        .expect("attach own");
    owner.lease_revoke(own.id).await.expect("revoke own");

    // Lock and election recipes run on the caller's permissions.
    let session = cairn_recipes::Session::new(&owner, 10)
        .await
        .expect("session");
    let guard = cairn_recipes::Mutex::new(&session, "locks/m")
        .lock()
        .await
        .expect("lock under locks/");
    guard.unlock().await.expect("unlock");
    let refused = cairn_recipes::Mutex::new(&session, "other/m")
        .lock()
        .await
        .is_err();
    assert!(refused, "lock outside the user's prefix");
    let election = cairn_recipes::Election::new(&session, "elections/e");
    let leader = election.campaign("me").await.expect("campaign");
    leader.resign().await.expect("resign");
    session.close().await.expect("close");
}

/// The recipes run as a user with read-write on the prefix they are named under, and fail
/// with a permission error elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_run_under_auth_on_their_prefix_and_are_refused_elsewhere() {
    let m = Process::cairn().await;
    let ep = vec![m.addr.to_string()];
    with_users(&ep, &[("svc", vec![Permission::readwrite_prefix("svc/")])]).await;
    let svc = login(&ep, "svc").await;
    let session = cairn_recipes::Session::new(&svc, 10)
        .await
        .expect("session");
    let queue = cairn_recipes::Queue::new(svc.clone(), "svc/jobs");
    queue.enqueue("job-1").await.expect("enqueue");
    assert_eq!(queue.dequeue().await.expect("dequeue"), b"job-1");
    let registry = cairn_recipes::ServiceRegistry::new(svc.clone(), "svc/registry/");
    registry
        .register(&session, "api", "api-1", "10.0.0.1:80")
        .await
        .expect("register");
    assert_eq!(registry.discover("api").await.expect("discover").len(), 1);
    let topic = cairn_recipes::Topic::new(svc.clone(), "svc/events");
    topic.publish("hello").await.expect("publish");
    let refused = cairn_recipes::Queue::new(svc.clone(), "other/jobs")
        .enqueue("x")
        .await
        .expect_err("outside the prefix");
    assert_eq!(refused.to_string(), "etcdserver: permission denied");
    session.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_kinds_hold_on_every_path_on_one_member() {
    let m = Process::cairn().await;
    permission_kinds_hold_on_every_path(vec![m.addr.to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permission_kinds_hold_on_every_path_on_three_members() {
    let cluster = Cluster::start(3, &[]).await;
    let endpoints = cluster.client_endpoints();
    permission_kinds_hold_on_every_path(endpoints).await;
}

/// Users, roles and permissions are replicated and durable: after a SIGKILL and restart,
/// and in a backup restored into a new member, they are all there and enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_a_kill_and_a_backup_restore() {
    let mut m = Process::cairn().await;
    let ep = vec![m.addr.to_string()];
    let root = with_users(&ep, &[("app", vec![Permission::readwrite_prefix("app/")])]).await;
    root.put("app/x", "1", None).await.expect("put");
    m.restart().await;
    let app = login(&ep, "app").await;
    assert_eq!(app.get("app/x", None).await.expect("get").kvs.len(), 1);
    denied(app.put("else", "x", None).await, "after restart");
    // A backup, restored into a member of a new cluster.
    let root = login_as(&ep, "root", "rootpw").await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("backup.db");
    let mut stream = root.snapshot(&root.endpoints()[0]).await.expect("snapshot");
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend(chunk.blob);
    }
    std::fs::write(&file, bytes).expect("write backup");
    let restored = crate::backup::restore_and_start(&file).await;
    let ep2 = vec![restored.addr.to_string()];
    let app = login(&ep2, "app").await;
    assert_eq!(app.get("app/x", None).await.expect("get").kvs.len(), 1);
    denied(app.put("else", "x", None).await, "after restore");
    let anonymous = Client::connect(&ep2, ClientOptions::default())
        .await
        .expect("connect");
    assert!(anonymous.get("app/x", None).await.is_err(), "auth still on");
}

async fn login_as(endpoints: &[String], user: &str, password: &str) -> Client {
    Client::connect(
        endpoints,
        ClientOptions::default().with_user(user, password),
    )
    .await
    .expect("login")
}

/// The client logs in again, transparently, when the server drops its token (here: its
/// user deleted and added back, as an operator rotating a user would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_logs_in_again_when_its_token_is_dropped() {
    let m = Process::cairn().await;
    let ep = vec![m.addr.to_string()];
    let root = with_users(&ep, &[("app", vec![Permission::readwrite_prefix("app/")])]).await;
    let app = login(&ep, "app").await;
    app.put("app/1", "x", None).await.expect("put");
    root.user_delete("app").await.expect("delete");
    root.user_add("app", "pw", false).await.expect("add again");
    root.user_grant_role("app", "app-role")
        .await
        .expect("grant");
    app.put("app/2", "y", None)
        .await
        .expect("put after the token was dropped");
    let now = app
        .get("app/1", None)
        .await
        .expect("get")
        .header
        .expect("header")
        .revision;
    let from_now = WatchOptions::new()
        .with_prefix()
        .with_start_revision(now + 1);
    let mut w = app.watch("app/", Some(from_now));
    root.put("app/w", "z", None).await.expect("put");
    assert_eq!(next_key(&mut w).await, b"app/w", "the watch is established");
    root.user_delete("app").await.expect("delete");
    root.user_add("app", "pw", false).await.expect("add again");
    root.user_grant_role("app", "app-role")
        .await
        .expect("grant");
    root.put("app/3", "z", None).await.expect("put");
    // The watch was made before the drop; it keeps delivering, as etcd's do.
    assert_eq!(next_key(&mut w).await, b"app/3");
}

async fn next_key(w: &mut cairn_client::Watch) -> Vec<u8> {
    let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("events");
    batch.events[0].kv.as_ref().expect("kv").key.clone()
}

/// With JWT tokens, any auth change makes older tokens stale (`revision of auth store is
/// old`); the client logs in again and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jwt_the_client_logs_in_again_after_an_auth_change() {
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).expect("write");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let token = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256",
        public.display(),
        private.display()
    );
    let m = Process::cairn_with(&[&token]).await;
    let ep = vec![m.addr.to_string()];
    let root = with_users(&ep, &[("app", vec![Permission::readwrite_prefix("app/")])]).await;
    let app = login(&ep, "app").await;
    app.put("app/1", "x", None).await.expect("put");
    root.role_add("another").await.expect("an auth change");
    app.put("app/2", "y", None)
        .await
        .expect("put after the change");
    denied(app.put("else", "x", None).await, "still only its prefix");
}

/// The gateway: a login, a token in `Authorization`, refusals without one and with a bad
/// or expired one, answered with the same status and body as etcd's gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_logs_in_and_refuses_as_etcds_does() {
    let Some(etcd) = reference(Process::etcd_with(&["--auth-token-ttl=1"]).await, "etcd") else {
        return;
    };
    let cairn = Process::cairn_with(&["--auth-token-ttl=1"]).await;
    let mut answers = Vec::new();
    for server in [&etcd, &cairn] {
        let http = |path: &'static str, headers: Vec<(&'static str, String)>, body: String| {
            let addr = server.addr;
            async move {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                crate::gateway::http_with(addr, "POST", path, &h, &body).await
            }
        };
        let mut seen = Vec::new();
        let mut record = |what: &str, (status, body): (u16, String)| {
            // Headers name the member; tokens differ: blank them.
            let body = blank_json(&body, &["cluster_id", "member_id", "raft_term", "token"]);
            seen.push(format!("{what}: {status} {body}"));
        };
        for path in [
            "/v3/auth/user/add",
            "/v3/auth/user/grant",
            "/v3/auth/enable",
        ] {
            let body = match path {
                "/v3/auth/user/add" => r#"{"name":"root","password":"rootpw"}"#,
                "/v3/auth/user/grant" => r#"{"user":"root","role":"root"}"#,
                _ => "{}",
            };
            record(path, http(path, vec![], body.into()).await);
        }
        record(
            "no token",
            http(
                "/v3/kv/put",
                vec![],
                r#"{"key":"YQ==","value":"MQ=="}"#.into(),
            )
            .await,
        );
        record(
            "bad token",
            http(
                "/v3/kv/range",
                vec![("Authorization", "bogus".into())],
                r#"{"key":"YQ=="}"#.into(),
            )
            .await,
        );
        record(
            "wrong password",
            http(
                "/v3/auth/authenticate",
                vec![],
                r#"{"name":"root","password":"nope"}"#.into(),
            )
            .await,
        );
        let (status, body) = http(
            "/v3/auth/authenticate",
            vec![],
            r#"{"name":"root","password":"rootpw"}"#.into(),
        )
        .await;
        let token = json_string(&body, "token").expect("a token");
        record("login", (status, body));
        let auth = || vec![("Authorization", token.clone())];
        record(
            "put",
            http(
                "/v3/kv/put",
                auth(),
                r#"{"key":"YQ==","value":"MQ=="}"#.into(),
            )
            .await,
        );
        record(
            "range",
            http("/v3/kv/range", auth(), r#"{"key":"YQ=="}"#.into()).await,
        );
        record(
            "user get",
            http("/v3/auth/user/get", auth(), r#"{"name":"nosuch"}"#.into()).await,
        );
        record(
            "delete root",
            http("/v3/auth/user/delete", auth(), r#"{"name":"root"}"#.into()).await,
        );
        // Unused past its TTL (1 s, swept every second), the token is gone. Expiry is
        // what is tested, so time passing is the condition.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        record(
            "expired",
            http("/v3/kv/range", auth(), r#"{"key":"YQ=="}"#.into()).await,
        );
        answers.push(seen);
    }
    assert_eq!(
        answers[1], answers[0],
        "Cairn's gateway answers differ from etcd's"
    );
}

/// `"name":"value"` or `"name":number` in a JSON text, with the value replaced by `X`.
fn blank_json(body: &str, names: &[&str]) -> String {
    let mut out = body.to_string();
    for name in names {
        let pat = format!("\"{name}\":");
        let mut from = 0;
        while let Some(i) = out[from..].find(&pat) {
            let start = from + i + pat.len();
            let rest = &out[start..];
            let len = if let Some(stripped) = rest.strip_prefix('"') {
                stripped.find('"').map_or(rest.len(), |e| e + 2)
            } else {
                rest.find([',', '}']).unwrap_or(rest.len())
            };
            out.replace_range(start..start + len, "X");
            from = start;
        }
    }
    out
}

fn json_string(body: &str, name: &str) -> Option<String> {
    let pat = format!("\"{name}\":\"");
    let start = body.find(&pat)? + pat.len();
    let len = body[start..].find('"')?;
    Some(body[start..start + len].to_string())
}
