//! The Rust snippets of the README, compiled. Between each pair of `README:` marker
//! comments is exactly the text of one `rust` block there (less four spaces of indent); a
//! test in `tests/` compares them, so the README cannot show code that does not build.

#![allow(unused_variables)]

use std::error::Error;

/// The client tour.
#[rustfmt::skip]
pub async fn client_tour() -> Result<(), Box<dyn Error>> {
    // README: client
    use cairn_client::{Client, ClientOptions, Compare, Op, PutOptions, Txn, WatchOptions};
    use futures::StreamExt;

    let client = Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"], ClientOptions::default()).await?;

    // Register with a heartbeat lease.
    let lease = client.lease_grant(10, 0).await?;
    let keeper = client.keep_alive(lease.id, lease.ttl);
    client.put("svc/api-1", "10.0.0.7:8080", Some(PutOptions::new().with_lease(lease.id))).await?;

    // Create a key only if nobody did.
    let created = client
        .txn(Txn::new()
            .when([Compare::create_revision("leader").eq(0)])
            .and_then([Op::put("leader", "api-1", None)]))
        .await?
        .succeeded;

    // Follow a prefix.
    let mut watch = client.watch("svc/", Some(WatchOptions::new().with_prefix()));
    while let Some(batch) = watch.next().await {
        for event in batch?.events {
            println!("{:?} {}", event.r#type(), String::from_utf8_lossy(&event.kv.unwrap_or_default().key));
        }
    }
    // README: end
    Ok(())
}

/// The recipes tour.
#[rustfmt::skip]
pub async fn recipes_tour() -> Result<(), Box<dyn Error>> {
    // README: recipes
    use cairn_client::{Client, ClientOptions};
    use cairn_recipes::*;

    let client = Client::connect(["127.0.0.1:2379"], ClientOptions::default()).await?;
    let session = Session::new(&client, 10).await?;          // a lease kept alive
    let guard = Mutex::new(&session, "locks/report").lock().await?;
    let token: i64 = guard.fencing_token();                   // strictly increasing per holder
    client.put("reports/latest", format!("written under token {token}"), None).await?;
    guard.unlock().await?;

    let leadership = Election::new(&session, "elections/scheduler").campaign("node-1").await?;
    leadership.proclaim("node-1, epoch 2").await?;

    let config = RwMutex::new(&session, "locks/config").read().await?;      // shared
    let permit = Semaphore::new(&session, "semaphores/exports", 3).acquire().await?;

    let jobs = Queue::new(client.clone(), "queues/jobs");     // each item to one consumer
    jobs.enqueue("resize 42").await?;
    let job = jobs.dequeue().await?;
    PriorityQueue::new(client.clone(), "queues/tasks").enqueue("page on-call", 0).await?;

    let orders = Topic::new(client.clone(), "topics/orders")
        .with_retention(Retention { max_messages: Some(10_000), max_age: None });
    orders.publish("order 1").await?;                         // returns its offset
    let billing = orders.group("billing");                    // durable committed offset
    let messages = billing.subscribe().await?;                // resumes after the commit

    let registry = ServiceRegistry::new(client.clone(), "services/");
    registry.register(&session, "api", "api-1", "10.0.0.7:8080").await?;
    let api = registry.discovery("api").channel().await?;      // tonic Channel over live instances
    let both = MultiLock::new(&session, ["locks/a", "locks/b"]).lock().await?;  // no deadlock
    DelayQueue::new(client.clone(), "queues/retries")
        .enqueue_after("charge 7", std::time::Duration::from_secs(30)).await?;

    Barrier::new(client.clone(), "barriers/deploy").wait().await?;
    DoubleBarrier::new(&session, "barriers/stage", 4).enter().await?;
    Counter::new(client.clone(), "counters/visits").add(1).await?;
    let cache = Cache::new(&client, "services/api/").await?;    // a live local mirror
    let instances = cache.snapshot();                           // from memory, with its revision

    let limits = Config::<serde_json::Value>::key("config/limits", Format::Json)
        .with_default(serde_json::json!({ "requests_per_second": 100 }))
        .open(&client).await?;                                  // serde-typed, validated, live
    let rps = limits.get()["requests_per_second"].clone();      // a local read

    Stm::new(&client, Isolation::SerializableSnapshot)          // etcd's STM: retried on conflict
        .run(|tx| async move {
            let n: i64 = tx.get_string("counters/runs").await?.parse().unwrap_or(0);
            tx.put("counters/runs", (n + 1).to_string());
            Ok(())
        })
        .await?;
    // README: end
    Ok(())
}
