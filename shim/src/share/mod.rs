//! A pod's share: the tree its guest sees over virtio-fs as
//! `/run/palisade/shared`, with a directory per container (`<id>/rootfs`,
//! `<id>/mounts/<n>`) on which the shim mounts the container's root
//! filesystem and volumes.
//!
//! # Why it is built this way
//!
//! The guest writes the share through the VMM, as root. If any directory
//! the shim creates or mounts on by path were guest-writable, the guest
//! could swap a path component for a symlink between the shim's check and
//! its mount, and the shim (root, in the host's mount namespace) would
//! mount a volume over `/etc/cron.d` or truncate a host file (Kata's
//! CVE-2020-2026). Walking a guest-writable tree with fds is possible but
//! leaves every step to get right; this design leaves the guest nothing
//! to race:
//!
//! - The share's own tree, the *skeleton*, lives on a small tmpfs of the
//!   sandbox's own, limited in size and inodes ([`TMPFS_OPTIONS`]): it can
//!   never fill the host's `/run`, whatever goes wrong.
//! - The guest sees that tmpfs only through a read-only mount at
//!   `<sandbox>/shared`, the *view*, the one directory the VMM exports. The
//!   guest cannot create, rename or remove anything in it; container root
//!   filesystems and volumes are mounted on top of the view, each a mount
//!   of its own, writable or not as containerd asks.
//! - The shim writes the skeleton through a second, writable mount of the
//!   same tmpfs that is detached from every tree and held only as an fd:
//!   no path leads to it, and since all mounts are made on the view, it
//!   has nothing mounted below it, so removing skeleton entries can never
//!   reach into a container's files.
//! - Mount targets are opened beneath the view's fd without following
//!   links and without crossing mount points, so every directory the shim
//!   resolves is on the tmpfs the guest cannot write; mounting and
//!   unmounting then go through the opened fd ([`crate::mount::at`]).

