//! The member's configuration: one struct, etcd's flag names, a `CAIRN_*` environment
//! variable for each, defaults in one place.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Cairn: a distributed coordination service speaking etcd's v3 API.
#[derive(Debug, Clone, Parser)]
#[command(name = "cairn", version, about)]
pub struct Config {
    /// Human-readable name of this member.
    #[arg(long = "name", env = "CAIRN_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: `<name>.cairn`).
    #[arg(long = "data-dir", env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long = "listen-client-urls",
        env = "CAIRN_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,

    /// Client URLs of this member advertised to the cluster (default: the listen URLs).
    #[arg(
        long = "advertise-client-urls",
        env = "CAIRN_ADVERTISE_CLIENT_URLS",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,

    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(
        long = "listen-peer-urls",
        env = "CAIRN_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,

    /// Peer URLs of this member advertised to the cluster.
    #[arg(
        long = "initial-advertise-peer-urls",
        env = "CAIRN_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,

    /// Initial cluster configuration, `name=peer-url,...` (default: this member alone).
    #[arg(long = "initial-cluster", env = "CAIRN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// `new` for a new cluster, `existing` to join one.
    #[arg(
        long = "initial-cluster-state",
        env = "CAIRN_INITIAL_CLUSTER_STATE",
        default_value = "new"
    )]
    pub initial_cluster_state: String,

    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(
        long = "initial-cluster-token",
        env = "CAIRN_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Raft heartbeat interval in milliseconds.
    #[arg(
        long = "heartbeat-interval",
        env = "CAIRN_HEARTBEAT_INTERVAL",
        default_value_t = 100
    )]
    pub heartbeat_interval: u64,

    /// Raft election timeout in milliseconds.
    #[arg(
        long = "election-timeout",
        env = "CAIRN_ELECTION_TIMEOUT",
        default_value_t = 1000
    )]
    pub election_timeout: u64,

    /// Largest client request accepted, in bytes.
    #[arg(long = "max-request-bytes", env = "CAIRN_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,

    /// Storage quota in bytes of key history and leases; a write that would exceed it
    /// raises the NOSPACE alarm (0: the default 2 GiB; negative: no quota).
    #[arg(
        long = "quota-backend-bytes",
        env = "CAIRN_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub quota_backend_bytes: i64,

    /// `periodic` (keep a duration of history) or `revision` (keep a number of revisions).
    #[arg(
        long = "auto-compaction-mode",
        env = "CAIRN_AUTO_COMPACTION_MODE",
        default_value = "periodic"
    )]
    pub auto_compaction_mode: String,

    /// History to keep: a duration (`1h`, `30m`, or hours as a bare number) in periodic
    /// mode, a number of revisions in revision mode; 0 turns auto-compaction off.
    #[arg(
        long = "auto-compaction-retention",
        env = "CAIRN_AUTO_COMPACTION_RETENTION",
        default_value = "0"
    )]
    pub auto_compaction_retention: String,

    /// How often revision-mode auto-compaction runs (etcd's fixed 5 minutes; for tests).
    #[arg(long = "experimental-auto-compaction-revision-interval", env = "CAIRN_EXPERIMENTAL_AUTO_COMPACTION_REVISION_INTERVAL", default_value = "5m", value_parser = parse_duration, hide = true)]
    pub auto_compaction_revision_interval: Duration,

    /// Most requests (proposals and linearizable reads) waiting at once on this member;
    /// beyond it requests are refused with `etcdserver: too many requests`, so a flood
    /// cannot queue without bound.
    #[arg(
        long = "experimental-max-pending-requests",
        env = "CAIRN_EXPERIMENTAL_MAX_PENDING_REQUESTS",
        default_value_t = 65_536
    )]
    pub max_pending_requests: usize,

    /// Most operations in one txn.
    #[arg(long = "max-txn-ops", env = "CAIRN_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// How often a watcher that asked for progress notifications gets one when idle
    /// (e.g. `10m`, `30s`, `500ms`).
    #[arg(long = "experimental-watch-progress-notify-interval", env = "CAIRN_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,

    /// Applied entries after which the raft log is compacted (a member further behind is
    /// then caught up by snapshot).
    #[arg(
        long = "snapshot-count",
        env = "CAIRN_SNAPSHOT_COUNT",
        default_value_t = 100_000
    )]
    pub snapshot_count: u64,

    /// Serve the web dashboard under `/ui/` on the client URLs.
    #[arg(long = "ui", env = "CAIRN_UI", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = true, default_missing_value = "true")]
    pub ui: bool,

    /// Let the dashboard write (put, delete, revoke, resign) while auth is off. With auth on,
    /// each user's permissions decide and this flag is not needed.
    #[arg(long = "ui-writes", env = "CAIRN_UI_WRITES", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub ui_writes: bool,

    /// Certificate (PEM) served on `https://` client URLs.
    #[arg(long = "cert-file", env = "CAIRN_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of `--cert-file`.
    #[arg(long = "key-file", env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// CA certificates (PEM) client certificates must chain to; as in etcd, giving it
    /// requires client certificates.
    #[arg(long = "trusted-ca-file", env = "CAIRN_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse clients without a certificate signed by `--trusted-ca-file`.
    #[arg(long = "client-cert-auth", env = "CAIRN_CLIENT_CERT_AUTH", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub client_cert_auth: bool,

    /// Certificate (PEM) for `https://` peer URLs: served to members that dial this one and
    /// presented when dialing them.
    #[arg(long = "peer-cert-file", env = "CAIRN_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,

    /// Private key (PEM) of `--peer-cert-file`.
    #[arg(long = "peer-key-file", env = "CAIRN_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,

    /// CA certificates (PEM) other members' certificates must chain to (both ways); as in
    /// etcd, giving it requires peer certificates.
    #[arg(long = "peer-trusted-ca-file", env = "CAIRN_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,

    /// Refuse peers without a certificate signed by `--peer-trusted-ca-file`.
    #[arg(long = "peer-client-cert-auth", env = "CAIRN_PEER_CLIENT_CERT_AUTH", action = clap::ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub peer_client_cert_auth: bool,

    /// How auth tokens are made: `simple` (random, kept by the members, sliding TTL), or
    /// `jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|PS256|ES256|HS256|…>[,ttl=5m]`.
    #[arg(
        long = "auth-token",
        env = "CAIRN_AUTH_TOKEN",
        default_value = "simple"
    )]
    pub auth_token: String,

    /// How long a simple token lives after its last use, in seconds.
    #[arg(
        long = "auth-token-ttl",
        env = "CAIRN_AUTH_TOKEN_TTL",
        default_value_t = 300
    )]
    pub auth_token_ttl: u64,

    /// bcrypt cost of stored password hashes (4 to 31).
    #[arg(long = "bcrypt-cost", env = "CAIRN_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,

    /// Serve the test-only Peer.Fault call, which cuts raft traffic with chosen members.
    #[arg(
        long = "experimental-fault-injection",
        env = "CAIRN_EXPERIMENTAL_FAULT_INJECTION",
        hide = true
    )]
    pub fault_injection: bool,

    /// Log level filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long = "log-level", env = "CAIRN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long = "log-format", env = "CAIRN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// Configuration with every default, as `cairn` with no flags.
    pub fn new() -> Config {
        // Parsing no arguments cannot fail: every field has a default. Environment
        // variables still apply, as they do for the binary.
        Config::parse_from(["cairn"])
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.cairn", self.name)))
    }

    pub fn advertise_client_urls(&self) -> Vec<String> {
        if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls.clone()
        }
    }

    /// The storage quota in bytes, if any (etcd's default of 2 GiB for 0).
    pub fn quota(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(2 * 1024 * 1024 * 1024),
            q => Some(q as u64),
        }
    }

    pub fn initial_cluster(&self) -> String {
        self.initial_cluster.clone().unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// Parses `500ms`, `30s`, `10m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s or 10m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_style_boolean_switches_take_an_optional_value() {
        let cfg = Config::try_parse_from(["cairn", "--client-cert-auth=true"]).expect("parse");
        assert!(cfg.client_cert_auth);
        let cfg = Config::try_parse_from(["cairn", "--peer-client-cert-auth"]).expect("parse");
        assert!(cfg.peer_client_cert_auth);
        let cfg = Config::try_parse_from(["cairn", "--client-cert-auth=false"]).expect("parse");
        assert!(!cfg.client_cert_auth);
    }
}
