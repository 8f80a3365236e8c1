//! Mounting onto file descriptors, not names (see `inroot.rs` for why):
//! binds are detached copies (open_tree) attached onto the target's fd
//! (move_mount), their flags set on the copy (mount_setattr); other
//! filesystems are mounted with mount(2) on `/proc/self/fd/N` of the
//! target, which the kernel resolves to that very file, wherever its name
//! has moved. Each mount is then checked to be where the container looks.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;
use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use super::inroot::{mnt_id, Root};

// mount_setattr(2) (Linux 5.12), which neither rustix nor libc wraps.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_ATIME: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x0;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn ctx<E: Into<io::Error>>(what: impl std::fmt::Display) -> impl FnOnce(E) -> io::Error {
    move |e| io::Error::other(format!("{what}: {}", e.into()))
}

/// The magic link through which mount(2) reaches `fd`'s file. Only used
/// where /proc is the guest's own procfs (before pivot_root, which
/// `check_guest_proc` verifies), never the container's.
pub fn fd_path(fd: BorrowedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The mount_setattr form of the per-mount flags a bind takes on a
/// remount (MS_RDONLY, MS_NOSUID, ...): (set, clear).
pub fn attrs_of(flags: MsFlags) -> (u64, u64) {
    let mut set = 0;
    let mut clr = 0;
    for (ms, attr) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
    ] {
        if flags.contains(ms) {
            set |= attr;
        }
    }
    // The atime modes are one field: setting one clears the others.
    let atime = if flags.contains(MsFlags::MS_NOATIME) {
        Some(MOUNT_ATTR_NOATIME)
    } else if flags.contains(MsFlags::MS_STRICTATIME) {
        Some(MOUNT_ATTR_STRICTATIME)
    } else if flags.contains(MsFlags::MS_RELATIME) {
        Some(MOUNT_ATTR_RELATIME)
    } else {
        None
    };
    if let Some(a) = atime {
        set |= a;
        clr |= MOUNT_ATTR_ATIME;
    }
    (set, clr)
}

/// Adds `set` (and clears `clr`) on the mount at `fd`, keeping every
/// other flag it has (locked ones included: nothing is cleared that was
/// not asked for, unlike a remount).
pub fn set_attrs(fd: BorrowedFd, set: u64, clr: u64) -> io::Result<()> {
    if set == 0 && clr == 0 {
        return Ok(());
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is an empty C string, `attr` a valid mount_attr
    // whose size is passed; the fd is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached copy of the mount tree at `fd` (with the mounts below it if
/// `recursive`), ready to be attached with `attach`.
pub fn clone_tree(fd: BorrowedFd, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE
        | OpenTreeFlags::OPEN_TREE_CLOEXEC
        | OpenTreeFlags::AT_EMPTY_PATH;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    open_tree(fd, "", flags).map_err(io::Error::from)
}

/// Attaches the detached mount `tree` onto the file `target` is open on.
pub fn attach(tree: BorrowedFd, target: BorrowedFd) -> io::Result<()> {
    move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(io::Error::from)
}

/// Checks that `dest`, as the container resolves it, is the root of the
/// mount `expected` (a mount id), and returns an fd on it. Catches a
/// mount that was moved, or a name swapped, after it was made.
pub fn verify_landed(root: &Root, dest: &Path, expected: u64) -> io::Result<OwnedFd> {
    let fd = root.resolve_in_root(dest)?;
    let found = mnt_id(fd.as_fd())?;
    if found != expected || !is_mount_root(fd.as_fd())? {
        return Err(io::Error::other(format!(
            "the mount on {} is not there any more (the path now leads elsewhere: \
             was it replaced while the container was created?)",
            dest.display()
        )));
    }
    Ok(fd)
}

/// Checks that `dest`, as the container resolves it, is the root of a
/// mount other than `under` (the mount the target was on before): for
/// mount(2), which gives no fd on what it mounted.
pub fn verify_new_mount(root: &Root, dest: &Path, under: u64) -> io::Result<OwnedFd> {
    let fd = root.resolve_in_root(dest)?;
    if mnt_id(fd.as_fd())? == under || !is_mount_root(fd.as_fd())? {
        return Err(io::Error::other(format!(
            "nothing is mounted on {} after mounting it (the path now leads elsewhere: \
             was it replaced while the container was created?)",
            dest.display()
        )));
    }
    Ok(fd)
}

fn is_mount_root(fd: BorrowedFd) -> io::Result<bool> {
    let st = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map_err(ctx("statx"))?;
    let known = st.stx_attributes_mask;
    if !known.contains(StatxAttributes::MOUNT_ROOT) {
        return Err(io::Error::other(
            "statx does not tell mount roots (Linux 5.8 or later needed)",
        ));
    }
    Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_flags_map_to_mount_attributes() {
        assert_eq!(attrs_of(MsFlags::empty()), (0, 0));
        assert_eq!(
            attrs_of(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV),
            (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0)
        );
        assert_eq!(
            attrs_of(MsFlags::MS_NOATIME | MsFlags::MS_NOEXEC),
            (MOUNT_ATTR_NOATIME | MOUNT_ATTR_NOEXEC, MOUNT_ATTR_ATIME)
        );
        // relatime is the zero value of the atime field: it clears it.
        assert_eq!(attrs_of(MsFlags::MS_RELATIME), (0, MOUNT_ATTR_ATIME));
    }
}
