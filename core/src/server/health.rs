//! The health endpoints on the client port: etcd's `/health`, and `/livez` and `/readyz`
//! as etcd 3.5.19 serves them (3.4.29 and 3.5.11 added them; 3.5.19 added the learner
//! check): liveness is a local read; readiness also needs no CORRUPT alarm, a linearizable
//! read (so a leader) and a member that is not a learner.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use cairn_api::etcdserverpb::{AlarmType, RangeRequest};
use serde::Serialize;

use super::gateway::Gateway;
use crate::node::Node;

/// How long a health check waits for a linearizable read.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// One of the checks `/livez` and `/readyz` run, by etcd's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, node: &Node) -> Result<(), String> {
        match self {
            Check::DataCorruption => match node.store.alarmed(AlarmType::Corrupt) {
                true => Err("alarm activated: CORRUPT".into()),
                false => Ok(()),
            },
            Check::SerializableRead => local_read(node),
            Check::LinearizableRead => {
                match tokio::time::timeout(READ_TIMEOUT, node.wait_linearizable()).await {
                    Ok(Ok(())) => local_read(node),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(crate::error::Error::Timeout.to_string()),
                }
            }
            Check::NonLearner => {
                let local = node.membership.member(node.membership.local_id);
                match local.is_some_and(|m| m.is_learner) {
                    true => Err("not supported for learner".into()),
                    false => Ok(()),
                }
            }
        }
    }
}

/// etcd's check read: one key, keys only.
fn local_read(node: &Node) -> Result<(), String> {
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    let view = node.store.read().map_err(|e| e.to_string())?;
    crate::apply::kv::range(&view, &req)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The health routes.
pub(super) fn routes() -> Router<Gateway> {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/livez", any(|s, m, q| checks(s, m, q, LIVEZ, true)))
        .route("/readyz", any(|s, m, q| checks(s, m, q, READYZ, true)));
    for (path, list) in [("/livez", LIVEZ), ("/readyz", READYZ)] {
        for check in list {
            r = r.route(
                &format!("{path}/{}", check.name()),
                any(move |s, m, q| checks(s, m, q, std::slice::from_ref(check), false)),
            );
        }
    }
    r
}

fn text(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Runs `list` (less what `?exclude=` names, where `excludable`): `ok` when all pass (each
/// check's line first with `?verbose`), else 503 with every check's line.
async fn checks(
    State(g): State<Gateway>,
    method: Method,
    RawQuery(query): RawQuery,
    list: &'static [Check],
    excludable: bool,
) -> Response {
    if method != Method::GET {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let params: Vec<(&str, &str)> = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    // As etcd: the parameter's presence is what counts.
    let verbose = params.iter().any(|(k, _)| *k == "verbose");
    let excluded: Vec<&str> = params
        .iter()
        .filter(|(k, v)| excludable && *k == "exclude" && !v.is_empty())
        .map(|(_, v)| *v)
        .collect();
    let mut lines = String::new();
    let mut failed = false;
    for check in list.iter().filter(|c| !excluded.contains(&c.name())) {
        match check.run(g.node()).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(e) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {e}\n", check.name()));
            }
        }
    }
    if failed {
        // etcd's http.Error adds a newline of its own.
        lines.push('\n');
        return text(StatusCode::SERVICE_UNAVAILABLE, lines);
    }
    if !verbose {
        lines.clear();
    }
    lines.push_str("ok\n");
    text(StatusCode::OK, lines)
}

/// `GET /health`: healthy when the member has a leader, no alarm is raised and a
/// linearizable read completes in time (etcd's checks); 503 otherwise.
async fn health(State(g): State<Gateway>) -> Response {
    let node: &Arc<Node> = g.node();
    let healthy = node.raft_status.leader() != 0
        && node.store.alarms().is_empty()
        && tokio::time::timeout(READ_TIMEOUT, node.wait_linearizable())
            .await
            .is_ok_and(|r| r.is_ok());
    #[derive(Serialize)]
    struct Health {
        health: &'static str,
    }
    let (status, health) = if healthy {
        (StatusCode::OK, "true")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "false")
    };
    super::gateway::json(status, &Health { health })
}
