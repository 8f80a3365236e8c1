//! The guest's base filesystems. Each mount is skipped if something is
//! already mounted there, so a kernel that mounts devtmpfs itself
//! (CONFIG_DEVTMPFS_MOUNT) or a re-run of init does no harm.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MountError {
    #[error("creating mount point {target}: {source}")]
    MountPoint {
        target: &'static str,
        source: io::Error,
    },
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: nix::Error,
    },
}

pub struct MountSpec {
    /// What mount(2) gets as the source: the virtio-fs tag for virtiofs,
    /// else only a name shown in /proc/mounts.
    pub source: &'static str,
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Mode of the mount point if we have to create it.
    pub dir_mode: u32,
    /// Boot fails without it; optional ones only warn, so a kernel missing a
    /// feature still gives a guest that can report what is wrong.
    pub required: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounted first and alone: everything after it (the kernel command line,
/// the log level) needs it.
pub const PROC: MountSpec = MountSpec {
    source: "proc",
    fstype: "proc",
    target: "/proc",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    dir_mode: 0o555,
    required: true,
};

pub const DEV: MountSpec = MountSpec {
    source: "devtmpfs",
    fstype: "devtmpfs",
    target: "/dev",
    flags: MsFlags::MS_NOSUID,
    data: Some("mode=0755"),
    dir_mode: 0o755,
    required: true,
};

/// In order: parents before children.
pub const AFTER_DEV: &[MountSpec] = &[
    MountSpec {
        source: "devpts",
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        // Our own instance so container ptys never see the host-side ones;
        // ptmxmode lets any user open /dev/pts/ptmx.
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
        dir_mode: 0o755,
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        dir_mode: 0o1777,
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        fstype: "tmpfs",
        target: "/run",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        dir_mode: 0o755,
        required: true,
    },
    MountSpec {
        source: "cgroup2",
        fstype: "cgroup2",
        target: "/sys/fs/cgroup",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        dir_mode: 0o555,
        required: false,
    },
];

/// The host's shared directory (virtio-fs, tag `palisade`): container root
/// filesystems and volumes the shim places there. Optional: a VM started
/// without a shared directory (a bare boot check) still serves. No nosuid
/// or nodev: container images carry setuid programs, and the host side is
/// protected by the VMM (see palisade-vmm's virtio-fs passthrough docs).
pub const SHARED: MountSpec = MountSpec {
    source: "palisade",
    fstype: "virtiofs",
    target: "/run/palisade/shared",
    flags: MsFlags::empty(),
    data: None,
    dir_mode: 0o755,
    required: false,
};

pub const SYS: MountSpec = MountSpec {
    source: "sysfs",
    fstype: "sysfs",
    target: "/sys",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    dir_mode: 0o555,
    required: true,
};

/// The shared directory's readahead, in KiB: four full FUSE requests (the
/// VMM negotiates 1 MiB, 256 pages), which the guest keeps in flight
/// together (ASYNC_READ) and the VMM serves from one queue notification.
/// Linux gives a FUSE mount 128 KiB, so a sequential read of a container's
/// file costs a round trip to the VMM (a VM exit and an interrupt) per
/// 128 KiB. Measured in the nested test host (container-bench, 128 MiB,
/// 1 vCPU): 1024 KiB 256 MB/s, 4096 KiB 356 MB/s, 16384 KiB 320 MB/s.
/// Readahead only grows on sequential access, so random reads do not pay
/// for it.
pub const SHARED_READAHEAD_KB: u32 = 4096;

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Sets the readahead of the FUSE (virtio-fs) file system mounted at
/// `target`, through its backing device's sysfs entry. Does nothing if
/// what is mounted there is not FUSE (the share was not mounted).
pub fn set_fuse_readahead(target: &str, kb: u32) -> io::Result<bool> {
    let fs = nix::sys::statfs::statfs(target)?;
    if fs.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return Ok(false);
    }
    let dev = std::fs::metadata(target)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )?;
    Ok(true)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Mounted,
    AlreadyMounted,
}

pub fn mount_fs(spec: &MountSpec) -> Result<Outcome, MountError> {
    let target = Path::new(spec.target);
    match is_mount_point(target) {
        Ok(true) => return Ok(Outcome::AlreadyMounted),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(spec.dir_mode)
            .create(target)
            .map_err(|source| MountError::MountPoint {
                target: spec.target,
                source,
            })?,
        Err(source) => {
            return Err(MountError::MountPoint {
                target: spec.target,
                source,
            })
        }
    }
    mount(
        Some(spec.source),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    )
    .map_err(|source| MountError::Mount {
        fstype: spec.fstype,
        target: spec.target,
        source,
    })?;
    Ok(Outcome::Mounted)
}

/// A directory on a different device from its parent is a mount point. This
/// works before /proc exists, unlike reading mountinfo.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let dev = path.metadata()?.dev();
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(dev != parent.metadata()?.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_a_mount_point_and_its_subdirs_are_not() {
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap_or(false));
    }

    #[test]
    fn required_mounts_are_the_ones_boot_cannot_do_without() {
        let required: Vec<&str> = [&PROC, &SYS, &DEV]
            .into_iter()
            .chain(AFTER_DEV)
            .filter(|m| m.required)
            .map(|m| m.target)
            .collect();
        assert_eq!(required, ["/proc", "/sys", "/dev", "/run"]);
    }
}
