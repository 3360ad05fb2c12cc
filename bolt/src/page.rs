//! bbolt's on-disk layout (v1.3, little-endian): pages, their headers and elements, and
//! the two meta pages.

use crate::Error;

/// The magic number of a bbolt file.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The only data format version bbolt 1.3 reads.
pub const VERSION: u32 = 2;
/// The page size written (bbolt's default on every platform etcd runs on).
pub const PAGE_SIZE: usize = 4096;

pub const HEADER: usize = 16;
/// Leaf and branch elements are both 16 bytes.
pub const ELEMENT: usize = 16;
/// `{root pgid, sequence}` at the start of a bucket's value.
pub const BUCKET_HEADER: usize = 16;

pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
pub const META: u16 = 0x04;
pub const FREELIST: u16 = 0x10;

/// A leaf element whose value is a bucket.
pub const BUCKET_FLAG: u32 = 0x01;

/// `meta.freelist` when the freelist is not stored (etcd on Linux opens bbolt with
/// `NoFreelistSync`, so its files say this).
pub const NO_FREELIST: u64 = u64::MAX;

/// Bytes of the meta struct (after the page header), checksum included.
const META_LEN: usize = 64;
/// The checksum covers the meta struct up to itself.
const META_SUMMED: usize = 56;

/// FNV-1a, 64 bits: the checksum of a meta page.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The header at the start of every page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    /// Pages after the first that the node continues into.
    pub overflow: u32,
}

impl PageHeader {
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// A meta page: where the root bucket and the freelist are, how many pages are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    /// Page of the root bucket (whose entries are the top-level buckets).
    pub root: u64,
    /// Page of the freelist, or [`NO_FREELIST`].
    pub freelist: u64,
    /// Pages in use: the database is `pgid * page_size` bytes.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// Decodes and validates the meta struct of a meta page (`page` starts at the page).
    pub fn decode(page: &[u8]) -> Result<Meta, Error> {
        if page.len() < HEADER + META_LEN {
            return Err(Error::Invalid("file too small"));
        }
        let m = &page[HEADER..HEADER + META_LEN];
        if u32_at(m, 0) != MAGIC {
            return Err(Error::Invalid("invalid database"));
        }
        if u32_at(m, 4) != VERSION {
            return Err(Error::Invalid("version mismatch"));
        }
        // As bbolt: a zero checksum is not checked.
        let sum = u64_at(m, META_SUMMED);
        if sum != 0 && sum != fnv1a64(&m[..META_SUMMED]) {
            return Err(Error::Invalid("checksum error"));
        }
        Ok(Meta {
            page_size: u32_at(m, 8),
            root: u64_at(m, 16),
            freelist: u64_at(m, 32),
            pgid: u64_at(m, 40),
            txid: u64_at(m, 48),
        })
    }

    /// Encodes this meta as page `id` (a whole page of `page_size` bytes).
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut page = vec![0u8; self.page_size as usize];
        PageHeader {
            id,
            flags: META,
            count: 0,
            overflow: 0,
        }
        .encode(&mut page);
        let m = &mut page[HEADER..HEADER + META_LEN];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        // flags (12..16) and the root bucket's sequence (24..32) stay zero.
        m[16..24].copy_from_slice(&self.root.to_le_bytes());
        m[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        m[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        m[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&m[..META_SUMMED]);
        m[META_SUMMED..].copy_from_slice(&sum.to_le_bytes());
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn meta_round_trips_and_damage_is_caught() {
        let m = Meta {
            page_size: 4096,
            root: 3,
            freelist: NO_FREELIST,
            pgid: 9,
            txid: 7,
        };
        let mut page = m.encode(0);
        assert_eq!(Meta::decode(&page).unwrap(), m);
        page[HEADER + 40] ^= 1;
        assert!(matches!(Meta::decode(&page), Err(Error::Invalid(_))));
        page[HEADER] = 0;
        assert!(matches!(
            Meta::decode(&page),
            Err(Error::Invalid("invalid database"))
        ));
    }
}
