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
