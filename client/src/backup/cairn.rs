//! Cairn's first backup format, which members streamed before backups took etcd's
//! format: still read, so older backups restore. Its record encoding also carries raft
//! snapshots between members.
//!
//! Layout: the magic line `CAIRN-BACKUP-1\n`, then records `[space u8][key len u32 BE][key]
//! [value len u32 BE][value]`, then a padding record that brings the length to a multiple
//! of 512, then the SHA-256 of everything before it (32 bytes).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{Summary, DIGEST_LEN};
use crate::Error;

/// First bytes of every backup file.
pub const MAGIC: &[u8] = b"CAIRN-BACKUP-1\n";
/// Space tag of key-history records.
pub const SPACE_KV: u8 = 0;
/// Space tag of revision counters (`current_rev`, `compact_rev`, big-endian i64).
pub const SPACE_META: u8 = 1;
/// Space tag of lease records.
pub const SPACE_LEASE: u8 = 2;
/// Space tag of the padding record (ignored when reading).
pub const SPACE_PADDING: u8 = 255;
/// The body (before the digest) is a multiple of this many bytes.
pub const BLOCK: usize = 512;
/// The meta record holding the revision the backup is at.
pub const META_CURRENT_REV: &[u8] = b"current_rev";

/// One record: its space tag, key and value.
pub type Record = (u8, Vec<u8>, Vec<u8>);

/// Appends one record's encoding to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, space: u8, key: &[u8], value: &[u8]) {
    buf.push(space);
    buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
    buf.extend_from_slice(value);
}

/// The padding record that makes a body of `len` bytes a multiple of [`BLOCK`].
pub fn padding(len: usize) -> Vec<u8> {
    const OVERHEAD: usize = 9;
    let mut pad = (BLOCK - len % BLOCK) % BLOCK;
    if pad < OVERHEAD {
        pad += BLOCK;
    }
    let mut buf = Vec::with_capacity(pad);
    encode_record(&mut buf, SPACE_PADDING, &[], &vec![0u8; pad - OVERHEAD]);
    buf
}

/// Decodes records from `r` until it ends; a record cut short is an error.
pub fn decode_records<R: Read>(mut r: R) -> impl Iterator<Item = Result<Record, Error>> {
    let truncated = || Error::Corrupt("truncated record".into());
    std::iter::from_fn(move || {
        let mut tag = [0u8; 1];
        match r.read(&mut tag) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(Error::Corrupt(e.to_string()))),
        }
        let mut field = || -> Result<Vec<u8>, Error> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).map_err(|_| truncated())?;
            let mut v = vec![0u8; u32::from_be_bytes(len) as usize];
            r.read_exact(&mut v).map_err(|_| truncated())?;
            Ok(v)
        };
        Some(field().and_then(|k| Ok((tag[0], k, field()?))))
    })
}

/// A reader that hashes what passes through it and holds back the last 32 bytes (the
/// trailer) from its consumer.
struct Hashed<R> {
    inner: R,
    sha: ring::digest::Context,
    /// Bytes read from `inner` but not yet known to precede the trailer.
    tail: Vec<u8>,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.tail.len() > DIGEST_LEN {
                let n = (self.tail.len() - DIGEST_LEN).min(out.len());
                out[..n].copy_from_slice(&self.tail[..n]);
                self.sha.update(&self.tail[..n]);
                self.tail.drain(..n);
                return Ok(n);
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.tail.extend_from_slice(&buf[..n]);
        }
    }
}

/// The records of a backup, as [`open`] reads them.
pub type Records = Box<dyn Iterator<Item = Result<Record, Error>>>;
/// Whether the digest matched, once the records are read.
pub type Check = Box<dyn FnOnce() -> Result<(), Error>>;

/// Opens a backup file, checks its magic, and returns an iterator over its records (without
/// the padding) plus a check to run once the iterator is exhausted (that the digest
/// matches).
pub fn open(path: &Path) -> Result<(Records, Check), Error> {
    let file = File::open(path).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    let mut hashed = Hashed {
        inner: BufReader::new(file),
        sha: ring::digest::Context::new(&ring::digest::SHA256),
        tail: Vec::new(),
    };
    let mut magic = vec![0u8; MAGIC.len()];
    let not_backup = || Error::Corrupt(format!("{}: not a Cairn backup", path.display()));
    hashed.read_exact(&mut magic).map_err(|_| not_backup())?;
    if magic != MAGIC {
        return Err(not_backup());
    }
    let shared = std::rc::Rc::new(std::cell::RefCell::new(hashed));
    let reader = SharedReader(shared.clone());
    let display = path.display().to_string();
    let check = move || {
        let h = shared.borrow();
        let digest = h.sha.clone().finish();
        if h.tail.len() != DIGEST_LEN || h.tail != digest.as_ref() {
            return Err(Error::Corrupt(format!(
                "{display}: checksum mismatch (the file is damaged or incomplete)"
            )));
        }
        Ok(())
    };
    let records = decode_records(reader).filter(|r| !matches!(r, Ok((SPACE_PADDING, _, _))));
    Ok((Box::new(records), Box::new(check)))
}

struct SharedReader<R>(std::rc::Rc<std::cell::RefCell<Hashed<R>>>);

impl<R: Read> Read for SharedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(out)
    }
}

/// Reads a whole backup, checking its magic, every record and its digest; the hash is the
/// leading 32 bits of the digest.
pub fn status(path: &Path) -> Result<Summary, Error> {
    let total_size = std::fs::metadata(path)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?
        .len();
    let (records, check) = open(path)?;
    let mut revision = 0;
    let mut total_keys = 0;
    for r in records {
        let (space, k, v) = r?;
        total_keys += 1;
        if space == SPACE_META && k == META_CURRENT_REV {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt("current revision record".into()))?;
            revision = i64::from_be_bytes(b);
        }
    }
    check()?;
    let mut file = File::open(path).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut digest = [0u8; DIGEST_LEN];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(-(DIGEST_LEN as i64)))
        .and_then(|_| file.read_exact(&mut digest))
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(Summary {
        hash: u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
        revision,
        total_keys,
        total_size,
    })
}
