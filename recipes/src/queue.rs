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
        Ok(self.take().await?.0)
    }

    /// Takes the first item, waiting for one while the queue is empty.
    pub async fn dequeue(&self) -> Result<Vec<u8>, Error> {
        loop {
            let (item, rev) = self.take().await?;
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

    async fn put_new(&self, prefix: &str, item: Vec<u8>) -> Result<(), Error> {
        crate::create_unique(&self.client, prefix, item).await?;
        Ok(())
    }

    /// One attempt round: the first item taken by us, or none at the returned revision.
    async fn take(&self) -> Result<(Option<Vec<u8>>, i64), Error> {
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
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(order, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                )
                .await?;
            let rev = r.header.map_or(0, |h| h.revision);
            let Some(kv) = r.kvs.into_iter().next() else {
                return Ok((None, rev));
            };
            let receipt = format!("{}{:032x}", self.receipts, crate::now_nanos());
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
