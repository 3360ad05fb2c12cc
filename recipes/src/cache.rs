//! A local, always-current mirror of a key prefix (Curator's CuratorCache, Kubernetes'
//! informer): the prefix is listed at one revision, page by page, and then followed by a
//! watch from the next revision, so no change between the two is missed. Reads are served
//! from memory together with the revision they reflect. The client's watch already resumes
//! on another member after a failure; when the history it needs was compacted, the cache
//! lists again and tells its subscribers so, followed by the difference as ordinary changes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use cairn_client::{Client, EventType, GetOptions, KeyValue, WatchBatch, WatchOptions};
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, watch, Notify};

use crate::Error;

/// Keys read per page while listing.
const PAGE: i64 = 1_000;
/// Changes a subscriber may fall behind by before it is told it lagged.
const BACKLOG: usize = 4_096;
/// How long a failed listing waits before the next try, at most.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A change the cache applied, in revision order.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheEvent {
    /// A key appeared.
    Added(KeyValue),
    /// A key got a new value (or lease).
    Modified {
        /// What the cache held before.
        prev: KeyValue,
        /// What it holds now.
        kv: KeyValue,
    },
    /// A key went away.
    Deleted {
        /// What the cache held before.
        prev: KeyValue,
        /// The revision of the deletion (that of the listing, after a re-list).
        revision: i64,
    },
    /// The history the cache followed was compacted away, so it listed the prefix again at
    /// `revision`; the events that follow bring a subscriber from the old contents to the
    /// new ones.
    Relisted {
        /// The revision of the new listing.
        revision: i64,
    },
    /// This subscriber fell so far behind that this many changes were dropped for it: read
    /// the cache again ([`Cache::snapshot`]) instead of relying on the stream.
    Lagged(u64),
}

/// The cache's contents at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSnapshot {
    /// Every change up to this revision is reflected.
    pub revision: i64,
    /// The keys under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
}

/// See the module docs. Dropping the cache stops it.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::Cache;
/// let cache = Cache::new(&client, "services/api/").await?;
/// let at = client.put("services/api/a", "10.0.0.7:8080", None).await?;
/// cache.wait_for_revision(at.header.map_or(0, |h| h.revision)).await?;
/// assert!(cache.get(b"services/api/a").is_some());
/// # Ok(()) }
/// ```
pub struct Cache {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    prefix: Vec<u8>,
    /// The end of the mirrored range (exclusive): the prefix's end, or the key's successor
    /// for a single key; `[0]` for every key.
    end: Vec<u8>,
    state: RwLock<State>,
    /// The revision the contents reflect, for waiters.
    revision: watch::Sender<i64>,
    changes: broadcast::Sender<CacheEvent>,
    /// Set when a read-your-writes wait needs the member to vouch for a revision.
    ask_progress: Notify,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    relists: u64,
    /// Why the cache is not following right now, until it is again.
    failure: Option<Error>,
}

impl Cache {
    /// Lists `prefix` (every key when it is empty) and follows it from then on.
    pub async fn new(client: &Client, prefix: impl Into<Vec<u8>>) -> Result<Cache, Error> {
        let prefix = prefix.into();
        let end = cairn_client::prefix_end(&prefix);
        Cache::range(client, prefix, end).await
    }

    /// Mirrors the single key `key` (not the keys it prefixes).
    pub async fn key(client: &Client, key: impl Into<Vec<u8>>) -> Result<Cache, Error> {
        let key = key.into();
        let mut end = key.clone();
        end.push(0);
        Cache::range(client, key, end).await
    }

    /// Mirrors the keys in `[from, end)` (`end` `[0]`: every key from `from` on).
    pub async fn range(
        client: &Client,
        from: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) -> Result<Cache, Error> {
        let (prefix, end) = (from.into(), end.into());
        let (revision, entries) = list(client, &prefix, &end).await?;
        let shared = Arc::new(Shared {
            prefix,
            end,
            state: RwLock::new(State {
                entries,
                revision,
                ..State::default()
            }),
            revision: watch::Sender::new(revision),
            changes: broadcast::Sender::new(BACKLOG),
            ask_progress: Notify::new(),
        });
        let task = tokio::spawn(follow(client.clone(), shared.clone(), revision));
        Ok(Cache { shared, task })
    }

