//! Details etcd's clients rely on, each compared with a real etcd: alarms under member 0
//! (stored, listed, enforced, disarmed), a gateway stream that fails before its first
//! message answers with the error's HTTP status, malformed JSON and unknown enum names get
//! etcd's error texts, membership responses carry no revision; and `/livez` and `/readyz`
//! as etcd 3.5 serves them (3.4.23 has neither).

use std::time::{Duration, Instant};

use crate::cluster_harness::Cluster;
use crate::gateway::{http_with, normalize};
use crate::harness::{etcd_binary, etcdctl_binary, reference, Process};

async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    let (status, body) = http_with(addr, "POST", path, &[], body).await;
    (status, normalize(&body))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_with(addr, "GET", path, &[], "").await
}

/// Runs the same requests on both; every answer must match.
async fn same_answers(
    cairn: std::net::SocketAddr,
    etcd: std::net::SocketAddr,
    calls: &[(&str, &str)],
) {
    for (path, body) in calls {
        let want = post(etcd, path, body).await;
        let got = post(cairn, path, body).await;
        assert_eq!(got, want, "POST {path} {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_under_member_zero_are_kept_enforced_and_disarmed_as_by_etcd() {
    let Some(etcd) = reference(Process::etcd().await, "etcd") else {
        return;
    };
    let cairn = Process::cairn().await;
    let alarm = "/v3/maintenance/alarm";
    same_answers(
        cairn.addr,
        etcd.addr,
        &[
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            // NOSPACE under member 0: stored as given and listed, by type too.
            (alarm, r#"{"action":"ACTIVATE","alarm":"NOSPACE"}"#),
            (alarm, r#"{"action":"ACTIVATE","alarm":"NOSPACE"}"#),
            (alarm, r#"{}"#),
            (alarm, r#"{"action":"GET","alarm":"NOSPACE"}"#),
            (alarm, r#"{"action":"GET","alarm":"CORRUPT"}"#),
            // Enforced: what adds data is refused, what frees space or reads is not.
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            (
                "/v3/kv/txn",
                r#"{"success":[{"request_put":{"key":"YQ==","value":"YQ=="}}]}"#,
            ),
            ("/v3/lease/grant", r#"{"TTL":60}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
            (
                "/v3/kv/txn",
                r#"{"success":[{"request_delete_range":{"key":"eA=="}}]}"#,
            ),
            ("/v3/kv/compaction", r#"{"revision":1}"#),
            // Disarmed under member 0, and writes go again.
            (alarm, r#"{"action":"DEACTIVATE","alarm":"NOSPACE"}"#),
            (alarm, r#"{"action":"DEACTIVATE","alarm":"NOSPACE"}"#),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            // A member that is not in the cluster: the same.
            (
                alarm,
                r#"{"action":"ACTIVATE","memberID":"12345","alarm":"NOSPACE"}"#,
            ),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            (
                alarm,
                r#"{"action":"DEACTIVATE","memberID":"12345","alarm":"NOSPACE"}"#,
            ),
            // CORRUPT refuses every change, not reads.
            (alarm, r#"{"action":"ACTIVATE","alarm":"CORRUPT"}"#),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
            ("/v3/kv/deleterange", r#"{"key":"Zm9v"}"#),
            ("/v3/kv/compaction", r#"{"revision":1}"#),
            ("/v3/lease/revoke", r#"{"ID":"5"}"#),
            ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
            (
                "/v3/kv/txn",
                r#"{"success":[{"request_range":{"key":"Zm9v"}}]}"#,
            ),
            (alarm, r#"{"action":"DEACTIVATE","alarm":"CORRUPT"}"#),
            ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        ],
    )
    .await;
    // etcdctl lists and disarms an alarm of member 0 alike on both.
    if let Some(etcdctl) = reference(etcdctl_binary(), "etcdctl") {
        for m in [&cairn, &etcd] {
            post(m.addr, alarm, r#"{"action":"ACTIVATE","alarm":"NOSPACE"}"#).await;
            // Status lists it in etcd's text form.
            let (_, status) = post(m.addr, "/v3/maintenance/status", "{}").await;
            assert!(
                status.contains(r#""errors":["alarm:NOSPACE "]"#),
                "{status}"
            );
        }
        for args in [
            &["alarm", "list"][..],
            &["alarm", "disarm"],
            &["alarm", "list"],
        ] {
            let out = |m: &Process| {
                let out = std::process::Command::new(&etcdctl)
                    .arg(format!("--endpoints={}", m.addr))
                    .args(args)
                    .output()
                    .expect("etcdctl");
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            };
            assert_eq!(out(&cairn), out(&etcd), "etcdctl {args:?}");
        }
    }
    // Raising NONE is a no-op (etcd 3.4 crashes on it under member 0; 3.5 ignores it).
    assert_eq!(
        post(cairn.addr, alarm, r#"{"action":"ACTIVATE","alarm":"NONE"}"#).await,
        (200, "{}".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_unknown_enum_names_get_etcds_errors() {
    let Some(etcd) = reference(Process::etcd().await, "etcd") else {
        return;
    };
    let cairn = Process::cairn().await;
    let range = "/v3/kv/range";
    same_answers(
        cairn.addr,
        etcd.addr,
        &[
            (range, r#"{"key":"#),
            (range, r#"{"key":"Zm9v","sort_order":"FOO"}"#),
            (range, r#"{"sort_target":"BAR"}"#),
            (range, r#"{"key":"Zm9v","sort_order":"descend"}"#),
            // Unknown fields are ignored (a newer client's), as is what follows the body.
            (range, r#"{"foo":1}"#),
            (range, r#"{"key":"Zm9v","linearizable":true}"#),
            (range, r#"{"key":"Zm9v"} trailing"#),
            (range, "null"),
            (range, ""),
            (
                "/v3/kv/txn",
                r#"{"compare":[{"result":"NOPE","target":"VALUE","key":"Zm9v"}]}"#,
            ),
            (
                "/v3/kv/txn",
                r#"{"compare":[{"result":"EQUAL","target":"NOPE","key":"Zm9v"}]}"#,
            ),
            ("/v3/maintenance/alarm", r#"{"action":"BOGUS"}"#),
            ("/v3/maintenance/alarm", r#"{"alarm":"BOGUS"}"#),
            (
                "/v3/auth/role/grant",
                r#"{"name":"r","perm":{"permType":"ALL","key":"YQ=="}}"#,
            ),
            // A stream's body that does not decode fails it as UNKNOWN, HTTP 500.
            (
                "/v3/watch",
                r#"{"create_request":{"key":"Zm9v","filters":["NOPE"]}}"#,
            ),
            ("/v3/lease/keepalive", r#"{"ID":"#),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_answers_carry_no_revision_as_etcds() {
    let Some(etcd) = reference(Process::etcd().await, "etcd") else {
        return;
    };
    let cairn = Process::cairn().await;
    for m in [&cairn, &etcd] {
        let c = cairn_client::Client::connect([m.addr.to_string()], Default::default())
            .await
            .expect("connect");
        c.put("k", "v", None).await.expect("put");
        let list = c.member_list().await.expect("member list");
        let header = list.header.expect("header");
        assert_eq!(header.revision, 0, "{}", m.addr);
        assert_ne!(header.raft_term, 0);
        let (status, body) = post(m.addr, "/v3/cluster/member/list", "{}").await;
        assert_eq!(status, 200);
        assert!(
            !body.contains("revision") && body.contains("raft_term"),
            "{body}"
        );
    }
}

/// Polls until `addr` reports no leader.
async fn wait_leaderless(cluster: &Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status(i).await.is_none_or(|s| s.leader != 0) {
        assert!(Instant::now() < deadline, "member {i} still has a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_message_answers_with_the_errors_status() {
    let Some(bin) = reference(etcd_binary(), "etcd") else {
        return;
    };
    // A member that lost its leader: etcd fails the keep-alive after its request timeout.
    let body = r#"{"ID":5}"#;
    let want = {
        let mut cluster = Cluster::start_etcd(bin, 2).await;
        cluster.members[1].process.kill9();
        wait_leaderless(&cluster, 0).await;
        post(cluster.members[0].process.addr, "/v3/lease/keepalive", body).await
    };
    assert_eq!(want.0, 503, "{}", want.1);
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.members[1].process.kill9();
    cluster.members[2].process.kill9();
    wait_leaderless(&cluster, 0).await;
    let got = post(cluster.members[0].process.addr, "/v3/lease/keepalive", body).await;
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_and_readyz_answer_as_etcd_3_5_does() {
    let cairn = Process::cairn().await;
    let text = |s: &str| s.to_string();
    assert_eq!(get(cairn.addr, "/livez").await, (200, text("ok\n")));
    assert_eq!(get(cairn.addr, "/readyz").await, (200, text("ok\n")));
    assert_eq!(
        get(cairn.addr, "/livez?verbose").await,
        (200, text("[+]serializable_read ok\nok\n"))
    );
    assert_eq!(
        get(cairn.addr, "/readyz?verbose&exclude=non_learner").await,
        (
            200,
            text("[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n")
        )
    );
    assert_eq!(
        get(cairn.addr, "/readyz/linearizable_read?verbose").await,
        (200, text("[+]linearizable_read ok\nok\n"))
    );
    assert_eq!(
        http_with(cairn.addr, "POST", "/readyz", &[], "").await.0,
        405
    );
    // A CORRUPT alarm: not ready (every check listed, a blank line last), still live.
    post(
        cairn.addr,
        "/v3/maintenance/alarm",
        r#"{"action":"ACTIVATE","alarm":"CORRUPT"}"#,
    )
    .await;
    assert_eq!(
        get(cairn.addr, "/readyz").await,
        (
            503,
            text(
                "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n\
                 [+]linearizable_read ok\n[+]non_learner ok\n\n"
            )
        )
    );
    assert_eq!(get(cairn.addr, "/livez").await, (200, text("ok\n")));
    assert_eq!(
        get(cairn.addr, "/readyz?exclude=data_corruption").await,
        (200, text("ok\n"))
    );
    drop(cairn);

    // Without a leader: live, not ready.
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.members[1].process.kill9();
    cluster.members[2].process.kill9();
    wait_leaderless(&cluster, 0).await;
    let addr = cluster.members[0].process.addr;
    assert_eq!(get(addr, "/livez").await, (200, text("ok\n")));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("\n[-]linearizable_read failed: etcdserver: ") && body.ends_with("\n\n"),
        "{body}"
    );
}
