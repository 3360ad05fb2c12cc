//! Workload (2): a watcher on every member follows the whole key space from the run's
//! first revision, with `prev_kv`, asking for progress every 300 ms and reconnecting (to
//! the same member, once it is back) from the revision after the last one it saw; one more
//! watcher, on the first member, has the NOPUT filter. The checks are etcd's robustness
//! suite's watch guarantees:
//! - **ordered, unique, reliable, resumable**: every watcher sees every revision of the run
//!   once, in order, with no gap across reconnects, and all see the same events;
//! - **atomic**: the events of one revision (one txn) arrive in one response;
//! - **bookmarkable**: a progress notification is never behind what was delivered, and
//!   nothing at or below its revision comes after it;
//! - **prev_kv**: each event's previous value is the key's state before it;
//! - **create flag**: a put's version is 1 exactly when it creates the key, and counts up
//!   from there with the same creation revision;
//! - **filters**: the NOPUT watcher sees exactly the deletes the others see.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::watch_create_request::FilterType;
use cairn_api::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest,
    WatchProgressRequest, WatchRequest,
};
use tokio_stream::StreamExt;

use crate::lazy_channel;

const PUT: i32 = 0;
const DELETE: i32 = 1;

/// One event as a watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub rev: i64,
    pub key: Vec<u8>,
    pub kind: i32,
    pub value: Vec<u8>,
    pub version: i64,
    pub create: i64,
    /// `prev_kv`: value and mod revision.
    pub prev: Option<(Vec<u8>, i64)>,
    /// Which response (counted over the watcher's life) carried it.
    pub response: u64,
}

pub struct Watcher {
    pub events: Vec<Seen>,
    /// Progress notifications: the response's number and its revision.
    pub progress: Vec<(u64, i64)>,
    pub reconnects: usize,
    pub filtered: bool,
}

/// Starts a watcher on `addr` from revision `from`; it ends once it has seen revision
/// `until` (0 until the run is over). `noput` filters out puts.
pub fn spawn(
    addr: SocketAddr,
    from: i64,
    until: Arc<AtomicI64>,
    noput: bool,
) -> tokio::task::JoinHandle<Watcher> {
    tokio::spawn(async move {
        let mut w = Watcher {
            events: Vec::new(),
            progress: Vec::new(),
            reconnects: 0,
            filtered: noput,
        };
        let mut next = from;
        let mut responses = 0u64;
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
                    prev_kv: true,
                    filters: if noput {
                        vec![FilterType::Noput as i32]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                })),
            };
            // The request stream stays open for as long as the watch lives.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(create).await.expect("queue the create request");
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Ok(stream) = client.watch(requests).await {
                let mut stream = stream.into_inner();
                let mut asked = std::time::Instant::now();
                loop {
                    // Progress is asked for every 300 ms, busy or idle.
                    if asked.elapsed() >= Duration::from_millis(300) {
                        let progress = WatchRequest {
                            request_union: Some(RequestUnion::ProgressRequest(
                                WatchProgressRequest {},
                            )),
                        };
                        let _ = tx.try_send(progress);
                        asked = std::time::Instant::now();
                    }
                    let target = until.load(Ordering::Relaxed);
                    if target != 0 && next > target {
                        return w;
                    }
                    // Wakes up now and then to ask for progress and see whether the run is
                    // over.
                    let r = match tokio::time::timeout(Duration::from_millis(300), stream.next())
                        .await
                    {
                        Err(_) => continue,
                        Ok(Some(Ok(r))) => r,
                        Ok(_) => break,
                    };
                    if r.canceled {
                        break;
                    }
                    responses += 1;
                    let rev = r.header.as_ref().map_or(0, |h| h.revision);
                    if r.events.is_empty() && !r.created && rev > 0 {
                        // Everything up to `rev` has been delivered (what the filter lets by).
                        w.progress.push((responses, rev));
                        next = next.max(rev + 1);
                    }
                    for e in r.events {
                        let kv = e.kv.unwrap_or_default();
                        next = next.max(kv.mod_revision + 1);
                        w.events.push(Seen {
                            rev: kv.mod_revision,
                            key: kv.key,
                            kind: e.r#type,
                            value: kv.value,
                            version: kv.version,
                            create: kv.create_revision,
                            prev: e.prev_kv.map(|p| (p.value, p.mod_revision)),
                            response: responses,
                        });
                    }
                }
            }
            drop(tx);
            w.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Checks what the watchers saw against every guarantee above. The unfiltered watchers come