use std::ffi::OsStr;
use std::fs::DirBuilder;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use rustix::fs::{openat, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{open_tree, OpenTreeFlags};

use crate::mount::at::{self, Target};
use crate::mount::{MountError, MountSource};

/// The skeleton's tmpfs: a few inodes per container are all it holds
/// (`<id>`, `rootfs`, `mounts`, one per volume), and no file data but the
/// empty files that file volumes are mounted on. 4096 inodes are room for
/// about a thousand containers in one pod.
pub const TMPFS_OPTIONS: &str = "size=1m,nr_inodes=4096,mode=0755";
/// What `df` and the mount table show as the tmpfs's source.
const TMPFS_SOURCE: &str = "palisade-share";
/// The view is also noexec: nothing on the skeleton is a program; the
/// mounts on top of it keep their own flags.
const VIEW_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
/// Deepest skeleton path: `<id>/mounts/<n>` and a margin.
const MAX_DEPTH: usize = 8;
const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot create the share's mount point {}", .path.display())]
    MountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the share at {} ({step}): {errno}", .path.display())]
    Setup {
        path: PathBuf,
        step: &'static str,
        errno: Errno,
    },
    #[error("{} already exists in the share", .0.display())]
    Exists(PathBuf),
    #[error("{path:?} cannot name an entry of the share (one or more plain path components, no '.' or '..')")]
    BadPath { path: PathBuf },
    #[error("cannot {what} {} in the share: {errno}", .path.display())]
    Skeleton {
        what: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Whether a skeleton entry is a directory or a file to mount a file on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// One sandbox's share. Dropping it detaches the view, with everything
/// still mounted on it.
#[derive(Debug)]
pub struct Share {
    view_path: PathBuf,
    /// The view's root (`O_PATH`).
    view: OwnedFd,
    /// The root of the detached, writable mount of the skeleton.
    skeleton: OwnedFd,
    /// The directory the view is mounted in (the sandbox directory).
    parent: OwnedFd,
}

fn setup_error<'p>(path: &'p Path, step: &'static str) -> impl Fn(Errno) -> ShareError + 'p {
    move |errno| ShareError::Setup {
        path: path.to_owned(),
        step,
        errno,
    }
}

fn from_nix(e: nix::Error) -> Errno {
    Errno::from_raw_os_error(e as i32)
}

impl Share {
    /// Makes the share at `view_path`, a new directory in a sandbox
    /// directory only the shim writes. On error nothing is left mounted.
    pub fn create(view_path: &Path) -> Result<Self, ShareError> {
        DirBuilder::new()
            .mode(0o755)
            .create(view_path)
            .map_err(|source| ShareError::MountPoint {
                path: view_path.to_owned(),
                source,
            })?;
        let made = Self::mount_tmpfs(view_path);
        if made.is_err() {
            let _ = umount2(view_path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
            let _ = std::fs::remove_dir(view_path);
        }
        made
    }

    fn mount_tmpfs(view_path: &Path) -> Result<Self, ShareError> {
        let parent_path = view_path.parent().unwrap_or(Path::new("/"));
        let parent =
            at::open_dir(parent_path).map_err(setup_error(view_path, "open its parent"))?;
        let mount_point = at::open_beneath(
            parent.as_fd(),
            Path::new(view_path.file_name().unwrap_or(OsStr::new("."))),
            true,
        )
        .map_err(setup_error(view_path, "open the mount point"))?;
        let point_path = at::fd_path(mount_point.as_fd());
        mount(
            Some(TMPFS_SOURCE),
            &point_path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(TMPFS_OPTIONS),
        )
        .map_err(|e| setup_error(view_path, "mount its tmpfs")(from_nix(e)))?;
        let view = at::open_dir(view_path).map_err(setup_error(view_path, "open the tmpfs"))?;
        let view_at = at::fd_path(view.as_fd());
        // Private while the writable clone is made, so the clone joins no
        // peer group: mounts on the view must never show up below it.
        mount(
            None::<&str>,
            &view_at,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| setup_error(view_path, "make it private")(from_nix(e)))?;
        let skeleton = open_tree(
            view.as_fd(),
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
        .map_err(setup_error(view_path, "clone a writable mount"))?;
        // Shared again, in a peer group of its own: a copy of the view in
        // another mount namespace (the VMM's jail) can follow its mounts.
        mount(
            None::<&str>,
            &view_at,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| setup_error(view_path, "make it shared")(from_nix(e)))?;
        mount(
            None::<&str>,
            &view_at,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | VIEW_FLAGS,
            None::<&str>,
        )
        .map_err(|e| setup_error(view_path, "make it read-only")(from_nix(e)))?;
        let fs = rustix::fs::fstatfs(&view).map_err(setup_error(view_path, "check it"))?;
        if fs.f_type as i64 != TMPFS_MAGIC {
            return Err(setup_error(view_path, "check it is the tmpfs")(
                Errno::INVAL,
            ));
        }
        Ok(Share {
            view_path: view_path.to_owned(),
            view,
            skeleton,
            parent,
        })
    }

    /// The view on the host: what the VMM exports.
    pub fn path(&self) -> &Path {
        &self.view_path
    }

    /// `relative` in the view, as a host path (for messages and tools).
    pub fn host_path(&self, relative: &Path) -> PathBuf {
        self.view_path.join(relative)
    }

    /// Creates a directory or an empty file in the skeleton; its parent
    /// must exist. An existing entry is [`ShareError::Exists`].
    pub fn make(&self, relative: &Path, kind: EntryKind) -> Result<(), ShareError> {
        let (parent, name) = self.skeleton_parent(relative)?;
        let result = match kind {
            EntryKind::Dir => rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)),
            EntryKind::File => openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) => Err(ShareError::Exists(self.host_path(relative))),
            Err(errno) => Err(ShareError::Skeleton {
                what: "create",
                path: self.host_path(relative),
                errno,
            }),
        }
    }

    /// Mounts `m` on the skeleton entry `relative`, as seen in the view.
    pub fn mount(
        &self,
        relative: &Path,
        m: &MountSource,
        extra: MsFlags,
    ) -> Result<(), ShareError> {
        let (parent, name) = self.view_parent(relative)?;
        let shown = self.host_path(relative);
        at::mount_at(
            &Target {
                parent: parent.as_fd(),
                name,
                shown: &shown,
            },
            m,
            extra,
        )?;
        Ok(())
    }

    /// Detaches whatever is mounted on `relative` in the view.
    pub fn unmount(&self, relative: &Path) -> Result<(), ShareError> {
        let (parent, name) = match self.view_parent(relative) {
            Ok(p) => p,
            Err(ShareError::Skeleton {
                errno: Errno::NOENT,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let shown = self.host_path(relative);
        at::detach_at(&Target {
            parent: parent.as_fd(),
            name,
            shown: &shown,
        })?;
        Ok(())
    }

    /// Removes the skeleton entry `relative` and everything below it,
    /// detaching whatever is mounted on any of them first. Not there is
    /// success.
    pub fn remove(&self, relative: &Path) -> Result<(), ShareError> {
        check_relative(relative)?;
        self.remove_entry(relative, 0)
    }

    fn remove_entry(&self, relative: &Path, depth: usize) -> Result<(), ShareError> {
        let (parent, name) = self.skeleton_parent(relative)?;
        let st = match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(errno) => {
                return Err(ShareError::Skeleton {
                    what: "look at",
                    path: self.host_path(relative),
                    errno,
                })
            }
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir {
            if depth >= MAX_DEPTH {
                return Err(ShareError::BadPath {
                    path: relative.to_owned(),
                });
            }
            for child in self.children(&parent, name, relative)? {
                self.remove_entry(&relative.join(child), depth + 1)?;
            }
        }
        self.unmount(relative)?;
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&parent, name, flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(ShareError::Skeleton {
                what: "remove",
                path: self.host_path(relative),
                errno,
            }),
        }
    }

    fn children(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        relative: &Path,
    ) -> Result<Vec<std::ffi::OsString>, ShareError> {
        use std::os::unix::ffi::OsStrExt;
        let error = |errno| ShareError::Skeleton {
            what: "list",
            path: self.host_path(relative),
            errno,
        };
        let dir = openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(error)?;
        let mut names = Vec::new();
        for entry in Dir::read_from(&dir).map_err(error)? {
            let entry = entry.map_err(error)?;
            let bytes = entry.file_name().to_bytes();
            if bytes != b"." && bytes != b".." {
                names.push(OsStr::from_bytes(bytes).to_owned());
            }
        }
        Ok(names)
    }

    /// Detaches the view with everything mounted on it. Later calls do
    /// nothing.
    pub fn close(&self) -> Result<(), ShareError> {
        let name = self.view_path.file_name().unwrap_or(OsStr::new("."));
        at::detach_at(&Target {
            parent: self.parent.as_fd(),
            name,
            shown: &self.view_path,
        })?;
        Ok(())
    }

    /// The parent of `relative` in the skeleton, and its last component.
    fn skeleton_parent<'p>(&self, relative: &'p Path) -> Result<(OwnedFd, &'p OsStr), ShareError> {
        self.parent_in(self.skeleton.as_fd(), relative)
    }

    /// The parent of `relative` in the view, reached without crossing a
    /// mount: it is on the tmpfs the guest cannot write.
    fn view_parent<'p>(&self, relative: &'p Path) -> Result<(OwnedFd, &'p OsStr), ShareError> {
        self.parent_in(self.view.as_fd(), relative)
    }

    fn parent_in<'p>(
        &self,
        root: BorrowedFd<'_>,
        relative: &'p Path,
    ) -> Result<(OwnedFd, &'p OsStr), ShareError> {
        let name = check_relative(relative)?;
        let parent = relative.parent().unwrap_or(Path::new(""));
        let fd = if parent.as_os_str().is_empty() {
            root.try_clone_to_owned()
                .map_err(|e| ShareError::Skeleton {
                    what: "open",
                    path: self.view_path.clone(),
                    errno: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
                })?
        } else {
            at::open_beneath(root, parent, true).map_err(|errno| ShareError::Skeleton {
                what: "open",
                path: self.host_path(parent),
                errno,
            })?
        };
        Ok((fd, name))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            log::warn!("detaching the share: {}", crate::error_chain(&e));
        }
    }
}

