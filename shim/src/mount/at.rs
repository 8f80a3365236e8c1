//! Mounting and unmounting through file descriptors, never through a path
//! a guest could have changed.
//!
//! A mount target is named by a directory fd and one last component. The
//! caller guarantees the directory is on a file system only the shim
//! writes (the share's skeleton, see `crate::share`), so the component
//! cannot be swapped for a symlink between the open and the mount. The
//! target is opened `O_PATH | O_NOFOLLOW` and mounted through
//! `/proc/self/fd/N`, which the kernel resolves to exactly that open file
//! (runc does the same since CVE-2021-30465). Unmounting opens the mount
//! again the same way, checks the fd is the root of a mount, and detaches
//! it through its fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rustix::fs::{
    openat, openat2, statx, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxAttributes,
    StatxFlags, CWD,
};
use rustix::io::Errno;

use super::{parse_options, MountError, MountSource};

/// How many mounts may be stacked on one mount point before detaching
/// gives up (containerd stacks at most a few rootfs mounts).
pub const MAX_STACKED_MOUNTS: usize = 64;
/// Mounts [`detach_all_beneath`] removes at most, a bound against a table
/// that keeps changing under it.
const MAX_DETACHES: usize = 4096;

/// Resolution that stays beneath the starting directory and follows no
/// symlink, not even the kernel's magic links in /proc.
const STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// The place of one mount: a directory the guest cannot write, and the
/// name in it. `shown` is only for messages.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub parent: BorrowedFd<'a>,
    pub name: &'a OsStr,
    pub shown: &'a Path,
}

/// Opens `path` (relative, no `..`) beneath `dir` as an `O_PATH` fd without
/// following any link. With `same_mount`, the walk may not cross a mount
/// point either (`RESOLVE_NO_XDEV`): everything it passes through is then
/// on `dir`'s own file system.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &Path, same_mount: bool) -> Result<OwnedFd, Errno> {
    if path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(Errno::INVAL);
    }
    let resolve = if same_mount {
        STRICT | ResolveFlags::NO_XDEV
    } else {
        STRICT
    };
    openat2(
        dir,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
}

/// Opens a directory the shim itself controls (a sandbox directory under
/// /run/palisade) by path.
pub fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    openat(
        CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `/proc/self/fd/N`: the path the kernel resolves to exactly `fd`.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether `fd` is the root of a mount (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8).
pub fn is_mount_root(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let st = statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    if !st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        // Older than 5.8: the shim cannot tell mounts apart safely.
        return Err(Errno::NOSYS);
    }
    Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

fn open_target(target: &Target<'_>) -> Result<OwnedFd, MountError> {
    openat(
        target.parent,
        target.name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountError::Open {
        path: target.shown.to_owned(),
        beneath: target.shown.parent().unwrap_or(target.shown).to_owned(),
        errno,
    })
}

/// Mounts `m` on `target` with `extra` flags added (the shim adds nosuid
/// and nodev: the guest's root can write setuid programs and device nodes
/// into what the host sees). A bind mount's flags need a second call (the
/// kernel ignores them on the first), made on the new mount's root.
pub fn mount_at(target: &Target<'_>, m: &MountSource, extra: MsFlags) -> Result<(), MountError> {
    let parsed = parse_options(&m.options);
    let err = |errno| MountError::Mount {
        typ: m.typ.clone(),
        from: m.source.clone(),
        target: target.shown.to_owned(),
        errno,
    };
    if parsed.flags.contains(MsFlags::MS_REMOUNT) {
        return Err(MountError::BadOption {
            typ: m.typ.clone(),
            from: m.source.clone(),
            option: "remount".into(),
            why: "a container's mount must make a new mount",
        });
    }
    let point = open_target(target)?;
    let kind = rustix::fs::fstat(&point)
        .map(|st| FileType::from_raw_mode(st.st_mode))
        .map_err(|e| err(nix::Error::from_raw(e.raw_os_error())))?;
    if !matches!(kind, FileType::Directory | FileType::RegularFile) {
        return Err(err(nix::Error::ENOTDIR));
    }
    let flags = parsed.flags | extra;
    let bind = flags.contains(MsFlags::MS_BIND) || m.typ == "bind";
    let data = (!parsed.data.is_empty()).then_some(parsed.data.as_str());
    let at = fd_path(point.as_fd());
    if bind {
        let bind_flags = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            &at,
            None::<&str>,
            bind_flags,
            None::<&str>,
        )
        .map_err(err)?;
    } else {
        mount(
            Some(m.source.as_str()),
            &at,
            Some(m.typ.as_str()),
            flags,
            data,
        )
        .map_err(err)?;
    }
    // The new mount's root, for the steps that act on the mount itself.
    let root = match open_target(target) {
        Ok(root) => root,
        Err(e) => {
            // Cannot reach what was just mounted: detach it through the
            // mount point's parent, which the guest cannot change.
            let _ = detach_at(target);
            return Err(e);
        }
    };
    let root_at = fd_path(root.as_fd());
    let undo = |e: nix::Error| {
        let _ = umount2(&root_at, MntFlags::MNT_DETACH);
        err(e)
    };
    if bind {
        let remount =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags - MsFlags::MS_REC - MsFlags::MS_BIND);
        mount(None::<&str>, &root_at, None::<&str>, remount, None::<&str>).map_err(undo)?;
    }
    if !parsed.propagation.is_empty() {
        mount(
            None::<&str>,
            &root_at,
            None::<&str>,
            parsed.propagation,
            None::<&str>,
        )
        .map_err(undo)?;
    }
    Ok(())
}

