//! [`SharedDir`]: the passthrough file system with the FUSE options a
//! virtio-fs device should negotiate.
//!
//! fuse-backend-rs expects `PassthroughFs` to be mounted in its `Vfs`,
//! which negotiates the connection's options; on its own, the passthrough
//! offers only READDIRPLUS. Without BIG_WRITES and MAX_PAGES the guest
//! then sends at most 8 KiB per WRITE and 128 KiB per READ, so every MiB
//! a container writes costs 128 round trips to the VMM, each a VM exit and
//! an interrupt: sequential writes ran at 1.4 MB/s in the nested test host.
//! This wrapper adds, on top of what the passthrough asks for:
//! - BIG_WRITES and MAX_PAGES: requests up to 1 MiB (256 pages), which the
//!   device's reply bound (`MAX_REPLY_LEN`) already allows;
//! - ASYNC_READ: the guest may keep several readahead READs in flight, so
//!   one queue notification can carry more than one;
//! - PARALLEL_DIROPS: lookups and readdirs of one directory need not wait
//!   for each other in the guest (the device serves them in order anyway);
//! - AUTO_INVAL_DATA: the guest drops cached pages of a file whose size or
//!   mtime changed on the host, which the cache policy relies on (the host
//!   changes files behind the guest's back, see `passthrough.rs`).
//!
//! Not WRITEBACK_CACHE (writes stay write-through, a choice documented in
//! `passthrough.rs`), nor the zero-message open options (every open goes
//! through the server's checks).
//!
//! It also keeps the count of host fds the passthrough holds for the
//! guest ([`OpenFiles`]) and refuses, with ENFILE, whatever would pin one
//! more beyond the cap: a new inode (LOOKUP, READDIRPLUS, CREATE, MKDIR,
//! MKNOD, SYMLINK) or handle (OPEN, OPENDIR, CREATE). Operations that
//! always make a new inode or handle are refused before they touch the
//! host, so a refused CREATE leaves no file behind; a LOOKUP may name an
//! inode the guest already holds, which costs nothing, so it is tried and
//! its reference dropped again if it turns out new while at the cap.
//!
//! Every other call goes to the passthrough unchanged.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::open_files::{cap_reached, Admission, OpenFiles};

/// What the share asks for beyond the passthrough's own options.
pub const EXTRA_OPTIONS: FsOptions = FsOptions::BIG_WRITES
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::ASYNC_READ)
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::AUTO_INVAL_DATA);

/// Options that must never be negotiated, whatever the passthrough says.
const REFUSED_OPTIONS: FsOptions = FsOptions::WRITEBACK_CACHE
    .union(FsOptions::ZERO_MESSAGE_OPEN)
    .union(FsOptions::ZERO_MESSAGE_OPENDIR);

type Inner = PassthroughFs<()>;
type Inode = <Inner as FileSystem>::Inode;
type Handle = <Inner as FileSystem>::Handle;

pub struct SharedDir {
    fs: Inner,
    open_files: OpenFiles,
}

impl SharedDir {
    /// Serves `inner`, holding at most `max_open_files` host fds for the
    /// guest (inodes it knows plus handles it has open).
    pub fn new(inner: Inner, max_open_files: usize) -> Self {
        Self {
            fs: inner,
            open_files: OpenFiles::new(max_open_files),
        }
    }

    pub fn open_files(&self) -> &OpenFiles {
        &self.open_files
    }

    /// Lets a reply that reserved nothing name `entry`, or drops the
    /// passthrough's new reference to it and refuses when it is a new
    /// inode and the cap is reached.
    fn admit(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        match self.open_files.admit_entry(entry.inode) {
            Admission::Admitted => Ok(entry),
            Admission::Refused => {
                self.fs.forget(ctx, entry.inode, 1);
                Err(cap_reached())
            }
        }
    }
}

/// The options to ask for, given what the passthrough asks for; the server
/// then keeps those the guest's driver offered.
pub fn negotiate(passthrough_wants: FsOptions) -> FsOptions {
    (passthrough_wants | EXTRA_OPTIONS) - REFUSED_OPTIONS
}

