//! The mount table (`/proc/self/mountinfo`): where the shim's mounts are.
//! Its paths are only hints: a guest can rename the directories they run
//! through, so whatever acts on a mount opens it again beneath a directory
//! fd ([`super::at`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::MountError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
