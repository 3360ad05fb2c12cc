//! Writing a bbolt file in one pass from sorted data: each bucket's leaves are packed full
//! as its entries arrive and written at once, and the branch levels above them (a small
//! fraction of the tree) are built when the bucket ends. The meta pages, which name the
//! root, go in last, so the sink must be seekable.

use std::io::{Seek, SeekFrom, Write};

use crate::page::{
    Meta, PageHeader, BRANCH, BUCKET_FLAG, BUCKET_HEADER, ELEMENT, FREELIST, HEADER, LEAF,
    PAGE_SIZE,
};
use crate::Error;

/// bbolt inlines a bucket whose single leaf fits in a quarter page.
const INLINE_MAX: usize = PAGE_SIZE / 4;
/// The transaction id the file claims (any will do; the second meta page is one older).
const TXID: u64 = 2;

/// One element of a node being built.
struct Item {
    flags: u32,
    key: Vec<u8>,
    /// The value (a leaf's; empty in a branch).
    value: Vec<u8>,
    /// The child page (a branch's).
    child: u64,
}

/// Nodes of one level, filled up to a page each.
#[derive(Default)]
struct Level {
    items: Vec<Item>,
    size: usize,
}

impl Level {
    fn push(&mut self, item: Item) {
        self.size += ELEMENT + item.key.len() + item.value.len();
        self.items.push(item);
    }

    fn would_overflow(&self, key: usize, value: usize) -> bool {
        !self.items.is_empty() && HEADER + self.size + ELEMENT + key + value > PAGE_SIZE
    }

    fn take(&mut self) -> Vec<Item> {
        self.size = 0;
        std::mem::take(&mut self.items)
    }
}

