//! The VMM process side: `<binary> __vmm ARGS` builds the VM, runs it, and
//! reports progress to the parent as protocol lines on stdout.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use palisade_vmm::EventSink;

use super::args::{self, VMM_SUBCOMMAND};
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

/// The one line the parent shows when the VMM fails.
fn fail(message: &str) -> ExitCode {
    let one_line: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    eprintln!("palisade-vmm: {one_line}");
    ExitCode::FAILURE
}

/// The VMM's warnings (a triple fault, a malformed guest packet) go to
/// stderr, whose tail the parent keeps and shows when the VMM ends. A
/// hostile guest can provoke them at will, so at most [`LOG_BURST`] lines a
/// second are written; the rest are counted and the count reported.
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
        let level = record.level().as_str().to_ascii_lowercase();
        eprintln!("palisade-vmm: {level}: {}", record.args());
    }

    fn flush(&self) {}
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
