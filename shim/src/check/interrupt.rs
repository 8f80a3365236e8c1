//! Ctrl-C during `palisade check` must not leave a VM running or a sandbox
//! directory behind. The handler kills the VMM being watched; that makes
//! whatever the main thread is waiting on fail at once, and the normal
//! error path then cleans up and reports the interruption.

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The signal that interrupted us, 0 if none.
static INTERRUPTED_BY: AtomicI32 = AtomicI32::new(0);
/// The VMM process to kill on interruption, 0 if none.
static WATCHED_VMM: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_signal(signal: libc::c_int) {
    if INTERRUPTED_BY.swap(signal, Ordering::SeqCst) != 0 {
        // Second signal: the user insists. The VMM dies with us anyway
        // (PR_SET_PDEATHSIG).
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    let pid = WATCHED_VMM.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        // Restarted syscalls keep unrelated waits from failing spuriously.
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in SIGNALS {
        // SAFETY: the handler only touches atomics and calls
        // async-signal-safe functions.
        unsafe { signal::sigaction(sig, &action)? };
    }
    Ok(())
}

/// The signal that interrupted the check, if any.
pub fn interrupted() -> Option<Signal> {
    match INTERRUPTED_BY.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}

/// Kills `pid` on interruption while the guard lives. Drop the guard
/// before the process is reaped; the VMM supervisor reaps only in its
/// waits, so the window in which the pid could be reused is the instant
/// between a reap and this guard's drop.
#[must_use = "the VMM is watched only while the guard lives"]
pub struct WatchGuard(());

pub fn watch_vmm(pid: u32) -> WatchGuard {
    WATCHED_VMM.store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
    // A signal that came before the pid was known has killed nothing yet.
    if INTERRUPTED_BY.load(Ordering::SeqCst) != 0 && pid > 0 {
        // SAFETY: plain syscall on our own, not yet reaped, child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    WatchGuard(())
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        WATCHED_VMM.store(0, Ordering::SeqCst);
    }
}
