//! Memory figures of a VMM process from `/proc/<pid>/smaps`: how much it
//! holds in RAM, and how much of that is guest memory the guest has
//! touched, so the VMM's own overhead can be told apart.

use std::io;

/// Resident memory of a VMM process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VmmMemory {
    /// All resident memory of the process.
    pub vmm_rss_kib: u64,
    /// Resident part of the guest-memory mapping; `None` if no mapping of
    /// exactly the guest's size was found.
    pub guest_memory_touched_kib: Option<u64>,
    /// `vmm_rss_kib` minus the guest memory: the VMM's own overhead.
    pub vmm_rss_excluding_guest_kib: Option<u64>,
}

/// Reads the figures of process `pid` whose guest has `guest_memory_mib`.
pub fn read(pid: u32, guest_memory_mib: u32) -> io::Result<VmmMemory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse(&text, u64::from(guest_memory_mib) * 1024))
}

/// One mapping's header and the fields we need.
#[derive(Debug, Default)]
struct Mapping {
    /// No backing file: inode 0 and no path, or only a `[anon:...]` name.
    anonymous: bool,
    size_kib: u64,
    rss_kib: u64,
}

/// Parses smaps text. Guest memory is the anonymous (or memfd) mapping
/// whose size is exactly `guest_memory_kib`; if several qualify, the one
/// with the most resident memory.
pub fn parse(text: &str, guest_memory_kib: u64) -> VmmMemory {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(anonymous) = mapping_header(line) {
            mappings.push(Mapping {
                anonymous,
                ..Mapping::default()
            });
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        if let Some(kib) = field_kib(line, "Size:") {
            current.size_kib = kib;
        } else if let Some(kib) = field_kib(line, "Rss:") {
            current.rss_kib = kib;
        }
    }
    let vmm_rss_kib = mappings.iter().map(|m| m.rss_kib).sum();
    let guest = mappings
        .iter()
        .filter(|m| m.anonymous && m.size_kib == guest_memory_kib)
        .map(|m| m.rss_kib)
        .max();
    VmmMemory {
        vmm_rss_kib,
        guest_memory_touched_kib: guest,
        vmm_rss_excluding_guest_kib: guest.map(|g| vmm_rss_kib.saturating_sub(g)),
    }
}

/// For a mapping header (`start-end perms offset dev inode [path]`),
/// whether it is guest-memory-like (anonymous or memfd); `None` for other
/// lines.
fn mapping_header(line: &str) -> Option<bool> {
    let mut words = line.split_whitespace();
    let range = words.next()?;
    let (start, end) = range.split_once('-')?;
    if u64::from_str_radix(start, 16).is_err() || u64::from_str_radix(end, 16).is_err() {
        return None;
    }
    let _perms = words.next()?;
    let _offset = words.next()?;
    let _dev = words.next()?;
    let inode = words.next()?;
    let path = words.next();
    Some(match path {
        None => inode == "0",
        Some(p) => p.starts_with("[anon:") || p.starts_with("/memfd:"),
    })
}

/// `Rss:   1234 kB` → 1234.
fn field_kib(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    let mut words = rest.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234   /usr/bin/containerd-shim-palisade-v2
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 800 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:                2048 kB
Pss:                2048 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me nr
7f0010000000-7f0010021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                 100 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn finds_the_guest_mapping() {
        let figures = parse(SAMPLE, 256 * 1024);
        assert_eq!(
            figures,
            VmmMemory {
                vmm_rss_kib: 800 + 2048 + 100 + 12,
                guest_memory_touched_kib: Some(2048),
                vmm_rss_excluding_guest_kib: Some(800 + 100 + 12),
            }
        );
    }

    #[test]
    fn no_guest_mapping_of_that_size() {
        let figures = parse(SAMPLE, 512 * 1024);
        assert_eq!(figures.vmm_rss_kib, 2960);
        assert_eq!(figures.guest_memory_touched_kib, None);
        assert_eq!(figures.vmm_rss_excluding_guest_kib, None);
    }

    #[test]
    fn file_backed_mappings_of_the_right_size_do_not_count() {
        let text = "7f0000000000-7f0010000000 r--p 00000000 08:01 99 /var/big.img\nSize: 262144 kB\nRss: 5 kB\n";
        assert_eq!(parse(text, 256 * 1024).guest_memory_touched_kib, None);
        let memfd = "7f0000000000-7f0010000000 rw-s 00000000 00:01 7 /memfd:guest (deleted)\nSize: 262144 kB\nRss: 5 kB\n";
        assert_eq!(parse(memfd, 256 * 1024).guest_memory_touched_kib, Some(5));
    }

    #[test]
    fn reads_this_process() {
        let figures = read(std::process::id(), 64).expect("read own smaps");
        assert!(figures.vmm_rss_kib > 0);
    }
}
