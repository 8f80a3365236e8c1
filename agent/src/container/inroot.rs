//! Paths inside a container's root, looked up and created through file
//! descriptors, never by name: the defence against runc's CVE-2021-30465
//! class. A sibling container of the pod that shares a volume with this
//! one can swap any directory of that volume for a symlink at any moment;
//! a runtime that resolves a mount's destination by name and then mounts
//! on that name mounts wherever the link points by then.
//!
//! Here a path is walked from an fd of the root one component at a time,
//! each with openat2(O_PATH | O_NOFOLLOW, RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS) on the fd of its parent, so the kernel never
//! follows a link on its own and what is found is pinned by its fd:
//!
//! - a symlink on the root's own mount (the image's `/var/run -> /run`,
//!   `lib -> usr/lib`) is followed as RESOLVE_IN_ROOT follows it: an
//!   absolute target starts over at the root, `..` stops there;
//! - a symlink on any other mount (a volume, an emptyDir: storage another
//!   container of the pod may write while this one is created) is refused,
//!   since following it, even clamped to the root, would let that sibling
//!   choose where in this container a mount lands;
//! - a missing component is created in its parent's fd (mkdirat, or an
//!   O_CREAT|O_EXCL file for the last one of a file bind) and then opened
//!   the same way, so a link planted between the two is seen and refused.
//!
//! Mounts then go onto the fd (see `fdmount.rs`), and `resolve_in_root`
//! (the kernel's RESOLVE_IN_ROOT, the container's own view) checks that
//! the mount is where the container will look for it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{
    fstat, mkdirat, openat2, readlinkat, statx, AtFlags, FileType, Mode, OFlags, ResolveFlags,
    StatxFlags, CWD,
};
use rustix::io::Errno;

/// Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;
/// Creations retried when something else keeps taking the name first.
const MAX_CREATE_RETRIES: usize = 16;

/// What a missing last component is created as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// The root of a container's filesystem, as an fd and the mount it is on.
pub struct Root {
    fd: OwnedFd,
    mnt_id: u64,
    /// For messages only: nothing is looked up by it.
    shown: PathBuf,
}

fn ctx(what: impl std::fmt::Display) -> impl FnOnce(Errno) -> io::Error {
    move |e| io::Error::other(format!("{what}: {}", io::Error::from(e)))
}

/// The id of the mount `fd` is on.
pub fn mnt_id(fd: BorrowedFd) -> io::Result<u64> {
    let st = statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::MNT_ID,
    )
    .map_err(ctx("statx"))?;
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        return Err(io::Error::other(
            "statx gave no mount id (Linux 5.8 or later needed)",
        ));
    }
    Ok(st.stx_mnt_id)
}

