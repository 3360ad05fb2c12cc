//! Backups in etcd 3.4's format: its bbolt database (read and written with
//! [`cairn_bolt`]) followed by the SHA-256 of it. This module knows etcd's schema — bucket
//! names, how revisions and records are encoded — and computes what `etcdctl snapshot
//! status` reports; the server maps it to and from its own storage.
//!
//! etcd's buckets (all top level): `key` (revision → `mvccpb.KeyValue`), `meta`
//! (`consistent_index`, `scheduledCompactRev`, `finishedCompactRev`), `lease` (lease ID →
//! `leasepb.Lease`), `alarm` (`etcdserverpb.AlarmMember` → empty), `auth` (`authEnabled`,
//! `authRevision`), `authUsers`, `authRoles`, `members`, `members_removed`, `cluster`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use cairn_api::mvccpb::KeyValue;
use cairn_bolt::Db;
use prost::Message;

use super::{Summary, DIGEST_LEN};
use crate::Error;

/// Raised alarms: an encoded `etcdserverpb.AlarmMember` each, with an empty value.
pub const ALARM: &[u8] = b"alarm";
/// The auth switch and revision.
pub const AUTH: &[u8] = b"auth";
/// Role name → encoded `authpb.Role`.
pub const AUTH_ROLES: &[u8] = b"authRoles";
/// User name → encoded `authpb.User` (the password as a bcrypt hash).
pub const AUTH_USERS: &[u8] = b"authUsers";
/// The cluster version.
pub const CLUSTER: &[u8] = b"cluster";
/// The key history: revision key → encoded `mvccpb.KeyValue`.
pub const KEY: &[u8] = b"key";
/// Lease ID (big-endian) → encoded `leasepb.Lease`.
pub const LEASE: &[u8] = b"lease";
/// Member ID (hex) → the member as JSON.
pub const MEMBERS: &[u8] = b"members";
/// Member ID (hex) → `removed`.
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
/// Revision counters and the raft index.
pub const META: &[u8] = b"meta";

