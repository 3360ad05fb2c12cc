//! Service discovery a gRPC client follows: a tonic [`Channel`] that load-balances over the
//! instances registered under a prefix and stops using one the moment its key goes (its
//! lease ended, or it deregistered), as etcd's `naming/resolver` does for grpc-go. Instances
//! are read in either layout: the [`ServiceRegistry`](crate::ServiceRegistry)'s (the value
//! is the address) or etcd's `naming/endpoints` (the value is JSON
//! `{"Op":0,"Addr":"…","Metadata":…}`), which [`EndpointManager`] writes, so Go services
//! registered by etcd's endpoints manager and Rust services find each other.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_client::{Client, GetOptions, Op, PutOptions, Txn};
use futures::StreamExt;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::{Cache, Error, Session};

/// How many changes the channel may have queued before the follower waits.
const CHANGES: usize = 64;

/// One instance as etcd's endpoints manager stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedEndpoint {
    /// Its key (`<target>/…`).
    pub key: String,
    /// The address clients dial (`host:port`).
    pub addr: String,
    /// What the registrant attached (JSON; `null` when nothing).
    pub metadata: serde_json::Value,
}

/// etcd's `naming/endpoints` layout under a target: each endpoint is a key `<target>/<name>`
/// holding `{"Op":0,"Addr":…,"Metadata":…}` (Go's `endpoints.Manager`).
#[derive(Clone)]
pub struct EndpointManager {
    client: Client,
    target: String,
}

impl EndpointManager {
    /// The endpoints of `target` (e.g. `foo/bar/my-service`).
    pub fn new(client: Client, target: &str) -> EndpointManager {
        EndpointManager {
            client,
            target: target.trim_end_matches('/').to_string(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.target)
    }

    /// Adds (or replaces) the endpoint `<target>/<name>` for as long as `session` lives.
    pub async fn add(
        &self,
        session: &Session,
        name: &str,
        addr: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        let value = serde_json::json!({ "Op": 0, "Addr": addr, "Metadata": metadata });
        let put = Op::put(
            self.key(name),
            value.to_string(),
            Some(PutOptions::new().with_lease(session.lease())),
        );
        crate::guarded_txn(&self.client, Txn::new().and_then([put])).await?;
        Ok(())
    }

    /// Removes the endpoint `<target>/<name>`.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        crate::idempotent(&self.client, [Op::delete(self.key(name), None)]).await
    }

    /// The endpoints now, in key order (keys whose value is not an endpoint are skipped).
    pub async fn list(&self) -> Result<Vec<NamedEndpoint>, Error> {
        let prefix = format!("{}/", self.target);
        let r = self
            .client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| {
                let (addr, metadata) = parse(&kv.value)?;
                Some(NamedEndpoint {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    addr,
                    metadata,
                })
            })
            .collect())
    }

    /// A channel balanced over the target's endpoints (see [`Discovery`]).
    pub fn discovery(&self) -> Discovery {
        Discovery::new(&self.client, &format!("{}/", self.target))
    }
}

/// An instance's address and metadata from its stored value: etcd's JSON, or the address
/// itself.
fn parse(value: &[u8]) -> Option<(String, serde_json::Value)> {
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(value) {
        let addr = o.get("Addr")?.as_str()?.to_string();
        return Some((addr, o.get("Metadata").cloned().unwrap_or_default()));
    }
    let text = std::str::from_utf8(value).ok()?.trim();
    (!text.is_empty()).then(|| (text.to_string(), serde_json::Value::Null))
}

type ToEndpoint = Arc<dyn Fn(&str) -> Option<Endpoint> + Send + Sync>;

/// Builds a balanced channel over the instances under a prefix.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::ServiceRegistry;
/// let registry = ServiceRegistry::new(client.clone(), "services/");
/// let api = registry.discovery("api").channel().await?;
/// // let mut greeter = GreeterClient::new(api.channel());  // any tonic client
/// # Ok(()) }
/// ```
pub struct Discovery {
    client: Client,
    prefix: String,
    to_endpoint: ToEndpoint,
}

impl Discovery {
    /// The instances under `prefix`.
    pub fn new(client: &Client, prefix: &str) -> Discovery {
        Discovery {
            client: client.clone(),
            prefix: prefix.to_string(),
            to_endpoint: Arc::new(plain_endpoint),
        }
    }

    /// How an address becomes a tonic endpoint (TLS, timeouts …); `None` skips it. By
    /// default `host:port` is dialled over `http://`, and an address with a scheme as is.
    pub fn with_endpoint(
        mut self,
        f: impl Fn(&str) -> Option<Endpoint> + Send + Sync + 'static,
    ) -> Discovery {
        self.to_endpoint = Arc::new(f);
        self
    }

    /// Lists the instances, then follows them: the channel balances over the instances
    /// present, and an instance whose key is deleted leaves the balancer at once.
    pub async fn channel(self) -> Result<BalancedChannel, Error> {
        let cache = Arc::new(Cache::new(&self.client, self.prefix.as_str()).await?);
        let (channel, changes) = Channel::balance_channel::<String>(CHANGES);
        let follower = tokio::spawn(follow(cache.clone(), changes, self.to_endpoint));
        Ok(BalancedChannel {
            channel,
            cache,
            prefix: self.prefix,
            follower,
        })
    }
}

fn plain_endpoint(addr: &str) -> Option<Endpoint> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(uri).ok()
}

/// A tonic channel over a service's live instances (see [`Discovery`]). Dropping it stops
/// following them.
pub struct BalancedChannel {
    channel: Channel,
    cache: Arc<Cache>,
    prefix: String,
    follower: tokio::task::JoinHandle<()>,
}

impl BalancedChannel {
    /// The channel, for any tonic client (`FooClient::new(channel.channel())`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The instances the balancer uses now: instance key below the prefix → address.
    pub fn instances(&self) -> BTreeMap<String, String> {
        instances(&self.cache, &self.prefix)
    }

    /// The cache behind the channel (its revision, read-your-writes waits).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl Drop for BalancedChannel {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn instances(cache: &Cache, prefix: &str) -> BTreeMap<String, String> {
    cache
        .snapshot()
        .kvs
        .into_iter()
        .filter_map(|kv| {
            let (addr, _) = parse(&kv.value)?;
            let id = String::from_utf8_lossy(kv.key.get(prefix.len()..)?).into_owned();
            Some((id, addr))
        })
        .collect()
}

/// Keeps the balancer's set equal to the cache's: on every change the whole set is compared
/// (service lists are small), so a lag or a re-list needs no special case.
async fn follow(
    cache: Arc<Cache>,
    changes: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
    to_endpoint: ToEndpoint,
) {
    let prefix = String::from_utf8_lossy(cache.prefix()).into_owned();
    let mut events = Box::pin(cache.changes());
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let now = instances(&cache, &prefix);
        for id in known.keys().filter(|id| !now.contains_key(*id)) {
            if changes.send(Change::Remove(id.clone())).await.is_err() {
                return;
            }
        }
        for (id, addr) in &now {
            if known.get(id) == Some(addr) {
                continue;
            }
            let change = match to_endpoint(addr) {
                Some(endpoint) => Change::Insert(id.clone(), endpoint),
                // An address it cannot dial: not the old one either.
                None if known.contains_key(id) => Change::Remove(id.clone()),
                None => continue,
            };
            if changes.send(change).await.is_err() {
                return;
            }
        }
        known = now;
        if events.next().await.is_none() {
            return;
        }
    }
}