/// `relative`'s last component, if it is one or more plain components.
fn check_relative(relative: &Path) -> Result<&OsStr, ShareError> {
    let plain = !relative.as_os_str().is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    match (plain, relative.file_name()) {
        (true, Some(name)) => Ok(name),
        _ => Err(ShareError::BadPath {
            path: relative.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_name_entries() {
        for good in ["a", "a/b", "c1/mounts/0"] {
            assert!(check_relative(Path::new(good)).is_ok(), "{good}");
        }
        for bad in ["", "/a", "a/../b", "..", "./a"] {
            assert!(check_relative(Path::new(bad)).is_err(), "{bad}");
        }
    }

    // The rest needs root (mounts); tests/run-all runs them with
    // `--ignored` as root.

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts file systems: run it as root"
        );
    }

    fn is_mounted(path: &Path) -> bool {
        crate::mount::mount_points_under(path)
            .expect("mountinfo")
            .iter()
            .any(|p| p == path)
    }

    fn bind(source: &Path) -> MountSource {
        MountSource {
            typ: "bind".into(),
            source: source.display().to_string(),
            options: vec!["rbind".into()],
        }
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn the_guest_view_is_read_only_and_limited() {
        require_root();
        let sandbox = tempfile::tempdir().expect("tempdir");
        let view = sandbox.path().join("shared");
        let share = Share::create(&view).expect("create");
        assert!(is_mounted(&view));
        // What the guest does through the VMM, which exports the view.
        let err = std::fs::write(view.join("x"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        share.make(Path::new("c1"), EntryKind::Dir).expect("mkdir");
        assert!(view.join("c1").is_dir(), "the view shows the skeleton");
        for attack in [
            std::os::unix::fs::symlink("/etc", view.join("c1/rootfs")),
            std::fs::rename(view.join("c1"), view.join("c2")),
            std::fs::remove_dir(view.join("c1")),
        ] {
            let err = attack.expect_err("read-only");
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        }
        let fs = nix::sys::statfs::statfs(&view).expect("statfs");
        assert!(
            fs.blocks() * fs.block_size() as u64 <= 1 << 20,
            "size-limited"
        );
        assert!(fs.files() <= 4096, "inode-limited: {}", fs.files());
        assert!(matches!(
            share.make(Path::new("c1"), EntryKind::Dir),
            Err(ShareError::Exists(_))
        ));
        drop(share);
        assert!(!is_mounted(&view), "dropping the share detaches it");
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn volumes_mount_on_the_view_and_removal_spares_their_files() {
        require_root();
        let sandbox = tempfile::tempdir().expect("tempdir");
        let volume = tempfile::tempdir().expect("tempdir");
        std::fs::write(volume.path().join("keep"), b"data").expect("write");
        let file_volume = volume.path().join("file");
        std::fs::write(&file_volume, b"file data").expect("write");
        let view = sandbox.path().join("shared");
        let share = Share::create(&view).expect("create");
        for dir in ["c1", "c1/mounts", "c1/mounts/0"] {
            share.make(Path::new(dir), EntryKind::Dir).expect(dir);
        }
        share
            .make(Path::new("c1/mounts/1"), EntryKind::File)
            .expect("file");
        share
            .mount(
                Path::new("c1/mounts/0"),
                &bind(volume.path()),
                MsFlags::MS_NODEV,
            )
            .expect("mount dir");
        share
            .mount(
                Path::new("c1/mounts/1"),
                &bind(&file_volume),
                MsFlags::MS_NODEV,
            )
            .expect("mount file");
        // The mounts are writable even though the view is not.
        std::fs::write(view.join("c1/mounts/0/new"), b"guest").expect("write through");
        assert!(volume.path().join("new").exists());
        assert_eq!(
            std::fs::read(view.join("c1/mounts/1")).expect("read"),
            b"file data"
        );
        share.remove(Path::new("c1")).expect("remove");
        assert!(!view.join("c1").exists());
        assert!(!is_mounted(&view.join("c1/mounts/0")));
        assert!(
            volume.path().join("keep").exists(),
            "the volume's files stay"
        );
        assert_eq!(std::fs::read(&file_volume).expect("read"), b"file data");
        share
            .remove(Path::new("c1"))
            .expect("removing twice is fine");
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn a_mount_target_through_a_mount_is_refused() {
        require_root();
        let sandbox = tempfile::tempdir().expect("tempdir");
        let volume = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(volume.path().join("sub")).expect("mkdir");
        let view = sandbox.path().join("shared");
        let share = Share::create(&view).expect("create");
        share.make(Path::new("v"), EntryKind::Dir).expect("mkdir");
        share
            .mount(Path::new("v"), &bind(volume.path()), MsFlags::MS_NODEV)
            .expect("mount");
        // `v/sub` lies on the volume, which the guest can write: the shim
        // must never resolve a target through it.
        let err = share
            .mount(Path::new("v/sub"), &bind(volume.path()), MsFlags::MS_NODEV)
            .expect_err("through a mount");
        assert!(
            err.to_string().contains("Invalid cross-device link")
                || err.to_string().contains("cross-device"),
            "{err}"
        );
        assert!(!is_mounted(&volume.path().join("sub")));
    }

    #[test]
    #[ignore = "needs root (mounts): tests/run-all runs it"]
    fn removing_a_sandbox_never_follows_a_planted_symlink() {
        require_root();
        // An old-style sandbox whose share the guest could write: the
        // guest renamed the container's directory and left a symlink to a
        // host mount in its place.
        let root = tempfile::tempdir().expect("tempdir");
        let sandbox = root.path().join("sb");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(sandbox.join("shared/c1/rootfs")).expect("mkdir");
        std::fs::create_dir_all(outside.join("rootfs")).expect("mkdir");
        let tmpfs = |at: &Path| {
            mount(
                Some("test"),
                at,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .expect("mount tmpfs")
        };
        tmpfs(&sandbox.join("shared/c1/rootfs"));
        tmpfs(&outside.join("rootfs"));
        std::fs::rename(sandbox.join("shared/c1"), sandbox.join("shared/moved")).expect("rename");
        std::os::unix::fs::symlink(&outside, sandbox.join("shared/c1")).expect("symlink");
        crate::mount::at::detach_all_beneath(&sandbox).expect("detach");
        assert!(!is_mounted(&sandbox.join("shared/moved/rootfs")));
        // `shared/c1/rootfs` now leads there: it must not be touched.
        assert!(
            is_mounted(&outside.join("rootfs")),
            "the mount outside the sandbox stays"
        );
        umount2(&outside.join("rootfs"), MntFlags::MNT_DETACH).expect("cleanup");
    }
}
