//! Operations commands: `snapshot save|status|restore`, `defrag` and `endpoint hashkv`.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::{bad_args, print_rows, Fail};
use crate::backup;
use crate::Client;

/// What `snapshot restore` is asked to build (etcdctl's flags).
#[derive(Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The data directory to create.
    pub data_dir: PathBuf,
    /// The new member's name.
    pub name: String,
    /// The new cluster, `name=peer-url,...`.
    pub initial_cluster: String,
    /// The new cluster's token.
    pub initial_cluster_token: String,
    /// The new member's peer URLs.
    pub initial_advertise_peer_urls: Vec<String>,
    /// Restore an etcd database without the SHA-256 trailer (a file copied from a data
    /// directory), or whose trailer does not match.
    pub skip_hash_check: bool,
}

/// Builds a member's data directory from a backup. The server crate provides it (this
/// crate knows the file format, not the storage engine); `cairnctl` is built with it.
pub type Restore = fn(&RestoreArgs) -> Result<(), String>;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Stores a backup of a member's state to the given file.
    Save { filename: PathBuf },
    /// Gets the hash, revision, total keys and size of a backup file.
    Status { filename: PathBuf },
    /// Restores a backup into the data directory of a member of a new cluster.
    Restore {
        filename: PathBuf,
        /// Path to the data directory (default: `<name>.cairn`).
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap.
        #[arg(
            long = "initial-cluster",
            default_value = "default=http://localhost:2380"
        )]
        initial_cluster: String,
        /// Initial cluster token for the cluster during restore bootstrap.
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs to advertise to the rest of the cluster.
        #[arg(
            long = "initial-advertise-peer-urls",
            default_value = "http://localhost:2380",
            value_delimiter = ','
        )]
        initial_advertise_peer_urls: Vec<String>,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long = "skip-hash-check")]
        skip_hash_check: bool,
        /// Not supported: Cairn keeps its raft log in the data directory.
        #[arg(long = "wal-dir", hide = true)]
        wal_dir: Option<PathBuf>,
    },
}

/// Runs the snapshot commands that need no member (`status`, `restore`); `None` for `save`.
pub fn snapshot_local(
    cmd: &SnapshotCmd,
    restore: Option<Restore>,
    json: bool,
    table: bool,
) -> Option<Result<(), Fail>> {
    match cmd {
        SnapshotCmd::Save { .. } => None,
        SnapshotCmd::Status { filename } => Some(status(filename, json, table)),
        SnapshotCmd::Restore {
            filename,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
            wal_dir,
        } => {
            if wal_dir.is_some() {
                return Some(Err(bad_args(
                    "--wal-dir is not supported: Cairn keeps its raft log in the data directory",
                )));
            }
            let Some(restore) = restore else {
                return Some(Err("this cairnctl was built without restore support".into()));
            };
            let args = RestoreArgs {
                file: filename.clone(),
                data_dir: data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("{name}.cairn"))),
                name: name.clone(),
                initial_cluster: initial_cluster.clone(),
                initial_cluster_token: initial_cluster_token.clone(),
                initial_advertise_peer_urls: initial_advertise_peer_urls.clone(),
                skip_hash_check: *skip_hash_check,
            };
            Some(restore(&args).map_err(Fail::from))
        }
    }
}

fn status(filename: &std::path::Path, json: bool, table: bool) -> Result<(), Fail> {
    let s = backup::status(filename)?;
    if json {
        println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            s.hash, s.revision, s.total_keys, s.total_size
        );
        return Ok(());
    }
    let row = vec![
        format!("{:x}", s.hash),
        s.revision.to_string(),
        s.total_keys.to_string(),
        super::human_bytes(s.total_size as i64),
    ];
    print_rows(
        &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
        &[row],
        table,
    );
    Ok(())
}

/// `snapshot save`: streams a backup from the one endpoint into `<file>.part` with a
/// progress bar, checks its digest, syncs it and renames it into place.
pub async fn snapshot_remote(
    client: &Client,
    endpoints: &[String],
    cmd: SnapshotCmd,
) -> Result<(), Fail> {
    let SnapshotCmd::Save { filename } = cmd else {
        return Ok(());
    };
    if endpoints.len() != 1 {
        return Err(bad_args(&format!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            endpoints.join(" ")
        )));
    }
    let part = PathBuf::from(format!("{}.part", filename.display()));
    let result = save(client, &client.url_of(&endpoints[0]), &part).await;
    if let Err(e) = result.and_then(|()| {
        backup::verify(&part)?;
        std::fs::rename(&part, &filename)?;
        Ok(())
    }) {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    println!("Snapshot saved at {}", filename.display());
    Ok(())
}

