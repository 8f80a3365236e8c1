//! The line protocol a VMM process speaks to its parent on stdout.
//!
//! One message per line, ASCII words separated by single spaces, times in
//! CLOCK_MONOTONIC nanoseconds (comparable across processes on one host):
//!
//! ```text
//! started <mono_ns>                      first line, taken at the top of main
//! event guest-entered <mono_ns>          the boot vCPU entered the guest
//! event boot-signal <value> <mono_ns>    the guest wrote <value> to the boot-signal port
//! exit guest-reset                       the guest reset the machine (its way to power off)
//! exit stopped                           the VMM was told to stop (SIGTERM/SIGINT)
//! ```
//!
//! Failures are not part of it: the VMM prints one line on stderr and exits
//! non-zero. The parent treats everything here as untrusted input (the VMM
//! runs guest-facing device code), so lines are length-bounded.

use std::fmt;
use std::io::{self, BufRead};
use std::str::FromStr;

use palisade_vmm::{VmEvent, VmExit};

/// Longest line either side will produce or accept, newline excluded.
pub const MAX_LINE_LEN: usize = 128;

/// One line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmMessage {
    Started { mono_ns: u64 },
    GuestEntered { mono_ns: u64 },
    BootSignal { value: u8, mono_ns: u64 },
    Exited(VmExit),
}

impl From<VmEvent> for VmmMessage {
    fn from(event: VmEvent) -> Self {
        match event {
            VmEvent::GuestEntered { mono_ns } => VmmMessage::GuestEntered { mono_ns },
            VmEvent::BootSignal { value, mono_ns } => VmmMessage::BootSignal { value, mono_ns },
        }
    }
}

impl fmt::Display for VmmMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmmMessage::Started { mono_ns } => write!(f, "started {mono_ns}"),
            VmmMessage::GuestEntered { mono_ns } => write!(f, "event guest-entered {mono_ns}"),
            VmmMessage::BootSignal { value, mono_ns } => {
                write!(f, "event boot-signal {value} {mono_ns}")
            }
            VmmMessage::Exited(VmExit::GuestReset) => f.write_str("exit guest-reset"),
            VmmMessage::Exited(VmExit::Stopped) => f.write_str("exit stopped"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed VMM process message {line:?}: {reason}")]
pub struct ParseError {
    /// The offending line, shortened and escaped.
    pub line: String,
    pub reason: &'static str,
}

impl FromStr for VmmMessage {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Self, ParseError> {
        let err = |reason| ParseError {
            line: line.chars().take(MAX_LINE_LEN).collect(),
            reason,
        };
        let words: Vec<&str> = line.split(' ').collect();
        let number = |word: &str| word.parse::<u64>().map_err(|_| err("not a decimal number"));
        match words.as_slice() {
            ["started", ns] => Ok(VmmMessage::Started {
                mono_ns: number(ns)?,
            }),
            ["event", "guest-entered", ns] => Ok(VmmMessage::GuestEntered {
                mono_ns: number(ns)?,
            }),
            ["event", "boot-signal", value, ns] => Ok(VmmMessage::BootSignal {
                value: value
                    .parse()
                    .map_err(|_| err("boot-signal value is not 0..=255"))?,
                mono_ns: number(ns)?,
            }),
            ["exit", "guest-reset"] => Ok(VmmMessage::Exited(VmExit::GuestReset)),
            ["exit", "stopped"] => Ok(VmmMessage::Exited(VmExit::Stopped)),
            ["started" | "event" | "exit", ..] => Err(err("wrong arguments")),
            _ => Err(err("unknown message")),
        }
    }
}

/// What [`read_line_bounded`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (newline stripped) is in the buffer.
    Complete,
    /// The line exceeded the limit; it was consumed and dropped.
    TooLong,
    /// End of stream; a trailing unterminated fragment is dropped.
    Eof,
}

/// Reads one `\n`-terminated line into `buf` (cleared first) without ever
/// holding more than `max` bytes of it, so a runaway writer cannot make the
/// reader allocate without bound.
pub fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, found_newline) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        let consumed = chunk.len() + usize::from(found_newline);
        reader.consume(consumed);
        if found_newline {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            VmmMessage::Started { mono_ns: 1 },
            VmmMessage::GuestEntered { mono_ns: u64::MAX },
            VmmMessage::BootSignal {
                value: 2,
                mono_ns: 123_456_789,
            },
            VmmMessage::BootSignal {
                value: 255,
                mono_ns: 0,
            },
            VmmMessage::Exited(VmExit::GuestReset),
            VmmMessage::Exited(VmExit::Stopped),
        ];
        for message in messages {
            let line = message.to_string();
            assert!(line.len() <= MAX_LINE_LEN);
            assert_eq!(line.parse::<VmmMessage>(), Ok(message), "{line}");
        }
    }

    #[test]
    fn wire_format_is_stable() {
        assert_eq!(VmmMessage::Started { mono_ns: 5 }.to_string(), "started 5");
        assert_eq!(
            VmmMessage::BootSignal {
                value: 1,
                mono_ns: 7
            }
            .to_string(),
            "event boot-signal 1 7"
        );
        assert_eq!(
            VmmMessage::Exited(VmExit::GuestReset).to_string(),
            "exit guest-reset"
        );
    }

    #[test]
    fn converts_vmm_events() {
        assert_eq!(
            VmmMessage::from(VmEvent::GuestEntered { mono_ns: 9 }),
            VmmMessage::GuestEntered { mono_ns: 9 }
        );
        assert_eq!(
            VmmMessage::from(VmEvent::BootSignal {
                value: 2,
                mono_ns: 9
            }),
            VmmMessage::BootSignal {
                value: 2,
                mono_ns: 9
            }
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        for (line, reason) in [
            ("", "unknown message"),
            ("hello", "unknown message"),
            ("started", "wrong arguments"),
            ("started -1", "not a decimal number"),
            ("started 1 2", "wrong arguments"),
            ("started  1", "wrong arguments"),
            ("event guest-entered x", "not a decimal number"),
            (
                "event boot-signal 256 1",
                "boot-signal value is not 0..=255",
            ),
            ("event boot-signal 1", "wrong arguments"),
            ("event teleported 1", "wrong arguments"),
            ("exit", "wrong arguments"),
            ("exit exploded", "wrong arguments"),
            ("Started 1", "unknown message"),
        ] {
            let err = line.parse::<VmmMessage>().expect_err(line);
            assert_eq!(err.reason, reason, "{line:?}");
        }
    }

    #[test]
    fn bounded_reader_splits_lines_and_drops_overlong_ones() {
        let input = format!("started 1\n{}\nexit stopped\npartial", "x".repeat(300));
        // A tiny BufReader capacity exercises lines spanning several fills.
        let mut reader = io::BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 128).ok(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"started 1");
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 128).ok(),
            Some(Line::TooLong)
        );
        assert!(buf.is_empty());
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 128).ok(),
            Some(Line::Complete)
        );
        assert_eq!(buf, b"exit stopped");
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf, 128).ok(),
            Some(Line::Eof)
        );
    }
}
