//! Workload (2): a watcher on every member follows the whole key space from the run's
//! first revision, reconnecting (to the same member, once it is back) from the revision
//! after the last one it saw. Every watcher must see the same events in the same order,
//! and every revision of the run exactly once: no gap, no duplicate, across reconnects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest,
};
use tokio_stream::StreamExt;

use crate::lazy_channel;

/// One event as a watcher saw it: revision, key, type, value.
pub type Seen = (i64, Vec<u8>, i32, Vec<u8>);

pub struct Watcher {
    pub events: Vec<Seen>,
    pub reconnects: usize,
}

/// Starts a watcher on `addr` from revision `from`; it ends once it has seen revision
/// `until` (0 until the run is over).
pub fn spawn(
    addr: SocketAddr,
    from: i64,
    until: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<Watcher> {
    tokio::spawn(async move {
        let mut w = Watcher {
            events: Vec::new(),
            reconnects: 0,
        };
        let mut next = from;
        loop {
            let target = until.load(Ordering::Relaxed);
            if target != 0 && next > target {
                return w;
            }
            let mut client = WatchClient::new(lazy_channel(addr));
            let create = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: next,
                    ..Default::default()
                })),
            };
            // The request stream stays open for as long as the watch lives.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(create).await.expect("queue the create request");
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Ok(stream) = client.watch(requests).await {
                let mut stream = stream.into_inner();
                loop {
                    let target = until.load(Ordering::Relaxed);
                    if target != 0 && next > target {
                        return w;
                    }
                    // Wakes up now and then to see whether the run is over.
                    let r = match tokio::time::timeout(Duration::from_millis(500), stream.next())
                        .await
                    {
                        Err(_) => continue,
                        Ok(Some(Ok(r))) => r,
                        Ok(_) => break,
                    };
                    if r.canceled {
                        break;
                    }
                    for e in r.events {
                        let kv = e.kv.unwrap_or_default();
                        next = next.max(kv.mod_revision + 1);
                        w.events.push((kv.mod_revision, kv.key, e.r#type, kv.value));
                    }
                }
            }
            drop(tx);
            w.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Checks what the watchers saw: the same sequence everywhere, and every revision from
/// `from` to `until` present once, in order.
pub fn check(watchers: &[Watcher], from: i64, until: i64) -> Result<(), String> {
    let first = &watchers[0].events;
    for (i, w) in watchers.iter().enumerate() {
        let upto: Vec<&Seen> = w.events.iter().filter(|e| e.0 <= until).collect();
        let mut expect = from;
        let mut prev: Option<&Seen> = None;
        // Several events of one transaction share a revision, each for a different key.
        let mut keys_at_revision = std::collections::HashSet::new();
        for e in &upto {
            match prev {
                Some(p) if p.0 == e.0 => {
                    if !keys_at_revision.insert(&e.1) {
                        return Err(format!("watcher {i}: event repeated at revision {}", e.0));
                    }
                }
                _ => {
                    keys_at_revision.clear();
                    keys_at_revision.insert(&e.1);
                    if e.0 != expect {
                        return Err(format!(
                            "watcher {i}: revision {} follows {} (expected {expect})",
                            e.0,
                            expect - 1
                        ));
                    }
                    expect += 1;
                }
            }
            prev = Some(e);
        }
        if expect != until + 1 {
            return Err(format!(
                "watcher {i} saw revisions up to {} of {until}",
                expect - 1
            ));
        }
        let base: Vec<&Seen> = first.iter().filter(|e| e.0 <= until).collect();
        if upto != base {
            let at = upto.iter().zip(&base).position(|(a, b)| a != b);
            return Err(format!(
                "watcher {i} differs from watcher 0 at event {at:?}"
            ));
        }
    }
    Ok(())
}
