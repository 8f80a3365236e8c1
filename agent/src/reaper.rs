//! Collects every child's exit status (as PID 1, that includes orphans
//! re-parented to us) and routes it to whoever watches that pid.
//!
//! Nothing else in the agent may wait for children: `Child::wait` and
//! friends would race with `reap` and get ECHILD.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use log::debug;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The shell convention containerd also reports: 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

#[derive(Default)]
pub struct Reaper {
    // Held across spawn-and-subscribe and across each reap pass, so a child
    // cannot be reaped between being forked and being watched.
    watchers: Mutex<HashMap<Pid, Sender<ExitStatus>>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `spawn`, which starts a child and returns something plus the
    /// child's pid, and subscribes to that child's exit status.
    pub fn spawn_watched<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(T, Pid)>,
    ) -> io::Result<(T, Receiver<ExitStatus>)> {
        let mut watchers = self.lock();
        let (value, pid) = spawn()?;
        let (tx, rx) = channel();
        watchers.insert(pid, tx);
        Ok((value, rx))
    }

    /// Waits for every child that has exited, without blocking. Call on each
    /// SIGCHLD: signals coalesce, so one may stand for many exits.
    pub fn reap(&self) {
        let mut watchers = self.lock();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                    pid,
                    ExitStatus::Signaled {
                        signal: signal as i32,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                // Stops and continues are not requested, so not expected.
                Ok(other) => {
                    debug!("reaper: ignoring {other:?}");
                    continue;
                }
                Err(e) => {
                    debug!("reaper: waitpid: {e}");
                    return;
                }
            };
            match watchers.remove(&pid) {
                // A watcher that went away no longer cares.
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => debug!("reaped unwatched pid {pid}: {status:?}"),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pid, Sender<ExitStatus>>> {
        // A panic elsewhere while holding the lock leaves the map intact.
        self.watchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn run_until_reaped(reaper: &Reaper, rx: &Receiver<ExitStatus>) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            reaper.reap();
            if let Ok(status) = rx.try_recv() {
                return status;
            }
            assert!(Instant::now() < deadline, "child never reaped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // One test: waitpid(-1) would steal the children of parallel tests.
    #[test]
    fn routes_exit_codes_and_signals_to_the_watcher() {
        let reaper = Reaper::new();

        let (_, rx) = reaper
            .spawn_watched(|| {
                let child = Command::new("sh").args(["-c", "exit 7"]).spawn()?;
                Ok(((), Pid::from_raw(child.id() as i32)))
            })
            .unwrap();
        let status = run_until_reaped(&reaper, &rx);
        assert_eq!(status, ExitStatus::Exited(7));
        assert_eq!(status.code(), 7);

        let (_, rx) = reaper
            .spawn_watched(|| {
                let child = Command::new("sh").args(["-c", "kill -9 $$"]).spawn()?;
                Ok(((), Pid::from_raw(child.id() as i32)))
            })
            .unwrap();
        let status = run_until_reaped(&reaper, &rx);
        assert_eq!(
            status,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        assert_eq!(status.code(), 137);
    }
}
