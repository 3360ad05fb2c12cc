//! A job that must not run twice at once: take the lock, pass the fencing token to the
//! resource, release. Run it in two terminals to see the second wait for the first.
//!
//! `cargo run -p cairn-examples --bin lock -- <job name>`

use std::time::Duration;

use cairn_recipes::{Mutex, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let job = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nightly-report".into());
    let client = cairn_examples::connect().await?;
    let session = Session::new(&client, 10).await?;
    let mutex = Mutex::new(&session, &format!("locks/{job}"));
    println!("waiting for the lock on {job} ...");
    let guard = mutex.lock().await?;
    println!("holding it with fencing token {}", guard.fencing_token());
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(5)) => println!("work done"),
        _ = guard.lost() => {
            eprintln!("lost the lock (session expired): stopping");
            return Ok(());
        }
    }
    guard.unlock().await?;
    session.close().await?;
    Ok(())
}
