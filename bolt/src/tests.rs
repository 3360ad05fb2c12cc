use std::io::Cursor;

use crate::{Db, Error, Writer, PAGE_SIZE};

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

fn write(buckets: &Buckets) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    for (name, entries) in buckets {
        let mut b = w.bucket(name).unwrap();
        for (k, v) in entries {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn read(file: &[u8]) -> Result<Buckets, Error> {
    let db = Db::open(file.to_vec())?;
    db.check()?;
    let mut names = Vec::new();
    db.for_each(&db.root(), |e| {
        assert!(e.is_bucket);
        names.push(e.key.to_vec());
        Ok::<_, Error>(())
    })?;
    let mut out = Vec::new();
    for name in names {
        let b = db.bucket(&name)?.expect("listed");
        let mut entries = Vec::new();
        db.for_each(&b, |e| {
            entries.push((e.key.to_vec(), e.value.to_vec()));
            Ok::<_, Error>(())
        })?;
        out.push((name, entries));
    }
    Ok(out)
}

/// A small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn sample() -> Buckets {
    let mut rng = Rng(7);
    let key: Vec<_> = (0..20_000u64)
        .map(|i| {
            let len = (rng.next() % 300) as usize;
            // A few values need overflow pages.
            let len = if i % 997 == 0 { 3 * PAGE_SIZE + 5 } else { len };
            (i.to_be_bytes().to_vec(), vec![(i % 251) as u8; len])
        })
        .collect();
    vec![
        (b"alarm".to_vec(), vec![]),
        (b"auth".to_vec(), vec![(b"authEnabled".to_vec(), vec![1])]),
        (b"key".to_vec(), key),
        (
            b"meta".to_vec(),
            vec![(b"consistent_index".to_vec(), 9u64.to_be_bytes().to_vec())],
        ),
    ]
}

#[test]
fn what_is_written_reads_back_in_order() {
    let buckets = sample();
    let file = write(&buckets);
    assert_eq!(file.len() % PAGE_SIZE, 0);
    assert_eq!(Db::open(file.clone()).unwrap().size(), file.len() as u64);
    assert_eq!(read(&file).unwrap(), buckets);
}

#[test]
fn small_buckets_are_inline_and_large_ones_have_branches() {
    let file = write(&sample());
    let db = Db::open(file).unwrap();
    let mut values = Vec::new();
    db.for_each(&db.root(), |e| {
        values.push((e.key.to_vec(), e.value.to_vec()));
        Ok::<_, Error>(())
    })
    .unwrap();
    // An inline bucket's value is its header (root 0) and its leaf.
    let (_, auth) = &values[1];
    assert_eq!(&auth[..8], &[0u8; 8]);
    assert!(auth.len() > 32);
    let (_, key) = &values[2];
    assert_eq!(key.len(), 16);
    assert_ne!(&key[..8], &[0u8; 8]);
}

#[test]
fn keys_out_of_order_are_refused() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let mut b = w.bucket(b"b").unwrap();
    b.put(b"x", b"").unwrap();
    assert!(matches!(b.put(b"x", b""), Err(Error::Unsorted)));
    assert!(matches!(b.put(b"a", b""), Err(Error::Unsorted)));
    b.finish().unwrap();
    assert!(matches!(w.bucket(b"a"), Err(Error::Unsorted)));
}

#[test]
fn damage_is_reported_never_a_panic() {
    let buckets = sample();
    let file = write(&buckets);
    let mut rng = Rng(99);
    let mut refused = 0;
    for _ in 0..100 {
        let mut damaged = file.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % damaged.len() as u64) as usize;
            damaged[at] ^= 1 << (rng.next() % 8);
        }
        match read(&damaged) {
            Ok(b) if b == buckets => {}
            // Data bytes carry no checksum in bbolt (the backup's SHA-256 covers them).
            Ok(_) => {}
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0);
    for len in [0, 100, PAGE_SIZE, 2 * PAGE_SIZE, file.len() - PAGE_SIZE] {
        assert!(read(&file[..len]).is_err(), "a file cut to {len} bytes");
    }
}

#[test]
fn a_page_referenced_twice_is_corrupt() {
    let file = write(&vec![(
        b"key".to_vec(),
        (0..2000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![0; 50]))
            .collect(),
    )]);
    let db = Db::open(file.clone()).unwrap();
    db.check().unwrap();
    // The root of bucket `key` is a branch (the last tree page written before the root
    // bucket's page and the freelist): point its second child at its first.
    let pages = file.len() / PAGE_SIZE;
    let branch = (pages - 3) * PAGE_SIZE;
    assert_eq!(file[branch + 8], 0x01, "a branch page");
    let mut damaged = file.clone();
    let first = damaged[branch + 16 + 8..branch + 16 + 16].to_vec();
    damaged[branch + 32 + 8..branch + 32 + 16].copy_from_slice(&first);
    let err = Db::open(damaged).unwrap().check().unwrap_err();
    assert!(err.to_string().contains("multiple references"), "{err}");
}
