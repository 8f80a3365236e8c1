//! [`OneLine`]: a log record as one bounded line of text.
//!
//! What the VMM logs can carry guest data (fuse-backend-rs puts whole
//! guest buffers into its error messages), so one record could be
//! megabytes, span many lines, or hold terminal escape sequences. Each
//! record is cut to a fixed size and made one line before it is written;
//! the record is formatted straight into the bounded buffer, so a huge
//! one costs time to format but never its size in memory.

use std::fmt::{self, Write};

/// The most bytes of a record's text that are kept.
pub const MAX_RECORD_BYTES: usize = 512;

/// Text formatted into at most `max` bytes, one line: newlines, tabs and
/// other control characters are written as escapes (`\n`, `\t`, `\x1b`,
/// `\u{9b}`), and what does not fit is counted, not kept.
pub struct OneLine {
    text: String,
    max: usize,
    /// Bytes (after escaping) left out.
    cut: usize,
}

impl OneLine {
    pub fn new(max: usize) -> Self {
        Self {
            text: String::new(),
            max,
            cut: 0,
        }
    }

    /// `args` as one line of at most `max` bytes plus the note of the cut.
    pub fn format(max: usize, args: fmt::Arguments<'_>) -> String {
        let mut line = Self::new(max);
        // Writing into a String cannot fail; a Display impl that fails
        // leaves what it wrote so far, which is still worth showing.
        let _ = line.write_fmt(args);
        line.finish()
    }

    /// The kept text, with a note of how much was cut if anything was.
    pub fn finish(self) -> String {
        if self.cut == 0 {
            return self.text;
        }
        format!("{} [{} more bytes cut]", self.text, self.cut)
    }

    fn push(&mut self, piece: &str) {
        // Once something did not fit, nothing after it is kept either:
        // the kept text is always a prefix of the record.
        if self.cut == 0 && self.text.len() + piece.len() <= self.max {
            self.text.push_str(piece);
        } else {
            self.cut += piece.len();
        }
    }
}

impl Write for OneLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\n' => self.push("\\n"),
                '\r' => self.push("\\r"),
                '\t' => self.push("\\t"),
                c if c.is_control() && c.is_ascii() => self.push(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => self.push(&format!("\\u{{{:x}}}", c as u32)),
                c => self.push(c.encode_utf8(&mut [0u8; 4])),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_kept_as_they_are() {
        assert_eq!(
            OneLine::format(64, format_args!("virtio-fs: {} ünïcode", 42)),
            "virtio-fs: 42 ünïcode"
        );
    }

    #[test]
    fn long_records_are_cut_with_a_note_of_how_much() {
        let huge = "x".repeat(5 << 20);
        let line = OneLine::format(MAX_RECORD_BYTES, format_args!("buffer {huge}"));
        let kept = "buffer ".len() + (MAX_RECORD_BYTES - "buffer ".len());
        assert!(line.starts_with("buffer xxx"));
        assert_eq!(
            line,
            format!(
                "{} [{} more bytes cut]",
                &format!("buffer {huge}")[..kept],
                "buffer ".len() + huge.len() - kept
            )
        );
        assert!(line.len() < MAX_RECORD_BYTES + 40);
    }

    #[test]
    fn records_become_one_line_without_terminal_escapes() {
        let line = OneLine::format(256, format_args!("a\nb\r\n\tc \x1b[2J \u{9b}31m \0 end"));
        assert_eq!(line, "a\\nb\\r\\n\\tc \\x1b[2J \\u{9b}31m \\x00 end");
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn cutting_never_splits_a_character_or_an_escape() {
        // Room for "ab" and not for the whole escape or the 2-byte char.
        assert_eq!(
            OneLine::format(3, format_args!("ab\nc")),
            "ab [3 more bytes cut]"
        );
        assert_eq!(
            OneLine::format(3, format_args!("abéz")),
            "ab [3 more bytes cut]"
        );
    }
}
