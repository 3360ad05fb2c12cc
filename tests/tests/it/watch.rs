//! Watch: every create option, cancel, progress, compaction, history replay, slow readers
//! and many watchers.

use cairn_api::etcdserverpb::{
    compare::{CompareResult as R, CompareTarget as T, TargetUnion as U},
    watch_create_request::FilterType,
    watch_request::RequestUnion,
    CompactionRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchResponse,
};
use cairn_api::mvccpb::event::EventType;

use crate::harness::{Embedded, WatchConn};
use crate::ops::*;

fn watch(key: &str, end: &[u8]) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

/// (type, key, value, mod revision) of each event.
fn events(r: &WatchResponse) -> Vec<(i32, String, String, i64)> {
    r.events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into(),
                String::from_utf8_lossy(&kv.value).into(),
                kv.mod_revision,
            )
        })
        .collect()
}

const PUT: i32 = EventType::Put as i32;
const DEL: i32 = EventType::Delete as i32;

#[tokio::test]
async fn key_prefix_and_from_key_watchers_see_their_events() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    let created = w.create(watch("a", b"")).await;
    assert_eq!((created.watch_id, created.header.unwrap().revision), (0, 1));
    assert_eq!(w.create(watch("p/", &prefix_end("p/"))).await.watch_id, 1);
    assert_eq!(w.create(watch("x", b"\0")).await.watch_id, 2);
    let mut kv = m.kv().await;
    kv.put(put("a", "1")).await.unwrap(); // 2
    kv.put(put("p/1", "2")).await.unwrap(); // 3
    kv.put(put("zz", "3")).await.unwrap(); // 4
    kv.delete_range(del("a", "")).await.unwrap(); // 5
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = w.next().await;
        assert_eq!(r.header.as_ref().unwrap().revision, events(&r)[0].3);
        got.push((r.watch_id, events(&r)));
    }
    assert_eq!(
        got,
        vec![
            (0, vec![(PUT, "a".into(), "1".into(), 2)]),
            (1, vec![(PUT, "p/1".into(), "2".into(), 3)]),
            (2, vec![(PUT, "zz".into(), "3".into(), 4)]),
            (0, vec![(DEL, "a".into(), "".into(), 5)]),
        ]
    );
    m.stop().await;
}

#[tokio::test]
async fn a_txn_arrives_as_one_response_and_history_replays_from_a_revision() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("k/a", "0")).await.unwrap(); // 2
    let t = txn(
        vec![cmp("k/a", T::Version, R::Equal, U::Version(1))],
        vec![
            op_put("k/a", "1"),
            op_put("k/b", "1"),
            op_del(del("k/c", "")),
        ],
        vec![],
    );
    kv.txn(t).await.unwrap(); // 3
    kv.delete_range(del("k/", "k0")).await.unwrap(); // 4
    let mut w = WatchConn::open(m.addr).await;
    let mut c = watch("k/", &prefix_end("k/"));
    c.start_revision = 2;
    w.create(c).await;
    // Replayed history may batch revisions; collect until revision 4.
    let mut got = Vec::new();
    while got.last().map(|e: &(i32, String, String, i64)| e.3) != Some(4) {
        got.extend(events(&w.next().await));
    }
    assert_eq!(
        got,
        vec![
            (PUT, "k/a".into(), "0".into(), 2),
            (PUT, "k/a".into(), "1".into(), 3),
            (PUT, "k/b".into(), "1".into(), 3),
            (DEL, "k/a".into(), "".into(), 4),
            (DEL, "k/b".into(), "".into(), 4),
        ]
    );
    // Live: a txn's events come together in one response.
    let t = txn(vec![], vec![op_put("k/x", "1"), op_put("k/y", "1")], vec![]);
    kv.txn(t).await.unwrap(); // 5
    let r = w.next().await;
    assert_eq!(
        events(&r),
        vec![
            (PUT, "k/x".into(), "1".into(), 5),
            (PUT, "k/y".into(), "1".into(), 5)
        ]
    );
    m.stop().await;
}

#[tokio::test]
async fn filters_prev_kv_and_client_chosen_ids() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    let no_put = WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        watch_id: 7,
        ..watch("f", b"")
    };
    assert_eq!(w.create(no_put).await.watch_id, 7);
    let dup = WatchCreateRequest {
        watch_id: 7,
        ..watch("g", b"")
    };
    let refused = w.create(dup).await;
    assert!(refused.canceled);
    assert_eq!(
        refused.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let with_prev = WatchCreateRequest {
        prev_kv: true,
        filters: vec![FilterType::Nodelete as i32],
        watch_id: 9,
        ..watch("f", b"")
    };
    assert_eq!(w.create(with_prev).await.watch_id, 9);
    let mut kv = m.kv().await;
    kv.put(put("f", "1")).await.unwrap(); // 2
    kv.put(put("f", "2")).await.unwrap(); // 3
    kv.delete_range(del("f", "")).await.unwrap(); // 4
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = w.next().await;
        let prev = r.events[0]
            .prev_kv
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.value).into_owned());
        got.push((r.watch_id, events(&r)[0].0, events(&r)[0].3, prev));
    }
    assert_eq!(
        got,
        vec![
            (9, PUT, 2, None),
            (9, PUT, 3, Some("1".into())),
            (7, DEL, 4, None)
        ]
    );
    let bad = w.create(watch("b", b"a")).await;
    assert_eq!(
        (bad.canceled, bad.cancel_reason.as_str()),
        (true, "mvcc: watcher range is empty")
    );
    m.stop().await;
}