async fn save(client: &Client, endpoint: &str, part: &std::path::Path) -> Result<(), Fail> {
    let mut stream = client.snapshot(endpoint).await?;
    // A backup holds every key: readable by its owner only, as etcdctl's.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = std::io::BufWriter::new(options.open(part)?);
    let bar = indicatif::ProgressBar::hidden();
    while let Some(m) = stream.message().await.map_err(crate::Error::from)? {
        if bar.length().is_none() {
            bar.set_length(m.blob.len() as u64 + m.remaining_bytes);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        out.write_all(&m.blob)?;
        bar.inc(m.blob.len() as u64);
    }
    bar.finish_and_clear();
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// `defrag`: one member at a time, as etcdctl.
pub async fn defrag(client: &Client, endpoints: Vec<String>) -> Result<(), Fail> {
    let mut failed = false;
    for ep in endpoints {
        match client.defragment(&client.url_of(&ep)).await {
            Ok(_) => println!("Finished defragmenting etcd member[{ep}]"),
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({})", e.go_text());
                failed = true;
            }
        }
    }
    if failed {
        // As etcdctl: each failure was reported; the exit code says the rest.
        return Err(Box::new(super::Exit {
            code: 1,
            message: String::new(),
        }));
    }
    Ok(())
}

/// `endpoint hashkv`.
pub async fn hashkv(
    client: &Client,
    endpoints: Vec<String>,
    rev: i64,
    json: bool,
    table: bool,
) -> Result<(), Fail> {
    let mut rows = Vec::new();
    let mut items = Vec::new();
    let mut failed = None;
    for ep in endpoints {
        match client.hash_kv(&client.url_of(&ep), rev).await {
            Ok(h) => {
                let header = h
                    .header
                    .as_ref()
                    .map(super::json::header)
                    .unwrap_or_default();
                // Go's encoding leaves a zero compacted revision out.
                let compacted = match h.compact_revision {
                    0 => String::new(),
                    r => format!(",\"compact_revision\":{r}"),
                };
                items.push(format!(
                    "{{\"Endpoint\":\"{ep}\",\"HashKV\":{{\"header\":{header},\"hash\":{}{compacted}}}}}",
                    h.hash
                ));
                rows.push(vec![ep, h.hash.to_string()]);
            }
            Err(e) => {
                eprintln!("Failed to get the hash of endpoint {ep} ({})", e.go_text());
                failed = Some(e);
            }
        }
    }
    // As etcdctl: any failure is the answer (the last one), with nothing listed.
    if let Some(e) = failed {
        return Err(e.into());
    }
    if json {
        println!("[{}]", items.join(","));
    } else {
        print_rows(&["ENDPOINT", "HASH"], &rows, table);
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum AlarmCmd {
    /// Lists all alarms.
    List,
    /// Disarms all alarms.
    Disarm,
}

/// An alarm as etcdctl prints it (the text form of `AlarmMember`).
fn alarm_text(a: &cairn_api::etcdserverpb::AlarmMember) -> String {
    use cairn_api::etcdserverpb::AlarmType;
    let name = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
    format!("memberID:{} alarm:{name} ", a.member_id)
}

/// `alarm list` and `alarm disarm`.
pub async fn alarm(client: &Client, cmd: AlarmCmd, json: bool) -> Result<(), Fail> {
    let (header, alarms) = match cmd {
        AlarmCmd::List => {
            let r = client.alarm_list().await?;
            (r.header, r.alarms)
        }
        AlarmCmd::Disarm => (None, client.alarm_disarm().await?),
    };
    if json {
        let items: Vec<String> = alarms
            .iter()
            .map(|a| format!("{{\"memberID\":{},\"alarm\":{}}}", a.member_id, a.alarm))
            .collect();
        // Go's encoding: absent and empty fields are left out.
        let mut fields = Vec::new();
        if let Some(h) = &header {
            fields.push(format!("\"header\":{}", super::json::header(h)));
        }
        if !items.is_empty() {
            fields.push(format!("\"alarms\":[{}]", items.join(",")));
        }
        println!("{{{}}}", fields.join(","));
        return Ok(());
    }
    for a in &alarms {
        println!("{}", alarm_text(a));
    }
    Ok(())
}
