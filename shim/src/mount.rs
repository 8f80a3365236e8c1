//! Host mounts the shim makes in a sandbox's shared directory (container
//! root filesystems, volumes), the mount tables it reads to find them, and
//! their removal. Everything here runs in the host's mount namespace, so a
//! mistake is visible to the whole host: every path is checked to lie under
//! the sandbox directory before it is unmounted.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

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

/// Mounts `m` on `target` with `extra` flags added (the shim adds nosuid
/// and nodev: the guest's root can write setuid programs and device nodes
/// into what the host sees). A read-only bind mount needs a second call,
/// since the kernel ignores MS_RDONLY on the first.
pub fn mount_on(m: &MountSource, target: &Path, extra: MsFlags) -> Result<(), MountError> {
    let parsed = parse_options(&m.options);
    let err = |errno| MountError::Mount {
        typ: m.typ.clone(),
        from: m.source.clone(),
        target: target.to_owned(),
        errno,
    };
    if parsed.flags.contains(MsFlags::MS_REMOUNT) {
        return Err(MountError::BadOption {
            typ: m.typ.clone(),
            from: m.source.clone(),
            option: "remount".into(),
            why: "a container's mount must make a new mount",
        });
    }
    let flags = parsed.flags | extra;
    let bind = flags.contains(MsFlags::MS_BIND) || m.typ == "bind";
    let data = (!parsed.data.is_empty()).then_some(parsed.data.as_str());
    if bind {
        let bind_flags = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind_flags,
            None::<&str>,
        )
        .map_err(err)?;
        let remount =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | (flags - MsFlags::MS_REC - MsFlags::MS_BIND);
        if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    } else {
        mount(
            Some(m.source.as_str()),
            target,
            Some(m.typ.as_str()),
            flags,
            data,
        )
        .map_err(err)?;
    }
    if !parsed.propagation.is_empty() {
        if let Err(e) = mount(
            None::<&str>,
            target,
            None::<&str>,
            parsed.propagation,
            None::<&str>,
        ) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    }
    Ok(())
}

/// Mount points at or below `dir`, deepest first (the order to unmount
/// them in), from this process's mount table.
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, MountError> {
    let table = std::fs::read("/proc/self/mountinfo").map_err(MountError::MountTable)?;
    Ok(mount_points_in(&table, dir))
}

fn mount_points_in(mountinfo: &[u8], dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Later mounts stack on earlier ones: reverse table order, then the
    // deepest paths first, undoes them in a safe order.
    points.reverse();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Unmounts `target`; if something still uses it (the VMM holds files of
/// it open for the guest), detaches it instead: it leaves the tree now and
/// goes away when the last user lets go. Not mounted is success.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    let err = |errno| MountError::Unmount {
        target: target.to_owned(),
        errno,
    };
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Unmounts everything at or below `dir`, deepest first. Tries them all
/// and reports the first failure.
pub fn unmount_all_under(dir: &Path) -> Result<(), MountError> {
    let mut first_error = None;
    for point in mount_points_under(dir)? {
        if let Err(e) = unmount(&point) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
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

    #[test]
    fn finds_mount_points_deepest_first_with_escapes() {
        let table = b"\
22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:30 / /run/palisade/s1/shared/c1/rootfs rw - overlay overlay rw
31 30 0:31 / /run/palisade/s1/shared/c1/rootfs/data rw - tmpfs tmpfs rw
32 22 0:32 / /run/palisade/s1/shared/c\\0402/rootfs rw - overlay overlay rw
33 22 0:33 / /run/palisade/s10/shared rw - tmpfs tmpfs rw
";
        let points = mount_points_in(table, Path::new("/run/palisade/s1"));
        assert_eq!(
            points,
            vec![
                PathBuf::from("/run/palisade/s1/shared/c1/rootfs/data"),
                PathBuf::from("/run/palisade/s1/shared/c 2/rootfs"),
                PathBuf::from("/run/palisade/s1/shared/c1/rootfs"),
            ]
        );
    }

    #[test]
    fn unescapes_only_octal_triples() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"a\\134b"), b"a\\b");
        assert_eq!(unescape(b"a\\9"), b"a\\9");
        assert_eq!(unescape(b"end\\04"), b"end\\04");
    }
}
