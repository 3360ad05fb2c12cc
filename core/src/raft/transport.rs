//! The peer transport: raft messages to other members over long-lived gRPC streams.
//!
//! The raft thread hands outgoing messages to [`Transport::send`], which never blocks: each
//! peer has a bounded queue drained by its own task, which (re)connects to the peer's URL
//! from the membership and streams the messages. A full queue or a broken connection drops
//! messages — raft retransmits — and reports the peer unreachable so raft probes it again.
//! Snapshot messages go their own way: the state is dumped from the store and streamed in
//! chunks on a separate call, then raft is told whether it arrived.

use std::collections::{HashMap, HashSet};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use cairn_api::cairnpb::{peer_client::PeerClient, RaftEnvelope, SnapshotChunk};
use cairn_client::tls::Connector;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Message, MessageType};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::snapshot;
use super::Command;
use crate::membership::Membership;
use crate::mvcc::Store;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub struct Transport {
    /// Dials peer URLs (with the peer certificate for `https://` ones).
    connector: Connector,
    local_id: u64,
    membership: Arc<Membership>,
    store: Arc<Store>,
    commands: std_mpsc::Sender<Command>,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
    queues: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    clients: Mutex<HashMap<u64, (String, PeerClient<Channel>)>>,
    /// Members whose traffic is dropped both ways (fault injection in tests).
    blocked: Mutex<HashSet<u64>>,
}

