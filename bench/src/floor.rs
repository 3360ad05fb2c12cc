//! The floor under a 1-client put on one member: one `fdatasync` of a small write on the
//! data directory's filesystem, plus one round trip to the member. A durable put cannot
//! be answered sooner than that; `scripts/bench-vs-etcd.sh` compares the put's mean
//! latency with it.
//!
//! The round trip is a serializable range of a key that is not there: the cheapest call
//! that crosses the network stack and the server's request path. The sync is of 256 bytes
//! written in place in a file allocated beforehand, the least a log append can cost (a
//! growing file also syncs its size).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::RangeRequest;

use crate::workload::Ch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes per synced write, about a small put's log entry.
const WRITE: usize = 256;

pub async fn run(dir: PathBuf, count: usize, ch: Ch) -> Result<(), BoxError> {
    let count = count.max(1);
    let (syncs, sparse) = tokio::task::spawn_blocking(move || {
        Ok::<_, BoxError>((syncs(&dir, count, true)?, syncs(&dir, count, false)?))
    })
    .await??;
    let mut kv = KvClient::new(ch);
    let mut trips = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        kv.range(RangeRequest {
            key: b"cairn-bench-floor/absent".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await?;
        trips.push(started.elapsed());
    }
    let (sync_avg, sync_p50) = summary(syncs);
    let (sparse_avg, _) = summary(sparse);
    let (trip_avg, trip_p50) = summary(trips);
    println!(
        "{{\"workload\":\"floor\",\"count\":{count},\"fdatasync_avg_ms\":{sync_avg:.3},\"fdatasync_p50_ms\":{sync_p50:.3},\"round_trip_avg_ms\":{trip_avg:.3},\"round_trip_p50_ms\":{trip_p50:.3},\"floor_ms\":{:.3},\"fdatasync_sparse_avg_ms\":{sparse_avg:.3}}}",
        sync_avg + trip_avg
    );
    Ok(())
}

/// `count` timed syncs of one write each, in a file of `dir` that is removed afterwards.
/// The file's blocks are written beforehand (`allocate`), or it is only sized, as a
/// journal preallocated with `set_len` is: sparse, so each sync also commits the
/// allocation of the block it wrote into.
fn syncs(dir: &std::path::Path, count: usize, allocate: bool) -> Result<Vec<Duration>, BoxError> {
    let path = dir.join(format!("cairn-bench-floor-{}.tmp", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let result = (|| {
        // Sized (and allocated) and synced up front, so the timed syncs carry no size change.
        if allocate {
            file.write_all(&vec![0u8; WRITE * count])?;
        } else {
            file.set_len((WRITE * count) as u64)?;
        }
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        let block = [b'x'; WRITE];
        let mut took = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            took.push(started.elapsed());
        }
        Ok::<_, std::io::Error>(took)
    })();
    let _ = std::fs::remove_file(&path);
    Ok(result?)
}

/// Mean and median, in milliseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len().max(1) as f64;
    let median = samples.get(samples.len() / 2).map_or(0.0, |d| ms(*d));
    (mean, median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_time_each_write_and_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("cairn-floor-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for allocate in [true, false] {
            let took = syncs(&dir, 5, allocate).expect("syncs");
            assert_eq!(took.len(), 5);
            assert!(took.iter().all(|d| *d > Duration::ZERO));
        }
        assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
        std::fs::remove_dir(&dir).expect("rmdir");
    }

    #[test]
    fn summary_is_mean_and_median() {
        let (mean, median) = summary(vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ]);
        assert!((mean - 2.0).abs() < 1e-9);
        assert!((median - 2.0).abs() < 1e-9);
    }
}
