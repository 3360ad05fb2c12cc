//! The embeddable server: `Server::start(config)` opens the data directory, finds out
//! who this member is (a new cluster, a restart, or joining an existing cluster), starts the
//! apply loop and the raft Ready loop on their own threads, serves the Peer service on the
//! peer URLs and the gRPC services on every client URL until [`Server::stop`].

mod auth;
mod authority;
mod cluster;
mod compactor;
mod dashboard;
mod election;
mod gateway;
mod grpc_metrics;
mod health;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod peer;
mod plaintext;
mod preflight;
mod range_stream;
mod tls;
pub mod validate;
mod watch;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use cairn_api::cairnpb::{
    internal_request::Request as Internal, peer_client::PeerClient, peer_server::PeerServer,
    ClusterState, MemberAttributes, MembersRequest,
};
use cairn_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use cairn_api::v3electionpb::election_server::ElectionServer;
use cairn_api::v3lockpb::lock_server::LockServer;
use protobuf::Message as _;
use raft::eraftpb::ConfState;
use tokio::task::JoinHandle;

use crate::apply::{Applier, Halt};
use crate::config::Config;
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{self, Membership, MembershipError};
use crate::mvcc::Store;
use crate::node::{Node, NodeParts};
use crate::raft::{
    RaftStatus, RaftStorage, ReadyLoop, ReadyLoopConfig, Transport, TICKS_PER_HEARTBEAT,
};
use crate::wait::Waiters;
use crate::watch::WatchHub;

/// Largest message on the peer port (snapshot chunks and raft batches are ~1 MiB).
const PEER_MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub use maintenance::{ETCD_API_VERSION, ETCD_CLUSTER_VERSION};

/// gRPC framing and field overhead allowed on top of `--max-request-bytes`, as etcd does,
/// so an oversized request reaches our own check and gets etcd's error text.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Batches of committed entries the raft thread may hand the apply loop ahead of it.
const APPLY_QUEUE: usize = 1024;

/// How long a stopping member waits for in-flight requests and streams to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);

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
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Flag(String),
    #[error("the data directory is damaged: {0}; refusing to start (restore it from a backup, or remove this member and add it back)")]
    Damaged(#[from] crate::integrity::Damaged),
}

/// A running member. Dropping it without [`Server::stop`] cuts its raft traffic and leaves
/// the raft and apply threads running until the process ends.
pub struct Server {
    node: Arc<Node>,
    member_dir: std::path::PathBuf,
    /// Digests of the files checked at start, reused when recording at stop.
    known: crate::integrity::Known,
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    halted: tokio::sync::watch::Receiver<Option<Halt>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    serving: Vec<JoinHandle<()>>,
    threads: Vec<thread::JoinHandle<()>>,
    net: NetThread,
    /// Held while the member runs: a second process on the data directory is refused.
    _lock: preflight::DirLock,
}

/// Raft's network on a thread of its own: the peer listeners and the transport's
/// connections run on a single-threaded runtime there, so heartbeats and appends never
/// queue behind client requests on the shared workers (on a 2-core machine there is one
/// worker, and one long range would otherwise hold up the member's raft traffic).
struct NetThread {
    runtime: tokio::runtime::Handle,
    /// Ends the thread's runtime; dropping it does too.
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl NetThread {
    fn start() -> Result<NetThread, StartError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started, handle) = mpsc::sync_channel(1);
        // The runtime is built on its thread: a runtime must not be dropped in async code,
        // which is where this is called from.
        let thread = thread::Builder::new()
            .name("raft-net".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(started.send(Err(e))),
                };
                let _ = started.send(Ok(rt.handle().clone()));
                let _ = rt.block_on(stopped);
                // A snapshot still being read for a peer must not hold up the stop.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(StartError::Thread)?;
        let runtime = handle
            .recv()
            .map_err(|_| StartError::Thread(std::io::Error::other("raft-net thread ended")))?
            .map_err(StartError::Thread)?;
        Ok(NetThread {
            runtime,
            stop,
            thread,
        })
    }
}

