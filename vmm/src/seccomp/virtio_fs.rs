//! The virtio-fs worker's allowlist: the file syscalls fuse-backend-rs's
//! passthrough makes while serving FUSE requests (palisade serves them on
//! the event loop thread, so that thread's filter includes this list).
//!
//! It is long because serving a file system is the job. What it leaves
//! out matters as much:
//! - no path-based opens outside `openat` relative to a directory fd the
//!   server holds (and `/proc/self/fd`, through which it reopens inodes);
//! - no extended attributes (the passthrough runs with `xattr = false`),
//!   no file handles (`inode_file_handles = false`: no
//!   `open_by_handle_at`), no `mount`, no `chroot`, no `execve`;
//! - `setresuid`/`setresgid` only on the effective id (`-1` for the real
//!   and saved ids), the way the passthrough switches to the guest
//!   caller's ids around a create.

use super::rules::{when, Allow, Arg};
use super::{Rules, SeccompError};

/// `-1` as the kernel reads a `uid_t` argument (32 bits).
const UNCHANGED_ID: u64 = u32::MAX as u64;

pub fn rules() -> Result<Rules, SeccompError> {
    let effective_only = when(&[Arg::Eq(0, UNCHANGED_ID), Arg::Eq(2, UNCHANGED_ID)])?;
    Ok(Allow::default()
        .any(&[
            libc::SYS_openat,
            libc::SYS_close,
            libc::SYS_dup,
            libc::SYS_fcntl,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fstatfs,
            libc::SYS_getdents64,
            libc::SYS_lseek,
            libc::SYS_read,
            libc::SYS_pread64,
            libc::SYS_preadv,
            libc::SYS_preadv2,
            libc::SYS_readv,
            libc::SYS_write,
            libc::SYS_pwrite64,
            libc::SYS_pwritev,
            libc::SYS_pwritev2,
            libc::SYS_writev,
            libc::SYS_readlinkat,
            libc::SYS_mkdirat,
            libc::SYS_mknodat,
            libc::SYS_symlinkat,
            libc::SYS_linkat,
            libc::SYS_unlinkat,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            libc::SYS_fchownat,
            libc::SYS_fchown,
            libc::SYS_utimensat,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_umask,
            // The passthrough checks and toggles CAP_FSETID around writes.
            libc::SYS_capget,
            libc::SYS_capset,
            libc::SYS_getuid,
            libc::SYS_getgid,
        ])
        .with(libc::SYS_setresuid, vec![effective_only.clone()])
        .with(libc::SYS_setresgid, vec![effective_only])
        .build())
}
