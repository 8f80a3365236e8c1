//! OCI mount entries: turning `options` into mount(2) flags, propagation
//! changes and filesystem data (parent side, pure), and doing the mounts
//! under the new rootfs (container side).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags, CWD};
use serde::{Deserialize, Serialize};

use super::fdmount::{
    attach, attrs_of, clone_tree, fd_path, set_attrs, verify_landed, verify_new_mount,
};
use super::inroot::{mnt_id, Kind, Root};

/// A mount as the container's init process performs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// For a bind mount, an absolute guest path; otherwise the device or
    /// the name shown in /proc/mounts.
    pub source: Option<PathBuf>,
    pub fstype: Option<String>,
    /// mount(2) flags, without propagation.
    pub flags: libc::c_ulong,
    /// Propagation changes, applied one after the other once mounted.
    pub propagation: Vec<libc::c_ulong>,
    /// Options the filesystem interprets (`mode=755,size=64k`).
    pub data: String,
    pub bind: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("mount option {0:?} (idmapped mounts) is not supported; drop it or use a user-namespace-free spec")]
    Idmap(String),
    #[error("mount option {0:?} (recursive mount attributes) is not supported yet; use the non-recursive form")]
    Recursive(String),
    #[error("mount option {0:?} is not supported yet")]
    Unsupported(String),
}

/// Flags an option sets (`true`) or clears (`false`).
fn flag_option(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "defaults" => (true, MsFlags::empty()),
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "dev" => (false, MsFlags::MS_NODEV),
        "nodev" => (true, MsFlags::MS_NODEV),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "atime" => (false, MsFlags::MS_NOATIME),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "silent" => (true, MsFlags::MS_SILENT),
        "loud" => (false, MsFlags::MS_SILENT),
        _ => return None,
    })
}