impl Server {
    /// Starts a member as configured; returns once it is serving clients.
    pub async fn start(cfg: Config) -> Result<Server, StartError> {
        let tls = tls::Tls::load(&cfg)?;
        let auto_compaction =
            compactor::parse(&cfg.auto_compaction_mode, &cfg.auto_compaction_retention)
                .map_err(StartError::Flag)?;
        let tokens = crate::auth::TokenProvider::parse(
            &cfg.auth_token,
            Duration::from_secs(cfg.auth_token_ttl),
        )
        .map_err(StartError::Flag)?;
        let bcrypt_cost = if (4..=31).contains(&cfg.bcrypt_cost) {
            cfg.bcrypt_cost
        } else {
            // As etcd: a cost out of range falls back to the default, with a warning.
            tracing::warn!(
                given = cfg.bcrypt_cost,
                "--bcrypt-cost must be 4 to 31; using the default"
            );
            crate::auth::DEFAULT_BCRYPT_COST
        };
        // Ports, URLs, the initial cluster and the data directory's lock, before anything
        // in the directory is read or written.
        let ready = preflight::check(&cfg).await?;
        let data_dir = cfg.data_dir();
        let member_dir = data_dir.join("member");
        let db_dir = member_dir.join("db");
        let snap_dir = member_dir.join("snap");
        // Backups being streamed when the member last stopped (or crashed) are stale.
        let _ = std::fs::remove_dir_all(member_dir.join("backup"));
        // A damaged file is named, never served. The check reads every recorded file, as the
        // store's load reads most of them, so it runs beside the load on a thread of its own;
        // the member neither joins raft nor serves before it has passed.
        let check = {
            let dir = member_dir.clone();
            std::thread::Builder::new()
                .name("integrity".into())
                .spawn(move || crate::integrity::verify(&dir))
                .map_err(StartError::Thread)?
        };
        // etcd's minimum lease TTL: 1.5 election timeouts, in whole seconds rounded up.
        let min_ttl = (cfg.election_timeout * 3 / 2).div_ceil(1000) as i64;
        let lessor = Arc::new(Lessor::new(min_ttl));
        let opened = std::fs::create_dir_all(&db_dir)
            .map_err(|e| StartError::DataDir(data_dir.display().to_string(), e))
            .and_then(|()| Ok(Store::open_database(&db_dir)?))
            .and_then(|db| Ok((Store::open(&db, &db_dir, lessor.clone())?, db)));
        // The check's verdict first: the engine may have failed on the very file it names.
        let known = check.join().map_err(|_| {
            StartError::Thread(std::io::Error::other("the integrity check panicked"))
        })??;
        tracing::debug!(files = known.len(), "data directory checked");
        let (store, db) = opened?;
        if !store.auth().set_tokens(tokens) {
            return Err(StartError::Flag(
                "--auth-token: tokens were in use before it was set".into(),
            ));
        }
        let (local_id, cluster) = identify(&cfg, &db, &store, &tls.peer_dial).await?;
        let membership = Arc::new(Membership::new(local_id, cluster));
        let hub = WatchHub::start(store.clone()).map_err(StartError::Thread)?;
        let (applied_index, applied_term) = store.applied();
        let conf_state = match store.conf_state()? {
            Some(b) => ConfState::parse_from_bytes(&b)
                .map_err(|_| Error::Corrupt("stored raft configuration".into()))?,
            None => ConfState::default(),
        };
        let raft_storage = RaftStorage::open(&db, conf_state, applied_index, applied_term)?;

        let waiters = Arc::new(Waiters::default());
        let raft_status = Arc::new(RaftStatus::default());
        let (applied_tx, applied_rx) = tokio::sync::watch::channel(applied_index);
        let (halt_tx, halted) = tokio::sync::watch::channel(None);
        // Bounded: a raft thread that outruns apply this far waits for it rather than queue
        // without limit (the leader also refuses proposals past etcd's apply gap).
        let (apply_tx, apply_rx) = mpsc::sync_channel(APPLY_QUEUE);
        let (command_tx, command_rx) = mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let net = NetThread::start()?;
        let transport = Transport::new(
            tls.peer_dial.clone(),
            local_id,
            membership.clone(),
            store.clone(),
            command_tx.clone(),
            net.runtime.clone(),
            shutdown_rx.clone(),
        );

        let applier = Applier {
            store: store.clone(),
            waiters: waiters.clone(),
            applied: applied_tx,
            hub: hub.clone(),
            membership: membership.clone(),
            halt: halt_tx.clone(),
        };
        let heartbeat = cfg.heartbeat_interval.max(1);
        let tick = Duration::from_micros(heartbeat * 1000 / TICKS_PER_HEARTBEAT);
        let ready_loop = ReadyLoop::new(
            ReadyLoopConfig {
                member_id: local_id,
                tick,
                heartbeat_ticks: TICKS_PER_HEARTBEAT as usize,
                election_ticks: (cfg.election_timeout * TICKS_PER_HEARTBEAT / heartbeat)
                    .max(2 * TICKS_PER_HEARTBEAT) as usize,
                applied_index,
                lessor: lessor.clone(),
                transport: transport.clone(),
                snap_dir: snap_dir.clone(),
                snapshot_count: cfg.snapshot_count,
                campaign: true,
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
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| applier.run(apply_rx));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown cause".into());
                    tracing::error!(panic = why, "the apply thread panicked; this member stops");
                    halt_tx.send_replace(Some(Halt::ApplyFailed(format!(
                        "the apply thread panicked: {why}"
                    ))));
                }
            })
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
            transport,
            commands: command_tx.clone(),
            waiters,
            applied: applied_rx,
            max_request_bytes: cfg.max_request_bytes,
            // etcd's request timeout: 5 s plus two election timeouts.
            request_timeout: Duration::from_millis(5000 + 2 * cfg.election_timeout),
            quota: cfg.quota(),
            max_pending: cfg.max_pending_requests,
            client_cert_auth: cfg.client_cert_auth,
        }));

        let mut serving = Vec::new();
        let peer_router = tonic::transport::Server::builder().add_service(
            PeerServer::new(peer::PeerService::new(
                node.clone(),
                command_tx,
                snap_dir.clone(),
                cfg.fault_injection,
                shutdown_rx.clone(),
            ))
            .max_decoding_message_size(PEER_MAX_MESSAGE)
            .max_encoding_message_size(PEER_MAX_MESSAGE),
        );
        let mut peer_addrs = Vec::new();
        for bound in ready.peer {
            // Served from the net thread, whose runtime then owns the sockets.
            let (router, tls, stop) = (peer_router.clone(), tls.peer.clone(), shutdown_rx.clone());
            let bound = net
                .runtime
                .spawn(async move { serve(bound, router, tls, None, stop) })
                .await
                .map_err(|e| StartError::Thread(std::io::Error::other(e)))?;
            let (local, task) = bound?;
            peer_addrs.push(local);
            serving.push(task);
            tracing::info!(%local, "serving peer traffic");
        }
        // As etcd, clients are served once this member has announced itself to the cluster.
        let (published_tx, published) = tokio::sync::watch::channel(false);
        serving.push(tokio::spawn(publish_attributes(
            node.clone(),
            published_tx,
            cfg.name.clone(),
            cfg.advertise_client_urls(),
            shutdown_rx.clone(),
        )));

        let limit = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let own_url = Arc::new(std::sync::OnceLock::new());
        let recipes = lock::SelfClient::new(
            node.clone(),
            own_url.clone(),
            tls.own_client.clone(),
            shutdown_rx.clone(),
        );
        // The JSON gateway's routes, with the gRPC services on top (one port for both).
        let gateway = gateway::Gateway::new(
            node.clone(),
            own_url.clone(),
            tls.own_client.clone(),
            tls.members_client.clone(),
        );
        let routes = tonic::service::Routes::from(gateway::router(
            gateway,
            limit * 4 / 3,
            cfg.ui.then_some(dashboard::Options {
                writes: cfg.ui_writes,
            }),
        ))
        .add_service(range_stream::RangeStream::new(
            KvServer::new(kv::KvService::new(node.clone(), cfg.max_txn_ops))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
            node.clone(),
            limit,
        ))
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(
                node.clone(),
                member_dir.join("backup"),
                shutdown_rx.clone(),
            ))
            .max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(node.clone()))
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
        )
        .add_service(
            AuthServer::new(auth::AuthService::new(node.clone(), bcrypt_cost))
                .max_decoding_message_size(limit),
        )
        .add_service(LockServer::new(recipes.clone()).max_decoding_message_size(limit))
        .add_service(ElectionServer::new(recipes).max_decoding_message_size(limit));
        // Every call counted by service, method and code.
        let routes = tonic::service::Routes::from(
            routes
                .into_axum_router()
                .layer(grpc_metrics::GrpcMetricsLayer),
        );
        let router = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
            .add_routes(routes);

        if let Some(retention) = auto_compaction {
            serving.push(tokio::spawn(compactor::run(
                node.clone(),
                retention,
                cfg.auto_compaction_revision_interval,
                shutdown_rx.clone(),
            )));
        }
        serving.push(tokio::spawn(stop_on_apply_failure(
            node.clone(),
            halted.clone(),
            shutdown.clone(),
        )));
        serving.push(tokio::spawn(auth::sweep_tokens(
            node.clone(),
            shutdown_rx.clone(),
        )));
        serving.push(tokio::spawn(lease::expiry_loop(
            node.clone(),
            Duration::from_millis(cfg.election_timeout),
            shutdown_rx.clone(),
        )));
        let mut client_addrs = Vec::new();
        let mut own_https = None;
        for bound in ready.client {
            let url = bound.url.clone();
            let (local, task) = serve(
                bound,
                router.clone(),
                tls.client.clone(),
                Some(published.clone()),
                shutdown_rx.clone(),
            )?;
            client_addrs.push(local);
            if url.starts_with("http://") {
                // A plain URL needs no certificate of the member's own: the first one wins.
                let _ = own_url.set(format!("http://{local}"));
            } else {
                own_https.get_or_insert(format!("https://{local}"));
            }
            serving.push(task);
            tracing::info!(%local, "serving client requests");
        }
        if let Some(url) = own_https {
            let _ = own_url.set(url);
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
            member_dir,
            known,
            client_addrs,
            peer_addrs,
            halted,
            shutdown,
            serving,
            threads,
            net,
            _lock: ready.lock,
        })
    }

    /// The bound client addresses (useful with port 0).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The bound peer addresses.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    pub fn member_id(&self) -> u64 {
        self.node.membership.local_id
    }

    /// Becomes `Some` when this member stops on its own: removed from the cluster, or its
    /// apply loop failed (it then stops serving and leaves raft; [`Server::stop`] is still
    /// the caller's to call).
    pub fn halted(&self) -> tokio::sync::watch::Receiver<Option<Halt>> {
        self.halted.clone()
    }

    /// Stops serving, lets in-flight requests finish, stops the raft and apply loops and
    /// syncs storage.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // A client that stops reading a stream keeps hyper from ever finishing it: its
        // listener is given up on after a grace period rather than waited for forever.
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for task in self.serving {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a connection did not finish in time; stopping anyway");
                abort.abort();
            }
        }
        let store = self.node.store.clone();
        let (member_dir, known) = (self.member_dir.clone(), self.known);
        // The raft loop ends, dropping the apply channel, which ends the apply loop.
        self.node.stop_raft();
        drop(self.node);
        let (threads, net) = (self.threads, self.net);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // Raft is done sending.
            let _ = net.stop.send(());
            let _ = net.thread.join();
            store.stop_compactor();
            if let Err(e) = store.sync() {
                tracing::error!(error = %e, "final sync failed");
            }
            // Once the engine's files stop changing, record them for the next start's check.
            if store.quiesce(Duration::from_secs(10)) {
                if let Err(e) = crate::integrity::record(&member_dir, &known) {
                    tracing::warn!(error = %e, "recording the data directory's checksums");
                }
            }
        })
        .await;
        tracing::info!("cairn member stopped");
    }
}

