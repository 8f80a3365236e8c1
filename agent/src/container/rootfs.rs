//! The container's filesystem view, built by its init process inside the
//! new mount namespace, in runc's order:
//!
//! 1. `prepare` (before pivot_root): make `/` a slave so nothing propagates
//!    back to the guest, make `/` something pivot_root accepts (the guest's
//!    is the initramfs), bind the rootfs onto itself (pivot_root needs a
//!    mount point), do the spec's mounts, create /dev nodes and links,
//!    pivot_root and drop the old root.
//! 2. `finish` (after hostname and sysctls): read-only paths, masked
//!    paths, then the read-only root.
//!
//! Everything here happens in the container's own mount namespace, which
//! dies with its last process: no mount can leak into the guest.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstatat, makedev, mkdirat, mknodat, umask, Mode, SFlag};
use nix::unistd::{
    chdir, fchdir, fchownat, pivot_root, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags,
};

use super::fdmount::{attach, clone_tree, set_attrs, verify_landed, MOUNT_ATTR_RDONLY};
use super::inroot::{mnt_id, Kind, Root};
use super::mounts::mount_under;
use super::procfs;
use super::spec::{DevicePlan, RootfsPlan};

/// Nodes every container gets on a fresh /dev (the OCI spec's list).
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

fn err(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

fn ioerr(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

pub fn prepare(plan: &RootfsPlan) -> io::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("making / a slave mount"))?;
    // mount(2) reaches the fds below through /proc/self/fd: this must be
    // the guest's procfs (it is: this is still the guest's tree).
    procfs::check_root("/proc").map_err(ioerr("the guest's /proc"))?;
    make_root_pivotable()?;
    let root = bind_rootfs(&plan.path)?;
    for m in &plan.mounts {
        mount_under(&root, m)?;
    }
    if plan.default_devices {
        for (path, major, minor) in DEFAULT_DEVICES {
            create_device(
                &root,
                &DevicePlan {
                    path: path.into(),
                    kind: libc::S_IFCHR,
                    major: *major,
                    minor: *minor,
                    mode: 0o666,
                    uid: Some(0),
                    gid: Some(0),
                },
            )?;
        }
        for (target, link) in DEV_LINKS {
            // Not through a link already at the name (symlinkat does not
            // follow one): whatever a mount put there stays.
            let (dir, name) = open_dev_parent(&root, Path::new(link))?;
            match symlinkat(*target, Some(dir.as_raw_fd()), name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(err(format_args!("linking {link}"))(e)),
            }
        }
    }
    for d in &plan.devices {
        create_device(&root, d)?;
    }
    enter(&root)?;
    let propagation = MsFlags::from_bits_truncate(plan.propagation);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(err("setting rootfs propagation"))
}

/// pivot_root(2) refuses to move the initial ramfs, and in the guest that
/// is `/`: the agent runs from its initramfs. So first give this mount
/// namespace a root that is an ordinary mount: a detached recursive copy
/// of `/` (open_tree), attached on top of `/` and chrooted into (the
/// recipe crun and bubblewrap users apply for initramfs, with fds instead
/// of a scratch directory). Done on hosts too, so host tests run the
/// guest's path.
fn make_root_pivotable() -> io::Result<()> {
    let slash = Root::open(Path::new("/"))?;
    let copy = clone_tree(slash.fd(), true).map_err(ioerr("copying / for pivot_root"))?;
    rustix::mount::move_mount(
        &copy,
        "",
        rustix::fs::CWD,
        "/",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| io::Error::other(format!("mounting the copy of / on /: {e}")))?;
    fchdir(copy.as_raw_fd()).map_err(err("entering the copy of /"))?;
    nix::unistd::chroot(".").map_err(err("chroot into the copy of /"))?;
    chdir("/").map_err(err("chdir /"))
}

