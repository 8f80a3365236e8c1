//! Host paths and guest paths. The guest sees a sandbox's host directory
//! `<state dir>/shared` as `/run/palisade/shared`; a rootfs the user names
//! by its host path there is sent to the agent by its guest path. An agent
//! in host test mode sees the host's own paths.

use std::path::{Component, Path, PathBuf};

use crate::sandbox::GUEST_SHARED_DIR;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMap {
    /// An agent on the host: a path means the same to both sides.
    Identity,
    /// A guest whose shared directory is `host` on this machine.
    Shared { host: PathBuf },
    /// A guest whose shared directory is not known here: paths are guest
    /// paths, and a bundle-relative root cannot be resolved.
    GuestOnly,
}

/// `path` with `.` and `..` resolved by name only (the host's symlinks are
/// not followed: the guest resolves its own). None if `..` would climb
/// above `/` or the path is relative.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl PathMap {
    /// The guest path for `path`: a host path under the shared directory
    /// is translated, anything else is taken to be a guest path already.
    pub fn to_guest(&self, path: &str) -> String {
        let PathMap::Shared { host } = self else {
            return path.to_owned();
        };
        let Some(normal) = normalize(Path::new(path)) else {
            return path.to_owned();
        };
        match normal.strip_prefix(host) {
            Ok(rest) => Path::new(GUEST_SHARED_DIR).join(rest).display().to_string(),
            Err(_) => path.to_owned(),
        }
    }

    /// The guest path of an OCI `root.path` from the bundle at `bundle`
    /// (a host directory): a relative path is relative to the bundle, and
    /// must then lie in the shared directory (or be on the host itself,
    /// for an agent in host test mode).
    pub fn bundle_root(&self, bundle: &Path, root_path: &str) -> Result<String, String> {
        if Path::new(root_path).is_absolute() {
            return Ok(self.to_guest(root_path));
        }
        let bundle = std::path::absolute(bundle).map_err(|e| {
            format!(
                "cannot make the bundle path {} absolute: {e}",
                bundle.display()
            )
        })?;
        let joined = bundle.join(root_path);
        let host = normalize(&joined)
            .ok_or_else(|| format!("root.path {root_path:?} climbs above / from the bundle"))?;
        match self {
            PathMap::Identity => Ok(host.display().to_string()),
            PathMap::Shared { host: shared } if host.starts_with(shared) => {
                Ok(self.to_guest(&host.display().to_string()))
            }
            PathMap::Shared { host: shared } => Err(format!(
                "root.path {root_path:?} is {} on this host, which the guest cannot see: put the rootfs under the sandbox's shared directory {} (the guest's {GUEST_SHARED_DIR}), or give --rootfs GUEST_PATH",
                host.display(),
                shared.display()
            )),
            PathMap::GuestOnly => Err(format!(
                "root.path {root_path:?} is relative, and this sandbox's shared directory is not known here: give --rootfs GUEST_PATH"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> PathMap {
        PathMap::Shared {
            host: "/run/palisade/s1/shared".into(),
        }
    }

    #[test]
    fn normalizes_by_name() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), Some("/a/c".into()));
        assert_eq!(normalize(Path::new("/..")), None);
        assert_eq!(normalize(Path::new("a/b")), None);
    }

    #[test]
    fn host_paths_in_the_share_become_guest_paths() {
        let m = shared();
        assert_eq!(
            m.to_guest("/run/palisade/s1/shared/bb"),
            "/run/palisade/shared/bb"
        );
        assert_eq!(
            m.to_guest("/run/palisade/s1/shared/x/../bb/"),
            "/run/palisade/shared/bb"
        );
        assert_eq!(
            m.to_guest("/run/palisade/shared/bb"),
            "/run/palisade/shared/bb"
        );
        assert_eq!(m.to_guest("/srv/rootfs"), "/srv/rootfs");
        // A sibling whose name merely starts like the share is not in it.
        assert_eq!(
            m.to_guest("/run/palisade/s1/shared2/bb"),
            "/run/palisade/s1/shared2/bb"
        );
        assert_eq!(PathMap::Identity.to_guest("/srv/r"), "/srv/r");
    }

    #[test]
    fn bundle_relative_roots() {
        let m = shared();
        assert_eq!(
            m.bundle_root(Path::new("/run/palisade/s1/shared/c1"), "rootfs"),
            Ok("/run/palisade/shared/c1/rootfs".into())
        );
        let e = m
            .bundle_root(Path::new("/srv/bundle"), "rootfs")
            .unwrap_err();
        assert!(
            e.contains("/srv/bundle/rootfs on this host") && e.contains("--rootfs"),
            "{e}"
        );
        let e = m
            .bundle_root(Path::new("/run/palisade/s1/shared/c1"), "../../../../etc")
            .unwrap_err();
        assert!(e.contains("cannot see"), "{e}");
        assert_eq!(
            PathMap::Identity.bundle_root(Path::new("/srv/b"), "rootfs"),
            Ok("/srv/b/rootfs".into())
        );
        assert!(PathMap::GuestOnly
            .bundle_root(Path::new("/srv/b"), "rootfs")
            .unwrap_err()
            .contains("--rootfs"));
        assert_eq!(
            PathMap::GuestOnly.bundle_root(Path::new("/srv/b"), "/run/palisade/shared/r"),
            Ok("/run/palisade/shared/r".into())
        );
    }
}
