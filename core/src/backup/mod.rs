//! Backups: writing the file `Maintenance.Snapshot` streams — etcd 3.4's database format
//! (see [`cairn_client::backup::etcd`]), so etcd's tools read it and etcd restores it — and
//! restoring a backup, etcd's or Cairn's own, into the data directory of a member of a new
//! cluster (`cairnctl snapshot restore`).

mod export;
mod import;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_client::backup::{self as format, etcd, Format};
use cairn_client::ctl::RestoreArgs;

use crate::config::Config;
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{self, MembershipError};
use crate::mvcc::{Record, Space, Store};

/// Records in flight between the backup reader and the store during a restore.
const RESTORE_QUEUE: usize = 4096;

/// A backup written to a temporary file, removed when dropped.
pub struct BackupFile {
    pub path: PathBuf,
    /// Bytes of the database (the SHA-256 trailer is added as it is streamed).
    pub size: u64,
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes a consistent backup of `store` in etcd's format into a new file in `dir`.
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
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let copy = store.copy()?;
    let (_, size) = export::write(&copy, options.open(&file.path)?)?;
    file.size = size;
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

/// `cairnctl snapshot restore`: restores and says what it restored.
pub fn restore_command(rc: &RestoreArgs) -> Result<(), String> {
    let revision = restore(rc).map_err(|e| e.to_string())?;
    eprintln!(
        "restored snapshot {} (revision {revision}) into {}",
        rc.file.display(),
        rc.data_dir.display()
    );
    Ok(())
}

/// An opened backup of either format.
enum Source {
    Etcd(etcd::Backup),
    Cairn,
}

/// Builds `data_dir` from a backup (etcd's format, or Cairn's first one) so a member
/// started on it with the same flags joins a new cluster holding the backed-up keys,
/// revisions, leases and users. Every member of the new cluster is restored from the same
/// backup with its own name and peer URLs. Returns the revision restored.
pub fn restore(rc: &RestoreArgs) -> Result<i64, RestoreError> {
    // The whole file is checked before anything is created.
    let source = match format::format(&rc.file)? {
        Format::Etcd => Source::Etcd(etcd::Backup::open(&rc.file, rc.skip_hash_check)?),
        Format::Cairn => {
            format::cairn::status(&rc.file)?;
            Source::Cairn
        }
    };
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
    let revision = match source {
        Source::Etcd(backup) => restore_etcd(&store, &backup)?,
        Source::Cairn => restore_cairn(&store, &rc.file)?,
    };
    // From here on, exactly a new cluster's first member.
    crate::server::bootstrap_new_member(&db, &store, &state, id)?;
    // The member's first start compacts the restored history; nothing to do here.
    store.stop_compactor();
    store.sync()?;
    Ok(revision)
}

/// Streams the records of an etcd backup into the store: the reader runs on its own thread
/// so the file is read once and never held in memory whole.
fn restore_etcd(store: &Store, backup: &etcd::Backup) -> Result<i64, Error> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Record, Error>>(RESTORE_QUEUE);
        let reader = scope.spawn(move || {
            let sent = import::records(backup, |r| tx.send(Ok(r)).map_err(|_| Error::Stopped));
            if let Err(e) = &sent {
                let _ = tx.send(Err(e.clone()));
            }
            sent
        });
        let restored = store.restore(rx);
        let read = reader
            .join()
            .map_err(|_| Error::Corrupt("the backup reader failed".into()))?;
        restored?;
        read
    })
}

/// Restores a backup in Cairn's first format.
fn restore_cairn(store: &Store, path: &Path) -> Result<i64, Error> {
    let (records, check) = format::cairn::open(path).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut revision = 1;
    let records = records.map(|r| {
        let (tag, k, v) = r.map_err(|e| Error::Corrupt(e.to_string()))?;
        let space = Space::from_tag(tag)
            .filter(|s| *s != Space::Meta || Store::is_portable_meta(&k))
            .ok_or_else(|| Error::Corrupt(format!("unexpected record in space {tag}")))?;
        if space == Space::Meta && k == crate::mvcc::META_CURRENT_REV {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                revision = i64::from_be_bytes(b);
            }
        }
        Ok((space, k, v))
    });
    store.restore(records)?;
    check().map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(revision)
}
