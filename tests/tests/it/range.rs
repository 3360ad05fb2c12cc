//! Put, Range (every option), DeleteRange and Compact against one member.

use crate::harness::Embedded;
use cairn_api::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    CompactionRequest, PutRequest, RangeRequest,
};

use crate::ops::*;

fn keys(r: &cairn_api::etcdserverpb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test]
async fn fresh_store_is_at_revision_1_and_first_write_is_2() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    let r = kv.range(get("x")).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, 1);
    let p = kv.put(put("x", "1")).await.unwrap().into_inner();
    assert_eq!(p.header.unwrap().revision, 2);
    let kvs = kv.range(get("x")).await.unwrap().into_inner().kvs;
    assert_eq!(
        (kvs[0].create_revision, kvs[0].mod_revision, kvs[0].version),
        (2, 2, 1)
    );
    m.stop().await;
}

#[tokio::test]
async fn versions_count_puts_and_reset_after_delete() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("k", "a")).await.unwrap();
    kv.put(put("k", "b")).await.unwrap();
    let kvs = kv.range(get("k")).await.unwrap().into_inner().kvs;
    assert_eq!(
        (kvs[0].create_revision, kvs[0].mod_revision, kvs[0].version),
        (2, 3, 2)
    );
    let d = kv.delete_range(del("k", "")).await.unwrap().into_inner();
    assert_eq!((d.deleted, d.header.unwrap().revision), (1, 4));
    // Deleting nothing creates no revision.
    let d = kv.delete_range(del("k", "")).await.unwrap().into_inner();
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 4));
    kv.put(put("k", "c")).await.unwrap();
    let kvs = kv.range(get("k")).await.unwrap().into_inner().kvs;
    assert_eq!(
        (kvs[0].create_revision, kvs[0].mod_revision, kvs[0].version),
        (5, 5, 1)
    );
    m.stop().await;
}

#[tokio::test]
async fn range_forms_prefix_from_key_and_half_open() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for k in ["a", "ab", "abc", "b", "c"] {
        kv.put(put(k, k)).await.unwrap();
    }
    let pre = RangeRequest {
        key: "ab".into(),
        range_end: prefix_end("ab"),
        ..Default::default()
    };
    assert_eq!(
        keys(&kv.range(pre).await.unwrap().into_inner()),
        ["ab", "abc"]
    );
    assert_eq!(
        keys(&kv.range(range("ab", "\0")).await.unwrap().into_inner()),
        ["ab", "abc", "b", "c"]
    );
    assert_eq!(
        keys(&kv.range(range("a", "b")).await.unwrap().into_inner()),
        ["a", "ab", "abc"]
    );
    assert!(keys(&kv.range(range("c", "a")).await.unwrap().into_inner()).is_empty());
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(kv.range(all).await.unwrap().into_inner().count, 5);
    m.stop().await;
}

