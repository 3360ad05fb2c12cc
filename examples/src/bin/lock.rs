//! A job that must not run twice at once: take the lock, then write to the protected
//! resource only through its fencing check, release. Run it in two terminals to see the
//! second wait for the first.
//!
//! The resource here is a key holding the highest token that has written to it; a write
//! carrying an older token is refused, so a holder that was paused past its lease (and
//! replaced) cannot clobber its successor's work.
//!
//! `cargo run -p cairn-examples --bin lock -- <job name>`

use std::time::Duration;

use cairn_client::{Client, Compare, Op, Txn};
use cairn_recipes::{Mutex, Session};

/// Writes `output` to the resource only if no newer holder has written: tokens are stored
/// zero-padded, so comparing them as text compares them as numbers.
async fn fenced_write(client: &Client, job: &str, token: i64, output: &str) -> bool {
    let fence = format!("resources/{job}/token");
    let token = format!("{token:020}");
    let txn = Txn::new()
        .when([Compare::value(fence.as_str()).lt(token.as_str())])
        .and_then([
            Op::put(fence.as_str(), token.as_str(), None),
            Op::put(format!("resources/{job}/output"), output, None),
        ]);
    let first = Txn::new()
        .when([Compare::create_revision(fence.as_str()).eq(0)])
        .and_then([
            Op::put(fence.as_str(), token.as_str(), None),
            Op::put(format!("resources/{job}/output"), output, None),
        ]);
    // A missing key fails every value compare, so the very first write has its own guard.
    match client.txn(first).await {
        Ok(r) if r.succeeded => true,
        _ => client.txn(txn).await.is_ok_and(|r| r.succeeded),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let job = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nightly-report".into());
    let client = cairn_examples::connect().await?;
    let session = Session::new(&client, 10).await?;
    let mutex = Mutex::new(&session, &format!("locks/{job}"));
    println!("waiting for the lock on {job} ...");
    let guard = mutex.lock().await?;
    let token = guard.fencing_token();
    println!("holding it with fencing token {token}");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            if fenced_write(&client, &job, token, "report done").await {
                println!("work done and written with token {token}");
            } else {
                eprintln!("a newer holder has written: this work is stale, dropped");
            }
        }
        _ = guard.lost() => {
            eprintln!("lost the lock (session expired): stopping");
            return Ok(());
        }
    }
    guard.unlock().await?;
    session.close().await?;
    Ok(())
}
