//! Helpers shared by the agent's integration tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_palisade-agent");
pub const READY_LINE: &str = "palisade-agent: ready";

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("palisade-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent process, killed on drop so a failed test leaves nothing behind.
pub struct Agent {
    pub child: Child,
    stderr: Receiver<String>,
    pub lines: Vec<String>,
}

impl Agent {
    /// Starts the agent binary in host mode with `args`.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(AGENT_BIN);
        cmd.args(args);
        Self::spawn(cmd)
    }

    /// Runs `cmd`, which ends up running the agent, capturing its stderr.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting palisade-agent");
        let pipe = child.stderr.take().expect("stderr is piped");
        let (tx, stderr) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            stderr,
            lines: Vec::new(),
        }
    }

    /// Collects stderr until a line equals `want`.
    pub fn wait_for_line(&mut self, want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                let found = line == want;
                self.lines.push(line);
                if found {
                    return;
                }
            }
        }
        panic!("no {want:?} line; agent said: {:#?}", self.lines);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for agent") {
                // The pipe closes on exit, so this drains everything.
                self.lines.extend(self.stderr.iter());
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(TIMEOUT)
}

pub fn unix_addr(sock: &Path) -> String {
    format!("unix://{}", sock.display())
}