    /// The prefix (the first key of the range) this cache mirrors.
    pub fn prefix(&self) -> &[u8] {
        &self.shared.prefix
    }

    /// The key as of [`revision`](Self::revision), if it exists.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.shared.read().entries.get(key).cloned()
    }

    /// Every key, with the revision they reflect.
    pub fn snapshot(&self) -> CacheSnapshot {
        let st = self.shared.read();
        CacheSnapshot {
            revision: st.revision,
            kvs: st.entries.values().cloned().collect(),
        }
    }

    /// How many keys the prefix holds.
    pub fn len(&self) -> usize {
        self.shared.read().entries.len()
    }

    /// Whether the prefix holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every change up to this revision is reflected.
    pub fn revision(&self) -> i64 {
        self.shared.read().revision
    }

    /// How many times the cache had to list the prefix again since it started.
    pub fn relists(&self) -> u64 {
        self.shared.read().relists
    }

    /// Why the cache is not following the prefix right now (the watch or a re-list failed
    /// and is being retried), if it is not.
    pub fn failure(&self) -> Option<Error> {
        self.shared.read().failure.clone()
    }

    /// The changes from now on, in revision order.
    pub fn changes(&self) -> impl Stream<Item = CacheEvent> + Send + 'static {
        futures::stream::unfold(self.shared.changes.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(e) => Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((CacheEvent::Lagged(n), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// A receiver that sees the cache's revision move; for building on the cache.
    pub(crate) fn revisions(&self) -> watch::Receiver<i64> {
        self.shared.revision.subscribe()
    }

    /// Waits until the cache reflects every change up to `revision` (one a write of this
    /// process returned, for read-your-writes), asking the member to vouch for the revision
    /// when no change under the prefix would bring the cache there. It waits through
    /// outages (wrap it in a timeout to bound that) and fails when the cluster refuses the
    /// cache (a missing permission, say).
    pub async fn wait_for_revision(&self, revision: i64) -> Result<(), Error> {
        let mut seen = self.shared.revision.subscribe();
        loop {
            if *seen.borrow_and_update() >= revision {
                return Ok(());
            }
            if let Some(e) = self.failure().filter(is_refusal) {
                return Err(e);
            }
            self.shared.ask_progress.notify_one();
            match tokio::time::timeout(Duration::from_millis(500), seen.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(self.failure().unwrap_or(Error::Timeout)),
            }
        }
    }
}

/// A failure that waiting will not mend: neither an outage nor a compaction (after which
/// the cache lists again by itself).
fn is_refusal(e: &Error) -> bool {
    match e {
        Error::Client(c) => {
            !c.is_unavailable() && !matches!(c, cairn_client::Error::Compacted { .. })
        }
        _ => true,
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while applying leaves whole entries (each insert is one step); the
        // contents stay usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, batch: WatchBatch) {
        // Events are built only for subscribers: without any, a put costs one insert.
        let tell = self.changes.receiver_count() > 0;
        let mut out = Vec::new();
        let revision = {
            let mut st = self.write();
            for e in batch.events {
                let Some(kv) = e.kv else { continue };
                if e.r#type == EventType::Delete as i32 {
                    match st.entries.remove(&kv.key) {
                        Some(prev) if tell => out.push(CacheEvent::Deleted {
                            prev,
                            revision: kv.mod_revision,
                        }),
                        _ => {}
                    }
                } else if tell {
                    out.push(match st.entries.insert(kv.key.clone(), kv.clone()) {
                        Some(prev) => CacheEvent::Modified { prev, kv },
                        None => CacheEvent::Added(kv),
                    });
                } else {
                    st.entries.insert(kv.key.clone(), kv);
                }
            }
            st.revision = st.revision.max(batch.revision);
            st.failure = None;
            st.revision
        };
        self.publish(out, revision);
    }

    /// Replaces the contents with a new listing, telling subscribers the difference.
    fn replace(&self, revision: i64, entries: BTreeMap<Vec<u8>, KeyValue>) {
        let mut out = vec![CacheEvent::Relisted { revision }];
        {
            let mut st = self.write();
            let old = std::mem::take(&mut st.entries);
            for (key, prev) in &old {
                if !entries.contains_key(key) {
                    out.push(CacheEvent::Deleted {
                        prev: prev.clone(),
                        revision,
                    });
                }
            }
            for (key, kv) in &entries {
                match old.get(key) {
                    None => out.push(CacheEvent::Added(kv.clone())),
                    Some(prev) if prev.mod_revision != kv.mod_revision => {
                        out.push(CacheEvent::Modified {
                            prev: prev.clone(),
                            kv: kv.clone(),
                        })
                    }
                    Some(_) => {}
                }
            }
            st.entries = entries;
            st.revision = revision;
            st.relists += 1;
            // A refusal stays until a watch delivers again: listing may be allowed where
            // watching is not.
            if st.failure.as_ref().is_some_and(|e| !is_refusal(e)) {
                st.failure = None;
            }
        }
        self.publish(out, revision);
    }

    /// Tells subscribers the changes, then waiters the revision the contents now reflect.
    fn publish(&self, events: Vec<CacheEvent>, revision: i64) {
        for e in events {
            // No subscriber is not an error.
            let _ = self.changes.send(e);
        }
        self.revision.send_replace(revision);
    }

    fn fail(&self, e: Error) {
        self.write().failure = Some(e);
    }
}

/// Follows the prefix from `revision`, listing again whenever the watch cannot go on.
async fn follow(client: Client, shared: Arc<Shared>, mut revision: i64) {
    let options = |revision: i64| {
        let o = WatchOptions::new().with_start_revision(revision + 1);
        if shared.prefix.is_empty() && shared.end == [0] {
            o.with_from_key()
        } else {
            o.with_range(shared.end.clone())
        }
    };
    loop {
        let mut watch = client.watch(shared.prefix.clone(), Some(options(revision)));
        let ended = loop {
            tokio::select! {
                next = watch.next() => match next {
                    Some(Ok(batch)) => {
                        revision = revision.max(batch.revision);
                        shared.apply(batch);
                    }
                    Some(Err(e)) => break Some(e),
                    None => break None,
                },
                _ = shared.ask_progress.notified() => watch.request_progress(),
            }
        };
        drop(watch);
        if let Some(e) = ended {
            let compacted = matches!(e, cairn_client::Error::Compacted { .. });
            shared.fail(e.into());
            if !compacted {
                // A refusal (permissions, say) may be lifted; do not spin on it meanwhile.
                tokio::time::sleep(MAX_PAUSE).await;
            }
        }
        let mut pause = Duration::from_millis(50);
        loop {
            match list(&client, &shared.prefix, &shared.end).await {
                Ok((at, entries)) => {
                    revision = at;
                    shared.replace(at, entries);
                    break;
                }
                Err(e) => {
                    shared.fail(e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
}

/// The keys in `[from, end)` at one revision, read page by page (a compaction of that
/// revision between two pages starts the listing over).
async fn list(
    client: &Client,
    prefix: &[u8],
    end: &[u8],
) -> Result<(i64, BTreeMap<Vec<u8>, KeyValue>), Error> {
    let end = end.to_vec();
    'listing: loop {
        let mut entries = BTreeMap::new();
        let mut from = prefix.to_vec();
        let mut revision = 0;
        loop {
            // Every key (an empty prefix) starts from the empty key, which only from-key
            // may name.
            let mut options = if from.is_empty() {
                GetOptions::new().with_from_key()
            } else {
                GetOptions::new().with_range(end.clone())
            }
            .with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = match client.get(from.clone(), Some(options)).await {
                Ok(p) => p,
                Err(cairn_client::Error::Compacted { .. }) => continue 'listing,
                Err(e) => return Err(e.into()),
            };
            if revision == 0 {
                revision = page.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            entries.extend(page.kvs.into_iter().map(|kv| (kv.key.clone(), kv)));
            if !more {
                return Ok((revision, entries));
            }
        }
    }
}
