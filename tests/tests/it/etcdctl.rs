//! Stock etcdctl against etcd and against Cairn: the same commands print the same output.

use std::path::Path;
use std::process::Command;

use crate::harness::{etcdctl_binary, Process};

/// Removes `"name":"value",` from a JSON log line (timestamps and client ids differ per run).
fn drop_string_field(line: &mut String, name: &str) {
    let pat = format!("\"{name}\":\"");
    if let Some(start) = line.find(&pat) {
        let value = start + pat.len();
        if let Some(len) = line[value..].find("\",") {
            line.replace_range(start..value + len + 2, "");
        }
    }
}

/// Blanks what legitimately differs between two servers and two runs: ids, raft term, log
/// timestamps and client ids.
pub(crate) fn normalize(out: &str) -> String {
    let mut s: String = out
        .lines()
        .map(|l| {
            let mut l = l.to_string();
            drop_string_field(&mut l, "ts");
            drop_string_field(&mut l, "target");
            l + "\n"
        })
        .collect();
    let fields = [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"ClusterID\" : ",
        "\"MemberID\" : ",
        "\"RaftTerm\" : ",
    ];
    for field in fields {
        let mut from = 0;
        while let Some(i) = s[from..].find(field) {
            let start = from + i + field.len();
            let end = s[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(s.len(), |e| start + e);
            s.replace_range(start..end, "N");
            from = start;
        }
    }
    s
}

fn etcdctl(
    bin: &Path,
    endpoint: std::net::SocketAddr,
    args: &[&str],
    stdin: Option<&str>,
) -> String {
    use std::io::Write;
    let mut cmd = Command::new(bin);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run etcdctl");
    if let Some(input) = stdin {
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("etcdctl output");
    normalize(&format!(
        "exit={:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test]
async fn etcdctl_prints_the_same_against_cairn_and_etcd() {
    let (Some(bin), Some(etcd)) = (etcdctl_binary(), Process::etcd().await) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install etcd and etcdctl"
        );
        eprintln!("etcd/etcdctl not installed: etcdctl comparison skipped");
        return;
    };
    let cairn = Process::cairn().await;
    let script: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["put", "foo", "bar"], None),
        (vec!["put", "foo", "baz", "--prev-kv"], None),
        (vec!["put", "foo/1", "one"], None),
        (vec!["put", "foo/2", "two"], None),
        (vec!["put", "zoo", "z"], None),
        (vec!["get", "foo"], None),
        (vec!["get", "foo", "-w", "json"], None),
        (vec!["get", "foo", "--prefix"], None),
        (
            vec!["get", "foo", "--prefix", "--limit=2", "-w", "json"],
            None,
        ),
        (vec!["get", "foo", "--from-key", "--keys-only"], None),
        (
            vec!["get", "foo", "--prefix", "--count-only", "-w", "json"],
            None,
        ),
        (vec!["get", "foo", "--prefix", "--print-value-only"], None),
        (
            vec![
                "get",
                "foo",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
            ],
            None,
        ),
        (
            vec![
                "get",
                "foo",
                "--prefix",
                "--sort-by=VALUE",
                "--order=ASCEND",
                "-w",
                "fields",
            ],
            None,
        ),
        (vec!["get", "foo", "--rev=2"], None),
        (vec!["get", "foo", "--rev=99"], None),
        (vec!["get", "a", "z"], None),
        (vec!["get", "", "--prefix", "--consistency=s"], None),
        (vec!["put", "", "x"], None),
        (vec!["del", "foo/1", "--prev-kv"], None),
        (vec!["del", "nothing"], None),
        (vec!["del", "foo", "--prefix", "-w", "json"], None),
        (
            vec!["txn"],
            Some("mod(\"zoo\") = \"6\"\n\nput zoo won\nget zoo\n\nput zoo lost\n\n"),
        ),
        (
            vec!["txn"],
            Some("value(\"zoo\") = \"nope\"\n\nput zoo won\n\nget zoo\nput other x\n\n"),
        ),
        (
            vec!["txn", "-w", "json"],
            Some("version(\"zoo\") > \"0\"\n\ndel zoo\n\n\n"),
        ),
        (vec!["compaction", "3"], None),
        (vec!["get", "foo", "--rev=2"], None),
        (vec!["compaction", "3"], None),
        (vec!["compaction", "100"], None),
        (vec!["put", "after", "compaction", "-w", "json"], None),
        (vec!["get", "", "--from-key", "-w", "json"], None),
    ];
    for (args, stdin) in script {
        let want = etcdctl(&bin, etcd.addr, &args, stdin);
        let got = etcdctl(&bin, cairn.addr, &args, stdin);
        assert_eq!(got, want, "etcdctl {args:?} differs");
    }
}

/// Runs `etcdctl watch …` and returns its lines: `lines` of them, or with `None`, all it
/// prints until it has been quiet for two seconds (used on the reference server only, to
/// learn how many lines to expect).
fn etcdctl_watch(
    bin: &Path,
    endpoint: std::net::SocketAddr,
    args: &[&str],
    lines: Option<usize>,
) -> Vec<String> {
    use std::io::BufRead;
    use std::time::Duration;
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("watch")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run etcdctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait = if lines.is_some() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    };
    let mut out = Vec::new();
    while lines.is_none_or(|n| out.len() < n) {
        match rx.recv_timeout(wait) {
            Ok(line) => out.push(normalize(&line).trim_end_matches('\n').to_string()),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}

#[tokio::test]
async fn etcdctl_lease_and_watch_print_the_same_against_cairn_and_etcd() {
    let (Some(bin), Some(etcd)) = (etcdctl_binary(), Process::etcd().await) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install etcd and etcdctl"
        );
        eprintln!("etcd/etcdctl not installed: etcdctl comparison skipped");
        return;
    };
    let cairn = Process::cairn().await;
    let mut outputs = Vec::new();
    for addr in [etcd.addr, cairn.addr] {
        let granted = etcdctl(&bin, addr, &["lease", "grant", "100"], None);
        // "exit=Some(0)\nlease 694d7c9d4f3a2e0b granted with TTL(100s)": ids differ per server.
        let id = granted
            .split_whitespace()
            .nth(2)
            .expect("lease id")
            .to_string();
        let dec = i64::from_str_radix(&id, 16)
            .expect("hex lease id")
            .to_string();
        let run = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.replace("{L}", &id)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            etcdctl(&bin, addr, &args, None)
                .replace(&id, "ID")
                .replace(&dec, "ID")
        };
        let mut out = vec![granted.replace(&id, "ID")];
        for args in [
            &["put", "svc/a", "1", "--lease={L}"][..],
            &["put", "svc/b", "2"],
            &["put", "svc/b", "3", "--prev-kv"],
            &["lease", "timetolive", "{L}", "--keys"],
            &["lease", "list"],
            &["get", "svc/a", "-w", "json"],
            &["put", "svc/b", "4", "--ignore-lease"],
            &["put", "svc/a", "--ignore-value", "--lease={L}"],
            &["lease", "keep-alive", "--once", "{L}"],
            &["lease", "revoke", "{L}"],
            &["lease", "revoke", "{L}"],
            &["lease", "timetolive", "{L}"],
            &["put", "svc/c", "5", "--lease={L}"],
            &["lease", "grant", "9000000001"],
            &["del", "svc/", "--prefix"],
        ] {
            out.push(run(args));
        }
        for args in [
            &["svc/", "--prefix", "--rev=1"][..],
            &["svc/b", "--rev=2", "--prev-kv"],
            &["svc/", "--prefix", "--rev=3", "-w", "json"],
        ] {
            // The reference goes first; Cairn must then print as many lines, the same.
            let lines = outputs
                .first()
                .map(|reference: &Vec<String>| reference[out.len()].split('\n').count());
            let printed = etcdctl_watch(&bin, addr, args, lines);
            assert!(
                !printed.is_empty(),
                "etcdctl watch {args:?} printed nothing"
            );
            out.push(printed.join("\n").replace(&dec, "ID"));
        }
        outputs.push(out);
    }
    let (want, got) = (&outputs[0], &outputs[1]);
    for (w, g) in want.iter().zip(got) {
        assert_eq!(g, w);
    }
}
