//! Watches as a `Stream` of event batches that survives the loss of the member it streams
//! from: a background task re-creates the watch on the next endpoint from the revision after
//! the last one delivered, and drops anything at or below it, so every event arrives exactly
//! once and in order.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_api::etcdserverpb::{
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
    WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use cairn_api::mvccpb::Event;
use futures::Stream;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::kv::{range_options, KeyRange};
use crate::{Client, Error};

/// Options of [`Client::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub(crate) range: KeyRange,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
}

range_options!(WatchOptions);

impl WatchOptions {
    /// No options: the key, from now on.
    pub fn new() -> Self {
        Self::default()
    }
    /// Replay history from `revision` (it must not be compacted).
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Each event carries the key's previous value.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Idle watchers get empty batches telling the current revision.
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Leave out puts.
    pub fn without_puts(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leave out deletes.
    pub fn without_deletes(mut self) -> Self {
        self.no_delete = true;
        self
    }
}

/// The events of one or more revisions, in order; empty for a progress notification.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// Everything up to this revision has been delivered.
    pub revision: i64,
    /// The events, in revision order.
    pub events: Vec<Event>,
    /// The header of the server's response (its member, and the store's revision then).
    pub header: Option<cairn_api::etcdserverpb::ResponseHeader>,
}

/// A watch; dropping it cancels the watch.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
/// use futures::StreamExt;
/// use cairn_client::WatchOptions;
/// let mut watch = client.watch("svc/", Some(WatchOptions::new().with_prefix()));
/// while let Some(batch) = watch.next().await {
///     for event in batch?.events {
///         println!("{:?}", event.kv);
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Watch {
    events: ReceiverStream<Result<WatchBatch, Error>>,
    task: tokio::task::JoinHandle<()>,
    progress: Arc<Notify>,
}

impl Watch {
    /// Asks the member for a progress notification: an empty batch whose revision says that
    /// every event up to it has been delivered, even when none of them matched (etcd 3.4's
    /// `RequestProgress`). A read-your-writes wait for a write outside the watched keys
    /// needs it. Requests made while the watch is reconnecting are sent once it is back.
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }
}

impl Stream for Watch {
    type Item = Result<WatchBatch, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one stream ended.
enum Ended {
    /// The consumer went away: stop.
    Consumer,
    /// The member or connection failed: resume elsewhere.
    Member,
    /// A final error was delivered: stop.
    Final,
    /// The server no longer took the token (the login count it was sent with): log in
    /// again and resume.
    Relogin(u64),
}

impl Client {
    /// Watches `key` (or a range, with options). The stream ends only with a final error
    /// (e.g. [`Error::Compacted`]) or when dropped.
    pub fn watch(&self, key: impl Into<Vec<u8>>, options: Option<WatchOptions>) -> Watch {
        let (tx, rx) = mpsc::channel(64);
        let client = self.clone();
        let key = key.into();
        let options = options.unwrap_or_default();
        let progress = Arc::new(Notify::new());
        let asked = progress.clone();
        let task = tokio::spawn(async move { client.watch_task(key, options, tx, asked).await });
        Watch {
            events: ReceiverStream::new(rx),
            task,
            progress,
        }
    }

    async fn watch_task(
        self,
        key: Vec<u8>,
        options: WatchOptions,
        tx: mpsc::Sender<Result<WatchBatch, Error>>,
        progress: Arc<Notify>,
    ) {
        // The first revision not yet delivered; 0 until the first watch is created.
        let mut next = options.start_revision.max(0);
        let mut delays = self.backoff();
        let mut relogged = false;
        loop {
            let (i, channel) = self.current();
            match self
                .watch_once(channel, &key, &options, &mut next, &tx, &progress)
                .await
            {
                Ended::Consumer | Ended::Final => return,
                Ended::Relogin(seen) => {
                    // Once in a row: a login that does not help is a final answer.
                    if relogged {
                        let e = Error::Server(tonic::Status::unauthenticated(
                            "etcdserver: invalid auth token",
                        ));
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    relogged = true;
                    if let Err(e) = self.relogin(seen).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    continue;
                }
                Ended::Member => {
                    relogged = false;
                    self.rotate(i);
                    let delay = match delays.next() {
                        Some(d) => d,
                        None => {
                            // Keep trying, slowly: a watch outlives outages.
                            delays = self.backoff();
                            std::time::Duration::from_secs(1)
                        }
                    };
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn watch_once(
        &self,
        channel: crate::auth::AuthChannel,
        key: &[u8],
        options: &WatchOptions,
        next: &mut i64,
        tx: &mpsc::Sender<Result<WatchBatch, Error>>,
        progress: &Notify,
    ) -> Ended {
        let mut filters = Vec::new();
        if options.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if options.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        let create = WatchCreateRequest {
            key: options.range.key(key.to_vec()),
            range_end: options.range.end(key),
            start_revision: *next,
            progress_notify: options.progress_notify,
            filters,
            prev_kv: options.prev_kv,
            ..Default::default()
        };
        let logins = self.logins();
        let (req_tx, req_rx) = mpsc::channel(1);
        let _ = req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut stream = match client.watch(ReceiverStream::new(req_rx)).await {
            Ok(s) => s.into_inner(),
            Err(s) if Error::from(s.clone()).is_unavailable() => return Ended::Member,
            Err(s) => {
                let _ = tx.send(Err(Error::from(s))).await;
                return Ended::Final;
            }
        };
        let mut pending: Vec<Event> = Vec::new();
        loop {
            let resp = tokio::select! {
                r = stream.message() => r,
                _ = tx.closed() => return Ended::Consumer,
                _ = progress.notified() => {
                    let ask = WatchRequest {
                        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
                    };
                    if req_tx.send(ask).await.is_err() {
                        return Ended::Member;
                    }
                    continue;
                }
            };
            let resp = match resp {
                Ok(Some(r)) => r,
                Ok(None) => return Ended::Member,
                Err(s) => {
                    let e = Error::from(s);
                    if e.is_unavailable() {
                        return Ended::Member;
                    }
                    let _ = tx.send(Err(e)).await;
                    return Ended::Final;
                }
            };
            let header = resp.header;
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            if resp.canceled {
                // A refused token: worth a new login if this client has credentials.
                let token_refused = ["invalid auth token", "revision of auth store is old"]
                    .iter()
                    .any(|r| resp.cancel_reason.contains(r));
                if token_refused && self.session.can_login() {
                    return Ended::Relogin(logins);
                }
                let e = if resp.compact_revision > 0 {
                    Error::Compacted {
                        compact_revision: resp.compact_revision,
                    }
                } else {
                    Error::Server(tonic::Status::cancelled(resp.cancel_reason))
                };
                let _ = tx.send(Err(e)).await;
                return Ended::Final;
            }
            if resp.created {
                if *next == 0 {
                    *next = revision + 1;
                }
                continue;
            }
            // A fragmented revision arrives in pieces: deliver it whole.
            pending.extend(resp.events);
            if resp.fragment {
                continue;
            }
            let events: Vec<Event> = std::mem::take(&mut pending)
                .into_iter()
                .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= *next))
                .collect();
            let upto = events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map_or(revision, |kv| kv.mod_revision);
            if events.is_empty() && upto < *next {
                // Everything here was delivered before a reconnect.
                continue;
            }
            *next = (*next).max(upto + 1);
            if tx
                .send(Ok(WatchBatch {
                    revision: upto,
                    events,
                    header,
                }))
                .await
                .is_err()
            {
                return Ended::Consumer;
            }
        }
    }
}
