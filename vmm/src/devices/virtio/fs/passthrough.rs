//! The host side of virtio-fs: fuse-backend-rs's `PassthroughFs`, rooted
//! at the shared directory, and the choices that keep a hostile guest
//! inside it.
//!
//! # What the guest can reach
//!
//! Only the shared directory's tree:
//! - Every name the guest sends is one path component (`/` is refused with
//!   EINVAL) opened with `openat(parent_fd, name, O_PATH | O_NOFOLLOW)`
//!   relative to a directory fd the server already holds. The host never
//!   follows a symlink: `LOOKUP` of a symlink yields the link itself,
//!   `READLINK` hands its text to the guest, which resolves it in its own
//!   namespace, and `OPEN` of a symlink (or of any inode that is not a
//!   regular file or directory) fails with EBADF, so an absolute symlink
//!   to `/etc/passwd` never opens the host's file.
//! - `..` looked up at the root is the root itself. Below the root, `..`
//!   is the real parent, which is inside the tree (mount points included:
//!   the kernel's `..` at a mount root goes to the mount point's parent).
//!   This holds as long as the *host* does not move a directory the guest
//!   has looked up out of the tree; the shim never does.
//! - The guest can only name inodes it got from a lookup, so `LINK` can
//!   only make new names for files already inside the tree.
//! - File handles (`name_to_handle_at`/`open_by_handle_at`, which bypass
//!   the directory tree entirely) are off: `inode_file_handles = false`,
//!   inodes are held as `O_PATH` fds.
//!
//! # What the guest can do to the host
//!
//! - The VMM runs as root, and requests carry the guest caller's uid/gid:
//!   the server switches its *thread's* effective uid/gid to them
//!   (`setresuid`/`setresgid` syscalls, not the process-wide libc calls)
//!   while creating files, so files made by the guest's root are owned by
//!   root on the host, and files made by guest uid 1000 by host uid 1000.
//!   There is no id mapping: the share must only hold pod data.
//! - Guest root can therefore make setuid-root executables and
//!   world-writable files in the share. The share must not be reachable by
//!   unprivileged host users (the sandbox directory is 0700) and should be
//!   mounted `nosuid,nodev` where the shim mounts things into it.
//! - Device nodes: the VMM drops CAP_MKNOD ([`restrict_thread_capabilities`])
//!   so `MKNOD` of a block or character device fails with EPERM (overlayfs
//!   whiteouts, character device 0:0, need no capability and still work);
//!   FIFOs and sockets can be created, but the server never opens them
//!   (see `OPEN` above), so a FIFO cannot block the VMM.
//! - Extended attributes are off, so the guest cannot set
//!   `security.capability` (file capabilities) or `trusted.*` attributes;
//!   CAP_SETFCAP is dropped as well.
//!
//! # Cache policy: `Auto`, write-through
//!
//! The share holds container root filesystems that the guest writes and
//! the host reads (snapshots, logs) and occasionally changes (the shim
//! mounts a new container's rootfs while the guest runs).
//! - `writeback: false`: every guest write reaches the host file before the
//!   guest's `write` returns, so the host never sees stale data and a VMM
//!   crash loses nothing the guest thought written.
//! - `CachePolicy::Auto` (close-to-open): the guest caches file data while
//!   a file is open and revalidates on open. `Never` would add nothing for
//!   the direction that matters (writes are write-through anyway) but makes
//!   every open `FOPEN_DIRECT_IO`, which refuses shared writable `mmap`
//!   (databases, sqlite) before Linux 6.6 and rereads every executable
//!   page from the host: correctness would get worse, not better.
//!   `Always`/`Metadata` assume the guest is the only writer, which the
//!   shim's mounts contradict.
//! - Attribute and entry timeouts of 1 s (what virtiofsd uses for
//!   `cache=auto`): a change the host makes behind the guest's back (a new
//!   mount under the share) shows within a second; failed lookups are not
//!   cached at all.
//! - `no_open: false` (needs `Always` anyway) and no DAX: every open goes
//!   through the server's checks.