#[tokio::test]
async fn cancel_is_acknowledged_and_stops_events() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    let id = w.create(watch("c", b"")).await.watch_id;
    let other = w.create(watch("d", b"")).await.watch_id;
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: id,
    }))
    .await;
    let ack = w.next().await;
    assert_eq!((ack.watch_id, ack.canceled), (id, true));
    let mut kv = m.kv().await;
    kv.put(put("c", "ignored")).await.unwrap();
    kv.put(put("d", "seen")).await.unwrap();
    let r = w.next().await;
    assert_eq!((r.watch_id, events(&r)[0].1.as_str()), (other, "d"));
    m.stop().await;
}

#[tokio::test]
async fn progress_requests_and_notifications_report_the_revision() {
    let m = Embedded::start_with(|c| {
        c.watch_progress_notify_interval = std::time::Duration::from_millis(300)
    })
    .await;
    let mut kv = m.kv().await;
    kv.put(put("other", "1")).await.unwrap(); // 2
    let mut w = WatchConn::open(m.addr).await;
    let id = w
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch("quiet", b"")
        })
        .await
        .watch_id;
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let r = w.next().await;
    assert_eq!(
        (r.watch_id, r.header.unwrap().revision, r.events.len()),
        (-1, 2, 0)
    );
    kv.put(put("other", "2")).await.unwrap(); // 3
                                              // An idle watcher with progress_notify hears the newest revision periodically.
    let r = w.next().await;
    assert_eq!((r.watch_id, r.events.len()), (id, 0));
    assert!(r.header.unwrap().revision >= 3);
    m.stop().await;
}

#[tokio::test]
async fn a_compacted_start_revision_cancels_and_a_future_one_waits() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for v in ["1", "2", "3"] {
        kv.put(put("h", v)).await.unwrap(); // 2 3 4
    }
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .unwrap();
    let mut w = WatchConn::open(m.addr).await;
    let id = w
        .create(WatchCreateRequest {
            start_revision: 2,
            ..watch("h", b"")
        })
        .await
        .watch_id;
    let r = w.next().await;
    assert_eq!((r.watch_id, r.canceled, r.compact_revision), (id, true, 4));
    // From the compacted revision itself is fine: the newest value at 4 is kept.
    w.create(WatchCreateRequest {
        start_revision: 4,
        ..watch("h", b"")
    })
    .await;
    assert_eq!(
        events(&w.next().await),
        vec![(PUT, "h".into(), "3".into(), 4)]
    );
    let future = w
        .create(WatchCreateRequest {
            start_revision: 7,
            ..watch("h", b"")
        })
        .await
        .watch_id;
    kv.put(put("h", "5")).await.unwrap(); // 5: only the watcher from 4 sees it
    kv.put(put("h", "6")).await.unwrap(); // 6
    kv.put(put("h", "7")).await.unwrap(); // 7: both
                                          // Each watcher sees its revisions in order; across watchers no order is promised.
    let (mut from_4, mut from_7) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let r = w.next().await;
        let seen = if r.watch_id == future {
            &mut from_7
        } else {
            &mut from_4
        };
        seen.push(events(&r)[0].3);
    }
    assert_eq!((from_4, from_7), (vec![5, 6, 7], vec![7]));
    m.stop().await;
}

#[tokio::test]
async fn large_responses_are_fragmented_when_asked() {
    let m = Embedded::start_with(|c| c.max_request_bytes = 4096).await;
    let mut kv = m.kv().await;
    for i in 0..20 {
        kv.put(put(&format!("big/{i:02}"), &"v".repeat(500)))
            .await
            .unwrap();
    }
    let mut w = WatchConn::open(m.addr).await;
    w.create(WatchCreateRequest {
        fragment: true,
        prev_kv: true,
        ..watch("big/", &prefix_end("big/"))
    })
    .await;
    // One small request whose events (with their previous values) make a ~10 KB response.
    kv.delete_range(del("big/", "big0")).await.unwrap();
    let mut total = 0;
    let mut parts = 0;
    loop {
        let r = w.next().await;
        total += r.events.len();
        parts += 1;
        if !r.fragment {
            break;
        }
    }
    assert_eq!(total, 20);
    assert!(
        parts > 1,
        "a 10 KB response over a 4 KB limit must be split"
    );
    m.stop().await;
}

