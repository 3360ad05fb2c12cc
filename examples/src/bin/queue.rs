//! A work queue with a pool of consumers: a producer enqueues jobs, four workers take them,
//! and each job is done by exactly one worker.
//!
//! `cargo run -p cairn-examples --bin queue -- 40`

use std::collections::BTreeMap;

use cairn_recipes::Queue;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let client = cairn_examples::connect().await?;
    let queue = Queue::new(client, "queues/thumbnails");
    for i in 0..jobs {
        queue.enqueue(format!("thumbnail {i}")).await?;
    }
    println!("enqueued {jobs} jobs");
    let mut workers = Vec::new();
    for w in 0..4 {
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while let Some(job) = queue.try_dequeue().await? {
                println!("worker {w}: {}", String::from_utf8_lossy(&job));
                done.push(job);
            }
            Ok::<_, cairn_recipes::Error>(done)
        }));
    }
    let mut by_job = BTreeMap::new();
    for worker in workers {
        for job in worker.await?? {
            *by_job.entry(job).or_insert(0) += 1;
        }
    }
    let once = by_job.values().all(|n| *n == 1);
    println!(
        "{} distinct jobs done, each exactly once: {once}",
        by_job.len()
    );
    Ok(())
}
