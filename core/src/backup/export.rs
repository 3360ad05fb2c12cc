//! A backup in etcd 3.4's format, written from a copy of the store: the buckets etcd's
//! backend has, each in its encoding, so `etcdctl snapshot restore` builds an etcd member
//! that serves the same keys, revisions, leases and users.

use std::fs::File;

use cairn_api::cairnpb::ClusterState;
use cairn_api::leasepb::Lease;
use cairn_api::mvccpb::KeyValue;
use cairn_bolt::Writer;
use cairn_client::backup::etcd;
use prost::Message;

use crate::error::Error;
use crate::mvcc::{Revision, Space, StateCopy};

/// Writes `copy` into `out` as an etcd database; returns the file and its size.
pub fn write(copy: &StateCopy, out: File) -> Result<(File, u64), Error> {
    let mut w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, out))?;

    let mut alarms: Vec<Vec<u8>> = copy.alarms.iter().map(|a| a.encode_to_vec()).collect();
    alarms.sort();
    alarms.dedup();
    bucket(
        &mut w,
        etcd::ALARM,
        alarms.into_iter().map(|k| (k, Vec::new())),
    )?;

    // The auth keyspace becomes three buckets; each keeps its keys' order.
    let mut auth = Vec::new();
    let mut roles = Vec::new();
    let mut users = Vec::new();
    for r in copy.records(Space::Auth) {
        let (k, v) = r?;
        let Some((name, key)) = crate::auth::etcd_location(&k) else {
            return Err(Error::Corrupt(format!("auth record {k:?}")));
        };
        let entry = (key.to_vec(), v.to_vec());
        match name {
            n if n == etcd::AUTH => auth.push(entry),
            n if n == etcd::AUTH_ROLES => roles.push(entry),
            _ => users.push(entry),
        }
    }
    bucket(&mut w, etcd::AUTH, auth)?;
    bucket(&mut w, etcd::AUTH_ROLES, roles)?;
    bucket(&mut w, etcd::AUTH_USERS, users)?;
    let version = crate::server::ETCD_CLUSTER_VERSION.as_bytes().to_vec();
    bucket(
        &mut w,
        etcd::CLUSTER,
        [(etcd::CLUSTER_VERSION.to_vec(), version)],
    )?;

    let mut keys = w.bucket(etcd::KEY)?;
    for r in copy.records(Space::Kv) {
        let (k, v) = r?;
        let (rev, tombstone) =
            Revision::from_key(&k).ok_or_else(|| Error::Corrupt("revision key".into()))?;
        let key = etcd::revision_key(rev.main, rev.sub, tombstone);
        if tombstone {
            // etcd's deletion record is the key alone.
            let kv = KeyValue::decode(v.as_ref())?;
            keys.put(&key, &etcd::tombstone_value(&kv.key))?;
        } else {
            keys.put(&key, &v)?;
        }
    }
    keys.finish()?;

    let mut leases = w.bucket(etcd::LEASE)?;
    for r in copy.records(Space::Lease) {
        let (k, v) = r?;
        let lease = Lease {
            id: be_i64(&k)?,
            ttl: be_i64(&v)?,
            remaining_ttl: 0,
        };
        leases.put(&k, &lease.encode_to_vec())?;
    }
    leases.finish()?;

    let members = copy.members()?.unwrap_or_default();
    bucket(&mut w, etcd::MEMBERS, member_entries(&members))?;
    let mut removed: Vec<_> = members
        .removed
        .iter()
        .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
        .collect();
    removed.sort();
    bucket(&mut w, etcd::MEMBERS_REMOVED, removed)?;

    let mut meta = vec![(
        etcd::CONSISTENT_INDEX.to_vec(),
        copy.applied_index.to_be_bytes().to_vec(),
    )];
    if copy.compact_rev >= 0 {
        // Finished as well as scheduled, even if the compactor was still at work: history
        // below the point it had not removed yet is invisible at every readable revision
        // and left out of HashKV, and etcd's next compaction removes it.
        let rev = etcd::compact_rev_value(copy.compact_rev);
        meta.push((etcd::FINISHED_COMPACT_REV.to_vec(), rev.clone()));
        meta.push((etcd::SCHEDULED_COMPACT_REV.to_vec(), rev));
    }
    bucket(&mut w, etcd::META, meta)?;

    let mut out = w.finish()?;
    let size = std::io::Seek::stream_position(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    Ok((file, size))
}

fn bucket<W: std::io::Write + std::io::Seek>(
    w: &mut Writer<W>,
    name: &[u8],
    entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<(), Error> {
    let mut b = w.bucket(name)?;
    for (k, v) in entries {
        b.put(&k, &v)?;
    }
    Ok(b.finish()?)
}

fn be_i64(b: &[u8]) -> Result<i64, Error> {
    let b: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Corrupt("lease record".into()))?;
    Ok(i64::from_be_bytes(b))
}

/// etcd's `members` bucket: the ID in hex → the member as JSON, its fields in etcd's order.
fn member_entries(state: &ClusterState) -> Vec<(Vec<u8>, Vec<u8>)> {
    let strings = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let mut out: Vec<_> = state
        .members
        .iter()
        .map(|m| {
            let mut json = format!("{{\"id\":{},\"peerURLs\":{}", m.id, strings(&m.peer_ur_ls));
            if !m.name.is_empty() {
                let name = serde_json::to_string(&m.name).unwrap_or_default();
                json.push_str(&format!(",\"name\":{name}"));
            }
            if !m.client_ur_ls.is_empty() {
                json.push_str(&format!(",\"clientURLs\":{}", strings(&m.client_ur_ls)));
            }
            if m.is_learner {
                json.push_str(",\"isLearner\":true");
            }
            json.push('}');
            (format!("{:x}", m.id).into_bytes(), json.into_bytes())
        })
        .collect();
    out.sort();
    out
}
