//! A session: a lease kept alive in the background, to which recipes attach their keys.

use cairn_client::{Client, LeaseKeeper};

use crate::Error;

/// See the module docs. Dropping a session stops its keep-alives (its keys then go when
/// the lease expires); [`Session::close`] revokes it at once.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// let session = cairn_recipes::Session::new(&client, 10).await?;
/// tokio::spawn(session.done()); // resolves if the lease is ever lost
/// # Ok(()) }
/// ```
pub struct Session {
    client: Client,
    lease: i64,
    ttl: i64,
    /// `None` for a session on a lease someone else keeps alive.
    keeper: Option<LeaseKeeper>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, Error> {
        let granted = client.lease_grant(ttl, 0).await?;
        Ok(Session {
            client: client.clone(),
            lease: granted.id,
            ttl: granted.ttl,
            keeper: Some(client.keep_alive(granted.id, granted.ttl)),
        })
    }

    /// A session on an existing lease that its owner keeps alive (as etcd's
    /// `concurrency.WithLease`); [`Session::done`] then never resolves, and a recipe notices a
    /// lost lease by its keys being gone.
    pub fn with_lease(client: &Client, lease: i64) -> Session {
        Session {
            client: client.clone(),
            lease,
            ttl: 0,
            keeper: None,
        }
    }

    /// The session's lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease's TTL in seconds, as granted.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The client the session uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves when the lease is lost (expired, revoked, unreachable past its TTL).
    pub fn done(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let lost = self.keeper.as_ref().map(|k| k.on_lost());
        async move {
            match lost {
                Some(lost) => {
                    lost.await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Whether the lease has been lost.
    pub fn is_done(&self) -> bool {
        self.keeper.as_ref().is_some_and(|k| k.is_lost())
    }

    /// Revokes the lease: every key of the session is deleted now.
    pub async fn close(self) -> Result<(), Error> {
        match self.client.lease_revoke(self.lease).await {
            Ok(_) | Err(cairn_client::Error::LeaseNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Resolves when the key `session` created at `rev` is gone (deleted, or gone with the
/// lease) or the session is lost: what a holder's `lost()` waits for. A failed watch counts
/// as lost, since nothing then proves the key is still there.
pub(crate) async fn key_lost(session: &Session, key: &str, rev: i64) {
    use cairn_client::{EventType, WatchOptions};
    use futures::StreamExt;
    let mut watch = session.client().watch(
        key,
        Some(
            WatchOptions::new()
                .with_start_revision(rev + 1)
                .without_puts(),
        ),
    );
    let deleted = async {
        while let Some(batch) = watch.next().await {
            match batch {
                Ok(b)
                    if b.events
                        .iter()
                        .any(|e| e.r#type == EventType::Delete as i32) =>
                {
                    return
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = deleted => {}
        _ = session.done() => {}
    }
}