#[tokio::test]
async fn limit_reports_more_and_the_full_count() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for k in ["a", "b", "c"] {
        kv.put(put(k, k)).await.unwrap();
    }
    let r = kv
        .range(RangeRequest {
            limit: 2,
            ..range("a", "\0")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".to_string(), "b".into()], true, 3)
    );
    let r = kv
        .range(RangeRequest {
            limit: 3,
            ..range("a", "\0")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.kvs.len(), r.more, r.count), (3, false, 3));
    let r = kv
        .range(RangeRequest {
            count_only: true,
            ..range("a", "\0")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    let r = kv
        .range(RangeRequest {
            keys_only: true,
            ..range("a", "\0")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && !kv.key.is_empty()));
    m.stop().await;
}

#[tokio::test]
async fn historical_reads_and_serializable_reads() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("k", "v1")).await.unwrap(); // rev 2
    kv.put(put("k", "v2")).await.unwrap(); // rev 3
    kv.delete_range(del("k", "")).await.unwrap(); // rev 4
    let at = |rev| RangeRequest {
        revision: rev,
        ..get("k")
    };
    let r = kv.range(at(2)).await.unwrap().into_inner();
    assert_eq!(r.kvs[0].value, b"v1");
    // The header carries the current revision, not the one read at.
    assert_eq!(r.header.unwrap().revision, 4);
    assert_eq!(
        kv.range(at(3)).await.unwrap().into_inner().kvs[0].value,
        b"v2"
    );
    assert!(kv.range(at(4)).await.unwrap().into_inner().kvs.is_empty());
    let s = kv
        .range(RangeRequest {
            serializable: true,
            ..at(3)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.kvs[0].value, b"v2");
    m.stop().await;
}

#[tokio::test]
async fn sort_by_every_target_and_order() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("b", "3")).await.unwrap(); // create 2
    kv.put(put("a", "2")).await.unwrap(); // create 3
    kv.put(put("c", "1")).await.unwrap(); // create 4
    kv.put(put("b", "3")).await.unwrap(); // b: mod 5, version 2
    let sorted = |target: SortTarget, order: SortOrder| RangeRequest {
        sort_target: target as i32,
        sort_order: order as i32,
        ..range("a", "\0")
    };
    let cases = [
        (SortTarget::Key, SortOrder::Descend, ["c", "b", "a"]),
        (SortTarget::Key, SortOrder::Ascend, ["a", "b", "c"]),
        (SortTarget::Create, SortOrder::Ascend, ["b", "a", "c"]),
        (SortTarget::Create, SortOrder::Descend, ["c", "a", "b"]),
        (SortTarget::Mod, SortOrder::Descend, ["b", "c", "a"]),
        (SortTarget::Value, SortOrder::Ascend, ["c", "a", "b"]),
        // A non-key target with no order sorts ascending, as etcd.
        (SortTarget::Value, SortOrder::None, ["c", "a", "b"]),
        (SortTarget::Version, SortOrder::Descend, ["b", "a", "c"]),
    ];
    for (target, order, want) in cases {
        let r = kv.range(sorted(target, order)).await.unwrap().into_inner();
        assert_eq!(keys(&r), want, "{target:?} {order:?}");
    }
    // Sorting happens before the limit.
    let r = kv
        .range(RangeRequest {
            limit: 1,
            ..sorted(SortTarget::Mod, SortOrder::Descend)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["b".to_string()], true, 3)
    );
    m.stop().await;
}

#[tokio::test]
async fn min_and_max_revision_filters() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for k in ["a", "b", "c"] {
        kv.put(put(k, k)).await.unwrap(); // a:2 b:3 c:4
    }
    kv.put(put("a", "again")).await.unwrap(); // a: mod 5, create 2
    let all = range("a", "\0");
    let r = kv
        .range(RangeRequest {
            min_mod_revision: 4,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&r), ["a", "c"]);
    // count reports the whole range, not the filtered keys.
    assert_eq!(r.count, 3);
    let r = kv
        .range(RangeRequest {
            max_mod_revision: 3,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&r), ["b"]);
    let r = kv
        .range(RangeRequest {
            min_create_revision: 3,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&r), ["b", "c"]);
    let r = kv
        .range(RangeRequest {
            max_create_revision: 3,
            ..all
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&r), ["a", "b"]);
    m.stop().await;
}

#[tokio::test]
async fn put_prev_kv_ignore_value_and_ignore_lease() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    let r = kv
        .put(cairn_api::etcdserverpb::PutRequest {
            prev_kv: true,
            ..put("k", "1")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.prev_kv.is_none());
    let r = kv
        .put(cairn_api::etcdserverpb::PutRequest {
            prev_kv: true,
            ..put("k", "2")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"1");
    let iv = cairn_api::etcdserverpb::PutRequest {
        ignore_value: true,
        ..put("k", "")
    };
    kv.put(iv).await.unwrap();
    let got = kv.range(get("k")).await.unwrap().into_inner().kvs.remove(0);
    assert_eq!((got.value.as_slice(), got.version), (&b"2"[..], 3));
    let il = cairn_api::etcdserverpb::PutRequest {
        ignore_lease: true,
        ..put("k", "4")
    };
    kv.put(il).await.unwrap();
    assert_eq!(
        kv.range(get("k")).await.unwrap().into_inner().kvs[0].value,
        b"4"
    );
    m.stop().await;
}

#[tokio::test]
async fn delete_range_returns_prev_kvs() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    for k in ["p/1", "p/2", "q"] {
        kv.put(put(k, k)).await.unwrap();
    }
    let d = cairn_api::etcdserverpb::DeleteRangeRequest {
        prev_kv: true,
        ..del("p/", &String::from_utf8(prefix_end("p/")).unwrap())
    };
    let r = kv.delete_range(d).await.unwrap().into_inner();
    assert_eq!(r.deleted, 2);
    assert_eq!(
        r.prev_kvs
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        [b"p/1".to_vec(), b"p/2".to_vec()]
    );
    assert_eq!(
        kv.range(range("a", "\0")).await.unwrap().into_inner().count,
        1
    );
    m.stop().await;
}

