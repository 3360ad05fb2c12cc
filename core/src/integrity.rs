//! The data directory's integrity check at start.
//!
//! The storage engine checksums what it reads (journal batches, table blocks), but it names
//! no file when a check fails, and it only reads a block when something asks for it. So at
//! every clean stop the member records the digest and length of each file that is never
//! modified once written — the tables and version files of the database and the raft
//! snapshots — in `member/integrity-xxh3`, itself checksummed. At start, while the store
//! loads and before the member joins raft or serves, it checks every recorded file that still
//! exists. A file that changed or got shorter stops the member with a message naming it, so
//! it never serves wrong data. Files written after the last record (after a crash) are left
//! to the engine's own checksums; journals are appended in place, so only the engine checks
//! them.
//!
//! The engine may reuse a file name after deleting the file (its table ids restart above the
//! highest one left), so each record also holds the file's identity (inode and creation
//! time): a recorded name now held by another file is not judged. A file the engine was
//! still writing when it was recorded has only grown since: its recorded prefix is checked.
//! The record is consumed by the check (a later start after a crash finds none, rather than
//! a stale one), and the digests it confirmed are reused at the next stop for files that
//! did not change, so a stop hashes only what is new.
//!
//! The digest is XXH3-128: the check is against damage (a disk, a copy, a stray edit), not
//! against someone who can write the directory (they could rewrite the record as well), and
//! at start it reads the whole store: SHA-256 was a quarter of a restart's CPU, and XXH3
//! hashes at memory speed. Records made before held SHA-256 (64 hex digits, where XXH3-128
//! has 32, under the record's old name); they are still checked with it, and those files
//! are hashed anew at the next stop.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Files confirmed at start: relative path → (identity, length, digest).
pub type Known = HashMap<PathBuf, (String, u64, String)>;

/// The record, in the member directory.
const MANIFEST: &str = "integrity-xxh3";
/// The record as Cairn wrote it with SHA-256. A new name for the new record lets an older
/// Cairn, started on this directory again, find no record (and check nothing) rather than
/// one whose digests it would take for damage.
const OLD_MANIFEST: &str = "integrity";

/// A file that failed the check.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct Damaged {
    pub file: PathBuf,
    pub why: String,
}

/// Whether `rel` (relative to the member directory) is a file that is never modified once
/// written: database tables, blob files and versions, raft snapshots.
fn immutable(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        ["db", "keyspaces", _, "tables" | "blobs", _] => true,
        ["db", "keyspaces", _, name] => name
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        ["snap", name] => name.ends_with(".snap"),
        _ => false,
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// A file opened once, so that what is identified is what is hashed: the check runs while
/// the engine opens the store, and the engine may delete a table and reuse its name.
fn open(path: &Path) -> std::io::Result<(File, String, u64)> {
    let f = File::open(path)?;
    let meta = f.metadata()?;
    Ok((f, identity(&meta), meta.len()))
}

/// Which file this is, beyond its name: inode and creation time (0 where unsupported).
fn identity(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0u64;
    let born = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{ino}.{born}")
}

/// The hash a recorded digest was made with.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Hash {
    Xxh3,
    /// In records made before XXH3 was.
    Sha256,
}

impl Hash {
    /// Told by the digest's length: SHA-256 has 64 hex digits, XXH3-128 has 32.
    fn of(recorded: &str) -> Hash {
        if recorded.len() == 64 {
            Hash::Sha256
        } else {
            Hash::Xxh3
        }
    }
}

/// The digest (hex) and length of a file's contents, or of its first `limit` bytes.
fn digest(f: File, limit: Option<u64>, hash: Hash) -> std::io::Result<(String, u64)> {
    let mut r: Box<dyn Read> = match limit {
        Some(n) => Box::new(f.take(n)),
        None => Box::new(f),
    };
    let mut hasher = match hash {
        Hash::Xxh3 => Hasher::Xxh3(Box::default()),
        Hash::Sha256 => Hasher::Sha256(Box::new(ring::digest::Context::new(&ring::digest::SHA256))),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match &mut hasher {
            Hasher::Xxh3(h) => h.update(&buf[..n]),
            Hasher::Sha256(h) => h.update(&buf[..n]),
        }
        len += n as u64;
    }
    let sum = match hasher {
        Hasher::Xxh3(h) => hex(&h.digest128().to_be_bytes()),
        Hasher::Sha256(h) => hex(h.finish().as_ref()),
    };
    Ok((sum, len))
}

