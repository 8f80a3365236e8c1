//! Paths inside a container: checking the ones a spec names. (They are
//! resolved under the rootfs through fds, in `inroot.rs`.)

use std::path::{Component, Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
