//! `cairn-recipes`: coordination recipes built only on `cairn-client`'s public API, so they
//! also run against a real etcd, and use etcd's key layout (`<prefix>/<lease id in hex>`) so
//! they interoperate with etcd's own concurrency clients.
//!
//! - [`Session`]: a lease kept alive in the background; everything a recipe creates is
//!   attached to it and goes away with it.
//! - [`Mutex`]: waiters queue by creation revision and each waits only for its predecessor;
//!   the holder gets a fencing token that strictly increases across holders.
//! - [`RwMutex`]: shared readers, exclusive writers, in arrival order.
//! - [`Semaphore`]: up to `n` holders at once, in arrival order.
//! - [`Election`]: campaign, proclaim, resign, leader, observe.
//! - [`Barrier`] (hold, release, wait) and [`DoubleBarrier`] (`n` enter, then `n` leave).
//! - [`Queue`], [`PriorityQueue`] and [`DelayQueue`]: work items, each taken by exactly one
//!   consumer (a delayed item once its time has come).
//! - [`MultiLock`]: several mutexes taken together, without deadlock.
//! - [`GroupMember`]: a live membership list of a group, each member on a heartbeat lease.
//! - [`Topic`]: publish/subscribe with offsets, retention and durable consumer groups.
//! - [`Counter`]: a shared integer changed by compare-and-swap.
//! - [`ServiceRegistry`]: instances registered with a heartbeat lease; discovery and a
//!   stream of added/updated/removed instances.
//! - [`Discovery`]: a tonic channel balanced over a service's live instances, in the
//!   registry's layout or etcd's `naming/endpoints` one ([`EndpointManager`]).
//! - [`Cache`]: a local, always-current mirror of a prefix, read from memory.
//! - [`Config`]: typed configuration (JSON or TOML) under a key or a prefix, validated,
//!   published as it changes, updated atomically, rolled back in one call.
//! - [`Stm`]: transactions over many keys with etcd's isolation levels (Go's
//!   `concurrency.NewSTM`).
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

mod barrier;
mod cache;
mod config;
mod counter;
mod discovery;
mod election;
mod group;
mod multilock;
mod mutex;
mod queue;
mod registry;
mod rwmutex;
mod semaphore;
mod session;
mod stm;
mod topic;

pub use barrier::{Barrier, DoubleBarrier};
pub use cache::{Cache, CacheEvent, CacheSnapshot};
pub use config::{Config, ConfigBuilder, Format, Rejected, Versioned};
pub use counter::Counter;
pub use discovery::{BalancedChannel, Discovery, EndpointManager, NamedEndpoint};
pub use election::{Election, Leadership};
pub use group::{GroupMember, GroupView};
pub use multilock::{MultiGuard, MultiLock};
pub use mutex::{Mutex, MutexGuard};
pub use queue::{DelayQueue, PriorityQueue, Queue};
pub use registry::{Instance, InstanceEvent, ServiceRegistry};
pub use rwmutex::RwMutex;
pub use semaphore::Semaphore;
pub use session::Session;
pub use stm::{Isolation, Stm, StmTxn};
pub use topic::{ConsumerGroup, Message, Retention, StartAt, Subscription, Topic};

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
    /// A [`DoubleBarrier`] already has all its participants.
    #[error("barrier: too many participants")]
    TooManyParticipants,
    /// A [`Counter`] would leave the range of a 64-bit integer.
    #[error("counter: overflow")]
    Overflow,
    /// A counter or cursor key holds something that is not a decimal integer.
    #[error("not a number: {0:?}")]
    NotACounter(String),
    /// A configuration does not decode, or its validator refused it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Sends a transaction whose guard makes a second application impossible, again and again
/// while the cluster cannot answer (no leader, leader changed, timeout, member down), so an
/// election or a lost answer does not fail the recipe. The caller must read a refusal as
/// "maybe an earlier attempt of mine applied", and each recipe checks which.
async fn guarded_txn(
    client: &cairn_client::Client,
    txn: cairn_client::Txn,
) -> Result<cairn_client::TxnResponse, Error> {
    // Long enough to outlast an election and a member restart.
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(25);
    loop {
        match client.txn(txn.clone()).await {
            Err(e) if e.is_unavailable() && started.elapsed() < PATIENCE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            r => return r.map_err(Error::from),
        }
    }
}