/// Whether a connection attempt was refused: the peer's host answered, but nothing listens
/// on the port any more (a timeout says nothing about whether the process lives).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation; the map is consistent after a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport {
    pub fn new(
        connector: Connector,
        local_id: u64,
        membership: Arc<Membership>,
        store: Arc<Store>,
        commands: std_mpsc::Sender<Command>,
        runtime: tokio::runtime::Handle,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            connector,
            local_id,
            membership,
            store,
            commands,
            runtime,
            shutdown,
            queues: Mutex::default(),
            clients: Mutex::default(),
            blocked: Mutex::default(),
        })
    }

    /// Sends raft messages; called by the raft thread, never blocks.
    pub fn send(self: &Arc<Self>, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            if to == self.local_id || self.is_blocked(to) {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let t = self.clone();
                self.runtime.spawn(async move { t.send_snapshot(m).await });
                continue;
            }
            let queue = {
                let mut queues = lock(&self.queues);
                queues
                    .entry(to)
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(PEER_QUEUE);
                        let t = self.clone();
                        self.runtime.spawn(async move { t.peer_loop(to, rx).await });
                        tx
                    })
                    .clone()
            };
            if queue.try_send(m).is_err() {
                let _ = self.commands.send(Command::Unreachable(to));
            }
        }
    }

    pub fn is_blocked(&self, id: u64) -> bool {
        lock(&self.blocked).contains(&id)
    }

    pub fn set_blocked(&self, ids: &[u64]) {
        *lock(&self.blocked) = ids.iter().copied().collect();
        tracing::warn!(blocked = ?ids, "fault injection: raft traffic with these members dropped");
    }

    fn peer_url(&self, id: u64) -> Option<String> {
        self.membership
            .member(id)
            .and_then(|m| m.peer_ur_ls.into_iter().next())
    }

    /// A client for a peer's Peer service (for forwarding lease calls); connects lazily.
    pub fn client(&self, id: u64) -> Option<PeerClient<Channel>> {
        let url = self.peer_url(id)?;
        let mut clients = lock(&self.clients);
        if let Some((u, c)) = clients.get(&id) {
            if *u == url {
                return Some(c.clone());
            }
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT);
        let c = PeerClient::new(endpoint.connect_with_connector_lazy(self.connector.clone()));
        clients.insert(id, (url, c.clone()));
        Some(c)
    }

    async fn connect(&self, id: u64) -> Option<PeerClient<Channel>> {
        let url = self.peer_url(id)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        match endpoint
            .connect_with_connector(self.connector.clone())
            .await
        {
            Ok(channel) => Some(PeerClient::new(channel)),
            Err(e) => {
                // A refused certificate shows here (the peer logs its side).
                tracing::debug!(peer = format!("{id:x}"), %url, error = ?e, "cannot reach peer");
                if refused(&e) {
                    let _ = self.commands.send(Command::PeerDown(id));
                }
                None
            }
        }
    }

    /// Streams queued messages to one peer, reconnecting with backoff while it is down.
    async fn peer_loop(self: Arc<Self>, id: u64, mut queue: mpsc::Receiver<Message>) {
        let mut shutdown = self.shutdown.clone();
        let mut backoff = Duration::from_millis(50);
        loop {
            if *shutdown.borrow() {
                return;
            }
            if self.membership.is_removed(id) {
                lock(&self.queues).remove(&id);
                return;
            }
            let Some(mut client) = self.connect(id).await else {
                // Whatever was queued is stale by the time the peer is back.
                while queue.try_recv().is_ok() {}
                let _ = self.commands.send(Command::Unreachable(id));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::server::stopped(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            backoff = Duration::from_millis(50);
            let (tx, rx) = mpsc::channel::<RaftEnvelope>(256);
            let mut call = Box::pin(client.stream(ReceiverStream::new(rx)));
            tracing::debug!(peer = format!("{id:x}"), "peer stream open");
            loop {
                tokio::select! {
                    m = queue.recv() => {
                        let Some(m) = m else { return };
                        let Ok(bytes) = m.write_to_bytes() else { continue };
                        if tx.send(RaftEnvelope { message: bytes }).await.is_err() {
                            break;
                        }
                    }
                    _ = &mut call => break,
                    _ = crate::server::stopped(&mut shutdown) => return,
                }
            }
            tracing::debug!(peer = format!("{id:x}"), "peer stream closed");
            let _ = self.commands.send(Command::Unreachable(id));
        }
    }

    /// Dumps the store and streams it with the snapshot message, whose metadata is set to
    /// the state actually dumped (a later applied index than raft asked for is still a
    /// committed prefix of the log).
    async fn send_snapshot(self: Arc<Self>, mut m: Message) {
        let to = m.to;
        let ok = match self.connect(to).await {
            Some(mut client) => {
                let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
                let store = self.store.clone();
                let dumping = tokio::task::spawn_blocking(move || {
                    let chunks = tx.clone();
                    let dumped = snapshot::dump(&store, |data| {
                        chunks
                            .blocking_send(SnapshotChunk {
                                data,
                                ..Default::default()
                            })
                            .is_ok()
                    })?;
                    let conf_state = match store.conf_state()? {
                        Some(b) => ConfState::parse_from_bytes(&b)
                            .map_err(|_| crate::error::Error::Corrupt("conf state".into()))?,
                        None => ConfState::default(),
                    };
                    let meta = m.mut_snapshot().mut_metadata();
                    meta.index = dumped.index;
                    meta.term = dumped.term;
                    meta.set_conf_state(conf_state);
                    let message = m
                        .write_to_bytes()
                        .map_err(|e| crate::error::Error::Storage(e.to_string()))?;
                    let _ = tx.blocking_send(SnapshotChunk {
                        message,
                        data: vec![],
                        checksum: dumped.checksum,
                    });
                    tracing::info!(
                        to = format!("{to:x}"),
                        index = dumped.index,
                        "snapshot sent"
                    );
                    Ok::<(), crate::error::Error>(())
                });
                let sent = client.snapshot(ReceiverStream::new(rx)).await;
                matches!(dumping.await, Ok(Ok(()))) && sent.is_ok()
            }
            None => false,
        };
        if !ok {
            tracing::warn!(to = format!("{to:x}"), "snapshot not delivered");
        }
        let _ = self.commands.send(Command::SnapshotStatus(to, ok));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on any more: bound, then released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        port
    }

    #[tokio::test]
    async fn a_dial_to_a_closed_port_is_refused_through_the_grpc_error_chain() {
        let url = format!("http://127.0.0.1:{}", closed_port());
        let err = Endpoint::from_shared(url)
            .expect("endpoint")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(Connector::new(None))
            .await
            .expect_err("nothing listens");
        assert!(refused(&err), "not seen as refused: {err:?}");
    }

    #[test]
    fn other_connection_errors_are_not_refusals() {
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(!refused(&timed_out));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!refused(&reset));
    }
}
