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
fn normalize(out: &str) -> String {
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