impl FileSystem for SharedDir {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(negotiate(self.fs.init(capable)?))
    }

    fn destroy(&self) {
        self.open_files.clear();
        self.fs.destroy()
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.fs.statfs(ctx, inode)
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        let entry = self.fs.lookup(ctx, parent, name)?;
        self.admit(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.open_files.forget(inode, count);
        self.fs.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        for &(inode, count) in &requests {
            self.open_files.forget(inode, count);
        }
        self.fs.batch_forget(ctx, requests)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let mut slot = self.open_files.reserve(1)?;
        let (handle, options) = self.fs.opendir(ctx, inode, flags)?;
        if let Some(handle) = handle {
            slot.handle(handle);
        }
        Ok((handle, options))
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        // Counted down only if the passthrough really let go: it refuses
        // a handle named with the wrong inode and keeps it open.
        self.fs.releasedir(ctx, inode, flags, handle)?;
        self.open_files.release(handle);
        Ok(())
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mut slot = self.open_files.reserve(1)?;
        let entry = self.fs.mkdir(ctx, parent, name, mode, umask)?;
        slot.entry(entry.inode);
        Ok(entry)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.fs.rmdir(ctx, parent, name)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut refused = false;
        let mut delivered = 0usize;
        self.fs
            .readdirplus(ctx, inode, handle, size, offset, &mut |dir_entry, entry| {
                if self.open_files.admit_entry(entry.inode) == Admission::Refused {
                    refused = true;
                    // Zero means "no room": the passthrough drops the
                    // reference it just took and ends the listing here.
                    return Ok(0);
                }
                let named = entry.inode;
                let added = add_entry(dir_entry, entry);
                match added {
                    // Not sent after all; the passthrough forgets it too.
                    Ok(0) => self.open_files.forget(named, 1),
                    Ok(_) => delivered += 1,
                    // The passthrough keeps its reference on an error, so
                    // the fd stays held and counted.
                    Err(_) => {}
                }
                added
            })?;
        // An empty reply would read as the end of the directory: say why
        // nothing came instead. A partial one is fine; the guest asks for
        // the rest and gets the error then.
        if refused && delivered == 0 {
            return Err(cap_reached());
        }
        Ok(())
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let mut slot = self.open_files.reserve(1)?;
        let (handle, options, passthrough) = self.fs.open(ctx, inode, flags, fuse_flags)?;
        if let Some(handle) = handle {
            slot.handle(handle);
        }
        Ok((handle, options, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        // As in `releasedir`: only a release the passthrough accepted.
        self.fs
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.open_files.release(handle);
        Ok(())
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        // A new inode and its open handle.
        let mut slots = self.open_files.reserve(2)?;
        let (entry, handle, options, passthrough) = self.fs.create(ctx, parent, name, args)?;
        slots.entry(entry.inode);
        if let Some(handle) = handle {
            slots.handle(handle);
        }
        Ok((entry, handle, options, passthrough))
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.fs.unlink(ctx, parent, name)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.fs
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.fs.removemapping(ctx, inode, requests, vu_req)
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.fs
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.fs.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.fs.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.fs.setattr(ctx, inode, attr, handle, valid)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.fs.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mut slot = self.open_files.reserve(1)?;
        let entry = self.fs.mknod(ctx, parent, name, mode, rdev, umask)?;
        slot.entry(entry.inode);
        Ok(entry)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        // A new name for an inode the guest holds: the same fd.
        let entry = self.fs.link(ctx, inode, newparent, newname)?;
        self.admit(ctx, entry)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mut slot = self.open_files.reserve(1)?;
        let entry = self.fs.symlink(ctx, linkname, parent, name)?;
        slot.entry(entry.inode);
        Ok(entry)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.fs.readlink(ctx, inode)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.fs.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.fs.fsync(ctx, inode, datasync, handle)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.fs.fsyncdir(ctx, inode, datasync, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.fs.access(ctx, inode, mask)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.fs.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.fs.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.fs.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.fs.removexattr(ctx, inode, name)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.fs.fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.fs.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_large_requests_and_never_writeback() {
        let passthrough = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        let got = negotiate(passthrough | FsOptions::WRITEBACK_CACHE);
        for want in [
            FsOptions::BIG_WRITES,
            FsOptions::MAX_PAGES,
            FsOptions::ASYNC_READ,
            FsOptions::PARALLEL_DIROPS,
            FsOptions::AUTO_INVAL_DATA,
            FsOptions::DO_READDIRPLUS,
        ] {
            assert!(got.contains(want), "{want:?} missing from {got:?}");
        }
        assert!(!got.intersects(REFUSED_OPTIONS), "{got:?}");
    }
}
