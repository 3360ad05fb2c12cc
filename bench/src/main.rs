//! `cairn-bench`: a load generator in the spirit of etcd's `benchmark` tool. It speaks only
//! the etcd v3 API, so the same run measures Cairn and etcd alike; compare the two on the
//! same machine in the same run (`scripts/bench-vs-etcd.sh`), never absolute numbers.
//!
//! ```text
//! cairn-bench --endpoints 127.0.0.1:2379 --clients 64 --conns 8 --total 20000 put
//! cairn-bench --clients 8 --duration 10 lock
//! ```

mod command;
mod floor;
mod leases;
mod ranges;
mod report;
mod storm;
mod watchers;
mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tonic::transport::{Channel, Endpoint};

use crate::report::Report;
use crate::workload::{Ch, Token, Worker, Workload};

#[derive(Parser, Debug, Clone)]
#[command(name = "cairn-bench", version, about)]
pub struct Args {
    /// Comma-separated client URLs or host:port.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// gRPC connections, shared round-robin by the clients.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients (each with one request in flight).
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Requests in all (ignored with --duration).
    #[arg(long, global = true, default_value_t = 10_000)]
    total: u64,
    /// Run for this many seconds instead of a number of requests.
    #[arg(long, global = true)]
    duration: Option<u64>,
    /// Key size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, global = true, default_value_t = 8)]
    val_size: usize,
    /// Distinct keys the workload spreads over.
    #[arg(long, global = true, default_value_t = 1)]
    key_space_size: u64,
    /// Take the keys of the key space in order rather than at random: `--total` equal to
    /// `--key-space-size` writes every key exactly once.
    #[arg(long, global = true)]
    sequential_keys: bool,
    /// Requests per second in all (0: as fast as the clients go).
    #[arg(long, global = true, default_value_t = 0)]
    rate: u64,
    /// Give up on a request after this many milliseconds (0: wait as long as it takes), as
    /// a client with a deadline does; the client then sends its next request. With a
    /// deadline, a request stuck on a dead leader does not hide how soon writes resume.
    #[arg(long, global = true, default_value_t = 0)]
    timeout_ms: u64,
    /// Log in as `name:password` and send the token with every request (a server with auth
    /// on).
    #[arg(long, global = true)]
    user: Option<String>,
    /// One JSON object on stdout instead of the text report.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar (it goes to stderr; off by itself when stderr is not a terminal).
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("cairn-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channels = connect(&args).await?;
    // The workloads that run on their own, not as clients stepping one request at a time.
    let progress = || report::progress(&args);
    match &args.workload {
        &Workload::LeaseStorm {
            leases,
            ttl,
            streams,
            give_up,
        } => {
            let storm = storm::Storm {
                leases,
                ttl,
                streams,
                give_up: Duration::from_secs(give_up),
            };
            return storm::run(storm, &channels, progress()).await;
        }
        &Workload::LeaseGrant { leases, ttl } => {
            return storm::grant(leases, ttl, &channels, progress()).await;
        }
        Workload::WatchScale {
            streams,
            per_stream,
            puts,
            mode,
            rss_pid,
        } => {
            let scale = watchers::Scale {
                streams: *streams,
                per_stream: *per_stream,
                puts: *puts,
                fan: mode == "fan",
                rss_pid: *rss_pid,
            };
            // The slow stream gets a connection of its own: a client's unread stream
            // stalls its own connection's flow-control window, which is not the server's
            // doing.
            let slow = connect(&Args {
                conns: 1,
                ..args.clone()
            })
            .await?
            .remove(0);
            return watchers::run(scale, &channels, slow).await;
        }
        &Workload::RangeFull {
            concurrency,
            page,
            rss_pid,
            raw,
        } => {
            let full = ranges::Full {
                concurrency,
                page,
                rss_pid,
                raw,
            };
            return ranges::run(full, &channels).await;
        }
        Workload::Floor { dir, count } => {
            return floor::run(dir.clone(), *count, channels[0].clone()).await;
        }
        _ => {}
    }
    let workers = workload::prepare(&args, &channels).await?;
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let progress = report::progress(&args);
    // Each client gets an equal share of the rate limit.
    let pace =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate as f64));
    let timeout = (args.timeout_ms > 0).then(|| Duration::from_millis(args.timeout_ms));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in workers {
        let limits = Limits {
            issued: issued.clone(),
            total: args.total,
            deadline,
            pace,
            timeout,
        };
        tasks.push(tokio::spawn(drive(
            worker,
            limits,
            started,
            progress.clone(),
        )));
    }
    let mut report = Report::default();
    for t in tasks {
        report.merge(t.await?);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    if let Some(why) = report.stopped_early() {
        return Err(why.to_string().into());
    }
    report.print(&args.workload.name(), elapsed, args.json);
    Ok(())
}

