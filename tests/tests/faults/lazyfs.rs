//! A FUSE filesystem that loses what was not synced, in the spirit of LazyFS: a passthrough
//! to a base directory in which file data written is kept in memory, as a kernel's page
//! cache holds it, until `fsync`/`fdatasync` of that file writes it through. [`LazyFs::cut`]
//! is the power cut: every unsynced write is dropped, and reads from then on see only what
//! reached the base directory.
//!
//! Metadata (create, mkdir, rename, unlink, truncate, a size set with `ftruncate`) goes
//! through at once, as if every directory were synced, and `fsyncdir` is a no-op. So the
//! fault modelled is losing all unsynced data of every file; not modelled: a crash that
//! keeps some unsynced pages and not others (torn or reordered writes), and names or sizes
//! lost for want of a directory sync.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes are never cached by the kernel: a size must reflect the last cut at once.
const TTL: Duration = Duration::ZERO;

/// An unsynced write.
struct Pending {
    offset: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Inode → path below the base directory (the root is "").
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Unsynced writes by inode, oldest first.
    pending: HashMap<u64, Vec<Pending>>,
    /// Open files on the base directory, by handle: an unlinked file stays readable.
    files: HashMap<u64, (u64, Arc<File>)>,
    /// Directory listings taken at opendir, by handle: entries removed while a caller walks
    /// the directory must not make it skip others.
    listings: HashMap<u64, Vec<(u64, FileType, std::ffi::OsString)>>,
    next_fh: u64,
    /// Bytes synced through and bytes dropped by cuts, for the test's report.
    synced: u64,
    dropped: u64,
}

/// What a cut dropped, and how much was synced before.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub dropped: u64,
    /// Of `dropped`, what belonged to a member's backup being written (not the store).
    pub dropped_backup: u64,
    pub synced: u64,
}

#[derive(Clone)]
pub struct LazyFs {
    base: Arc<PathBuf>,
    state: Arc<Mutex<State>>,
}

/// A mounted [`LazyFs`]; unmounted on drop.
pub struct Mounted {
    pub fs: LazyFs,
    pub mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                // A process still holding files there (a member that never started) keeps
                // the mount busy: detach it, so no dead mount outlives the test.
                eprintln!(
                    "lazyfs: unmount {}: {e}; detaching",
                    self.mountpoint.display()
                );
                if let Ok(path) =
                    std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                {
                    // SAFETY: a valid C path; MNT_DETACH has no other preconditions.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
    }
}

/// Why the filesystem cannot be mounted here (no `/dev/fuse`, not root), if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting without fusermount needs root".into());
    }
    None
}

