//! Barriers. A [`Barrier`] is one key: while it exists, [`Barrier::wait`] blocks; deleting
//! it lets every waiter through. A [`DoubleBarrier`] gathers `n` participants before any
//! starts (`enter`) and lets none finish until all have (`leave`).

use cairn_client::{
    Client, Compare, GetOptions, Op, PutOptions, SortOrder, SortTarget, Txn, WatchOptions,
};
use futures::StreamExt;

use crate::mutex::Cleanup;
use crate::{Error, Session};

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// let gate = cairn_recipes::Barrier::new(client, "barriers/deploy");
/// gate.hold().await?;
/// // ... elsewhere, workers call gate.wait().await? and block ...
/// gate.release().await?; // every waiter proceeds
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    client: Client,
    key: String,
}

impl Barrier {
    /// The barrier at `key`.
    pub fn new(client: Client, key: &str) -> Barrier {
        Barrier {
            client,
            key: key.to_string(),
        }
    }

    /// Raises the barrier; false if it was already up.
    pub async fn hold(&self) -> Result<bool, Error> {
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([Compare::create_revision(key).eq(0)])
            .and_then([Op::put(key, "", None)]);
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Lowers the barrier: every waiter proceeds.
    pub async fn release(&self) -> Result<(), Error> {
        crate::idempotent(&self.client, [Op::delete(self.key.as_str(), None)]).await?;
        Ok(())
    }

    /// Waits while the barrier is up.
    pub async fn wait(&self) -> Result<(), Error> {
        wait_deleted(&self.client, &self.key).await
    }
}

/// Waits until `key` does not exist.
async fn wait_deleted(client: &Client, key: &str) -> Result<(), Error> {
    let r = client.get(key, None).await?;
    if r.kvs.is_empty() {
        return Ok(());
    }
    crate::deletion(client, key, r.header.map_or(0, |h| h.revision)).await
}

/// See the module docs. Participants are keys `<name>/waiters/<lease hex>` under their
/// sessions' leases, so a participant that dies leaves; the `n`-th to enter creates
/// `<name>/ready`, which lets everyone in, and the last to leave deletes it.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// let stage = cairn_recipes::DoubleBarrier::new(&session, "barriers/stage-1", 4);
/// stage.enter().await?; // returns once all four have entered
/// // ... work alongside the other three ...
/// stage.leave().await?; // returns once all four have left
/// # Ok(()) }
/// ```
pub struct DoubleBarrier<'s> {
    session: &'s Session,
    waiters: String,
    ready: String,
    me: String,
    count: i64,
}

impl<'s> DoubleBarrier<'s> {
    /// The barrier `name` for `count` participants (every participant must agree on it).
    pub fn new(session: &'s Session, name: &str, count: u32) -> DoubleBarrier<'s> {
        let name = name.trim_end_matches('/');
        let waiters = format!("{name}/waiters/");
        DoubleBarrier {
            me: format!("{waiters}{:x}", session.lease()),
            waiters,
            ready: format!("{name}/ready"),
            session,
            count: i64::from(count.max(1)),
        }
    }

    /// Joins, and waits until `count` participants have joined. A participant beyond
    /// `count` gets [`Error::TooManyParticipants`] and leaves no key behind.
    pub async fn enter(&self) -> Result<(), Error> {
        let client = self.session.client();
        let me = self.me.as_str();
        let put = Op::put(
            me,
            "",
            Some(PutOptions::new().with_lease(self.session.lease())),
        );
        let txn = Txn::new()
            .when([Compare::create_revision(me).eq(0)])
            .and_then([put]);
        let created = crate::guarded_txn(client, txn).await?;
        // Dropping `enter` half-way takes the participant out again.
        let rev = created.header.map_or(0, |h| h.revision);
        let mut cleanup = Cleanup::new(client, me, rev, created.succeeded);
        let joined = self.participants().await?;
        let position = joined.kvs.iter().position(|kv| kv.key == me.as_bytes());
        let Some(position) = position else {
            return Err(Error::SessionExpired);
        };
        if position as i64 >= self.count {
            // Joined a barrier that is already full: leave again.
            cleanup.release().await?;
            return Err(Error::TooManyParticipants);
        }
        if joined.kvs.len() as i64 >= self.count {
            crate::idempotent(client, [Op::put(self.ready.as_str(), "", None)]).await?;
            cleanup.disarm();
            return Ok(());
        }
        let at = joined.header.map_or(0, |h| h.revision);
        let mut watch = client.watch(
            self.ready.as_str(),
            Some(
                WatchOptions::new()
                    .with_start_revision(at + 1)
                    .without_deletes(),
            ),
        );
        let ready = async {
            while let Some(batch) = watch.next().await {
                if !batch?.events.is_empty() {
                    break;
                }
            }
            Ok::<(), Error>(())
        };
        tokio::select! {
            r = ready => r?,
            _ = self.session.done() => return Err(Error::SessionExpired),
        }
        cleanup.disarm();
        Ok(())
    }

    /// The participants' keys in arrival order.
    async fn participants(&self) -> Result<cairn_client::RangeResponse, Error> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        Ok(self
            .session
            .client()
            .get(self.waiters.as_str(), Some(options))
            .await?)
    }

    /// Leaves, and waits until every participant has left.
    pub async fn leave(&self) -> Result<(), Error> {
        let client = self.session.client();
        let me = self.me.as_bytes();
        loop {
            let left = self.participants().await?;
            let (Some(lowest), Some(highest)) = (left.kvs.first(), left.kvs.last()) else {
                return Ok(());
            };
            if left.kvs.len() == 1 && lowest.key == me {
                // The last one out takes the ready key down for the next round.
                let txn = Txn::new().and_then([
                    Op::delete(self.me.as_str(), None),
                    Op::delete(self.ready.as_str(), None),
                ]);
                crate::guarded_txn(client, txn).await?;
                return Ok(());
            }
            // The lowest waits for the highest; everyone else leaves and waits for the
            // lowest, so each departure wakes one participant, not all.
            let wait_for = if lowest.key == me {
                highest.key.clone()
            } else {
                if left.kvs.iter().any(|kv| kv.key == me) {
                    crate::idempotent(client, [Op::delete(self.me.as_str(), None)]).await?;
                }
                lowest.key.clone()
            };
            let key = String::from_utf8_lossy(&wait_for).into_owned();
            tokio::select! {
                r = wait_deleted(client, &key) => r?,
                _ = self.session.done() => return Err(Error::SessionExpired),
            }
        }
    }
}
