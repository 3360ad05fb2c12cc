//! Reading a backup in etcd 3.4's format (taken from etcd or from Cairn) into the records of
//! Cairn's keyspaces: the history with its revisions, the compaction point, leases, users
//! and roles, and raised alarms. The membership it came from is left behind: a restore
//! starts a new cluster.

use cairn_api::etcdserverpb::{AlarmMember, AlarmResponse};
use cairn_api::leasepb::Lease;
use cairn_api::mvccpb::KeyValue;
use cairn_client::backup::etcd::{self, Backup};
use prost::Message;

use crate::error::Error;
use crate::mvcc::{Record, Revision, Space, META_ALARMS, META_COMPACT_REV, META_CURRENT_REV};

/// Sends every record the backup holds to `send`, in keyspace order within each space;
/// returns the revision the backup is at.
pub fn records(
    backup: &Backup,
    mut send: impl FnMut(Record) -> Result<(), Error>,
) -> Result<i64, Error> {
    let (finished, scheduled) = compaction(backup)?;

    // As etcd's restore: the revision is the newest record's, or the compaction point if
    // compaction removed that record; a fresh store is at 1.
    let mut current = 1;
    backup.for_each(etcd::KEY, |k, v| -> Result<(), Error> {
        let (main, sub, tombstone) = etcd::parse_revision_key(k)
            .ok_or_else(|| corrupt(format!("revision key {k:?} in bucket key")))?;
        let mut kv = KeyValue::decode(v).map_err(|e| corrupt(format!("record {main}: {e}")))?;
        let value = if tombstone {
            // Cairn's deletion records also say when they happened.
            kv.mod_revision = main;
            kv.encode_to_vec()
        } else {
            v.to_vec()
        };
        current = main;
        send((Space::Kv, Revision::new(main, sub).to_key(tombstone), value))
    })?;
    let current = current.max(finished.unwrap_or(0));
    send((
        Space::Meta,
        META_CURRENT_REV.to_vec(),
        current.to_be_bytes().to_vec(),
    ))?;
    // Reads below the later of the two fail; a compaction etcd had not finished is
    // finished by the member's first start.
    if let Some(compact) = finished.max(scheduled) {
        send((
            Space::Meta,
            META_COMPACT_REV.to_vec(),
            compact.to_be_bytes().to_vec(),
        ))?;
    }

    backup.for_each(etcd::LEASE, |k, v| -> Result<(), Error> {
        let lease = Lease::decode(v).map_err(|e| corrupt(format!("lease: {e}")))?;
        if k != lease.id.to_be_bytes() {
            return Err(corrupt(format!("lease {} under key {k:?}", lease.id)));
        }
        send((Space::Lease, k.to_vec(), lease.ttl.to_be_bytes().to_vec()))
    })?;

    for bucket in [etcd::AUTH, etcd::AUTH_ROLES, etcd::AUTH_USERS] {
        backup.for_each(bucket, |k, v| -> Result<(), Error> {
            // etcd keeps nothing else there; anything else would be another version's.
            let Some(key) = crate::auth::from_etcd(bucket, k) else {
                return Ok(());
            };
            send((Space::Auth, key, v.to_vec()))
        })?;
    }

    // A restored etcd keeps the alarms raised where the backup was taken, and so does
    // Cairn: `alarm disarm` clears them.
    let mut alarms = Vec::new();
    backup.for_each(etcd::ALARM, |k, _| -> Result<(), Error> {
        alarms.push(AlarmMember::decode(k).map_err(|e| corrupt(format!("alarm: {e}")))?);
        Ok(())
    })?;
    if !alarms.is_empty() {
        let encoded = AlarmResponse {
            header: None,
            alarms,
        }
        .encode_to_vec();
        send((Space::Meta, META_ALARMS.to_vec(), encoded))?;
    }
    Ok(current)
}

/// The finished and scheduled compaction points in `meta`, if any.
fn compaction(backup: &Backup) -> Result<(Option<i64>, Option<i64>), Error> {
    let mut finished = None;
    let mut scheduled = None;
    backup.for_each(etcd::META, |k, v| -> Result<(), Error> {
        let slot = match k {
            k if k == etcd::FINISHED_COMPACT_REV => &mut finished,
            k if k == etcd::SCHEDULED_COMPACT_REV => &mut scheduled,
            _ => return Ok(()),
        };
        let (main, _, _) = etcd::parse_revision_key(v)
            .ok_or_else(|| corrupt(format!("meta {}", String::from_utf8_lossy(k))))?;
        *slot = Some(main);
        Ok(())
    })?;
    Ok((finished, scheduled))
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(format!("etcd backup: {what}"))
}
