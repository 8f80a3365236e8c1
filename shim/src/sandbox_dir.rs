//! A sandbox's state directory (`/run/palisade/<id>/`): the VMM's sockets
//! and the guest console log live here, and it goes away with the sandbox.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Parent of every sandbox directory.
pub const SANDBOX_ROOT: &str = "/run/palisade";

const VSOCK_SOCKET: &str = "vsock.sock";
const CONSOLE_LOG: &str = "console.log";
/// Exported to the guest over virtio-fs.
const SHARED_DIR: &str = "shared";

/// Longest sandbox id used as a directory name as it is: its socket paths
/// (`/run/palisade/<id>/vsock.sock_<port>`) must fit a unix socket
/// address, with room.
pub const MAX_PLAIN_ID: usize = 64;

/// Whether `id` can name its directory under [`SANDBOX_ROOT`] as it is:
/// 1 to [`MAX_PLAIN_ID`] letters, digits, `.`, `_` or `-`, not starting
/// with `.` (no `..`, no hidden directory).
pub fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PLAIN_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The VMM's hybrid vsock socket in sandbox directory `dir`.
pub fn vsock_socket(dir: &Path) -> PathBuf {
    dir.join(VSOCK_SOCKET)
}

/// The guest's serial console output in sandbox directory `dir`.
pub fn console_log(dir: &Path) -> PathBuf {
    dir.join(CONSOLE_LOG)
}

/// The directory of `dir` the guest sees as /run/palisade/shared.
pub fn shared_dir(dir: &Path) -> PathBuf {
    dir.join(SHARED_DIR)
}

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;
/// The VMM binds `<vsock socket>_<port>` for guest-initiated connections;
/// a u32 port is up to 10 digits.
const PORT_SUFFIX_MAX: usize = 11;

#[derive(Debug, thiserror::Error)]
pub enum SandboxDirError {
    #[error(
        "sandbox directory {} is too long: its vsock socket paths would take up to {len} bytes, and unix socket paths are limited to {MAX_UNIX_SOCKET_PATH}; use a shorter sandbox id or state directory",
        .path.display()
    )]
    PathTooLong { path: PathBuf, len: usize },

    #[error(
        "sandbox directory {} already exists: another sandbox is using it, or an earlier one was not cleaned up (remove it if no VMM is running there)",
        .path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error("cannot create sandbox directory {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot remove sandbox directory {}", .path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Owns the directory: dropping it removes the directory and everything in
/// it, so an error path cannot leave a half-made sandbox behind.
#[derive(Debug)]
pub struct SandboxDir {
    path: PathBuf,
    removed: bool,
}

impl SandboxDir {
    /// Creates `path` (mode 0700; parents as needed). Fails if it exists:
    /// two sandboxes must never share sockets.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, SandboxDirError> {
        let path = path.into();
        let longest_socket = path.join(VSOCK_SOCKET).as_os_str().as_bytes().len() + PORT_SUFFIX_MAX;
        if longest_socket > MAX_UNIX_SOCKET_PATH {
            return Err(SandboxDirError::PathTooLong {
                path,
                len: longest_socket,
            });
        }
        if let Some(parent) = path.parent() {
            // Others may traverse the root (0711) but not list the sandboxes.
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|source| SandboxDirError::Create {
                    path: path.clone(),
                    source,
                })?;
        }
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Self {
                path,
                removed: false,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(SandboxDirError::AlreadyExists { path })
            }
            Err(source) => Err(SandboxDirError::Create { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VMM's hybrid vsock socket.
    pub fn vsock_socket(&self) -> PathBuf {
        vsock_socket(&self.path)
    }

    /// The guest's serial console output.
    pub fn console_log(&self) -> PathBuf {
        console_log(&self.path)
    }

    /// Removes the directory and reports failure, unlike dropping it.
    pub fn remove(mut self) -> Result<(), SandboxDirError> {
        self.removed = true;
        remove_tree(&self.path).map_err(|source| SandboxDirError::Remove {
            path: self.path.clone(),
            source,
        })
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a sandbox directory. Whatever is still mounted below it (the
/// share, a container's rootfs) is detached first, through fds opened
/// beneath it, so the removal can never reach into a container's files on
/// the host, nor a mount outside the directory.
fn remove_tree(path: &Path) -> io::Result<()> {
    crate::mount::at::detach_all_beneath(path).map_err(io::Error::other)?;
    if !crate::mount::mount_points_under(path)
        .map_err(io::Error::other)?
        .is_empty()
    {
        return Err(io::Error::other(format!(
            "{} still has mounts below it; not removing it",
            path.display()
        )));
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_and_removes() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("a/b/sandbox");
        let dir = SandboxDir::create(&path).expect("create");
        assert!(path.is_dir());
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(dir.vsock_socket(), path.join("vsock.sock"));
        assert_eq!(dir.console_log(), path.join("console.log"));
        std::fs::write(dir.console_log(), b"log").expect("write");
        dir.remove().expect("remove");
        assert!(!path.exists());
    }

    #[test]
    fn drop_removes() {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("sandbox");
        {
            let dir = SandboxDir::create(&path).expect("create");
            std::fs::write(dir.console_log(), b"log").expect("write");
        }
        assert!(!path.exists());
    }

    #[test]
    fn refuses_an_existing_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        let first = SandboxDir::create(root.path().join("s")).expect("create");
        let err = SandboxDir::create(first.path()).expect_err("must refuse");
        assert!(
            matches!(err, SandboxDirError::AlreadyExists { .. }),
            "{err}"
        );
        // The refused attempt must not have removed the first one's directory.
        assert!(first.path().is_dir());
    }

    #[test]
    fn refuses_paths_too_long_for_sockets() {
        let long = format!("/run/palisade/{}", "x".repeat(80));
        let err = SandboxDir::create(&long).expect_err("too long");
        assert!(
            err.to_string()
                .contains("unix socket paths are limited to 107"),
            "{err}"
        );
        assert!(!Path::new(&long).exists());
        // A 64-character id (what Kubernetes uses) under /run/palisade fits.
        let id = "f".repeat(64);
        let fits = Path::new(SANDBOX_ROOT).join(id).join(VSOCK_SOCKET);
        assert!(fits.as_os_str().len() + PORT_SUFFIX_MAX <= MAX_UNIX_SOCKET_PATH);
    }
}
