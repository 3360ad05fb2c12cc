//! Reading a bbolt file: its meta pages, then any bucket's entries in key order, walking the
//! tree from the root as bbolt's cursor does (a file may hold stale pages that nothing
//! points to, so it is never scanned page by page). The file is untrusted input: every
//! offset is bounds-checked, every page may be referenced once, and nesting is limited.

use std::io;

use crate::page::{
    u32_at, u64_at, Meta, PageHeader, BRANCH, BUCKET_FLAG, BUCKET_HEADER, ELEMENT, FREELIST,
    HEADER, LEAF, NO_FREELIST, PAGE_SIZE,
};
use crate::Error;

/// Deeper than any real tree (bbolt's fan-out makes 10 levels hold more than a disk).
const MAX_DEPTH: usize = 64;

/// Something that can be read at an offset: a file, or bytes in memory.
pub trait Source {
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

#[cfg(unix)]
impl Source for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// A bucket to read: its tree's root page, or the leaf stored inline in its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket(Root);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    Page(u64),
    /// The leaf's page image (header, elements, data).
    Inline(Vec<u8>),
}

/// One entry of a bucket. A sub-bucket's value is its bucket header (see
/// [`Db::open_bucket`]).
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub is_bucket: bool,
}

/// An open bbolt file.
pub struct Db<S> {
    src: S,
    page_size: usize,
    meta: Meta,
}

/// One node: a page and its overflow pages (or an inline leaf), with checked accessors.
struct Node<'a> {
    bytes: &'a [u8],
    header: PageHeader,
}

impl<'a> Node<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Node<'a>, Error> {
        if bytes.len() < HEADER {
            return Err(Error::Corrupt("node shorter than its header".into()));
        }
        let header = PageHeader::decode(bytes);
        let elements = HEADER + usize::from(header.count) * ELEMENT;
        if elements > bytes.len() {
            return Err(Error::Corrupt(format!(
                "page {}: {} elements do not fit",
                header.id, header.count
            )));
        }
        Ok(Node { bytes, header })
    }

    /// Bytes `[start, start + len)` of the node, where `start` is relative to element `i`.
    fn slice(&self, i: usize, pos: u32, len: usize) -> Result<&'a [u8], Error> {
        let start = (HEADER + i * ELEMENT).checked_add(pos as usize);
        start
            .and_then(|s| Some(s..s.checked_add(len)?))
            .and_then(|r| self.bytes.get(r))
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "page {}: element {i} out of bounds",
                    self.header.id
                ))
            })
    }

    fn element(&self, i: usize) -> &'a [u8] {
        let at = HEADER + i * ELEMENT;
        &self.bytes[at..at + ELEMENT]
    }

    /// Leaf element `i`: flags, key, value.
    fn leaf(&self, i: usize) -> Result<(u32, &'a [u8], &'a [u8]), Error> {
        let e = self.element(i);
        let (flags, pos, ksize, vsize) = (u32_at(e, 0), u32_at(e, 4), u32_at(e, 8), u32_at(e, 12));
        let kv = self.slice(i, pos, ksize as usize + vsize as usize)?;
        let (k, v) = kv.split_at(ksize as usize);
        Ok((flags, k, v))
    }

    /// Branch element `i`: the first key below it and the child page.
    fn branch(&self, i: usize) -> Result<(&'a [u8], u64), Error> {
        let e = self.element(i);
        let key = self.slice(i, u32_at(e, 0), u32_at(e, 4) as usize)?;
        Ok((key, u64_at(e, 8)))
    }
}

/// Which pages a walk has met, so none is read twice (a loop or a shared page is
/// corruption, as bbolt's check says).
struct Seen(Vec<u64>);

impl Seen {
    fn new(pages: u64) -> Seen {
        Seen(vec![0; pages.div_ceil(64) as usize])
    }

    /// Marks `page`; false if it was already marked.
    fn mark(&mut self, page: u64) -> bool {
        let (word, bit) = ((page / 64) as usize, page % 64);
        let fresh = self.0[word] & (1 << bit) == 0;
        self.0[word] |= 1 << bit;
        fresh
    }

    fn contains(&self, page: u64) -> bool {
        self.0[(page / 64) as usize] & (1 << (page % 64)) != 0
    }
}