/// Binds the rootfs onto itself (pivot_root needs a mount point) through
/// its fd, and returns the new mount as the container's root: every later
/// step works from that fd, never from the rootfs's name.
fn bind_rootfs(path: &Path) -> io::Result<Root> {
    let dir = Root::open(path)?;
    let what = || format!("bind-mounting rootfs {}", path.display());
    let tree = clone_tree(dir.fd(), true).map_err(ioerr(what()))?;
    attach(tree.as_fd(), dir.fd()).map_err(ioerr(what()))?;
    Root::from_fd(tree, path)
}

/// Creates the node `d` at its own path. The path is the container's to
/// choose, and its /dev may hold links (the default /dev/ptmx ->
/// pts/ptmx, or whatever an image or a mount put there), so it is walked
/// from the container's /dev one directory at a time through file
/// descriptors without following any link: the node can only land in
/// that /dev, under exactly the name given. A link or an older node at the
/// name is replaced, as runc does; anything else there is an error (the
/// OCI spec's rule for a path that holds something else).
fn create_device(root: &Root, d: &DevicePlan) -> io::Result<()> {
    let what = d.path.display();
    let fail = |doing: &str, e: nix::Error| io::Error::other(format!("{doing} {what}: {e}"));
    let (dir, name) = open_dev_parent(root, &d.path)?;
    match entry_kind(dir.as_fd(), name).map_err(|e| fail("looking at", e))? {
        None => {}
        Some(k) if replaceable(k) => {
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| fail(&format!("replacing the {} at", kind_name(k)), e))?;
        }
        Some(k) => {
            return Err(io::Error::other(format!(
                "creating device {what}: it exists and is a {}, not a device node or a link; \
                 remove it from the image or the mounts, or choose another path",
                kind_name(k)
            )))
        }
    }
    // mknod honours the umask; the spec's mode is meant exactly. The init
    // process is single-threaded, so nothing else sees the umask change.
    let old_umask = umask(Mode::empty());
    let made = mknodat(
        Some(dir.as_raw_fd()),
        name,
        SFlag::from_bits_truncate(d.kind),
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    );
    umask(old_umask);
    made.map_err(|e| fail("creating device", e))?;
    if d.uid.is_some() || d.gid.is_some() {
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            d.uid.map(Uid::from_raw),
            d.gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail("chown", e))?;
    }
    Ok(())
}

/// What may sit where a device node goes and be replaced by it.
fn replaceable(kind: SFlag) -> bool {
    [
        SFlag::S_IFLNK,
        SFlag::S_IFCHR,
        SFlag::S_IFBLK,
        SFlag::S_IFIFO,
    ]
    .contains(&kind)
}

/// Opens the directory that holds `path` (a /dev path from the spec, or
/// one of the defaults), creating missing directories, and returns it with
/// the last component. /dev itself is found as the mounts found it (under
/// `root`, links clamped to it); below it, no link is followed.
fn open_dev_parent<'p>(root: &Root, path: &'p Path) -> io::Result<(OwnedFd, &'p OsStr)> {
    let what = path.display();
    let rel = path
        .strip_prefix("/dev")
        .map_err(|_| io::Error::other(format!("device path {what} is not under /dev")))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(part) => parts.push(part),
            _ => {
                return Err(io::Error::other(format!(
                    "device path {what} is not a plain path under /dev"
                )))
            }
        }
    }
    let name = parts
        .pop()
        .ok_or_else(|| io::Error::other(format!("device path {what} names /dev itself")))?;
    let mut dir = root.create(Path::new("/dev"), Kind::Dir)?;
    let mut walked = PathBuf::from("/dev");
    for part in parts {
        walked.push(part);
        match mkdirat(Some(dir.as_raw_fd()), part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(io::Error::other(format!(
                    "creating {} for device {what}: {e}",
                    walked.display()
                )))
            }
        }
        dir = open_dir(Some(dir.as_fd()), part).map_err(|e| {
            let hint = match e {
                Errno::ENOTDIR | Errno::ELOOP => {
                    " (a link or a file: device paths are not resolved through links)"
                }
                _ => "",
            };
            io::Error::other(format!(
                "device {what}: opening {}: {e}{hint}",
                walked.display()
            ))
        })?;
    }
    Ok((dir, name))
}

