//! What to tell a user when a guest did not come up: how far the boot got,
//! and the end of the guest console.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use palisade_vmm::{rotated_console_log, BOOT_SIGNAL_AGENT_READY, BOOT_SIGNAL_AGENT_STARTED};

use crate::vmm_process::Progress;

/// How much of the console log to show after a failed boot.
const CONSOLE_TAIL_BYTES: u64 = 8192;
pub const CONSOLE_TAIL_LINES: usize = 40;

/// Where a boot that never reached the agent stopped, in words.
pub fn stuck_hint(progress: &Progress) -> &'static str {
    if progress.started_ns.is_none() {
        "the VMM process never reported its start"
    } else if progress.guest_entered_ns.is_none() {
        "the VMM never entered the guest (it failed or hung while building the VM)"
    } else if progress.boot_signal(BOOT_SIGNAL_AGENT_STARTED).is_none() {
        "the guest kernel was entered but the agent never started (look for a kernel panic, a hang after early setup, or a missing /init on the console)"
    } else if progress.boot_signal(BOOT_SIGNAL_AGENT_READY).is_none() {
        "the agent started but never signalled ready (see the console for its error)"
    } else {
        "the agent signalled ready but the connection to it failed"
    }
}

/// The last lines of the guest console, with control characters replaced
/// (the guest writes this; escape sequences must not reach a terminal).
/// The VMM rotates the log (`console.log` -> `console.log.1`), so a tail
/// that starts before the current file does is continued from the end of
/// the rotated one.
pub fn console_tail(path: &Path) -> Option<String> {
    let bytes = read_tail(path, CONSOLE_TAIL_BYTES)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| *c != '\r')
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        })
        .collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    let tail = lines[start..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

/// The last `max` bytes of the log at `path` and its rotated file, oldest
/// first; `None` if neither can be read.
fn read_tail(path: &Path, max: u64) -> Option<Vec<u8>> {
    let rotated_path = rotated_console_log(path);
    // A rotation between the two opens makes both the same file (the one
    // just renamed): open again. Rotations are far apart (half the cap of
    // output), so a second try sees none.
    for _ in 0..3 {
        let current = File::open(path).ok();
        let rotated = File::open(&rotated_path).ok();
        let (current, rotated) = match (current, rotated) {
            (None, None) => return None,
            (Some(c), Some(r)) if same_file(&c, &r) => continue,
            // Between the rename and the new file's creation.
            (None, Some(r)) => return tail_of(r, max),
            (Some(c), r) => (c, r),
        };
        let mut newest = tail_of(current, max)?;
        let wanted_older = max.saturating_sub(newest.len() as u64);
        return match rotated {
            Some(file) if wanted_older > 0 => {
                let mut older = tail_of(file, wanted_older).unwrap_or_default();
                older.append(&mut newest);
                Some(older)
            }
            _ => Some(newest),
        };
    }
    None
}

fn same_file(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The last `max` bytes of `file`.
fn tail_of(mut file: File, max: u64) -> Option<Vec<u8>> {
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm_process::BootSignalAt;

    #[test]
    fn hints_name_the_stuck_phase() {
        let mut p = Progress::default();
        assert!(stuck_hint(&p).contains("never reported its start"));
        p.started_ns = Some(1);
        assert!(stuck_hint(&p).contains("never entered the guest"));
        p.guest_entered_ns = Some(2);
        assert!(stuck_hint(&p).contains("agent never started"));
        p.boot_signals.push(BootSignalAt {
            value: 1,
            mono_ns: 3,
        });
        assert!(stuck_hint(&p).contains("never signalled ready"));
        p.boot_signals.push(BootSignalAt {
            value: 2,
            mono_ns: 4,
        });
        assert!(stuck_hint(&p).contains("connection to it failed"));
    }

    #[test]
    fn console_tail_is_bounded_and_sanitized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\r\n"));
        }
        text.push_str("evil \x1b[2J\n");
        std::fs::write(&path, text).expect("write");
        let tail = console_tail(&path).expect("tail");
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), CONSOLE_TAIL_LINES);
        assert_eq!(lines[lines.len() - 1], "evil ?[2J");
        assert_eq!(lines[0], "line 61");
        assert_eq!(console_tail(&dir.path().join("none")), None);
    }

    #[test]
    fn console_tail_continues_across_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let older: String = (0..30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(rotated_console_log(&path), older).expect("write .1");
        // Just rotated: the current file holds a few lines.
        std::fs::write(&path, "line 30\nline 31\n").expect("write");
        let tail = console_tail(&path).expect("tail");
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 32);
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[31], "line 31");
        // Between the rename and the new file: the rotated one alone.
        std::fs::remove_file(&path).expect("remove");
        let tail = console_tail(&path).expect("tail");
        assert_eq!(tail.lines().last(), Some("line 29"));
        // A current file as long as the tail needs no older lines.
        let long: String = (100..2000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, long).expect("write");
        let tail = console_tail(&path).expect("tail");
        assert!(!tail.contains("line 29\n"));
        assert!(tail.ends_with("line 1999"));
        // The same file under both names (a rotation while reading, seen
        // from the reader) is not read twice.
        std::fs::remove_file(rotated_console_log(&path)).expect("remove .1");
        std::fs::hard_link(&path, rotated_console_log(&path)).expect("link");
        assert_eq!(read_tail(&path, 64), None, "retried, then given up");
    }
}
