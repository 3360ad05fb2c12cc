//! The KV and lease request handlers without raft: each input is a request kind and a
//! protobuf message. It goes through the same validation the gRPC edge applies, then, if
//! valid, through the apply path into a real store (reads through the read path). Any
//! panic is a bug: a request the edge lets through must get an answer or an etcd error.
//! The store persists across inputs, so sequences of requests build up real history.

#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use cairn_api::cairnpb::internal_request::Request;
use cairn_api::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, TxnRequest,
};
use cairn_core::apply::{apply_request, kv};
use cairn_core::lease::{Lessor, MAX_LEASE_TTL};
use cairn_core::mvcc::Store;
use cairn_core::server::validate;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// etcd's default cap on txn operations.
const MAX_TXN_OPS: usize = 128;

struct Fixture {
    store: Arc<Store>,
    index: AtomicU64,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Store::open_database(dir.path()).expect("database");
    let store = Store::open(&db, dir.path(), Arc::new(Lessor::new(2))).expect("store");
    Fixture {
        store,
        index: AtomicU64::new(1),
        _dir: dir,
    }
});

/// The request the edge would propose, or `None` when it answers by itself (a read, or a
/// refusal).
fn edge(kind: u8, body: &[u8], store: &Store) -> Option<Request> {
    match kind % 7 {
        0 => {
            let r = RangeRequest::decode(body).ok()?;
            validate::check_range(&r).ok()?;
            if let Ok(resp) = kv::range(&store.read().expect("read view"), &r) {
                if r.limit > 0 {
                    assert!(resp.kvs.len() as i64 <= r.limit, "limit exceeded");
                }
                assert!(resp.count >= resp.kvs.len() as i64 || r.count_only);
            }
            None
        }
        1 => {
            let p = PutRequest::decode(body).ok()?;
            validate::check_put(&p).ok()?;
            Some(Request::Put(p))
        }
        2 => {
            let d = DeleteRangeRequest::decode(body).ok()?;
            validate::check_delete(&d).ok()?;
            Some(Request::DeleteRange(d))
        }
        3 => {
            let t = TxnRequest::decode(body).ok()?;
            validate::check_txn(&t, MAX_TXN_OPS).ok()?;
            validate::check_duplicates(&t.success).ok()?;
            validate::check_duplicates(&t.failure).ok()?;
            if kv::is_read_only(&t) {
                let view = store.read().expect("read view");
                let _ = kv::txn_read_only(&view, &t, view.compact_rev());
                return None;
            }
            Some(Request::Txn(t))
        }
        4 => Some(Request::Compaction(CompactionRequest::decode(body).ok()?)),
        5 => {
            let mut g = LeaseGrantRequest::decode(body).ok()?;
            if g.ttl > MAX_LEASE_TTL {
                return None;
            }
            if g.id == 0 {
                g.id = 1;
            }
            Some(Request::LeaseGrant(g))
        }
        _ => Some(Request::LeaseRevoke(LeaseRevokeRequest::decode(body).ok()?)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let f = &*FIXTURE;
    let Some(req) = edge(kind, body, &f.store) else {
        return;
    };
    let before = f.store.current_rev();
    let mut wb = f.store.write_batch().expect("write batch");
    let mut changes = Vec::new();
    let _ = apply_request(&mut wb, req, &mut changes);
    let index = f.index.fetch_add(1, Ordering::Relaxed);
    wb.commit(index, 1).expect("commit");
    let after = f.store.current_rev();
    assert!(
        after >= before,
        "revision went back from {before} to {after}"
    );
    for (rev, _) in &changes {
        assert!(
            *rev > before && *rev <= after,
            "event at revision {rev} outside ({before}, {after}]"
        );
    }
});
