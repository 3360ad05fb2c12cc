//! etcd's HTTP/JSON gateway on the client URLs, sharing the port with gRPC (HTTP/1.1 and
//! HTTP/2 are told apart per connection): the same paths and JSON as etcd 3.4's gateway
//! (`POST /v3/kv/range` …, proto field names, int64 as strings, bytes as base64, enums by
//! name, default values left out), errors as `{"error", "message", "code"}` with the HTTP
//! status grpc-gateway gives each gRPC code, streams as one `{"result": …}` object per
//! line; and `/health` and `/version`.
//!
//! As etcd's gateway, it is a client of the member's own gRPC endpoint: every request takes
//! exactly the path a gRPC client's would, with the same validation and errors.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use cairn_api::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, AuthenticateRequest,
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, HashRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest, PutRequest, RangeRequest, SnapshotRequest,
    StatusRequest, TxnRequest, WatchRequest,
};
use cairn_api::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use cairn_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use cairn_client::tls::Connector;
use cairn_client::TlsOptions;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

mod body;

pub(super) use body::json;
use body::{error, internal, parse, parse_all, stream_error, StreamError, Wrapped};

use crate::node::Node;
use crate::server::auth::PeerIdentity;
use crate::server::maintenance::{ETCD_API_VERSION, ETCD_CLUSTER_VERSION};

/// The gateway's state: the member, and a channel to its own gRPC endpoint.
#[derive(Clone)]
pub struct Gateway {
    node: Arc<Node>,
    /// The member's own client URL, set once it listens.
    url: Arc<OnceLock<String>>,
    tls: Option<TlsOptions>,
    /// TLS towards other members' client URLs (the dashboard's cluster view).
    members_tls: Option<TlsOptions>,
    channel: Arc<tokio::sync::OnceCell<Channel>>,
}

