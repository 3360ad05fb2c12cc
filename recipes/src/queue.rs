//! Work queues. Items are keys under the queue's prefix; a consumer takes the first item by
//! deleting it in a transaction that holds only if nobody else has, so each item goes to
//! exactly one consumer. The same transaction writes a receipt under `<name>.taken/`, so a
//! consumer whose answer was lost (a leader change, a dropped connection, the client's own
//! retry of the transaction) can tell whether the item became its own, instead of dropping
//! it or taking it twice; the receipt is deleted once the item is handed over.
//!
//! [`Queue`] is first in, first out (by creation revision); [`PriorityQueue`] hands out the
//! lowest priority number first, first in first out within one priority.

use cairn_client::{
    Compare, EventType, GetOptions, Op, SortOrder, SortTarget, Txn, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::Error;

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// let jobs = cairn_recipes::Queue::new(client, "queues/jobs");
/// jobs.enqueue("resize image 42").await?;
/// let job = jobs.dequeue().await?; // waits while the queue is empty
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    client: cairn_client::Client,
    prefix: String,
    receipts: String,
    /// Items are taken in key order (priorities) instead of creation order.
    by_key: bool,
}

impl Queue {
    /// The FIFO queue `name` (a key prefix).
    pub fn new(client: cairn_client::Client, name: &str) -> Queue {
        let name = name.trim_end_matches('/');
        Queue {
            client,
            prefix: format!("{name}/"),
            receipts: format!("{name}.taken/"),
            by_key: false,
        }
    }

    /// Appends an item.
    pub async fn enqueue(&self, item: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.put_new(&self.prefix, item.into()).await
    }

    /// Takes the first item, if any.
    pub async fn try_dequeue(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.take(None).await?.0)
    }

    /// Takes the first item, waiting for one while the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>, Error> {
        loop {
            let (item, rev) = self.take(None).await?;
            if let Some(item) = item {
                return Ok(item);
            }
            // Empty at `rev`: wait for the next put after it.
            let mut watch = self.client.watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1)
                        .without_deletes(),
                ),
            );
            loop {
                match watch.next().await {
                    Some(Ok(b)) if b.events.iter().any(|e| e.r#type == EventType::Put as i32) => {
                        break
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                }
            }
        }
    }

    pub(crate) async fn put_new(&self, prefix: &str, item: Vec<u8>) -> Result<(), Error> {
        crate::create_unique(&self.client, prefix, item).await?;
        Ok(())
    }

    /// One attempt round: the first item (with a key below `end`, if given) taken by us,
    /// or none at the returned revision.
    pub(crate) async fn take(&self, end: Option<&str>) -> Result<(Option<Vec<u8>>, i64), Error> {
        let order = if self.by_key {
            SortTarget::Key
        } else {
            SortTarget::Create
        };
        loop {
            let r = self
                .client
                .get(
                    self.prefix.as_str(),
                    Some(
                        match end {
                            Some(end) => GetOptions::new().with_range(end),
                            None => GetOptions::new().with_prefix(),
                        }
                        .with_sort(order, SortOrder::Ascend)
                        .with_limit(1),
                    ),
                )
                .await?;
            let rev = r.header.map_or(0, |h| h.revision);
            let Some(kv) = r.kvs.into_iter().next() else {
                return Ok((None, rev));
            };
            let receipt = format!("{}{}", self.receipts, crate::unique_name());
            let txn = Txn::new()
                .when([Compare::mod_revision(kv.key.clone()).eq(kv.mod_revision)])
                .and_then([
                    Op::delete(kv.key.clone(), None),
                    Op::put(receipt.as_str(), kv.value.clone(), None),
                ]);
            if self.claim(txn, &receipt).await? {
                // The item is ours; the receipt has done its work.
                crate::idempotent(&self.client, [Op::delete(receipt.as_str(), None)]).await?;
                return Ok((Some(kv.value), rev));
            }
            // Another consumer was first: try the next item.
        }
    }

    /// Runs the take transaction until its outcome is known: true when it deleted the item
    /// for us. The item's revision guard lets at most one attempt apply; once one is refused,
    /// the receipt says whether an earlier one (whose answer was lost) applied.
    async fn claim(&self, txn: Txn, receipt: &str) -> Result<bool, Error> {
        let resp = crate::guarded_txn(&self.client, txn).await?;
        if resp.succeeded {
            return Ok(matches!(
                resp.responses.first().and_then(|r| r.response.as_ref()),
                Some(TxnOpResponse::ResponseDeleteRange(d)) if d.deleted == 1
            ));
        }
        let found = self
            .client
            .get(receipt, Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(found.count > 0)
    }
}

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// let tasks = cairn_recipes::PriorityQueue::new(client, "queues/tasks");
/// tasks.enqueue("rebuild index", 5).await?;
/// tasks.enqueue("page the on-call", 0).await?;
/// assert_eq!(tasks.dequeue().await?, b"page the on-call");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PriorityQueue {
    queue: Queue,
}