/// Detaches every mount stacked on `target` (each with everything mounted
/// below it: `MNT_DETACH` is recursive), leaving the plain directory or
/// file. Nothing mounted there is success. The mounts leave the tree at
/// once and go away when their last user (the VMM, for files the guest
/// still has open) lets go.
pub fn detach_at(target: &Target<'_>) -> Result<(), MountError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        let fd = match open_target(target) {
            Ok(fd) => fd,
            Err(MountError::Open {
                errno: Errno::NOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mounted = is_mount_root(fd.as_fd()).map_err(|e| MountError::Unmount {
            target: target.shown.to_owned(),
            errno: nix::Error::from_raw(e.raw_os_error()),
        })?;
        if !mounted {
            return Ok(());
        }
        umount2(&fd_path(fd.as_fd()), MntFlags::MNT_DETACH).map_err(|errno| {
            MountError::Unmount {
                target: target.shown.to_owned(),
                errno,
            }
        })?;
    }
    Err(MountError::StillMounted(target.shown.to_owned()))
}

/// Detaches every mount at or below `dir` (not `dir` itself), shallowest
/// first, so one detach takes the mounts below it along. The mount table
/// says where they are; each is opened again beneath `dir` without
/// following links, so a path a guest has changed meanwhile fails rather
/// than reaching a mount outside `dir`.
pub fn detach_all_beneath(dir: &Path) -> Result<(), MountError> {
    let dir_fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(errno) => {
            return Err(MountError::Open {
                path: dir.to_owned(),
                beneath: PathBuf::from("/"),
                errno,
            })
        }
    };
    for _ in 0..MAX_DETACHES {
        let points = super::mount_points_under(dir)?;
        let Some(shallowest) = points
            .iter()
            .filter(|p| p.as_path() != dir)
            .min_by_key(|p| p.components().count())
        else {
            return Ok(());
        };
        let relative = shallowest.strip_prefix(dir).unwrap_or(shallowest);
        let fd =
            open_beneath(dir_fd.as_fd(), relative, false).map_err(|errno| MountError::Open {
                path: shallowest.clone(),
                beneath: dir.to_owned(),
                errno,
            })?;
        let unmount_error = |errno| MountError::Unmount {
            target: shallowest.clone(),
            errno,
        };
        if !is_mount_root(fd.as_fd())
            .map_err(|e| unmount_error(nix::Error::from_raw(e.raw_os_error())))?
        {
            // The table names a mount the path no longer leads to: a
            // directory on the way was renamed. Acting on what the path
            // leads to now could be the wrong mount.
            return Err(MountError::StillMounted(shallowest.clone()));
        }
        umount2(&fd_path(fd.as_fd()), MntFlags::MNT_DETACH).map_err(unmount_error)?;
    }
    Err(MountError::StillMounted(dir.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_refuses_absolute_and_dotted_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        let fd = open_dir(dir.path()).expect("open");
        for bad in ["/etc", "../x", "a/../a", "./a"] {
            assert_eq!(
                open_beneath(fd.as_fd(), Path::new(bad), true).err(),
                Some(Errno::INVAL),
                "{bad}"
            );
        }
        assert!(open_beneath(fd.as_fd(), Path::new("a"), true).is_ok());
    }

    #[test]
    fn beneath_never_follows_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).expect("symlink");
        std::os::unix::fs::symlink(".", dir.path().join("here")).expect("symlink");
        let fd = open_dir(dir.path()).expect("open");
        for through in ["out/passwd", "here/out"] {
            assert_eq!(
                open_beneath(fd.as_fd(), Path::new(through), false).err(),
                Some(Errno::LOOP),
                "{through}"
            );
        }
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        let fd = open_dir(dir.path()).expect("open");
        let a = open_beneath(fd.as_fd(), Path::new("a"), true).expect("open a");
        assert_eq!(is_mount_root(a.as_fd()), Ok(false));
        let root = open_dir(Path::new("/")).expect("open /");
        assert_eq!(is_mount_root(root.as_fd()), Ok(true));
    }
}