impl<S: Source> Db<S> {
    /// Opens a bbolt file: picks the newer of the two meta pages that validates, as bbolt
    /// does, and checks that the pages it claims are in the file.
    pub fn open(src: S) -> Result<Db<S>, Error> {
        let size = src.size()?;
        let mut first = vec![0u8; PAGE_SIZE.min(size as usize)];
        src.read_at(&mut first, 0)?;
        let meta0 = Meta::decode(&first);
        // As bbolt: the page size comes from the first meta if it is sound.
        let page_size = match &meta0 {
            Ok(m) if m.page_size.is_power_of_two() && (512..=65536).contains(&m.page_size) => {
                m.page_size as usize
            }
            _ => PAGE_SIZE,
        };
        if size < 2 * page_size as u64 {
            return Err(Error::Invalid("file size too small"));
        }
        let mut second = vec![0u8; page_size];
        src.read_at(&mut second, page_size as u64)?;
        let meta1 = Meta::decode(&second);
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e), Err(_)) => return Err(e),
        };
        if meta.page_size as usize != page_size {
            return Err(Error::Invalid("meta pages disagree on the page size"));
        }
        if meta
            .pgid
            .checked_mul(page_size as u64)
            .is_none_or(|len| len > size)
        {
            return Err(Error::Invalid("file is shorter than its pages"));
        }
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(Error::Invalid("root bucket out of bounds"));
        }
        Ok(Db {
            src,
            page_size,
            meta,
        })
    }

    /// The meta page in force.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Bytes the database occupies (`pgid * page_size`): a backup's size without trailer.
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    /// The root bucket: its entries are the top-level buckets.
    pub fn root(&self) -> Bucket {
        Bucket(Root::Page(self.meta.root))
    }

    /// The bucket a sub-bucket entry's value describes.
    pub fn open_bucket(&self, value: &[u8]) -> Result<Bucket, Error> {
        if value.len() < BUCKET_HEADER {
            return Err(Error::Corrupt(
                "bucket value shorter than its header".into(),
            ));
        }
        match u64_at(value, 0) {
            0 => Ok(Bucket(Root::Inline(value[BUCKET_HEADER..].to_vec()))),
            page => Ok(Bucket(Root::Page(page))),
        }
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>, Error> {
        let mut found = None;
        self.for_each(&self.root(), |e| {
            if e.key == name && e.is_bucket {
                found = Some(e.value.to_vec());
            }
            Ok::<_, Error>(())
        })?;
        found.map(|v| self.open_bucket(&v)).transpose()
    }

    /// Calls `f` with every entry of `bucket` in key order (sub-buckets are entries, not
    /// descended into).
    pub fn for_each<E, F>(&self, bucket: &Bucket, mut f: F) -> Result<(), E>
    where
        E: From<Error>,
        F: FnMut(Entry<'_>) -> Result<(), E>,
    {
        let mut seen = Seen::new(self.meta.pgid);
        let mut last = None;
        self.walk(bucket, &mut seen, &mut last, &mut f)
    }

    /// What bbolt's `Tx.Check` verifies (and so `etcdctl snapshot status`): every bucket
    /// tree is sound, no page is referenced twice or lies past the end, and a stored
    /// freelist accounts for every page nothing references.
    pub fn check(&self) -> Result<(), Error> {
        let mut seen = Seen::new(self.meta.pgid);
        seen.mark(0);
        seen.mark(1);
        let free = self.freelist(&mut seen)?;
        self.check_bucket(&self.root(), &mut seen, 0)?;
        for page in &free {
            if !seen.mark(*page) {
                return Err(Error::Corrupt(format!("page {page}: reachable freed")));
            }
        }
        if self.meta.freelist != NO_FREELIST {
            if let Some(page) = (0..self.meta.pgid).find(|p| !seen.contains(*p)) {
                return Err(Error::Corrupt(format!("page {page}: unreachable unfreed")));
            }
        }
        Ok(())
    }

    fn check_bucket(&self, bucket: &Bucket, seen: &mut Seen, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt("buckets nested too deep".into()));
        }
        let mut children = Vec::new();
        let mut last = None;
        self.walk(bucket, seen, &mut last, &mut |e: Entry<'_>| {
            if e.is_bucket {
                children.push(e.value.to_vec());
            }
            Ok::<_, Error>(())
        })?;
        for value in children {
            let child = self.open_bucket(&value)?;
            self.check_bucket(&child, seen, depth + 1)?;
        }
        Ok(())
    }

    /// The pages a stored freelist lists (none if the file does not store one); marks the
    /// freelist's own pages.
    fn freelist(&self, seen: &mut Seen) -> Result<Vec<u64>, Error> {
        if self.meta.freelist == NO_FREELIST {
            return Ok(Vec::new());
        }
        let bytes = self.read_pages(self.meta.freelist, seen)?;
        let node = Node::parse(&bytes)?;
        if node.header.flags & FREELIST == 0 {
            return Err(Error::Corrupt("the freelist page is not a freelist".into()));
        }
        // A count of 0xFFFF means the real count is the first id's slot.
        let (count, start) = match node.header.count {
            0xFFFF => (u64_at(&bytes, HEADER), HEADER + 8),
            n => (u64::from(n), HEADER),
        };
        let ids = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(8)?.checked_add(start))
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| Error::Corrupt("freelist out of bounds".into()))?;
        let mut free: Vec<u64> = ids.chunks_exact(8).map(|c| u64_at(c, 0)).collect();
        free.sort_unstable();
        if free.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Corrupt("freelist lists a page twice".into()));
        }
        if free.iter().any(|p| *p < 2 || *p >= self.meta.pgid) {
            return Err(Error::Corrupt("freelist lists a page out of bounds".into()));
        }
        Ok(free)
    }

    /// Reads the node at `page` with its overflow pages, marking each.
    fn read_pages(&self, page: u64, seen: &mut Seen) -> Result<Vec<u8>, Error> {
        if page < 2 || page >= self.meta.pgid {
            return Err(Error::Corrupt(format!("page {page}: out of bounds")));
        }
        let mut head = [0u8; HEADER];
        let offset = page * self.page_size as u64;
        self.src.read_at(&mut head, offset)?;
        let header = PageHeader::decode(&head);
        if header.id != page {
            return Err(Error::Corrupt(format!(
                "page {page}: header says {}",
                header.id
            )));
        }
        let pages = u64::from(header.overflow) + 1;
        if page + pages > self.meta.pgid {
            return Err(Error::Corrupt(format!("page {page}: overflows the file")));
        }
        for p in page..page + pages {
            if !seen.mark(p) {
                return Err(Error::Corrupt(format!("page {p}: multiple references")));
            }
        }
        let mut bytes = vec![0u8; pages as usize * self.page_size];
        self.src.read_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    fn walk<E, F>(
        &self,
        bucket: &Bucket,
        seen: &mut Seen,
        last: &mut Option<Vec<u8>>,
        f: &mut F,
    ) -> Result<(), E>
    where
        E: From<Error>,
        F: FnMut(Entry<'_>) -> Result<(), E>,
    {
        match &bucket.0 {
            Root::Page(page) => self.visit(*page, seen, 0, last, f),
            Root::Inline(bytes) => {
                let node = Node::parse(bytes)?;
                if node.header.flags & LEAF == 0 {
                    return Err(Error::Corrupt("an inline bucket is not a leaf".into()).into());
                }
                self.leaf(&node, last, f)
            }
        }
    }

    fn visit<E, F>(
        &self,
        page: u64,
        seen: &mut Seen,
        depth: usize,
        last: &mut Option<Vec<u8>>,
        f: &mut F,
    ) -> Result<(), E>
    where
        E: From<Error>,
        F: FnMut(Entry<'_>) -> Result<(), E>,
    {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!("page {page}: tree too deep")).into());
        }
        let bytes = self.read_pages(page, seen)?;
        let node = Node::parse(&bytes)?;
        if node.header.flags & LEAF != 0 {
            return self.leaf(&node, last, f);
        }
        if node.header.flags & BRANCH == 0 {
            return Err(Error::Corrupt(format!(
                "page {page}: invalid type {:#x}",
                node.header.flags
            ))
            .into());
        }
        for i in 0..usize::from(node.header.count) {
            let (_, child) = node.branch(i)?;
            self.visit(child, seen, depth + 1, last, f)?;
        }
        Ok(())
    }

    fn leaf<E, F>(&self, node: &Node<'_>, last: &mut Option<Vec<u8>>, f: &mut F) -> Result<(), E>
    where
        E: From<Error>,
        F: FnMut(Entry<'_>) -> Result<(), E>,
    {
        for i in 0..usize::from(node.header.count) {
            let (flags, key, value) = node.leaf(i)?;
            // Readers rely on order (and bbolt asserts keys are non-empty).
            if key.is_empty() || last.as_deref().is_some_and(|l| l >= key) {
                return Err(
                    Error::Corrupt(format!("page {}: keys out of order", node.header.id)).into(),
                );
            }
            match last {
                Some(l) => {
                    l.clear();
                    l.extend_from_slice(key);
                }
                None => *last = Some(key.to_vec()),
            }
            f(Entry {
                key,
                value,
                is_bucket: flags & BUCKET_FLAG != 0,
            })?;
        }
        Ok(())
    }
}
