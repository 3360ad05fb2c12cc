//! Group membership (Curator's GroupMember): each member is a key `<group>/<id>` holding
//! its payload, attached to its session's lease, so a member whose process dies leaves the
//! group when its lease expires. Every member (and any observer) keeps the live list in a
//! [`Cache`] of the group's prefix.

use std::collections::BTreeMap;

use cairn_client::{Client, PutOptions};
use futures::Stream;

use crate::{Cache, CacheEvent, Error, Session};

/// See the module docs. Dropping it stops following the group; the membership itself lasts
/// as long as the session (or until [`GroupMember::leave`]).
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::GroupMember;
/// let me = GroupMember::join(&session, "groups/workers", "worker-7", "10.0.0.7").await?;
/// for (id, payload) in me.members() {
///     println!("{id}: {}", String::from_utf8_lossy(&payload));
/// }
/// # Ok(()) }
/// ```
pub struct GroupMember {
    client: Client,
    key: String,
    lease: i64,
    view: GroupView,
}

/// The live membership of a group, for observers that are not members.
pub struct GroupView {
    prefix: String,
    cache: Cache,
}

impl GroupView {
    /// Follows the group `group` (a key prefix).
    pub async fn new(client: &Client, group: &str) -> Result<GroupView, Error> {
        let prefix = format!("{}/", group.trim_end_matches('/'));
        let cache = Cache::new(client, prefix.as_str()).await?;
        Ok(GroupView { prefix, cache })
    }

    /// The members now, id → payload.
    pub fn members(&self) -> BTreeMap<String, Vec<u8>> {
        self.cache
            .snapshot()
            .kvs
            .into_iter()
            .map(|kv| {
                let id = String::from_utf8_lossy(&kv.key[self.prefix.len()..]).into_owned();
                (id, kv.value)
            })
            .collect()
    }

    /// Joins, leaves and payload changes from now on (keys are `<group>/<id>`).
    pub fn changes(&self) -> impl Stream<Item = CacheEvent> + Send + 'static {
        self.cache.changes()
    }

    /// The cache behind the view (its revision, read-your-writes waits).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl GroupMember {
    /// Joins `group` as `id` with `payload`, for as long as `session` lives.
    pub async fn join(
        session: &Session,
        group: &str,
        id: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<GroupMember, Error> {
        let client = session.client().clone();
        let view = GroupView::new(&client, group).await?;
        let key = format!("{}{id}", view.prefix);
        let member = GroupMember {
            client,
            key,
            lease: session.lease(),
            view,
        };
        member.set_payload(payload).await?;
        Ok(member)
    }

    /// Changes this member's payload; returns the revision it was stored at.
    pub async fn set_payload(&self, payload: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let put = cairn_client::Op::put(
            self.key.as_str(),
            payload,
            Some(PutOptions::new().with_lease(self.lease)),
        );
        let resp =
            crate::guarded_txn(&self.client, cairn_client::Txn::new().and_then([put])).await?;
        // Its own membership is in the view before this returns.
        let revision = resp.header.map_or(0, |h| h.revision);
        self.view.cache.wait_for_revision(revision).await?;
        Ok(revision)
    }

    /// The members now, id → payload (this one included).
    pub fn members(&self) -> BTreeMap<String, Vec<u8>> {
        self.view.members()
    }

    /// Joins, leaves and payload changes from now on.
    pub fn changes(&self) -> impl Stream<Item = CacheEvent> + Send + 'static {
        self.view.changes()
    }

    /// The live view of the group.
    pub fn view(&self) -> &GroupView {
        &self.view
    }

    /// Leaves the group now (rather than when the session ends).
    pub async fn leave(self) -> Result<(), Error> {
        crate::idempotent(
            &self.client,
            [cairn_client::Op::delete(self.key.as_str(), None)],
        )
        .await
    }
}