impl Gateway {
    pub(super) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn new(
        node: Arc<Node>,
        url: Arc<OnceLock<String>>,
        tls: Option<TlsOptions>,
        members_tls: Option<TlsOptions>,
    ) -> Gateway {
        Gateway {
            node,
            url,
            tls,
            members_tls,
            channel: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The connection unary requests (and the dashboard's own calls) share.
    pub(in crate::server) async fn channel(&self) -> Result<Channel, Status> {
        self.channel
            .get_or_try_init(|| async { self.new_channel() })
            .await
            .cloned()
    }

    /// A new connection to the member's own gRPC endpoint.
    fn new_channel(&self) -> Result<Channel, Status> {
        let url = self
            .url
            .get()
            .ok_or_else(|| Status::unavailable("member not serving yet"))?;
        Self::dial(url, &self.tls)
    }

    /// A lazy connection to another member's client URL.
    pub(in crate::server) fn channel_to_member(&self, url: &str) -> Result<Channel, Status> {
        Self::dial(url, &self.members_tls)
    }

    fn dial(url: &str, tls: &Option<TlsOptions>) -> Result<Channel, Status> {
        let config = match tls {
            Some(t) => Some(
                t.client_config()
                    .map_err(|e| Status::internal(e.to_string()))?,
            ),
            None => None,
        };
        let endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| Status::internal(e.to_string()))?;
        Ok(endpoint.connect_with_connector_lazy(Connector::new(config)))
    }

    /// etcd's refusal of a gateway request over TLS from a client certificate with a
    /// Common Name while auth is on: the gateway cannot pass that identity on.
    fn refuse_common_name(&self, peer: &Option<Extension<PeerIdentity>>) -> Option<Response> {
        let named = peer
            .as_ref()
            .is_some_and(|Extension(p)| p.common_name.is_some());
        if !(named && self.node.client_cert_auth() && self.node.store.auth().is_enabled()) {
            return None;
        }
        let mut r = Response::new(Body::from(
            "CommonName of client sending a request against gateway will be ignored and not used as expected\n",
        ));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        Some(r)
    }

    /// One JSON request, one gRPC call, one JSON response.
    async fn unary<Req, Resp, F, Fut>(&self, from: &Caller, body: &[u8], call: F) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        F: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        if let Some(refused) = self.refuse_common_name(&from.peer) {
            return refused;
        }
        let result = async {
            let req = parse::<Req>(body)?;
            let channel = self.channel().await?;
            call(channel, from.request(req)).await
        }
        .await;
        match result {
            Ok(resp) => json(StatusCode::OK, resp.get_ref()),
            Err(status) => error(&status),
        }
    }

    /// A stream of responses, one `{"result": …}` line each; the requests are the JSON
    /// objects of the body, in order.
    async fn streaming<Req, Resp, F, Fut, S>(&self, from: &Caller, body: &[u8], call: F) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize + Send + 'static,
        F: FnOnce(Channel, Vec<Req>, tonic::metadata::MetadataMap) -> Fut,
        Fut: Future<Output = Result<(tonic::Response<S>, Box<dyn std::any::Any + Send>), Status>>,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    {
        if let Some(refused) = self.refuse_common_name(&from.peer) {
            return refused;
        }
        let result = async {
            let reqs = parse_all::<Req>(body)?;
            // A connection of its own: a JSON client that stops reading its stream must not
            // take the flow-control window the other gateway requests share.
            let channel = self.new_channel()?;
            call(channel, reqs, from.metadata()).await
        }
        .await;
        let (mut stream, guard) = match result {
            Ok((resp, guard)) => (Box::pin(resp.into_inner()), guard),
            Err(status) => return error(&status),
        };
        // As grpc-gateway: the status line goes out with the first message, so an error
        // before any message is the response's status (a member without a leader: 503),
        // with the error as the body's only line.
        let first = stream.next().await;
        if let Some(Err(status)) = &first {
            return stream_error(status);
        }
        let lines = futures::stream::iter(first).chain(stream).map(move |item| {
            // Whatever keeps the request side open lives as long as the response.
            let _ = &guard;
            match item {
                Ok(msg) => serde_json::to_vec(&Wrapped { result: &msg }).map(|mut l| {
                    l.push(b'\n');
                    Bytes::from(l)
                }),
                Err(status) => serde_json::to_vec(&StreamError::from(&status)).map(Bytes::from),
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(lines))
            .unwrap_or_else(|_| internal())
    }
}

/// What a gateway request says about its sender: the HTTP headers carrying a token (etcd's
/// `Authorization`, and grpc-gateway's `Grpc-Metadata-Token`), and the connection's
/// certificate identity.
pub(super) struct Caller {
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
}

impl Caller {
    pub(in crate::server) fn new(
        headers: HeaderMap,
        peer: Option<Extension<PeerIdentity>>,
    ) -> Caller {
        Caller { headers, peer }
    }

    /// A gRPC request carrying the sender's token, marked as the gateway's so the member's
    /// own certificate on the connection names nobody.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        *r.metadata_mut() = self.metadata();
        r
    }

    pub(in crate::server) fn metadata(&self) -> tonic::metadata::MetadataMap {
        let mut md = tonic::metadata::MetadataMap::new();
        for (header, key) in [
            (header::AUTHORIZATION.as_str(), super::auth::AUTHORIZATION),
            ("grpc-metadata-token", super::auth::TOKEN),
        ] {
            if let Some(v) = self
                .headers
                .get(header)
                .and_then(|v| tonic::metadata::AsciiMetadataValue::try_from(v.as_bytes()).ok())
            {
                md.insert(key, v);
            }
        }
        md.insert(
            super::auth::FROM_GATEWAY,
            tonic::metadata::AsciiMetadataValue::from_static("application/json"),
        );
        md
    }
}

fn with_metadata<T>(msg: T, md: tonic::metadata::MetadataMap) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    *r.metadata_mut() = md;
    r
}

/// `POST path` → one unary call of `$client::$method` with a `$req` from the body.
macro_rules! unary {
    ($client:ident, $method:ident, $req:ty) => {
        post(
            |State(g): State<Gateway>,
             peer: Option<Extension<PeerIdentity>>,
             headers: HeaderMap,
             body: Bytes| async move {
                let from = Caller { headers, peer };
                g.unary(&from, &body, |ch, req: tonic::Request<$req>| async move {
                    $client::new(ch)
                        .max_decoding_message_size(usize::MAX)
                        .$method(req)
                        .await
                })
                .await
            },
        )
    };
}

/// A call whose responses stream back: `$req`s from the body (kept open when `$open`, as
/// a watch must be), responses as lines.
macro_rules! streaming {
    ($client:ident, $method:ident, $req:ty, bidi, $open:expr) => {
        post(
            |State(g): State<Gateway>,
             peer: Option<Extension<PeerIdentity>>,
             headers: HeaderMap,
             body: Bytes| async move {
                let from = Caller { headers, peer };
                g.streaming(&from, &body, |ch, reqs: Vec<$req>, md| async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(reqs.len().max(1));
                    for r in reqs {
                        // The channel has room for every request.
                        let _ = tx.try_send(r);
                    }
                    // Open: the request side stays open as long as the response streams.
                    let keep = $open.then_some(tx);
                    let resp = $client::new(ch)
                        .max_decoding_message_size(usize::MAX)
                        .$method(with_metadata(
                            tokio_stream::wrappers::ReceiverStream::new(rx),
                            md,
                        ))
                        .await?;
                    Ok((resp, Box::new(keep) as Box<dyn std::any::Any + Send>))
                })
                .await
            },
        )
    };
    ($client:ident, $method:ident, $req:ty) => {
        post(
            |State(g): State<Gateway>,
             peer: Option<Extension<PeerIdentity>>,
             headers: HeaderMap,
             body: Bytes| async move {
                let from = Caller { headers, peer };
                g.streaming(&from, &body, |ch, mut reqs: Vec<$req>, md| async move {
                    let req = reqs.drain(..).next().unwrap_or_default();
                    let resp = $client::new(ch)
                        .max_decoding_message_size(usize::MAX)
                        .$method(with_metadata(req, md))
                        .await?;
                    Ok((resp, Box::new(()) as Box<dyn std::any::Any + Send>))
                })
                .await
            },
        )
    };
}

