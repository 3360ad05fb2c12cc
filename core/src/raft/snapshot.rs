//! Raft snapshots of the MVCC state: how the leader streams one and a follower stores it.
//!
//! raft-rs only carries snapshot *metadata* (index, term, configuration); the state itself
//! travels on the peer `Snapshot` stream as records `[space u8][key len u32][key][value len
//! u32][value]`, in chunks of about 1 MiB, with a SHA-1 of all bytes on the last chunk. The
//! receiver writes them to `<data-dir>/member/snap/<term>-<index>.snap`, checks the digest,
//! and only then hands the raft message to raft, so raft never learns of a snapshot that is
//! not completely on disk.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};

use cairn_client::backup::{decode_records, encode_record};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::mvcc::{Record, Space, Store};

/// Bytes of records per chunk on the wire.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Where the snapshot at `index`/`term` is kept.
pub fn snap_path(dir: &Path, term: u64, index: u64) -> PathBuf {
    dir.join(format!("{term:016x}-{index:016x}.snap"))
}

/// What a dump produced: the applied index and term it is at.
pub struct Dumped {
    pub index: u64,
    pub term: u64,
    /// SHA-1 of every byte sent, hex.
    pub checksum: String,
}

/// Dumps the store as record chunks into `send` (which returns false to stop early).
pub fn dump(store: &Store, mut send: impl FnMut(Vec<u8>) -> bool) -> Result<Dumped, Error> {
    let mut sha = sha1_smol::Sha1::new();
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    let (index, term) = store.dump(|space, k, v| {
        encode_record(&mut buf, space as u8, k, v);
        if buf.len() >= CHUNK_BYTES {
            sha.update(&buf);
            if !send(std::mem::take(&mut buf)) {
                return Err(Error::Stopped);
            }
        }
        Ok(())
    })?;
    sha.update(&buf);
    if !buf.is_empty() && !send(buf) {
        return Err(Error::Stopped);
    }
    Ok(Dumped {
        index,
        term,
        checksum: sha.digest().to_string(),
    })
}

/// Writes received chunks to a temporary file and checks the digest at the end.
pub struct Receiver {
    tmp: PathBuf,
    out: BufWriter<File>,
    sha: sha1_smol::Sha1,
}

impl Receiver {
    pub fn create(dir: &Path) -> std::io::Result<Receiver> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("incoming-{}.tmp", std::process::id()));
        Ok(Receiver {
            out: BufWriter::new(File::create(&tmp)?),
            tmp,
            sha: sha1_smol::Sha1::new(),
        })
    }

    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.sha.update(data);
        self.out.write_all(data)
    }

    /// Checks the digest, syncs, and moves the file to `path`.
    pub fn finish(mut self, checksum: &str, path: &Path) -> Result<(), Error> {
        if self.sha.digest().to_string() != checksum {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(Error::Corrupt("snapshot digest mismatch".into()));
        }
        let io = |e: std::io::Error| Error::Storage(format!("snapshot file: {e}"));
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, path).map_err(io)?;
        Ok(())
    }
}

/// Reads the records of a snapshot file back.
pub fn read_records(path: &Path) -> Result<impl Iterator<Item = Result<Record, Error>>, Error> {
    let f = File::open(path).map_err(|e| Error::Storage(format!("snapshot file: {e}")))?;
    Ok(decode_records(BufReader::new(f)).map(|r| {
        let (tag, k, v) = r.map_err(|e| Error::Corrupt(format!("snapshot file: {e}")))?;
        let space = Space::from_tag(tag)
            .ok_or_else(|| Error::Corrupt(format!("snapshot file: space {tag}")))?;
        Ok((space, k, v))
    }))
}

/// Removes snapshot files other than `keep`.
pub fn remove_others(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.path() != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_bad_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        encode_record(&mut buf, Space::Kv as u8, b"k", b"v");
        encode_record(&mut buf, Space::Lease as u8, b"", &[1, 2, 3]);
        let mut rx = Receiver::create(dir.path()).unwrap();
        rx.write(&buf).unwrap();
        let digest = {
            let mut s = sha1_smol::Sha1::new();
            s.update(&buf);
            s.digest().to_string()
        };
        let path = snap_path(dir.path(), 1, 2);
        rx.finish(&digest, &path).unwrap();
        let got: Vec<_> = read_records(&path).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                (Space::Kv, b"k".to_vec(), b"v".to_vec()),
                (Space::Lease, vec![], vec![1, 2, 3])
            ]
        );
        let mut rx = Receiver::create(dir.path()).unwrap();
        rx.write(&buf).unwrap();
        assert!(rx.finish("00", &snap_path(dir.path(), 1, 3)).is_err());
    }
}
