//! `watch`: one watch (optionally running a command per event, with etcdctl's
//! `ETCD_WATCH_*` variables), or `-i`: watches requested line by line on standard input.

use std::io::Write;

use clap::Parser;
use tokio::io::AsyncBufReadExt;

use super::{bad_args, json, show, Exit, Fail};
use crate::{Client, EventType, WatchBatch, WatchOptions};

/// etcdctl's exit code for unreadable input.
const EXIT_INVALID_INPUT: i32 = 3;

/// The flags and arguments of `watch` (also those of each `-i` line).
#[derive(clap::Args, Clone, Debug)]
pub struct WatchArgs {
    /// Interactive mode: read `watch [options] KEY [RANGE_END] [-- COMMAND...]` and
    /// `progress` lines from standard input.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Watch on a prefix.
    #[arg(long)]
    prefix: bool,
    /// Revision to start watching from.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Get the previous key-value pair before the event happens.
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// The key (or `CAIRNCTL_WATCH_KEY`).
    key: Option<String>,
    /// The end of the watched range (or `CAIRNCTL_WATCH_RANGE_END`).
    range_end: Option<String>,
    /// A command to run on every event, after `--`.
    #[arg(last = true)]
    exec: Vec<String>,
}

/// One `-i` line: `watch ...`.
#[derive(Parser)]
#[command(name = "watch", no_binary_name = false)]
struct Line {
    #[command(flatten)]
    args: WatchArgs,
}

/// What to watch and how, once key and range come from the arguments or the environment.
struct Request {
    key: String,
    options: WatchOptions,
    exec: Vec<String>,
}

fn request(args: &WatchArgs) -> Result<Request, Fail> {
    let env_key = std::env::var("CAIRNCTL_WATCH_KEY").ok();
    let env_range = std::env::var("CAIRNCTL_WATCH_RANGE_END").ok();
    if env_key.is_none() && env_range.is_some() {
        return Err(bad_args(
            "range_end is given but key is not (CAIRNCTL_WATCH_RANGE_END without CAIRNCTL_WATCH_KEY)",
        ));
    }
    let Some(key) = args.key.clone().or(env_key) else {
        return Err(bad_args("watch needs a key"));
    };
    let range_end = args.range_end.clone().or(env_range);
    if range_end.is_some() && args.prefix {
        return Err(bad_args(
            "`range_end` and `--prefix` are mutually exclusive",
        ));
    }
    let mut options = WatchOptions::new()
        .with_start_revision(args.rev)
        .with_range_flags(range_end, args.prefix, false);
    if args.prev_kv {
        options = options.with_prev_kv();
    }
    Ok(Request {
        key,
        options,
        exec: args.exec.clone(),
    })
}

