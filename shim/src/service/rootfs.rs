//! A container's files in the pod's share: its root filesystem
//! (containerd's snapshot mounts, mounted on `<id>/rootfs`) and its volumes
//! (`<id>/mounts/<n>`), which the guest reaches over virtio-fs. The
//! directories are the share's skeleton, which the guest cannot write
//! (see [`crate::share`]); the mounts are made through fds.
//!
//! Every host mount made here gets nosuid and nodev: the guest's root can
//! write setuid programs and device nodes into them, and the host must
//! never honour those.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::MsFlags;

use super::spec::SharedVolume;
use crate::mount::MountSource;
use crate::share::{EntryKind, Share, ShareError};

const HOST_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const ROOTFS: &str = "rootfs";
const VOLUMES: &str = "mounts";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("container id {0:?} cannot name a directory (want letters, digits, '_', '-', '.'; 1 to 76 of them)")]
    BadId(String),
    #[error("the container's directory {} already exists in the share (a container of that id is in this pod)", .0.display())]
    Exists(PathBuf),
    #[error("the container's root filesystem {} does not exist (containerd passed no rootfs mounts, so the spec's root.path must be a directory)", .0.display())]
    NoRootfs(PathBuf),
    #[error("volume source {}", .path.display())]
    VolumeSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("volume {name:?} is not a path in the container's directory")]
    BadVolumeName { name: String },
    #[error(transparent)]
    Share(#[from] ShareError),
}

/// The host side of one container's shared files. Removing it (or dropping
/// it) unmounts everything and deletes its entries in the share.
#[derive(Debug)]
pub struct ContainerFiles {
    share: Arc<Share>,
    id: PathBuf,
    removed: bool,
}

/// containerd's own rule for ids, which also keeps them one path component.
pub fn check_id(id: &str) -> Result<(), RootfsError> {
    let ok = (1..=76).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RootfsError::BadId(id.to_owned()))
    }
}

impl ContainerFiles {
    /// Makes `<id>/rootfs` in the share with the container's root
    /// filesystem on it, and its volumes. `host_root` is the spec's
    /// root.path (relative to `bundle` or absolute), used when
    /// `rootfs_mounts` is empty.
    pub fn prepare(
        share: &Arc<Share>,
        id: &str,
        rootfs_mounts: &[MountSource],
        bundle: &Path,
        host_root: &Path,
        volumes: &[SharedVolume],
    ) -> Result<Self, RootfsError> {
        check_id(id)?;
        let dir = PathBuf::from(id);
        match share.make(&dir, EntryKind::Dir) {
            Ok(()) => {}
            Err(ShareError::Exists(path)) => return Err(RootfsError::Exists(path)),
            Err(e) => return Err(e.into()),
        }
        // From here on, dropping `files` undoes everything.
        let files = ContainerFiles {
            share: share.clone(),
            id: dir,
            removed: false,
        };
        let rootfs = files.id.join(ROOTFS);
        share.make(&rootfs, EntryKind::Dir)?;
        if rootfs_mounts.is_empty() {
            let source = bundle.join(host_root);
            if !source.is_dir() {
                return Err(RootfsError::NoRootfs(source));
            }
            let bind = MountSource {
                typ: "bind".into(),
                source: source.display().to_string(),
                options: vec!["rbind".into()],
            };
            share.mount(&rootfs, &bind, HOST_MOUNT_FLAGS)?;
        } else {
            for m in rootfs_mounts {
                share.mount(&rootfs, m, HOST_MOUNT_FLAGS)?;
            }
        }
        if !volumes.is_empty() {
            share.make(&files.id.join(VOLUMES), EntryKind::Dir)?;
        }
        for volume in volumes {
            files.share_volume(volume)?;
        }
        Ok(files)
    }

    /// `<id>/rootfs` on the host.
    pub fn rootfs(&self) -> PathBuf {
        self.share.host_path(&self.id.join(ROOTFS))
    }

    fn share_volume(&self, volume: &SharedVolume) -> Result<(), RootfsError> {
        let relative = Path::new(&volume.shared_name);
        if relative.parent() != Some(Path::new(VOLUMES)) {
            return Err(RootfsError::BadVolumeName {
                name: volume.shared_name.clone(),
            });
        }
        let target = self.id.join(relative);
        let meta =
            fs::metadata(&volume.host_source).map_err(|source| RootfsError::VolumeSource {
                path: volume.host_source.clone(),
                source,
            })?;
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        self.share.make(&target, kind)?;
        let bind = MountSource {
            typ: "bind".into(),
            source: volume.host_source.display().to_string(),
            options: volume.options.clone(),
        };
        self.share.mount(&target, &bind, HOST_MOUNT_FLAGS)?;
        Ok(())
    }

    /// Unmounts the root filesystem and volumes and removes the entries.
    pub fn remove(mut self) -> Result<(), RootfsError> {
        self.removed = true;
        Ok(self.share.remove(&self.id)?)
    }
}

impl Drop for ContainerFiles {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.share.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for good in ["a", "abc-DEF_1.2", &"x".repeat(76)] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "-a", "a/b", "a b", "ä", &"x".repeat(77)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn a_missing_rootfs_is_refused_and_leaves_nothing() {
        assert!(nix::unistd::geteuid().is_root(), "run it as root");
        let sandbox = tempfile::tempdir().expect("tempdir");
        let bundle = tempfile::tempdir().expect("tempdir");
        let share = Arc::new(Share::create(&sandbox.path().join("shared")).expect("share"));
        let err =
            ContainerFiles::prepare(&share, "c1", &[], bundle.path(), Path::new("rootfs"), &[])
                .expect_err("no rootfs");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!share.path().join("c1").exists());
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn an_existing_container_dir_is_not_touched() {
        assert!(nix::unistd::geteuid().is_root(), "run it as root");
        let sandbox = tempfile::tempdir().expect("tempdir");
        let rootfs = tempfile::tempdir().expect("tempdir");
        let share = Arc::new(Share::create(&sandbox.path().join("shared")).expect("share"));
        let first = ContainerFiles::prepare(&share, "c1", &[], rootfs.path(), Path::new("."), &[])
            .expect("first");
        let err = ContainerFiles::prepare(&share, "c1", &[], rootfs.path(), Path::new("."), &[])
            .expect_err("exists");
        assert!(matches!(err, RootfsError::Exists(_)), "{err}");
        assert!(first.rootfs().is_dir());
        first.remove().expect("remove");
        assert!(!share.path().join("c1").exists());
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn a_volume_name_outside_mounts_is_refused() {
        assert!(nix::unistd::geteuid().is_root(), "run it as root");
        let sandbox = tempfile::tempdir().expect("tempdir");
        let rootfs = tempfile::tempdir().expect("tempdir");
        let share = Arc::new(Share::create(&sandbox.path().join("shared")).expect("share"));
        let volume = SharedVolume {
            host_source: rootfs.path().to_owned(),
            shared_name: "rootfs".into(),
            options: vec!["rbind".into()],
        };
        let err =
            ContainerFiles::prepare(&share, "c1", &[], rootfs.path(), Path::new("."), &[volume])
                .expect_err("bad name");
        assert!(matches!(err, RootfsError::BadVolumeName { .. }), "{err}");
        assert!(!share.path().join("c1").exists(), "nothing left");
    }
}
