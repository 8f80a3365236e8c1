//! A minimal `log` backend writing one line per record to fd 2, which is
//! /dev/console (the serial port) in the guest and stderr on a host.
//!
//! Every byte on the serial console costs a VM exit, so lines are short and
//! other crates (ttrpc) only get through at warn unless we are debugging.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{close, dup2};

const PREFIX: &str = "palisade-agent:";

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

/// Installs the logger. Safe to call more than once; later calls only change
/// the level.
pub fn init(level: LevelFilter) {
    // set_logger fails only if a logger is already installed, which is us.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Prints an unlevelled `palisade-agent: <what>` line that host tooling
/// matches on, regardless of the log level.
pub fn announce(what: &str) {
    write_line(&format!("{PREFIX} {what}\n"));
}

static READY_ANNOUNCED: AtomicBool = AtomicBool::new(false);

/// Prints `palisade-agent: ready`; benchmarks count on seeing it exactly once.
pub fn announce_ready() {
    if !READY_ANNOUNCED.swap(true, Ordering::SeqCst) {
        announce("ready");
    }
}

fn write_line(line: &str) {
    // std's stderr is unbuffered and, if fd 2 is closed, quietly drops the
    // write instead of failing: there is nowhere better to report that.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Points fds 0-2 at /dev/console if the kernel could not (the initramfs
/// lacked /dev/console). Call once devtmpfs is mounted.
pub fn attach_console() -> nix::Result<()> {
    let missing: Vec<RawFd> = (0..=2)
        .filter(|fd| fcntl(*fd, FcntlArg::F_GETFD).is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let console = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    for fd in &missing {
        if *fd != console {
            dup2(console, *fd)?;
        }
    }
    if console > 2 {
        close(console)?;
    }
    Ok(())
}

impl Log for ConsoleLogger {
    fn enabled(&self, meta: &Metadata) -> bool {
        let max = log::max_level();
        if meta.level() > max {
            return false;
        }
        meta.target().starts_with("palisade") || meta.level() <= Level::Warn || max >= Level::Debug
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let mut line = String::with_capacity(128);
        // Our own records skip the target: it is always this crate.
        let _ = if record.target().starts_with("palisade") {
            writeln!(line, "{PREFIX} {level}: {}", record.args())
        } else {
            writeln!(
                line,
                "{PREFIX} {level}: [{}] {}",
                record.target(),
                record.args()
            )
        };
        write_line(&line);
    }

    fn flush(&self) {}
}
