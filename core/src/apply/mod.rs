//! The apply loop: the only writer of the MVCC store.
//!
//! It receives committed raft entries in log order, applies each batch in one store write
//! batch together with the applied index (so a restart replays exactly what was not
//! applied), publishes the applied index and the batch's events (to the watch hub), then
//! answers the requests waiting on this member.

pub mod kv;

use std::sync::mpsc;
use std::sync::Arc;

use cairn_api::cairnpb::{internal_request::Request, InternalRequest};
use cairn_api::etcdserverpb::{
    DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse, ResponseHeader,
    TxnResponse,
};
use cairn_api::mvccpb::KeyValue;
use prost::Message;
use raft::eraftpb::{Entry, EntryType};
use tokio::sync::watch;

use crate::error::Error;
use crate::mvcc::{Store, WriteBatch, WriteTxn};
use crate::wait::{ApplyResult, Waiters};
use crate::watch::WatchHub;

/// The outcome of applying one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// Compaction done; the store's revision at that point.
    Compaction(i64),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

/// A response kind the apply loop produces, carrying a header the gRPC edge completes.
pub trait Answer: Sized {
    /// The response, if `a` is of this kind.
    fn from_applied(a: Applied) -> Option<Self>;
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! answer {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl Answer for $ty {
            fn from_applied(a: Applied) -> Option<Self> {
                match a {
                    Applied::$variant(r) => Some(r),
                    _ => None,
                }
            }
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

answer!(
    Put => PutResponse,
    DeleteRange => DeleteRangeResponse,
    Txn => TxnResponse,
    LeaseGrant => LeaseGrantResponse,
    LeaseRevoke => LeaseRevokeResponse,
);

/// The changes of one revision, in the order they were made.
pub type Changes = (i64, Vec<KeyValue>);

pub struct Applier {
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Sender<u64>,
    pub hub: Arc<WatchHub>,
}

impl Applier {
    /// Applies batches until the raft loop hangs up or storage fails.
    pub fn run(self, batches: mpsc::Receiver<Vec<Entry>>) {
        while let Ok(entries) = batches.recv() {
            if let Err(e) = self.apply(entries) {
                // Continuing would let this member diverge from the log; stop applying.
                tracing::error!(error = %e, "apply failed; member stops applying");
                return;
            }
        }
    }

    fn apply(&self, entries: Vec<Entry>) -> Result<(), Error> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut wb = self.store.write_batch();
        let mut answers = Vec::new();
        let mut changes = Vec::new();
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            let req = match InternalRequest::decode(e.data.as_ref()) {
                Ok(r) => r,
                Err(err) => {
                    // Only this member's own encoder writes entries: a bad one is a bug,
                    // and skipping it keeps every member equally consistent.
                    tracing::error!(index = e.index, error = %err, "undecodable raft entry skipped");
                    continue;
                }
            };
            let Some(request) = req.request else {
                tracing::warn!(index = e.index, "raft entry without a request skipped");
                continue;
            };
            let result = apply_request(&mut wb, request, &mut changes);
            if let Err(Error::Storage(_) | Error::Corrupt(_)) = &result {
                return result.map(|_| ());
            }
            answers.push((req.id, result));
        }
        wb.commit(last)?;
        self.applied.send_replace(last);
        // Watchers may read these revisions back from storage: publish after the commit.
        self.hub.publish(changes);
        for (id, result) in answers {
            self.waiters.trigger(id, result);
        }
        Ok(())
    }
}

/// Runs one request in its own write transaction; a failed request changes nothing.
fn in_txn<R>(
    wb: &mut WriteBatch<'_>,
    changes: &mut Vec<Changes>,
    f: impl FnOnce(&mut WriteTxn<'_, '_>) -> Result<R, Error>,
    wrap: fn(R) -> Applied,
) -> ApplyResult {
    let mut txn = wb.txn();
    match f(&mut txn) {
        Ok(r) => {
            let made = txn.end();
            if !made.is_empty() {
                changes.push((wb.current_rev(), made));
            }
            Ok(wrap(r))
        }
        Err(e) => {
            txn.abort();
            Err(e)
        }
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

fn apply_request(wb: &mut WriteBatch<'_>, req: Request, changes: &mut Vec<Changes>) -> ApplyResult {
    match req {
        Request::Put(p) => {
            kv::check_lease(wb.lessor(), p.lease)?;
            in_txn(wb, changes, |t| kv::put(t, p), Applied::Put)
        }
        Request::DeleteRange(d) => in_txn(
            wb,
            changes,
            |t| kv::delete_range(t, &d),
            Applied::DeleteRange,
        ),
        // A put with ignore_value/ignore_lease can find its key deleted by an earlier op of
        // the same txn; the whole txn then fails with `key not found` and changes nothing.
        Request::Txn(t) => in_txn(wb, changes, |w| kv::txn(w, t), Applied::Txn),
        Request::Compaction(c) => {
            if c.revision <= wb.compact_rev() {
                return Err(Error::Compacted);
            }
            if c.revision > wb.current_rev() {
                return Err(Error::FutureRev);
            }
            wb.compact(c.revision)?;
            Ok(Applied::Compaction(wb.current_rev()))
        }
        Request::LeaseGrant(g) => {
            let ttl = wb.grant_lease(g.id, g.ttl)?;
            Ok(Applied::LeaseGrant(LeaseGrantResponse {
                header: header(wb.current_rev()),
                id: g.id,
                ttl,
                error: String::new(),
            }))
        }
        Request::LeaseRevoke(r) => {
            let made = wb.revoke_lease(r.id)?;
            if !made.is_empty() {
                changes.push((wb.current_rev(), made));
            }
            Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
                header: header(wb.current_rev()),
            }))
        }
    }
}
