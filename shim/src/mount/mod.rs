//! Host mounts the shim makes for a sandbox (the share, container root
//! filesystems, volumes), the mount table it reads to find them, and their
//! removal. Everything here runs in the host's mount namespace, so a
//! mistake is visible to the whole host.
//!
//! The rule: no mount or unmount ever resolves a path through a directory
//! the guest can write. Targets are opened relative to a directory fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! and mounted or detached through `/proc/self/fd/N` ([`at`]); the mount
//! table ([`table`]) only says where to look, never what to act on.

pub mod at;
pub mod table;

use std::io;
use std::path::PathBuf;

use nix::mount::MsFlags;

pub use table::mount_points_under;

/// One mount as containerd describes it (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSource {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount option {option:?} of {typ} mount {from:?} is not supported: {why}")]
    BadOption {
        typ: String,
        from: String,
        option: String,
        why: &'static str,
    },
    #[error("cannot mount {typ} {from:?} on {}: {errno}", .target.display())]
    Mount {
        typ: String,
        from: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot unmount {}: {errno}", .target.display())]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("cannot open {} without following links or leaving {}: {errno}", .path.display(), .beneath.display())]
    Open {
        path: PathBuf,
        beneath: PathBuf,
        errno: rustix::io::Errno,
    },
    #[error("{} is still mounted after {tries} unmounts; not going further", .0.display(), tries = at::MAX_STACKED_MOUNTS)]
    StillMounted(PathBuf),
    #[error("cannot read the mount table /proc/self/mountinfo")]
    MountTable(#[source] io::Error),
}

/// What mount(2) gets for a list of fstab-style options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    /// Propagation changes, applied with separate mount(2) calls.
    pub propagation: MsFlags,
    /// The filesystem's own options (`lowerdir=...`), comma-joined.
    pub data: String,
}

/// Splits fstab-style options into flags and filesystem data, the way
/// containerd's own mount code does.
pub fn parse_options(options: &[String]) -> ParsedOptions {
    let mut parsed = ParsedOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    let mut data = Vec::new();
    for option in options {
        let (set, clear): (MsFlags, MsFlags) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" => {
                parsed.propagation |= propagation_flag(option);
                continue;
            }
            "defaults" => continue,
            _ => {
                data.push(option.as_str());
                continue;
            }
        };
        parsed.flags.insert(set);
        parsed.flags.remove(clear);
    }
    parsed.data = data.join(",");
    parsed
}

fn propagation_flag(name: &str) -> MsFlags {
    let rec = if name.starts_with('r') {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    let kind = match name.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "slave" => MsFlags::MS_SLAVE,
        "shared" => MsFlags::MS_SHARED,
        _ => MsFlags::MS_UNBINDABLE,
    };
    kind | rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_flags_from_filesystem_data() {
        let p = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
            "ro",
            "nosuid",
        ]));
        assert_eq!(p.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
        assert!(p.propagation.is_empty());

        let p = parse_options(&opts(&["rbind", "ro", "rw", "rprivate", "defaults"]));
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(p.data, "");
    }
}
