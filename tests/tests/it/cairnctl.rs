//! `cairnctl` against etcdctl: the same commands, each against its own fresh member, print
//! the same (simple and json output), apart from ids, ports and etcdctl's client logs.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::harness::{etcdctl_binary, Process};

fn cairnctl_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"))
}

/// Blanks what differs between two members: ids (long numbers and hex strings), ports,
/// the seconds a lease has left, health-check times, and etcdctl's own log lines.
fn normalize(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(table_cells)
        .map(|l| {
            let mut o = String::new();
            let mut word = String::new();
            let flush = |word: &mut String, o: &mut String| {
                let long_number = word.len() >= 10 && word.chars().all(|c| c.is_ascii_digit());
                let hex_id = word.len() >= 12 && word.chars().all(|c| c.is_ascii_hexdigit());
                if long_number || hex_id {
                    o.push_str("ID");
                } else {
                    o.push_str(word);
                }
                word.clear();
            };
            for c in l.chars() {
                if c.is_ascii_alphanumeric() {
                    word.push(c);
                } else {
                    flush(&mut word, &mut o);
                    o.push(c);
                }
            }
            flush(&mut word, &mut o);
            let mut s = o;
            // 127.0.0.1:<port>
            while let Some(i) = s.find("127.0.0.1:") {
                let start = i + "127.0.0.1:".len();
                let end = s[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(s.len(), |e| start + e);
                s.replace_range(i..end, "HOST");
            }
            // Bytes on disk and in use depend on ids and timing, not on the tool.
            for field in ["\"dbSize\":", "\"dbSizeInUse\":"] {
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
            if let Some(i) = s.find("took = ") {
                s.truncate(i + "took = ".len());
                s.push('T');
            }
            if let Some(i) = s.find("remaining(") {
                let end = s[i..].find(')').map_or(s.len(), |e| i + e);
                s.replace_range(i..end, "remaining(N");
            }
            s + "\n"
        })
        .collect()
}

/// A table line as its trimmed cells, with sizes blanked: the database size differs between
/// two members (it is what their files occupy), and with it the column widths. Cell contents
/// are still compared; the layout itself is checked by the table renderer's own tests.
fn table_cells(line: &str) -> String {
    if line.starts_with('+') {
        return "+".into();
    }
    if !line.starts_with('|') {
        return line.to_string();
    }
    line.split('|')
        .map(|cell| {
            let cell = cell.trim();
            let is_size = ["B", "kB", "MB", "GB"].iter().any(|unit| {
                cell.strip_suffix(unit)
                    .is_some_and(|n| n.trim().parse::<f64>().is_ok())
            });
            if is_size {
                "SIZE"
            } else {
                cell
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

struct Tool {
    bin: PathBuf,
    etcdctl: bool,
    endpoint: String,
}

impl Tool {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new(&self.bin);
        if self.etcdctl {
            cmd.env("ETCDCTL_API", "3");
        }
        cmd.arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run the tool");
        if let Some(input) = stdin {
            child
                .stdin
                .as_mut()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("output");
        format!(
            "$ {}\nexit={:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs a command that does not end by itself (watch, elect) until it printed `lines`
    /// lines.
    fn first_lines(&self, args: &[&str], lines: usize) -> String {
        self.first_lines_after(args, "", lines)
    }

    /// The same with `input` on standard input, which stays open until the tool is killed.
    fn first_lines_after(&self, args: &[&str], input: &str, lines: usize) -> String {
        let mut cmd = Command::new(&self.bin);
        if self.etcdctl {
            cmd.env("ETCDCTL_API", "3");
        }
        let mut child = cmd
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the tool");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut out = String::new();
        for line in BufReader::new(stdout).lines().take(lines) {
            out.push_str(&line.expect("line"));
            out.push('\n');
        }
        let _ = child.kill();
        let _ = child.wait();
        drop(stdin);
        out
    }

    /// Commands that hold until interrupted: a watch replaying history from a revision and
    /// then a live event; a campaign that prints the leader once elected, and an observer.
    fn held(&self) -> String {
        let mut out = self.first_lines(&["watch", "foo", "--rev=4", "--prev-kv"], 6);
        out += &self.first_lines(&["watch", "foo", "--rev=4", "-w", "json"], 1);
        out += &self.first_lines_after(
            &["watch", "-i", "--prev-kv"],
            "nonsense\nwatch foo --rev=4\n",
            6,
        );
        out += &self.first_lines(
            &[
                "watch",
                "foo",
                "--rev=4",
                "--",
                "sh",
                "-c",
                "echo $ETCD_WATCH_KEY $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_VALUE",
            ],
            4,
        );
        // The campaign's lease (60 s, etcdctl's session default) outlives the killed
        // process, so the observer still sees it as leader.
        out += &self.first_lines(&["elect", "jobs", "node-1"], 2);
        out += &self.first_lines(&["elect", "-l", "jobs"], 2);
        out
    }

    /// The whole session; returns everything printed.
    fn session(&self) -> String {
        let mut out = String::new();
        let mut run = |args: &[&str], stdin: Option<&str>| {
            let o = self.run(args, stdin);
            out.push_str(&o);
            o
        };
        run(&["put", "foo", "bar"], None);
        run(&["put", "foo", "baz", "--prev-kv"], None);
        run(&["put", "foo", "baz", "--prev-kv", "-w", "json"], None);
        run(&["get", "foo"], None);
        run(&["get", "foo", "-w", "json"], None);
        for (k, v) in [("a/1", "x"), ("a/2", "y"), ("a/3", "z")] {
            run(&["put", k, v], None);
        }
        run(
            &[
                "get",
                "a/",
                "--prefix",
                "--sort-by=MODIFY",
                "--order=DESCEND",
                "--limit=2",
            ],
            None,
        );
        run(&["get", "a/", "--prefix", "--keys-only"], None);
        run(&["get", "a/", "--prefix", "--print-value-only"], None);
        run(&["get", "a/1", "a/3", "-w", "json"], None);
        run(&["get", "a/", "--from-key", "--rev=3"], None);
        run(
            &[
                "get",
                "a/",
                "--prefix",
                "--consistency=s",
                "--order=DESCEND",
            ],
            None,
        );
        run(&["put", "x", "--ignore-value"], None);
        run(&["put", "x"], None);
        run(&["get", "foo", "--consistency=x"], None);
        run(&["get", "foo", "--sort-by=foo"], None);
        run(&["get", "foo", "--order=up"], None);
        run(&["del", "a/1", "--prev-kv"], None);
        run(&["del", "a/", "--prefix", "-w", "json"], None);
        run(
            &["txn"],
            Some("value(\"foo\") = \"baz\"\n\nput foo new\nget foo\n\nput foo never\n\n"),
        );
        run(
            &["txn", "-w", "json"],
            Some("mod(\"foo\") > \"100\"\n\nput foo x\n\nget foo\ndel nothing\n\n"),
        );
        run(
            &["txn", "-i"],
            Some("value(\"foo\") = \"x\"\n\nput foo y\n\nget foo\n\n"),
        );
        run(&["compaction", "3"], None);
        run(&["get", "foo", "--rev=2"], None);
        let granted = run(&["lease", "grant", "100"], None);
        let id = granted
            .lines()
            .find(|l| l.contains("granted with TTL"))
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("lease <id> granted")
            .to_string();
        run(&["put", "leased", "v", &format!("--lease={id}")], None);
        run(&["lease", "timetolive", &id, "--keys"], None);
        run(&["lease", "list"], None);
        run(&["lease", "list", "-w", "json"], None);
        run(&["lease", "timetolive", &id, "--keys", "-w", "json"], None);
        run(&["lease", "keep-alive", &id, "--once"], None);
        run(&["lease", "grant", "100", "-w", "json"], None);
        run(&["lease", "revoke", &id], None);
        run(&["lease", "timetolive", &id], None);
        run(&["lease", "revoke", &id], None);
        run(&["get", "leased"], None);
        run(
            &[
                "lock",
                "nightly",
                "--",
                "sh",
                "-c",
                "echo held $ETCD_LOCK_KEY",
            ],
            None,
        );
        run(&["lock", "nightly", "--", "sh", "-c", "exit 3"], None);
        run(&["lock"], None);
        run(&["elect", "jobs"], None);
        run(&["member", "list"], None);
        run(&["member", "list", "-w", "json"], None);
        run(&["member", "list", "-w", "table"], None);
        run(&["endpoint", "status", "-w", "table"], None);
        run(&["get", "foo", "-w", "table"], None);
        run(&["endpoint", "health"], None);
        run(&["endpoint", "status"], None);
        run(&["endpoint", "status", "-w", "json"], None);
        run(&["alarm", "list"], None);
        run(&["alarm", "list", "-w", "json"], None);
        run(&["alarm", "disarm"], None);
        // Last: it changes the database size `endpoint status` shows.
        run(&["defrag"], None);
        out
    }
}

fn endpoint(p: &Process) -> String {
    p.addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_prints_what_etcdctl_prints() {
    let Some(etcdctl) = crate::harness::reference(etcdctl_binary(), "etcdctl") else {
        return;
    };
    let a = Process::cairn().await;
    let b = Process::cairn().await;
    let reference = Tool {
        bin: etcdctl,
        etcdctl: true,
        endpoint: endpoint(&a),
    };
    let ours = Tool {
        bin: cairnctl_binary(),
        etcdctl: false,
        endpoint: endpoint(&b),
    };
    let (want, got) = tokio::task::spawn_blocking(move || {
        let want = reference.session();
        let got = ours.session();
        // Watch: replay history from a revision, then a live event.
        let want_watch = reference.held();
        let got_watch = ours.held();
        (want + &want_watch, got + &got_watch)
    })
    .await
    .expect("sessions");
    let (want, got) = (normalize(&want), normalize(&got));
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        assert_eq!(w, g, "line {i} differs\netcdctl:\n{want}\ncairnctl:\n{got}");
    }
    assert_eq!(
        want.lines().count(),
        got.lines().count(),
        "etcdctl:\n{want}\ncairnctl:\n{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_reads_its_environment_and_counts_keys() {
    let m = Process::cairn().await;
    let addr = endpoint(&m);
    let run = move |args: &[&str]| {
        let out = Command::new(cairnctl_binary())
            .env("CAIRNCTL_ENDPOINTS", &addr)
            .args(args)
            .output()
            .expect("run cairnctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let out = tokio::task::spawn_blocking(move || {
        run(&["put", "c/1", "x"]);
        run(&["put", "c/2", "y"]);
        (
            run(&["get", "c/", "--prefix", "--count-only"]),
            run(&["get", "c/", "--prefix", "--count-only", "-w", "json"]),
            run(&["lease", "revoke", "1234"]),
        )
    })
    .await
    .expect("commands");
    assert_eq!(out.0, (Some(0), "2\n".to_string()));
    assert!(out.1 .1.contains("\"count\":2"), "{}", out.1 .1);
    assert_eq!(out.2 .0, Some(1), "errors exit with 1");
}