fn propagation_option(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// The propagation of `linux.rootfsPropagation` (or None for a bad name).
pub fn rootfs_propagation(name: &str) -> Option<MsFlags> {
    propagation_option(name)
}

/// Splits OCI mount options the way runc does: known flags and propagation
/// modes are interpreted, everything else is filesystem data.
pub fn parse_options(options: &[String]) -> Result<ParsedOptions, OptionError> {
    let mut parsed = ParsedOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for opt in options {
        if let Some((set, flag)) = flag_option(opt) {
            if set {
                parsed.flags |= flag;
            } else {
                parsed.flags &= !flag;
            }
        } else if let Some(p) = propagation_option(opt) {
            parsed.propagation.push(p);
        } else if opt == "idmap" || opt == "ridmap" || opt.starts_with("idmap=") {
            return Err(OptionError::Idmap(opt.clone()));
        } else if opt == "tmpcopyup" {
            return Err(OptionError::Unsupported(opt.clone()));
        } else if is_recursive_attr(opt) {
            return Err(OptionError::Recursive(opt.clone()));
        } else {
            parsed.data.push(opt.clone());
        }
    }
    Ok(parsed)
}

/// `rro`, `rnosuid`, ...: mount_setattr(2) attributes applied recursively.
fn is_recursive_attr(opt: &str) -> bool {
    opt.strip_prefix('r').is_some_and(|rest| {
        flag_option(rest).is_some() || rest == "nosymfollow" || rest == "symfollow"
    })
}

/// Flags that a bind mount only takes on a second, remounting call.
const BIND_REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

fn flags(bits: libc::c_ulong) -> MsFlags {
    MsFlags::from_bits_truncate(bits)
}

fn ctx<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

/// Where the shim's share is in the guest: bind sources under it are
/// opened without following any link (the shim makes that tree, and a
/// link in it could only be a guest's doing).
const GUEST_SHARE: &str = "/run/palisade/shared";

/// Opens a bind source (a guest path) as an fd, so what is bound is what
/// was opened, not what the name leads to a moment later.
fn open_bind_source(source: &Path) -> io::Result<OwnedFd> {
    let mut resolve = ResolveFlags::NO_MAGICLINKS;
    if source.starts_with(GUEST_SHARE) {
        resolve |= ResolveFlags::NO_SYMLINKS;
    }
    openat2(
        CWD,
        source,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
    .map_err(ctx(format_args!(
        "opening bind source {}",
        source.display()
    )))
}

/// Mounts `m` under `root` (before pivot_root, with the guest's /proc).
/// The destination is found or made through fds (`inroot.rs`), the mount
/// goes onto that fd, and is then checked to be where the container
/// resolves the destination.
pub fn mount_under(root: &Root, m: &MountPlan) -> io::Result<()> {
    let dest = &m.destination;
    let mount_flags = flags(m.flags);
    let mounted = if m.bind {
        let source = m.source.as_deref().ok_or_else(|| {
            io::Error::other(format!("bind mount on {} has no source", dest.display()))
        })?;
        let source_fd = open_bind_source(source)?;
        let is_dir = rustix::fs::fstat(&source_fd)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .map_err(ctx(format_args!(
                "fstat of bind source {}",
                source.display()
            )))?;
        let target = root.create(dest, if is_dir { Kind::Dir } else { Kind::File })?;
        let what = || format!("bind-mounting {} on {}", source.display(), dest.display());
        let tree = clone_tree(source_fd.as_fd(), mount_flags.contains(MsFlags::MS_REC))
            .map_err(ctx(what()))?;
        let (set, clr) = attrs_of(mount_flags & BIND_REMOUNT_FLAGS);
        set_attrs(tree.as_fd(), set, clr).map_err(ctx(format_args!(
            "applying options to bind mount {}",
            dest.display()
        )))?;
        attach(tree.as_fd(), target.as_fd()).map_err(ctx(what()))?;
        verify_landed(root, dest, mnt_id(tree.as_fd())?)?
    } else {
        let target = root.create(dest, Kind::Dir)?;
        let under = mnt_id(target.as_fd())?;
        // Containers written for cgroup v1 hosts ask for "cgroup"; the guest
        // has only the unified hierarchy.
        let fstype = match m.fstype.as_deref() {
            Some("cgroup") => Some("cgroup2"),
            other => other,
        };
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        let on = fd_path(target.as_fd());
        mount(m.source.as_deref(), on.as_str(), fstype, mount_flags, data).map_err(ctx(
            format_args!("mounting {} on {}", fstype.unwrap_or("?"), dest.display()),
        ))?;
        if mount_flags.contains(MsFlags::MS_REMOUNT) {
            // A remount changes the mount already there; nothing new.
            target
        } else {
            verify_new_mount(root, dest, under)?
        }
    };
    let on = fd_path(mounted.as_fd());
    for p in &m.propagation {
        mount(
            None::<&str>,
            on.as_str(),
            None::<&str>,
            flags(*p),
            None::<&str>,
        )
        .map_err(ctx(format_args!(
            "setting propagation of {}",
            dest.display()
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_set_and_clear_in_order() {
        let p = parse_options(&opts(&["nosuid", "noexec", "nodev", "ro", "rw"])).unwrap();
        assert_eq!(
            p.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV
        );
        assert!(p.data.is_empty() && p.propagation.is_empty());
    }

    #[test]
    fn unknown_options_are_filesystem_data() {
        let p =
            parse_options(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k"])).unwrap();
        assert_eq!(p.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(p.data, ["mode=755", "size=65536k"]);
    }

    #[test]
    fn bind_and_propagation() {
        let p = parse_options(&opts(&["rbind", "rprivate", "ro"])).unwrap();
        assert_eq!(
            p.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(p.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        assert!(matches!(
            parse_options(&opts(&["idmap"])),
            Err(OptionError::Idmap(_))
        ));
        assert!(matches!(
            parse_options(&opts(&["rro"])),
            Err(OptionError::Recursive(_))
        ));
        assert!(matches!(
            parse_options(&opts(&["rnosuid"])),
            Err(OptionError::Recursive(_))
        ));
        assert!(matches!(
            parse_options(&opts(&["tmpcopyup"])),
            Err(OptionError::Unsupported(_))
        ));
        // "rw" and "relatime" start with r but are plain flags.
        assert!(parse_options(&opts(&["rw", "relatime", "rbind"])).is_ok());
    }
}