impl Root {
    /// Opens the directory at `path` (a guest path the agent chose, so no
    /// symlink is expected on it, and none is followed).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = openat2(
            CWD,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(ctx(format_args!(
            "opening the container root {}",
            path.display()
        )))?;
        Self::from_fd(fd, path)
    }

    /// A root from an fd already open on it (a fresh bind mount's).
    pub fn from_fd(fd: OwnedFd, shown: &Path) -> io::Result<Self> {
        let mnt_id = mnt_id(fd.as_fd())?;
        Ok(Self {
            fd,
            mnt_id,
            shown: shown.into(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What `path` (a container path) names, or None if something on the
    /// way is missing. Nothing is created.
    pub fn resolve(&self, path: &Path) -> io::Result<Option<OwnedFd>> {
        self.walk(path, None)
    }

    /// What `path` names, creating what is missing: directories on the
    /// way, and the last component as `kind`. Something of the other kind
    /// already there is returned as it is (mount(2) decides).
    pub fn create(&self, path: &Path, kind: Kind) -> io::Result<OwnedFd> {
        self.walk(path, Some(kind))?
            .ok_or_else(|| io::Error::other(format!("{} vanished", path.display())))
    }

    /// `path` resolved by the kernel exactly as the container will
    /// resolve it (RESOLVE_IN_ROOT, no magic links): the check that a
    /// mount landed where the container looks for it.
    pub fn resolve_in_root(&self, path: &Path) -> io::Result<OwnedFd> {
        openat2(
            &self.fd,
            relative(path),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(ctx(format_args!(
            "looking up {} in the container",
            path.display()
        )))
    }

    fn walk(&self, path: &Path, create: Option<Kind>) -> io::Result<Option<OwnedFd>> {
        let what = path.display();
        let mut todo = Vec::new();
        push_components(&mut todo, path);
        // The directories walked through below the root, innermost last,
        // so `..` goes back to the very directory it came from.
        let mut dirs: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        let mut retries = 0;
        while let Some(part) = todo.pop() {
            if part == ".." {
                dirs.pop();
                continue;
            }
            let last = todo.is_empty();
            let parent = dirs.last().map_or(self.fd.as_fd(), |d| d.as_fd());
            let fd = match open_component(parent, &part) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let Some(kind) = create else {
                        return Ok(None);
                    };
                    retries += 1;
                    if retries > MAX_CREATE_RETRIES {
                        return Err(io::Error::other(format!(
                            "{what}: {} keeps disappearing while it is created",
                            part.to_string_lossy()
                        )));
                    }
                    let as_file = last && kind == Kind::File;
                    make_entry(parent, &part, as_file).map_err(ctx(format_args!(
                        "{what}: creating {}",
                        part.to_string_lossy()
                    )))?;
                    todo.push(part);
                    continue;
                }
                Err(e) => {
                    return Err(ctx(format_args!(
                        "{what}: opening {}",
                        part.to_string_lossy()
                    ))(e))
                }
            };
            let kind = FileType::from_raw_mode(fstat(&fd).map_err(ctx("fstat"))?.st_mode);
            match kind {
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::other(format!(
                            "{what}: too many symlinks ({} {})",
                            self.shown.display(),
                            part.to_string_lossy()
                        )));
                    }
                    if mnt_id(fd.as_fd())? != self.mnt_id {
                        return Err(io::Error::other(format!(
                            "{what}: {} is a symlink on a mount inside the container \
                             (a volume another container may write), not on its root; \
                             links there are not followed: name the path without it",
                            part.to_string_lossy()
                        )));
                    }
                    let target = readlinkat(&fd, "", Vec::new()).map_err(ctx("readlink"))?;
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    if target.is_absolute() {
                        dirs.clear();
                    }
                    push_components(&mut todo, &target);
                }
                FileType::Directory => {
                    if last {
                        return Ok(Some(fd));
                    }
                    dirs.push(fd);
                }
                _ if last => return Ok(Some(fd)),
                _ => {
                    return Err(io::Error::other(format!(
                        "{what}: {} is not a directory",
                        part.to_string_lossy()
                    )))
                }
            }
        }
        // The path ended in `/`, `..` or a link to a directory.
        match dirs.pop() {
            Some(d) => Ok(Some(d)),
            None => Ok(Some(dup_path(self.fd.as_fd())?)),
        }
    }
}

/// One name in `dir`, not following a link there: a link comes back as
/// itself (O_PATH | O_NOFOLLOW).
fn open_component(dir: BorrowedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS,
    )
}

