//! The workloads: what one client does per operation, and the setup each needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::request_op::Request as OpRequest;
use cairn_api::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchRequest,
};
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::{LockRequest, UnlockRequest};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use crate::command::Workload;
use crate::leases::KeepAlive;
use crate::Args;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection whose calls carry the `--user`'s token, if any.
pub type Ch = InterceptedService<Channel, Token>;

/// Adds a token (gRPC metadata `token`, as etcd's clients send it) to every call.
#[derive(Clone, Default)]
pub struct Token(pub Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// Keys and values of the configured sizes.
struct Keys {
    key_size: usize,
    val_size: usize,
    space: u64,
    /// With `--sequential-keys`, the next key's number (shared by all clients).
    next: Option<AtomicU64>,
}

impl Keys {
    fn key(&self) -> Vec<u8> {
        let space = self.space.max(1);
        let i = match &self.next {
            Some(next) => next.fetch_add(1, Ordering::Relaxed) % space,
            None => rand::thread_rng().gen_range(0..space),
        };
        let mut k = format!("{i:0width$}", width = self.key_size).into_bytes();
        k.truncate(self.key_size.max(1));
        k
    }

    fn value(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.val_size];
        rand::thread_rng().fill(&mut v[..]);
        v
    }
}

/// One client's state.
pub struct Worker {
    keys: Arc<Keys>,
    kind: Kind,
}

enum Kind {
    Put(KvClient<Ch>),
    Range(KvClient<Ch>, bool),
    TxnPut(KvClient<Ch>),
    TxnMixed(KvClient<Ch>),
    Watch {
        kv: KvClient<Ch>,
        watchers: usize,
        /// (revision, latency) from every watcher.
        seen: mpsc::UnboundedReceiver<(i64, Duration)>,
        epoch: Instant,
    },
    Propagation {
        kv: KvClient<Ch>,
        subscribers: usize,
        /// (the put's send time in ns since `epoch`, delay) from every subscriber.
        seen: mpsc::UnboundedReceiver<(u64, Duration)>,
        epoch: Instant,
    },
    CacheRead(Arc<cairn_recipes::Cache>),
    KeepAlive(KeepAlive),
    Mutex {
        session: cairn_recipes::Session,
        name: String,
    },
    Authenticate {
        auth: cairn_api::etcdserverpb::auth_client::AuthClient<Ch>,
        name: String,
        password: String,
    },
    LockService {
        lock: LockClient<Ch>,
        lease: i64,
        name: String,
        _keeper: tokio::task::JoinHandle<()>,
    },
}

/// Sets up one worker per client.
pub async fn prepare(args: &Args, channels: &[Ch]) -> Result<Vec<Worker>, BoxError> {
    let keys = Arc::new(Keys {
        key_size: args.key_size,
        val_size: args.val_size,
        space: args.key_space_size,
        next: args.sequential_keys.then(|| AtomicU64::new(0)),
    });
    let cache = match args.workload {
        Workload::CacheRead => {
            let client = recipe_client(args).await?;
            Some(Arc::new(cairn_recipes::Cache::new(&client, "").await?))
        }
        _ => None,
    };
    let mut workers = Vec::new();
    for c in 0..args.clients.max(1) {
        let ch = channels[c % channels.len()].clone();
        let kv = KvClient::new(ch.clone());
        let kind = match &args.workload {
            Workload::Put => Kind::Put(kv),
            Workload::Range { consistency } => Kind::Range(kv, consistency == "s"),
            Workload::TxnPut => Kind::TxnPut(kv),
            Workload::TxnMixed => Kind::TxnMixed(kv),
            Workload::Watch { watchers } => watch(kv, channels, c, *watchers).await?,
            Workload::WatchLatency => watch(kv, channels, c, 1).await?,
            Workload::ConfigPropagation { subscribers, plain } => {
                let n = if c == 0 { *subscribers } else { 0 };
                propagation(args, kv, channels, n, *plain).await?
            }
            Workload::CacheRead => Kind::CacheRead(cache.clone().ok_or("no cache")?),
            Workload::LeaseKeepalive => Kind::KeepAlive(KeepAlive::grant(ch, 60).await?),
            Workload::LeaseStorm { .. }
            | Workload::LeaseGrant { .. }
            | Workload::Floor { .. }
            | Workload::WatchScale { .. }
            | Workload::RangeFull { .. } => return Err("this workload runs on its own".into()),
            Workload::Authenticate => {
                let (name, password) = args.login().ok_or("authenticate needs --user")?;
                Kind::Authenticate {
                    auth: cairn_api::etcdserverpb::auth_client::AuthClient::new(ch),
                    name,
                    password,
                }
            }
            Workload::Lock {
                service: false,
                name,
            } => {
                let client = recipe_client(args).await?;
                Kind::Mutex {
                    session: cairn_recipes::Session::new(&client, 30).await?,
                    name: name.clone(),
                }
            }
            Workload::Lock {
                service: true,
                name,
            } => lock_service(ch, name).await?,
        };
        workers.push(Worker {
            keys: keys.clone(),
            kind,
        });
    }
    Ok(workers)
}

