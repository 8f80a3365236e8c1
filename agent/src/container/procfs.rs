//! Trusting a procfs: what the agent and a container's init write or
//! reach through /proc must be the kernel's procfs, not whatever a
//! container mounted (or linked) where /proc is expected.
//!
//! CVE-2025-52881: a runtime that writes `/proc/sys/...` or
//! `/proc/self/...` by name, after the container's mounts are in place,
//! writes wherever a container-controlled mount over /proc (or a part of
//! it, or a shared volume bound there) sends it: a sibling sharing the
//! volume could turn an innocent sysctl into a write to
//! /proc/sys/kernel/core_pattern. So the container's init writes through
//! `ProcFs`: a private procfs instance (fsopen), never attached to any
//! path, checked to be a procfs root, and opened beneath with
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV, so no mount
//! and no magic link can redirect a write.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, fstatfs, openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsmount, fsopen, open_tree, FsMountFlags, FsOpenFlags, MountAttrFlags,
    OpenTreeFlags,
};

/// A procfs of the calling process's pid namespace that no container can
/// have mounted anything on.
pub struct ProcFs(OwnedFd);

impl ProcFs {
    /// A new, private procfs instance (fsopen + fsmount, Linux 5.2): it
    /// is attached nowhere, so nothing can be mounted on or in it. Where
    /// the kernel refuses that, a detached copy (open_tree) of the /proc
    /// of the calling process, taken while it is the guest's, which is
    /// verified the same way.
    pub fn private() -> io::Result<Self> {
        let fd = match new_instance() {
            Ok(fd) => fd,
            Err(new) => copy_of_proc().map_err(|copy| {
                io::Error::other(format!(
                    "no procfs to write through: a new instance: {new}; a copy of /proc: {copy}"
                ))
            })?,
        };
        check_root_fd(fd.as_fd())?;
        Ok(Self(fd))
    }

    /// Writes `value` to `rel` (e.g. `sys/net/ipv4/ip_forward`,
    /// `self/oom_score_adj`) under this procfs. `self` is procfs's own
    /// plain link (not a magic one), followed beneath the root; nothing
    /// else can lead out of it.
    pub fn write(&self, rel: &Path, value: &[u8]) -> io::Result<()> {
        let fd = openat2(
            &self.0,
            rel,
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
        )
        .map_err(io::Error::from)?;
        let fs = fstatfs(&fd).map_err(io::Error::from)?;
        if fs.f_type as i64 != PROC_SUPER_MAGIC {
            return Err(io::Error::other("the file opened is not on procfs"));
        }
        File::from(fd).write_all(value)
    }
}

fn new_instance() -> io::Result<OwnedFd> {
    let fs = fsopen("proc", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}

fn copy_of_proc() -> io::Result<OwnedFd> {
    let dir = open_dir(Path::new("/proc"))?;
    check_root_fd(dir.as_fd())?;
    Ok(open_tree(
        &dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?)
}

/// statfs's f_type of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// The inode number of every procfs instance's root directory.
const PROC_ROOT_INO: u64 = 1;

/// Checks that `fd` is open on the root directory of a procfs: a procfs
/// (statfs magic), and its root (inode 1), not some directory of one (a
/// bind of /proc/<pid> or /proc/sys over /proc would pass the first test).
pub fn check_root_fd(fd: BorrowedFd) -> io::Result<()> {
    let fs = fstatfs(fd).map_err(io::Error::from)?;
    if fs.f_type as i64 != PROC_SUPER_MAGIC {
        return Err(io::Error::other(format!(
            "not a procfs (filesystem magic {:#x})",
            fs.f_type
        )));
    }
    let st = fstat(fd).map_err(io::Error::from)?;
    if st.st_ino != PROC_ROOT_INO {
        return Err(io::Error::other(format!(
            "a procfs directory (inode {}), not the root of one",
            st.st_ino
        )));
    }
    Ok(())
}

/// Checks that `path` (not followed if a link) is a procfs root.
pub fn check_root(path: impl AsRef<Path>) -> io::Result<()> {
    check_root_fd(open_dir(path.as_ref())?.as_fd())
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    openat2(
        CWD,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        io::Error::other(format!(
            "opening {}: {}",
            path.display(),
            io::Error::from(e)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that a link or mount would redirect out of procfs fails.
    #[test]
    #[ignore = "needs root (fsopen of a procfs, writes oom_score_adj): cargo test -p palisade-agent -- --ignored"]
    fn writes_go_to_a_private_procfs_and_stay_in_it() {
        let proc = ProcFs::private().unwrap();
        let before = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
        proc.write(Path::new("self/oom_score_adj"), b"7").unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/self/oom_score_adj")
                .unwrap()
                .trim(),
            "7"
        );
        proc.write(Path::new("self/oom_score_adj"), before.trim().as_bytes())
            .unwrap();
        // Magic links (/proc/self/cwd, fds) are not followed...
        let e = proc.write(Path::new("self/cwd/x"), b"").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        // ...nor is anything outside the procfs reachable.
        assert!(proc.write(Path::new("../etc/hostname"), b"").is_err());
        assert!(proc.write(Path::new("/etc/hostname"), b"").is_err());
    }

    #[test]
    fn the_hosts_proc_is_a_procfs_root_and_its_subdirs_are_not() {
        check_root("/proc").unwrap();
        let e = check_root("/proc/sys").unwrap_err();
        assert!(e.to_string().contains("not the root"), "{e}");
        let e = check_root("/").unwrap_err();
        assert!(e.to_string().contains("not a procfs"), "{e}");
    }
}
