//! What a newcomer meets first: the member's start-up errors (each found before the data
//! directory is touched), its logs, and cairnctl's answers to empty keys, bad flags, down
//! members and a TLS mismatch, each as etcdctl gives them or clearer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{etcdctl_binary, free_port, reference, Process};

fn cairn() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn-member"))
}

fn cairnctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"))
}

/// Runs a member with `args` that must not start; its exit code and log.
fn refused(args: &[String]) -> (Option<i32>, String) {
    let out = Command::new(cairn())
        .args(args)
        .env_remove("CAIRN_LOG_LEVEL")
        .output()
        .expect("run cairn");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn urls(client: u16, peer: u16) -> Vec<String> {
    vec![
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_ups_say_what_is_wrong_before_touching_the_data_dir() {
    let dir = tempfile::tempdir().expect("dir");
    let data = |name: &str| dir.path().join(name);
    let with = |data_dir: &Path, extra: Vec<String>| {
        let mut args = vec![format!("--data-dir={}", data_dir.display())];
        args.extend(extra);
        args
    };
    // A regular file where the data directory should be.
    let file = data("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let (code, log) = refused(&with(&file, urls(free_port(), free_port())));
    assert_eq!(code, Some(1));
    assert!(log.contains("is a file, not a directory"), "{log}");

    // A port another process holds.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (code, log) = refused(&with(&data("busy"), urls(port, free_port())));
    assert_eq!(code, Some(1));
    assert!(
        log.contains("cannot listen on http://127.0.0.1:") && log.contains("in use"),
        "{log}"
    );
    assert!(
        !data("busy").exists(),
        "the data dir was created before the ports bound"
    );

    // A URL without a scheme.
    let mut args = urls(free_port(), free_port());
    args[0] = format!("--listen-client-urls=127.0.0.1:{}", free_port());
    let (_, log) = refused(&with(&data("scheme"), args));
    assert!(log.contains("expected scheme://host:port"), "{log}");
    assert!(!data("scheme").exists());

    // A new member that --initial-cluster does not list.
    let peer = free_port();
    let mut args = urls(free_port(), peer);
    args.push(format!("--initial-cluster=other=http://127.0.0.1:{peer}"));
    let (_, log) = refused(&with(&data("cluster"), args));
    assert!(
        log.contains("--initial-cluster has no member named \"default\""),
        "{log}"
    );
    assert!(!data("cluster").exists());

    // A second member on a data directory in use.
    let first = Process::cairn().await;
    let (code, log) = refused(&with(&first.data_dir(), urls(free_port(), free_port())));
    assert_eq!(code, Some(1));
    assert!(
        log.contains("is in use by another cairn process (pid "),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_no_colour_codes_engine_chatter_or_build_paths_and_name_members_in_hex() {
    let dir = tempfile::tempdir().expect("dir");
    let (client, peer) = (free_port(), free_port());
    let run = |format: &str| {
        let mut child = Command::new(cairn())
            .args(urls(client, peer))
            .arg(format!("--data-dir={}", dir.path().join(format).display()))
            .arg(format!("--log-format={format}"))
            .arg("--log-level=info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut out = Vec::new();
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let done = l.contains("published member attributes");
                out.push(l);
                if done {
                    break;
                }
            }
            out
        });
        let lines = lines.join().expect("log lines");
        let _ = child.kill();
        let _ = child.wait();
        lines.join("\n")
    };
    let text = run("text");
    assert!(!text.contains('\u{1b}'), "colour codes on a pipe:\n{text}");
    assert!(!text.contains("Finished ingestion writer"), "{text}");
    assert!(!text.contains("switched to configuration"), "{text}");
    let member = text
        .lines()
        .find_map(|l| l.split("member_id=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .expect("the start line names the member")
        .to_string();
    assert!(
        text.contains(&format!("raft_id={member}")),
        "raft lines name the member in hex too:\n{text}"
    );
    let json = run("json");
    assert!(
        !json.contains(".cargo/registry") && !json.contains("log.file"),
        "{json}"
    );
    assert!(json.lines().all(|l| l.starts_with('{')), "{json}");
}

fn ctl(bin: &Path, endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run")
}

/// Exit code and output lines but etcdctl's client log lines.
fn shown(out: &Output) -> (Option<i32>, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .collect();
    (out.status.code(), lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_answers_empty_keys_bad_flags_and_down_members_as_etcdctl() {
    let Some(etcdctl) = reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let (a, b) = (Process::cairn().await, Process::cairn().await);
    let (ea, eb) = (a.addr.to_string(), b.addr.to_string());
    for (bin, ep) in [(&etcdctl, &ea), (&cairnctl(), &eb)] {
        for (k, v) in [("a", "1"), ("b/c", "2"), ("z", "3")] {
            assert!(ctl(bin, ep, &["put", k, v]).status.success());
        }
    }
    // Every command that takes a key, with the empty key and a prefix or from-key range.
    let script: &[&[&str]] = &[
        &["get", "", "--prefix"],
        &["get", "", "--from-key", "--keys-only"],
        &["get", "", "--prefix", "--count-only"],
        &["del", "", "--prefix", "--prev-kv"],
        &["get", "--bogus", "a"],
        &["bogus-command"],
    ];
    for args in script {
        if args.contains(&"--count-only") {
            // Cairn's own flag: etcdctl has none; cairnctl counts every key.
            let (code, text) = shown(&ctl(&cairnctl(), &eb, args));
            assert_eq!((code, text.as_str()), (Some(0), "3"));
            continue;
        }
        let want = shown(&ctl(&etcdctl, &ea, args));
        let got = shown(&ctl(&cairnctl(), &eb, args));
        if args.contains(&"--bogus") || args.contains(&"bogus-command") {
            // Both refuse with exit 1 and name the flag or command (help texts differ).
            assert_eq!(got.0, want.0, "{args:?}: exit code");
            let first = |t: &str| {
                t.lines()
                    .find(|l| l.starts_with("Error:"))
                    .map(str::to_string)
            };
            if args.contains(&"--bogus") {
                assert_eq!(first(&got.1), first(&want.1), "{args:?}");
            }
            continue;
        }
        assert_eq!(got, want, "{args:?}");
    }
    // version
    let (code, text) = shown(&ctl(&cairnctl(), &eb, &["version"]));
    assert_eq!(code, Some(0));
    assert!(
        text.starts_with("cairnctl version: ") && text.ends_with("API version: 3.4"),
        "{text}"
    );
    // A member that is down: etcdctl's words, no doubled transport error.
    let down = format!("127.0.0.1:{}", free_port());
    let want = shown(&ctl(
        &etcdctl,
        &down,
        &["endpoint", "health", "--dial-timeout=1s"],
    ));
    let got = shown(&ctl(
        &cairnctl(),
        &down,
        &["endpoint", "health", "--dial-timeout=1s"],
    ));
    assert_eq!(got, want);
    let (code, text) = shown(&ctl(&cairnctl(), &down, &["get", "a"]));
    assert_eq!(code, Some(1));
    let once = "Connection refused (os error 111)";
    assert_eq!(text.matches(once).count(), 1, "{text}");
    assert!(!text.contains("transport error: transport error"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_member_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let (client, peer) = (free_port(), free_port());
    let _m = Process::cairn_member(
        client,
        vec![
            format!("--listen-client-urls=https://127.0.0.1:{client}"),
            format!("--advertise-client-urls=https://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--cert-file={}", cert_file.display()),
            format!("--key-file={}", key_file.display()),
        ],
    );
    // Wait for the listener, then talk plain HTTP/2 to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "member never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Twice (each run asks 8 times): the GOAWAY once raced the client's first request.
    for _ in 0..2 {
        let (code, text) = shown(&ctl(
            &cairnctl(),
            &format!("http://127.0.0.1:{client}"),
            &["get", "a", "--dial-timeout=2s"],
        ));
        assert_eq!(code, Some(1));
        assert!(text.contains("does the member serve TLS?"), "{text}");
    }
    // curl without https gets what Go's servers, so etcd's, answer.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", client)).expect("connect");
    std::io::Write::write_all(&mut tcp, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut tcp, &mut answer).expect("answer");
    assert_eq!(
        answer,
        "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    );
}
