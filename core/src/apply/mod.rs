//! The apply loop: the only writer of the MVCC store.
//!
//! It receives committed raft entries in log order, applies each batch in one store write
//! batch together with the applied index (so a restart replays exactly what was not
//! applied), publishes the applied index and the batch's events (to the watch hub), then
//! answers the requests waiting on this member.
//!
//! Configuration changes were already applied to raft by the raft thread (in log order);
//! here they change the stored membership, together with the configuration raft reported.

pub mod kv;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use cairn_api::cairnpb::{
    internal_request::Request, ClusterState, ConfChangeContext, InternalRequest,
};
use cairn_api::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmResponse, AlarmType, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, Member, PutResponse, ResponseHeader, TxnResponse,
};
use cairn_api::mvccpb::KeyValue;
use prost::Message;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};
use tokio::sync::watch;

use self::kv::header;
use crate::auth::{AuthApplied, AuthInfo};
use crate::error::Error;
use crate::membership::{self, Membership};
use crate::mvcc::{Store, WriteBatch, WriteTxn};
use crate::raft::snapshot::read_records;
use crate::wait::{ApplyResult, Waiters};
use crate::watch::WatchHub;

/// What the raft thread hands the apply loop.
pub enum ApplyTask {
    /// Committed entries in log order, with the configuration raft adopted at each
    /// configuration change among them (`None`: raft refused the change).
    Entries {
        entries: Vec<Entry>,
        conf_states: HashMap<u64, Option<ConfState>>,
    },
    /// Replace the state with the snapshot in this file; answer when it is durable.
    Snapshot {
        path: PathBuf,
        done: mpsc::Sender<Result<(), Error>>,
    },
}

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
    /// A membership change took effect; the members after it.
    Members(Vec<Member>),
    /// An alarm was raised or cleared: the alarms that changed.
    Alarm(AlarmResponse),
    /// Expired leases were revoked: how many were still there.
    Expired(usize),
    /// An auth change or login took effect.
    Auth(AuthApplied),
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
    Alarm => AlarmResponse,
);

/// Why a member stopped on its own (see `Server::halted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// A membership change removed this member from the cluster.
    Removed,
    /// Applying the log failed (a storage error, or a bug that panicked the apply thread);
    /// continuing would let this member diverge, so it stops.
    ApplyFailed(String),
}

/// The changes of one revision, in the order they were made.
pub type Changes = (i64, Vec<KeyValue>);

pub struct Applier {
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Sender<u64>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    /// Set when this member stops on its own: removed from the cluster, or apply failed.
    pub halt: watch::Sender<Option<Halt>>,
}

impl Applier {
    /// Applies batches until the raft loop hangs up or storage fails.
    pub fn run(self, tasks: mpsc::Receiver<ApplyTask>) {
        while let Ok(task) = tasks.recv() {
            let result = match task {
                ApplyTask::Entries {
                    entries,
                    conf_states,
                } => self.apply(entries, conf_states),
                ApplyTask::Snapshot { path, done } => {
                    let r = self.restore(&path);
                    let _ = done.send(r.clone());
                    r
                }
            };
            if let Err(e) = result {
                // Continuing would let this member diverge from the log; stop applying.
                tracing::error!(error = %e, "apply failed; this member stops");
                self.halt.send_replace(Some(Halt::ApplyFailed(format!(
                    "applying the log failed: {e}"
                ))));
                return;
            }
        }
    }

    fn restore(&self, path: &std::path::Path) -> Result<(), Error> {
        self.store.restore(read_records(path)?)?;
        if let Some(state) = self.store.members()? {
            self.membership.replace(state);
        }
        let (index, _) = self.store.applied();
        self.applied.send_replace(index);
        self.hub.restored(self.store.current_rev());
        tracing::info!(index, rev = self.store.current_rev(), "snapshot restored");
        Ok(())
    }

