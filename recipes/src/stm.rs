//! Software transactional memory with the semantics of etcd's Go `concurrency.NewSTM`, so
//! code ported from it behaves the same: the function reads and writes through a
//! transaction object, writes are buffered, and the commit is one etcd transaction guarded
//! by what the isolation level needs; when the guard fails the function runs again.
//!
//! | Isolation | reads | the commit is refused when |
//! |---|---|---|
//! | `SerializableSnapshot` | all at the first read's revision | a key read or a key written changed since the first read |
//! | `Serializable` | all at the first read's revision | a key read changed |
//! | `RepeatableReads` | each key once, from the member | a key read changed |
//! | `ReadCommitted` | each key once, from the member | never (lost updates are possible) |

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use cairn_client::{Client, Compare, GetOptions, KeyValue, Op, Txn, TxnOpResponse, TxnResponse};

use crate::Error;

/// How much an [`Stm`] transaction is isolated from concurrent ones (etcd's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Serializable, and the keys written must not have changed since the first read either:
    /// no write skew. etcd's default.
    #[default]
    SerializableSnapshot,
    /// Reads see one snapshot (the first read's revision); the commit fails if any key read
    /// changed since.
    Serializable,
    /// Each key reads the same within an attempt; the commit fails if any key read changed.
    RepeatableReads,
    /// No check at commit: the last writer wins, as with plain puts.
    ReadCommitted,
}

/// A key as one attempt read it.
#[derive(Debug, Clone)]
struct Read {
    kv: Option<KeyValue>,
    /// The store's revision the read was served at.
    revision: i64,
}

/// Runs functions as transactions (see the module docs).
///
/// The function gets a handle to the attempt ([`StmTxn`], cheap to clone) and returns a
/// future, so a run can be spawned onto any task.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::{Isolation, Stm};
/// let stm = Stm::new(&client, Isolation::SerializableSnapshot);
/// stm.run(|tx| async move {
///     let from: i64 = tx.get_string("accounts/alice").await?.parse().unwrap_or(0);
///     let to: i64 = tx.get_string("accounts/bob").await?.parse().unwrap_or(0);
///     tx.put("accounts/alice", (from - 10).to_string());
///     tx.put("accounts/bob", (to + 10).to_string());
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Stm {
    client: Client,
    isolation: Isolation,
    prefetch: Vec<Vec<u8>>,
}

impl Stm {
    /// Transactions on `client` at `isolation`.
    pub fn new(client: &Client, isolation: Isolation) -> Stm {
        Stm {
            client: client.clone(),
            isolation,
            prefetch: Vec::new(),
        }
    }

    /// Keys read before the function runs, in the first read's round trip (Go's
    /// `WithPrefetch`).
    pub fn with_prefetch<K: Into<Vec<u8>>>(mut self, keys: impl IntoIterator<Item = K>) -> Stm {
        self.prefetch = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Runs `apply` until its commit succeeds, and returns what the successful attempt
    /// returned with the commit's response. An error from `apply` ends the run with nothing
    /// written; so does one from the cluster.
    pub async fn run<T, F, Fut>(&self, mut apply: F) -> Result<(T, TxnResponse), Error>
    where
        F: FnMut(StmTxn) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let tx = StmTxn {
            inner: Arc::new(Inner {
                client: self.client.clone(),
                isolation: self.isolation,
                attempt: Mutex::new(Attempt::default()),
            }),
        };
        loop {
            tx.reset();
            if !self.prefetch.is_empty() {
                tx.fetch(&self.prefetch).await?;
            }
            let out = apply(tx.clone()).await?;
            if let Some(resp) = tx.commit().await? {
                return Ok((out, resp));
            }
        }
    }
}

/// One attempt of an [`Stm`] transaction: what it read and what it will write. Clones are
/// the same attempt.
#[derive(Clone)]
pub struct StmTxn {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    isolation: Isolation,
    attempt: Mutex<Attempt>,
}

#[derive(Default)]
struct Attempt {
    reads: HashMap<Vec<u8>, Read>,
    /// `None` deletes the key.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The revision every read is served at (the serializable levels, after the first read).
    at: Option<i64>,
    /// What a refused commit read back for the next attempt (the serializable levels).
    prefetched: HashMap<Vec<u8>, Read>,
}

