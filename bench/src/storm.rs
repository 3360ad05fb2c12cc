//! The lease storm: many leases with one key each, kept alive from a few streams, then
//! all left to expire at once, while another client puts. What it reports: keep-alives per
//! second, how long after the last lease's deadline its key was gone, and the putting
//! client's p50/p99 before the storm and during it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::report::percentile;
use crate::workload::Ch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Grants and puts in flight at once while the leases are created.
const CREATORS: usize = 128;

/// What to run: `leases` leases of `ttl` seconds, kept alive from `streams` streams.
pub struct Storm {
    pub leases: usize,
    pub ttl: i64,
    pub streams: usize,
    /// Stop waiting for the keys this long after the deadline.
    pub give_up: Duration,
}

pub async fn run(
    storm: Storm,
    channels: &[Ch],
    progress: indicatif::ProgressBar,
) -> Result<(), BoxError> {
    progress.set_length(storm.leases as u64);
    let created = Instant::now();
    let ids = create(&storm, channels, &progress).await?;
    progress.finish_and_clear();
    let creation = created.elapsed();

    // One renewal of every lease, each stream pipelining its share; leases that had
    // expired before their renewal (a TTL too short for the creation and the round) make
    // the measurement void, and are counted.
    let started = Instant::now();
    let expired = keep_alive_round(&ids, storm.streams, channels).await?;
    let last_round_end = Instant::now();
    let rate = ids.len() as f64 / (last_round_end - started).as_secs_f64();
    // No lease outlives a TTL after the end of the last round (the server counts from the
    // moment it received each renewal, before that end).
    let deadline = last_round_end + Duration::from_secs(storm.ttl as u64);

    let probe = Probe::start(KvClient::new(channels[0].clone()));
    let mut kv = KvClient::new(channels[channels.len() - 1].clone());
    let gone = loop {
        // Counting costs the server time in proportion to the keys left (etcd's too), so
        // the poll waits ten times as long as the count took: the measurement stays a small
        // part of the load, and near the end, with few keys left, polls every 20 ms.
        let asked = Instant::now();
        let left = kv
            .range(RangeRequest {
                key: b"storm/".to_vec(),
                range_end: b"storm0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .count;
        let now = Instant::now();
        if left == 0 {
            break Some(now);
        }
        if now > deadline + storm.give_up {
            break None;
        }
        tokio::time::sleep((now - asked).mul_f64(10.0).max(Duration::from_millis(20))).await;
    };
    // The storm's window: from the deadline until the keys are gone (at least a second).
    let end = gone
        .unwrap_or_else(Instant::now)
        .max(deadline + Duration::from_secs(1));
    tokio::time::sleep_until(end.into()).await;
    let puts = probe.stop();
    let window = |from: Instant, to: Instant| {
        let mut l: Vec<f64> = puts
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        l.sort_by(f64::total_cmp);
        (percentile(&l, 50.0), percentile(&l, 99.0))
    };
    let quiet_from = last_round_end + Duration::from_secs(1);
    let (b50, b99) = window(quiet_from, deadline - Duration::from_millis(500));
    let (d50, d99) = window(deadline - Duration::from_millis(500), end);
    let after_ms = match gone {
        Some(g) => format!(
            "{:.1}",
            g.saturating_duration_since(deadline).as_secs_f64() * 1000.0
        ),
        None => "null".into(),
    };
    println!(
        "{{\"workload\":\"lease-storm\",\"leases\":{},\"creation_s\":{:.1},\"expired_before_renewal\":{expired},\"keepalives_per_sec\":{rate:.1},\"gone_after_deadline_ms\":{after_ms},\"put_p50_before_ms\":{b50:.3},\"put_p99_before_ms\":{b99:.3},\"put_p50_during_ms\":{d50:.3},\"put_p99_during_ms\":{d99:.3}}}",
        ids.len(),
        creation.as_secs_f64()
    );
    Ok(())
}

/// Grants `leases` leases of `ttl` seconds with a key each and leaves them to live: one
/// JSON line with how many and how fast.
pub async fn grant(
    leases: usize,
    ttl: i64,
    channels: &[Ch],
    progress: indicatif::ProgressBar,
) -> Result<(), BoxError> {
    progress.set_length(leases as u64);
    let storm = Storm {
        leases,
        ttl,
        streams: 0,
        give_up: Duration::ZERO,
    };
    let started = Instant::now();
    let ids = create(&storm, channels, &progress).await?;
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"workload\":\"lease-grant\",\"leases\":{},\"seconds\":{secs:.1},\"per_sec\":{:.1}}}",
        ids.len(),
        ids.len() as f64 / secs
    );
    Ok(())
}

/// Grants the leases and puts one key under each (`storm/<n>`).
async fn create(
    storm: &Storm,
    channels: &[Ch],
    progress: &indicatif::ProgressBar,
) -> Result<Vec<i64>, BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(storm.leases)));
    let mut tasks = Vec::new();
    for c in 0..CREATORS {
        let ch = channels[c % channels.len()].clone();
        let (next, ids, progress, total, ttl) = (
            next.clone(),
            ids.clone(),
            progress.clone(),
            storm.leases,
            storm.ttl,
        );
        tasks.push(tokio::spawn(async move {
            let (mut lease, mut kv) = (LeaseClient::new(ch.clone()), KvClient::new(ch));
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, BoxError>(());
                }
                let id = lease
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner()
                    .id;
                let put = kv.put(PutRequest {
                    key: format!("storm/{i:08}").into_bytes(),
                    value: b"x".to_vec(),
                    lease: id,
                    ..Default::default()
                });
                if let Err(e) = put.await {
                    return Err(format!(
                        "{e}: the leases expire before they are all created; raise --ttl"
                    )
                    .into());
                }
                ids.lock().expect("ids").push(id);
                progress.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids"));
    Ok(ids)
}

/// Renews every lease once, over `streams` streams, each sending its share back to back
/// while it reads the answers; how many leases were already gone.
async fn keep_alive_round(ids: &[i64], streams: usize, channels: &[Ch]) -> Result<usize, BoxError> {
    let share = ids.len().div_ceil(streams.max(1)).max(1);
    let mut tasks = Vec::new();
    for (s, part) in ids.chunks(share).enumerate() {
        let part = part.to_vec();
        let expected = part.len();
        let mut lease = LeaseClient::new(channels[s % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(1024);
            let sender = tokio::spawn(async move {
                for id in part {
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        return;
                    }
                }
            });
            let mut answers = lease
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let (mut got, mut gone) = (0, 0);
            while got < expected {
                match answers.next().await {
                    Some(Ok(a)) => {
                        got += 1;
                        gone += usize::from(a.ttl <= 0);
                    }
                    Some(Err(e)) => return Err(Box::new(e) as BoxError),
                    None => break,
                }
            }
            let _ = sender.await;
            Ok(gone)
        }));
    }
    let mut gone = 0;
    for t in tasks {
        gone += t.await??;
    }
    Ok(gone)
}

/// A client putting one key back to back, recording when each put completed and how long
/// it took.
struct Probe {
    puts: Arc<Mutex<Vec<(Instant, Duration)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(mut kv: KvClient<Ch>) -> Probe {
        let puts: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
        let record = puts.clone();
        let task = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let put = kv.put(PutRequest {
                    key: b"storm-probe".to_vec(),
                    value: b"x".to_vec(),
                    ..Default::default()
                });
                if put.await.is_ok() {
                    let now = Instant::now();
                    record.lock().expect("puts").push((now, now - started));
                }
            }
        });
        Probe { puts, task }
    }

    fn stop(self) -> Vec<(Instant, Duration)> {
        self.task.abort();
        std::mem::take(&mut *self.puts.lock().expect("puts"))
    }
}