#[tokio::test]
async fn compaction_hides_old_revisions_and_keeps_the_newest() {
    let m = Embedded::start().await;
    let mut kv = m.kv().await;
    kv.put(put("k", "1")).await.unwrap(); // 2
    kv.put(put("k", "2")).await.unwrap(); // 3
    kv.put(put("gone", "x")).await.unwrap(); // 4
    kv.delete_range(del("gone", "")).await.unwrap(); // 5
    let c = kv
        .compact(CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.header.unwrap().revision, 5);
    let err = kv
        .range(RangeRequest {
            revision: 3,
            ..get("k")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    // The compacted revision itself still reads.
    let r = kv
        .range(RangeRequest {
            revision: 4,
            ..get("k")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(
        kv.range(get("k")).await.unwrap().into_inner().kvs[0].version,
        2
    );
    let again = kv
        .compact(CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        again.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    kv.compact(CompactionRequest {
        revision: 5,
        physical: false,
    })
    .await
    .unwrap();
    // Writing continues from the same revision counter.
    assert_eq!(
        kv.put(put("k", "3"))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision,
        6
    );
    m.stop().await;
}

#[tokio::test]
async fn a_big_range_is_streamed_and_answers_as_a_built_one() {
    // A plain range is written from the stored records in chunks (server/range_stream.rs);
    // a sorted one is built whole. Both must give the same keys, over many chunks.
    let m = Embedded::start().await;
    let mut kv = m.kv().await.max_decoding_message_size(usize::MAX);
    for batch in 0..30 {
        let ops = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                op_put_req(PutRequest {
                    key: format!("big/{n:05}").into(),
                    value: vec![b'a' + (n % 26) as u8; 2000],
                    ..Default::default()
                })
            })
            .collect();
        kv.txn(txn(vec![], ops, vec![])).await.unwrap();
    }
    let before = kv
        .put(put("big/00007", "again"))
        .await
        .unwrap()
        .into_inner();
    let before = before.header.unwrap().revision - 1;
    let all = range("big/", "big0");
    let streamed = kv.range(all.clone()).await.unwrap().into_inner();
    let mut built = kv
        .range(RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    built.kvs.reverse();
    assert_eq!((streamed.count, streamed.more), (3000, false));
    assert_eq!(streamed.kvs, built.kvs);
    assert_eq!(streamed.kvs[7].value, b"again");
    assert_eq!(streamed.header, built.header);
    let page = kv
        .range(RangeRequest {
            limit: 700,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((page.count, page.more), (3000, true));
    assert_eq!(page.kvs[..], streamed.kvs[..700]);
    // At the revision before the overwrite, the record read is not the key's newest.
    let old = kv
        .range(RangeRequest {
            revision: before,
            ..all.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.kvs[7].value, vec![b'a' + 7; 2000]);
    assert_eq!(old.kvs[8..], streamed.kvs[8..]);
    kv.compact(CompactionRequest {
        revision: before + 1,
        physical: true,
    })
    .await
    .unwrap();
    // Errors are etcd's, code and text, as on the built path.
    for (rev, text) in [
        (
            before,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            before + 100,
            "etcdserver: mvcc: required revision is a future revision",
        ),
    ] {
        let single = kv
            .range(RangeRequest {
                revision: rev,
                ..get("big/00001")
            })
            .await
            .unwrap_err();
        let ranged = kv
            .range(RangeRequest {
                revision: rev,
                ..all.clone()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (ranged.code(), ranged.message()),
            (single.code(), single.message())
        );
        assert_eq!(
            (ranged.code(), ranged.message()),
            (tonic::Code::OutOfRange, text)
        );
    }
    m.stop().await;
}
