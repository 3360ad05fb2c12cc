//! The soak: the fault suite for an hour (by script, `scripts/soak.sh`; not in CI) without
//! SIGKILL, so the same member processes live through it all, with a topic besides the
//! suite's workloads. Every checker must stay green, the topic must deliver every
//! acknowledged message once and in order, and each member's resident memory and open file
//! descriptors must be flat: at the end no more than at the start of the run (after its
//! first tenth) by half again plus 64 MiB, and 64 descriptors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientOptions};
use cairn_recipes::{StartAt, Topic};
use futures::StreamExt;

/// One member's samples: (seconds into the run, resident KiB, open descriptors).
pub type Series = Vec<(u64, u64, usize)>;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Samples every member every 5 s until `stop`.
pub fn sample(pids: Vec<u32>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Series>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut series: Vec<Series> = pids.iter().map(|_| Vec::new()).collect();
        while !stop.load(Ordering::Relaxed) {
            for (i, &pid) in pids.iter().enumerate() {
                if let (Some(rss), Some(fds)) = (rss_kib(pid), fds(pid)) {
                    series[i].push((started.elapsed().as_secs(), rss, fds));
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        series
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Whether every member's memory and descriptors stayed flat; prints what it compared.
pub fn flat(series: &[Series]) -> Result<(), String> {
    for (i, s) in series.iter().enumerate() {
        if s.len() < 20 {
            eprintln!("soak: member {i}: {} samples, too few to judge", s.len());
            continue;
        }
        let tenth = s.len() / 10;
        let start = &s[tenth..2 * tenth];
        let end = &s[s.len() - tenth..];
        let rss = |w: &[(u64, u64, usize)]| median(w.iter().map(|x| x.1).collect());
        let fd = |w: &[(u64, u64, usize)]| median(w.iter().map(|x| x.2 as u64).collect());
        let (rss_start, rss_end, fd_start, fd_end) = (rss(start), rss(end), fd(start), fd(end));
        let tenths: Vec<String> = (0..10)
            .map(|t| format!("{}", rss(&s[t * tenth..(t + 1) * tenth]) / 1024))
            .collect();
        eprintln!(
            "soak: member {i}: resident {} → {} MiB (by tenths of the run: {}), open files {fd_start} → {fd_end} ({} samples)",
            rss_start / 1024,
            rss_end / 1024,
            tenths.join(" "),
            s.len()
        );
        if rss_end > rss_start * 3 / 2 + 64 * 1024 {
            return Err(format!(
                "member {i}'s memory grew from {} to {} MiB",
                rss_start / 1024,
                rss_end / 1024
            ));
        }
        if fd_end > fd_start + 64 {
            return Err(format!(
                "member {i}'s open files grew from {fd_start} to {fd_end}"
            ));
        }
    }
    Ok(())
}

pub struct TopicRun {
    pub published: usize,
    pub delivered: usize,
    pub resubscribed: usize,
}

/// A publisher and a subscriber on one topic through a client that fails over; after
/// `stop`, the subscriber must catch up with every acknowledged message, each once, in
/// offset order.
pub fn topic(addrs: &[SocketAddr], stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<TopicRun> {
    let endpoints: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let client = Client::connect(&endpoints, ClientOptions::default())
            .await
            .expect("connect");
        // Retention keeps the topic bounded over an hour; 5,000 messages is far more than a
        // subscriber falls behind.
        let topic = Topic::new(client, "soak/topic").with_retention(cairn_recipes::Retention {
            max_messages: Some(5000),
            ..Default::default()
        });
        let publisher = {
            let (topic, stop) = (topic.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match topic.publish(format!("message {n}")).await {
                        Ok(offset) => acked.push(offset),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                acked
            })
        };
        let delivered = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
        let resubscribed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = {
            let (topic, delivered, resubscribed) =
                (topic.clone(), delivered.clone(), resubscribed.clone());
            tokio::spawn(async move {
                let mut last = 0i64;
                loop {
                    let Ok(mut sub) = topic.subscribe(StartAt::Offset(last + 1)).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    while let Some(Ok(m)) = sub.next().await {
                        assert!(m.offset > last, "topic: offset {} after {last}", m.offset);
                        last = m.offset;
                        delivered.lock().unwrap().push(m.offset);
                    }
                    resubscribed.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let acked = publisher.await.expect("publisher");
        let newest = acked.iter().copied().max().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while delivered.lock().unwrap().last().copied().unwrap_or(0) < newest {
            assert!(
                Instant::now() < deadline,
                "topic: the subscriber never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        subscriber.abort();
        let got: std::collections::HashSet<i64> =
            delivered.lock().unwrap().iter().copied().collect();
        let missing = acked.iter().filter(|o| !got.contains(o)).count();
        assert_eq!(
            missing, 0,
            "topic: {missing} acknowledged messages never delivered"
        );
        let delivered = delivered.lock().unwrap().len();
        TopicRun {
            published: acked.len(),
            delivered,
            resubscribed: resubscribed.load(Ordering::Relaxed),
        }
    })
}

/// The soak itself: `CAIRN_SOAK_SECS` (default 3600) on three members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour long: run by scripts/soak.sh"]
async fn an_hour_of_mixed_load_under_faults_leaves_memory_and_files_flat() {
    let secs = std::env::var("CAIRN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    crate::suite::under_faults_with(3, secs, true).await;
}
