//! Ranges read as their stored records. A record is the protobuf encoding of the
//! `KeyValue` it holds, so a Range's answer can be written from the records themselves, in
//! pieces as they are read, instead of being decoded, built whole and encoded again. The
//! answer's length must come first (a gRPC message is prefixed by it), so a plan of the
//! range gives every record's size before any is read: the key index knows the size of
//! each key's newest record, and the others are read once to learn it.

use fjall::{Slice, Snapshot};

use super::revision::Revision;
use super::store::{read_rev, RangeOptions, ReadTxn, Store};
use crate::error::Error;

/// The records of a range, in key order, with their sizes; read them with
/// [`EncodedRange::records`].
pub struct EncodedRange<'a> {
    store: &'a Store,
    /// The view's snapshot, which keeps the records readable after the view is gone:
    /// compaction may delete them from the engine meanwhile, not from a snapshot.
    snapshot: Snapshot,
    records: Vec<(Revision, u32)>,
    /// Keys in the range at the read revision (before the limit).
    pub count: i64,
    /// Whether the limit left keys out.
    pub more: bool,
    /// The store's revision when the range was read (what the header reports).
    pub rev: i64,
}

impl<'a> ReadTxn<'a> {
    /// Plans a range at `rev` (<= 0: the view's) of at most `limit` keys (<= 0: all). The
    /// view is given up once the keys are known: the records are then read from its
    /// snapshot alone, so a slow reader of a big answer holds back no compaction.
    pub fn encoded_range(
        self,
        key: &[u8],
        end: &[u8],
        rev: i64,
        limit: i64,
    ) -> Result<EncodedRange<'a>, Error> {
        let opts = RangeOptions {
            limit,
            rev,
            count_only: false,
        };
        let at = read_rev(&opts, self.rev, self.store.compact_rev())?;
        let limit = usize::try_from(limit).ok().filter(|l| *l > 0);
        let mut records = Vec::new();
        let count = self.walk(key, end, at, |k| {
            if limit.is_none_or(|l| records.len() < l) {
                records.push((k.modified, k.size));
            }
        })?;
        for (rev, size) in records.iter_mut().filter(|(_, s)| *s == 0) {
            *size = len_u32(&self.store.record(Some(&self.snapshot), *rev)?)?;
        }
        Ok(EncodedRange {
            store: self.store,
            snapshot: self.snapshot.clone(),
            more: (count as usize) > records.len(),
            records,
            count,
            rev: self.rev,
        })
    }
}

impl EncodedRange<'_> {
    /// The size of each record, in key order.
    pub fn sizes(&self) -> impl Iterator<Item = u32> + '_ {
        self.records.iter().map(|(_, s)| *s)
    }

    /// Each record's bytes, in key order. A record whose size is not the planned one is an
    /// error: the answer was framed by the plan.
    pub fn records(&self) -> impl Iterator<Item = Result<Slice, Error>> + '_ {
        self.records.iter().map(|(rev, size)| {
            let bytes = self.store.record(Some(&self.snapshot), *rev)?;
            if len_u32(&bytes)? != *size {
                return Err(Error::Corrupt(format!(
                    "record {}/{} is {} bytes, the index says {size}",
                    rev.main,
                    rev.sub,
                    bytes.len()
                )));
            }
            Ok(bytes)
        })
    }
}

fn len_u32(bytes: &Slice) -> Result<u32, Error> {
    u32::try_from(bytes.len()).map_err(|_| Error::Corrupt("a record past 4 GiB".into()))
}

#[cfg(test)]
mod tests {
    use cairn_api::mvccpb::KeyValue;
    use prost::Message;

    use super::super::store::{open_for_test, ReadView};
    use super::*;

    #[test]
    fn the_records_are_the_encoded_key_values_a_range_returns() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open_for_test(dir.path());
        let mut wb = store.write_batch().expect("batch");
        for k in 0..20u8 {
            let mut t = wb.txn();
            t.put(
                format!("k{k:02}").as_bytes(),
                vec![k; k as usize * 10],
                k as i64 % 3,
            );
            t.end();
        }
        wb.commit(2, 1).expect("commit");
        // Overwritten keys: a range at an early revision reads records whose size the index
        // does not keep (they are not the newest).
        let mut wb = store.write_batch().expect("batch");
        for k in [3u8, 4, 7] {
            let mut t = wb.txn();
            t.put(format!("k{k:02}").as_bytes(), b"again".to_vec(), 0);
            t.end();
        }
        wb.commit(3, 1).expect("commit");
        for (rev, limit) in [(0, 0), (5, 0), (0, 6), (4, 100)] {
            let view = store.read().expect("view");
            let want = view
                .range(
                    b"k",
                    b"l",
                    RangeOptions {
                        limit: 0,
                        rev,
                        count_only: false,
                    },
                )
                .expect("range");
            let plan = store
                .read()
                .expect("view")
                .encoded_range(b"k", b"l", rev, limit)
                .expect("plan");
            let got: Vec<KeyValue> = plan
                .records()
                .map(|r| KeyValue::decode(r.expect("record").as_ref()).expect("decode"))
                .collect();
            let all = want.kvs.len();
            let n = if limit > 0 {
                all.min(limit as usize)
            } else {
                all
            };
            assert_eq!(got, want.kvs[..n].to_vec(), "rev {rev} limit {limit}");
            let sizes: Vec<u32> = want.kvs[..n]
                .iter()
                .map(|kv| kv.encoded_len() as u32)
                .collect();
            assert_eq!(plan.sizes().collect::<Vec<_>>(), sizes);
            assert_eq!(
                (plan.count, plan.more, plan.rev),
                (want.count, n < all, want.rev)
            );
        }
    }
}
