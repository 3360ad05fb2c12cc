//! Durability: acknowledged writes survive SIGKILL, restarts replay the log from the
//! applied index and the revision counter continues.

use std::sync::{Arc, Mutex};

use crate::harness::{Embedded, Process};
use cairn_api::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};

use crate::ops::*;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_during_load() {
    let mut member = Process::cairn().await;
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut kv = member.kv().await;
        let acked = acked.clone();
        let enough = enough_tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}/{i:05}");
                match kv.put(put(&key, &key)).await {
                    Ok(r) => {
                        let rev = r.into_inner().header.unwrap().revision;
                        let n = {
                            let mut a = acked.lock().unwrap();
                            a.push((key, rev));
                            a.len()
                        };
                        if n == 400 {
                            let _ = enough.try_send(());
                        }
                    }
                    // The member was killed: stop writing.
                    Err(_) => return,
                }
            }
        }));
    }
    enough_rx.recv().await.unwrap();
    // Kill while the writers are still mid-flight.
    member.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 400);
    member.restart().await;
    let mut kv = member.kv().await;
    let all = kv.range(range("w", "x")).await.unwrap().into_inner();
    let stored: std::collections::HashMap<Vec<u8>, i64> = all
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect();
    let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap();
    for (key, rev) in &acked {
        assert_eq!(
            stored.get(key.as_bytes()),
            Some(rev),
            "acknowledged write {key}@{rev} lost"
        );
    }
    // Revisions are dense: every write that got one is either acknowledged or was durable.
    assert!(all.header.as_ref().unwrap().revision >= max_acked);
    let next = kv.put(put("after", "restart")).await.unwrap().into_inner();
    assert_eq!(
        next.header.unwrap().revision,
        all.header.unwrap().revision + 1
    );
}

#[tokio::test]
async fn history_versions_and_compaction_survive_sigkill() {
    let mut member = Process::cairn().await;
    let mut kv = member.kv().await;
    for v in ["1", "2", "3"] {
        kv.put(put("k", v)).await.unwrap(); // 2, 3, 4
    }
    kv.put(put("gone", "x")).await.unwrap(); // 5
    kv.delete_range(del("gone", "")).await.unwrap(); // 6
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .unwrap();
    // A txn that fails midway (its put needs a key it deleted) must leave nothing behind,
    // on disk either.
    let keep = PutRequest {
        ignore_value: true,
        ..put("k", "")
    };
    let failing = txn(
        vec![],
        vec![
            op_put("zombie", "z"),
            // A from-key delete: it removes k without counting as a duplicate of the put.
            op_del(del("j", "\0")),
            op_put_req(keep),
        ],
        vec![],
    );
    assert_eq!(
        kv.txn(failing).await.unwrap_err().message(),
        "etcdserver: key not found"
    );
    member.kill9();
    member.restart().await;
    let mut kv = member.kv().await;
    let k = kv.range(get("k")).await.unwrap().into_inner();
    assert_eq!(
        (
            k.kvs[0].version,
            k.kvs[0].create_revision,
            k.kvs[0].mod_revision
        ),
        (3, 2, 4)
    );
    assert_eq!(k.header.unwrap().revision, 6);
    let old = kv
        .range(RangeRequest {
            revision: 3,
            ..get("k")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.kvs[0].value, b"2");
    let err = kv
        .range(RangeRequest {
            revision: 2,
            ..get("k")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert!(kv
        .range(get("gone"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
    assert!(kv
        .range(get("zombie"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
    let p = kv.put(put("k", "4")).await.unwrap().into_inner();
    assert_eq!(p.header.unwrap().revision, 7);
    assert_eq!(
        kv.range(get("k")).await.unwrap().into_inner().kvs[0].version,
        4
    );
}

#[tokio::test]
async fn clean_restart_keeps_everything() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for i in 0..50 {
        kv.put(put(&format!("k{i:02}"), "v")).await.unwrap();
    }
    kv.delete_range(del("k10", "k20")).await.unwrap();
    let m = m.restart().await;
    let mut kv = m.kv().await;
    let r = kv.range(range("k", "l")).await.unwrap().into_inner();
    assert_eq!((r.count, r.header.unwrap().revision), (40, 52));
    m.stop().await;
}
