//! What to tell a user when a guest did not come up: how far the boot got,
//! and the end of the guest console.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use palisade_vmm::{BOOT_SIGNAL_AGENT_READY, BOOT_SIGNAL_AGENT_STARTED};

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
pub fn console_tail(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(CONSOLE_TAIL_BYTES).read_to_end(&mut bytes).ok()?;
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
}
