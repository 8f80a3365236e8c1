//! A container's files in the sandbox's shared directory: its root
//! filesystem (containerd's snapshot mounts, mounted on the host at
//! `shared/<id>/rootfs`) and its volumes (`shared/<id>/mounts/<n>`), which
//! the guest reaches over virtio-fs.
//!
//! Every host mount made here gets nosuid and nodev: the guest's root can
//! write setuid programs and device nodes into them, and the host must
//! never honour those.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::spec::SharedVolume;
use crate::mount::{self, MountError, MountSource};

const HOST_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("container id {0:?} cannot name a directory (want letters, digits, '_', '-', '.'; 1 to 76 of them)")]
    BadId(String),
    #[error("the container's directory {} already exists in the shared directory (a container of that id is in this pod)", .0.display())]
    Exists(PathBuf),
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the container's root filesystem {} does not exist (containerd passed no rootfs mounts, so the spec's root.path must be a directory)", .0.display())]
    NoRootfs(PathBuf),
    #[error("volume source {}", .path.display())]
    VolumeSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// The host side of one container's shared files. Removing it (or dropping
/// it) unmounts everything and deletes the directory.
#[derive(Debug)]
pub struct ContainerFiles {
    dir: PathBuf,
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
    /// Makes `shared/<id>/rootfs` with the container's root filesystem on
    /// it, and its volumes. `host_root` is the spec's root.path (relative
    /// to `bundle` or absolute), used when `rootfs_mounts` is empty.
    pub fn prepare(
        shared: &Path,
        id: &str,
        rootfs_mounts: &[MountSource],
        bundle: &Path,
        host_root: &Path,
        volumes: &[SharedVolume],
    ) -> Result<Self, RootfsError> {
        check_id(id)?;
        let dir = shared.join(id);
        match DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RootfsError::Exists(dir))
            }
            Err(source) => return Err(RootfsError::Create { path: dir, source }),
        }
        // From here on, dropping `files` undoes everything.
        let files = ContainerFiles {
            dir,
            removed: false,
        };
        let rootfs = files.rootfs();
        mkdir(&rootfs)?;
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
            mount::mount_on(&bind, &rootfs, HOST_MOUNT_FLAGS)?;
        } else {
            for m in rootfs_mounts {
                mount::mount_on(m, &rootfs, HOST_MOUNT_FLAGS)?;
            }
        }
        for volume in volumes {
            files.share_volume(volume)?;
        }
        Ok(files)
    }

    /// `shared/<id>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `shared/<id>/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn share_volume(&self, volume: &SharedVolume) -> Result<(), RootfsError> {
        let target = self.dir.join(&volume.shared_name);
        let meta =
            fs::metadata(&volume.host_source).map_err(|source| RootfsError::VolumeSource {
                path: volume.host_source.clone(),
                source,
            })?;
        if meta.is_dir() {
            mkdir(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            fs::File::create(&target).map_err(|source| RootfsError::Create {
                path: target.clone(),
                source,
            })?;
        }
        let bind = MountSource {
            typ: "bind".into(),
            source: volume.host_source.display().to_string(),
            options: volume.options.clone(),
        };
        mount::mount_on(&bind, &target, HOST_MOUNT_FLAGS)?;
        Ok(())
    }

    /// Unmounts the root filesystem and volumes and removes the directory.
    pub fn remove(mut self) -> Result<(), RootfsError> {
        self.removed = true;
        remove_dir(&self.dir)
    }
}

impl Drop for ContainerFiles {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_dir(&self.dir);
        }
    }
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|source| RootfsError::Create {
            path: path.to_owned(),
            source,
        })
}

fn remove_dir(dir: &Path) -> Result<(), RootfsError> {
    mount::unmount_all_under(dir)?;
    // Never recurse into something still mounted: that would delete the
    // container's snapshot or a volume's files on the host.
    if !mount::mount_points_under(dir)?.is_empty() {
        return Err(RootfsError::Mount(MountError::Unmount {
            target: dir.to_owned(),
            errno: nix::Error::EBUSY,
        }));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RootfsError::Create {
            path: dir.to_owned(),
            source,
        }),
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
    fn a_missing_rootfs_is_refused_and_leaves_nothing() {
        let shared = tempfile::tempdir().expect("tempdir");
        let bundle = tempfile::tempdir().expect("tempdir");
        let err = ContainerFiles::prepare(
            shared.path(),
            "c1",
            &[],
            bundle.path(),
            Path::new("rootfs"),
            &[],
        )
        .expect_err("no rootfs");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!shared.path().join("c1").exists());
    }

    #[test]
    fn an_existing_container_dir_is_not_touched() {
        let shared = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(shared.path().join("c1")).expect("mkdir");
        std::fs::write(shared.path().join("c1/keep"), b"x").expect("write");
        let err = ContainerFiles::prepare(
            shared.path(),
            "c1",
            &[],
            Path::new("/"),
            Path::new("x"),
            &[],
        )
        .expect_err("exists");
        assert!(matches!(err, RootfsError::Exists(_)), "{err}");
        assert!(shared.path().join("c1/keep").exists());
    }
}
