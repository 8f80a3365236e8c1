//! Paths inside a container: checking the ones a spec names and resolving
//! them under the rootfs without letting symlinks in the image point the
//! agent outside it.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;

/// Why a path from a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{what} {path:?} is not absolute; container paths start with /")]
    Relative { what: String, path: PathBuf },
    #[error("{what} {path:?} contains \"..\"; name the path without it")]
    DotDot { what: String, path: PathBuf },
    #[error("{what} is empty")]
    Empty { what: String },
}

/// Checks a path a spec gives for inside the container: absolute and free
/// of `..`, so what it names is plain to see (and to audit).
pub fn check_container_path(what: &str, path: &Path) -> Result<(), PathError> {
    if path.as_os_str().is_empty() {
        return Err(PathError::Empty { what: what.into() });
    }
    if !path.is_absolute() {
        return Err(PathError::Relative {
            what: what.into(),
            path: path.into(),
        });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::DotDot {
            what: what.into(),
            path: path.into(),
        });
    }
    Ok(())
}

/// Resolves `unsafe_path` as the container will see it: under `root`,
/// following symlinks, with `..` and absolute link targets clamped to
/// `root` (like Go's filepath-securejoin, which runc uses). Components that
/// do not exist yet are appended as they are. The result is always inside
/// `root`.
///
/// This is a lookup by name, so it is only as good as the rootfs staying
/// still while the agent mounts; no container process runs during create,
/// so nothing in the pod can race it.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0;
    // Components still to walk, last first.
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut todo, unsafe_path);
    while let Some(part) = todo.pop() {
        if part == OsStr::new("..") {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many symlinks resolving {}", unsafe_path.display()),
                    ));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut todo, &target);
            }
            Ok(_) => resolved = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(resolved))
}

/// Pushes `path`'s normal and `..` components onto `todo` so they pop in
/// order; `/` and `.` are dropped.
fn push_components(todo: &mut Vec<std::ffi::OsString>, path: &Path) {
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
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
                std::env::temp_dir().join(format!("palisade-paths-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn container_paths_must_be_absolute_and_plain() {
        assert!(check_container_path("mount", Path::new("/proc")).is_ok());
        assert!(matches!(
            check_container_path("mount", Path::new("proc")),
            Err(PathError::Relative { .. })
        ));
        assert!(matches!(
            check_container_path("mount", Path::new("/a/../../etc")),
            Err(PathError::DotDot { .. })
        ));
        assert!(matches!(
            check_container_path("cwd", Path::new("")),
            Err(PathError::Empty { .. })
        ));
    }

    #[test]
    fn joins_plain_and_missing_paths() {
        let s = Scratch::new("plain");
        std::fs::create_dir_all(s.0.join("etc")).unwrap();
        assert_eq!(
            secure_join(&s.0, Path::new("/etc/x")).unwrap(),
            s.0.join("etc/x")
        );
        assert_eq!(
            secure_join(&s.0, Path::new("/new/dir")).unwrap(),
            s.0.join("new/dir")
        );
        assert_eq!(secure_join(&s.0, Path::new("/")).unwrap(), s.0);
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let s = Scratch::new("links");
        std::fs::create_dir_all(s.0.join("usr/lib")).unwrap();
        symlink("/usr/lib", s.0.join("lib")).unwrap();
        symlink("../../../../etc", s.0.join("usr/escape")).unwrap();
        symlink("/", s.0.join("rootlink")).unwrap();
        assert_eq!(
            secure_join(&s.0, Path::new("/lib/x")).unwrap(),
            s.0.join("usr/lib/x")
        );
        assert_eq!(
            secure_join(&s.0, Path::new("/usr/escape/passwd")).unwrap(),
            s.0.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&s.0, Path::new("/rootlink/../..")).unwrap(),
            s.0
        );
        assert_eq!(
            secure_join(&s.0, Path::new("/../../x")).unwrap(),
            s.0.join("x")
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let s = Scratch::new("loop");
        symlink("/b", s.0.join("a")).unwrap();
        symlink("/a", s.0.join("b")).unwrap();
        assert!(secure_join(&s.0, Path::new("/a/x")).is_err());
    }
}
