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
//! - Host file descriptors: every inode the guest knows is an `O_PATH` fd
//!   and every file it has open one more, for as long as the guest likes.
//!   [`super::open_files`] caps them per VMM (ENFILE for the guest beyond
//!   the cap) and [`limit_open_files`] sets RLIMIT_NOFILE just above the
//!   cap, so one pod cannot exhaust the host's file table.
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
use crate::arch::mptable::MAX_VCPUS;

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

/// Builds the passthrough file system and opens its root; it holds at most
/// `max_open_files` host fds for the guest (see [`super::open_files`]).
///
/// Side effect, from the library: the *process* umask becomes 0, so the
/// modes the guest asks for are applied exactly. The VMM creates its own
/// files (console log, vsock socket) with explicit modes or before any
/// virtio-fs device exists.
pub fn new_passthrough(root_dir: &str, max_open_files: usize) -> io::Result<SharedDirFs> {
    let fs: PassthroughFs<()> = PassthroughFs::new(passthrough_config(root_dir))?;
    fs.import()?;
    Ok(SharedDir::new(fs, max_open_files))
}

/// The default for [`crate::SharedFsConfig::max_open_files`]: how many
/// host fds the share may hold for the guest (inodes it knows plus files
/// it has open). A Linux guest keeps every inode it looked up until its
/// own memory runs short, and an image with a language runtime and its
/// packages holds tens of thousands of files, so a cap much below this
/// breaks a `find`, `du` or package install that walks one. Much more
/// would rarely be used by the default 256 MiB guest: its own cost is
/// about 1.1 KiB a FUSE inode and dentry (slab sizes), so 65 536 of them
/// are over a quarter of its memory and reclaim (which forgets them)
/// sets in around there. On the host each fd pins a `struct file` and
/// the dentry and inodes behind it, roughly 2.5 KiB of unreclaimable
/// kernel memory through overlayfs (slab sizes again, not measured), so a
/// hostile guest can hold about 160 MiB and 65 536 of `fs.file-max`
/// (2.4 M on a 24 GiB host) instead of 2^20 fds: dense hosts lower it in
/// configuration.toml.
pub const DEFAULT_MAX_OPEN_FILES: usize = 65_536;

/// The VMM's fds beyond those the share holds for the guest, which
/// RLIMIT_NOFILE must leave room for so the VMM never runs short itself:
/// - the vsock device's host connections, at most
///   [`vsock::backend::MAX_CONNECTIONS`], and its listening socket;
/// - one fd per vCPU, at most [`MAX_VCPUS`];
/// - [`OWN_FDS`] for the rest (see there).
///
/// [`vsock::backend::MAX_CONNECTIONS`]: crate::devices::virtio::vsock::backend::MAX_CONNECTIONS
pub const OPEN_FILE_RESERVE: usize =
    crate::devices::virtio::vsock::backend::MAX_CONNECTIONS + MAX_VCPUS as usize + OWN_FDS;

/// Everything else the VMM holds, with a wide margin for what libraries
/// open now and then: stdio (3), /dev/kvm and the VM (2), the epoll set,
/// signalfd and exit event (3), the serial interrupt and console log (2),
/// per virtio device its interrupt and queue events (vsock 4, virtio-fs
/// 3), the passthrough's root and /proc/self/fd (2), and the
/// passthrough's short-lived opens while it serves a request: LOOKUP opens
/// a name before it knows whether it holds the inode already, READDIR
/// looks up each entry, OPEN reopens an inode through /proc/self/fd,
/// CREATE opens the new file (requests are served one at a time, so a
/// handful at once). About 25 in all; 128 leaves room for more devices.
pub const OWN_FDS: usize = 128;

/// Sets the process's RLIMIT_NOFILE, soft and hard, to `max_open_files`
/// plus [`OPEN_FILE_RESERVE`]: the share's cap then fires (ENFILE for the
/// guest) before the VMM's own opens fail, and the process cannot hold
/// more fds than that even through a bug in the cap. Without the
/// privilege to raise the hard limit that far, the soft limit goes to the
/// hard one. Returns the soft limit now in force; the caller lowers the
/// share's cap to fit it.
pub fn limit_open_files(max_open_files: usize) -> io::Result<u64> {
    let wanted = (max_open_files as u64).saturating_add(OPEN_FILE_RESERVE as u64);
    let both = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: setrlimit reads one rlimit from a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &both) } == 0 {
        return Ok(wanted);
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Raising the hard limit (past fs.nr_open, or without
    // CAP_SYS_RESOURCE) was refused: take what the hard limit allows.
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max.min(wanted),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; moving the soft limit within the hard one is
    // always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(soft.rlim_cur)
}

/// The cap the share can keep under an RLIMIT_NOFILE of `limit`.
pub fn cap_within_limit(max_open_files: usize, limit: u64) -> usize {
    let room = limit.saturating_sub(OPEN_FILE_RESERVE as u64);
    max_open_files.min(usize::try_from(room).unwrap_or(usize::MAX))
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