/// `GET /metrics`: the process's metrics, the member's state sampled now.
async fn metrics(State(g): State<Gateway>) -> Response {
    // Sizes walk the data directory: off the async workers.
    let text = tokio::task::spawn_blocking(move || sample_and_encode(&g.node)).await;
    match text {
        Ok(text) => Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Body::from(text))
            .unwrap_or_else(|_| internal()),
        Err(_) => internal(),
    }
}

/// Samples the member's state into the gauges and encodes every metric.
fn sample_and_encode(node: &Node) -> String {
    let m = &crate::metrics::METRICS;
    let leader = node.raft_status.leader();
    m.has_leader.set(i64::from(leader != 0));
    m.is_leader
        .set(i64::from(leader == node.membership.local_id));
    m.proposals_committed
        .set(node.raft_status.commit_index() as i64);
    m.proposals_applied.set(node.applied_index() as i64);
    m.proposals_pending.set(node.pending_proposals() as i64);
    m.db_size.set(node.store.db_size() as i64);
    m.db_size_in_use
        .set((node.store.size_in_use() + node.store.meta_size()) as i64);
    m.leases.set(node.store.lessor().len() as i64);
    m.current_revision.set(node.store.current_rev());
    m.compact_revision.set(node.store.compact_rev());
    m.encode()
}

/// `GET /version`.
async fn version() -> Response {
    #[derive(Serialize)]
    struct Version {
        etcdserver: &'static str,
        etcdcluster: &'static str,
    }
    json(
        StatusCode::OK,
        &Version {
            etcdserver: ETCD_API_VERSION,
            etcdcluster: ETCD_CLUSTER_VERSION,
        },
    )
}

