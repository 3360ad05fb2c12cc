//! Interop with etcd's own Go recipes (clientv3/concurrency, clientv3/naming/endpoints and
//! contrib/recipes of etcd 3.4): Cairn's recipes and Go's, on the same names, exclude,
//! elect, queue, register and transact with each other as two Go processes would. Each scenario runs on Cairn and on the
//! reference etcd, so what is asserted is etcd's behaviour.
//!
//! The Go side (`tests/interop/go-recipes`) is built here, offline, against Debian's
//! `golang-etcd-server-dev` in GOPATH mode; without Go or that source the test is
//! skipped, except under CI, whose `.ci/run` installs both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;

use cairn_client::{Client, ClientOptions};
use cairn_recipes::{
    Barrier, DoubleBarrier, Election, EndpointManager, Error, Isolation, Mutex, PriorityQueue,
    Queue, RwMutex, Session, Stm,
};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::dashboard::until_keys;
use crate::harness::{etcd_binary, reference, Process};
use crate::recipes::keys_under;

/// Where Debian installs Go library sources (etcd's among them).
const GOPATH: &str = "/usr/share/gocode";

/// The Go program, built once per run; `None` where Go or etcd's Go source is missing.
static GO_RECIPES: LazyLock<Option<PathBuf>> = LazyLock::new(build);

fn build() -> Option<PathBuf> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/go-recipes");
    let etcd = PathBuf::from(GOPATH).join("src/go.etcd.io/etcd/clientv3/concurrency");
    if !etcd.is_dir() {
        return None;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-recipes");
    let gopath = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gopath");
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:{GOPATH}", gopath.display()))
        .env("GOCACHE", gopath.join("cache"))
        .env("GOFLAGS", "")
        .status()
        .ok()?;
    assert!(status.success(), "go build of {} failed", source.display());
    Some(out)
}

fn go_recipes() -> Option<PathBuf> {
    let found = GO_RECIPES.clone();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Go and etcd's Go source (apt-get install -y golang-go \
             golang-etcd-server-dev)"
        );
        eprintln!("Go or etcd's Go source not installed: skipped");
    }
    found
}

/// One Go recipe command, running.
struct Go {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Go {
    fn start(program: &Path, endpoint: &str, args: &[&str]) -> Go {
        let mut child = tokio::process::Command::new(program)
            .arg(endpoint)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn go-recipes");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Go {
            child,
            stdin,
            lines,
        }
    }

    /// The next line, which must start with `word`; the rest of it.
    async fn expect(&mut self, word: &str) -> String {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("go-recipes said nothing while we waited for {word:?}"))
            .expect("read go-recipes")
            .unwrap_or_else(|| panic!("go-recipes ended before {word:?}"));
        let rest = line
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("go-recipes said {line:?}, not {word:?}"));
        rest.trim().to_string()
    }

    /// That it says nothing for a while: it is blocked, as it should be.
    async fn still_waiting(&mut self, what: &str) {
        if let Ok(line) =
            tokio::time::timeout(Duration::from_millis(300), self.lines.next_line()).await
        {
            panic!("go-recipes should still be waiting ({what}), but said {line:?}");
        }
    }

    /// Lets a command that holds something go on (it reads a line).
    async fn go_on(&mut self) {
        self.stdin.write_all(b"\n").await.expect("tell go-recipes");
    }

    async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("go-recipes finishes")
            .expect("wait");
        assert!(status.success(), "go-recipes failed: {status}");
    }
}

/// The scenario on Cairn, then on the reference etcd.
async fn on_both<F, Fut>(scenario: F)
where
    F: Fn(PathBuf, Client, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(program) = go_recipes() else { return };
    let cairn = Process::cairn().await;
    run_on(&scenario, &program, &cairn, "Cairn").await;
    if reference(etcd_binary(), "etcd").is_some() {
        let etcd = Process::etcd().await.expect("etcd");
        run_on(&scenario, &program, &etcd, "etcd").await;
    }
}

