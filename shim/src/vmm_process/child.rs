//! The VMM process side: `<binary> __vmm ARGS` builds the VM, runs it, and
//! reports progress to the parent as protocol lines on stdout.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use palisade_vmm::EventSink;

use super::args::{self, VMM_SUBCOMMAND};
use super::log_record::{OneLine, MAX_RECORD_BYTES};
use super::protocol::VmmMessage;

/// Name shown by `ps`/`top` for VMM processes; without it they show up as
/// `exe`, after the `/proc/self/exe` they were started from.
const PROCESS_NAME: &[u8] = b"palisade-vmm\0";

/// Runs the VMM process if this process was started as one (first argument
/// [`VMM_SUBCOMMAND`]); otherwise returns `None` and the caller carries on
/// as its usual self. `started_ns` is taken first thing in `main`.
pub fn run_if_requested(started_ns: u64) -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(VMM_SUBCOMMAND.as_ref()) {
        return None;
    }
    let rest: Vec<OsString> = args.collect();
    Some(run(started_ns, &rest))
}

/// The VMM process's main.
pub fn run(started_ns: u64, args: &[OsString]) -> ExitCode {
    send(VmmMessage::Started {
        mono_ns: started_ns,
    });
    set_process_name();
    install_logger();

    let config = match args::parse(args) {
        Ok(config) => config,
        Err(e) => return fail(&format!("bad {VMM_SUBCOMMAND} arguments: {e}")),
    };
    let events: EventSink = Arc::new(|event| send(event.into()));
    match palisade_vmm::run_vm(config, events) {
        Ok(exit) => {
            send(VmmMessage::Exited(exit));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&crate::error_chain(&e)),
    }
}

/// Writes one protocol line. Write errors are ignored: they mean the parent
/// is gone, and then PR_SET_PDEATHSIG is already taking this process down.
fn send(message: VmmMessage) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{message}");
    let _ = out.flush();
}

/// An error chain is longer than a log record, but still bounded: it can
/// quote what the guest did.
const MAX_FAILURE_BYTES: usize = 4096;

/// The one line the parent shows when the VMM fails.
fn fail(message: &str) -> ExitCode {
    let line = OneLine::format(MAX_FAILURE_BYTES, format_args!("{message}"));
    eprintln!("palisade-vmm: {line}");
    ExitCode::FAILURE
}

/// The VMM's warnings (a triple fault, a malformed guest packet) go to
/// stderr, whose tail the parent keeps and shows when the VMM ends. A
/// hostile guest can provoke them at will, so at most [`LOG_BURST`] lines a
/// second are written; the rest are counted and the count reported. Each
/// is one line of at most [`MAX_RECORD_BYTES`] of the record's text (see
/// [`OneLine`]): a record can quote guest data of any size.
struct StderrLogger {
    window: std::sync::Mutex<LogWindow>,
}

#[derive(Default)]
struct LogWindow {
    second: u64,
    written: u32,
    suppressed: u64,
}

const LOG_BURST: u32 = 10;

impl LogWindow {
    /// Whether a line logged in `second` is written, and the count of lines
    /// suppressed in the window it closes, if any.
    fn admit(&mut self, second: u64) -> (Option<u64>, bool) {
        let mut closed = None;
        if self.second != second {
            closed = Some(self.suppressed).filter(|&n| n > 0);
            *self = LogWindow {
                second,
                ..LogWindow::default()
            };
        }
        if self.written >= LOG_BURST {
            self.suppressed += 1;
            return (closed, false);
        }
        self.written += 1;
        (closed, true)
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let second = palisade_vmm::monotonic_ns() / 1_000_000_000;
        let (suppressed, admitted) = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(second);
        if let Some(n) = suppressed {
            eprintln!("palisade-vmm: warn: {n} more log lines suppressed");
        }
        if !admitted {
            return;
        }
        eprintln!("{}", record_line(record.level(), *record.args()));
    }

    fn flush(&self) {}
}

/// What one admitted record becomes on stderr.
fn record_line(level: log::Level, args: std::fmt::Arguments<'_>) -> String {
    let level = level.as_str().to_ascii_lowercase();
    format!(
        "palisade-vmm: {level}: {}",
        OneLine::format(MAX_RECORD_BYTES, args)
    )
}

fn install_logger() {
    static LOGGER: StderrLogger = StderrLogger {
        window: std::sync::Mutex::new(LogWindow {
            second: 0,
            written: 0,
            suppressed: 0,
        }),
    };
    // Fails only if a logger is installed already; then that one serves.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

fn set_process_name() {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from the pointer, which PROCESS_NAME is.
    unsafe {
        libc::prctl(
            libc::PR_SET_NAME,
            PROCESS_NAME.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_bounded_line() {
        let guest_buffer = "\n\x1b[31m".repeat(1 << 20);
        let line = record_line(
            log::Level::Warn,
            format_args!("virtio-fs: bad request {guest_buffer}"),
        );
        assert!(line.starts_with("palisade-vmm: warn: virtio-fs: bad request \\n\\x1b[31m"));
        assert!(
            line.ends_with(" more bytes cut]"),
            "{}",
            &line[line.len() - 40..]
        );
        assert!(line.len() < MAX_RECORD_BYTES + 64, "{} bytes", line.len());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn log_lines_are_limited_per_second_and_the_rest_counted() {
        let mut w = LogWindow::default();
        for _ in 0..LOG_BURST {
            assert_eq!(w.admit(7), (None, true));
        }
        assert_eq!(w.admit(7), (None, false));
        assert_eq!(w.admit(7), (None, false));
        assert_eq!(w.admit(8), (Some(2), true));
        assert_eq!(w.admit(9), (None, true));
    }
}
