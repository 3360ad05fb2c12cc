//! Big ranges: `--concurrency` clients each read every key at once, either in one Range
//! (as `etcdctl get "" --from-key`) or paged as Kubernetes lists (`--page` keys a call,
//! each page starting after the last key of the one before). What it reports: the wall
//! time for all of them, and with `--rss-pid` the member's peak resident memory while
//! they ran (sampled every 20 ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::RangeRequest;

use crate::workload::Ch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Full {
    pub concurrency: usize,
    /// Keys per call; 0 reads every key in one call.
    pub page: i64,
    pub rss_pid: Option<u32>,
}

pub async fn run(full: Full, channels: &[Ch]) -> Result<(), BoxError> {
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = full.rss_pid.map(|pid| {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(crate::watchers::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let started = Instant::now();
    let mut readers = Vec::new();
    for c in 0..full.concurrency.max(1) {
        // A response of every key is far past tonic's 4 MiB default.
        let kv = KvClient::new(channels[c % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        readers.push(tokio::spawn(read_all(kv, full.page)));
    }
    let mut keys = Vec::new();
    for r in readers {
        keys.push(r.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        s.await?;
    }
    if keys.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("the readers saw different numbers of keys: {keys:?}").into());
    }
    let mut json = format!(
        "{{\"workload\":\"range-full\",\"concurrency\":{},\"page\":{},\"keys\":{},\"seconds\":{secs:.3}",
        full.concurrency,
        full.page,
        keys.first().copied().unwrap_or(0)
    );
    if full.rss_pid.is_some() {
        json += &format!(",\"peak_rss_kib\":{}", peak.load(Ordering::Relaxed));
    }
    json += "}";
    println!("{json}");
    Ok(())
}

/// Every key, at the revision of the first call; how many there were.
async fn read_all(mut kv: KvClient<Ch>, page: i64) -> Result<usize, BoxError> {
    let mut from = vec![0u8];
    let (mut seen, mut rev) = (0usize, 0i64);
    loop {
        let resp = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: vec![0],
                limit: page,
                revision: rev,
                ..Default::default()
            })
            .await?
            .into_inner();
        if rev == 0 {
            rev = resp.header.map_or(0, |h| h.revision);
        }
        seen += resp.kvs.len();
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(seen),
        }
    }
}
