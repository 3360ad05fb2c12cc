//! The Watch service: one bidirectional stream carries many watchers.
//!
//! Each stream has two halves that share its watcher table. A task reads the client's
//! create/cancel/progress requests and queues their answers on a small control channel.
//! The response body itself (`Responses`) is what hyper polls for the next message: it
//! takes control answers first and otherwise turns the hub's deliveries into responses
//! (adding prev_kv and splitting fragments as asked). An event thus goes from the hub's
//! channel straight into the HTTP/2 stream, without a task of ours in between; with a
//! thousand watchers that hop was a wake-up and a task switch per watcher per event.
//!
//! A client that stops reading leaves its body unpolled: the bounded delivery channel
//! fills and its watchers fall back to catch-up from storage instead of buffering.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_api::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use cairn_api::mvccpb::Event;
use futures::{Future, Stream};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::METRICS;
use crate::mvcc::{KeyRange, RangeOptions, ReadView};
use crate::node::Node;
use crate::watch::{Delivery, WatchHub, WatchSpec, WatcherHandle};

/// Deliveries a stream's watchers may have queued before they fall back to catch-up.
const DELIVERY_QUEUE: usize = 1024;
/// Answers to requests queued for the client; a client that sends requests without
/// reading the answers waits once this is full.
const CONTROL_QUEUE: usize = 64;
/// How often a progress request that had to wait (a watcher catching up) is tried again.
const PROGRESS_RETRY: Duration = Duration::from_millis(50);

pub struct WatchService {
    node: Arc<Node>,
    hub: Arc<WatchHub>,
    max_request_bytes: usize,
    progress_interval: Duration,
    /// Flips to true when the server stops: every stream ends.
    shutdown: watch::Receiver<bool>,
}

