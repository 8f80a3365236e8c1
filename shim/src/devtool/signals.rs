//! Signals as messages. The commands that stay in the foreground (`sandbox
//! run`, `agent run`, attached `agent exec`) must clean up on SIGINT or
//! SIGTERM, forward signals to a container, or resize its terminal on
//! SIGWINCH, all of which is ordinary code that cannot run in a signal
//! handler. So the signals are blocked in every thread and one thread
//! takes them with sigwait(2) and sends them on a channel.

use std::sync::mpsc::Sender;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals that end or interrupt a foreground command.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Blocks `signals` in the calling thread; threads started afterwards
/// inherit the mask. Call before starting any thread, or a signal can land
/// in a thread that has not blocked it and take its default action.
pub fn block(signals: &[Signal]) -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    Ok(set)
}

/// Starts the thread that takes the signals in `set` (already blocked)
/// and sends `wrap(signal)` on `tx`, until the receiver is gone.
pub fn forward<T: Send + 'static>(
    set: SigSet,
    tx: Sender<T>,
    wrap: fn(Signal) -> T,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(signal) => {
                    if tx.send(wrap(signal)).is_err() {
                        return;
                    }
                }
                // sigwait fails only on an invalid set; nothing to retry.
                Err(_) => return,
            }
        })?;
    Ok(())
}
