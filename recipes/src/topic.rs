//! Topic pub/sub. Each message is a new key `<name>/msgs/<publish time in ns, hex>` and its
//! creation revision is its offset: offsets strictly increase in publish order, and a
//! subscriber that remembers the last offset it saw resumes after it with no gap and no
//! duplicate. Subscribers read the retained messages first and then follow a watch from the
//! revision that read saw, so nothing published in between is missed. Retention trims the
//! oldest messages by count and by age; a consumer group keeps a committed offset in
//! `<name>/groups/<group>`, so it resumes where it left off after a restart.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use cairn_client::{
    Client, Compare, EventType, GetOptions, Op, SortOrder, SortTarget, Txn, Watch, WatchOptions,
};
use futures::{Stream, StreamExt};

use crate::Error;

/// Messages read per page while catching up.
const PAGE: i64 = 256;
/// Deletes per transaction when trimming (etcd's default limit is 128 operations).
const TRIM_BATCH: usize = 100;

/// How much of a topic to keep; the oldest messages beyond either bound are deleted when a
/// message is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many messages.
    pub max_messages: Option<u64>,
    /// Keep messages at most this old (by their publisher's clock).
    pub max_age: Option<Duration>,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the first message published after subscribing.
    Now,
    /// With the first retained message whose offset is at least this.
    Offset(i64),
    /// With the oldest retained message.
    Oldest,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its position in the topic (the creation revision of its key): strictly increasing.
    pub offset: i64,
    /// Its key.
    pub key: Vec<u8>,
    /// What was published.
    pub payload: Vec<u8>,
}

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use futures::StreamExt;
/// use cairn_recipes::{Retention, StartAt, Topic};
/// let orders = Topic::new(client, "topics/orders").with_retention(Retention {
///     max_messages: Some(10_000),
///     max_age: None,
/// });
/// orders.publish("order 1 placed").await?;
/// let billing = orders.group("billing");
/// let mut messages = billing.subscribe().await?; // after its last committed offset
/// while let Some(message) = messages.next().await {
///     let message = message?;
///     // ... handle it, then remember how far the group got ...
///     billing.commit(message.offset).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Topic {
    client: Client,
    messages: String,
    groups: String,
    retention: Retention,
}

/// A stream of messages in offset order.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<Message, Error>> + Send>>;

impl Topic {
    /// The topic `name` (a key prefix), keeping every message.
    pub fn new(client: Client, name: &str) -> Topic {
        let name = name.trim_end_matches('/');
        Topic {
            client,
            messages: format!("{name}/msgs/"),
            groups: format!("{name}/groups/"),
            retention: Retention::default(),
        }
    }

    /// Applies `retention` on every publish through this handle.
    pub fn with_retention(mut self, retention: Retention) -> Topic {
        self.retention = retention;
        self
    }

    /// Publishes a message and returns its offset.
    pub async fn publish(&self, payload: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let payload = payload.into();
        let offset = crate::create_unique(&self.client, &self.messages, payload).await?;
        self.trim().await?;
        Ok(offset)
    }

    /// Deletes what the retention no longer keeps; returns how many messages went.
    pub async fn trim(&self) -> Result<u64, Error> {
        let mut trimmed = 0;
        if let Some(max_age) = self.retention.max_age {
            let cutoff = crate::now_nanos().saturating_sub(max_age.as_nanos());
            let end = format!("{}{cutoff:032x}", self.messages);
            // Keys sort by publish time, so everything older is one key range.
            let old = Op::delete(
                self.messages.as_str(),
                Some(cairn_client::DeleteOptions::new().with_range(end)),
            );
            let r = crate::guarded_txn(&self.client, Txn::new().and_then([old])).await?;
            if let Some(cairn_client::TxnOpResponse::ResponseDeleteRange(d)) =
                r.responses.into_iter().next().and_then(|r| r.response)
            {
                trimmed += d.deleted as u64;
            }
        }
        if let Some(max) = self.retention.max_messages {
            let all = self
                .client
                .get(
                    self.messages.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?;
            let excess = (all.count as u64).saturating_sub(max);
            if excess > 0 {
                let oldest = self
                    .client
                    .get(
                        self.messages.as_str(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_sort(SortTarget::Create, SortOrder::Ascend)
                                .with_limit(excess as i64)
                                .with_keys_only(),
                        ),
                    )
                    .await?;
                for batch in oldest.kvs.chunks(TRIM_BATCH) {
                    let txn = Txn::new()
                        .and_then(batch.iter().map(|kv| Op::delete(kv.key.clone(), None)));
                    crate::guarded_txn(&self.client, txn).await?;
                }
                trimmed += oldest.kvs.len() as u64;
            }
        }
        Ok(trimmed)
    }

    /// Follows the topic from `start`. The stream survives member failures (the client's
    /// watch resumes where it stopped); it ends only with an error.
    pub async fn subscribe(&self, start: StartAt) -> Result<Subscription, Error> {
        let next = match start {
            StartAt::Oldest => 0,
            StartAt::Offset(offset) => offset,
            StartAt::Now => {
                let r = self
                    .client
                    .get(
                        self.messages.as_str(),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await?;
                r.header.map_or(0, |h| h.revision) + 1
            }
        };
        let state = Follow {
            client: self.client.clone(),
            prefix: self.messages.clone(),
            next,
            pending: VecDeque::new(),
            watch: None,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut s| async move {
                let item = s.next_message().await;
                Some((item, s))
            },
        )))
    }

