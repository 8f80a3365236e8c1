//! Signal handling on one dedicated thread: the signals are blocked in every
//! thread and taken synchronously with sigwait, so no async-signal-safety
//! concerns and no lost SIGCHLD.

use std::sync::Arc;
use std::thread;

use log::{info, warn};
use nix::sys::signal::{SigSet, Signal};

use crate::reaper::Reaper;

fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks the handled signals in the calling thread. Call from main before
/// any other thread exists, so all threads inherit the mask. Children
/// started by std::process::Command get a clean mask again.
pub fn block() -> nix::Result<()> {
    handled().thread_block()
}

/// Starts the signal thread: SIGCHLD reaps, SIGTERM/SIGINT (kill on a
/// host, ctrl-alt-del in a guest) call `on_terminate`.
pub fn spawn(reaper: Arc<Reaper>, on_terminate: impl Fn() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled();
            loop {
                match set.wait() {
                    Ok(Signal::SIGCHLD) => reaper.reap(),
                    Ok(sig) => {
                        info!("{sig} received, shutting down");
                        on_terminate();
                    }
                    Err(e) => warn!("sigwait: {e}"),
                }
            }
        })
        .map(drop)
}
