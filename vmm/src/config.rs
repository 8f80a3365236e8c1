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
    pub serial_log: Option<PathBuf>,
    /// The virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// A host directory exported to the guest over virtio-fs, if any.
    pub shared_fs: Option<SharedFsConfig>,
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
}
