//! A gRPC client that follows a service's instances: it calls the instances registered
//! under `services/<service>/` through one balanced channel, and stops calling an instance
//! the moment its registration goes. The calls are etcd KV `Range`s, so any Cairn or etcd
//! member serves as an instance; register members with the registry example and stop them
//! while this runs.
//!
//! `cargo run --release -p cairn-examples --bin registry -- register kv kv-1 127.0.0.1:2379`
//! `cargo run --release -p cairn-examples --bin discovery -- kv`

use std::time::Duration;

use cairn_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
use cairn_recipes::ServiceRegistry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let Some(service) = std::env::args().nth(1) else {
        eprintln!("usage: discovery <service>");
        return Ok(());
    };
    let client = cairn_examples::connect().await?;
    let registry = ServiceRegistry::new(client, "services/");
    let balanced = registry.discovery(&service).channel().await?;
    let mut kv = KvClient::new(balanced.channel());
    loop {
        let instances: Vec<String> = balanced.instances().into_keys().collect();
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            kv.range(RangeRequest {
                key: b"x".to_vec(),
                ..Default::default()
            }),
        )
        .await;
        match answer {
            Ok(Ok(r)) => {
                let member = r.into_inner().header.map_or(0, |h| h.member_id);
                println!("answered by member {member:x}; instances {instances:?}");
            }
            Ok(Err(status)) => {
                println!("call failed: {}; instances {instances:?}", status.message())
            }
            Err(_) => println!("call timed out; instances {instances:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