/// `meta`: the raft index the database is at (big-endian u64).
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta`: where a compaction was asked for (a revision key with sub 0).
pub const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
/// `meta`: where the last compaction finished.
pub const FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";
/// `auth`: whether auth is on (one byte, 1 or 0).
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
/// `auth`: bumped by every change to users, roles or the switch (big-endian u64).
pub const AUTH_REVISION: &[u8] = b"authRevision";
/// `cluster`: the cluster version.
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";

/// Length of a revision key: `main`, `_`, `sub` (tombstones add a `t`).
const REVISION_KEY: usize = 17;

/// etcd's key of a revision in bucket `key`: big-endian `main`, `_`, big-endian `sub`, and
/// `t` for a deletion.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(REVISION_KEY + 1);
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// Decodes a revision key: `(main, sub, tombstone)`.
pub fn parse_revision_key(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match k.len() {
        REVISION_KEY => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[0..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some((main, sub, tombstone))
}

/// etcd's record of a deletion: the key alone.
pub fn tombstone_value(key: &[u8]) -> Vec<u8> {
    KeyValue {
        key: key.to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A compaction revision as `meta` holds it (a revision key with sub 0).
pub fn compact_rev_value(rev: i64) -> Vec<u8> {
    revision_key(rev, 0, false)
}

/// CRC-32C (Castagnoli), the checksum of etcd's status hash and HashKV.
#[derive(Debug, Default, Clone, Copy)]
pub struct Crc32c(u32);

impl Crc32c {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    /// The checksum so far.
    pub fn finish(self) -> u32 {
        self.0
    }
}

/// An etcd backup opened for reading.
pub struct Backup {
    db: Db<File>,
}

impl Backup {
    /// Opens a backup as `etcdctl snapshot restore` does: the SHA-256 trailer must be there
    /// and match, unless `skip_hash_check` (a database file copied from a member's data
    /// directory has none); then bbolt's consistency check.
    pub fn open(path: &Path, skip_hash_check: bool) -> Result<Backup, Error> {
        let file = open_file(path)?;
        let size = file.metadata().map_err(|e| corrupt(path, e))?.len();
        let has_digest = size % 512 == DIGEST_LEN as u64;
        if !skip_hash_check {
            if !has_digest {
                return Err(Error::Corrupt(
                    "snapshot missing hash but --skip-hash-check=false".into(),
                ));
            }
            // etcdctl's words, without the path.
            check_digest(&file, size).map_err(Error::Corrupt)?;
        }
        let db = open_db(path, file)?;
        db.check().map_err(|e| corrupt(path, e))?;
        Ok(Backup { db })
    }

    /// The database.
    pub fn db(&self) -> &Db<File> {
        &self.db
    }

    /// Calls `f` with each entry of top-level bucket `name` in key order (none if the
    /// bucket is missing; sub-buckets are skipped).
    pub fn for_each<E, F>(&self, name: &[u8], mut f: F) -> Result<(), E>
    where
        E: From<cairn_bolt::Error>,
        F: FnMut(&[u8], &[u8]) -> Result<(), E>,
    {
        let Some(bucket) = self.db.bucket(name)? else {
            return Ok(());
        };
        self.db.for_each(&bucket, |e| {
            if e.is_bucket {
                Ok(())
            } else {
                f(e.key, e.value)
            }
        })
    }
}

impl From<cairn_bolt::Error> for Error {
    fn from(e: cairn_bolt::Error) -> Error {
        bolt_error(e)
    }
}

fn bolt_error(e: cairn_bolt::Error) -> Error {
    Error::Corrupt(e.to_string())
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{}: {e}", path.display()))
}

fn open_file(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| corrupt(path, e))
}

fn open_db(path: &Path, file: File) -> Result<Db<File>, Error> {
    Db::open(file).map_err(|e| match e {
        // etcdctl's words for a file that is not a database.
        cairn_bolt::Error::Invalid(what) => Error::Corrupt(what.to_string()),
        e => corrupt(path, e),
    })
}

/// Whether the file ends with the SHA-256 of what precedes it.
fn check_digest(file: &File, size: u64) -> Result<(), String> {
    let body = size - DIGEST_LEN as u64;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.take(body));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    let mut trailer = [0u8; DIGEST_LEN];
    reader
        .into_inner()
        .into_inner()
        .read_exact(&mut trailer)
        .map_err(|e| e.to_string())?;
    let digest = sha.finish();
    if digest.as_ref() != trailer {
        return Err(format!(
            "expected sha256 {:?}, got {:?}",
            trailer,
            digest.as_ref()
        ));
    }
    Ok(())
}

/// `etcdctl snapshot status`: bbolt's check, then the CRC-32C of every top-level bucket's
/// name and entries, the revision of the newest record in `key`, the number of entries and
/// the database's size (without the trailer). The digest is not checked, as etcdctl.
pub fn status(path: &Path) -> Result<Summary, Error> {
    let db = open_db(path, open_file(path)?)?;
    db.check().map_err(|e| {
        Error::Corrupt(format!(
            "snapshot file integrity check failed. 1 errors found.\n{e}"
        ))
    })?;
    let mut names = Vec::new();
    db.for_each(&db.root(), |e| {
        names.push((e.key.to_vec(), e.value.to_vec(), e.is_bucket));
        Ok::<_, Error>(())
    })?;
    let mut hash = Crc32c::default();
    let mut total_keys = 0;
    let mut revision = 0;
    for (name, value, is_bucket) in names {
        if !is_bucket {
            return Err(Error::Corrupt(format!(
                "cannot get hash of bucket {}",
                String::from_utf8_lossy(&name)
            )));
        }
        hash.update(&name);
        let bucket = db.open_bucket(&value)?;
        db.for_each(&bucket, |e| {
            hash.update(e.key);
            // A sub-bucket's value counts as nothing, as bbolt's ForEach gives none.
            if !e.is_bucket {
                hash.update(e.value);
            }
            total_keys += 1;
            if name == KEY {
                if let Some((main, _, _)) = parse_revision_key(e.key) {
                    revision = main;
                }
            }
            Ok::<_, Error>(())
        })?;
    }
    Ok(Summary {
        hash: hash.finish(),
        revision,
        total_keys,
        total_size: db.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_sort_by_revision_and_round_trip() {
        let a = revision_key(2, 0, false);
        let b = revision_key(2, 1, true);
        let c = revision_key(300, 0, false);
        assert_eq!(a.len(), 17);
        assert!(a < b && b < c);
        assert_eq!(parse_revision_key(&b), Some((2, 1, true)));
        assert_eq!(parse_revision_key(&c), Some((300, 0, false)));
        assert_eq!(parse_revision_key(&a[..16]), None);
    }

    #[test]
    fn crc32c_matches_the_reference() {
        let mut h = Crc32c::default();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.finish(), 0xe306_9283);
    }
}
