//! Schedulers electing a leader: every instance campaigns; the leader works, the others
//! observe who leads. Kill the leader (Ctrl-C or kill -9) and another takes over once its
//! session lease runs out.
//!
//! `cargo run -p cairn-examples --bin scheduler -- <instance name>`

use cairn_recipes::{Election, Session};
use futures::StreamExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("scheduler-{}", std::process::id()));
    let client = cairn_examples::connect().await?;
    let session = Session::new(&client, 5).await?;
    let election = Election::new(&session, "elections/scheduler");
    let mut observer = election.observe();
    tokio::spawn(async move {
        while let Some(Ok(leader)) = observer.next().await {
            println!("leader is now {}", String::from_utf8_lossy(&leader.value));
        }
    });
    let leadership = election.campaign(me.clone()).await?;
    println!("{me} leads (epoch {})", leadership.revision());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            leadership.resign().await?;
            println!("{me} resigned");
        }
        _ = session.done() => eprintln!("{me} lost its session: no longer leader"),
    }
    Ok(())
}
