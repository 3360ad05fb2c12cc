//! `cairn-recipes`: coordination recipes built only on `cairn-client`'s public API, so they
//! also run against a real etcd, and use etcd's key layout (`<prefix>/<lease id in hex>`) so
//! they interoperate with etcd's own concurrency clients.
//!
//! - [`Session`]: a lease kept alive in the background; everything a recipe creates is
//!   attached to it and goes away with it.
//! - [`Mutex`]: waiters queue by creation revision and each waits only for its predecessor;
//!   the holder gets a fencing token that strictly increases across holders.
//! - [`Election`]: campaign, proclaim, resign, leader, observe.
//! - [`Queue`]: FIFO work items, each taken by exactly one consumer.
//! - [`ServiceRegistry`]: instances registered with a heartbeat lease; discovery and a
//!   stream of added/updated/removed instances.
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_recipes::Error> {
//! use cairn_client::{Client, ClientOptions};
//! use cairn_recipes::{Mutex, Session};
//! let client = Client::connect(["127.0.0.1:2379"], ClientOptions::default()).await?;
//! let session = Session::new(&client, 10).await?;
//! let mutex = Mutex::new(&session, "locks/report");
//! let guard = mutex.lock().await?;
//! // Pass guard.fencing_token() to the resource you protect, so it can refuse older holders.
//! guard.unlock().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod election;
mod mutex;
mod queue;
mod registry;
mod session;

pub use election::{Election, Leadership};
pub use mutex::{Mutex, MutexGuard};
pub use queue::Queue;
pub use registry::{Instance, InstanceEvent, ServiceRegistry};
pub use session::Session;

/// What a recipe can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The cluster answered with an error, or could not be reached.
    #[error(transparent)]
    Client(#[from] cairn_client::Error),
    /// `try_lock` found the mutex held.
    #[error("mutex is locked by another session")]
    Locked,
    /// The wait took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The session's lease is gone: nothing it held is held any more.
    #[error("session expired")]
    SessionExpired,
    /// The caller is not (or no longer) the leader.
    #[error("election: not leader")]
    NotLeader,
    /// Nobody leads the election.
    #[error("election: no leader")]
    NoLeader,
}

/// Key and revision of the last key under `prefix` created before `rev`, if any.
async fn last_before(
    client: &cairn_client::Client,
    prefix: &str,
    rev: i64,
) -> Result<Option<(Vec<u8>, i64)>, Error> {
    use cairn_client::{GetOptions, SortOrder, SortTarget};
    let r = client
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_max_create_revision(rev - 1)
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(1),
            ),
        )
        .await?;
    let header_rev = r.header.map_or(0, |h| h.revision);
    Ok(r.kvs.into_iter().next().map(|kv| (kv.key, header_rev)))
}

/// Waits until every key under `prefix` created before `rev` is gone, watching only the
/// newest such key each time (so a release wakes exactly one waiter: no herd).
async fn wait_predecessors(
    client: &cairn_client::Client,
    prefix: &str,
    rev: i64,
) -> Result<(), Error> {
    use cairn_client::{EventType, WatchOptions};
    use futures::StreamExt;
    while let Some((key, at)) = last_before(client, prefix, rev).await? {
        let mut watch = client.watch(
            key,
            Some(
                WatchOptions::new()
                    .with_start_revision(at + 1)
                    .without_puts(),
            ),
        );
        loop {
            match watch.next().await {
                Some(Ok(batch))
                    if batch
                        .events
                        .iter()
                        .any(|e| e.r#type == EventType::Delete as i32) =>
                {
                    break
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
    }
    Ok(())
}