/// Creates `name` in `dir`; something already there is fine (the walk
/// opens it next and judges it).
fn make_entry(dir: BorrowedFd, name: &OsStr, file: bool) -> Result<(), Errno> {
    let made = if file {
        openat2(
            dir,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o644),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map(drop)
    } else {
        mkdirat(dir, name, Mode::from_bits_truncate(0o755))
    };
    match made {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn dup_path(fd: BorrowedFd) -> io::Result<OwnedFd> {
    openat2(
        fd,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH,
    )
    .map_err(ctx("reopening the root"))
}

/// `path` without its leading `/`, for lookups under a root fd.
fn relative(path: &Path) -> &Path {
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

/// Pushes `path`'s normal and `..` components onto `todo` so they pop in
/// order; `/` and `.` are dropped.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsStr::from_bytes(b"..").to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(name: &str) -> Self {
            let d =
                std::env::temp_dir().join(format!("palisade-inroot-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn root(&self) -> Root {
            Root::open(&self.0).unwrap()
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Where an fd is, as a path under the scratch root.
    fn place(s: &Scratch, fd: &OwnedFd) -> PathBuf {
        let p = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(fd)
        ))
        .unwrap();
        p.strip_prefix(&s.0).unwrap().to_path_buf()
    }

    #[test]
    fn resolves_plain_paths_and_reports_missing_ones() {
        let s = Scratch::new("plain");
        std::fs::create_dir_all(s.0.join("etc/app")).unwrap();
        let r = s.root();
        let fd = r.resolve(Path::new("/etc/app")).unwrap().unwrap();
        assert_eq!(place(&s, &fd), Path::new("etc/app"));
        assert!(r.resolve(Path::new("/etc/nope/x")).unwrap().is_none());
        assert_eq!(
            place(&s, &r.resolve(Path::new("/")).unwrap().unwrap()),
            Path::new("")
        );
    }

    #[test]
    fn image_links_are_followed_clamped_to_the_root() {
        let s = Scratch::new("links");
        std::fs::create_dir_all(s.0.join("usr/lib")).unwrap();
        std::fs::create_dir_all(s.0.join("etc")).unwrap();
        symlink("/usr/lib", s.0.join("lib")).unwrap();
        symlink("../../../../etc", s.0.join("usr/escape")).unwrap();
        let r = s.root();
        let fd = r.create(Path::new("/lib/x"), Kind::Dir).unwrap();
        assert_eq!(place(&s, &fd), Path::new("usr/lib/x"));
        let fd = r
            .create(Path::new("/usr/escape/passwd"), Kind::File)
            .unwrap();
        assert_eq!(place(&s, &fd), Path::new("etc/passwd"));
        assert!(s.0.join("etc/passwd").is_file());
        let fd = r.resolve(Path::new("/../../usr")).unwrap().unwrap();
        assert_eq!(place(&s, &fd), Path::new("usr"));
    }

    #[test]
    fn creates_missing_directories_and_files_under_the_root() {
        let s = Scratch::new("create");
        let r = s.root();
        let fd = r.create(Path::new("/a/b/c"), Kind::Dir).unwrap();
        assert_eq!(place(&s, &fd), Path::new("a/b/c"));
        assert!(s.0.join("a/b/c").is_dir());
        r.create(Path::new("/a/b/f"), Kind::File).unwrap();
        assert!(s.0.join("a/b/f").is_file());
        // Something of the other kind is left as it is.
        let fd = r.create(Path::new("/a/b/c"), Kind::File).unwrap();
        assert_eq!(place(&s, &fd), Path::new("a/b/c"));
        // A file on the way is not a directory.
        let e = r.create(Path::new("/a/b/f/g"), Kind::Dir).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let s = Scratch::new("loop");
        symlink("/b", s.0.join("a")).unwrap();
        symlink("/a", s.0.join("b")).unwrap();
        let e = s.root().create(Path::new("/a/x"), Kind::Dir).unwrap_err();
        assert!(e.to_string().contains("too many symlinks"), "{e}");
    }

    #[test]
    fn the_root_itself_may_not_be_a_link() {
        let s = Scratch::new("rootlink");
        std::fs::create_dir(s.0.join("real")).unwrap();
        symlink("real", s.0.join("link")).unwrap();
        assert!(Root::open(&s.0.join("link")).is_err());
        assert!(Root::open(&s.0.join("real")).is_ok());
    }

    #[test]
    fn resolve_in_root_is_the_containers_view() {
        let s = Scratch::new("inroot");
        std::fs::create_dir_all(s.0.join("run")).unwrap();
        std::fs::create_dir_all(s.0.join("var")).unwrap();
        symlink("/run", s.0.join("var/run")).unwrap();
        let fd = s.root().resolve_in_root(Path::new("/var/run")).unwrap();
        assert_eq!(place(&s, &fd), Path::new("run"));
    }

    /// A link that a sibling plants on a volume (another mount) is not
    /// followed, though one on the root's mount would be.
    #[test]
    #[ignore = "needs root (mounts a tmpfs as the volume): cargo test -p palisade-agent -- --ignored"]
    fn links_on_other_mounts_are_refused() {
        let s = Scratch::new("volume");
        let vol = s.0.join("data");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(s.0.join("etc")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &vol,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _u = Unmount(vol.clone());
        symlink("/etc", vol.join("sub")).unwrap();
        let r = s.root();
        let e = r.create(Path::new("/data/sub/x"), Kind::Dir).unwrap_err();
        assert!(e.to_string().contains("not followed"), "{e}");
        assert!(!s.0.join("etc/x").exists());
        // Plain directories on the volume are walked as usual.
        let fd = r.create(Path::new("/data/d/e"), Kind::Dir).unwrap();
        assert_eq!(place(&s, &fd), Path::new("data/d/e"));
    }
}
