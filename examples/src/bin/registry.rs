//! Service registration and discovery: `register <service> <instance> <address>` keeps an
//! instance registered while it runs; `watch <service>` prints instances coming and going.
//!
//! `cargo run -p cairn-examples --bin registry -- register api api-1 10.0.0.7:8080`
//! `cargo run -p cairn-examples --bin registry -- watch api`

use cairn_recipes::{InstanceEvent, ServiceRegistry, Session};
use futures::StreamExt;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = cairn_examples::connect().await?;
    let registry = ServiceRegistry::new(client.clone(), "services/");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["register", service, instance, address] => {
            let session = Session::new(&client, 5).await?;
            registry
                .register(&session, service, instance, *address)
                .await?;
            println!("{instance} registered under {service}; Ctrl-C to deregister");
            tokio::signal::ctrl_c().await?;
            registry.deregister(service, instance).await?;
        }
        ["watch", service] => {
            let mut events = Box::pin(registry.watch(service).await?);
            while let Some(event) = events.next().await {
                match event? {
                    InstanceEvent::Added(i) => {
                        println!("+ {} {}", i.id, String::from_utf8_lossy(&i.value))
                    }
                    InstanceEvent::Updated(i) => {
                        println!("~ {} {}", i.id, String::from_utf8_lossy(&i.value))
                    }
                    InstanceEvent::Removed(id) => println!("- {id}"),
                }
            }
        }
        _ => eprintln!(
            "usage: registry register <service> <instance> <address> | registry watch <service>"
        ),
    }
    Ok(())
}
