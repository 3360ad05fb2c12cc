//! The HTTP/JSON gateway against etcd 3.4's: the curl examples of etcd's gateway
//! documentation, a streaming watch, lease keep-alive, errors and malformed bodies answer
//! the same (status and JSON) on both; `/health` and `/version`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::Process;

/// One HTTP/1.1 request; the response's status and body (chunked bodies are joined).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body).await
}

/// [`http`] with extra request headers.
pub(crate) async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = exchange(addr, method, path, headers, body).await;
    (status, body)
}

/// One HTTP/1.1 request; the response's status, head (status line and headers) and body.
pub(crate) async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

/// The data of a chunked body.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A streaming request: the first `lines` JSON lines of its response.
async fn stream_lines(addr: SocketAddr, path: &str, body: &str, lines: usize) -> Vec<String> {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(conn);
    let mut out = Vec::new();
    let read = async {
        let mut line = String::new();
        while out.len() < lines {
            line.clear();
            if reader.read_line(&mut line).await.expect("read") == 0 {
                break;
            }
            let l = line.trim();
            // Chunk sizes and the head are not JSON.
            if l.starts_with('{') {
                out.push(l.to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("stream lines in time");
    out
}

/// Blanks ids and terms (they differ between two members) and etcd's server version.
pub(crate) fn normalize(s: &str) -> String {
    let mut s = s.to_string();
    for field in [
        "\"cluster_id\":\"",
        "\"member_id\":\"",
        "\"raft_term\":\"",
        "\"ID\":\"",
    ] {
        let mut from = 0;
        while let Some(i) = s[from..].find(field) {
            let start = from + i + field.len();
            let end = s[start..].find('"').map_or(s.len(), |e| start + e);
            s.replace_range(start..end, "N");
            from = start;
        }
    }
    s
}

/// The documented examples and some errors, in order, as (status, body) each.
async fn session(addr: SocketAddr) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (path, body) in [
        ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
        ("/v3/kv/range", r#"{"key": "Zm9v"}"#),
        ("/v3/kv/range", r#"{"key": "Zm9v", "range_end": "Zm9w"}"#),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
        ),
        (
            "/v3/kv/txn",
            r#"{"compare":[{"version":"2","result":"EQUAL","target":"VERSION","key":"Zm9v"}],"success":[{"requestRange":{"key":"Zm9v"}}]}"#,
        ),
        ("/v3/kv/deleterange", r#"{"key": "Zm9v", "prev_kv": true}"#),
        ("/v3/kv/range", r#"{}"#),
        ("/v3/kv/put", r#"{"key": ""}"#),
        ("/v3/kv/range", r#"{"key": "Zm9v", "revision": "100"}"#),
        ("/v3/lease/revoke", r#"{"ID": "12345"}"#),
        ("/v3/lease/timetolive", r#"{"ID": "12345"}"#),
        ("/v3/kv/compaction", r#"{"revision": "2"}"#),
        ("/v3/kv/compaction", r#"{"revision": "1"}"#),
        ("/v3/cluster/member/remove", r#"{"ID": "1"}"#),
        ("/v3/maintenance/alarm", r#"{}"#),
        ("/v3/maintenance/defragment", r#"{}"#),
        ("/v3/election/leader", r#"{"name": "ZWxlY3Q="}"#),
        (
            "/v3/election/proclaim",
            r#"{"leader": {"name": "ZQ==", "key": "ZS8x", "rev": "5", "lease": "1"}, "value": "dg=="}"#,
        ),
    ] {
        let (status, body) = http(addr, "POST", path, body).await;
        out.push((status, normalize(&body)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_as_etcds_does() {
    let Some(etcd) = Process::etcd().await else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install etcd for the gateway comparison"
        );
        eprintln!("etcd not installed: gateway comparison skipped (apt-get install etcd-server)");
        return;
    };
    let cairn = Process::cairn().await;
    let want = session(etcd.addr).await;
    let got = session(cairn.addr).await;
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());

    // A lease granted over JSON is kept alive over JSON and listed.
    for addr in [etcd.addr, cairn.addr] {
        let (status, granted) = http(addr, "POST", "/v3/lease/grant", r#"{"TTL": "60"}"#).await;
        assert_eq!(status, 200, "{granted}");
        let id = granted
            .split("\"ID\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("lease id")
            .to_string();
        let kept = stream_lines(
            addr,
            "/v3/lease/keepalive",
            &format!(r#"{{"ID": "{id}"}}"#),
            1,
        )
        .await;
        assert!(kept[0].starts_with("{\"result\":{\"header\":"), "{kept:?}");
        assert!(kept[0].contains("\"TTL\":\"60\""), "{kept:?}");
        let (_, leases) = http(addr, "POST", "/v3/lease/leases", "{}").await;
        assert!(leases.contains(&id), "{leases}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_one_json_object_per_event() {
    let cairn = Process::cairn().await;
    let addr = cairn.addr;
    let watch = tokio::spawn(async move {
        stream_lines(
            addr,
            "/v3/watch",
            r#"{"create_request": {"key":"Zm9v"}}"#,
            3,
        )
        .await
    });
    // The watch is created before the writes: wait until it is (a created line is sent
    // first), by writing until the watcher saw two events.
    let mut n = 0;
    while !watch.is_finished() {
        http(
            addr,
            "POST",
            "/v3/kv/put",
            r#"{"key": "Zm9v", "value": "YmFy"}"#,
        )
        .await;
        n += 1;
        assert!(n < 200, "the watch never saw the writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = watch.await.expect("watch");
    assert!(lines[0].contains("\"created\":true"), "{lines:?}");
    assert!(
        lines[1].contains("\"events\":[{\"kv\":{\"key\":\"Zm9v\""),
        "{lines:?}"
    );
    assert!(lines[2].contains("\"value\":\"YmFy\""), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_json_errors_and_health_and_version_answer() {
    let cairn = Process::cairn().await;
    let addr = cairn.addr;
    let (status, body) = http(addr, "POST", "/v3/kv/range", "{bad").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("\"code\":3") && body.contains("\"error\":"),
        "{body}"
    );
    let (status, body) = http(addr, "POST", "/v3/kv/range", r#"{"key": 5}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(addr, "GET", "/v3/kv/range", "").await;
    assert_eq!(status, 405);
    let (status, _) = http(addr, "POST", "/v3/nothing/here", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(
        http(addr, "GET", "/health", "").await,
        (200, r#"{"health":"true"}"#.to_string())
    );
    let (status, version) = http(addr, "GET", "/version", "").await;
    assert_eq!(status, 200);
    assert!(version.contains("\"etcdcluster\":\"3.4.0\""), "{version}");
    // gRPC keeps working on the same port.
    let mut kv = crate::harness::kv(&crate::harness::channel(addr).await);
    kv.put(crate::ops::put("still", "grpc"))
        .await
        .expect("grpc put");
}

/// One sample's value from a scrape (any numeric kind).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => f64::NAN,
        })
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, text) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the text format parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_requests() {
    let cairn = Process::cairn().await;
    let addr = cairn.addr;
    let before = scrape(addr).await;
    assert_eq!(sample(&before, "etcd_server_has_leader", &[]), 1.0);
    let put = [("grpc_method", "Put"), ("grpc_code", "OK")];
    let puts_before = sample(&before, "grpc_server_handled_total", &put);
    let applied_before = sample(&before, "etcd_server_proposals_applied_total", &[]);
    let mut kv = crate::harness::kv(&crate::harness::channel(addr).await);
    for i in 0..3 {
        kv.put(crate::ops::put(&format!("m{i}"), "v"))
            .await
            .expect("put");
    }
    let bad = kv.put(crate::ops::put("", "v")).await;
    assert!(bad.is_err());
    let after = scrape(addr).await;
    assert_eq!(
        sample(&after, "grpc_server_handled_total", &put),
        puts_before + 3.0
    );
    let refused = [("grpc_method", "Put"), ("grpc_code", "InvalidArgument")];
    assert_eq!(sample(&after, "grpc_server_handled_total", &refused), 1.0);
    assert!(sample(&after, "etcd_server_proposals_applied_total", &[]) >= applied_before + 3.0);
    assert!(sample(&after, "etcd_debugging_mvcc_current_revision", &[]) >= 4.0);
    assert!(sample(&after, "etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
    let fsyncs = after
        .samples
        .iter()
        .find(|s| s.metric == "etcd_disk_wal_fsync_duration_seconds")
        .expect("fsync histogram");
    assert!(matches!(
        fsyncs.value,
        prometheus_parse::Value::Histogram(_)
    ));
}

/// The string value of `"field":"..."` in a JSON text.
fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let pat = format!("\"{name}\":\"");
    json.split(&pat)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("{name} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_path_answers() {
    let cairn = Process::cairn().await;
    let addr = cairn.addr;
    let post =
        |path: &'static str, body: String| async move { http(addr, "POST", path, &body).await };
    let (_, granted) = post("/v3/lease/grant", r#"{"TTL": "60"}"#.into()).await;
    let lease = field(&granted, "ID").to_string();
    for (path, body, want) in [
        ("/v3/maintenance/status", "{}".to_string(), 200),
        ("/v3/maintenance/hash", "{}".into(), 200),
        ("/v3/maintenance/alarm", r#"{"action": "GET"}"#.into(), 200),
        ("/v3/maintenance/defragment", "{}".into(), 200),
        ("/v3/cluster/member/list", "{}".into(), 200),
        (
            "/v3/cluster/member/update",
            r#"{"ID": "1", "peerURLs": ["http://127.0.0.1:2"]}"#.into(),
            404,
        ),
        ("/v3/cluster/member/promote", r#"{"ID": "1"}"#.into(), 404),
        (
            "/v3/maintenance/transfer-leadership",
            r#"{"targetID": "1"}"#.into(),
            412,
        ),
        (
            "/v3/kv/lease/timetolive",
            format!(r#"{{"ID": "{lease}"}}"#),
            200,
        ),
        ("/v3/kv/lease/leases", "{}".into(), 200),
    ] {
        let (status, body) = post(path, body).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body.starts_with('{'), "{path}: {body}");
    }
    // Membership: add a learner, then remove it.
    let (status, added) = post(
        "/v3/cluster/member/add",
        r#"{"peerURLs": ["http://127.0.0.1:1"], "isLearner": true}"#.into(),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    let learner = field(added.split("\"member\":").nth(1).expect("member"), "ID").to_string();
    let (status, removed) = post(
        "/v3/cluster/member/remove",
        format!(r#"{{"ID": "{learner}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    // Lock and unlock.
    let (status, locked) = post(
        "/v3/lock/lock",
        format!(r#"{{"name": "bG9jaw==", "lease": "{lease}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{locked}");
    let key = field(&locked, "key").to_string();
    let (status, unlocked) = post("/v3/lock/unlock", format!(r#"{{"key": "{key}"}}"#)).await;
    assert_eq!(status, 200, "{unlocked}");
    // An election: campaign, proclaim, observe, leader, resign.
    let (status, campaign) = post(
        "/v3/election/campaign",
        format!(r#"{{"name": "ZWxlY3Q=", "lease": "{lease}", "value": "djE="}}"#),
    )
    .await;
    assert_eq!(status, 200, "{campaign}");
    let leader = campaign
        .split("\"leader\":")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .map(|s| format!("{s}}}"))
        .expect("leader key");
    let (status, proclaimed) = post(
        "/v3/election/proclaim",
        format!(r#"{{"leader": {leader}, "value": "djI="}}"#),
    )
    .await;
    assert_eq!(status, 200, "{proclaimed}");
    let observed = stream_lines(addr, "/v3/election/observe", r#"{"name": "ZWxlY3Q="}"#, 1).await;
    assert!(observed[0].contains("\"value\":\"djI=\""), "{observed:?}");
    let (status, current) = post("/v3/election/leader", r#"{"name": "ZWxlY3Q="}"#.into()).await;
    assert!(status == 200 && current.contains("djI="), "{current}");
    let (status, resigned) =
        post("/v3/election/resign", format!(r#"{{"leader": {leader}}}"#)).await;
    assert_eq!(status, 200, "{resigned}");
    // A backup streams as base64 blobs.
    let blob = stream_lines(addr, "/v3/maintenance/snapshot", "{}", 1).await;
    assert!(
        blob[0].starts_with("{\"result\":{\"remaining_bytes\"") || blob[0].contains("\"blob\":"),
        "{blob:?}"
    );
    let (status, _) = post("/v3/lease/revoke", format!(r#"{{"ID": "{lease}"}}"#)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_false_when_the_member_loses_its_leader() {
    let mut cluster = crate::cluster_harness::Cluster::start(3, &[]).await;
    let addr = cluster.members[0].process.addr;
    assert_eq!(
        http(addr, "GET", "/health", "").await,
        (200, r#"{"health":"true"}"#.to_string())
    );
    cluster.members[1].process.kill9();
    cluster.members[2].process.kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(addr, "GET", "/health", "").await;
        if status == 503 {
            assert_eq!(body, r#"{"health":"false"}"#);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
