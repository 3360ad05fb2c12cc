//! The lessor: leases by id, their attached keys and deadlines.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;

/// The largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug)]
struct Lease {
    ttl: i64,
    /// When the lease expires; `None` on a member that is not the leader.
    expiry: Option<Instant>,
    keys: BTreeSet<Vec<u8>>,
    /// Its place in `Leases::due`: the deadline, or once a revoke was proposed, when to
    /// propose again if it has not been applied by then.
    due: Option<Instant>,
}

/// A snapshot of one lease for TimeToLive.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseInfo {
    pub id: i64,
    pub granted_ttl: i64,
    /// Seconds left, or the granted TTL on a member that does not track deadlines.
    pub remaining: i64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Leases {
    map: HashMap<i64, Lease>,
    /// The lease of every key that has one.
    items: HashMap<Vec<u8>, i64>,
    /// Whether this member tracks deadlines (it is the leader).
    primary: bool,
    /// Leases by when the leader must next act on them, soonest first: finding the expired
    /// costs what expired, not a scan of every lease (a million of them on a busy leader).
    due: BTreeSet<(Instant, i64)>,
}

impl Leases {
    /// Moves lease `id` to `at` in the deadline order (`None`: out of it).
    fn schedule(&mut self, id: i64, at: Option<Instant>) {
        let Some(lease) = self.map.get_mut(&id) else {
            return;
        };
        if let Some(old) = std::mem::replace(&mut lease.due, at) {
            self.due.remove(&(old, id));
        }
        if let Some(at) = at {
            self.due.insert((at, id));
        }
    }
}

/// Every lease; see the module docs. Shared by the apply loop (grant, revoke, attach) and
/// the lease service (renew, time-to-live, list, expiry).
#[derive(Debug)]
pub struct Lessor {
    inner: Mutex<Leases>,
    /// TTLs below this are raised to it, so a lease outlives an election.
    min_ttl: i64,
}

