//! The Watch service: one bidirectional stream carries many watchers.
//!
//! A task per stream reads create/cancel/progress requests and writes responses. Watchers
//! deliver through a bounded channel from the hub; the task turns deliveries into
//! responses (adding prev_kv and splitting fragments as asked) and writes them to the
//! client. A client that stops reading fills the channel, and its watchers fall back to
//! catch-up from storage instead of buffering.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server::Watch,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use cairn_api::mvccpb::Event;
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::METRICS;
use crate::mvcc::{RangeOptions, ReadView};
use crate::node::Node;
use crate::watch::{Delivery, WatchHub, WatchSpec, WatcherHandle};

/// Deliveries a stream's watchers may have queued before they fall back to catch-up.
const DELIVERY_QUEUE: usize = 1024;
/// Responses queued for the client connection.
const RESPONSE_QUEUE: usize = 64;

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
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (out, out_rx) = mpsc::channel(RESPONSE_QUEUE);
        let (deliver, deliveries) = mpsc::channel(DELIVERY_QUEUE);
        let stream = WatchStream {
            node: self.node.clone(),
            hub: self.hub.clone(),
            max_request_bytes: self.max_request_bytes,
            out,
            deliver,
            watchers: HashMap::new(),
            by_handle: HashMap::new(),
            next_id: 0,
            shutdown: self.shutdown.clone(),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(stream.run(
            req.into_inner(),
            deliveries,
            self.progress_interval,
            shutdown,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
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

struct WatchStream {
    node: Arc<Node>,
    hub: Arc<WatchHub>,
    max_request_bytes: usize,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    deliver: mpsc::Sender<Delivery>,
    watchers: HashMap<i64, WatcherOpts>,
    by_handle: HashMap<WatcherHandle, i64>,
    next_id: i64,
    /// A client that stops reading must not hold up shutdown.
    shutdown: watch::Receiver<bool>,
}

impl WatchStream {
    async fn run(
        mut self,
        mut inbound: Streaming<WatchRequest>,
        mut deliveries: mpsc::Receiver<Delivery>,
        progress: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        METRICS.watch_streams.inc();
        let mut ticker = tokio::time::interval(progress);
        ticker.tick().await;
        loop {
            let alive = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.handle(req).await,
                    // The client closed its side or the connection broke.
                    Ok(None) | Err(_) => false,
                },
                Some(d) = deliveries.recv() => self.forward(d).await,
                _ = super::stopped(&mut shutdown) => false,
                _ = ticker.tick() => {
                    for w in self.watchers.values_mut() {
                        if w.progress_notify && !w.active {
                            self.hub.progress(w.handle);
                        }
                        w.active = false;
                    }
                    true
                }
            };
            if !alive {
                break;
            }
        }
        METRICS.watch_streams.dec();
        METRICS.watchers.dec_by(self.watchers.len() as i64);
        for w in self.watchers.values() {
            self.hub.cancel(w.handle);
        }
    }

    async fn send(&self, resp: WatchResponse) -> bool {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            sent = self.out.send(Ok(resp)) => sent.is_ok(),
            _ = super::stopped(&mut stop) => false,
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                let Some(w) = self.watchers.remove(&c.watch_id) else {
                    return true;
                };
                METRICS.watchers.dec();
                self.hub.cancel(w.handle);
                self.by_handle.remove(&w.handle);
                let header = Some(self.node.header(0));
                self.send(WatchResponse {
                    header,
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Not tied to one watcher: the id -1 reaches every watcher of the stream.
                let header = Some(self.node.header(self.hub.current_rev()));
                self.send(WatchResponse {
                    header,
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => true,
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let refuse = |reason: &str| WatchResponse {
            header: Some(self.node.header(0)),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        // A range end at or before the key selects nothing; "\0" means every key from key on.
        if !c.range_end.is_empty() && c.range_end != [0] && c.key >= c.range_end {
            return self.send(refuse("mvcc: watcher range is empty")).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .send(refuse(
                        "mvcc: duplicate watch ID provided on the WatchStream",
                    ))
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let spec = WatchSpec {
            key: c.key,
            end: c.range_end,
            start_revision: c.start_revision,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        };
        // Registered before the created response is queued: events can only follow it.
        let (handle, rev) = self.hub.watch(spec, self.deliver.clone());
        self.by_handle.insert(handle, id);
        METRICS.watchers.inc();
        self.watchers.insert(
            id,
            WatcherOpts {
                handle,
                prev_kv: c.prev_kv,
                fragment: c.fragment,
                progress_notify: c.progress_notify,
                active: false,
            },
        );
        let header = Some(self.node.header(rev));
        self.send(WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    async fn forward(&mut self, d: Delivery) -> bool {
        let handle = match &d {
            Delivery::Events { handle, .. }
            | Delivery::Compacted { handle, .. }
            | Delivery::Progress { handle, .. } => *handle,
        };
        // Deliveries for a watcher cancelled meanwhile are dropped.
        let Some(&id) = self.by_handle.get(&handle) else {
            return true;
        };
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        w.active = true;
        let (prev_kv, fragment) = (w.prev_kv, w.fragment);
        match d {
            Delivery::Events {
                revision,
                mut events,
                ..
            } => {
                if prev_kv {
                    self.add_prev_kvs(&mut events);
                }
                let resp = WatchResponse {
                    header: Some(self.node.header(revision)),
                    watch_id: id,
                    events,
                    ..Default::default()
                };
                if fragment {
                    self.send_fragments(resp).await
                } else {
                    self.send(resp).await
                }
            }
            Delivery::Progress { revision, .. } => {
                self.send(WatchResponse {
                    header: Some(self.node.header(revision)),
                    watch_id: id,
                    ..Default::default()
                })
                .await
            }
            Delivery::Compacted {
                compact_revision, ..
            } => {
                if self.watchers.remove(&id).is_some() {
                    METRICS.watchers.dec();
                }
                self.by_handle.remove(&handle);
                let mut header = self.node.header(0);
                header.revision = 0;
                self.send(WatchResponse {
                    header: Some(header),
                    watch_id: id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// The previous version of each event's key, read at the revision before the event (left
    /// out if that history is compacted), as etcd does.
    fn add_prev_kvs(&self, events: &mut [Event]) {
        let view = self.node.store.read();
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

    /// Splits a response larger than the request limit into fragments; every one but the
    /// last carries `fragment = true`.
    async fn send_fragments(&self, mut resp: WatchResponse) -> bool {
        if resp.encoded_len() < self.max_request_bytes || resp.events.len() < 2 {
            return self.send(resp).await;
        }
        let mut events = std::mem::take(&mut resp.events).into_iter().peekable();
        while events.peek().is_some() {
            let mut part = WatchResponse {
                fragment: true,
                ..resp.clone()
            };
            while let Some(e) = events.peek() {
                part.events.push(e.clone());
                if part.events.len() > 1 && part.encoded_len() >= self.max_request_bytes {
                    part.events.pop();
                    break;
                }
                events.next();
            }
            part.fragment = events.peek().is_some();
            if !self.send(part).await {
                return false;
            }
        }
        true
    }
}
