//! The workloads as the command line names them.

use clap::Subcommand;

#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// Put random keys of the key space.
    Put,
    /// Range single keys of the key space.
    Range {
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// A txn with one put and no compare.
    TxnPut,
    /// Read-modify-write: range a key, then put it in a txn guarded by its mod revision.
    TxnMixed,
    /// Put → event latency, fanned out to N watchers of the key (one stream each).
    Watch {
        #[arg(long, default_value_t = 1)]
        watchers: usize,
    },
    /// Put → event latency to a single watcher.
    WatchLatency,
    /// Every key read by `--concurrency` clients at once (runs on its own), in one Range
    /// or paged (`--page` keys a call, as Kubernetes lists). See `ranges.rs`.
    RangeFull {
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 0)]
        page: i64,
        /// The member's pid, to report its peak resident memory during the reads.
        #[arg(long)]
        rss_pid: Option<u32>,
        /// Count each answer's key-values without decoding them (`--page 0` only).
        #[arg(long)]
        raw: bool,
    },
    /// Many watchers over few streams (runs on its own, one put at a time): `--mode one`
    /// watches a key per watcher and adds a stream that stops reading halfway; `--mode
    /// fan` has every watcher on one key. See `watchers.rs`.
    WatchScale {
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        #[arg(long, default_value_t = 100)]
        per_stream: usize,
        #[arg(long, default_value_t = 1000)]
        puts: usize,
        #[arg(long, default_value = "one", value_parser = ["one", "fan"])]
        mode: String,
        /// The member's pid, to report its resident memory per watcher.
        #[arg(long)]
        rss_pid: Option<u32>,
    },
    /// A put of a configuration to the moment all N subscribers see it (the slowest
    /// subscriber's delay per put): cairn-recipes `Config` subscribers, or with `--plain`
    /// plain watches of the key (what an etcd user writes by hand).
    ConfigPropagation {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long)]
        plain: bool,
    },
    /// Reads of single keys from a cairn-recipes `Cache` of the whole key space, listed
    /// once at the start (compare with `range --consistency s`).
    CacheRead,
    /// The lease storm (runs on its own; `--clients` and `--total` do not apply): this
    /// many leases with a key each, renewed from a few streams, then all left to expire
    /// while another client puts. One JSON line with keep-alives/s, how long after the
    /// deadline the last key went, and the put p50/p99 before and during the storm.
    LeaseStorm {
        #[arg(long, default_value_t = 100_000)]
        leases: usize,
        /// Long enough for the creation and one renewal round (etcd renews a few thousand
        /// leases a second per stream).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        #[arg(long, default_value_t = 64)]
        streams: usize,
        /// Stop waiting for the keys this many seconds after the deadline.
        #[arg(long, default_value_t = 600)]
        give_up: u64,
    },
    /// Grants this many leases with a key each (`storm/<n>`) and exits, leaving them to
    /// live out their TTL: the live leases of the failover-with-leases row.
    LeaseGrant {
        #[arg(long, default_value_t = 100_000)]
        leases: usize,
        #[arg(long, default_value_t = 600)]
        ttl: i64,
    },
    /// Lease keep-alive round trips, one lease per client; a stream that breaks is opened
    /// again on the next renewal, as clients do when their member fails over.
    LeaseKeepalive,
    /// The floor under a 1-client put: mean fdatasync of a small write in `--dir` (on the
    /// member's data directory's filesystem) plus the mean round trip to the member.
    Floor {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 500)]
        count: usize,
    },
    /// Logins (Authenticate with `--user`'s name and password): the password check is
    /// bcrypt's, on purpose slow.
    Authenticate,
    /// Lock acquire + release cycles under contention (all clients on one lock).
    Lock {
        /// Through the server's v3lock Lock/Unlock service (as `etcdctl lock`) instead of
        /// the cairn-recipes Mutex.
        #[arg(long)]
        service: bool,
        #[arg(long, default_value = "bench-lock")]
        name: String,
    },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Range { consistency } => format!("range-{consistency}"),
            Workload::TxnPut => "txn-put".into(),
            Workload::TxnMixed => "txn-mixed".into(),
            Workload::Watch { watchers } => format!("watch-{watchers}"),
            Workload::WatchLatency => "watch-latency".into(),
            Workload::WatchScale { .. } => "watch-scale".into(),
            Workload::RangeFull { .. } => "range-full".into(),
            Workload::ConfigPropagation { plain: true, .. } => "config-propagation-plain".into(),
            Workload::ConfigPropagation { .. } => "config-propagation".into(),
            Workload::CacheRead => "cache-read".into(),
            Workload::LeaseKeepalive => "lease-keepalive".into(),
            Workload::LeaseStorm { .. } => "lease-storm".into(),
            Workload::LeaseGrant { .. } => "lease-grant".into(),
            Workload::Floor { .. } => "floor".into(),
            Workload::Authenticate => "authenticate".into(),
            Workload::Lock { service: true, .. } => "lock-service".into(),
            Workload::Lock { .. } => "lock".into(),
        }
    }
}