/// Opens a directory as a handle for *at calls, refusing a link at `name`.
fn open_dir(at: Option<BorrowedFd>, name: &OsStr) -> nix::Result<OwnedFd> {
    let fd = openat(
        at.map(|d| d.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The file type at `name` in `dir`, not following a link; None if absent.
fn entry_kind(dir: BorrowedFd, name: &OsStr) -> nix::Result<Option<SFlag>> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(
            st.st_mode & SFlag::S_IFMT.bits(),
        ))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        SFlag::S_IFIFO => "fifo",
        SFlag::S_IFSOCK => "socket",
        _ => "file of unknown type",
    }
}

/// Binds the terminal `pty` (the process's pty slave) onto /dev/console,
/// after pivot_root, so `/` is the container's. Both ends are file
/// descriptors, not names: the source is the open slave itself (open_tree
/// on the fd, not its /dev/pts name, which the container's filesystem
/// could point elsewhere) and the target is opened without following a
/// link at /dev/console (a link there is replaced, as for devices).
pub fn bind_console(pty: BorrowedFd) -> io::Result<()> {
    let fail = |doing: &str, e: Errno| io::Error::other(format!("{doing}: {e}"));
    let dev = Root::open(Path::new("/"))?
        .resolve(Path::new("/dev"))?
        .ok_or_else(|| io::Error::other("the container has no /dev"))?;
    let name = OsStr::new("console");
    let existing = entry_kind(dev.as_fd(), name).map_err(|e| fail("looking at /dev/console", e))?;
    let create = match existing {
        None => true,
        Some(SFlag::S_IFLNK) => {
            unlinkat(Some(dev.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| fail("replacing the symlink /dev/console", e))?;
            true
        }
        // A node (from the image or linux.devices) or an empty file: the
        // bind covers it.
        Some(SFlag::S_IFCHR | SFlag::S_IFREG) => false,
        Some(k) => {
            return Err(io::Error::other(format!(
                "/dev/console is a {}; a terminal is bound there",
                kind_name(k)
            )))
        }
    };
    if create {
        let fd = openat(
            Some(dev.as_raw_fd()),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| fail("creating /dev/console", e))?;
        // SAFETY: a new fd that nothing else owns; only its name is needed.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let target = openat(
        Some(dev.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("opening /dev/console", e))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    let target = unsafe { OwnedFd::from_raw_fd(target) };
    // SAFETY: open_tree reads the empty C string and returns a new fd.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            pty.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        let e = Errno::last();
        let hint = if e == Errno::ENOSYS {
            " (open_tree needs Linux 5.2)"
        } else {
            ""
        };
        return Err(io::Error::other(format!(
            "cloning the pty for a bind: {e}{hint}"
        )));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    // SAFETY: move_mount reads the two empty C strings; both fds are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(fail("mounting the pty on /dev/console", Errno::last()));
    }
    Ok(())
}

/// pivot_root into `root` and detach the old root, the way runc does it:
/// pivot_root(".", ".") stacks the old root under the new one, so no
/// directory for it is needed in the image. Entered by fd.
fn enter(root: &Root) -> io::Result<()> {
    let old_root = File::open("/").map_err(ioerr("opening /"))?;
    fchdir(root.fd().as_raw_fd()).map_err(err("entering the rootfs"))?;
    pivot_root(".", ".").map_err(err("pivot_root into the rootfs"))?;
    fchdir(old_root.as_raw_fd()).map_err(err("entering the old root"))?;
    // Slave first, so the unmount below cannot propagate to the guest.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("making the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root"))?;
    chdir("/").map_err(err("chdir /"))
}

/// After pivot_root, /proc is the container's own (a mount it controls),
/// so nothing here goes through /proc/self/fd: binds are fd to fd, flags
/// are set with mount_setattr on the fd.
pub fn finish(plan: &RootfsPlan) -> io::Result<()> {
    let root = Root::open(Path::new("/"))?;
    for p in &plan.readonly_paths {
        readonly_path(&root, p)?;
    }
    let mut null = None;
    for p in &plan.masked_paths {
        mask_path(&root, &mut null, p)?;
    }
    if plan.readonly {
        set_attrs(root.fd(), MOUNT_ATTR_RDONLY, 0).map_err(ioerr("making the rootfs read-only"))?;
    }
    Ok(())
}

fn readonly_path(root: &Root, p: &Path) -> io::Result<()> {
    let what = || format!("binding read-only path {}", p.display());
    let Some(fd) = root.resolve(p).map_err(ioerr(what()))? else {
        return Ok(());
    };
    let tree = clone_tree(fd.as_fd(), true).map_err(ioerr(what()))?;
    set_attrs(tree.as_fd(), MOUNT_ATTR_RDONLY, 0)
        .map_err(ioerr(format_args!("making {} read-only", p.display())))?;
    attach(tree.as_fd(), fd.as_fd()).map_err(ioerr(what()))?;
    verify_landed(root, p, mnt_id(tree.as_fd())?)?;
    Ok(())
}

/// Masks `p`: a file with the null device, a directory with an empty
/// read-only tmpfs. CVE-2025-31133: binding whatever the container's
/// /dev/null is would let a container (or a sibling sharing its /dev or a
/// volume there) swap it for a link to, say, /proc/sys/kernel/core_pattern
/// and have the runtime bind that writable file over a masked path. So
/// the source is opened without following a link, checked by fstat to be
/// the character device 1:3, and that very fd is cloned (open_tree) and
/// attached onto the target's fd; anything else is refused.
fn mask_path(root: &Root, null: &mut Option<OwnedFd>, p: &Path) -> io::Result<()> {
    let what = || format!("masking {}", p.display());
    let Some(target) = root.resolve(p).map_err(ioerr(what()))? else {
        return Ok(());
    };
    let is_dir = rustix::fs::fstat(&target)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
        .map_err(|e| io::Error::other(format!("masking {}: {e}", p.display())))?;
    let tree = if is_dir {
        empty_readonly_tmpfs().map_err(ioerr(what()))?
    } else {
        let null = match null {
            Some(fd) => fd,
            None => null.insert(open_null(root)?),
        };
        clone_tree(null.as_fd(), false).map_err(ioerr(what()))?
    };
    attach(tree.as_fd(), target.as_fd()).map_err(ioerr(what()))?;
    verify_landed(root, p, mnt_id(tree.as_fd())?)?;
    Ok(())
}

/// The container's /dev/null, if it is the null device (1:3, a character
/// device; not a link, which is not followed), for masking files.
fn open_null(root: &Root) -> io::Result<OwnedFd> {
    let refuse = |why: String| {
        io::Error::other(format!(
            "the container's /dev/null {why}; masked paths are bound to the null device              (character device 1:3) only"
        ))
    };
    let fd = root
        .resolve(Path::new("/dev/null"))?
        .ok_or_else(|| refuse("does not exist".into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| refuse(format!("cannot be inspected: {e}")))?;
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if kind != rustix::fs::FileType::CharacterDevice || (major, minor) != (1, 3) {
        return Err(refuse(format!(
            "is a {kind:?} {major}:{minor}, not the null device"
        )));
    }
    Ok(fd)
}

/// A new tmpfs, read-only from the start and never attached anywhere
/// before it covers its target: nothing can be put in it.
fn empty_readonly_tmpfs() -> io::Result<OwnedFd> {
    use rustix::mount::{fsconfig_create, fsmount, fsopen};
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}
