//! Prometheus metrics, with etcd's names where etcd has one (`etcd_server_has_leader`,
//! `etcd_disk_wal_fsync_duration_seconds`, `grpc_server_handled_total` …) so existing
//! dashboards and alerts work, plus Cairn's own under `cairn_`. One registry per process,
//! as etcd's; `GET /metrics` on the client URLs serves it in the text format.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of the gRPC request counters (go-grpc-prometheus's, which etcd uses).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
}

/// The same with the answer's code (`OK`, `InvalidArgument` …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub grpc_type: &'static str,
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: &'static str,
}

/// Every metric the member keeps.
pub struct Metrics {
    registry: Registry,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes: Counter,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub db_size: Gauge,
    pub db_size_in_use: Gauge,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub grpc_started: Family<GrpcLabels, Counter>,
    pub grpc_handled: Family<HandledLabels, Counter>,
    /// Unary calls only: a stream's time is its life, not its latency.
    pub grpc_handling: Family<GrpcLabels, Histogram, fn() -> Histogram>,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub leases: Gauge,
    pub leases_granted: Counter,
    pub leases_revoked: Counter,
    pub leases_expired: Counter,
    pub current_revision: Gauge,
    pub compact_revision: Gauge,
}

/// Disk latencies from 1 ms to about 8 s (etcd's buckets).
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Request latencies from 0.1 ms to about 26 s: etcd's default buckets start at 5 ms, above
/// most of Cairn's answers.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            db_size: Gauge::default(),
            db_size_in_use: Gauge::default(),
            wal_fsync: disk_buckets(),
            backend_commit: disk_buckets(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_handling: Family::new_with_constructor(request_buckets),
            watch_streams: Gauge::default(),
            watchers: Gauge::default(),
            leases: Gauge::default(),
            leases_granted: Counter::default(),
            leases_revoked: Counter::default(),
            leases_expired: Counter::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            self.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            self.is_leader.clone(),
        );
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            self.leader_changes.clone(),
        );
        r.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            self.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            self.proposals_applied.clone(),
        );
        r.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.proposals_pending.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen.",
            self.proposals_failed.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            self.db_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            self.db_size_in_use.clone(),
        );
        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the raft log.",
            self.wal_fsync.clone(),
        );
        r.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by the backend.",
            self.backend_commit.clone(),
        );
        r.register(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            self.grpc_started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            self.grpc_handled.clone(),
        );
        r.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            self.grpc_handling.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
            self.watch_streams.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers.",
            self.watchers.clone(),
        );
        r.register(
            "cairn_lease_active",
            "Number of leases currently granted.",
            self.leases.clone(),
        );
        r.register(
            "etcd_debugging_server_lease_granted",
            "The total number of granted leases.",
            self.leases_granted.clone(),
        );
        r.register(
            "etcd_debugging_server_lease_revoked",
            "The total number of revoked leases.",
            self.leases_revoked.clone(),
        );
        r.register(
            "etcd_debugging_server_lease_expired",
            "The total number of expired leases.",
            self.leases_expired.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            self.current_revision.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            self.compact_revision.clone(),
        );
        self
    }

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Seconds as a histogram observation.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// go-grpc-prometheus's name for a gRPC status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}
