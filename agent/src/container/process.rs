//! One process the agent started (a container's init or an exec): its pid,
//! a pidfd for race-free signals, its stdio, and its exit once known.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::unistd::Pid;

use super::stdio::ProcessIo;
use crate::reaper::ExitStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: i32,
    pub status: ExitStatus,
    /// CLOCK_REALTIME when the agent reaped it, ns since the epoch.
    pub exited_at_unix_ns: u64,
}

pub struct Process {
    /// Empty for a container's init process.
    pub exec_id: String,
    pub pid: Pid,
    pidfd: Option<OwnedFd>,
    pub io: ProcessIo,
    exit: Mutex<Option<ExitInfo>>,
    exited: Condvar,
}

impl Process {
    pub fn new(exec_id: String, pid: Pid, pidfd: Option<OwnedFd>, io: ProcessIo) -> Self {
        Self {
            exec_id,
            pid,
            pidfd,
            io,
            exit: Mutex::new(None),
            exited: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ExitInfo>> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exit, once it has been published (output drained).
    pub fn exit(&self) -> Option<ExitInfo> {
        *self.lock()
    }

    /// Blocks until the exit is published; None if `timeout` passed first.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitInfo> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exit = self.lock();
        loop {
            if let Some(e) = *exit {
                return Some(e);
            }
            exit = match deadline {
                None => self.exited.wait(exit).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.exited
                        .wait_timeout(exit, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn publish(&self, info: ExitInfo) {
        *self.lock() = Some(info);
        self.exited.notify_all();
    }

    /// Sends `signal`. Through the pidfd, a process that has already been
    /// reaped gives ESRCH instead of hitting whoever got its pid next.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        send_signal(self.pidfd.as_ref(), self.pid, signal)
    }

    /// Whether the process (or its zombie) still exists.
    pub fn alive(&self) -> bool {
        self.exit().is_none() && self.signal(0).is_ok()
    }
}

/// Signals a process through its pidfd if it has one, else by pid.
pub fn send_signal(pidfd: Option<&OwnedFd>, pid: Pid, signal: i32) -> io::Result<()> {
    let rc = match pidfd {
        // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
        Some(fd) => unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        },
        // SAFETY: kill(2) has no memory-safety preconditions.
        None => i64::from(unsafe { libc::kill(pid.as_raw(), signal) }),
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Waits for the process's exit status from the reaper, then for its
/// output to drain, then publishes the exit and runs `then` with it.
pub fn monitor(process: &Process, exit: Receiver<ExitStatus>, then: impl FnOnce(ExitInfo)) {
    let status = match exit.recv() {
        Ok(s) => s,
        // The reaper lives as long as the agent; without it nothing can
        // tell us, so report a kill rather than wait forever.
        Err(_) => ExitStatus::Signaled {
            signal: libc::SIGKILL,
            core_dumped: false,
        },
    };
    let info = ExitInfo {
        pid: process.pid.as_raw(),
        status,
        exited_at_unix_ns: now_unix_ns(),
    };
    process.io.wait_outputs();
    // Output is done; stop reading stdin for a process that is gone.
    process.io.cancel();
    process.publish(info);
    then(info);
}