use std::io;
use std::time::Duration;

use caps::{CapSet, Capability};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::shared_dir::SharedDir;

/// What [`new_passthrough`] returns: the passthrough (its bitmap type
/// matching guest memory without dirty tracking) with the connection
/// options of [`super::shared_dir`].
pub type SharedDirFs = SharedDir;

/// How long the guest may trust attributes and names (see the module docs).
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// The passthrough configuration, every security-relevant field spelled
/// out rather than left to the library's defaults.
pub fn passthrough_config(root_dir: &str) -> Config {
    Config {
        root_dir: root_dir.to_owned(),
        cache_policy: CachePolicy::Auto,
        writeback: false,
        attr_timeout: CACHE_TIMEOUT,
        entry_timeout: CACHE_TIMEOUT,
        dir_attr_timeout: None,
        dir_entry_timeout: None,
        xattr: false,
        // Import the root when the device is made, so a bad directory
        // fails at start-up, not when the guest mounts.
        do_import: true,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        inode_file_handles: false,
        no_readdir: false,
        seal_size: false,
        enable_mntid: false,
        dax_file_size: None,
        use_host_ino: false,
        allow_direct_io: true,
    }
}

/// Builds the passthrough file system and opens its root.
///
/// Side effect, from the library: the *process* umask becomes 0, so the
/// modes the guest asks for are applied exactly. The VMM creates its own
/// files (console log, vsock socket) before any virtio-fs device exists.
pub fn new_passthrough(root_dir: &str) -> io::Result<SharedDirFs> {
    let fs: PassthroughFs<()> = PassthroughFs::new(passthrough_config(root_dir))?;
    fs.import()?;
    Ok(SharedDir::new(fs))
}

/// How many files the VMM may hold open: every inode the guest has looked
/// up is an `O_PATH` fd until the guest forgets it (and the guest keeps
/// what it has cached), plus one per open file. A container image has
/// thousands of files; at the usual soft limit of 1024 the guest's creates
/// and lookups start failing with EMFILE after about a thousand, as they
/// did in the container benchmark. virtiofsd raises its limit the same way.
pub const OPEN_FILE_LIMIT: u64 = 1 << 20;
/// Below this the limit is worth a warning: a big image can exhaust it.
pub const OPEN_FILE_LIMIT_WARN: u64 = 1 << 16;

/// Raises the process's RLIMIT_NOFILE towards [`OPEN_FILE_LIMIT`] (capped
/// by fs.nr_open): both limits if allowed (root, CAP_SYS_RESOURCE), else
/// the soft limit to the hard one. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(OPEN_FILE_LIMIT);
    let wanted = OPEN_FILE_LIMIT.min(nr_open).max(lim.rlim_max);
    if lim.rlim_cur >= wanted {
        return Ok(lim.rlim_cur);
    }
    let both = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: setrlimit reads one rlimit from a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &both) } == 0 {
        return Ok(wanted);
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; raising the soft limit to the hard one is always
    // allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_max)
}

/// Capabilities the VMM's root never needs for serving a share and that a
/// guest could turn against the host: creating device nodes in a host
/// directory (CAP_MKNOD), and setting file capabilities (CAP_SETFCAP).
const DROPPED: [Capability; 2] = [Capability::CAP_MKNOD, Capability::CAP_SETFCAP];

/// Drops [`DROPPED`] from the calling thread's effective and permitted
/// sets. Capabilities are per thread: call this on the thread that serves
/// virtio-fs before it starts other threads (they inherit the sets). Not
/// having a capability in the first place is success.
pub fn restrict_thread_capabilities() -> io::Result<()> {
    for cap in DROPPED {
        for set in [CapSet::Effective, CapSet::Permitted] {
            caps::drop(None, set, cap)
                .map_err(|e| io::Error::other(format!("cannot drop {cap} ({set:?}): {e}")))?;
        }
    }
    Ok(())
}
