//! Facts about the machine the agent runs on, for GetGuestDetails.

use std::fs;
use std::io;

/// `uname -r`, read from procfs to avoid an FFI call.
pub fn kernel_release() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string())
}

pub fn memory_total_bytes() -> io::Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    parse_mem_total(&meminfo)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo"))
}

/// Finds `MemTotal:  N kB` in /proc/meminfo text and returns bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next() {
        Some("kB") => 1024,
        // procfs has always used kB; a bare number would be bytes.
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(multiplier)
}

pub fn online_cpus() -> io::Result<u32> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_total_in_kib() {
        let meminfo = "MemTotal:        2018044 kB\nMemFree:          123456 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(2018044 * 1024));
    }

    #[test]
    fn finds_mem_total_anywhere() {
        let meminfo = "MemFree: 1 kB\nMemTotal: 512 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(512 * 1024));
    }

    #[test]
    fn rejects_malformed_meminfo() {
        assert_eq!(parse_mem_total(""), None);
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 18446744073709551615 kB\n"), None);
    }

    #[test]
    fn reads_this_machine() {
        assert!(memory_total_bytes().unwrap() > 0);
        assert!(online_cpus().unwrap() > 0);
        assert!(!kernel_release().unwrap().is_empty());
    }
}