impl Worker {
    /// One operation; its latency (one per watcher for watch workloads).
    pub async fn step(&mut self) -> Result<Vec<Duration>, BoxError> {
        let started = Instant::now();
        let keys = &self.keys;
        match &mut self.kind {
            Kind::Put(kv) => {
                kv.put(put(keys.key(), keys.value())).await?;
            }
            Kind::Range(kv, serializable) => {
                kv.range(RangeRequest {
                    key: keys.key(),
                    serializable: *serializable,
                    ..Default::default()
                })
                .await?;
            }
            Kind::TxnPut(kv) => {
                kv.txn(TxnRequest {
                    success: vec![put_op(keys.key(), keys.value())],
                    ..Default::default()
                })
                .await?;
            }
            Kind::TxnMixed(kv) => {
                let key = keys.key();
                let read = kv
                    .range(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let rev = read.kvs.first().map_or(0, |kv| kv.mod_revision);
                kv.txn(TxnRequest {
                    compare: vec![Compare {
                        key: key.clone(),
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        target_union: Some(TargetUnion::ModRevision(rev)),
                        ..Default::default()
                    }],
                    success: vec![put_op(key, keys.value())],
                    ..Default::default()
                })
                .await?;
            }
            Kind::Watch {
                kv,
                watchers,
                seen,
                epoch,
            } => {
                // The value carries the send time, so every watcher measures its own delay.
                let sent = epoch.elapsed().as_nanos() as u64;
                let resp = kv
                    .put(put(b"bench-watch".to_vec(), sent.to_be_bytes().to_vec()))
                    .await?
                    .into_inner();
                let rev = resp.header.map_or(0, |h| h.revision);
                let mut out = Vec::with_capacity(*watchers);
                while out.len() < *watchers {
                    let (r, latency) = seen.recv().await.ok_or("watch streams ended")?;
                    if r == rev {
                        out.push(latency);
                    }
                }
                return Ok(out);
            }
            Kind::Propagation {
                kv,
                subscribers,
                seen,
                epoch,
            } => {
                let sent = epoch.elapsed().as_nanos() as u64;
                kv.put(put(CONFIG_KEY.to_vec(), config_value(sent))).await?;
                let mut slowest = Duration::ZERO;
                let mut got = 0;
                while got < *subscribers {
                    let (s, delay) = seen.recv().await.ok_or("subscribers ended")?;
                    if s == sent {
                        got += 1;
                        slowest = slowest.max(delay);
                    }
                }
                return Ok(vec![slowest]);
            }
            Kind::CacheRead(cache) => {
                std::hint::black_box(cache.get(&keys.key()));
            }
            Kind::KeepAlive(k) => k.renew().await?,
            Kind::Authenticate {
                auth,
                name,
                password,
            } => {
                auth.authenticate(cairn_api::etcdserverpb::AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                })
                .await?;
            }
            Kind::Mutex { session, name } => {
                let guard = cairn_recipes::Mutex::new(session, name).lock().await?;
                guard.unlock().await?;
            }
            Kind::LockService {
                lock, lease, name, ..
            } => {
                let held = lock
                    .lock(LockRequest {
                        name: name.clone().into_bytes(),
                        lease: *lease,
                    })
                    .await?
                    .into_inner();
                lock.unlock(UnlockRequest { key: held.key }).await?;
            }
        }
        Ok(vec![started.elapsed()])
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key,
        value,
        ..Default::default()
    }
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestPut(put(key, value))),
    }
}