impl StmTxn {
    /// The key's value as this transaction sees it (its own writes first), `None` when it
    /// does not exist.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        let key = key.into();
        if let Some(w) = self.attempt().writes.get(&key) {
            return Ok(w.clone());
        }
        Ok(self.read(key).await?.kv.map(|kv| kv.value))
    }

    /// The key's value as text, empty when it does not exist (Go's `STM.Get`).
    pub async fn get_string(&self, key: impl Into<Vec<u8>>) -> Result<String, Error> {
        let value = self.get(key).await?.unwrap_or_default();
        Ok(String::from_utf8_lossy(&value).into_owned())
    }

    /// The revision the key was last modified at as read, 0 when it does not exist.
    pub async fn rev(&self, key: impl Into<Vec<u8>>) -> Result<i64, Error> {
        Ok(self
            .read(key.into())
            .await?
            .kv
            .map_or(0, |kv| kv.mod_revision))
    }

    /// Writes the key when the transaction commits.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.attempt().writes.insert(key.into(), Some(value.into()));
    }

    /// Deletes the key when the transaction commits.
    pub fn delete(&self, key: impl Into<Vec<u8>>) {
        self.attempt().writes.insert(key.into(), None);
    }

    fn attempt(&self) -> std::sync::MutexGuard<'_, Attempt> {
        // Never held across an await, and every change is one step: a panic elsewhere
        // leaves it usable.
        self.inner.attempt.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serializable(&self) -> bool {
        matches!(
            self.inner.isolation,
            Isolation::Serializable | Isolation::SerializableSnapshot
        )
    }

    fn reset(&self) {
        let mut a = self.attempt();
        a.reads.clear();
        a.writes.clear();
        a.at = None;
    }

    async fn read(&self, key: Vec<u8>) -> Result<Read, Error> {
        if let Some(r) = self.attempt().reads.get(&key) {
            return Ok(r.clone());
        }
        self.fetch(std::slice::from_ref(&key)).await?;
        Ok(self.attempt().reads[&key].clone())
    }

    /// Reads the keys not read yet in one round trip (a refused commit's read-back counts).
    async fn fetch(&self, keys: &[Vec<u8>]) -> Result<(), Error> {
        let serializable = self.serializable();
        let (wanted, at) = {
            let mut a = self.attempt();
            let mut wanted = Vec::new();
            for key in keys {
                if a.reads.contains_key(key) {
                    continue;
                }
                if let Some(r) = a.prefetched.remove(key) {
                    if serializable && a.at.is_none() {
                        a.at = Some(r.revision);
                    }
                    a.reads.insert(key.clone(), r);
                } else {
                    wanted.push(key.clone());
                }
            }
            (wanted, a.at)
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let options = || match at {
            Some(rev) => Some(GetOptions::new().with_revision(rev).with_serializable()),
            // The first read of a serializable attempt defines its snapshot, from the leader.
            None if serializable => None,
            None => Some(GetOptions::new().with_serializable()),
        };
        let ops: Vec<Op> = wanted
            .iter()
            .map(|k| Op::get(k.clone(), options()))
            .collect();
        let resp = self.inner.client.txn(Txn::new().and_then(ops)).await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut a = self.attempt();
        if serializable && a.at.is_none() {
            a.at = Some(revision);
        }
        for (key, kv) in wanted.into_iter().zip(first_kvs(resp)) {
            a.reads.insert(key, Read { kv, revision });
        }
        Ok(())
    }

    /// Commits the attempt: the response when it applied, `None` when it must run again.
    async fn commit(&self) -> Result<Option<TxnResponse>, Error> {
        let isolation = self.inner.isolation;
        let (txn, read_back) = {
            let a = self.attempt();
            let mut guard: Vec<Compare> = Vec::new();
            if isolation != Isolation::ReadCommitted {
                guard.extend(a.reads.iter().map(|(key, r)| {
                    Compare::mod_revision(key.clone())
                        .eq(r.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                }));
            }
            if isolation == Isolation::SerializableSnapshot {
                // Nothing written may have changed since the snapshot either (Go's first()+1).
                let first = a
                    .reads
                    .values()
                    .map(|r| r.revision)
                    .min()
                    .unwrap_or(i64::MAX - 1);
                guard.extend(
                    a.writes
                        .keys()
                        .map(|key| Compare::mod_revision(key.clone()).lt(first + 1)),
                );
            }
            let writes = a.writes.iter().map(|(key, value)| match value {
                Some(v) => Op::put(key.clone(), v.clone(), None),
                None => Op::delete(key.clone(), None),
            });
            // A refused commit reads the keys back in the same round trip, for the next
            // attempt.
            let read_back: Vec<Vec<u8>> = if self.serializable() {
                a.reads.keys().cloned().collect()
            } else {
                Vec::new()
            };
            let txn = Txn::new()
                .when(guard)
                .and_then(writes)
                .or_else(read_back.iter().map(|k| Op::get(k.clone(), None)));
            (txn, read_back)
        };
        let resp = self.inner.client.txn(txn).await?;
        if resp.succeeded {
            return Ok(Some(resp));
        }
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        self.attempt().prefetched = read_back
            .into_iter()
            .zip(first_kvs(resp))
            .map(|(key, kv)| (key, Read { kv, revision }))
            .collect();
        Ok(None)
    }
}

/// The first key of each range answer of a transaction.
fn first_kvs(resp: TxnResponse) -> impl Iterator<Item = Option<KeyValue>> {
    resp.responses.into_iter().map(|r| match r.response {
        Some(TxnOpResponse::ResponseRange(range)) => range.kvs.into_iter().next(),
        _ => None,
    })
}