impl WatchService {
    pub fn new(
        node: Arc<Node>,
        hub: Arc<WatchHub>,
        max_request_bytes: usize,
        progress_interval: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        WatchService {
            node,
            hub,
            max_request_bytes,
            progress_interval,
            shutdown,
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (deliver, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        let shared = Arc::new(Shared {
            node: self.node.clone(),
            hub: self.hub.clone(),
            table: Mutex::new(Table::default()),
        });
        let requests = Requests {
            shared: shared.clone(),
            control,
            deliver,
            progress_due: false,
            shutdown: self.shutdown.clone(),
            credentials: super::auth::Credentials::of(&self.node, &req),
        };
        tokio::spawn(requests.run(req.into_inner(), self.progress_interval));
        Ok(Response::new(Box::pin(Responses {
            shared,
            max_request_bytes: self.max_request_bytes,
            control: control_rx,
            deliveries,
            outbox: VecDeque::new(),
            reading: None,
        })))
    }
}

struct WatcherOpts {
    handle: WatcherHandle,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Whether anything was sent since the last progress tick.
    active: bool,
}

/// The watchers of one stream by id, and ids by hub handle.
#[derive(Default)]
struct Table {
    by_id: HashMap<i64, WatcherOpts>,
    by_handle: HashMap<WatcherHandle, i64>,
    next_id: i64,
}

impl Table {
    fn remove(&mut self, id: i64) -> Option<WatcherOpts> {
        let w = self.by_id.remove(&id)?;
        self.by_handle.remove(&w.handle);
        METRICS.watchers.dec();
        Some(w)
    }
}

/// What both halves of a stream use.
struct Shared {
    node: Arc<Node>,
    hub: Arc<WatchHub>,
    /// Lock order: this table before the hub. A watcher is entered here and its created
    /// answer queued under one lock, so whoever finds a watcher here finds its created
    /// answer already queued.
    table: Mutex<Table>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent before it can panic.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The request half: reads the client's requests and ticks progress notifications.
struct Requests {
    shared: Arc<Shared>,
    control: mpsc::Sender<WatchResponse>,
    /// Handed to the hub for every watcher created on this stream.
    deliver: mpsc::Sender<Delivery>,
    /// A progress request waits for the stream's watchers to catch up.
    progress_due: bool,
    /// A client that stops reading must not hold up shutdown.
    shutdown: watch::Receiver<bool>,
    /// Who opened the stream: each watcher it creates needs read on its keys.
    credentials: super::auth::Credentials,
}

impl Requests {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>, progress: Duration) {
        METRICS.watch_streams.inc();
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(progress);
        ticker.tick().await;
        let mut retry = tokio::time::interval(PROGRESS_RETRY);
        // The body goes when the client resets the stream or the connection drops.
        let body = self.control.clone();
        let mut reading = true;
        loop {
            let alive = tokio::select! {
                msg = inbound.message(), if reading => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    // A client that closes its sending side still gets its events, as
                    // from etcd.
                    Ok(None) => {
                        reading = false;
                        true
                    }
                    Err(_) => false,
                },
                _ = body.closed() => false,
                _ = super::stopped(&mut shutdown) => false,
                _ = ticker.tick() => {
                    let quiet: Vec<WatcherHandle> = {
                        let mut table = self.shared.table();
                        table
                            .by_id
                            .values_mut()
                            .filter_map(|w| {
                                let quiet = w.progress_notify && !w.active;
                                w.active = false;
                                quiet.then_some(w.handle)
                            })
                            .collect()
                    };
                    // Outside the table lock: the hub's may be held by a long publish.
                    for h in quiet {
                        self.shared.hub.progress(h);
                    }
                    true
                }
                _ = retry.tick(), if self.progress_due => {
                    self.progress_due = !self.shared.hub.progress_stream(&self.deliver);
                    true
                }
            };
            if !alive {
                break;
            }
        }
        METRICS.watch_streams.dec();
        let mut table = self.shared.table();
        for (_, w) in table.by_id.drain() {
            METRICS.watchers.dec();
            self.shared.hub.cancel(w.handle);
        }
        table.by_handle.clear();
        // Dropping `control` ends the response body once it has sent what is queued.
    }

    /// A slot on the control channel, or None if the server stops or the body is gone.
    async fn reserve(&self) -> Option<mpsc::Permit<'_, WatchResponse>> {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            permit = self.control.reserve() => permit.ok(),
            _ = super::stopped(&mut stop) => None,
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                let allowed = self.allowed(&c).await;
                let Some(permit) = self.reserve().await else {
                    return false;
                };
                self.create(c, allowed, permit);
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let Some(permit) = self.reserve().await else {
                    return false;
                };
                let shared = &self.shared;
                let Some(w) = shared.table().remove(c.watch_id) else {
                    return true;
                };
                shared.hub.cancel(w.handle);
                permit.send(WatchResponse {
                    header: Some(shared.node.header(0)),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                });
            }
            // Answered through the delivery channel, behind the events it vouches for.
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_due = !self.shared.hub.progress_stream(&self.deliver);
            }
            None => {}
        }
        true
    }

    /// Whether the stream's caller may read what `c` watches (a token is checked anew for
    /// each watcher, as etcd does; a watcher once created is not checked again).
    async fn allowed(&self, c: &WatchCreateRequest) -> Result<(), crate::error::Error> {
        let node = &self.shared.node;
        let who = self.credentials.resolve(node).await?;
        // As etcd: the empty key is "\0" for the check (the whole key space is granted as
        // ["\0", "\0")).
        let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
        node.store.auth().check_read(&who, key, &c.range_end)
    }

    /// Registers the watcher and queues its created answer while the table is locked (see
    /// `Shared::table`).
    fn create(
        &self,
        c: WatchCreateRequest,
        allowed: Result<(), crate::error::Error>,
        answer: mpsc::Permit<'_, WatchResponse>,
    ) {
        let shared = &self.shared;
        let refuse = |reason: &str| WatchResponse {
            header: Some(shared.node.header(0)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if let Err(e) = allowed {
            return answer.send(refuse(&super::auth::watch_refusal(&e)));
        }
        // A range end at or before the key selects nothing; "\0" means every key from key on.
        if KeyRange::new(&c.key, &c.range_end).is_empty() {
            return answer.send(refuse("mvcc: watcher range is empty"));
        }
        let mut table = shared.table();
        let id = if c.watch_id != 0 {
            if table.by_id.contains_key(&c.watch_id) {
                return answer.send(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream",
                ));
            }
            c.watch_id
        } else {
            while table.by_id.contains_key(&table.next_id) {
                table.next_id += 1;
            }
            table.next_id += 1;
            table.next_id - 1
        };
        let spec = WatchSpec {
            key: c.key,
            end: c.range_end,
            start_revision: c.start_revision,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        };
        let (handle, rev) = shared.hub.watch(spec, self.deliver.clone());
        table.by_handle.insert(handle, id);
        table.by_id.insert(
            id,
            WatcherOpts {
                handle,
                prev_kv: c.prev_kv,
                fragment: c.fragment,
                progress_notify: c.progress_notify,
                active: false,
            },
        );
        METRICS.watchers.inc();
        answer.send(WatchResponse {
            header: Some(shared.node.header(rev)),
            watch_id: id,
            created: true,
            ..Default::default()
        });
        drop(table);
    }
}

/// The response half: the body hyper polls for the stream's next message.
struct Responses {
    shared: Arc<Shared>,
    max_request_bytes: usize,
    control: mpsc::Receiver<WatchResponse>,
    deliveries: mpsc::Receiver<Delivery>,
    /// Made and not yet taken: answers drained ahead of a delivery, and fragments.
    outbox: VecDeque<WatchResponse>,
    /// Events whose previous values are being read from storage, off the worker; nothing
    /// else goes out before them.
    reading: Option<PrevKvRead>,
}

/// A response being completed with prev_kv by a blocking task, and whether to fragment it.
struct PrevKvRead {
    task: tokio::task::JoinHandle<WatchResponse>,
    fragment: bool,
}

