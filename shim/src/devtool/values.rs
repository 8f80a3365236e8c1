//! Parsers for the values `palisade agent` and `palisade sandbox` take on
//! their command lines: sizes, signals, users, environment entries, ids.
//! Each returns a message that names what is wrong and what to write
//! instead; the argument parser adds the option's name.

use crate::sandbox_dir::{self, MAX_PLAIN_ID};

/// Multipliers of the size suffixes: binary, as cgroup limits are usually
/// thought of (`64M` is 64 MiB, as with `docker run -m 64m`).
const SIZE_SUFFIXES: [(&str, u64); 4] = [
    ("k", 1 << 10),
    ("m", 1 << 20),
    ("g", 1 << 30),
    ("t", 1 << 40),
];

/// `1048576`, `64k`, `64M`, `64MiB`, `2g`: bytes, more than 0.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not a size: give bytes, optionally with k, M, G or T (binary: 64M = 64 MiB)")
    };
    let lower = text.trim().to_ascii_lowercase();
    // "64mib", "64mb" and "64m" all mean the same here.
    let unit_end = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, multiplier) = SIZE_SUFFIXES
        .iter()
        .find_map(|(suffix, m)| unit_end.strip_suffix(suffix).map(|d| (d, *m)))
        .unwrap_or((unit_end, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(multiplier)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!(
            "{text:?}: a limit of 0 bytes leaves no room to run; give a positive size"
        ));
    }
    Ok(bytes)
}

/// A positive count (`--pids`), at most what an OCI limit (i64) holds.
pub fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(format!(
            "{text:?}: a limit of 0 lets nothing run; give a positive number"
        )),
        Ok(n) if n <= i64::MAX as u64 => Ok(n),
        _ => Err(format!("{text:?} is not a positive whole number")),
    }
}

/// A whole number in `range` (vCPUs, MiB, milliseconds, rows, columns).
pub fn parse_in_range(text: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{text:?}: expected a whole number from {} to {}",
                range.start(),
                range.end()
            )
        })
}

/// The signals people name; anything else can be given by number.
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Linux's highest real-time signal number on x86-64.
const MAX_SIGNAL: i32 = 64;

/// `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=MAX_SIGNAL).contains(&n) {
            return Ok(n);
        }
        return Err(format!(
            "{text:?} is not a signal number (1 to {MAX_SIGNAL})"
        ));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            format!("{text:?} is not a signal name: give one like TERM, KILL, INT, HUP, USR1, or a number")
        })
}

/// The conventional name of a signal, for messages (`SIGTERM`).
pub fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, s)| *s == signal)
        .map_or_else(|| format!("signal {signal}"), |(n, _)| format!("SIG{n}"))
}

/// `UID[:GID]`, numeric: the rootfs's /etc/passwd is the guest's to read,
/// not this tool's. GID defaults to 0, as runc's does.
pub fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let id = |part: &str| -> Result<u32, String> {
        match part.parse::<u32>() {
            // (uid_t)-1 means "unchanged" to setuid(2).
            Ok(u32::MAX) => Err(format!("{text:?}: 4294967295 is not a usable id")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!(
                "{text:?} is not UID[:GID] in numbers (names are not looked up), e.g. 1000:1000"
            )),
        }
    };
    match text.split_once(':') {
        Some((uid, gid)) => Ok((id(uid)?, id(gid)?)),
        None => Ok((id(text)?, 0)),
    }
}

/// `NAME=value` (value may be empty).
pub fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((name, _)) if !name.is_empty() && !name.contains('\0') && !text.contains('\0') => {
            Ok(text.to_owned())
        }
        _ => Err(format!("{text:?} is not NAME=value")),
    }
}

/// A sandbox id names its directory under /run/palisade as it is (the
/// shim's rule for plain ids), so the CLI finds the directory by the id.
pub fn parse_sandbox_id(text: &str) -> Result<String, String> {
    if sandbox_dir::is_plain_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a usable sandbox id: use 1-{MAX_PLAIN_ID} letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// `CAP_NET_ADMIN` or `net_admin`, as `CAP_NET_ADMIN`. Whether the kernel
/// knows it is the agent's to say.
pub fn parse_capability(text: &str) -> Result<String, String> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(format!(
            "{text:?} is not a capability name, e.g. CAP_MKNOD or NET_ADMIN"
        ));
    }
    Ok(format!("CAP_{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        for bad in ["", "M", "-1", "1.5G", "64 X", "0x10", "12q"] {
            assert!(
                parse_bytes(bad).unwrap_err().contains("is not a size"),
                "{bad}"
            );
        }
        assert!(parse_bytes("0").unwrap_err().contains("positive"));
        assert!(parse_bytes("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn counts_and_ranges() {
        assert_eq!(parse_count("20"), Ok(20));
        assert!(parse_count("0").unwrap_err().contains("positive"));
        assert!(parse_count("-3").is_err());
        assert!(parse_count("ten").is_err());
        assert_eq!(parse_in_range("4", 1..=32), Ok(4));
        assert_eq!(
            parse_in_range("33", 1..=32),
            Err("\"33\": expected a whole number from 1 to 32".into())
        );
    }

    #[test]
    fn signals() {
        for name in ["TERM", "SIGTERM", "sigterm", "term", "15"] {
            assert_eq!(parse_signal(name), Ok(libc::SIGTERM), "{name}");
        }
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("64"), Ok(64));
        assert!(parse_signal("0").unwrap_err().contains("1 to 64"));
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("SIGFOO")
            .unwrap_err()
            .contains("not a signal name"));
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(40), "signal 40");
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000:1000"), Ok((1000, 1000)));
        assert_eq!(parse_user("1000"), Ok((1000, 0)));
        assert_eq!(parse_user("0:5"), Ok((0, 5)));
        assert!(parse_user("nobody")
            .unwrap_err()
            .contains("names are not looked up"));
        assert!(parse_user("1:").is_err());
        assert!(parse_user("4294967295")
            .unwrap_err()
            .contains("not a usable id"));
    }

    #[test]
    fn env_entries() {
        assert_eq!(parse_env("A=b"), Ok("A=b".into()));
        assert_eq!(parse_env("A="), Ok("A=".into()));
        assert_eq!(parse_env("A=b=c"), Ok("A=b=c".into()));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=b").is_err());
    }

    #[test]
    fn sandbox_ids() {
        assert!(parse_sandbox_id("dev-1.a_b").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(parse_sandbox_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capabilities() {
        assert_eq!(parse_capability("mknod"), Ok("CAP_MKNOD".into()));
        assert_eq!(
            parse_capability("CAP_NET_ADMIN"),
            Ok("CAP_NET_ADMIN".into())
        );
        assert!(parse_capability("CAP_").is_err());
        assert!(parse_capability("all;rm").is_err());
    }
}
