//! Reading and writing bbolt database files: the format of etcd's backend, and so of the
//! backups `etcdctl snapshot save` writes. Only what backups need: a reader that walks any
//! sound bbolt 1.3 file (etcd's own, with or without a stored freelist) and a writer that
//! builds a compact file in one pass from sorted data. No transactions, no page reuse.
//!
//! ```
//! use std::io::Cursor;
//! use cairn_bolt::{Db, Writer};
//!
//! let mut w = Writer::new(Cursor::new(Vec::new()))?;
//! let mut b = w.bucket(b"meta")?;
//! b.put(b"consistent_index", &7u64.to_be_bytes())?;
//! b.finish()?;
//! let db = Db::open(w.finish()?.into_inner())?;
//! let meta = db.bucket(b"meta")?.expect("written above");
//! db.for_each(&meta, |e| {
//!     assert_eq!(e.key, b"consistent_index");
//!     Ok::<_, cairn_bolt::Error>(())
//! })?;
//! # Ok::<(), cairn_bolt::Error>(())
//! ```

mod page;
mod read;
mod write;

pub use page::{Meta, NO_FREELIST, PAGE_SIZE};
pub use read::{Bucket, Db, Entry, Source};
pub use write::{BucketWriter, Writer};

/// Why a file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a bbolt file, or its meta pages are damaged (bbolt's own words).
    #[error("{0}")]
    Invalid(&'static str),
    /// A page or element is inconsistent.
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// Keys or buckets given to the writer out of order.
    #[error("keys must be added in ascending order")]
    Unsorted,
    /// A key or value too large for the format.
    #[error("key or value too large")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests;