impl Lessor {
    /// `min_ttl` in seconds: etcd uses 1.5 election timeouts, rounded up.
    pub fn new(min_ttl: i64) -> Lessor {
        Lessor {
            inner: Mutex::default(),
            min_ttl: min_ttl.max(1),
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        // Every mutation is a single map operation; the map is consistent after a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TTL a grant of `ttl` gets.
    pub fn effective_ttl(&self, ttl: i64) -> i64 {
        ttl.max(self.min_ttl)
    }

    /// Creates a lease (apply loop). Errors: TTL too large, id taken.
    pub fn grant(&self, id: i64, ttl: i64) -> Result<i64, Error> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        let ttl = self.effective_ttl(ttl);
        let mut l = self.leases();
        if l.map.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        let expiry = l.primary.then(|| deadline(ttl));
        l.map.insert(
            id,
            Lease {
                ttl,
                expiry,
                keys: BTreeSet::new(),
                due: None,
            },
        );
        l.schedule(id, expiry);
        Ok(ttl)
    }

    /// Re-creates a lease read back from storage on start. The TTL is bounded as a grant
    /// bounds it: storage written by something else (or damaged) must not make deadlines
    /// overflow on the raft thread.
    pub fn restore(&self, id: i64, ttl: i64) {
        let ttl = self.effective_ttl(ttl.min(MAX_LEASE_TTL));
        let mut l = self.leases();
        l.schedule(id, None);
        l.map.insert(
            id,
            Lease {
                ttl,
                expiry: None,
                keys: BTreeSet::new(),
                due: None,
            },
        );
    }

    /// Forgets every lease (before a snapshot is restored); keeps the primary role.
    pub fn clear(&self) {
        let mut l = self.leases();
        l.map.clear();
        l.items.clear();
        l.due.clear();
    }

    /// Removes a lease (apply loop); returns its keys, sorted, for deletion.
    pub fn revoke(&self, id: i64) -> Result<Vec<Vec<u8>>, Error> {
        let mut l = self.leases();
        l.schedule(id, None);
        let lease = l.map.remove(&id).ok_or(Error::LeaseNotFound)?;
        for k in &lease.keys {
            l.items.remove(k);
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// The keys of a lease, sorted (the apply loop deletes them when revoking).
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.leases()
            .map
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases().map.contains_key(&id)
    }

    /// Attaches `key` to lease `to` (0: to none), detaching it from its previous lease.
    pub fn move_key(&self, key: &[u8], to: i64) {
        let mut l = self.leases();
        let from = l.items.get(key).copied().unwrap_or(0);
        if from == to {
            return;
        }
        if let Some(old) = l.map.get_mut(&from) {
            old.keys.remove(key);
        }
        match l.map.get_mut(&to) {
            Some(new) => {
                new.keys.insert(key.to_vec());
                l.items.insert(key.to_vec(), to);
            }
            None => {
                l.items.remove(key);
            }
        }
    }

    /// Restarts the lease's deadline; returns its TTL. Only the leader renews.
    pub fn renew(&self, id: i64) -> Result<i64, Error> {
        let mut l = self.leases();
        if !l.primary {
            return Err(Error::NotLeader);
        }
        let lease = l.map.get_mut(&id).ok_or(Error::LeaseNotFound)?;
        let (ttl, at) = (lease.ttl, deadline(lease.ttl));
        lease.expiry = Some(at);
        l.schedule(id, Some(at));
        Ok(ttl)
    }

    pub fn time_to_live(&self, id: i64) -> Option<LeaseInfo> {
        let l = self.leases();
        let lease = l.map.get(&id)?;
        let remaining = match lease.expiry {
            Some(at) => at.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => lease.ttl,
        };
        Some(LeaseInfo {
            id,
            granted_ttl: lease.ttl,
            remaining,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// How many leases are granted.
    pub fn len(&self) -> usize {
        self.leases().map.len()
    }

    /// Whether no lease is granted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every lease id, soonest expiry first (as etcd lists them).
    pub fn ids(&self) -> Vec<i64> {
        let l = self.leases();
        let mut ids: Vec<(Option<Instant>, i64)> = l
            .map
            .iter()
            .map(|(id, lease)| (lease.expiry, *id))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// This member became leader: start tracking deadlines, each from its full TTL plus
    /// `extend`, so leases are not expired by the time the election took.
    pub fn promote(&self, extend: Duration) {
        let mut l = self.leases();
        let l = &mut *l;
        l.primary = true;
        // This runs on the raft thread as it takes the lead: one clock reading, and the
        // deadline set built in bulk (collecting sorts once) rather than by an ordered
        // insert per lease.
        let now = Instant::now();
        let mut due = Vec::with_capacity(l.map.len());
        for (id, lease) in l.map.iter_mut() {
            let at = deadline_from(now, lease.ttl);
            let at = at.checked_add(extend).unwrap_or(at);
            lease.expiry = Some(at);
            lease.due = Some(at);
            due.push((at, *id));
        }
        l.due = due.into_iter().collect();
    }

    /// This member is no longer leader: deadlines are the new leader's business.
    pub fn demote(&self) {
        let mut l = self.leases();
        l.primary = false;
        l.due.clear();
        for lease in l.map.values_mut() {
            lease.expiry = None;
            lease.due = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.leases().primary
    }

    /// Up to `max` leases past their deadline that need a revoke proposed now; `retry` is
    /// how long to wait before proposing again for one still not revoked.
    pub fn expired(&self, now: Instant, retry: Duration, max: usize) -> Vec<i64> {
        let mut l = self.leases();
        let mut out = Vec::new();
        let again = now.checked_add(retry).unwrap_or(now);
        while out.len() < max {
            match l.due.first() {
                Some(&(at, id)) if at <= now => {
                    l.schedule(id, Some(again));
                    out.push(id);
                }
                _ => break,
            }
        }
        out
    }
}

fn deadline(ttl: i64) -> Instant {
    deadline_from(Instant::now(), ttl)
}

fn deadline_from(now: Instant, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL) as u64);
    now.checked_add(ttl)
        .unwrap_or(now + Duration::from_secs(MAX_LEASE_TTL as u64 / 1_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_applies_the_minimum_ttl_and_rejects_duplicates() {
        let l = Lessor::new(2);
        assert_eq!(l.grant(1, 1), Ok(2));
        assert_eq!(l.grant(1, 10), Err(Error::LeaseExists));
        assert_eq!(l.grant(2, MAX_LEASE_TTL + 1), Err(Error::LeaseTtlTooLarge));
        assert_eq!(l.grant(3, 30), Ok(30));
    }

    #[test]
    fn keys_follow_their_lease() {
        let l = Lessor::new(1);
        l.grant(1, 10).unwrap();
        l.grant(2, 10).unwrap();
        l.move_key(b"k", 1);
        l.move_key(b"j", 1);
        l.move_key(b"k", 2);
        l.move_key(b"x", 99);
        assert_eq!(l.keys(1), Some(vec![b"j".to_vec()]));
        assert_eq!(l.revoke(2), Ok(vec![b"k".to_vec()]));
        assert_eq!(l.revoke(2), Err(Error::LeaseNotFound));
    }

    #[test]
    fn a_restored_ttl_is_bounded_so_deadlines_cannot_overflow() {
        let l = Lessor::new(1);
        l.restore(1, i64::MAX);
        l.restore(2, -5);
        l.promote(Duration::from_secs(u64::MAX / 4));
        assert_eq!(l.renew(1), Ok(MAX_LEASE_TTL));
        assert_eq!(l.renew(2), Ok(1));
        assert!(l
            .expired(Instant::now(), Duration::ZERO, usize::MAX)
            .is_empty());
    }

    #[test]
    fn only_the_primary_tracks_and_expires_deadlines() {
        let l = Lessor::new(1);
        l.grant(1, 1).unwrap();
        assert_eq!(l.renew(1), Err(Error::NotLeader));
        let later = Instant::now() + Duration::from_secs(5);
        assert!(l
            .expired(later, Duration::from_secs(1), usize::MAX)
            .is_empty());
        l.promote(Duration::ZERO);
        assert_eq!(
            l.expired(later, Duration::from_secs(1), usize::MAX),
            vec![1]
        );
        // Not proposed again until the retry interval passed.
        assert!(l
            .expired(later, Duration::from_secs(1), usize::MAX)
            .is_empty());
        assert_eq!(
            l.expired(
                later + Duration::from_secs(2),
                Duration::from_secs(1),
                usize::MAX
            ),
            vec![1]
        );
        assert_eq!(l.renew(1), Ok(1));
        assert!(l
            .expired(Instant::now(), Duration::from_secs(1), usize::MAX)
            .is_empty());
    }

    #[test]
    fn expired_leases_come_soonest_deadline_first_and_in_bounded_batches() {
        let l = Lessor::new(1);
        l.promote(Duration::ZERO);
        for id in 1..=5 {
            l.grant(id, 10 * id).unwrap();
        }
        // Lease 1 renewed: its deadline moves, and only the new one counts.
        assert_eq!(l.renew(1), Ok(10));
        l.revoke(3).unwrap();
        let at = |secs| Instant::now() + Duration::from_secs(secs);
        let retry = Duration::from_secs(100);
        assert_eq!(l.expired(at(21), retry, 1), vec![1]);
        assert_eq!(l.expired(at(21), retry, 10), vec![2]);
        assert_eq!(l.expired(at(60), retry, 10), vec![4, 5]);
        assert!(l.expired(at(60), retry, 10).is_empty());
        l.demote();
        assert!(l.expired(at(1_000), retry, 10).is_empty());
    }
}