/// A member whose apply loop failed serves nothing more: it closes its listeners and
/// leaves raft, so clients move to another member and it acknowledges no entries it cannot
/// apply.
async fn stop_on_apply_failure(
    node: Arc<Node>,
    mut halted: tokio::sync::watch::Receiver<Option<Halt>>,
    shutdown: tokio::sync::watch::Sender<bool>,
) {
    let mut stop = shutdown.subscribe();
    let failed = tokio::select! {
        h = halted.wait_for(|h| matches!(h, Some(Halt::ApplyFailed(_)))) => h.is_ok(),
        _ = stopped(&mut stop) => false,
    };
    if failed {
        shutdown.send_replace(true);
        node.stop_raft();
    }
}

/// Binds `url` and serves `router` on it (once `ready`, if given; through TLS with `tls`)
/// until shutdown.
fn serve(
    bound: preflight::Bound,
    router: tonic::transport::server::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    ready: Option<tokio::sync::watch::Receiver<bool>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let local = bound.local_addr()?;
    let tls = tls.filter(|_| bound.url.starts_with("https://"));
    let listener = bound.into_tokio()?;
    let incoming = tls::incoming(listener, tls, stop.clone());
    let task = tokio::spawn(async move {
        if let Some(mut ready) = ready {
            tokio::select! {
                _ = ready.wait_for(|r| *r) => {}
                _ = stopped(&mut stop) => return,
            }
        }
        let signal = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(error = %e, %local, "listener failed");
        }
    });
    Ok((local, task))
}