/// When a client stops, how fast it goes, and how long it waits for one request.
struct Limits {
    /// Requests issued by all clients, against `total`.
    issued: Arc<AtomicU64>,
    total: u64,
    deadline: Option<Instant>,
    pace: Option<Duration>,
    timeout: Option<Duration>,
}

/// How long a client goes on with nothing but errors before the run stops.
const GIVE_UP: Duration = Duration::from_secs(10);

/// One client: requests back to back (or paced) until the total or the deadline. After an
/// error it backs off (50 ms doubling to 1 s) instead of hammering a member that is down,
/// and it stops after `GIVE_UP` without one success.
async fn drive(
    mut worker: Worker,
    limits: Limits,
    started: Instant,
    progress: indicatif::ProgressBar,
) -> Report {
    let mut report = Report::default();
    let mut ticker = limits.pace.map(tokio::time::interval);
    let mut backoff = Duration::ZERO;
    let mut last_success = Instant::now();
    loop {
        match limits.deadline {
            Some(d) if Instant::now() >= d => break,
            None if limits.issued.fetch_add(1, Ordering::Relaxed) >= limits.total => break,
            _ => {}
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let outcome = match limits.timeout {
            Some(t) => tokio::time::timeout(t, worker.step())
                .await
                .unwrap_or_else(|_| Err("client deadline exceeded".into())),
            None => worker.step().await,
        };
        match outcome {
            Ok(latencies) => {
                progress.inc(1);
                report.record(&latencies, started.elapsed());
                backoff = Duration::ZERO;
                last_success = Instant::now();
            }
            Err(e) => {
                report.error(e.to_string());
                if last_success.elapsed() > GIVE_UP {
                    report.gave_up(format!(
                        "nothing answered for {}s (is the member up?); last error: {e}",
                        GIVE_UP.as_secs()
                    ));
                    break;
                }
                // Only when the member cannot be reached: timeouts and refusals during a
                // failover are what the failover row measures, back to back.
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("transport error") || text.contains("connect") {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    report
}

impl Args {
    /// `--user`'s name and password.
    fn login(&self) -> Option<(String, String)> {
        let (name, password) = self.user.as_deref()?.split_once(':')?;
        Some((name.to_string(), password.to_string()))
    }
}

/// The connections, each sending `--user`'s token (one login for all of them).
async fn connect(args: &Args) -> Result<Vec<Ch>, Box<dyn std::error::Error + Send + Sync>> {
    let raw = dial(args).await?;
    let token = match args.login() {
        Some((name, password)) => {
            let resp = cairn_api::etcdserverpb::auth_client::AuthClient::new(raw[0].clone())
                .authenticate(cairn_api::etcdserverpb::AuthenticateRequest { name, password })
                .await?
                .into_inner();
            Some(resp.token.parse()?)
        }
        None => None,
    };
    Ok(raw
        .into_iter()
        .map(|ch| tonic::service::interceptor::InterceptedService::new(ch, Token(token.clone())))
        .collect())
}

async fn dial(args: &Args) -> Result<Vec<Channel>, Box<dyn std::error::Error + Send + Sync>> {
    let mut channels = Vec::new();
    for i in 0..args.conns.max(1) {
        let ep = &args.endpoints[i % args.endpoints.len()];
        let url = if ep.contains("://") {
            ep.clone()
        } else {
            format!("http://{ep}")
        };
        let channel = Endpoint::from_shared(url)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_may_come_before_or_after_the_workload() {
        let before = Args::try_parse_from(["cairn-bench", "--json", "--clients", "4", "range"]);
        let after = Args::try_parse_from(["cairn-bench", "range", "--json", "--clients", "4"]);
        for args in [before, after] {
            let args = args.expect("parses");
            assert!(args.json);
            assert_eq!(args.clients, 4);
        }
    }
}