async fn run_on<F, Fut>(scenario: &F, program: &Path, server: &Process, name: &str)
where
    F: Fn(PathBuf, Client, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    eprintln!("interop on {name}");
    let endpoint = server.addr.to_string();
    let client = Client::connect([endpoint.clone()], ClientOptions::default())
        .await
        .expect("connect");
    scenario(program.to_path_buf(), client, endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutex_excludes_across_go_and_rust() {
    on_both(|go, c, ep| async move {
        let session = Session::new(&c, 10).await.expect("session");
        let mutex = Mutex::new(&session, "interop/lock");
        // Go holds it: Rust cannot take it.
        let mut held = Go::start(&go, &ep, &["lock", "interop/lock"]);
        let go_token: i64 = held.expect("locked").await.parse().expect("revision");
        assert!(matches!(mutex.try_lock().await, Err(Error::Locked)));
        held.go_on().await;
        held.expect("unlocked").await;
        held.finish().await;
        // Rust holds it: Go waits, then takes it with a later revision.
        let guard = mutex.lock().await.expect("lock");
        assert!(guard.fencing_token() > go_token);
        let mut waiting = Go::start(&go, &ep, &["lock", "interop/lock"]);
        until_keys(&c, "interop/lock/", 2).await;
        waiting.still_waiting("the lock is Rust's").await;
        guard.unlock().await.expect("unlock");
        waiting.expect("locked").await;
        waiting.go_on().await;
        waiting.expect("unlocked").await;
        waiting.finish().await;
        assert_eq!(keys_under(&c, "interop/lock/").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_is_shared_by_go_and_rust_candidates() {
    on_both(|go, c, ep| async move {
        let mut observer = Go::start(&go, &ep, &["observe", "interop/election", "2"]);
        let mut leader = Go::start(&go, &ep, &["campaign", "interop/election", "go"]);
        leader.expect("elected").await;
        observer.expect("observed go").await;
        let session = Session::new(&c, 10).await.expect("session");
        let election = Election::new(&session, "interop/election");
        assert_eq!(election.leader().await.expect("leader").value, b"go");
        let mut seen = election.observe();
        let first = seen.next().await.expect("observed").expect("leader");
        assert_eq!(first.value, b"go");
        // Rust's candidate waits behind Go's leader, and is elected when it resigns.
        let campaign = {
            let c = c.clone();
            tokio::spawn(async move {
                let s = Session::new(&c, 10).await.expect("session");
                let e = Election::new(&s, "interop/election");
                let l = e.campaign("rust").await.expect("campaign");
                let rev = l.revision();
                std::mem::forget(l);
                (s, rev)
            })
        };
        until_keys(&c, "interop/election/", 2).await;
        leader.still_waiting("holding leadership").await;
        assert!(!campaign.is_finished(), "elected while Go leads");
        leader.go_on().await;
        leader.expect("resigned").await;
        leader.finish().await;
        let (rust_session, _) = campaign.await.expect("campaign task");
        observer.expect("observed rust").await;
        observer.finish().await;
        let next = seen.next().await.expect("observed").expect("leader");
        assert_eq!(next.value, b"rust");
        let mut asked = Go::start(&go, &ep, &["leader", "interop/election"]);
        assert_eq!(asked.expect("leader").await, "rust");
        asked.finish().await;
        rust_session.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_pass_items_between_go_and_rust_in_order() {
    on_both(|go, c, ep| async move {
        let queue = Queue::new(c.clone(), "interop/queue");
        let g = Go::start(&go, &ep, &["enqueue", "interop/queue", "a", "b", "c"]);
        g.finish().await;
        for item in ["a", "b", "c"] {
            assert_eq!(queue.dequeue().await.expect("dequeue"), item.as_bytes());
        }
        for item in ["x", "y"] {
            queue.enqueue(item).await.expect("enqueue");
        }
        let mut g = Go::start(&go, &ep, &["dequeue", "interop/queue", "2"]);
        assert_eq!(g.expect("item").await, "x");
        assert_eq!(g.expect("item").await, "y");
        g.finish().await;

        // Lower numbers first, FIFO within one priority.
        let pq = PriorityQueue::new(c.clone(), "interop/pq");
        let args = [
            "penqueue",
            "interop/pq",
            "late",
            "9",
            "first",
            "1",
            "second",
            "1",
        ];
        Go::start(&go, &ep, &args).finish().await;
        for item in ["first", "second", "late"] {
            assert_eq!(pq.dequeue().await.expect("dequeue"), item.as_bytes());
        }
        pq.enqueue("low", 7).await.expect("enqueue");
        pq.enqueue("high", 2).await.expect("enqueue");
        let mut g = Go::start(&go, &ep, &["pdequeue", "interop/pq", "2"]);
        assert_eq!(g.expect("item").await, "high");
        assert_eq!(g.expect("item").await, "low");
        g.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_locks_and_barriers_coordinate_go_and_rust() {
    on_both(|go, c, ep| async move {
        let session = Session::new(&c, 10).await.expect("session");
        let rw = RwMutex::new(&session, "interop/rw");
        // A Go reader: Rust may read beside it, not write.
        let mut reader = Go::start(&go, &ep, &["rlock", "interop/rw"]);
        reader.expect("locked").await;
        let read = rw.try_read().await.expect("a second reader");
        assert!(matches!(rw.try_write().await, Err(Error::Locked)));
        read.unlock().await.expect("unlock");
        reader.go_on().await;
        reader.expect("unlocked").await;
        reader.finish().await;
        // A Rust writer: a Go reader waits for it.
        let write = rw.try_write().await.expect("writer");
        let mut reader = Go::start(&go, &ep, &["rlock", "interop/rw"]);
        until_keys(&c, "interop/rw/", 2).await;
        reader.still_waiting("Rust writes").await;
        write.unlock().await.expect("unlock");
        reader.expect("locked").await;
        reader.go_on().await;
        reader.expect("unlocked").await;
        reader.finish().await;

        // A barrier held by Rust holds Go back; one held by Go holds Rust back.
        let barrier = Barrier::new(c.clone(), "interop/barrier");
        assert!(barrier.hold().await.expect("hold"));
        let mut waiter = Go::start(&go, &ep, &["barrier-wait", "interop/barrier"]);
        waiter.expect("waiting").await;
        waiter.still_waiting("the barrier is held").await;
        barrier.release().await.expect("release");
        waiter.expect("passed").await;
        waiter.finish().await;
        Go::start(&go, &ep, &["barrier-hold", "interop/barrier"])
            .finish()
            .await;
        let mut wait = tokio::spawn(async move { barrier.wait().await });
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut wait)
                .await
                .is_err(),
            "passed a barrier Go holds"
        );
        Go::start(&go, &ep, &["barrier-release", "interop/barrier"])
            .finish()
            .await;
        wait.await.expect("task").expect("passed");

        // A double barrier of two: one Go and one Rust participant.
        let mut other = Go::start(&go, &ep, &["double", "interop/double", "2"]);
        other.still_waiting("alone at the barrier").await;
        let double = DoubleBarrier::new(&session, "interop/double", 2);
        double.enter().await.expect("enter");
        other.expect("entered").await;
        other.go_on().await;
        double.leave().await.expect("leave");
        other.expect("left").await;
        other.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm_transfers_from_go_and_rust_conserve_the_sum() {
    const ACCOUNTS: usize = 5;
    on_both(|go, c, ep| async move {
        for (iso, name) in [
            (Isolation::SerializableSnapshot, "serializable-snapshot"),
            (Isolation::Serializable, "serializable"),
            (Isolation::RepeatableReads, "repeatable-reads"),
        ] {
            let prefix = format!("interop/stm/{name}/");
            for a in 0..ACCOUNTS {
                c.put(format!("{prefix}{a}"), "100", None)
                    .await
                    .expect("put");
            }
            let args = ["stm", prefix.as_str(), "5", "150", name];
            let gos: Vec<Go> = (0..2).map(|_| Go::start(&go, &ep, &args)).collect();
            let rust: Vec<_> = (0..2u64)
                .map(|t| {
                    let (c, prefix) = (c.clone(), prefix.clone());
                    tokio::spawn(async move {
                        let stm = Stm::new(&c, iso);
                        for i in 0..150u64 {
                            let from = format!("{prefix}{}", (i * 7 + t) % ACCOUNTS as u64);
                            let to = format!("{prefix}{}", (i * 3 + t + 1) % ACCOUNTS as u64);
                            stm.run(|tx| {
                                let (from, to) = (from.clone(), to.clone());
                                async move {
                                    let a: i64 =
                                        tx.get_string(from.as_str()).await?.parse().unwrap_or(0);
                                    if a == 0 || from == to {
                                        return Ok(());
                                    }
                                    let b: i64 =
                                        tx.get_string(to.as_str()).await?.parse().unwrap_or(0);
                                    tx.put(from.as_str(), (a - 1).to_string());
                                    tx.put(to.as_str(), (b + 1).to_string());
                                    Ok(())
                                }
                            })
                            .await
                            .expect("transfer");
                        }
                    })
                })
                .collect();
            for mut g in gos {
                g.expect("done").await;
                g.finish().await;
            }
            for r in rust {
                r.await.expect("rust transfers");
            }
            let sum = crate::recipes_state::sum_under(&c, &prefix).await;
            assert_eq!(sum, 100 * ACCOUNTS as i64, "{name}: money made or lost");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_rust_services_see_each_other_through_naming_endpoints() {
    on_both(|go, c, ep| async move {
        let target = "interop/services/api";
        let manager = EndpointManager::new(c.clone(), target);
        let session = Session::new(&c, 10).await.expect("session");
        manager
            .add(
                &session,
                "rust-1",
                "10.0.0.1:50051",
                serde_json::Value::Null,
            )
            .await
            .expect("add");
        let mut go_service = Go::start(
            &go,
            &ep,
            &[
                "endpoint-add",
                target,
                "interop/services/api/go-1",
                "10.0.0.2:50051",
            ],
        );
        go_service.expect("added").await;
        // Go's manager lists Rust's endpoint, Rust's lists Go's.
        let mut list = Go::start(&go, &ep, &["endpoint-list", target]);
        assert_eq!(
            list.expect("endpoint").await,
            "interop/services/api/go-1 10.0.0.2:50051"
        );
        assert_eq!(
            list.expect("endpoint").await,
            "interop/services/api/rust-1 10.0.0.1:50051"
        );
        list.expect("end").await;
        list.finish().await;
        let seen: Vec<(String, String)> = manager
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|e| (e.key, e.addr))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "interop/services/api/go-1".to_string(),
                    "10.0.0.2:50051".to_string()
                ),
                (
                    "interop/services/api/rust-1".to_string(),
                    "10.0.0.1:50051".to_string()
                ),
            ]
        );
        // Rust's discovery follows Go's endpoint away when its lease ends.
        let discovery = manager.discovery();
        let channel = discovery.channel().await.expect("discovery");
        assert_eq!(channel.instances().len(), 2);
        go_service.go_on().await;
        go_service.expect("closed").await;
        go_service.finish().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while channel.instances().len() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "Go's endpoint never left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        session.close().await.expect("close");
    })
    .await;
}
