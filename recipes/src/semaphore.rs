//! A counting semaphore: each holder or waiter creates `<name>/<lease hex>` under its
//! session's lease, and holds a permit once fewer than `n` keys were created before its own,
//! so permits go out in arrival order. A waiter is woken only by the release of one of the
//! `n` keys created just before its own (one of them must go before it can hold).

use std::time::Duration;

use std::collections::HashSet;

use cairn_client::{
    EventType, GetOptions, Op, PutOptions, SortOrder, SortTarget, Txn, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::mutex::Cleanup;
use crate::{Error, MutexGuard, Session};

/// See the module docs.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// // At most three report jobs at a time across the fleet.
/// let slots = cairn_recipes::Semaphore::new(&session, "semaphores/reports", 3);
/// let permit = slots.acquire().await?;
/// // ... run the job ...
/// permit.unlock().await?;
/// # Ok(()) }
/// ```
pub struct Semaphore<'s> {
    session: &'s Session,
    prefix: String,
    key: String,
    permits: i64,
}

impl<'s> Semaphore<'s> {
    /// The semaphore `name` (a key prefix) with `permits` permits. Every user of one name
    /// must agree on `permits`.
    pub fn new(session: &'s Session, name: &str, permits: u32) -> Semaphore<'s> {
        let prefix = format!("{}/", name.trim_end_matches('/'));
        Semaphore {
            session,
            key: format!("{prefix}{:x}", session.lease()),
            prefix,
            permits: i64::from(permits.max(1)),
        }
    }

    /// Waits for a permit.
    pub async fn acquire(&self) -> Result<MutexGuard<'s>, Error> {
        self.take(true).await
    }

    /// Like [`Semaphore::acquire`], giving up after `limit` (leaving no trace).
    pub async fn acquire_timeout(&self, limit: Duration) -> Result<MutexGuard<'s>, Error> {
        tokio::time::timeout(limit, self.take(true))
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Takes a permit only if one is free now ([`Error::Locked`] otherwise).
    pub async fn try_acquire(&self) -> Result<MutexGuard<'s>, Error> {
        self.take(false).await
    }

    async fn take(&self, wait: bool) -> Result<MutexGuard<'s>, Error> {
        let client = self.session.client();
        let key = self.key.as_str();
        let txn = Txn::new()
            .when([cairn_client::Compare::create_revision(key).eq(0)])
            .and_then([Op::put(
                key,
                "",
                Some(PutOptions::new().with_lease(self.session.lease())),
            )])
            .or_else([Op::get(key, None)]);
        let resp = crate::guarded_txn(client, txn).await?;
        let my_rev = if resp.succeeded {
            resp.header.map_or(0, |h| h.revision)
        } else {
            match resp.responses.first().and_then(|r| r.response.as_ref()) {
                Some(TxnOpResponse::ResponseRange(r)) => {
                    r.kvs.first().map_or(0, |kv| kv.create_revision)
                }
                _ => 0,
            }
        };
        let mut cleanup = Cleanup::new(client, key, my_rev, resp.succeeded);
        loop {
            // A permit is ours once fewer than `permits` keys came before ours; while at
            // least that many do, one of the `permits` nearest must go first, so only their
            // deletions wake this waiter.
            let before = client
                .get(
                    self.prefix.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_max_create_revision(my_rev - 1)
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(self.permits)
                            .with_keys_only(),
                    ),
                )
                .await?;
            // Not `count`: like etcd, it counts the whole range before the revision filter.
            if (before.kvs.len() as i64) < self.permits {
                break;
            }
            if !wait {
                cleanup.release().await?;
                return Err(Error::Locked);
            }
            let nearest: HashSet<Vec<u8>> = before.kvs.into_iter().map(|kv| kv.key).collect();
            let at = before.header.map_or(0, |h| h.revision);
            let mut watch = client.watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(at + 1)
                        .without_puts(),
                ),
            );
            let released = async {
                while let Some(batch) = watch.next().await {
                    let batch = batch?;
                    let freed = batch.events.iter().any(|e| {
                        e.r#type == EventType::Delete as i32
                            && e.kv.as_ref().is_some_and(|kv| nearest.contains(&kv.key))
                    });
                    if freed {
                        break;
                    }
                }
                Ok::<(), Error>(())
            };
            tokio::select! {
                r = released => r?,
                _ = self.session.done() => return Err(Error::SessionExpired),
            }
        }
        let still = client.get(key, None).await?;
        if still.kvs.first().map(|kv| kv.create_revision) != Some(my_rev) {
            cleanup.disarm();
            return Err(Error::SessionExpired);
        }
        cleanup.disarm();
        Ok(MutexGuard::new(self.session, key, my_rev))
    }
}