impl Stream for Responses {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(r) = this.outbox.pop_front() {
                return Poll::Ready(Some(Ok(r)));
            }
            if let Some(read) = &mut this.reading {
                let resp = match Pin::new(&mut read.task).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(resp)) => resp,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Some(Err(Status::internal(e.to_string()))))
                    }
                };
                let fragment = read.fragment;
                this.reading = None;
                this.push(resp, fragment);
                continue;
            }
            match this.control.poll_recv(cx) {
                Poll::Ready(Some(r)) => return Poll::Ready(Some(Ok(r))),
                // The request half ended (client gone, server stopping): so does the body.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            match this.deliveries.poll_recv(cx) {
                Poll::Ready(Some(d)) => this.forward(d),
                // The delivery senders go when the request half ends, which closes the
                // control channel too; its waker is registered above.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Responses {
    fn push(&mut self, resp: WatchResponse, fragment: bool) {
        if fragment {
            split(resp, self.max_request_bytes, &mut self.outbox);
        } else {
            self.outbox.push_back(resp);
        }
    }

    /// Turns a delivery into responses in the outbox (none if its watcher was cancelled
    /// meanwhile).
    fn forward(&mut self, d: Delivery) {
        let shared = &*self.shared;
        let mut table = shared.table();
        // Whatever the request half queued before this watcher became visible (its created
        // answer among it) goes first.
        while let Ok(r) = self.control.try_recv() {
            self.outbox.push_back(r);
        }
        let (id, prev_kv, fragment) = match d.handle() {
            Some(handle) => {
                let Some(&id) = table.by_handle.get(&handle) else {
                    return;
                };
                let Some(w) = table.by_id.get_mut(&id) else {
                    return;
                };
                w.active = true;
                (id, w.prev_kv, w.fragment)
            }
            // Not tied to one watcher: the id -1 reaches every watcher of the stream.
            None => (-1, false, false),
        };
        match d {
            Delivery::Events {
                revision, events, ..
            } => {
                drop(table);
                let mut resp = WatchResponse {
                    header: Some(shared.node.header(revision)),
                    watch_id: id,
                    events: owned(events),
                    ..Default::default()
                };
                if prev_kv {
                    // Storage reads: off the worker that polls every stream's body.
                    let node = shared.node.clone();
                    let task = tokio::task::spawn_blocking(move || {
                        add_prev_kvs(&node, &mut resp.events);
                        resp
                    });
                    self.reading = Some(PrevKvRead { task, fragment });
                } else {
                    self.push(resp, fragment);
                }
            }
            Delivery::Progress { revision, .. } | Delivery::StreamProgress { revision } => {
                self.outbox.push_back(WatchResponse {
                    header: Some(shared.node.header(revision)),
                    watch_id: id,
                    ..Default::default()
                });
            }
            Delivery::Compacted {
                compact_revision, ..
            } => {
                // The hub has already dropped the watcher.
                table.remove(id);
                let mut header = shared.node.header(0);
                header.revision = 0;
                self.outbox.push_back(WatchResponse {
                    header: Some(header),
                    watch_id: id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                });
            }
        }
    }
}

/// The previous version of each event's key, read at the revision before the event (left
/// out if that history is compacted), as etcd does.
fn add_prev_kvs(node: &Node, events: &mut [Event]) {
    let Ok(view) = node.store.read() else { return };
    for e in events.iter_mut() {
        let Some(kv) = &e.kv else { continue };
        let opts = RangeOptions {
            rev: kv.mod_revision - 1,
            ..Default::default()
        };
        if let Ok(r) = view.range(&kv.key, &[], opts) {
            e.prev_kv = r.kvs.into_iter().next();
        }
    }
}

/// A delivery's events as a response's own: moved out when this delivery holds the only
/// reference (a catch-up batch, a filtered revision, the last of a fan-out), copied while
/// other watchers still share them.
fn owned(mut events: Arc<[Event]>) -> Vec<Event> {
    match Arc::get_mut(&mut events) {
        Some(only) => only.iter_mut().map(std::mem::take).collect(),
        None => events.to_vec(),
    }
}

/// Splits a response of at least `max_bytes` into fragments in `out`; every one but the
/// last carries `fragment = true`.
fn split(mut resp: WatchResponse, max_bytes: usize, out: &mut VecDeque<WatchResponse>) {
    if resp.encoded_len() < max_bytes || resp.events.len() < 2 {
        out.push_back(resp);
        return;
    }
    let mut events = std::mem::take(&mut resp.events).into_iter().peekable();
    while events.peek().is_some() {
        let mut part = WatchResponse {
            fragment: true,
            ..resp.clone()
        };
        while let Some(e) = events.peek() {
            part.events.push(e.clone());
            if part.events.len() > 1 && part.encoded_len() >= max_bytes {
                part.events.pop();
                break;
            }
            events.next();
        }
        part.fragment = events.peek().is_some();
        out.push_back(part);
    }
}