    fn apply(
        &self,
        entries: Vec<Entry>,
        conf_states: HashMap<u64, Option<ConfState>>,
    ) -> Result<(), Error> {
        let Some((last, last_term)) = entries.last().map(|e| (e.index, e.term)) else {
            return Ok(());
        };
        let mut wb = self.store.write_batch()?;
        let mut answers = Vec::new();
        let mut changes = Vec::new();
        let mut members: Option<ClusterState> = None;
        let mut removed_self = false;
        for e in &entries {
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                let state = members.get_or_insert_with(|| self.membership.state());
                let cs = conf_states.get(&e.index).cloned().flatten();
                let (id, result) = apply_conf_change(&mut wb, state, &e.data, cs);
                removed_self |= state.removed.contains(&self.membership.local_id);
                answers.push((id, result));
                continue;
            }
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
            let result = match request {
                Request::MemberAttributes(a) => {
                    let state = members.get_or_insert_with(|| self.membership.state());
                    membership::apply::set_attributes(state, a.id, &a.name, &a.client_urls);
                    wb.set_membership(None, state);
                    Ok(Applied::Members(state.members.clone()))
                }
                Request::MemberUpdate(u) => {
                    let state = members.get_or_insert_with(|| self.membership.state());
                    membership::apply::set_peer_urls(state, u.id, &u.peer_ur_ls);
                    wb.set_membership(None, state);
                    Ok(Applied::Members(state.members.clone()))
                }
                request => {
                    let who = req.header.as_ref().map(AuthInfo::from_header);
                    apply_request(&mut wb, request, who.as_ref(), e.index, &mut changes)
                }
            };
            if let Err(Error::Storage(_) | Error::Corrupt(_)) = &result {
                return result.map(|_| ());
            }
            answers.push((req.id, result));
        }
        let started = std::time::Instant::now();
        wb.commit(last, last_term)?;
        crate::metrics::METRICS
            .backend_commit
            .observe(crate::metrics::seconds(started.elapsed()));
        if let Some(state) = members {
            self.membership.replace(state);
        }
        self.applied.send_replace(last);
        // Watchers may read these revisions back from storage: publish after the commit.
        self.hub.publish(changes);
        for (id, result) in answers {
            self.waiters.trigger(id, result);
        }
        // After the answers, so a member asked to remove itself still replies.
        if removed_self {
            tracing::warn!("this member was removed from the cluster");
            self.halt.send_replace(Some(Halt::Removed));
        }
        Ok(())
    }
}

/// Records a configuration change raft has adopted (`cs`) in the membership; returns the
/// waiting request's id and its answer.
fn apply_conf_change(
    wb: &mut WriteBatch<'_>,
    state: &mut ClusterState,
    data: &[u8],
    cs: Option<ConfState>,
) -> (u64, ApplyResult) {
    let Ok(cc) = ConfChangeV2::parse_from_bytes(data) else {
        return (0, Err(Error::Corrupt("configuration change entry".into())));
    };
    let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
    let Some(cs) = cs else {
        return (ctx.request_id, Err(Error::MemberNotFound));
    };
    for change in cc.get_changes() {
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode if state.members.iter().any(|m| m.id == id) => {
                membership::apply::promote(state, id)
            }
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let mut m = ctx.member.clone().unwrap_or_default();
                m.id = id;
                m.is_learner = change.get_change_type() == ConfChangeType::AddLearnerNode;
                membership::apply::add(state, m);
            }
            ConfChangeType::RemoveNode => membership::apply::remove(state, id),
        }
    }
    // Encoding a message into a Vec cannot fail.
    let encoded = cs.write_to_bytes().ok();
    wb.set_membership(encoded, state);
    (ctx.request_id, Ok(Applied::Members(state.members.clone())))
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

/// Whether a request adds data, which the NOSPACE alarm refuses (etcd's capped applier:
/// puts, txns with a put, lease grants; deletions, compaction and revocations still go, so
/// space can be freed). Unlike etcd 3.4, a put in a nested txn counts too.
fn adds_data(req: &Request) -> bool {
    match req {
        Request::Put(_) | Request::LeaseGrant(_) => true,
        Request::Txn(t) => kv::has_put(t),
        _ => false,
    }
}

/// Whether a request changes the store, which the CORRUPT alarm refuses (etcd's corrupt
/// applier); reads, alarms and membership still go.
fn changes_store(req: &Request) -> bool {
    match req {
        Request::Put(_)
        | Request::DeleteRange(_)
        | Request::Compaction(_)
        | Request::LeaseGrant(_)
        | Request::LeaseRevoke(_)
        | Request::LeaseExpiry(_) => true,
        Request::Txn(t) => !kv::is_read_only(t),
        _ => false,
    }
}

