//! Watchers at scale: many watchers over a few streams, as a fleet of services watching
//! their own keys (`--mode one`) or one shared key (`--mode fan`).
//!
//! - `one`: watcher `i` watches `ws/<i>`; each put goes to one random watched key, and the
//!   delay is from the put's send to its one event. Then a stream on a connection of its
//!   own watches every key and stops reading, and the same puts run again: the delays of
//!   the others must not move (a watch hub that waits for its slowest stream fails this).
//! - `fan`: every watcher watches `wf`; the delay of a put is to its last delivery.
//!
//! With `--rss-pid` (the member's pid, on this machine) it also reports the member's
//! resident memory before the watchers and after them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::watch_client::WatchClient;
use cairn_api::etcdserverpb::watch_request::RequestUnion;
use cairn_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::report::percentile;
use crate::workload::{sent_ns, Ch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Scale {
    pub streams: usize,
    pub per_stream: usize,
    pub puts: usize,
    pub fan: bool,
    pub rss_pid: Option<u32>,
}

/// Events seen: (the put's number, delay from its send).
type Seen = mpsc::UnboundedSender<(u64, Duration)>;

pub async fn run(scale: Scale, channels: &[Ch], slow: Ch) -> Result<(), BoxError> {
    let total = scale.streams * scale.per_stream;
    let rss_before = scale.rss_pid.map(rss_kib);
    let epoch = Instant::now();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let created = Instant::now();
    let mut streams = Vec::with_capacity(scale.streams);
    for s in 0..scale.streams {
        let keys: Vec<Vec<u8>> = (0..scale.per_stream)
            .map(|j| match scale.fan {
                true => b"wf".to_vec(),
                false => key(s * scale.per_stream + j),
            })
            .collect();
        let ch = channels[s % channels.len()].clone();
        streams.push(tokio::spawn(open(ch, keys, epoch, seen_tx.clone())));
    }
    let mut keep = Vec::with_capacity(streams.len());
    for s in streams {
        keep.push(s.await??);
    }
    let creation = created.elapsed();
    let rss_after = scale.rss_pid.map(rss_kib);
    let mut kv = KvClient::new(channels[0].clone());
    // Deliveries each put awaits: one, or every watcher.
    let expect = if scale.fan { total } else { 1 };
    let cpu = || scale.rss_pid.map_or(0, cpu_ms);
    let cpu_before = cpu();
    let quiet = measure(&mut kv, &scale, total, expect, epoch, &mut seen).await?;
    let quiet_cpu = cpu() - cpu_before;
    let mut json = format!(
        "{{\"workload\":\"watch-scale\",\"mode\":\"{}\",\"watchers\":{total},\"streams\":{},\"creation_s\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}",
        if scale.fan { "fan" } else { "one" },
        scale.streams,
        creation.as_secs_f64(),
        quiet.0,
        quiet.1
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        json += &format!(
            ",\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"bytes_per_watcher\":{:.0}",
            (after.saturating_sub(before) * 1024) as f64 / total.max(1) as f64
        );
    }
    if !scale.fan {
        // The slow stream: it watches the whole prefix and never reads an event, so what
        // the member sends it piles up behind the connection's flow-control window.
        let (_slow_tx, _slow_rx) = create(slow, vec![b"ws/".to_vec()], true).await?;
        let cpu_before = cpu();
        let slowed = measure(&mut kv, &scale, total, expect, epoch, &mut seen).await?;
        let slowed_cpu = cpu() - cpu_before;
        json += &format!(
            ",\"p50_with_slow_stream_ms\":{:.3},\"p99_with_slow_stream_ms\":{:.3}",
            slowed.0, slowed.1
        );
        if scale.rss_pid.is_some() {
            json += &format!(
                ",\"member_cpu_ms\":{quiet_cpu},\"member_cpu_with_slow_stream_ms\":{slowed_cpu}"
            );
        }
    }
    json += "}";
    println!("{json}");
    drop(keep);
    Ok(())
}

fn key(i: usize) -> Vec<u8> {
    format!("ws/{i:08}").into_bytes()
}

/// `puts` puts one after another, each once its deliveries are in (an error if they are not
/// all in after 5 s); the p50 and p99 of their delays, in ms.
async fn measure(
    kv: &mut KvClient<Ch>,
    scale: &Scale,
    total: usize,
    expect: usize,
    epoch: Instant,
    seen: &mut mpsc::UnboundedReceiver<(u64, Duration)>,
) -> Result<(f64, f64), BoxError> {
    let mut delays = Vec::with_capacity(scale.puts);
    let mut pending: HashMap<u64, (usize, Duration)> = HashMap::new();
    for p in 0..scale.puts {
        // The send time names the put: its events carry it back.
        let n = epoch.elapsed().as_nanos() as u64;
        let target = if scale.fan {
            b"wf".to_vec()
        } else {
            key(rand::random::<u64>() as usize % total)
        };
        kv.put(PutRequest {
            key: target,
            value: n.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if pending.get(&n).is_some_and(|(got, _)| *got >= expect) {
                break;
            }
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some((put, delay))) => {
                    let e = pending.entry(put).or_insert((0, Duration::ZERO));
                    e.0 += 1;
                    e.1 = e.1.max(delay);
                }
                Ok(None) => return Err("every watch stream ended".into()),
                Err(_) => return Err(format!("put {p}: deliveries missing after 5 s").into()),
            }
        }
        if let Some((_, delay)) = pending.remove(&n) {
            delays.push(delay.as_secs_f64() * 1000.0);
        }
    }
    delays.sort_by(f64::total_cmp);
    Ok((percentile(&delays, 50.0), percentile(&delays, 99.0)))
}

/// A stream with a watcher per key, all created, whose events are reported to `seen`.
async fn open(
    ch: Ch,
    keys: Vec<Vec<u8>>,
    epoch: Instant,
    seen: Seen,
) -> Result<mpsc::Sender<WatchRequest>, BoxError> {
    let (tx, mut stream) = create(ch, keys, false).await?;
    tokio::spawn(async move {
        while let Some(Ok(resp)) = stream.next().await {
            let now = epoch.elapsed();
            for ev in resp.events {
                let Some(sent) = ev.kv.and_then(|kv| sent_ns(&kv.value)) else {
                    continue;
                };
                let _ = seen.send((sent, now.saturating_sub(Duration::from_nanos(sent))));
            }
        }
    });
    Ok(tx)
}

/// Creates a watcher per key on one stream (`prefix`: each key is a prefix), pipelined,
/// and waits for every creation to be confirmed; the sender keeps the stream open.
pub async fn create(
    ch: Ch,
    keys: Vec<Vec<u8>>,
    prefix: bool,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>), BoxError> {
    let n = keys.len();
    let (tx, rx) = mpsc::channel(n.max(1));
    for key in keys {
        let range_end = if prefix {
            cairn_client::prefix_end(&key)
        } else {
            vec![]
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                ..Default::default()
            })),
        })
        .await?;
    }
    let mut stream = WatchClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut created = 0;
    while created < n {
        let resp = stream.next().await.ok_or("watch stream ended")??;
        if resp.canceled {
            return Err(format!("watch refused: {}", resp.cancel_reason).into());
        }
        created += usize::from(resp.created);
    }
    Ok((tx, stream))
}

/// The CPU time (user and system) a process on this machine has used, in ms (0 if
/// unreadable; Linux's clock tick is 10 ms).
pub fn cpu_ms(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // After the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10)
        })
        .unwrap_or(0)
}

/// The resident memory of a process on this machine, in KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
