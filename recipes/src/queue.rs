//! A FIFO work queue: items are keys under the queue's prefix, ordered by creation
//! revision; a consumer takes the oldest item by deleting it in a transaction that holds only
//! if nobody else has, so each item goes to exactly one consumer.

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
}

impl Queue {
    /// The queue `name` (a key prefix).
    pub fn new(client: cairn_client::Client, name: &str) -> Queue {
        Queue {
            client,
            prefix: format!("{}/", name.trim_end_matches('/')),
        }
    }

    /// Appends an item.
    pub async fn enqueue(&self, item: impl Into<Vec<u8>>) -> Result<(), Error> {
        let item = item.into();
        // A fresh key, created only if absent: a retried enqueue cannot duplicate an item.
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let key = format!("{}{nanos:032x}", self.prefix);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str()).eq(0)])
                .and_then([Op::put(key.as_str(), item.clone(), None)]);
            if self.client.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    /// Takes the oldest item, if any.
    pub async fn try_dequeue(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.take().await?.0)
    }

    /// Takes the oldest item, waiting for one while the queue is empty.
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

    /// One attempt round: the oldest item deleted by us, or none at the returned revision.
    async fn take(&self) -> Result<(Option<Vec<u8>>, i64), Error> {
        loop {
            let r = self
                .client
                .get(
                    self.prefix.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                )
                .await?;
            let rev = r.header.map_or(0, |h| h.revision);
            let Some(kv) = r.kvs.into_iter().next() else {
                return Ok((None, rev));
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(kv.key.clone()).eq(kv.mod_revision)])
                .and_then([Op::delete(kv.key.clone(), None)]);
            let resp = self.client.txn(txn).await?;
            let deleted = resp.succeeded
                && matches!(
                    resp.responses.first().and_then(|r| r.response.as_ref()),
                    Some(TxnOpResponse::ResponseDeleteRange(d)) if d.deleted == 1
                );
            if deleted {
                return Ok((Some(kv.value), rev));
            }
            // Another consumer took it first: try the next one.
        }
    }
}