impl LazyFs {
    /// Mounts a filesystem over `base` at `mountpoint`.
    pub fn mount(base: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
        let mut st = State {
            next_ino: 2,
            next_fh: 1,
            ..State::default()
        };
        st.paths.insert(1, PathBuf::new());
        st.inos.insert(PathBuf::new(), 1);
        let fs = LazyFs {
            base: Arc::new(base.to_path_buf()),
            state: Arc::new(Mutex::new(st)),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("cairn-lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(fs.clone(), mountpoint, &config)?;
        Ok(Mounted {
            fs,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    /// The power cut: drops every unsynced write.
    pub fn cut(&self) -> Counts {
        let mut st = self.lock();
        let (mut dropped, mut dropped_backup) = (0, 0);
        for (ino, list) in &st.pending {
            let bytes: u64 = list.iter().map(|p| p.data.len() as u64).sum();
            dropped += bytes;
            let backup = st
                .paths
                .get(ino)
                .is_some_and(|p| p.components().any(|c| c.as_os_str() == "backup"));
            if backup {
                dropped_backup += bytes;
            }
        }
        st.pending.clear();
        st.dropped += dropped;
        Counts {
            dropped,
            dropped_backup,
            synced: st.synced,
        }
    }

    /// Totals since the mount.
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            dropped: st.dropped,
            dropped_backup: 0,
            synced: st.synced,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn real(&self, rel: &Path) -> PathBuf {
        self.base.join(rel)
    }
}

impl State {
    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&i) = self.inos.get(rel) {
            return i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(i, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), i);
        i
    }

    /// The name is gone; the inode's unsynced data stays while a handle has it open (an
    /// unlinked file stays readable and writable until closed).
    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inos.remove(rel) {
            self.paths.remove(&i);
            self.drop_if_unused(i);
        }
    }

    /// Drops the unsynced data of an inode that no name and no handle refer to any more.
    fn drop_if_unused(&mut self, ino: u64) {
        if !self.paths.contains_key(&ino) && !self.files.values().any(|(i, _)| *i == ino) {
            self.pending.remove(&ino);
        }
    }

    /// The end of the last unsynced write, if any.
    fn pending_end(&self, ino: u64) -> u64 {
        self.pending
            .get(&ino)
            .into_iter()
            .flatten()
            .map(|p| p.offset + p.data.len() as u64)
            .max()
            .unwrap_or(0)
    }

    fn open(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, (ino, Arc::new(file)));
        fh
    }

    /// Writes `ino`'s unsynced data through `file` and syncs it.
    fn sync(&mut self, ino: u64, file: &File) -> std::io::Result<()> {
        let pending = self.pending.remove(&ino).unwrap_or_default();
        for p in &pending {
            file.write_all_at(&p.data, p.offset)?;
            self.synced += p.data.len() as u64;
        }
        file.sync_all()
    }

    /// Drops unsynced data past `size` (a truncate).
    fn truncate(&mut self, ino: u64, size: u64) {
        if let Some(list) = self.pending.get_mut(&ino) {
            list.retain_mut(|p| {
                if p.offset >= size {
                    return false;
                }
                p.data.truncate((size - p.offset) as usize);
                true
            });
        }
    }
}

fn kind(meta: &std::fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
}

fn attr(ino: u64, meta: &std::fs::Metadata, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind(meta),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

impl LazyFs {
    /// The attributes of `ino` as the page cache would report them: unsynced writes count.
    fn stat(&self, st: &State, ino: u64, rel: &Path) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(self.real(rel)).map_err(errno)?;
        let size = meta.len().max(st.pending_end(ino));
        Ok(attr(ino, &meta, size))
    }

    fn entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let mut st = self.lock();
        let rel = st.path(parent)?.join(name);
        std::fs::symlink_metadata(self.real(&rel)).map_err(errno)?;
        let ino = st.ino_for(&rel);
        self.stat(&st, ino, &rel)
    }
}

