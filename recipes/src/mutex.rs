//! A distributed mutex in etcd's layout: each contender creates `<name>/<lease hex>` under
//! its session's lease; the key with the lowest creation revision holds the lock; every other
//! contender waits only for the deletion of the key created just before its own.

use std::time::Duration;

use cairn_client::{
    Client, Compare, GetOptions, Op, PutOptions, SortOrder, SortTarget, Txn, TxnOpResponse,
};

use crate::{guarded_txn, wait_predecessors, Error, Session};

/// See the module docs.
pub struct Mutex<'s> {
    session: &'s Session,
    prefix: String,
    key: String,
}

/// Deletes a contender's key unless disarmed: dropping a `lock` future half-way (timeout,
/// cancellation) leaves nothing behind.
pub(crate) struct Cleanup {
    client: Client,
    key: String,
    rev: i64,
    armed: bool,
}

impl Cleanup {
    /// Guards `key` created at `rev`; `armed` when this call created it.
    pub(crate) fn new(client: &Client, key: &str, rev: i64, armed: bool) -> Cleanup {
        Cleanup {
            client: client.clone(),
            key: key.to_string(),
            rev,
            armed,
        }
    }

    /// The key stays: it now belongs to a guard (or to an earlier call).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Deletes the key now, if this call created it.
    pub(crate) async fn release(&mut self) -> Result<(), Error> {
        if self.armed {
            guarded_txn(&self.client, Cleanup::txn(&self.key, self.rev)).await?;
            self.armed = false;
        }
        Ok(())
    }

    fn txn(key: &str, rev: i64) -> Txn {
        Txn::new()
            .when([Compare::create_revision(key).eq(rev)])
            .and_then([Op::delete(key, None)])
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed || self.rev == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let txn = Cleanup::txn(&self.key, self.rev);
            rt.spawn(async move {
                let _ = guarded_txn(&client, txn).await;
            });
        }
    }
}

impl<'s> Mutex<'s> {
    /// The mutex `name` (a key prefix), contended for by `session`.
    pub fn new(session: &'s Session, name: &str) -> Mutex<'s> {
        let prefix = format!("{}/", name.trim_end_matches('/'));
        let key = format!("{prefix}{:x}", session.lease());
        Mutex {
            session,
            prefix,
            key,
        }
    }

    /// Waits until this session holds the lock.
    pub async fn lock(&self) -> Result<MutexGuard<'s>, Error> {
        self.acquire(true).await
    }

    /// Like [`Mutex::lock`], giving up after `limit` (leaving no trace).
    pub async fn lock_timeout(&self, limit: Duration) -> Result<MutexGuard<'s>, Error> {
        tokio::time::timeout(limit, self.acquire(true))
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Takes the lock only if nobody holds it ([`Error::Locked`] otherwise).
    pub async fn try_lock(&self) -> Result<MutexGuard<'s>, Error> {
        self.acquire(false).await
    }

    async fn acquire(&self, wait: bool) -> Result<MutexGuard<'s>, Error> {
        acquire(self.session, &self.key, &self.prefix, wait).await
    }
}

/// Creates `key` under the session's lease (or keeps its place if the session already
/// contends), then holds once no key under `wait_prefix` was created before it; while it
/// waits it watches only the newest such key. A mutex waits on its own prefix; a reader of
/// an [`RwMutex`](crate::RwMutex) only on the writers'.
pub(crate) async fn acquire<'s>(
    session: &'s Session,
    key: &str,
    wait_prefix: &str,
    wait: bool,
) -> Result<MutexGuard<'s>, Error> {
    let client = session.client();
    let first = || {
        Op::get(
            wait_prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1),
            ),
        )
    };
    let txn = Txn::new()
        .when([Compare::create_revision(key).eq(0)])
        .and_then([
            Op::put(key, "", Some(PutOptions::new().with_lease(session.lease()))),
            first(),
        ])
        .or_else([Op::get(key, None), first()]);
    // A refusal of a retry finds the key in place and keeps it, as for a second `lock`.
    let resp = guarded_txn(client, txn).await?;
    let range = |i: usize| match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(TxnOpResponse::ResponseRange(r)) => Some(r.clone()),
        _ => None,
    };
    let my_rev = if resp.succeeded {
        resp.header.map_or(0, |h| h.revision)
    } else {
        // This session already contends (or holds): keep its place.
        range(0)
            .and_then(|r| r.kvs.first().map(|kv| kv.create_revision))
            .unwrap_or(0)
    };
    let mut cleanup = Cleanup::new(client, key, my_rev, resp.succeeded);
    let first_rev = range(1)
        .and_then(|r| r.kvs.first().map(|kv| kv.create_revision))
        .unwrap_or(i64::MAX);
    if first_rev < my_rev {
        if !wait {
            cleanup.release().await?;
            return Err(Error::Locked);
        }
        // The last check of the wait also finds the key still ours: the wait may have
        // outlasted the session.
        let waited = tokio::select! {
            r = wait_predecessors(client, wait_prefix, key, my_rev) => r,
            _ = session.done() => Err(Error::SessionExpired),
        };
        if let Err(e) = waited {
            if matches!(e, Error::SessionExpired) {
                cleanup.disarm();
            }
            return Err(e);
        }
    }
    cleanup.disarm();
    Ok(MutexGuard::new(session, key, my_rev))
}

/// Proof of holding the lock; releases it when dropped (or on [`MutexGuard::unlock`]).
pub struct MutexGuard<'s> {
    session: &'s Session,
    key: String,
    rev: i64,
    released: bool,
}

impl<'s> MutexGuard<'s> {
    pub(crate) fn new(session: &'s Session, key: &str, rev: i64) -> MutexGuard<'s> {
        MutexGuard {
            session,
            key: key.to_string(),
            rev,
            released: false,
        }
    }

    /// A number that strictly increases from one holder to the next (the creation revision
    /// of the holder's key): give it to the resource you protect, so it can refuse a holder
    /// older than one it has already seen.
    pub fn fencing_token(&self) -> i64 {
        self.rev
    }

    /// The holder's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Keeps the lock beyond this guard: returns the holder's key, whose deletion (or the
    /// session's end) releases the lock.
    pub fn into_key(mut self) -> String {
        self.released = true;
        std::mem::take(&mut self.key)
    }

    /// Releases the lock; the next waiter takes it.
    pub async fn unlock(mut self) -> Result<(), Error> {
        self.released = true;
        guarded_txn(self.session.client(), Cleanup::txn(&self.key, self.rev)).await?;
        Ok(())
    }

    /// Resolves when the lock is no longer held: the session was lost or the key deleted.
    pub async fn lost(&self) {
        crate::session::key_lost(self.session, &self.key, self.rev).await
    }
}

impl Drop for MutexGuard<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        drop(Cleanup {
            client: self.session.client().clone(),
            key: std::mem::take(&mut self.key),
            rev: self.rev,
            armed: true,
        });
    }
}