impl PriorityQueue {
    /// The priority queue `name` (a key prefix).
    pub fn new(client: cairn_client::Client, name: &str) -> PriorityQueue {
        PriorityQueue {
            queue: Queue {
                by_key: true,
                ..Queue::new(client, name)
            },
        }
    }

    /// Adds an item; lower `priority` numbers are taken first.
    pub async fn enqueue(&self, item: impl Into<Vec<u8>>, priority: u16) -> Result<(), Error> {
        let prefix = format!("{}{priority:05}/", self.queue.prefix);
        self.queue.put_new(&prefix, item.into()).await
    }

    /// Takes the most urgent item, if any.
    pub async fn try_dequeue(&self) -> Result<Option<Vec<u8>>, Error> {
        self.queue.try_dequeue().await
    }

    /// Takes the most urgent item, waiting for one while the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>, Error> {
        self.queue.dequeue().await
    }
}

/// A queue whose items become visible at a time (Curator's DistributedDelayQueue): an item
/// is a key `<name>/<due time, ns since the epoch, hex>/<creation time>`, so keys sort by due
/// time, and consumers take only keys below the present. Exactly-once hand-over is
/// [`Queue`]'s. Due times are the producer's clock and "now" the consumer's: skew between
/// them moves delivery by as much.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use std::time::Duration;
/// let retries = cairn_recipes::DelayQueue::new(client, "queues/retries");
/// retries.enqueue_after("charge order 7", Duration::from_secs(30)).await?;
/// let item = retries.dequeue().await?; // in about 30 s
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DelayQueue {
    queue: Queue,
}

impl DelayQueue {
    /// The delay queue `name` (a key prefix).
    pub fn new(client: cairn_client::Client, name: &str) -> DelayQueue {
        DelayQueue {
            queue: Queue {
                by_key: true,
                ..Queue::new(client, name)
            },
        }
    }

    /// Adds an item that becomes visible at `due`.
    pub async fn enqueue_at(
        &self,
        item: impl Into<Vec<u8>>,
        due: std::time::SystemTime,
    ) -> Result<(), Error> {
        let nanos = due
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("{}{nanos:032x}/", self.queue.prefix);
        self.queue.put_new(&prefix, item.into()).await
    }

    /// Adds an item that becomes visible after `delay`.
    pub async fn enqueue_after(
        &self,
        item: impl Into<Vec<u8>>,
        delay: std::time::Duration,
    ) -> Result<(), Error> {
        self.enqueue_at(item, std::time::SystemTime::now() + delay)
            .await
    }

    /// Takes the item due first, if one is due now.
    pub async fn try_dequeue(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.queue.take(Some(&self.now_bound())).await?.0)
    }

    /// Takes the item due first, waiting until one is due.
    pub async fn dequeue(&self) -> Result<Vec<u8>, Error> {
        loop {
            let (item, rev) = self.queue.take(Some(&self.now_bound())).await?;
            if let Some(item) = item {
                return Ok(item);
            }
            // Nothing due at `rev`: wait for the first item's time, or for a new item (it
            // may be due sooner).
            let first = self
                .queue
                .client
                .get(
                    self.queue.prefix.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_sort(SortTarget::Key, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                )
                .await?;
            let wait = first
                .kvs
                .first()
                .and_then(|kv| self.due_of(&kv.key))
                .map(|due| {
                    due.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                });
            let mut watch = self.queue.client.watch(
                self.queue.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1)
                        .without_deletes(),
                ),
            );
            let sleep = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                next = watch.next() => {
                    if let Some(Err(e)) = next {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// The first key not yet due: `<name>/<now + 1 ns>`.
    fn now_bound(&self) -> String {
        format!("{}{:032x}", self.queue.prefix, crate::now_nanos() + 1)
    }

    fn due_of(&self, key: &[u8]) -> Option<std::time::SystemTime> {
        let rest = key.strip_prefix(self.queue.prefix.as_bytes())?;
        let hex = std::str::from_utf8(rest.get(..32)?).ok()?;
        let nanos = u128::from_str_radix(hex, 16).ok()?;
        let nanos = u64::try_from(nanos).ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
    }
}
