//! A topic with a publisher and a durable consumer group. The consumer commits each
//! message's offset after handling it; stop it (Ctrl-C) and start it again, and it resumes
//! with the first message it had not committed.
//!
//! `cargo run -p cairn-examples --bin topic -- publish 20`
//! `cargo run -p cairn-examples --bin topic -- consume billing`

use cairn_recipes::{Retention, Topic};
use futures::StreamExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_else(|| "consume".into());
    let client = cairn_examples::connect().await?;
    // Keep the newest 1,000 orders; older ones are trimmed as new ones are published.
    let orders = Topic::new(client, "topics/orders").with_retention(Retention {
        max_messages: Some(1_000),
        max_age: None,
    });
    match role.as_str() {
        "publish" => {
            let n: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
            for i in 0..n {
                let offset = orders.publish(format!("order {i}")).await?;
                println!("published order {i} at offset {offset}");
            }
        }
        _ => {
            let name = args.next().unwrap_or_else(|| "billing".into());
            let group = orders.group(&name);
            match group.committed().await? {
                Some(offset) => println!("group {name} resumes after offset {offset}"),
                None => println!("group {name} starts at the first message"),
            }
            let mut messages = group.subscribe().await?;
            while let Some(message) = messages.next().await {
                let message = message?;
                println!(
                    "{} <- offset {}",
                    String::from_utf8_lossy(&message.payload),
                    message.offset
                );
                group.commit(message.offset).await?;
            }
        }
    }
    Ok(())
}
