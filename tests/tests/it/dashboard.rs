//! The dashboard (`/ui/`) in a real headless Chromium: `tests/ui/dashboard.mjs` drives the
//! page with Playwright and, at each `step`, this test makes the change the page must then
//! show, with the recipes and the client as a user's services would. Screenshots of every
//! view land in `target/dashboard-screenshots/`.
//!
//! Needs Node.js, Debian's `chromium` and `npm ci` in `tests/ui` (`.ci/run` installs them);
//! without them the browser test is skipped, except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cairn_client::{Client, ClientOptions, GetOptions, Permission, PutOptions};
use cairn_recipes::{Election, Mutex, Queue, ServiceRegistry, Session, Topic};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::Embedded;
use crate::recipes::client;
use crate::recipes_state::within;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Node, Chromium and the script's packages, or why they are missing.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let ui = workspace().join("tests/ui");
    let node = which("node").ok_or("node is not installed")?;
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| which("chromium"))
        .ok_or("chromium is not installed (apt-get install chromium)")?;
    if !ui.join("node_modules/playwright-core").exists() {
        return Err("playwright-core is not installed (npm ci in tests/ui)".into());
    }
    Ok((node, chromium))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

async fn keys(c: &Client, prefix: &str) -> Vec<cairn_client::KeyValue> {
    c.get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs
}

