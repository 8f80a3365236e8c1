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
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstatat, makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, fchdir, pivot_root, unlinkat, UnlinkatFlags};

use super::mounts::{make_mount_point, mount_under, remount_bind};
use super::paths::secure_join;
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
    let root = &plan.path;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("making / a slave mount"))?;
    make_root_pivotable(root)?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format_args!("bind-mounting rootfs {}", root.display())))?;
    for m in &plan.mounts {
        mount_under(root, m)?;
    }
    if plan.default_devices {
        for (path, major, minor) in DEFAULT_DEVICES {
            create_device(
                root,
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
            let at = secure_join(root, Path::new(link))?;
            match symlink(target, &at) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ioerr(format_args!("linking {link}"))(e)),
            }
        }
    }
    for d in &plan.devices {
        create_device(root, d)?;
    }
    enter(root)?;
    let propagation = MsFlags::from_bits_truncate(plan.propagation);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(err("setting rootfs propagation"))
}

/// pivot_root(2) refuses to move the initial ramfs, and in the guest that
/// is `/`: the agent runs from its initramfs. So first give this mount
/// namespace a root that is an ordinary mount: a recursive bind of `/`,
/// moved on top of `/` and chrooted into (the recipe crun and bubblewrap
/// users apply for initramfs). Done on hosts too, so host tests run the
/// guest's path.
///
/// The bind is mounted on the rootfs directory only because that is a
/// directory known to exist; the move takes it away again, and the copy
/// of the tree was taken before it, so the rootfs looks untouched.
fn make_root_pivotable(scratch: &Path) -> io::Result<()> {
    mount(
        Some("/"),
        scratch,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("binding / for pivot_root"))?;
    chdir(scratch).map_err(err("entering the bind of /"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(err("moving the bind of / onto /"))?;
    nix::unistd::chroot(".").map_err(err("chroot into the bind of /"))?;
    chdir("/").map_err(err("chdir /"))
}

fn create_device(root: &Path, d: &DevicePlan) -> io::Result<()> {
    let at = secure_join(root, &d.path)?;
    if let Some(parent) = at.parent() {
        make_mount_point(parent, true)?;
    }
    let _ = fs::remove_file(&at);
    let kind = SFlag::from_bits_truncate(d.kind);
    mknod(
        &at,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    )
    .map_err(err(format_args!("creating device {}", d.path.display())))?;
    // mknod honours the umask; the spec's mode is meant exactly.
    fs::set_permissions(&at, fs::Permissions::from_mode(d.mode))
        .map_err(ioerr(format_args!("chmod {}", d.path.display())))?;
    if d.uid.is_some() || d.gid.is_some() {
        std::os::unix::fs::chown(&at, d.uid, d.gid)
            .map_err(ioerr(format_args!("chown {}", d.path.display())))?;
    }
    Ok(())
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
    let dev = openat(
        None,
        "/dev",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("opening the container's /dev", e))?;
    // SAFETY: openat returned a new fd that nothing else owns.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
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
/// directory for it is needed in the image.
fn enter(root: &Path) -> io::Result<()> {
    let new_root = File::open(root).map_err(ioerr(format_args!("opening {}", root.display())))?;
    let old_root = File::open("/").map_err(ioerr("opening /"))?;
    fchdir(new_root.as_raw_fd()).map_err(err("entering the rootfs"))?;
    pivot_root(".", ".").map_err(err(format_args!("pivot_root into {}", root.display())))?;
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

pub fn finish(plan: &RootfsPlan) -> io::Result<()> {
    for p in &plan.readonly_paths {
        readonly_path(p)?;
    }
    for p in &plan.masked_paths {
        mask_path(p)?;
    }
    if plan.readonly {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(err("making the rootfs read-only"))?;
    }
    Ok(())
}

fn readonly_path(p: &Path) -> io::Result<()> {
    match mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(err(format_args!("binding read-only path {}", p.display()))(
                e,
            ))
        }
    }
    remount_bind(p, MsFlags::MS_RDONLY)
        .map_err(err(format_args!("making {} read-only", p.display())))
}

fn mask_path(p: &Path) -> io::Result<()> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ioerr(format_args!("masking {}", p.display()))(e)),
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(err(format_args!("masking {}", p.display())))
}