/// Whether `who` may make this write, against the auth state at this point in the log
/// (so every member decides alike). Reads were checked by the member that served them.
fn check_auth(wb: &WriteBatch<'_>, who: &AuthInfo, req: &Request) -> Result<(), Error> {
    let auth = wb.store().auth();
    if !auth.is_enabled() {
        return Ok(());
    }
    match req {
        Request::Put(p) => auth.check_put(who, p, wb.lessor()),
        Request::DeleteRange(d) => auth.check_delete(who, d),
        Request::Txn(t) => auth.check_txn(who, t, wb.lessor()),
        Request::LeaseRevoke(r) => auth.check_lease_keys(who, r.id, wb.lessor()),
        // Auth changes check the administrator themselves; compaction, lease grants and
        // alarms need no permission in etcd.
        _ => Ok(()),
    }
}

/// Applies one request in `wb` at raft index `index`, collecting the events it made in
/// `changes`; `who` made it (None: the member itself). Public for the fuzz target
/// (`fuzz/`), which drives the handlers without raft.
pub fn apply_request(
    wb: &mut WriteBatch<'_>,
    req: Request,
    who: Option<&AuthInfo>,
    index: u64,
    changes: &mut Vec<Changes>,
) -> ApplyResult {
    // Every member refuses the same entries, whichever member raised the alarm; as etcd's
    // capped applier wraps its auth applier, the quota comes first.
    if changes_store(&req) && wb.alarmed(AlarmType::Corrupt) {
        return Err(Error::CorruptCluster);
    }
    if adds_data(&req) && wb.alarmed(AlarmType::Nospace) {
        return Err(Error::NoSpace);
    }
    if let Some(who) = who {
        check_auth(wb, who, &req)?;
    }
    match req {
        Request::Auth(a) => {
            let store = wb.store();
            let applied = store.auth().apply(a, who, index, wb.batch_mut())?;
            Ok(Applied::Auth(applied))
        }
        Request::Alarm(a) => {
            let alarm = AlarmMember {
                member_id: a.member_id,
                alarm: a.alarm,
            };
            let on = a.action == AlarmAction::Activate as i32;
            let changed = wb.set_alarm(alarm, on);
            // As etcd: raising an alarm already raised answers with it; clearing one that
            // is not, with nothing.
            let answer = if on { Some(alarm) } else { changed };
            if let Some(a) = &changed {
                tracing::warn!(
                    member = format!("{:x}", a.member_id),
                    alarm = a.alarm,
                    on,
                    "alarm"
                );
            }
            Ok(Applied::Alarm(AlarmResponse {
                header: header(wb.current_rev()),
                alarms: answer.into_iter().collect(),
            }))
        }
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
            wb.compact(c.revision);
            Ok(Applied::Compaction(wb.current_rev()))
        }
        Request::LeaseGrant(g) => {
            let ttl = wb.grant_lease(g.id, g.ttl)?;
            crate::metrics::METRICS.leases_granted.inc();
            Ok(Applied::LeaseGrant(LeaseGrantResponse {
                header: header(wb.current_rev()),
                id: g.id,
                ttl,
                error: String::new(),
            }))
        }
        // Membership requests are applied by the caller, which holds the membership.
        Request::MemberAttributes(_) | Request::MemberUpdate(_) => Ok(Applied::Members(vec![])),
        Request::LeaseExpiry(x) => {
            let mut revoked = 0;
            for id in x.ids {
                match wb.revoke_lease(id) {
                    Ok(made) => {
                        revoked += 1;
                        if !made.is_empty() {
                            changes.push((wb.current_rev(), made));
                        }
                    }
                    // Revoked (or never granted) in the meantime.
                    Err(Error::LeaseNotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            crate::metrics::METRICS
                .leases_revoked
                .inc_by(revoked as u64);
            crate::metrics::METRICS
                .leases_expired
                .inc_by(revoked as u64);
            Ok(Applied::Expired(revoked))
        }
        Request::LeaseRevoke(r) => {
            let made = wb.revoke_lease(r.id)?;
            crate::metrics::METRICS.leases_revoked.inc();
            if !made.is_empty() {
                changes.push((wb.current_rev(), made));
            }
            Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
                header: header(wb.current_rev()),
            }))
        }
    }
}