/// Who this member is and the membership it starts from: its stored identity on a restart;
/// for a new cluster the `--initial-cluster` (and the store starts just after raft index 1,
/// the bootstrap point, so a member added later must be caught up by snapshot); for
/// `--initial-cluster-state existing` the member list fetched from a running member.
async fn identify(
    cfg: &Config,
    db: &fjall::Database,
    store: &Store,
    connector: &cairn_client::tls::Connector,
) -> Result<(u64, ClusterState), StartError> {
    let stored_id = RaftStorage::stored_member_id(db)?;
    if let (Some(id), Some(state)) = (stored_id, store.members()?) {
        if state.removed.contains(&id) {
            return Err(MembershipError::Join(
                "this member was removed from the cluster; start it with a new data directory"
                    .into(),
            )
            .into());
        }
        return Ok((id, state));
    }
    if cfg.initial_cluster_state == "existing" {
        let state = fetch_members(cfg, connector).await?;
        let id = membership::find_self(&state, cfg)?;
        RaftStorage::store_member_id(db, id)?;
        return Ok((id, state));
    }
    let (state, id) = membership::initial_state(cfg)?;
    bootstrap_new_member(db, store, &state, id)?;
    Ok((id, state))
}

/// Makes `store` member `id` of a new cluster `state`: its raft log starts just after index
/// 1, the bootstrap point, with every listed member a voter. Also how a restored backup
/// becomes a new cluster's member.
pub(crate) fn bootstrap_new_member(
    db: &fjall::Database,
    store: &Store,
    state: &ClusterState,
    id: u64,
) -> Result<(), Error> {
    let voters = ConfState {
        voters: state.members.iter().map(|m| m.id).collect(),
        ..Default::default()
    };
    let encoded = voters
        .write_to_bytes()
        .map_err(|e| Error::Storage(e.to_string()))?;
    store.bootstrap(1, 1, encoded, state)?;
    RaftStorage::store_member_id(db, id)
}