    /// The durable consumer group `name` of this topic.
    pub fn group(&self, name: &str) -> ConsumerGroup {
        ConsumerGroup {
            topic: self.clone(),
            cursor: format!("{}{name}", self.groups),
        }
    }
}

/// The reading side of a subscription: retained messages page by page, then a watch.
struct Follow {
    client: Client,
    prefix: String,
    /// The lowest offset not yet delivered.
    next: i64,
    pending: VecDeque<Message>,
    /// Set once the retained messages have been read.
    watch: Option<Watch>,
}

impl Follow {
    async fn next_message(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                self.next = m.offset + 1;
                return Ok(m);
            }
            match self.watch.as_mut() {
                None => self.read_page().await?,
                Some(watch) => match watch.next().await {
                    Some(Ok(batch)) => self.pending.extend(
                        batch
                            .events
                            .into_iter()
                            .filter(|e| e.r#type == EventType::Put as i32)
                            .filter_map(|e| e.kv)
                            // A message is a key's creation; later puts to it are not.
                            .filter(|kv| kv.create_revision == kv.mod_revision)
                            .filter(|kv| kv.create_revision >= self.next)
                            .map(message),
                    ),
                    // Fell behind the compaction: what is still retained is read again
                    // from the keys, from the next offset on.
                    Some(Err(cairn_client::Error::Compacted { .. })) => self.watch = None,
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        return Err(Error::Client(cairn_client::Error::Unavailable(
                            "watch ended".into(),
                        )))
                    }
                },
            }
        }
    }

    /// Reads the next page of retained messages; after the last page, starts the watch at
    /// the revision after the one the read saw.
    async fn read_page(&mut self) -> Result<(), Error> {
        let r = self
            .client
            .get(
                self.prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_min_create_revision(self.next)
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(PAGE),
                ),
            )
            .await?;
        let at = r.header.map_or(0, |h| h.revision);
        let more = r.more;
        self.pending.extend(r.kvs.into_iter().map(message));
        if !more {
            // Every retained message created up to `at` is in the pages read.
            let from = self.next.max(at + 1);
            self.watch = Some(
                self.client.watch(
                    self.prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(from)
                            .without_deletes(),
                    ),
                ),
            );
        }
        Ok(())
    }
}

fn message(kv: cairn_client::KeyValue) -> Message {
    Message {
        offset: kv.create_revision,
        key: kv.key,
        payload: kv.value,
    }
}

/// A named, durable position in a topic: its committed offset survives restarts, so a
/// consumer resumes after the last message it committed. Each group sees every message.
#[derive(Clone)]
pub struct ConsumerGroup {
    topic: Topic,
    cursor: String,
}

impl ConsumerGroup {
    /// The last committed offset, if any.
    pub async fn committed(&self) -> Result<Option<i64>, Error> {
        Ok(self.read().await?.0)
    }

    /// Follows the topic from after the committed offset (from the oldest retained message
    /// if nothing was committed yet).
    pub async fn subscribe(&self) -> Result<Subscription, Error> {
        let start = match self.committed().await? {
            Some(offset) => StartAt::Offset(offset + 1),
            None => StartAt::Oldest,
        };
        self.topic.subscribe(start).await
    }

    /// Records that the group has handled every message up to `offset`. A commit never
    /// moves the cursor back (a slower consumer of the same group cannot undo a faster one).
    pub async fn commit(&self, offset: i64) -> Result<(), Error> {
        let key = self.cursor.as_str();
        loop {
            let (current, mod_rev) = self.read().await?;
            if current.is_some_and(|c| c >= offset) {
                return Ok(());
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(key).eq(mod_rev)])
                .and_then([Op::put(key, offset.to_string(), None)]);
            // A refused retry re-reads the cursor, which already holds `offset`.
            if crate::guarded_txn(&self.topic.client, txn).await?.succeeded {
                return Ok(());
            }
        }
    }

    async fn read(&self) -> Result<(Option<i64>, i64), Error> {
        let r = self.topic.client.get(self.cursor.as_str(), None).await?;
        match r.kvs.first() {
            None => Ok((None, 0)),
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let offset = text
                    .trim()
                    .parse()
                    .map_err(|_| Error::NotACounter(text.into_owned()))?;
                Ok((Some(offset), kv.mod_revision))
            }
        }
    }
}
