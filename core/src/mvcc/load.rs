//! A member's start: the in-memory state rebuilt from what storage holds.
//!
//! The key index is not stored; it is rebuilt from the whole history on every start, so this
//! is the part of a restart that grows with the store (8 M records for 4 M keys written twice).

use std::collections::HashMap;

use cairn_api::etcdserverpb::AlarmResponse;
use fjall::Keyspace;
use prost::Message;

use super::revision::Revision;
use super::store::{
    read_i64, State, META_ALARMS, META_APPLIED, META_APPLIED_TERM, META_COMPACT_REV,
    META_CURRENT_REV,
};
use super::tree_index::TreeIndex;
use crate::error::Error;
use crate::lease::Lessor;

/// The fields of a stored `mvccpb.KeyValue` that the key index and the lessor need: the
/// same tags, without the value (tag 5), which prost skips instead of copying. At 1 KiB a
/// value that is most of each record.
#[derive(prost::Message)]
struct RecordHead {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// Rebuilds the in-memory state from storage: the key index from the history, the leases
/// with their attached keys into `lessor`, the revisions and applied index from meta.
/// Returns it with the bytes in use.
pub(super) fn load_state(
    kv: &Keyspace,
    meta: &Keyspace,
    leases: &Keyspace,
    lessor: &Lessor,
    epoch: u64,
) -> Result<(State, u64), Error> {
    let mut size_in_use = 0u64;
    for item in leases.iter() {
        let (k, v) = item.into_inner()?;
        size_in_use += (k.len() + v.len()) as u64;
        let id = i64::from_be_bytes(
            k.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("lease id".into()))?,
        );
        let ttl = i64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("lease ttl".into()))?,
        );
        lessor.restore(id, ttl);
    }
    let mut index = TreeIndex::default();
    // The lease of each key's newest record (records come in revision order).
    let mut key_leases: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut max_rev = 1;
    for item in kv.iter() {
        let (k, v) = item.into_inner()?;
        size_in_use += (k.len() + v.len()) as u64;
        let (rev, tombstone) =
            Revision::from_key(&k).ok_or_else(|| Error::Corrupt("revision key".into()))?;
        let kv = RecordHead::decode(v.as_ref())?;
        if tombstone {
            index.tombstone(&kv.key, rev);
            key_leases.remove(&kv.key);
        } else {
            index.restore_put(
                &kv.key,
                rev,
                kv.create_revision,
                kv.version,
                u32::try_from(v.len()).unwrap_or(0),
            );
            if kv.lease != 0 {
                key_leases.insert(kv.key, kv.lease);
            } else {
                key_leases.remove(&kv.key);
            }
        }
        max_rev = max_rev.max(rev.main);
    }
    for (key, lease) in key_leases {
        lessor.move_key(&key, lease);
    }
    // -1 until the first compaction, as etcd: compacting at 0 is then allowed once.
    let compact_rev = read_i64(meta, META_COMPACT_REV)?.unwrap_or(-1);
    // A fresh store is at revision 1; compaction may have removed the newest record.
    let current_rev = read_i64(meta, META_CURRENT_REV)?.unwrap_or(1).max(max_rev);
    let applied_index = read_i64(meta, META_APPLIED)?.unwrap_or(0) as u64;
    let applied_term = read_i64(meta, META_APPLIED_TERM)?.unwrap_or(0) as u64;
    let alarms = match meta.get(META_ALARMS)? {
        Some(v) => AlarmResponse::decode(v.as_ref())?.alarms,
        None => Vec::new(),
    };
    tracing::info!(
        keys = index.len(),
        current_rev,
        compact_rev,
        applied_index,
        "mvcc store loaded"
    );
    let state = State {
        index,
        current_rev,
        compact_rev,
        applied_index,
        applied_term,
        alarms,
        epoch,
    };
    Ok((state, size_in_use))
}

#[cfg(test)]
mod tests {
    use cairn_api::mvccpb::KeyValue;
    use prost::Message;

    #[test]
    fn a_record_head_is_the_record_without_its_value() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: vec![7; 1024],
            lease: 42,
        };
        let head = super::RecordHead::decode(kv.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            (head.key, head.create_revision, head.version, head.lease),
            (b"k".to_vec(), 3, 4, 42)
        );
    }
}
