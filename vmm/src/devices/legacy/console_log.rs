//! [`ConsoleLog`]: the guest console's log file, rotated so the guest
//! cannot grow it without bound.
//!
//! The guest writes the serial port at will, and the log lives on the
//! host (a sandbox's log on the RAM-backed `/run`). Rotation rather than a
//! ring buffer in one file: each file is a plain append-only text file
//! that `tail`, `less` and the shim read without knowing a format, and the
//! newest output is always at the end of `<path>`, continued from the end
//! of `<path>.1`.
//!
//! Each file holds at most half the cap. A write that would take `<path>`
//! past that renames it to `<path>.1` (replacing the older one) and starts
//! a new `<path>`, so the two together never exceed the cap, whatever the
//! guest writes. Rotation happens between writes, and the serial device
//! writes whole lines through a `LineWriter`, so lines are only split when
//! a single one is longer than half the cap.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The rotated file next to `path`: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".1");
    PathBuf::from(name)
}

/// The default cap, 1 MiB: thousands of lines of boot messages and agent
/// logs, a trifle on the host.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// The least cap that makes sense: two files of a few lines each.
pub const MIN_MAX_BYTES: u64 = 2;

/// Only root (the VMM's and the shim's user) reads the guest console.
/// Explicit, because the passthrough sets the process umask to 0 before
/// the log is reopened after a rotation.
const MODE: u32 = 0o600;

pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    len: u64,
    /// Most bytes per file (half the cap), or `None` for a file that is
    /// not a regular file (a terminal, a pipe): written as it is.
    file_limit: Option<u64>,
}

impl ConsoleLog {
    /// Opens `path` for appending; `<path>` and `<path>.1` together stay
    /// within `max_bytes` (at least [`MIN_MAX_BYTES`]). An existing log
    /// longer than one file may be (left by a VM with a bigger cap) is
    /// emptied first, so it cannot carry more than the cap into `.1`.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        let file = open_append(path)?;
        let meta = file.metadata()?;
        let file_limit = meta
            .file_type()
            .is_file()
            .then_some((max_bytes / 2).max(MIN_MAX_BYTES / 2));
        let mut len = meta.len();
        if file_limit.is_some_and(|limit| len > limit) {
            file.set_len(0)?;
            len = 0;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            len,
            file_limit,
        })
    }

    /// `<path>` becomes `<path>.1`; a new, empty `<path>` is started. If
    /// the rename fails the current file is emptied instead, so the cap
    /// holds even then; if the new file cannot be made, the error is
    /// returned and the next write tries again.
    fn rotate(&mut self) -> io::Result<()> {
        match std::fs::rename(&self.path, rotated_path(&self.path)) {
            Ok(()) => {
                self.file = File::options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(MODE)
                    .open(&self.path)?;
            }
            Err(_) => self.file.set_len(0)?,
        }
        self.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .mode(MODE)
        .open(path)
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(limit) = self.file_limit else {
            return self.file.write(buf);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let wanted = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        // Start a new file rather than split this write, unless the file
        // is empty (then the write is longer than a whole file).
        if self.len >= limit || (self.len > 0 && self.len.saturating_add(wanted) > limit) {
            self.rotate()?;
        }
        let room = usize::try_from(limit - self.len).unwrap_or(usize::MAX);
        let written = self.file.write(&buf[..buf.len().min(room)])?;
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::LineWriter;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "palisade-console-log-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn a_flood_stays_within_the_cap_and_keeps_the_newest_lines() {
        let dir = Scratch::new("flood");
        let path = dir.0.join("console.log");
        let mut log = LineWriter::new(ConsoleLog::open(&path, 4096).expect("open"));
        for i in 0..10_000 {
            writeln!(log, "line {i}").expect("write");
            assert!(size(&path) + size(&rotated_path(&path)) <= 4096);
        }
        log.flush().expect("flush");
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.ends_with("line 9999\n"), "{newest:?}");
        // Rotation falls between lines: both files hold whole lines, and
        // the rotated one continues into the current one.
        let older = std::fs::read_to_string(rotated_path(&path)).expect("read .1");
        assert!(older.starts_with("line ") && older.ends_with('\n'));
        assert!(newest.starts_with("line "));
        let last_older: u32 = older.lines().last().expect("a line")[5..]
            .parse()
            .expect("number");
        let first_newest: u32 = newest.lines().next().expect("a line")[5..]
            .parse()
            .expect("number");
        assert_eq!(first_newest, last_older + 1);
        assert!(size(&path) <= 2048 && size(&rotated_path(&path)) <= 2048);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_line_longer_than_a_file_is_cut_across_files() {
        let dir = Scratch::new("long");
        let path = dir.0.join("console.log");
        let mut log = ConsoleLog::open(&path, 100).expect("open");
        // No newline at all: the guest can write one endless line.
        log.write_all(&[b'x'; 1000]).expect("write");
        assert_eq!(size(&path), 50);
        assert_eq!(size(&rotated_path(&path)), 50);
    }

    #[test]
    fn an_existing_log_counts_towards_the_cap() {
        let dir = Scratch::new("existing");
        let path = dir.0.join("console.log");
        std::fs::write(&path, vec![b'a'; 80]).expect("old log");
        let mut log = ConsoleLog::open(&path, 200).expect("open");
        log.write_all(b"new\n").expect("write");
        assert_eq!(size(&path), 84, "appended");
        log.write_all(&[b'b'; 50]).expect("write");
        assert_eq!(size(&rotated_path(&path)), 84);
        assert_eq!(size(&path), 50);
        // One longer than a file's share is emptied, not carried along.
        drop(log);
        std::fs::write(&path, vec![b'a'; 300]).expect("old log");
        let mut log = ConsoleLog::open(&path, 200).expect("open");
        log.write_all(b"new\n").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new\n");
        assert!(size(&path) + size(&rotated_path(&path)) <= 200);
    }

    #[test]
    fn a_log_whose_directory_is_gone_still_stays_within_the_cap() {
        let dir = Scratch::new("gone");
        let path = dir.0.join("console.log");
        let mut log = ConsoleLog::open(&path, 100).expect("open");
        log.write_all(&[b'x'; 40]).expect("write");
        std::fs::remove_file(&path).expect("remove");
        // The rename fails (no such file): the open file is emptied.
        log.write_all(&[b'y'; 40]).expect("write");
        assert_eq!(log.file.metadata().expect("stat").len(), 40);
    }

    #[test]
    fn a_non_regular_file_is_written_as_it_is() {
        let log = ConsoleLog::open(Path::new("/dev/null"), 10).expect("open");
        assert_eq!(log.file_limit, None);
    }
}