/// One [`Hash`] under way.
enum Hasher {
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
    Sha256(Box<ring::digest::Context>),
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Records the immutable files of `member_dir` (atomically: a crash leaves the old record),
/// reusing the digests in `known` for files whose identity and length did not change.
pub fn record(member_dir: &Path, known: &Known) -> std::io::Result<()> {
    let mut files = Vec::new();
    walk(member_dir, &mut files)?;
    let mut body = String::new();
    for path in files {
        let Ok(rel) = path.strip_prefix(member_dir) else {
            continue;
        };
        if !immutable(rel) {
            continue;
        }
        let summed = open(&path).and_then(|(f, id, len)| match known.get(rel) {
            Some((k_id, k_len, sum))
                if *k_id == id && *k_len == len && Hash::of(sum) == Hash::Xxh3 =>
            {
                Ok((id, (sum.clone(), len)))
            }
            _ => Ok((id, digest(f, None, Hash::Xxh3)?)),
        });
        match summed {
            Ok((id, (sha, len))) => body.push_str(&format!("{sha} {len} {id} {}\n", rel.display())),
            // Removed meanwhile (a compaction finished): nothing to record.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let seal = hex(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref());
    let tmp = member_dir.join(format!("{MANIFEST}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.write_all(format!("sealed {seal}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, member_dir.join(MANIFEST))?;
    let _ = std::fs::remove_file(member_dir.join(OLD_MANIFEST));
    File::open(member_dir)?.sync_all()
}

/// Checks every recorded file that still exists; the first damaged one is the error. On
/// success the record is removed and what it confirmed returned (for [`record`]).
pub fn verify(member_dir: &Path) -> Result<Known, Damaged> {
    let known = check(member_dir)?;
    let _ = std::fs::remove_file(member_dir.join(MANIFEST));
    let _ = std::fs::remove_file(member_dir.join(OLD_MANIFEST));
    Ok(known)
}

/// Checks against both records: an older Cairn run on this directory in between leaves its
/// own record beside this one's.
fn check(member_dir: &Path) -> Result<Known, Damaged> {
    let mut known = check_record(member_dir, OLD_MANIFEST)?;
    known.extend(check_record(member_dir, MANIFEST)?);
    Ok(known)
}

fn check_record(member_dir: &Path, name: &str) -> Result<Known, Damaged> {
    let manifest = member_dir.join(name);
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Known::new()),
        Err(e) => {
            return Err(Damaged {
                file: manifest,
                why: e.to_string(),
            })
        }
    };
    let damaged_manifest = |why: &str| Damaged {
        file: manifest.clone(),
        why: why.to_string(),
    };
    let (body, seal) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .map(|(b, s)| (format!("{b}\n"), s))
        .unwrap_or((String::new(), text.trim_end_matches('\n')));
    let expected = hex(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref());
    if seal != format!("sealed {expected}") {
        return Err(damaged_manifest("checksum mismatch"));
    }
    let mut known = Known::new();
    for line in body.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(sha), Some(len), Some(id), Some(rel)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(damaged_manifest("malformed line"));
        };
        let len: u64 = len
            .parse()
            .map_err(|_| damaged_manifest("malformed length"))?;
        let path = member_dir.join(rel);
        let (file, whole) = match open(&path) {
            // Another file under the recorded name: written after the record.
            Ok((_, now, _)) if now != id => continue,
            Ok((f, _, whole)) => (f, whole),
            // Compacted away since: the engine no longer refers to it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Damaged {
                    file: path,
                    why: e.to_string(),
                })
            }
        };
        // More bytes than recorded: still being written then; its recorded prefix must match.
        let (got, got_len) = digest(file, Some(len), Hash::of(sha)).map_err(|e| Damaged {
            file: path.clone(),
            why: e.to_string(),
        })?;
        let why = if got_len < len {
            format!("truncated ({got_len} of {len} bytes)")
        } else if got != sha {
            "checksum mismatch (the file changed after it was written)".to_string()
        } else {
            if whole == len {
                known.insert(PathBuf::from(rel), (id.to_string(), len, sha.to_string()));
            }
            continue;
        };
        return Err(Damaged { file: path, why });
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_written_once_are_recorded() {
        for rel in [
            "db/keyspaces/3/tables/12",
            "db/keyspaces/0/v7",
            "snap/0000000000000002-0000000000000010.snap",
        ] {
            assert!(immutable(Path::new(rel)), "{rel}");
        }
        for rel in [
            "db/0.jnl",
            "db/keyspaces/0/current",
            "db/version",
            "db/lock",
            "integrity",
        ] {
            assert!(!immutable(Path::new(rel)), "{rel}");
        }
    }

    #[test]
    fn records_made_with_sha256_are_checked_with_it_and_hashed_anew() {
        let dir = tempfile::tempdir().expect("dir");
        let tables = dir.path().join("db/keyspaces/1/tables");
        std::fs::create_dir_all(&tables).expect("mkdir");
        let table = tables.join("4");
        std::fs::write(&table, vec![7u8; 10_000]).expect("write");
        let (f, id, _) = open(&table).expect("open");
        let (sha, len) = digest(f, None, Hash::Sha256).expect("sha");
        let body = format!("{sha} {len} {id} db/keyspaces/1/tables/4\n");
        let seal = hex(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()).as_ref());
        std::fs::write(
            dir.path().join(OLD_MANIFEST),
            format!("{body}sealed {seal}\n"),
        )
        .expect("w");
        let known = check(dir.path()).expect("an old record of an intact file");
        assert_eq!(known.len(), 1);
        record(dir.path(), &known).expect("record");
        // The new record replaces the old one, which an older Cairn would misread.
        assert!(!dir.path().join(OLD_MANIFEST).exists());
        let text = std::fs::read_to_string(dir.path().join(MANIFEST)).expect("read");
        let (xxh3, _) = digest(open(&table).expect("open").0, None, Hash::Xxh3).expect("xxh3");
        assert!(text.starts_with(&format!("{xxh3} ")), "{text}");
        assert_eq!(Hash::of(&xxh3), Hash::Xxh3);
        // The old hash still finds damage.
        std::fs::write(
            dir.path().join(OLD_MANIFEST),
            format!("{body}sealed {seal}\n"),
        )
        .expect("w");
        let mut bytes = std::fs::read(&table).expect("read");
        bytes[77] ^= 1;
        std::fs::write(&table, &bytes).expect("write");
        assert_eq!(check(dir.path()).expect_err("flipped").file, table);
    }

    #[test]
    fn a_changed_truncated_or_unsealed_file_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let tables = dir.path().join("db/keyspaces/1/tables");
        std::fs::create_dir_all(&tables).expect("mkdir");
        let table = tables.join("4");
        std::fs::write(&table, vec![7u8; 10_000]).expect("write");
        record(dir.path(), &Known::new()).expect("record");
        let known = check(dir.path()).expect("intact");
        assert_eq!(known.len(), 1);
        // Digests confirmed at start are reused, and the record stays the same.
        let before = std::fs::read(dir.path().join(MANIFEST)).expect("read");
        record(dir.path(), &known).expect("record");
        assert_eq!(
            std::fs::read(dir.path().join(MANIFEST)).expect("read"),
            before
        );
        // A file that grew after it was recorded was still being written: fine.
        let mut grown = std::fs::OpenOptions::new()
            .append(true)
            .open(&table)
            .expect("open");
        grown.write_all(b"more").expect("append");
        drop(grown);
        assert_eq!(check(dir.path()).expect("grown").len(), 0);
        std::fs::write(&table, vec![7u8; 10_000]).expect("write");

        let mut bytes = std::fs::read(&table).expect("read");
        bytes[5000] ^= 1;
        std::fs::write(&table, &bytes).expect("write");
        let err = check(dir.path()).expect_err("flipped");
        assert_eq!(err.file, table);

        std::fs::write(&table, &bytes[..100]).expect("write");
        let err = check(dir.path()).expect_err("truncated");
        assert!(err.why.contains("truncated"), "{err}");

        // A table compacted away is not missed, nor judged when its name is reused.
        std::fs::remove_file(&table).expect("rm");
        assert_eq!(check(dir.path()).expect("gone is fine").len(), 0);
        let hold = tables.join("held");
        std::fs::write(&hold, b"keeps the old inode from being reused").expect("write");
        std::fs::write(&table, vec![9u8; 10_000]).expect("write");
        assert_eq!(check(dir.path()).expect("a new file").len(), 0);

        let manifest = dir.path().join(MANIFEST);
        let mut text = std::fs::read(&manifest).expect("read");
        text[3] ^= 1;
        std::fs::write(&manifest, text).expect("write");
        assert_eq!(check(dir.path()).expect_err("manifest").file, manifest);
        // A successful check consumes the record.
        std::fs::remove_file(&manifest).expect("rm");
        record(dir.path(), &Known::new()).expect("record");
        verify(dir.path()).expect("intact");
        assert!(!manifest.exists());
    }
}
