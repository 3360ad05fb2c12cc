//! Live configuration: `serve` is a service that reloads its rate limits the moment they
//! change (and keeps its last good limits when an edit is invalid); `set` changes them,
//! validated before anything is written; `rollback <revision>` puts back an earlier version.
//!
//! `cargo run --release -p cairn-examples --bin config -- serve`
//! `cargo run --release -p cairn-examples --bin config -- set 500 50`
//! `etcdctl put config/limits '{"requests_per_second":0,"burst":1}'`  (refused by the service)
//! `cargo run --release -p cairn-examples --bin config -- rollback <revision>`

use cairn_recipes::{Config, Format};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Limits {
    requests_per_second: u32,
    burst: u32,
}

fn valid(l: &Limits) -> Result<(), String> {
    if l.requests_per_second == 0 {
        return Err("requests_per_second must be positive".into());
    }
    if l.burst > l.requests_per_second {
        return Err("burst may not exceed requests_per_second".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = cairn_examples::connect().await?;
    let limits = Config::<Limits>::key("config/limits", Format::Json)
        .with_default(Limits {
            requests_per_second: 100,
            burst: 10,
        })
        .with_validator(valid)
        .open(&client)
        .await?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => {
            let (mut changes, mut rejections) = (limits.changes(), limits.rejections());
            let now = changes.borrow_and_update().clone();
            println!(
                "serving with {} requests/s, burst {} (revision {})",
                now.value.requests_per_second, now.value.burst, now.revision
            );
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        changed?;
                        let now = changes.borrow_and_update().clone();
                        println!(
                            "reloaded: {} requests/s, burst {} (revision {})",
                            now.value.requests_per_second, now.value.burst, now.revision
                        );
                    }
                    refused = rejections.changed() => {
                        refused?;
                        if let Some(r) = rejections.borrow_and_update().clone() {
                            println!("kept the limits; the edit at revision {} is invalid: {}", r.revision, r.reason);
                        }
                    }
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
        ["set", rps, burst] => {
            let rev = limits
                .set(&Limits {
                    requests_per_second: rps.parse()?,
                    burst: burst.parse()?,
                })
                .await?;
            println!("stored at revision {rev}");
        }
        ["rollback", revision] => {
            let rev = limits.rollback(revision.parse()?).await?;
            println!("revision {revision}'s limits stored again at revision {rev}");
        }
        _ => {
            eprintln!("usage: config serve | config set <rps> <burst> | config rollback <revision>")
        }
    }
    Ok(())
}
