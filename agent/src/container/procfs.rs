//! Trusting a procfs: what the agent and a container's init write or
//! reach through /proc must be the kernel's procfs, not whatever a
//! container mounted (or linked) where /proc is expected.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{fstat, fstatfs, openat2, Mode, OFlags, ResolveFlags, CWD};

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

    #[test]
    fn the_hosts_proc_is_a_procfs_root_and_its_subdirs_are_not() {
        check_root("/proc").unwrap();
        let e = check_root("/proc/sys").unwrap_err();
        assert!(e.to_string().contains("not the root"), "{e}");
        let e = check_root("/").unwrap_err();
        assert!(e.to_string().contains("not a procfs"), "{e}");
    }
}
