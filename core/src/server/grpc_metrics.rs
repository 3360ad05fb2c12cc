//! Counts gRPC calls by service, method and answer code (go-grpc-prometheus's
//! `grpc_server_started_total` and `grpc_server_handled_total`, which etcd exports). A
//! call's code is the `grpc-status` of its response headers; a call that answers normally
//! sends it in the trailers instead, so it counts as `OK` (a stream's later error too).
//! Unary calls are also timed (`grpc_server_handling_seconds`, etcd's extensive metric).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::metrics::{code_name, GrpcLabels, HandledLabels, METRICS};

/// The layer for `tonic::transport::Server::layer`.
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// The services and methods the client port serves.
const SERVED: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
];

/// The labels of a gRPC call (`/pkg.Service/Method` with a gRPC content type).
fn labels<B>(req: &http::Request<B>) -> Option<GrpcLabels> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return None;
    }
    let (service, method) = req.uri().path().trim_start_matches('/').split_once('/')?;
    // Only the methods this server serves get labels: a path is the caller's choice, and
    // every new label set would be kept forever.
    let (_, methods) = SERVED.iter().find(|(s, _)| *s == service)?;
    if !methods.contains(&method) {
        return None;
    }
    let grpc_type = match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    };
    Some(GrpcLabels {
        grpc_type,
        grpc_service: service.to_string(),
        grpc_method: method.to_string(),
    })
}

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Boxed<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let labels = labels(&req);
        if let Some(l) = &labels {
            METRICS.grpc_started.get_or_create(l).inc();
        }
        let started = std::time::Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            if let Some(l) = labels {
                if l.grpc_type == "unary" {
                    METRICS
                        .grpc_handling
                        .get_or_create(&l)
                        .observe(started.elapsed().as_secs_f64());
                }
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                let handled = HandledLabels {
                    grpc_type: l.grpc_type,
                    grpc_service: l.grpc_service,
                    grpc_method: l.grpc_method,
                    grpc_code: code_name(code),
                };
                METRICS.grpc_handled.get_or_create(&handled).inc();
            }
            Ok(resp)
        })
    }
}
