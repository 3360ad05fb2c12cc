//! Revisions and their on-disk encoding.
//!
//! A revision is (main, sub): `main` is the store revision a write request created, `sub`
//! orders the changes inside it (a txn may change several keys at one main revision). The
//! storage key is both as big-endian u64s, so fjall's key order is revision order; a trailing
//! `t` marks a tombstone (a deletion), as in etcd's key bucket.

/// A position in the key space's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

const TOMBSTONE: u8 = b't';

impl Revision {
    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The storage key of this revision; `tombstone` marks a deletion record.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.extend_from_slice(&(self.main as u64).to_be_bytes());
        k.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE);
        }
        k
    }

    /// Decodes a storage key into the revision and its tombstone mark.
    pub fn from_key(k: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match k.len() {
            16 => false,
            17 if k[16] == TOMBSTONE => true,
            _ => return None,
        };
        let main = u64::from_be_bytes(k[0..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(k[8..16].try_into().ok()?) as i64;
        Some((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_and_sorts_by_revision() {
        let a = Revision::new(2, 0);
        let b = Revision::new(2, 1);
        let c = Revision::new(300, 0);
        assert!(a.to_key(false) < b.to_key(true));
        assert!(b.to_key(true) < c.to_key(false));
        assert_eq!(Revision::from_key(&b.to_key(true)), Some((b, true)));
        assert_eq!(Revision::from_key(&c.to_key(false)), Some((c, false)));
        assert_eq!(Revision::from_key(b"short"), None);
    }
}