/// Anything else: gRPC's UNIMPLEMENTED to a gRPC client (an unknown service or method),
/// `404 Not Found` to anyone else.
async fn fallback(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let mut r = Response::new(Body::from("Not Found\n"));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn kv_routes() -> Router<Gateway> {
    Router::new()
        .route("/v3/kv/range", unary!(KvClient, range, RangeRequest))
        .route("/v3/kv/put", unary!(KvClient, put, PutRequest))
        .route(
            "/v3/kv/deleterange",
            unary!(KvClient, delete_range, DeleteRangeRequest),
        )
        .route("/v3/kv/txn", unary!(KvClient, txn, TxnRequest))
        .route(
            "/v3/kv/compaction",
            unary!(KvClient, compact, CompactionRequest),
        )
        .route(
            "/v3/watch",
            streaming!(WatchClient, watch, WatchRequest, bidi, true),
        )
}

fn lease_routes() -> Router<Gateway> {
    let revoke = || unary!(LeaseClient, lease_revoke, LeaseRevokeRequest);
    let ttl = || unary!(LeaseClient, lease_time_to_live, LeaseTimeToLiveRequest);
    let leases = || unary!(LeaseClient, lease_leases, LeaseLeasesRequest);
    Router::new()
        .route(
            "/v3/lease/grant",
            unary!(LeaseClient, lease_grant, LeaseGrantRequest),
        )
        .route("/v3/lease/revoke", revoke())
        .route("/v3/kv/lease/revoke", revoke())
        .route("/v3/lease/timetolive", ttl())
        .route("/v3/kv/lease/timetolive", ttl())
        .route("/v3/lease/leases", leases())
        .route("/v3/kv/lease/leases", leases())
        .route(
            "/v3/lease/keepalive",
            streaming!(
                LeaseClient,
                lease_keep_alive,
                LeaseKeepAliveRequest,
                bidi,
                false
            ),
        )
}

fn cluster_routes() -> Router<Gateway> {
    Router::new()
        .route(
            "/v3/cluster/member/add",
            unary!(ClusterClient, member_add, MemberAddRequest),
        )
        .route(
            "/v3/cluster/member/remove",
            unary!(ClusterClient, member_remove, MemberRemoveRequest),
        )
        .route(
            "/v3/cluster/member/update",
            unary!(ClusterClient, member_update, MemberUpdateRequest),
        )
        .route(
            "/v3/cluster/member/list",
            unary!(ClusterClient, member_list, MemberListRequest),
        )
        .route(
            "/v3/cluster/member/promote",
            unary!(ClusterClient, member_promote, MemberPromoteRequest),
        )
        .route(
            "/v3/maintenance/alarm",
            unary!(MaintenanceClient, alarm, AlarmRequest),
        )
        .route(
            "/v3/maintenance/status",
            unary!(MaintenanceClient, status, StatusRequest),
        )
        .route(
            "/v3/maintenance/defragment",
            unary!(MaintenanceClient, defragment, DefragmentRequest),
        )
        .route(
            "/v3/maintenance/hash",
            unary!(MaintenanceClient, hash, HashRequest),
        )
        .route(
            "/v3/maintenance/snapshot",
            streaming!(MaintenanceClient, snapshot, SnapshotRequest),
        )
        .route(
            "/v3/maintenance/transfer-leadership",
            unary!(MaintenanceClient, move_leader, MoveLeaderRequest),
        )
}

fn auth_routes() -> Router<Gateway> {
    Router::new()
        .route(
            "/v3/auth/enable",
            unary!(AuthClient, auth_enable, AuthEnableRequest),
        )
        .route(
            "/v3/auth/disable",
            unary!(AuthClient, auth_disable, AuthDisableRequest),
        )
        .route(
            "/v3/auth/status",
            unary!(AuthClient, auth_status, AuthStatusRequest),
        )
        .route(
            "/v3/auth/authenticate",
            unary!(AuthClient, authenticate, AuthenticateRequest),
        )
        .route(
            "/v3/auth/user/add",
            unary!(AuthClient, user_add, AuthUserAddRequest),
        )
        .route(
            "/v3/auth/user/get",
            unary!(AuthClient, user_get, AuthUserGetRequest),
        )
        .route(
            "/v3/auth/user/list",
            unary!(AuthClient, user_list, AuthUserListRequest),
        )
        .route(
            "/v3/auth/user/delete",
            unary!(AuthClient, user_delete, AuthUserDeleteRequest),
        )
        .route(
            "/v3/auth/user/changepw",
            unary!(
                AuthClient,
                user_change_password,
                AuthUserChangePasswordRequest
            ),
        )
        .route(
            "/v3/auth/user/grant",
            unary!(AuthClient, user_grant_role, AuthUserGrantRoleRequest),
        )
        .route(
            "/v3/auth/user/revoke",
            unary!(AuthClient, user_revoke_role, AuthUserRevokeRoleRequest),
        )
        .route(
            "/v3/auth/role/add",
            unary!(AuthClient, role_add, AuthRoleAddRequest),
        )
        .route(
            "/v3/auth/role/get",
            unary!(AuthClient, role_get, AuthRoleGetRequest),
        )
        .route(
            "/v3/auth/role/list",
            unary!(AuthClient, role_list, AuthRoleListRequest),
        )
        .route(
            "/v3/auth/role/delete",
            unary!(AuthClient, role_delete, AuthRoleDeleteRequest),
        )
        .route(
            "/v3/auth/role/grant",
            unary!(
                AuthClient,
                role_grant_permission,
                AuthRoleGrantPermissionRequest
            ),
        )
        .route(
            "/v3/auth/role/revoke",
            unary!(
                AuthClient,
                role_revoke_permission,
                AuthRoleRevokePermissionRequest
            ),
        )
}

fn recipe_routes() -> Router<Gateway> {
    Router::new()
        .route("/v3/lock/lock", unary!(LockClient, lock, LockRequest))
        .route("/v3/lock/unlock", unary!(LockClient, unlock, UnlockRequest))
        .route(
            "/v3/election/campaign",
            unary!(ElectionClient, campaign, CampaignRequest),
        )
        .route(
            "/v3/election/proclaim",
            unary!(ElectionClient, proclaim, ProclaimRequest),
        )
        .route(
            "/v3/election/leader",
            unary!(ElectionClient, leader, LeaderRequest),
        )
        .route(
            "/v3/election/resign",
            unary!(ElectionClient, resign, ResignRequest),
        )
        .route(
            "/v3/election/observe",
            streaming!(ElectionClient, observe, LeaderRequest),
        )
}

/// The gateway's routes; gRPC services are added on top of them. Bodies may be as large
/// as a gRPC request may (`body_limit`: JSON carries bytes in base64, a third larger).
pub fn router(
    gateway: Gateway,
    body_limit: usize,
    ui: Option<super::dashboard::Options>,
) -> Router {
    let dashboard = ui.map(|o| super::dashboard::routes(gateway.clone(), o));
    let routes: Vec<Router<Gateway>> = vec![
        kv_routes(),
        lease_routes(),
        cluster_routes(),
        recipe_routes(),
        auth_routes(),
    ];
    routes
        .into_iter()
        .fold(Router::new(), Router::merge)
        .merge(super::health::routes())
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(gateway)
        .merge(dashboard.unwrap_or_default())
}
