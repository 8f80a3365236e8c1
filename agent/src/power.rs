//! How the agent ends. As PID 1 it must never just exit (the kernel would
//! panic): it syncs and reboots, which the VMM (booted with `reboot=k`)
//! sees as the i8042 reset that ends the VM. On a host it removes what it
//! created and exits.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};

use log::error;
use nix::sys::reboot::{reboot, RebootMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a guest VM.
    Guest,
    /// A plain process on a host, serving only (tests, development).
    Host,
}

static MODE: OnceLock<Mode> = OnceLock::new();
static REMOVE_ON_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Records the mode; `end` and the panic hook act on it. First call wins.
pub fn set_mode(mode: Mode) {
    let _ = MODE.set(mode);
}

fn mode() -> Mode {
    // Unset only if we fail before main decided, which happens as PID 1
    // only if something is badly wrong; rebooting is the safe reading.
    MODE.get().copied().unwrap_or(Mode::Guest)
}

/// Has `path` removed when a host-mode agent exits (e.g. its unix socket).
pub fn remove_on_exit(path: PathBuf) {
    REMOVE_ON_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(path);
}

/// Ends the agent: reboot (guest) or exit with `code` (host).
pub fn end(code: i32) -> ! {
    match mode() {
        Mode::Guest => {
            nix::unistd::sync();
            match reboot(RebootMode::RB_AUTOBOOT) {
                Ok(never) => match never {},
                Err(e) => error!("reboot: {e}"),
            }
            // Exiting PID 1 panics the kernel, and panic=-1 reboots: the
            // last way out when reboot(2) itself failed.
            std::process::exit(code)
        }
        Mode::Host => {
            let paths = REMOVE_ON_EXIT.lock().unwrap_or_else(|p| p.into_inner());
            for path in paths.iter() {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(code)
        }
    }
}

/// Logs an error the agent cannot continue after, then ends it.
pub fn fatal(what: impl std::fmt::Display) -> ! {
    error!("fatal: {what}");
    end(1)
}

/// A panic anywhere (including a ttrpc handler thread) ends the agent
/// cleanly rather than leaving a half-working PID 1.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error!("{info}");
        end(101)
    }));
}

/// Asks main to shut the agent down.
#[derive(Clone)]
pub struct ShutdownTrigger(SyncSender<()>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        // Full means a request is already pending: one is enough.
        let _ = self.0.try_send(());
    }
}

pub struct ShutdownWaiter(Receiver<()>);

impl ShutdownWaiter {
    /// Blocks until a shutdown is requested.
    pub fn wait(&self) {
        // Err means every trigger is gone, so nothing can ask any more: treat
        // that as a request rather than blocking PID 1 forever.
        let _ = self.0.recv();
    }
}

pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownWaiter) {
    let (tx, rx) = sync_channel(1);
    (ShutdownTrigger(tx), ShutdownWaiter(rx))
}
