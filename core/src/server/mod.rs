//! The embeddable server: `Server::start(config)` opens the data directory, starts the
//! apply loop and the raft Ready loop on their own threads, and serves the gRPC services on
//! every client URL until [`Server::stop`].

mod kv;
mod lease;
mod maintenance;
mod validate;
mod watch;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use cairn_api::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::apply::Applier;
use crate::config::Config;
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{Membership, MembershipError};
use crate::mvcc::Store;
use crate::node::{Node, NodeParts};
use crate::raft::{RaftStatus, RaftStorage, ReadyLoop, ReadyLoopConfig};
use crate::wait::Waiters;
use crate::watch::WatchHub;

pub use maintenance::ETCD_API_VERSION;

/// gRPC framing and field overhead allowed on top of `--max-request-bytes`, as etcd does,
/// so an oversized request reaches our own check and gets etcd's error text.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Resolves once the server is stopping (or its stop signal is gone).
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("invalid URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("storage: {0}")]
    Storage(#[from] Error),
    #[error("{0}")]
    Thread(std::io::Error),
}

/// A running member. Dropping it without [`Server::stop`] leaves the threads running until
/// the process ends.
pub struct Server {
    node: Arc<Node>,
    client_addrs: Vec<SocketAddr>,
    shutdown: tokio::sync::watch::Sender<bool>,
    serving: Vec<JoinHandle<()>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// `http://host:port` → a socket address (host names are resolved).
async fn resolve(url: &str) -> Result<SocketAddr, StartError> {
    let bad = |why: &str| StartError::Url(url.to_string(), why.to_string());
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => return Err(bad("TLS is not supported yet; use http://")),
        Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme}"))),
        None => return Err(bad("expected scheme://host:port")),
    };
    let hostport = rest.trim_end_matches('/');
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| bad(&e.to_string()))?;
    addrs.next().ok_or_else(|| bad("resolves to no address"))
}

impl Server {
    /// Starts a member as configured; returns once it is serving clients.
    pub async fn start(cfg: Config) -> Result<Server, StartError> {
        let membership = Membership::from_config(&cfg)?;
        let data_dir = cfg.data_dir();
        let db_dir = data_dir.join("member").join("db");
        std::fs::create_dir_all(&db_dir)
            .map_err(|e| StartError::DataDir(data_dir.display().to_string(), e))?;
        let db = Store::open_database(&db_dir)?;
        // etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds rounded up.
        let min_ttl = (cfg.election_timeout * 3 / 2).div_ceil(1000) as i64;
        let lessor = Arc::new(Lessor::new(min_ttl));
        let store = Arc::new(Store::open(&db, lessor.clone())?);
        let hub = WatchHub::start(store.clone()).map_err(StartError::Thread)?;
        let applied_index = store.applied_index();
        let raft_storage = RaftStorage::open(&db, &membership.voters(), applied_index)?;

        let waiters = Arc::new(Waiters::default());
        let raft_status = Arc::new(RaftStatus::default());
        let (applied_tx, applied_rx) = tokio::sync::watch::channel(applied_index);
        let (apply_tx, apply_rx) = mpsc::channel();
        let (command_tx, command_rx) = mpsc::channel();

        let applier = Applier {
            store: store.clone(),
            waiters: waiters.clone(),
            applied: applied_tx,
            hub: hub.clone(),
        };
        let tick = Duration::from_millis(cfg.heartbeat_interval.max(1));
        let ready_loop = ReadyLoop::new(
            ReadyLoopConfig {
                member_id: membership.local_id,
                tick,
                election_ticks: (cfg.election_timeout / cfg.heartbeat_interval.max(1)).max(2)
                    as usize,
                applied_index,
                lessor: lessor.clone(),
            },
            raft_storage,
            db,
            command_rx,
            apply_tx,
            waiters.clone(),
            raft_status.clone(),
            applied_rx.clone(),
        )?;
        let mut threads = vec![thread::Builder::new()
            .name("apply".into())
            .spawn(move || applier.run(apply_rx))
            .map_err(StartError::Thread)?];
        threads.push(
            thread::Builder::new()
                .name("raft".into())
                .spawn(move || {
                    if let Err(e) = ready_loop.run() {
                        tracing::error!(error = %e, "raft loop stopped");
                    }
                })
                .map_err(StartError::Thread)?,
        );

        let node = Arc::new(Node::new(NodeParts {
            store,
            membership,
            raft_status,
            commands: command_tx,
            waiters,
            applied: applied_rx,
            max_request_bytes: cfg.max_request_bytes,
            // etcd's request timeout: 5 s plus two election timeouts.
            request_timeout: Duration::from_millis(5000 + 2 * cfg.election_timeout),
        }));

        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let limit = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
            .add_service(
                KvServer::new(kv::KvService::new(node.clone(), cfg.max_txn_ops))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(maintenance::ClusterService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                WatchServer::new(watch::WatchService::new(
                    node.clone(),
                    hub,
                    cfg.max_request_bytes,
                    cfg.watch_progress_notify_interval,
                    shutdown_rx.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                LeaseServer::new(lease::LeaseService::new(node.clone(), shutdown_rx.clone()))
                    .max_decoding_message_size(limit),
            );

        let mut serving = vec![tokio::spawn(lease::expiry_loop(
            node.clone(),
            Duration::from_millis(cfg.election_timeout),
            shutdown_rx.clone(),
        ))];
        let mut client_addrs = Vec::new();
        for url in &cfg.listen_client_urls {
            let addr = resolve(url).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Listen(url.clone(), e))?;
            let local = listener
                .local_addr()
                .map_err(|e| StartError::Listen(url.clone(), e))?;
            client_addrs.push(local);
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let mut stop = shutdown_rx.clone();
            let router = router.clone();
            serving.push(tokio::spawn(async move {
                let signal = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
                    tracing::error!(error = %e, %local, "client listener failed");
                }
            }));
            tracing::info!(%local, "serving client requests");
        }
        tracing::info!(
            name = cfg.name,
            member_id = format!("{:x}", node.membership.local_id),
            cluster_id = format!("{:x}", node.membership.cluster_id),
            data_dir = %data_dir.display(),
            "cairn member started"
        );
        Ok(Server {
            node,
            client_addrs,
            shutdown,
            serving,
            threads,
        })
    }

    /// The bound client addresses (useful with port 0).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    pub fn member_id(&self) -> u64 {
        self.node.membership.local_id
    }

    /// Stops serving, lets in-flight requests finish, stops the raft and apply loops and
    /// syncs storage.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.serving {
            let _ = task.await;
        }
        let store = self.node.store.clone();
        // The services held the other references; dropping the last one closes the raft
        // command channel, which ends the raft loop, which ends the apply loop.
        drop(self.node);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            if let Err(e) = store.sync() {
                tracing::error!(error = %e, "final sync failed");
            }
        })
        .await;
        tracing::info!("cairn member stopped");
    }
}