/// Writes a bbolt file to `out`: add top-level buckets in key order, each one's entries in
/// key order, then [`Writer::finish`].
///
/// ```
/// use std::io::Cursor;
/// let mut w = cairn_bolt::Writer::new(Cursor::new(Vec::new()))?;
/// let mut b = w.bucket(b"key")?;
/// b.put(b"a", b"1")?;
/// b.finish()?;
/// let file = w.finish()?.into_inner();
/// let db = cairn_bolt::Db::open(file)?;
/// db.check()?;
/// # Ok::<(), cairn_bolt::Error>(())
/// ```
pub struct Writer<W> {
    out: W,
    /// The next page to write.
    next: u64,
    /// The top-level buckets: name and bucket value.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file; `out` should be empty (the file is written from its start).
    pub fn new(mut out: W) -> Result<Writer<W>, Error> {
        out.seek(SeekFrom::Start(0))?;
        // The meta pages, written for real once the root is known.
        out.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(Writer {
            out,
            next: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts the top-level bucket `name`, which must sort after the previous one.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>, Error> {
        if name.is_empty()
            || self
                .buckets
                .last()
                .is_some_and(|(last, _)| last.as_slice() >= name)
        {
            return Err(Error::Unsorted);
        }
        Ok(BucketWriter {
            name: name.to_vec(),
            tree: Tree::default(),
            writer: self,
        })
    }

    /// Writes the root bucket, an empty freelist and the meta pages; returns the sink,
    /// positioned at the end of the file.
    pub fn finish(mut self) -> Result<W, Error> {
        let mut tree = Tree::default();
        for (name, value) in std::mem::take(&mut self.buckets) {
            tree.put(&mut self, BUCKET_FLAG, name, value)?;
        }
        // The root bucket is always a page of its own.
        let root = tree.finish(&mut self, false)?;
        let Stored::Page(root) = root else {
            unreachable!("the root bucket is never inline")
        };
        // An explicit empty freelist: what any bbolt reader (and older bolt) expects.
        let freelist = self.next;
        let mut page = vec![0u8; PAGE_SIZE];
        PageHeader {
            id: freelist,
            flags: FREELIST,
            count: 0,
            overflow: 0,
        }
        .encode(&mut page);
        self.out.write_all(&page)?;
        self.next += 1;
        let mut meta = Meta {
            page_size: PAGE_SIZE as u32,
            root,
            freelist,
            pgid: self.next,
            txid: TXID,
        };
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&meta.encode(0))?;
        meta.txid -= 1;
        self.out.write_all(&meta.encode(1))?;
        self.out
            .seek(SeekFrom::Start(self.next * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes one node (a leaf or a branch) at the next page; returns its page.
    fn node(&mut self, flags: u16, items: &[Item]) -> Result<u64, Error> {
        let bytes = encode_node(self.next, flags, items, true)?;
        let id = self.next;
        self.out.write_all(&bytes)?;
        self.next += (bytes.len() / PAGE_SIZE) as u64;
        Ok(id)
    }
}

/// Where a finished tree is: a page, or (for a small leaf-only bucket) inline.
enum Stored {
    Page(u64),
    Inline(Vec<u8>),
}

/// A B+tree being built bottom-up: the leaf being filled and, per level above it, the
/// first key and page of each node written.
#[derive(Default)]
struct Tree {
    leaf: Level,
    /// First key and page of every leaf written so far.
    written: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl Tree {
    fn put<W: Write + Seek>(
        &mut self,
        w: &mut Writer<W>,
        flags: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), Error> {
        if key.is_empty() || self.last.as_ref().is_some_and(|l| *l >= key) {
            return Err(Error::Unsorted);
        }
        if key.len() > u32::MAX as usize || value.len() > u32::MAX as usize {
            return Err(Error::TooLarge);
        }
        if self.leaf.would_overflow(key.len(), value.len()) {
            self.flush(w)?;
        }
        self.last = Some(key.clone());
        self.leaf.push(Item {
            flags,
            key,
            value,
            child: 0,
        });
        Ok(())
    }

    fn flush<W: Write + Seek>(&mut self, w: &mut Writer<W>) -> Result<(), Error> {
        let items = self.leaf.take();
        let first = items[0].key.clone();
        let page = w.node(LEAF, &items)?;
        self.written.push((first, page));
        Ok(())
    }

    /// Writes what is left and the branch levels; returns the root.
    fn finish<W: Write + Seek>(
        mut self,
        w: &mut Writer<W>,
        may_inline: bool,
    ) -> Result<Stored, Error> {
        if self.written.is_empty() {
            let has_buckets = self.leaf.items.iter().any(|i| i.flags & BUCKET_FLAG != 0);
            if may_inline && !has_buckets && HEADER + self.leaf.size <= INLINE_MAX {
                let image = encode_node(0, LEAF, &self.leaf.items, false)?;
                let mut value = vec![0u8; BUCKET_HEADER];
                value.extend_from_slice(&image);
                return Ok(Stored::Inline(value));
            }
            // An empty bucket that may not be inline is an empty leaf page.
            let page = w.node(LEAF, &self.leaf.items)?;
            return Ok(Stored::Page(page));
        }
        if !self.leaf.items.is_empty() {
            self.flush(w)?;
        }
        let mut level = self.written;
        while level.len() > 1 {
            let mut above = Vec::new();
            let mut node = Level::default();
            for (key, page) in level {
                if node.would_overflow(key.len(), 0) {
                    let items = node.take();
                    let first = items[0].key.clone();
                    above.push((first, w.node(BRANCH, &items)?));
                }
                node.push(Item {
                    flags: 0,
                    key,
                    value: Vec::new(),
                    child: page,
                });
            }
            let items = node.take();
            let first = items[0].key.clone();
            above.push((first, w.node(BRANCH, &items)?));
            level = above;
        }
        Ok(Stored::Page(level[0].1))
    }
}

/// Encodes a node as page `id`: header, elements, then each element's key and value.
/// A page node is padded to whole pages (overflow pages if it needs more than one).
fn encode_node(id: u64, flags: u16, items: &[Item], pad: bool) -> Result<Vec<u8>, Error> {
    let count = u16::try_from(items.len())
        .ok()
        .filter(|c| *c < u16::MAX)
        .ok_or(Error::TooLarge)?;
    let data: usize = items.iter().map(|i| i.key.len() + i.value.len()).sum();
    let len = HEADER + items.len() * ELEMENT + data;
    let pages = len.div_ceil(PAGE_SIZE).max(1);
    let mut out = vec![0u8; if pad { pages * PAGE_SIZE } else { len }];
    PageHeader {
        id,
        flags,
        count,
        overflow: if pad { pages as u32 - 1 } else { 0 },
    }
    .encode(&mut out);
    let mut at = HEADER + items.len() * ELEMENT;
    for (n, item) in items.iter().enumerate() {
        let e = HEADER + n * ELEMENT;
        // Positions are relative to the element.
        let pos = (at - e) as u32;
        if flags == BRANCH {
            out[e..e + 4].copy_from_slice(&pos.to_le_bytes());
            out[e + 4..e + 8].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
            out[e + 8..e + 16].copy_from_slice(&item.child.to_le_bytes());
            out[at..at + item.key.len()].copy_from_slice(&item.key);
            at += item.key.len();
        } else {
            out[e..e + 4].copy_from_slice(&item.flags.to_le_bytes());
            out[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
            out[e + 8..e + 12].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
            out[e + 12..e + 16].copy_from_slice(&(item.value.len() as u32).to_le_bytes());
            out[at..at + item.key.len()].copy_from_slice(&item.key);
            at += item.key.len();
            out[at..at + item.value.len()].copy_from_slice(&item.value);
            at += item.value.len();
        }
    }
    Ok(out)
}

/// Adds one top-level bucket's entries (in key order) to a [`Writer`].
pub struct BucketWriter<'w, W> {
    writer: &'w mut Writer<W>,
    name: Vec<u8>,
    tree: Tree,
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds an entry; keys must ascend strictly.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.tree.put(self.writer, 0, key.to_vec(), value.to_vec())
    }

    /// Ends the bucket.
    pub fn finish(self) -> Result<(), Error> {
        let value = match self.tree.finish(self.writer, true)? {
            Stored::Inline(value) => value,
            Stored::Page(page) => {
                let mut value = page.to_le_bytes().to_vec();
                value.extend_from_slice(&[0u8; 8]);
                value
            }
        };
        self.writer.buckets.push((self.name, value));
        Ok(())
    }
}
