//! Topics and priority queues: offsets in publish order, subscriptions that see every
//! message once across reconnects and member failures, retention, durable consumer groups.

use std::time::Duration;

use cairn_client::{Client, ClientOptions, GetOptions};
use cairn_recipes::{PriorityQueue, Retention, StartAt, Subscription, Topic};
use futures::StreamExt;

use crate::cluster_harness::Cluster;
use crate::harness::Embedded;
use crate::recipes::client;

/// The next `n` payloads of a subscription, checking offsets strictly increase.
async fn take(sub: &mut Subscription, n: usize, last: &mut i64) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("message");
        assert!(m.offset > *last, "offset {} after {}", m.offset, *last);
        *last = m.offset;
        out.push(String::from_utf8(m.payload).expect("utf-8"));
    }
    out
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i:03}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_message_once_in_order_from_where_they_start() {
    let m = Embedded::start().await;
    let topic = Topic::new(client(&m).await, "topics/orders");
    let mut offsets = Vec::new();
    for p in numbered(0..10) {
        offsets.push(topic.publish(p).await.expect("publish"));
    }
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));

    let mut oldest = topic.subscribe(StartAt::Oldest).await.expect("subscribe");
    let mut now = topic.subscribe(StartAt::Now).await.expect("subscribe");
    let mut from = topic
        .subscribe(StartAt::Offset(offsets[6]))
        .await
        .expect("subscribe");
    // Published while the subscribers are between their backlog and their watch.
    for p in numbered(10..15) {
        topic.publish(p).await.expect("publish");
    }
    let (mut a, mut b, mut c) = (0, 0, 0);
    assert_eq!(take(&mut oldest, 15, &mut a).await, numbered(0..15));
    assert_eq!(take(&mut now, 5, &mut b).await, numbered(10..15));
    assert_eq!(take(&mut from, 9, &mut c).await, numbered(6..15));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_messages_by_count_and_age() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let by_count = Topic::new(c.clone(), "topics/ticks").with_retention(Retention {
        max_messages: Some(5),
        max_age: None,
    });
    for p in numbered(0..12) {
        by_count.publish(p).await.expect("publish");
    }
    let mut sub = by_count
        .subscribe(StartAt::Oldest)
        .await
        .expect("subscribe");
    assert_eq!(take(&mut sub, 5, &mut 0).await, numbered(7..12));

    let age = Duration::from_millis(300);
    let by_age = Topic::new(c.clone(), "topics/events").with_retention(Retention {
        max_messages: None,
        max_age: Some(age),
    });
    for p in numbered(0..3) {
        by_age.publish(p).await.expect("publish");
    }
    // Age is the point here: let the first three grow older than the retention.
    tokio::time::sleep(age * 2).await;
    by_age.publish("m003").await.expect("publish");
    let mut sub = by_age.subscribe(StartAt::Oldest).await.expect("subscribe");
    assert_eq!(take(&mut sub, 1, &mut 0).await, vec!["m003".to_string()]);
    let left = c
        .get(
            "topics/events/msgs/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(left.count, 1);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_resumes_after_its_commit_across_reconnects_and_member_loss() {
    let cluster = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_endpoints();
    let publisher = Client::connect(endpoints.clone(), ClientOptions::default())
        .await
        .expect("connect");
    // The consumer streams from member 0 first, and fails over when it dies.
    let consumer = Client::connect(endpoints, ClientOptions::default())
        .await
        .expect("connect");
    let topic = Topic::new(publisher, "topics/payments");
    for p in numbered(0..20) {
        topic.publish(p).await.expect("publish");
    }

    let group = Topic::new(consumer.clone(), "topics/payments").group("billing");
    assert_eq!(group.committed().await.expect("cursor"), None);
    let mut sub = group.subscribe().await.expect("subscribe");
    let mut last = 0;
    let first = take(&mut sub, 8, &mut last).await;
    assert_eq!(first, numbered(0..8));
    group.commit(last).await.expect("commit");
    // A stale commit does not move the cursor back.
    group.commit(last - 3).await.expect("commit");
    assert_eq!(group.committed().await.expect("cursor"), Some(last));
    // Disconnect: the subscription goes away, more is published meanwhile.
    drop(sub);
    for p in numbered(20..30) {
        topic.publish(p).await.expect("publish");
    }
    let mut sub = group.subscribe().await.expect("resubscribe");
    let mut last = 0;
    assert_eq!(take(&mut sub, 22, &mut last).await, numbered(8..30));

    // The member the consumer streams from dies; publishing goes on through the others.
    let mut cluster = cluster;
    cluster.members[0].process.kill9();
    let publisher = Client::connect(
        cluster.members[1..]
            .iter()
            .map(|m| m.process.addr.to_string())
            .collect::<Vec<_>>(),
        ClientOptions::default(),
    )
    .await
    .expect("connect");
    let topic = Topic::new(publisher, "topics/payments");
    for p in numbered(30..40) {
        topic.publish(p).await.expect("publish");
    }
    assert_eq!(take(&mut sub, 10, &mut last).await, numbered(30..40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_queue_hands_out_the_most_urgent_first_and_fifo_within_a_priority() {
    let m = Embedded::start().await;
    let q = PriorityQueue::new(client(&m).await, "queues/tasks");
    q.enqueue("reindex", 5).await.expect("enqueue");
    q.enqueue("page on-call", 0).await.expect("enqueue");
    q.enqueue("rotate logs", 5).await.expect("enqueue");
    q.enqueue("renew cert", 1).await.expect("enqueue");
    let mut out = Vec::new();
    while let Some(item) = q.try_dequeue().await.expect("dequeue") {
        out.push(String::from_utf8(item).expect("utf-8"));
    }
    assert_eq!(
        out,
        ["page on-call", "renew cert", "reindex", "rotate logs"]
    );
    // An empty queue makes `dequeue` wait for the next item.
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.dequeue().await }
    });
    q.enqueue("late", 9).await.expect("enqueue");
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken")
        .expect("task")
        .expect("dequeue");
    assert_eq!(got, b"late");
    m.stop().await;
}
