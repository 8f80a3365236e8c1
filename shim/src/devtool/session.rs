//! A process attached to this tool's terminal or pipes, from its stdio
//! ports to its exit: `agent run` (init process) and `agent exec`.
//!
//! While the process runs, signals this tool gets are passed on to it
//! (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2), as `docker run`
//! does, so Ctrl-C in a non-terminal session reaches the container; the
//! third SIGINT/SIGTERM/SIGHUP sends SIGKILL instead, for a process that
//! ignores them. SIGWINCH resizes a `--tty` process's terminal.

use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::attach;
use super::report::Call;
use super::signals;
use super::terminal;
use crate::agent_client::containers::{Exit, Started};
use crate::agent_client::{AgentClient, AgentError};

/// Signals an attached session handles. Blocked from the start of the
/// program (before the agent connection starts its threads).
pub const SESSION_SIGNALS: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How many stop signals are passed on before the process is killed.
const FORWARDED_BEFORE_KILL: u32 = 2;

/// WaitProcess deadline per call; a wait that outlives it is re-issued.
const WAIT_CHUNK: Duration = Duration::from_secs(3600);

/// The process of a session.
pub struct Session<'a> {
    pub agent: &'a AgentClient,
    pub id: &'a str,
    /// Empty: the container's init process.
    pub exec_id: &'a str,
    pub tty: bool,
}

enum Happened {
    Signal(Signal),
    Exited(Result<Exit, AgentError>),
}

/// Waits for a process's exit, re-issuing WaitProcess as its deadline
/// passes; with `limit`, gives up after that long.
pub fn wait_exit(
    agent: &AgentClient,
    id: &str,
    exec_id: &str,
    limit: Option<Duration>,
) -> Result<Exit, AgentError> {
    loop {
        match agent.wait_process(id, exec_id, limit.unwrap_or(WAIT_CHUNK)) {
            Err(AgentError::RpcTimeout { .. }) if limit.is_none() => continue,
            other => return other,
        }
    }
}

impl Session<'_> {
    /// Connects the ports in `started`, runs `start` (StartContainer for an
    /// init process; an exec process runs already), copies stdio until the
    /// process exits and its output is drained, and returns the exit.
    pub fn attach(
        &self,
        started: &Started,
        start: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<Exit> {
        let streams = attach::connect(self.agent, started.ports).call("connecting stdio")?;
        let raw = if self.tty {
            terminal::enter_raw()
                .map_err(|e| anyhow::anyhow!("cannot put this terminal in raw mode: {e}"))?
        } else {
            None
        };
        if self.tty {
            self.resize();
        }
        let copies = streams
            .start()
            .map_err(|e| anyhow::anyhow!("cannot start the stdio threads: {e}"))?;
        start()?;

        let (tx, rx) = mpsc::channel();
        let set = signals::block(&SESSION_SIGNALS)
            .map_err(|e| anyhow::anyhow!("cannot block signals: {e}"))?;
        signals::forward(set, tx.clone(), Happened::Signal)
            .map_err(|e| anyhow::anyhow!("cannot start the signal thread: {e}"))?;
        let exit = std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = tx.send(Happened::Exited(wait_exit(
                    self.agent,
                    self.id,
                    self.exec_id,
                    None,
                )));
            });
            let mut stops = 0;
            loop {
                match rx.recv() {
                    Ok(Happened::Exited(result)) => return result.call("waiting for the process"),
                    Ok(Happened::Signal(Signal::SIGWINCH)) => self.resize(),
                    Ok(Happened::Signal(signal)) => {
                        let mut signal = signal;
                        if signals::STOP_SIGNALS.contains(&signal) {
                            stops += 1;
                            if stops > FORWARDED_BEFORE_KILL {
                                signal = Signal::SIGKILL;
                            }
                        }
                        // It may have exited meanwhile: the wait says so.
                        let _ =
                            self.agent
                                .signal_process(self.id, self.exec_id, signal as u32, false);
                    }
                    // Cannot happen while `tx` lives here; said, not assumed.
                    Err(_) => anyhow::bail!("the wait thread ended without reporting the exit"),
                }
            }
        });
        // Every byte first, then the exit (the agent drained the process's
        // output before reporting it, so these end promptly). Without an
        // exit, the streams may never end: do not wait for them.
        if exit.is_ok() {
            copies.finish();
        }
        drop(raw);
        exit
    }

    /// Gives the process's terminal our window size, if we have one.
    fn resize(&self) {
        if let Some((rows, cols)) = terminal::window_size() {
            // A failed resize leaves the old size: not worth ending over.
            let _ =
                self.agent
                    .resize_terminal(self.id, self.exec_id, u32::from(rows), u32::from(cols));
        }
    }
}

/// The exit status this tool ends with: the process's own (128 + signal
/// for a killed one, as the agent reports it).
pub fn exit_status(exit: &Exit) -> u8 {
    u8::try_from(exit.code).unwrap_or(u8::MAX)
}