/// Waits until `prefix` holds `n` keys; returns them in creation order.
pub(crate) async fn until_keys(c: &Client, prefix: &str, n: usize) -> Vec<cairn_client::KeyValue> {
    within(&format!("{n} keys under {prefix}"), async {
        loop {
            let mut kvs = keys(c, prefix).await;
            if kvs.len() == n {
                kvs.sort_by_key(|kv| kv.create_revision);
                return kvs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn lease_of(kv: &cairn_client::KeyValue) -> String {
    format!("{:x}", kv.lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_live_in_a_browser() {
    let (node, chromium) = match browser_tools() {
        Ok(t) => t,
        Err(why) if std::env::var_os("CI").is_some() => panic!("dashboard test: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let m = Embedded::start().await;
    let c = client(&m).await;
    let shots = workspace().join("target/dashboard-screenshots");
    // A screenshot from an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&shots);
    let mut script = tokio::process::Command::new(node)
        .arg(workspace().join("tests/ui/dashboard.mjs"))
        .env("CAIRN_URL", format!("http://{}", m.addr))
        .env("SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut to_script = script.stdin.take().expect("stdin");
    let mut from_script = BufReader::new(script.stdout.take().expect("stdout")).lines();

    // What the steps keep alive until the end.
    let mut sessions = Vec::new();
    let mut tasks = Vec::new();
    let mut leader_session = None;

    let outcome = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let Some(line) = from_script.next_line().await.expect("read") else {
                return "the script ended without a verdict".to_string();
            };
            let Some(step) = line.strip_prefix("step ") else {
                return line;
            };
            let reply = match step {
                "put" => {
                    c.put("app/config", r#"{"rate":10,"burst":20}"#, None)
                        .await
                        .expect("put");
                    String::new()
                }
                "update" => {
                    c.put("app/config", r#"{"rate":25,"burst":20}"#, None)
                        .await
                        .expect("put");
                    String::new()
                }
                "lock" => {
                    let holder = Session::new(&c, 30).await.expect("session");
                    let guard = Mutex::new(&holder, "locks/report")
                        .lock()
                        .await
                        .expect("lock");
                    let token = guard.fencing_token();
                    std::mem::forget(guard);
                    sessions.push(holder);
                    let waiter = c.clone();
                    tasks.push(tokio::spawn(async move {
                        let s = Session::new(&waiter, 30).await.expect("session");
                        let _held = Mutex::new(&s, "locks/report").lock().await;
                        std::future::pending::<()>().await;
                    }));
                    let kvs = until_keys(&c, "locks/report/", 2).await;
                    format!(
                        r#"{{"holder":"{}","waiter":"{}","token":{token}}}"#,
                        lease_of(&kvs[0]),
                        lease_of(&kvs[1])
                    )
                }
                "election" => {
                    let first = Session::new(&c, 30).await.expect("session");
                    let leadership = Election::new(&first, "elections/scheduler")
                        .campaign("node-c")
                        .await
                        .expect("campaign");
                    // The leadership ends with its session, not with this handle.
                    std::mem::forget(leadership);
                    leader_session = Some(first);
                    let next = c.clone();
                    tasks.push(tokio::spawn(async move {
                        let s = Session::new(&next, 30).await.expect("session");
                        let _lead = Election::new(&s, "elections/scheduler")
                            .campaign("node-d")
                            .await;
                        std::future::pending::<()>().await;
                    }));
                    until_keys(&c, "elections/scheduler/", 2).await;
                    String::new()
                }
                "end-session" => {
                    let s: Session = leader_session.take().expect("a leader's session");
                    s.close().await.expect("close the session");
                    String::new()
                }
                "lease" => {
                    let lease = c.lease_grant(5, 0).await.expect("grant").id;
                    c.put(
                        "ephemeral/job-1",
                        "running",
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await
                    .expect("put");
                    format!(r#"{{"id":"{lease:x}"}}"#)
                }
                "services" => {
                    let s = Session::new(&c, 30).await.expect("session");
                    ServiceRegistry::new(c.clone(), "services/")
                        .register(&s, "api", "api-1", "10.0.0.7:8080")
                        .await
                        .expect("register");
                    sessions.push(s);
                    let jobs = Queue::new(c.clone(), "jobs");
                    for i in 0..3 {
                        jobs.enqueue(format!("job {i}")).await.expect("enqueue");
                    }
                    let events = Topic::new(c.clone(), "events");
                    let mut offsets = Vec::new();
                    for i in 0..5 {
                        offsets.push(events.publish(format!("event {i}")).await.expect("publish"));
                    }
                    events
                        .group("billing")
                        .commit(offsets[1])
                        .await
                        .expect("commit");
                    r#"{"lag":3}"#.to_string()
                }
                "auth" => {
                    c.put("public/hello", "world", None).await.expect("put");
                    c.put("secret/plan", "hidden", None).await.expect("put");
                    c.user_add("root", "root-pw", false).await.expect("root");
                    c.user_grant_role("root", "root").await.expect("root role");
                    c.role_add("reader").await.expect("role");
                    c.role_grant_permission("reader", Permission::read_prefix("public/"))
                        .await
                        .expect("grant");
                    c.user_add("alice", "alice-pw", false).await.expect("user");
                    c.user_grant_role("alice", "reader")
                        .await
                        .expect("grant role");
                    c.auth_enable().await.expect("enable");
                    String::new()
                }
                "check-ui-put" => {
                    let root = Client::connect(
                        [m.addr.to_string()],
                        ClientOptions::default().with_user("root", "root-pw"),
                    )
                    .await
                    .expect("root login");
                    let value = within("the page's put", async {
                        loop {
                            if let Some(kv) = keys(&root, "public/from-ui").await.pop() {
                                return String::from_utf8_lossy(&kv.value).into_owned();
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    })
                    .await;
                    format!(r#"{{"value":{}}}"#, serde_json::Value::String(value))
                }
                other => panic!("unknown step {other}"),
            };
            to_script
                .write_all(format!("ok {reply}\n").as_bytes())
                .await
                .expect("answer the script");
        }
    })
    .await
    .unwrap_or_else(|_| "the script took longer than 180 s".to_string());
    // The verdict is in; a browser that does not close is not the page's failure.
    let status = match tokio::time::timeout(Duration::from_secs(15), script.wait()).await {
        Ok(status) => status.expect("node exits").to_string(),
        Err(_) => {
            let _ = script.start_kill();
            "killed".to_string()
        }
    };
    for t in tasks {
        t.abort();
    }
    assert_eq!(
        outcome,
        "pass",
        "dashboard script: {outcome} (exit {status}); screenshots in {}",
        shots.display()
    );
    for view in [
        "cluster",
        "keys",
        "locks",
        "elections",
        "leases",
        "services",
        "activity",
        "login",
        "keys-alice",
    ] {
        assert!(
            shots.join(format!("{view}.png")).exists(),
            "no screenshot of {view}"
        );
    }
    drop(sessions);
    m.stop().await;
}

/// `GET path` on a member: status, head and body.
async fn fetch(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    crate::gateway::exchange(addr, "GET", path, &[], "").await
}

/// The page and its scripts come from the binary with headers that keep other sites out;
/// the member says whether the page may write (never, without auth, unless `--ui-writes`),
/// and `--ui=false` takes the dashboard away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_embedded_read_only_by_default_and_can_be_turned_off() {
    let m = Embedded::start().await;
    let (status, head, body) = fetch(m.addr, "/ui/").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        body.contains(r#"<script type="module" src="/ui/app.js">"#),
        "{body}"
    );
    let head = head.to_ascii_lowercase();
    for h in [
        "content-security-policy: default-src 'self'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "cache-control: no-store",
    ] {
        assert!(head.contains(h), "missing {h} in {head}");
    }
    for script in ["app.js", "model.js", "views.js", "recipes.js"] {
        let (status, head, _) = fetch(m.addr, &format!("/ui/{script}")).await;
        assert_eq!(status, 200, "{script}");
        assert!(head.contains("text/javascript"), "{script}: {head}");
    }
    let (status, head, _) = fetch(m.addr, "/ui").await;
    assert_eq!(status, 301);
    assert!(head.contains("location: /ui/"), "{head}");
    let (_, _, info) = fetch(m.addr, "/ui/api/info").await;
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["authEnabled"], false);
    assert_eq!(
        info["openWrites"], false,
        "writes without --ui-writes: {info}"
    );
    m.stop().await;

    let m = Embedded::start_with(|c| c.ui_writes = true).await;
    let (_, _, info) = fetch(m.addr, "/ui/api/info").await;
    assert!(info.contains(r#""openWrites":true"#), "{info}");
    m.stop().await;

    let m = Embedded::start_with(|c| c.ui = false).await;
    assert_eq!(fetch(m.addr, "/ui/").await.0, 404);
    assert_eq!(fetch(m.addr, "/ui/api/cluster").await.0, 404);
    m.stop().await;
}

/// The cluster view's read asks every member for its own status, and names the one that
/// does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_asks_every_member_and_names_the_one_that_is_down() {
    let mut cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    cluster.wait_published().await;
    let leader = cluster.leader().await;
    let asked = (leader + 1) % 3;
    let down = (leader + 2) % 3;
    let view = |body: String| -> serde_json::Value { serde_json::from_str(&body).expect("json") };
    let (status, _, body) = fetch(cluster.members[asked].process.addr, "/ui/api/cluster").await;
    assert_eq!(status, 200, "{body}");
    let v = view(body);
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{v}");
    let leader_id = format!("{:x}", cluster.member_id(leader).await);
    for m in members {
        let s = &m["status"];
        assert!(m["error"].is_null(), "{m}");
        assert_eq!(
            s["leader"]
                .as_str()
                .map(|l| format!("{:x}", l.parse::<u64>().unwrap())),
            Some(leader_id.clone()),
            "{m}"
        );
        assert!(s["raftTerm"].as_str().is_some_and(|t| t != "0"), "{m}");
    }
    let down_id = format!("{:x}", cluster.member_id(down).await);
    cluster.members[down].process.kill9();
    let (_, _, body) = fetch(cluster.members[asked].process.addr, "/ui/api/cluster").await;
    let v = view(body);
    for m in v["members"].as_array().expect("members") {
        let is_down = m["id"] == down_id.as_str();
        assert_eq!(m["status"].is_null(), is_down, "{m}");
        assert_eq!(m["error"].is_string(), is_down, "{m}");
    }
}