/// Opens the watchers (one stream each, spread over the connections) for client `c`; only
/// client 0 gets watchers, the others would only add puts nobody waits for.
async fn watch(
    kv: KvClient<Ch>,
    channels: &[Ch],
    c: usize,
    watchers: usize,
) -> Result<Kind, BoxError> {
    let (tx, seen) = mpsc::unbounded_channel();
    let epoch = Instant::now();
    let n = if c == 0 { watchers } else { 0 };
    for w in 0..n {
        let (req_tx, mut stream) =
            watch_stream(channels[w % channels.len()].clone(), b"bench-watch").await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _keep = req_tx;
            while let Some(Ok(resp)) = stream.next().await {
                let now = epoch.elapsed();
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    let Some(sent) = sent_ns(&kv.value) else {
                        continue;
                    };
                    let sent = Duration::from_nanos(sent);
                    let _ = tx.send((kv.mod_revision, now.saturating_sub(sent)));
                }
            }
        });
    }
    Ok(Kind::Watch {
        kv,
        watchers: n,
        seen,
        epoch,
    })
}

/// The send time (ns since the run's epoch) a watch workload's put carries as its value.
pub fn sent_ns(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// A client of the cairn-client library (for the recipe workloads), logged in as `--user`.
async fn recipe_client(args: &Args) -> Result<cairn_client::Client, BoxError> {
    let mut options = cairn_client::ClientOptions::default();
    if let Some((user, password)) = args.login() {
        options = options.with_user(user, password);
    }
    Ok(cairn_client::Client::connect(args.endpoints.clone(), options).await?)
}

const CONFIG_KEY: &[u8] = b"bench-config";

/// The configuration a propagation put stores: JSON, so `Config` decodes it.
fn config_value(sent_ns: u64) -> Vec<u8> {
    format!("{{\"sent_ns\":{sent_ns}}}").into_bytes()
}

fn sent_of(value: &serde_json::Value) -> Option<u64> {
    value.get("sent_ns")?.as_u64()
}

/// `n` subscribers of the configuration key, each reporting every value it sees.
async fn propagation(
    args: &Args,
    kv: KvClient<Ch>,
    channels: &[Ch],
    n: usize,
    plain: bool,
) -> Result<Kind, BoxError> {
    let (tx, seen) = mpsc::unbounded_channel();
    let epoch = Instant::now();
    if plain {
        for w in 0..n {
            let (req_tx, mut stream) =
                watch_stream(channels[w % channels.len()].clone(), CONFIG_KEY).await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let _keep = req_tx;
                while let Some(Ok(resp)) = stream.next().await {
                    let now = epoch.elapsed();
                    for ev in resp.events {
                        let Some(kv) = ev.kv else { continue };
                        let value = serde_json::from_slice(&kv.value).ok();
                        if let Some(sent) = value.as_ref().and_then(sent_of) {
                            let _ = tx.send((sent, now.saturating_sub(Duration::from_nanos(sent))));
                        }
                    }
                }
            });
        }
    } else {
        // One library client per connection, as services would each have their own.
        let mut clients = Vec::new();
        for _ in 0..args.conns.max(1) {
            clients.push(recipe_client(args).await?);
        }
        for w in 0..n {
            let config = cairn_recipes::Config::<serde_json::Value>::key(
                CONFIG_KEY,
                cairn_recipes::Format::Json,
            )
            .with_default(serde_json::json!({}))
            .open(&clients[w % clients.len()])
            .await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut changes = config.changes();
                while changes.changed().await.is_ok() {
                    let now = epoch.elapsed();
                    let value = changes.borrow_and_update().value.clone();
                    if let Some(sent) = sent_of(&value) {
                        let _ = tx.send((sent, now.saturating_sub(Duration::from_nanos(sent))));
                    }
                }
            });
        }
    }
    Ok(Kind::Propagation {
        kv,
        subscribers: n,
        seen,
        epoch,
    })
}

/// A watch of `key` from now on, created (the created answer read) before it returns; the
/// sender keeps the stream open.
async fn watch_stream(
    ch: Ch,
    key: &[u8],
) -> Result<
    (
        mpsc::Sender<WatchRequest>,
        tonic::Streaming<cairn_api::etcdserverpb::WatchResponse>,
    ),
    BoxError,
> {
    crate::watchers::create(ch, vec![key.to_vec()], false).await
}

/// A lease kept alive in the background, as `etcdctl lock` keeps its session.
async fn lock_service(ch: Ch, name: &str) -> Result<Kind, BoxError> {
    let session = KeepAlive::grant(ch.clone(), 30).await?;
    let lease = session.id();
    Ok(Kind::LockService {
        lock: LockClient::new(ch),
        lease,
        name: name.to_string(),
        _keeper: session.keep_in_background(Duration::from_secs(10)),
    })
}
