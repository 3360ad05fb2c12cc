//! The multi-version key space: every key's history by revision, the in-memory key index,
//! historical reads and compaction (etcd's `mvcc` package).

mod compactor;
mod encoded;
mod key_index;
mod key_range;
mod load;
mod maintenance;
mod revision;
mod store;
mod tree_index;
mod write;

pub use encoded::EncodedRange;
pub use key_index::KeyAt;
pub use key_range::KeyRange;
pub use maintenance::StateCopy;
pub use revision::Revision;
pub(crate) use store::keyspace_options;
#[cfg(test)]
pub(crate) use store::open_for_test;
pub use store::{
    HistoryRecord, HistoryView, RangeOptions, RangeResult, ReadTxn, ReadView, Record, Space, Store,
    META_ALARMS, META_COMPACT_REV, META_CURRENT_REV,
};
pub use write::{WriteBatch, WriteTxn};