/// Writes that are safe to apply twice (deleting a key, writing the same value again),
/// retried like [`guarded_txn`] across elections and lost answers.
async fn idempotent(
    client: &cairn_client::Client,
    ops: impl IntoIterator<Item = cairn_client::Op>,
) -> Result<(), Error> {
    guarded_txn(client, cairn_client::Txn::new().and_then(ops)).await?;
    Ok(())
}

/// Creates a fresh key `<prefix><time in ns, hex>` holding `value` and returns its creation
/// revision. Created only if absent, so a retry after a lost answer finds its own key
/// (same value) instead of writing a second one; a different value there is another
/// writer's, met in the same nanosecond, and a new key is tried.
async fn create_unique(
    client: &cairn_client::Client,
    prefix: &str,
    value: Vec<u8>,
) -> Result<i64, Error> {
    use cairn_client::{Compare, Op, Txn, TxnOpResponse};
    loop {
        let key = format!("{prefix}{:032x}", now_nanos());
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str()).eq(0)])
            .and_then([Op::put(key.as_str(), value.clone(), None)])
            .or_else([Op::get(key.as_str(), None)]);
        let resp = guarded_txn(client, txn).await?;
        if resp.succeeded {
            return Ok(resp.header.map_or(0, |h| h.revision));
        }
        let existing = match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(TxnOpResponse::ResponseRange(r)) => r.kvs.first().cloned(),
            _ => None,
        };
        if let Some(kv) = existing.filter(|kv| kv.value == value) {
            return Ok(kv.create_revision);
        }
    }
}

/// A name no other caller in any process can pick: the time (so names sort by it), this
/// process's random salt and a per-process sequence number, all in hex. A bare timestamp is
/// not enough: two consumers of one queue read the same nanosecond often enough that one
/// took the other's receipt for its own and an item was handed out twice.
fn unique_name() -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SALT: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    });
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:032x}{:016x}{seq:016x}", now_nanos(), *SALT)
}

/// Nanoseconds since the epoch, for fresh keys that sort by time.
fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Key and revision of the newest key under `prefix` created before `rev`, if any, read
/// together with a check that `own` (created at `rev`) still exists: a contender whose key
/// went with its session's lease learns it here instead of believing it holds.
async fn newest_before(
    client: &cairn_client::Client,
    prefix: &str,
    own: &str,
    rev: i64,
) -> Result<Option<(Vec<u8>, i64)>, Error> {
    use cairn_client::{Compare, GetOptions, Op, SortOrder, SortTarget, Txn, TxnOpResponse};
    let newest = Op::get(
        prefix,
        Some(
            GetOptions::new()
                .with_prefix()
                .with_max_create_revision(rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1)
                .with_keys_only(),
        ),
    );
    // Read-only, so served behind the read barrier without a log entry.
    let txn = Txn::new()
        .when([Compare::create_revision(own).eq(rev)])
        .and_then([newest]);
    let r = client.txn(txn).await?;
    if !r.succeeded {
        return Err(Error::SessionExpired);
    }
    let at = r.header.map_or(0, |h| h.revision);
    match r.responses.into_iter().next().and_then(|r| r.response) {
        Some(TxnOpResponse::ResponseRange(range)) => {
            Ok(range.kvs.into_iter().next().map(|kv| (kv.key, at)))
        }
        _ => Ok(None),
    }
}

/// Waits until every key under `prefix` created before `rev` is gone, watching only the
/// newest such key each time (so a release wakes exactly one waiter: no herd); fails with
/// [`Error::SessionExpired`] if `own` (created at `rev`) is gone meanwhile.
async fn wait_predecessors(
    client: &cairn_client::Client,
    prefix: &str,
    own: &str,
    rev: i64,
) -> Result<(), Error> {
    while let Some((key, at)) = newest_before(client, prefix, own, rev).await? {
        deletion(client, key, at).await?;
    }
    Ok(())
}

/// Waits for the deletion of `key` after revision `at` (returns at once if the watch ends).
async fn deletion(
    client: &cairn_client::Client,
    key: impl Into<Vec<u8>>,
    at: i64,
) -> Result<(), Error> {
    use cairn_client::{EventType, WatchOptions};
    use futures::StreamExt;
    let options = WatchOptions::new()
        .with_start_revision(at + 1)
        .without_puts();
    let mut watch = client.watch(key, Some(options));
    while let Some(batch) = watch.next().await {
        if batch?
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            break;
        }
    }
    Ok(())
}