#[tokio::test]
async fn a_reader_that_stalls_through_100k_events_gets_all_of_them_in_order() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    w.create(watch("s/", &prefix_end("s/"))).await;
    // 1,000 txns of 100 puts: 100,000 events at revisions 2..=1001, written by 8 clients
    // while the watcher reads nothing.
    let mut writers = Vec::new();
    for c in 0..8 {
        let mut kv = m.kv().await;
        writers.push(tokio::spawn(async move {
            for t in 0..125 {
                let ops = (0..100)
                    .map(|i| op_put(&format!("s/{c}/{t:03}/{i:02}"), "x"))
                    .collect();
                kv.txn(txn(vec![], ops, vec![])).await.unwrap();
            }
        }));
    }
    for wr in writers {
        wr.await.unwrap();
    }
    let mut count = 0;
    let mut last = (0i64, String::new());
    while count < 100_000 {
        let r = w.next().await;
        for e in r.events {
            let kv = e.kv.unwrap();
            let at = (kv.mod_revision, String::from_utf8(kv.key).unwrap());
            // Revisions never go back; inside one revision, the txn's order (key order here).
            assert!(at > last, "event {at:?} after {last:?}");
            last = at;
            count += 1;
        }
    }
    assert_eq!(last.0, 1001);
    m.stop().await;
}

#[tokio::test]
async fn ten_thousand_watchers_on_one_stream_all_get_the_event() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    for _ in 0..10_000 {
        w.send(RequestUnion::CreateRequest(watch("hot", b""))).await;
    }
    let mut created = 0;
    while created < 10_000 {
        assert!(w.next().await.created);
        created += 1;
    }
    m.kv().await.put(put("hot", "now")).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    while ids.len() < 10_000 {
        let r = w.next().await;
        assert_eq!(events(&r), vec![(PUT, "hot".into(), "now".into(), 2)]);
        assert!(
            ids.insert(r.watch_id),
            "watcher {} got the event twice",
            r.watch_id
        );
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_created_during_writes_get_created_first_then_every_revision() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let m = Embedded::start().await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut kv = m.kv().await;
    let writing = stop.clone();
    let mut writer = Some(tokio::spawn(async move {
        while !writing.load(Ordering::Relaxed) {
            kv.put(put("race", "v")).await.unwrap();
        }
        kv
    }));
    let mut w = WatchConn::open(m.addr).await;
    let first = w.create(watch("race", b"")).await;
    const WATCHERS: usize = 200;
    for _ in 1..WATCHERS {
        w.send(RequestUnion::CreateRequest(watch("race", b"")))
            .await;
    }
    // Each watcher's next expected revision: every revision is a put of "race", so a
    // watcher sees each one after the revision it was created at, in order.
    let mut next = std::collections::HashMap::new();
    next.insert(first.watch_id, first.header.unwrap().revision + 1);
    let mut last = None;
    loop {
        let r = w.next().await;
        if r.created {
            let rev = r.header.unwrap().revision;
            assert!(next.insert(r.watch_id, rev + 1).is_none());
            if next.len() == WATCHERS {
                stop.store(true, Ordering::Relaxed);
                // Reached once: every created answer adds a new id.
                let mut kv = writer.take().unwrap().await.unwrap();
                let done = kv.put(put("race", "end")).await.unwrap().into_inner();
                last = Some(done.header.unwrap().revision);
            }
            continue;
        }
        let Some(expected) = next.get_mut(&r.watch_id) else {
            panic!(
                "an event for watcher {} before its created answer",
                r.watch_id
            );
        };
        for (_, _, _, rev) in events(&r) {
            assert_eq!(rev, *expected, "watcher {}", r.watch_id);
            *expected += 1;
        }
        if last.is_some_and(|last| next.values().all(|n| *n > last)) {
            break;
        }
    }
    m.stop().await;
}

#[tokio::test]
async fn a_progress_answer_comes_after_every_event_up_to_its_revision() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    w.create(watch("big", b"")).await;
    // Far more than the stream's flow-control window, so most of these events are still
    // queued at the member when the progress request arrives.
    let mut kv = m.kv().await;
    let mut last = 0;
    for _ in 0..48 {
        let r = kv.put(put("big", &"v".repeat(64 * 1024))).await.unwrap();
        last = r.into_inner().header.unwrap().revision;
    }
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    // The watcher was created at revision 1, the store's first.
    let mut seen = 1;
    loop {
        let r = w.next().await;
        if r.watch_id == -1 {
            let rev = r.header.unwrap().revision;
            assert!(rev >= last, "progress at {rev}, before the last put {last}");
            assert_eq!(seen, rev, "progress at {rev} with events up to {seen} sent");
            break;
        }
        for (_, _, _, rev) in events(&r) {
            assert_eq!(rev, seen + 1);
            seen = rev;
        }
    }
    m.stop().await;
}

#[tokio::test]
async fn a_stream_whose_client_stops_sending_still_gets_events() {
    let m = Embedded::start().await;
    let mut w = WatchConn::open(m.addr).await;
    w.create(watch("k", b"")).await;
    w.close_send();
    m.kv().await.put(put("k", "after")).await.unwrap();
    assert_eq!(
        events(&w.next().await),
        vec![(PUT, "k".into(), "after".into(), 2)]
    );
    m.stop().await;
}
