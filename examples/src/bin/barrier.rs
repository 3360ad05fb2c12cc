//! Barriers: a deploy gate that holds workers until an operator lowers it, then a double
//! barrier that starts three workers together and lets none finish before all have.
//!
//! `cargo run -p cairn-examples --bin barrier`

use std::time::Duration;

use cairn_recipes::{Barrier, DoubleBarrier, Session};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let client = cairn_examples::connect().await?;
    let gate = Barrier::new(client.clone(), "barriers/deploy");
    gate.hold().await?;
    let mut workers = Vec::new();
    for w in 0..3 {
        let gate = gate.clone();
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            println!("worker {w}: waiting at the deploy gate");
            gate.wait().await?;
            println!("worker {w}: through the gate");
            let session = Session::new(&client, 10).await?;
            let stage = DoubleBarrier::new(&session, "barriers/migration", 3);
            stage.enter().await?;
            println!("worker {w}: all three in, migrating");
            tokio::time::sleep(Duration::from_millis(200 * (w + 1))).await;
            stage.leave().await?;
            println!("worker {w}: all three done");
            session.close().await?;
            Ok::<_, cairn_recipes::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("operator: lowering the gate");
    gate.release().await?;
    for w in workers {
        w.await??;
    }
    Ok(())
}
