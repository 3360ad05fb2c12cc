//! Leader election in etcd's layout: each candidate creates `<name>/<lease hex>` holding its
//! proposal; the key with the lowest creation revision is the leader, and its value what the
//! leader proclaims. Candidates wait only for their predecessor, as with the mutex.

use cairn_client::{
    Compare, GetOptions, KeyValue, Op, PutOptions, SortOrder, SortTarget, Txn, TxnOpResponse,
    WatchOptions,
};
use futures::{Stream, StreamExt};

use crate::{wait_predecessors, Error, Session};

/// See the module docs.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// let election = cairn_recipes::Election::new(&session, "elections/scheduler");
/// let leadership = election.campaign("node-1").await?;
/// // ... lead; say what you lead with:
/// leadership.proclaim("node-1 at epoch 2").await?;
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
pub struct Election<'s> {
    session: &'s Session,
    prefix: String,
}

/// This session leads the election.
pub struct Leadership<'s> {
    session: &'s Session,
    key: String,
    rev: i64,
}

impl<'s> Election<'s> {
    /// The election `name` (a key prefix), entered by `session`.
    pub fn new(session: &'s Session, name: &str) -> Election<'s> {
        Election {
            session,
            prefix: format!("{}/", name.trim_end_matches('/')),
        }
    }

    /// Becomes a candidate with `value` and waits until elected.
    pub async fn campaign(&self, value: impl Into<Vec<u8>>) -> Result<Leadership<'s>, Error> {
        let client = self.session.client();
        let value = value.into();
        let key = format!("{}{:x}", self.prefix, self.session.lease());
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str()).eq(0)])
            .and_then([Op::put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(self.session.lease())),
            )])
            .or_else([Op::get(key.as_str(), None)]);
        let resp = crate::guarded_txn(client, txn).await?;
        let mut rev = resp.header.map_or(0, |h| h.revision);
        if !resp.succeeded {
            // Already a candidate (a retried campaign): keep the place, update the value.
            let existing = match resp.responses.first().and_then(|r| r.response.as_ref()) {
                Some(TxnOpResponse::ResponseRange(r)) => r.kvs.first().cloned(),
                _ => None,
            };
            let kv = existing.ok_or(Error::SessionExpired)?;
            rev = kv.create_revision;
            if kv.value != value {
                client
                    .put(
                        key.as_str(),
                        value,
                        Some(PutOptions::new().with_lease(self.session.lease())),
                    )
                    .await?;
            }
        }
        let leadership = Leadership {
            session: self.session,
            key,
            rev,
        };
        tokio::select! {
            r = wait_predecessors(client, &self.prefix, &leadership.key, rev) => r?,
            _ = self.session.done() => return Err(Error::SessionExpired),
        }
        Ok(leadership)
    }

    /// The current leader's key and proclaimed value.
    pub async fn leader(&self) -> Result<KeyValue, Error> {
        leader(self.session.client(), &self.prefix)
            .await?
            .ok_or(Error::NoLeader)
    }

    /// Every change of leader or of its proclaimed value, in order, starting with the
    /// current leader (if any). Derived event by event from the watch, so no change is
    /// skipped however fast they come. The stream ends only with an error or when dropped.
    pub fn observe(&self) -> impl Stream<Item = Result<KeyValue, Error>> + Send + 'static {
        let client = self.session.client().clone();
        let prefix = self.prefix.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = observe(client, prefix, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        tokio_stream_from(rx)
    }
}

/// Feeds `tx` with each new leader state; returns on error or when the receiver is gone.
async fn observe(
    client: cairn_client::Client,
    prefix: String,
    tx: &tokio::sync::mpsc::Sender<Result<KeyValue, Error>>,
) -> Result<(), Error> {
    use std::collections::{BTreeMap, HashMap};
    let start = client
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = start.header.map_or(0, |h| h.revision);
    // Candidates by creation revision, and each key's creation revision.
    let mut candidates: BTreeMap<i64, KeyValue> = BTreeMap::new();
    let mut created: HashMap<Vec<u8>, i64> = HashMap::new();
    for kv in start.kvs {
        created.insert(kv.key.clone(), kv.create_revision);
        candidates.insert(kv.create_revision, kv);
    }
    let mut last: Option<(Vec<u8>, i64)> = None;
    let mut emit = |candidates: &BTreeMap<i64, KeyValue>| {
        let leader = candidates.values().next().cloned();
        let now = leader.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
        if now.is_some() && now != last {
            last = now;
            return leader;
        }
        None
    };
    if let Some(kv) = emit(&candidates) {
        if tx.send(Ok(kv)).await.is_err() {
            return Ok(());
        }
    }
    let mut watch = client.watch(
        prefix.as_str(),
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1),
        ),
    );
    while let Some(batch) = watch.next().await {
        for e in batch?.events {
            let Some(kv) = e.kv else { continue };
            if e.r#type == cairn_client::EventType::Delete as i32 {
                if let Some(c) = created.remove(&kv.key) {
                    candidates.remove(&c);
                }
            } else {
                created.insert(kv.key.clone(), kv.create_revision);
                candidates.insert(kv.create_revision, kv);
            }
            if let Some(kv) = emit(&candidates) {
                if tx.send(Ok(kv)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn leader(client: &cairn_client::Client, prefix: &str) -> Result<Option<KeyValue>, Error> {
    let r = client
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(1),
            ),
        )
        .await?;
    Ok(r.kvs.into_iter().next())
}

impl Leadership<'_> {
    /// The leader's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The creation revision of the leader's key: strictly increases from one leader to the
    /// next, so it serves as an epoch or fencing token.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Publishes a new value, only while still the leader.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.as_str()).eq(self.rev)])
            .and_then([Op::put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(self.session.lease())),
            )]);
        if self.session.client().txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Resolves when this is no longer the leader: the session was lost or the leader's
    /// key deleted (resigned elsewhere, or removed by an operator). A scheduler stops
    /// scheduling here, before the next leader can be elected.
    pub async fn lost(&self) {
        crate::session::key_lost(self.session, &self.key, self.rev).await
    }

    /// Gives up leadership; the next candidate is elected.
    pub async fn resign(self) -> Result<(), Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.as_str()).eq(self.rev)])
            .and_then([Op::delete(self.key.as_str(), None)]);
        crate::guarded_txn(self.session.client(), txn).await?;
        Ok(())
    }
}
