//! The multi-version key space: every key's history by revision, the in-memory key index,
//! historical reads and compaction (etcd's `mvcc` package).

mod key_index;
mod revision;
mod store;
mod tree_index;

pub use key_index::KeyAt;
pub use revision::Revision;
pub(crate) use store::keyspace_options;
pub use store::{
    RangeOptions, RangeResult, ReadTxn, ReadView, Record, Space, Store, WriteBatch, WriteTxn,
};
