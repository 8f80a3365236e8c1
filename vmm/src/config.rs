//! What the VMM needs to build a VM. Validation of user-facing
//! configuration files happens in the shim; this is the checked result.

use std::path::PathBuf;

/// A microVM to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// Initramfs (compressed cpio), if any.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line; the VMM adds what its devices need.
    pub kernel_params: String,
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the guest serial console goes; `None` discards it.
    pub serial_log: Option<SerialLogConfig>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// A host directory exported to the guest over virtio-fs, if any.
    pub shared_fs: Option<SharedFsConfig>,
    /// The pod's network interface, if it has one.
    pub net: Option<NetConfig>,
    /// What each thread's seccomp filter does with a syscall outside its
    /// allowlist (see [`crate::seccomp`]).
    pub seccomp: crate::SeccompMode,
}

/// virtio-net on a tap the VMM inherited as an open file descriptor: the
/// shim creates the tap in the pod's network namespace, so the VMM opens
/// no network device itself and needs no network privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The inherited tap fd (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`); the VMM
    /// takes it over when it builds the VM.
    pub tap_fd: i32,
    /// The guest NIC's MAC address: the pod interface's, so the CNI
    /// plugins' view (ARP, DHCP leases, port maps) holds for the guest.
    pub mac: [u8; 6],
    /// The pod interface's MTU.
    pub mtu: u16,
}

/// virtio-vsock with the hybrid unix-socket backend: host-initiated
/// connections are `CONNECT <port>\n` on `uds_path`; guest-initiated
/// connections to host port P go to `<uds_path>_P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// A host directory exported over virtio-fs. The guest mounts it with
/// `mount -t virtiofs <tag> <mountpoint>`; it sees that directory and
/// nothing outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFsConfig {
    /// The name the guest mounts: 1 to 36 bytes, no NUL.
    pub tag: String,
    /// The exported directory (must exist).
    pub dir: PathBuf,
    /// Most host fds the server holds for the guest (inodes it knows plus
    /// files it has open); beyond it the guest gets ENFILE. RLIMIT_NOFILE
    /// is set to this plus the VMM's own reserve.
    pub max_open_files: usize,
}

/// The guest console's log file. The guest writes the serial port at
/// will, so the log is rotated: when `path` would grow past half of
/// `max_bytes` it becomes `path.1` (replacing the previous one) and a new
/// `path` is started, so both together stay within `max_bytes` and the
/// newest output is always kept. A path that is not a regular file (a
/// terminal, `/dev/stdout`) is written as it is, without rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLogConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}