impl LazyFs {
    /// unlink and rmdir: the name goes at once; an open file's data stays until it closes.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        op: fn(&Path) -> std::io::Result<()>,
    ) {
        let mut st = self.lock();
        let result = st.path(parent).and_then(|p| {
            let rel = p.join(name);
            op(&self.real(&rel)).map_err(errno)?;
            st.forget_path(&rel);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl fuser::Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        match st.path(ino).and_then(|rel| self.stat(&st, ino.0, &rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let rel = st.path(ino)?;
            let real = self.real(&rel);
            if let Some(mode) = mode {
                std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode))
                    .map_err(errno)?;
            }
            if let Some(size) = size {
                // A truncate reaches the disk at once (metadata); unsynced data past it goes.
                st.truncate(ino.0, size);
                let open = fh.and_then(|h| st.files.get(&h.0)).map(|(_, f)| f.clone());
                match open {
                    Some(f) => f.set_len(size),
                    None => OpenOptions::new()
                        .write(true)
                        .open(&real)
                        .and_then(|f| f.set_len(size)),
                }
                .map_err(errno)?;
            }
            self.stat(&st, ino.0, &rel)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let rel = self.lock().path(parent)?.join(name);
            std::fs::create_dir(self.real(&rel)).map_err(errno)?;
            let _ =
                std::fs::set_permissions(self.real(&rel), std::fs::Permissions::from_mode(mode));
            self.entry(parent, name)
        })();
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_file(p));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, reply, |p| std::fs::remove_dir(p));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE and RENAME_EXCHANGE are not modelled: refuse rather than overwrite.
        if flags.bits() != 0 {
            return reply.error(Errno::EINVAL);
        }
        let mut st = self.lock();
        let result = (|| {
            let from = st.path(parent)?.join(name);
            let to = st.path(newparent)?.join(newname);
            std::fs::rename(self.real(&from), self.real(&to)).map_err(errno)?;
            // What was at `to` is gone; what was below `from` is now below `to`.
            st.forget_path(&to);
            let moved: Vec<(PathBuf, u64)> = st
                .inos
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &i)| (p.clone(), i))
                .collect();
            for (old, i) in moved {
                // Joining an empty rest would add a trailing slash.
                let new = match old.strip_prefix(&from) {
                    Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                    _ => to.clone(),
                };
                st.inos.remove(&old);
                st.inos.insert(new.clone(), i);
                st.paths.insert(i, new);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let result = (|| {
            let rel = st.path(ino)?;
            let file = OpenOptions::new()
                .read(true)
                .write(flags.0 & libc::O_ACCMODE != libc::O_RDONLY)
                .open(self.real(&rel))
                .map_err(errno)?;
            if flags.0 & libc::O_TRUNC != 0 {
                st.truncate(ino.0, 0);
                file.set_len(0).map_err(errno)?;
            }
            Ok(st.open(ino.0, file))
        })();
        match result {
            // No FOPEN_KEEP_CACHE: each open drops the kernel's cached pages, so a member
            // started after a cut reads what survived it.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let rel = st.path(parent)?.join(name);
            let mut opts = OpenOptions::new();
            opts.read(true).write(true).mode(mode);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            let file = opts.open(self.real(&rel)).map_err(errno)?;
            let ino = st.ino_for(&rel);
            if flags & libc::O_TRUNC != 0 {
                st.truncate(ino, 0);
                file.set_len(0).map_err(errno)?;
            }
            let a = self.stat(&st, ino, &rel)?;
            Ok((a, st.open(ino, file)))
        })();
        match result {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.lock();
        let Some((_, file)) = st.files.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let on_disk = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return reply.error(errno(e)),
        };
        let end = (offset + u64::from(size)).min(on_disk.max(st.pending_end(ino.0)));
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(e)),
            }
        }
        // The page cache's view: unsynced writes over what is on disk, in write order.
        for p in st.pending.get(&ino.0).into_iter().flatten() {
            let (p_start, p_end) = (p.offset, p.offset + p.data.len() as u64);
            let (from, to) = (p_start.max(offset), p_end.min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&p.data[(from - p_start) as usize..(to - p_start) as usize]);
            }
        }
        reply.data(&buf);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        let list = st.pending.entry(ino.0).or_default();
        // Appends in order extend the last pending write instead of adding one.
        match list.last_mut() {
            Some(last) if last.offset + last.data.len() as u64 == offset => {
                last.data.extend_from_slice(data)
            }
            _ => list.push(Pending {
                offset,
                data: data.to_vec(),
            }),
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() does not sync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        if let Some((ino, _)) = st.files.remove(&fh.0) {
            st.drop_if_unused(ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let Some((_, file)) = st.files.get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        // A handle opened read-only may be synced too: write through one that can write.
        let writable = match st.path(ino) {
            Ok(rel) => OpenOptions::new()
                .write(true)
                .open(self.real(&rel))
                .map(Arc::new),
            Err(_) => Ok(file.clone()),
        };
        let file = writable.unwrap_or(file);
        match st.sync(ino.0, &file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let rel = match st.path(ino) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let listing = match std::fs::read_dir(self.real(&rel)) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for e in listing.flatten() {
            let name = e.file_name();
            let Ok(meta) = e.metadata() else { continue };
            let child = st.ino_for(&rel.join(&name));
            entries.push((child, kind(&meta), name));
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.listings.insert(fh, entries);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.lock();
        let Some(entries) = st.listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (child, k, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), (i + 1) as u64, *k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata is already on disk (see the module's comment).
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path =
            std::ffi::CString::new(self.base.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: statvfs writes into the zeroed struct it is given, from a valid C path.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }
}
