//! The web dashboard under `/ui/` on the client URLs: a page and its scripts, embedded in
//! the binary, that read the member through the JSON gateway with the signed-in user's
//! token, so auth decides what it shows exactly as it does for any client. The member adds
//! two reads the gateway has no call for: what the page may do (`/ui/api/info`) and every
//! member's status, which only the member can reach (`/ui/api/cluster`).
//!
//! Safe by default: without auth the page only reads unless the member runs with
//! `--ui-writes`; with auth each user's permissions decide. Every response forbids framing
//! and foreign scripts, and the token travels only in an `Authorization` header.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use cairn_api::etcdserverpb::maintenance_client::MaintenanceClient;
use cairn_api::etcdserverpb::{StatusRequest, StatusResponse};
use serde::Serialize;
use tonic::transport::Channel;

use super::auth::PeerIdentity;
use super::gateway::{json, Caller, Gateway};

/// How long the cluster view waits for one member's status.
const STATUS_TIMEOUT: Duration = Duration::from_millis(1500);

/// The page's files: (path under `/ui/`, content type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "model.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/model.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/views.js"),
    ),
    (
        "recipes.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/recipes.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
];

/// What the member lets its dashboard do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Writes from the page while auth is off (`--ui-writes`).
    pub writes: bool,
}

#[derive(Clone)]
struct Dashboard {
    gateway: Gateway,
    options: Options,
    /// Connections to the other members' client URLs, by URL.
    peers: Arc<tokio::sync::Mutex<HashMap<String, Channel>>>,
}

/// The dashboard's routes, to merge into the gateway's.
pub fn routes(gateway: Gateway, options: Options) -> Router {
    let state = Dashboard {
        gateway,
        options,
        peers: Arc::default(),
    };
    let mut router = Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/api/info", get(info))
        .route("/ui/api/cluster", get(cluster));
    for &(path, kind, body) in ASSETS {
        router = router.route(
            &format!("/ui/{path}"),
            get(move || async move { asset(kind, body) }),
        );
    }
    router.with_state(state)
}

/// Headers every dashboard response carries: no framing (clickjacking), scripts and
/// connections only from this origin, no sniffing, and nothing cached that a later user
/// of the same browser could read.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    harden(r)
}

fn redirect(to: &'static str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    harden(r)
}

/// `GET /ui/api/info`: who this member is and whether the page may offer writes.
async fn info(State(d): State<Dashboard>) -> Response {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        name: String,
        id: String,
        version: &'static str,
        auth_enabled: bool,
        /// Writes offered to every visitor (auth off and `--ui-writes`).
        open_writes: bool,
    }
    let node = d.gateway.node();
    let id = node.membership.local_id;
    let auth_enabled = node.store.auth().is_enabled();
    let name = node
        .membership
        .member(id)
        .map(|m| m.name)
        .unwrap_or_default();
    harden(json(
        StatusCode::OK,
        &Info {
            name,
            id: format!("{id:x}"),
            version: env!("CARGO_PKG_VERSION"),
            auth_enabled,
            open_writes: !auth_enabled && d.options.writes,
        },
    ))
}

/// One member as the cluster view shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberView {
    id: String,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    is_learner: bool,
    /// Its own answer to Status, if it gave one in time.
    status: Option<StatusResponse>,
    /// Why there is no status.
    error: Option<String>,
}

/// `GET /ui/api/cluster`: every member with its own Status, asked with the caller's token.
async fn cluster(
    State(d): State<Dashboard>,
    peer: Option<Extension<PeerIdentity>>,
    headers: HeaderMap,
) -> Response {
    let caller = Caller::new(headers, peer);
    let node = d.gateway.node().clone();
    let local = node.membership.local_id;
    let asks = node.membership.members().into_iter().map(|m| {
        let d = d.clone();
        let md = caller.metadata();
        async move {
            let answer = if m.id == local {
                d.gateway
                    .channel()
                    .await
                    .map_err(|s| s.message().to_string())
            } else {
                d.peer_channel(&m.client_ur_ls).await
            };
            let status = match answer {
                Ok(ch) => ask_status(ch, md).await,
                Err(e) => Err(e),
            };
            let (status, error) = match status {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            MemberView {
                id: format!("{:x}", m.id),
                name: m.name,
                peer_urls: m.peer_ur_ls,
                client_urls: m.client_ur_ls,
                is_learner: m.is_learner,
                status,
                error,
            }
        }
    });
    let members = futures::future::join_all(asks).await;
    #[derive(Serialize)]
    struct View {
        local: String,
        members: Vec<MemberView>,
    }
    harden(json(
        StatusCode::OK,
        &View {
            local: format!("{local:x}"),
            members,
        },
    ))
}

async fn ask_status(
    ch: Channel,
    md: tonic::metadata::MetadataMap,
) -> Result<StatusResponse, String> {
    let mut req = tonic::Request::new(StatusRequest {});
    *req.metadata_mut() = md;
    match tokio::time::timeout(STATUS_TIMEOUT, MaintenanceClient::new(ch).status(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("no answer in time".to_string()),
    }
}

impl Dashboard {
    /// A connection to another member, by the first of its client URLs; a member that has
    /// not published its URLs yet (it just joined) has none.
    async fn peer_channel(&self, urls: &[String]) -> Result<Channel, String> {
        let url = urls
            .first()
            .ok_or_else(|| "no client URL published yet".to_string())?;
        let mut peers = self.peers.lock().await;
        // Members come and go: keep connections to current members' URLs only.
        let current: Vec<String> = self
            .gateway
            .node()
            .membership
            .members()
            .into_iter()
            .filter_map(|m| m.client_ur_ls.into_iter().next())
            .collect();
        peers.retain(|u, _| current.contains(u));
        if let Some(ch) = peers.get(url) {
            return Ok(ch.clone());
        }
        let ch = self
            .gateway
            .channel_to_member(url)
            .map_err(|s| s.message().to_string())?;
        peers.insert(url.clone(), ch.clone());
        Ok(ch)
    }
}
