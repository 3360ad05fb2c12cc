//! Backups: the file `Maintenance.Snapshot` streams and `snapshot save` writes. Members
//! write etcd 3.4's format ([`etcd`]: its bbolt database and a SHA-256 trailer), so
//! `etcdctl snapshot status|restore` take Cairn backups and Cairn restores etcd's; files in
//! Cairn's first format ([`cairn`]) are still read.
//!
//! ```no_run
//! let summary = cairn_client::backup::status("backup.db".as_ref())?;
//! println!("revision {} with {} keys", summary.revision, summary.total_keys);
//! # Ok::<(), cairn_client::Error>(())
//! ```

pub mod cairn;
pub mod etcd;

use std::io::Read;
use std::path::Path;

pub use cairn::{decode_records, encode_record, Record};

use crate::Error;

/// Length of the SHA-256 trailer.
pub const DIGEST_LEN: usize = 32;

/// The format of a backup file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// etcd 3.4's: a bbolt database and its SHA-256.
    Etcd,
    /// Cairn's first format (see [`cairn`]).
    Cairn,
}

/// Which format the file at `path` is in (by its first bytes; anything that is not Cairn's
/// is taken for etcd's, whose reader then says whether it is a database).
pub fn format(path: &Path) -> Result<Format, Error> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    let mut head = vec![0u8; cairn::MAGIC.len()];
    let n = f.read(&mut head).unwrap_or(0);
    Ok(if head[..n] == *cairn::MAGIC {
        Format::Cairn
    } else {
        Format::Etcd
    })
}

/// What `snapshot status` reports of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// etcd's: the CRC-32C of every bucket; Cairn's first format: the digest's leading
    /// 32 bits.
    pub hash: u32,
    /// The revision the backup is at.
    pub revision: i64,
    /// Entries in the database (etcd's) or records (Cairn's first format).
    pub total_keys: u64,
    /// Size in bytes: the database without the trailer (etcd's), the file (Cairn's).
    pub total_size: u64,
}

/// `snapshot status` of a backup in either format.
pub fn status(path: &Path) -> Result<Summary, Error> {
    match format(path)? {
        Format::Etcd => etcd::status(path),
        Format::Cairn => cairn::status(path),
    }
}

/// Checks a downloaded backup completely: the digest, then the database (or every record).
pub fn verify(path: &Path) -> Result<(), Error> {
    match format(path)? {
        Format::Etcd => etcd::Backup::open(path, false).map(|_| ()),
        Format::Cairn => cairn::status(path).map(|_| ()),
    }
}
