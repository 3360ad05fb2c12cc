//! Backups: writing the file `Maintenance.Snapshot` streams (format in
//! [`cairn_client::backup`]) and restoring one into the data directory of a member of a new
//! cluster (`cairnctl snapshot restore`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_client::backup::{encode_record, MAGIC};
use cairn_client::ctl::RestoreArgs;

use crate::config::Config;
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{self, MembershipError};
use crate::mvcc::{Space, Store};

/// A backup written to a temporary file, removed when dropped.
pub struct BackupFile {
    pub path: PathBuf,
    pub size: u64,
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes a consistent backup of `store` into a new file in `dir`.
pub fn write(store: &Store, dir: &Path) -> Result<BackupFile, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        "backup-{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    // Removes the file on any error below.
    let mut file = BackupFile { path, size: 0 };
    // A backup holds every key: readable by the member's user only.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = Hashing {
        out: BufWriter::new(options.open(&file.path)?),
        sha: ring::digest::Context::new(&ring::digest::SHA256),
        size: 0,
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    buf.extend_from_slice(MAGIC);
    store.dump(|space, k, v| {
        if space == Space::Meta && !Store::is_portable_meta(k) {
            return Ok(());
        }
        encode_record(&mut buf, space as u8, k, v);
        if buf.len() >= 64 * 1024 {
            out.write(&mut buf)?;
        }
        Ok(())
    })?;
    let body = out.size as usize + buf.len();
    buf.extend_from_slice(&cairn_client::backup::padding(body));
    out.write(&mut buf)?;
    let digest = out.sha.finish();
    out.out.write_all(digest.as_ref())?;
    out.out.flush()?;
    file.size = out.size + digest.as_ref().len() as u64;
    Ok(file)
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Backup(#[from] cairn_client::Error),
    #[error("data-dir {0:?} exists")]
    DataDirExists(String),
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error(transparent)]
    Store(#[from] Error),
}

/// A file writer that hashes and counts what it writes.
struct Hashing {
    out: BufWriter<File>,
    sha: ring::digest::Context,
    size: u64,
}

impl Hashing {
    /// Writes and empties `buf`.
    fn write(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        self.sha.update(buf);
        self.out.write_all(buf)?;
        self.size += buf.len() as u64;
        buf.clear();
        Ok(())
    }
}

/// `cairnctl snapshot restore`: restores and says what it restored.
pub fn restore_command(rc: &RestoreArgs) -> Result<(), String> {
    let summary = restore(rc).map_err(|e| e.to_string())?;
    eprintln!(
        "restored snapshot {} (revision {}) into {}",
        rc.file.display(),
        summary.revision,
        rc.data_dir.display()
    );
    Ok(())
}

/// Builds `data_dir` from a backup so a member started on it with the same flags joins a
/// new cluster holding the backed-up keys, revisions and leases. Every member of the new
/// cluster is restored from the same backup with its own name and peer URLs.
pub fn restore(rc: &RestoreArgs) -> Result<cairn_client::backup::Summary, RestoreError> {
    let summary = cairn_client::backup::verify(&rc.file)?;
    if std::fs::read_dir(&rc.data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::DataDirExists(
            rc.data_dir.display().to_string(),
        ));
    }
    let mut cfg = Config::new();
    cfg.name = rc.name.clone();
    cfg.data_dir = Some(rc.data_dir.clone());
    cfg.initial_cluster = Some(rc.initial_cluster.clone());
    cfg.initial_cluster_token = rc.initial_cluster_token.clone();
    cfg.initial_advertise_peer_urls = rc.initial_advertise_peer_urls.clone();
    let (state, id) = membership::initial_state(&cfg)?;

    let db_dir = rc.data_dir.join("member").join("db");
    let db = Store::open_database(&db_dir)?;
    let store = Store::open(&db, &db_dir, Arc::new(Lessor::new(1)))?;
    let (records, check) = cairn_client::backup::open(&rc.file)?;
    let records = records.map(|r| {
        let (tag, k, v) = r.map_err(|e| Error::Corrupt(e.to_string()))?;
        let space = Space::from_tag(tag)
            .filter(|s| *s != Space::Meta || Store::is_portable_meta(&k))
            .ok_or_else(|| Error::Corrupt(format!("unexpected record in space {tag}")))?;
        Ok((space, k, v))
    });
    store.restore(records)?;
    check()?;
    // From here on, exactly a new cluster's first member.
    crate::server::bootstrap_new_member(&db, &store, &state, id)?;
    // The member's first start compacts the restored history; nothing to do here.
    store.stop_compactor();
    store.sync()?;
    Ok(summary)
}