/// first; `from`..=`until` is the run's span of revisions.
pub fn check(watchers: &[Watcher], from: i64, until: i64) -> Result<(), String> {
    let full: Vec<&Watcher> = watchers.iter().filter(|w| !w.filtered).collect();
    let first = &full[0].events;
    for (i, w) in full.iter().enumerate() {
        let upto: Vec<&Seen> = w.events.iter().filter(|e| e.rev <= until).collect();
        gap_free(i, &upto, from, until)?;
        // The same events; which response carried each is the watcher's own affair.
        let same = |a: &&Seen, b: &&Seen| {
            Seen {
                response: 0,
                ..(*a).clone()
            } == Seen {
                response: 0,
                ..(*b).clone()
            }
        };
        let base: Vec<&Seen> = first.iter().filter(|e| e.rev <= until).collect();
        if upto.len() != base.len() || !upto.iter().zip(&base).all(|(a, b)| same(a, b)) {
            let at = upto.iter().zip(&base).position(|(a, b)| !same(a, b));
            return Err(format!(
                "watcher {i} differs from watcher 0 at event {at:?}"
            ));
        }
        atomic(i, &upto)?;
        bookmarks(i, w)?;
        previous_and_versions(i, &upto)?;
    }
    let deletes: Vec<(i64, &[u8])> = first
        .iter()
        .filter(|e| e.kind == DELETE && e.rev <= until)
        .map(|e| (e.rev, e.key.as_slice()))
        .collect();
    for (i, w) in watchers.iter().enumerate().filter(|(_, w)| w.filtered) {
        let seen: Vec<(i64, &[u8])> = w
            .events
            .iter()
            .filter(|e| e.rev <= until)
            .map(|e| (e.rev, e.key.as_slice()))
            .collect();
        if w.events.iter().any(|e| e.kind != DELETE) {
            return Err(format!(
                "filtered watcher {i}: a put passed the NOPUT filter"
            ));
        }
        if seen != deletes {
            let at = seen.iter().zip(&deletes).position(|(a, b)| a != b);
            return Err(format!(
                "filtered watcher {i}: {} deletes, expected {} (first difference at {at:?})",
                seen.len(),
                deletes.len()
            ));
        }
        bookmarks(i, w)?;
    }
    Ok(())
}

/// Every revision from `from` to `until` once, in order; several events of one revision
/// (a txn) each for a different key.
fn gap_free(i: usize, upto: &[&Seen], from: i64, until: i64) -> Result<(), String> {
    let mut expect = from;
    let mut prev: Option<&Seen> = None;
    let mut keys_at_revision = std::collections::HashSet::new();
    for e in upto {
        match prev {
            Some(p) if p.rev == e.rev => {
                if !keys_at_revision.insert(&e.key) {
                    return Err(format!("watcher {i}: event repeated at revision {}", e.rev));
                }
            }
            _ => {
                keys_at_revision.clear();
                keys_at_revision.insert(&e.key);
                if e.rev != expect {
                    return Err(format!(
                        "watcher {i}: revision {} follows {} (expected {expect})",
                        e.rev,
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
    Ok(())
}

/// The events of one revision arrive in one response.
fn atomic(i: usize, upto: &[&Seen]) -> Result<(), String> {
    for pair in upto.windows(2) {
        if pair[0].rev == pair[1].rev && pair[0].response != pair[1].response {
            return Err(format!(
                "watcher {i}: the events of revision {} came in two responses",
                pair[0].rev
            ));
        }
    }
    Ok(())
}

/// A progress notification is not behind the events delivered before it, and no event at
/// or below its revision comes after it.
fn bookmarks(i: usize, w: &Watcher) -> Result<(), String> {
    for &(at, rev) in &w.progress {
        let before = w
            .events
            .iter()
            .filter(|e| e.response < at)
            .map(|e| e.rev)
            .max()
            .unwrap_or(0);
        if rev < before {
            return Err(format!(
                "watcher {i}: progress at revision {rev} after events up to {before}"
            ));
        }
        if let Some(e) = w.events.iter().find(|e| e.response > at && e.rev <= rev) {
            return Err(format!(
                "watcher {i}: revision {} delivered after progress at {rev}",
                e.rev
            ));
        }
    }
    Ok(())
}

/// `prev_kv` is the key's state before each event, and versions count from 1 at creation;
/// keys whose last change came before the run are checked from their first event on.
fn previous_and_versions(i: usize, upto: &[&Seen]) -> Result<(), String> {
    let mut last: HashMap<&[u8], &Seen> = HashMap::new();
    for e in upto {
        let key = String::from_utf8_lossy(&e.key);
        if e.kind == PUT && (e.version == 1) != (e.create == e.rev) {
            return Err(format!(
                "watcher {i}: {key} at {}: version {} with creation revision {}",
                e.rev, e.version, e.create
            ));
        }
        if let Some(before) = last.get(e.key.as_slice()) {
            let expect_prev = (before.kind == PUT).then(|| (before.value.clone(), before.rev));
            if e.prev != expect_prev {
                return Err(format!(
                    "watcher {i}: {key} at {}: prev_kv {:?}, expected {:?}",
                    e.rev,
                    e.prev.as_ref().map(|p| p.1),
                    expect_prev.as_ref().map(|p| p.1)
                ));
            }
            if e.kind == PUT {
                let (version, create) = match before.kind {
                    PUT => (before.version + 1, before.create),
                    _ => (1, e.rev),
                };
                if (e.version, e.create) != (version, create) {
                    return Err(format!(
                        "watcher {i}: {key} at {}: version {} created at {}, expected {version} created at {create}",
                        e.rev, e.version, e.create
                    ));
                }
            }
        }
        last.insert(e.key.as_slice(), e);
    }
    Ok(())
}