/// Asks the other members listed in `--initial-cluster` for the member list.
async fn fetch_members(
    cfg: &Config,
    connector: &cairn_client::tls::Connector,
) -> Result<ClusterState, MembershipError> {
    let mut last_error = String::from("no other member listed in --initial-cluster");
    for (_, urls) in membership::parse_initial_cluster(&cfg.initial_cluster())? {
        for url in urls {
            if cfg.initial_advertise_peer_urls.contains(&url) {
                continue;
            }
            let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
                Ok(e) => e.connect_timeout(Duration::from_secs(2)),
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    continue;
                }
            };
            let result = async {
                let channel = endpoint.connect_with_connector(connector.clone()).await?;
                let mut client = PeerClient::new(channel);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    client.members(MembersRequest {}).await?.into_inner(),
                )
            }
            .await;
            match result {
                Ok(state) => return Ok(state),
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
    }
    Err(MembershipError::Join(last_error))
}

/// Announces this member's name and client URLs through raft once there is a leader (as
/// etcd publishes its attributes), so every member lists them.
async fn publish_attributes(
    node: Arc<Node>,
    published: tokio::sync::watch::Sender<bool>,
    name: String,
    client_urls: Vec<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let id = node.membership.local_id;
    loop {
        let current = node.membership.member(id);
        if current
            .as_ref()
            .is_some_and(|m| m.name == name && m.client_ur_ls == client_urls)
        {
            published.send_replace(true);
            return;
        }
        if node.raft_status.leader() != 0 && current.is_some() {
            let attrs = MemberAttributes {
                id,
                name: name.clone(),
                client_urls: client_urls.clone(),
            };
            match node
                .propose_and_wait(Internal::MemberAttributes(attrs))
                .await
            {
                Ok(_) => {
                    tracing::info!(name, urls = ?client_urls, "published member attributes");
                    published.send_replace(true);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "publishing attributes; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}