/// Prints one response as etcdctl does (the whole batch at once, so concurrent watches do
/// not interleave inside it).
fn print(batch: &WatchBatch, json_out: bool) {
    let mut out = String::new();
    if json_out {
        let events: Vec<String> = batch.events.iter().map(json::event).collect();
        // clientv3's WatchResponse, which has no json tags.
        out = format!(
            "{{\"Header\":{},\"Events\":[{}],\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}}\n",
            json::header(&batch.header.unwrap_or_default()),
            events.join(",")
        );
    } else {
        for e in &batch.events {
            let kind = if e.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            out.push_str(kind);
            out.push('\n');
            for kv in e.prev_kv.iter().chain(e.kv.iter()) {
                out.push_str(&format!("{}\n{}\n", show(&kv.key), show(&kv.value)));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Go's `%q` of a byte string, as etcdctl puts keys and values in the environment.
fn go_quote(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// Runs `exec` for each event of `batch` with etcdctl's variables; a failing command ends
/// cairnctl (exit 1), as it ends etcdctl.
async fn run_exec(exec: &[String], batch: &WatchBatch) -> Result<(), Fail> {
    let revision = batch.header.as_ref().map_or(0, |h| h.revision);
    for e in &batch.events {
        let kv = e.kv.clone().unwrap_or_default();
        let kind = if e.r#type == EventType::Delete as i32 {
            "DELETE"
        } else {
            "PUT"
        };
        let status = tokio::process::Command::new(&exec[0])
            .args(&exec[1..])
            .env("ETCD_WATCH_REVISION", revision.to_string())
            .env("ETCD_WATCH_EVENT_TYPE", format!("\"{kind}\""))
            .env("ETCD_WATCH_KEY", go_quote(&kv.key))
            .env("ETCD_WATCH_VALUE", go_quote(&kv.value))
            .status()
            .await;
        let failure = match status {
            Ok(s) if s.success() => continue,
            Ok(s) => format!("exit status {}", s.code().unwrap_or(-1)),
            Err(e) => e.to_string(),
        };
        // etcdctl's words, with Go's `%q` of the argument list, and no `Error:` prefix.
        let quoted: Vec<String> = exec.iter().map(|a| format!("{a:?}")).collect();
        eprintln!("command [{}] error ({failure})", quoted.join(" "));
        return Err(Box::new(Exit {
            code: 1,
            message: String::new(),
        }));
    }
    Ok(())
}

/// Follows one watch until it ends (or the command for an event fails).
async fn follow(client: Client, req: Request, json_out: bool) -> Result<(), Fail> {
    let mut watch = client.watch(req.key, Some(req.options));
    while let Some(batch) = futures::StreamExt::next(&mut watch).await {
        let batch = match batch {
            Ok(b) => b,
            // As etcdctl: the server's reason, and exit 5.
            Err(e @ crate::Error::Compacted { .. }) => return Err(canceled(&e.to_string())),
            Err(crate::Error::Server(s)) if s.code() == tonic::Code::Cancelled => {
                return Err(canceled(s.message()))
            }
            Err(e) => return Err(e.into()),
        };
        print(&batch, json_out);
        if !req.exec.is_empty() {
            run_exec(&req.exec, &batch).await?;
        }
    }
    Ok(())
}

/// etcdctl's end of a watch the server cancelled.
fn canceled(reason: &str) -> Fail {
    eprintln!("watch was canceled ({reason})");
    Box::new(Exit {
        code: 5,
        message: "watch is canceled by the server".into(),
    })
}

/// `watch`: one watch until interrupted, or `-i`.
pub async fn watch(client: &Client, args: WatchArgs, json_out: bool) -> Result<(), Fail> {
    if args.interactive {
        return interactive(client, json_out).await;
    }
    let req = request(&args)?;
    tokio::select! {
        r = follow(client.clone(), req, json_out) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// `watch -i`: each `watch ...` line starts one more watch on the same connection, with
/// that line's flags only (as etcdctl, which resets them for every line); input ending ends
/// cairnctl with etcdctl's exit code for it.
async fn interactive(client: &Client, json_out: bool) -> Result<(), Fail> {
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<Fail>(1);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l,
            Some(e) = failed.recv() => return Err(e),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(Box::new(Exit {
                    code: EXIT_INVALID_INPUT,
                    message: "Error reading watch request line: EOF".into(),
                }))
            }
            Err(e) => {
                return Err(Box::new(Exit {
                    code: EXIT_INVALID_INPUT,
                    message: format!("Error reading watch request line: {e}"),
                }))
            }
        };
        let words = super::txn::words(&line);
        match words.first().map(String::as_str) {
            Some("watch") => {}
            // Progress notifications carry no events: nothing to print in simple output.
            Some("progress") => continue,
            Some(_) => {
                eprintln!("Invalid command {line} (only support watch)");
                continue;
            }
            None => {
                eprintln!("Invalid command: {line} (watch and progress supported)");
                continue;
            }
        }
        // The first word, `watch`, stands where the binary name would.
        let parsed = match Line::try_parse_from(&words) {
            Ok(l) => l.args,
            Err(e) => {
                eprintln!("Invalid command {line} ({})", e.kind());
                continue;
            }
        };
        let req = match request(&parsed) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Invalid command {line} ({e})");
                continue;
            }
        };
        let (client, failed_tx) = (client.clone(), failed_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = follow(client, req, json_out).await {
                let _ = failed_tx.send(e).await;
            }
        });
    }
}
