//! A process's stdio streams joined to this tool's own stdin, stdout and
//! stderr. The streams are connected right after CreateContainer or
//! ExecProcess (the contract in containers.proto), one thread copies each,
//! and the command waits for the output copies to finish before it exits,
//! so every byte the process wrote reaches our stdout first.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use crate::agent_client::containers::Ports;
use crate::agent_client::{AgentClient, AgentError};

/// Large copies: a container streaming logs should not be slowed by
/// syscalls per few KiB (the vsock connection's credit is 256 KiB).
const COPY_BUFFER: usize = 256 * 1024;

/// The connected streams of one process.
pub struct Streams {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

/// Connects every port the agent handed out.
pub fn connect(agent: &AgentClient, ports: Ports) -> Result<Streams, AgentError> {
    let open = |port: Option<u32>| port.map(|p| agent.connect_port(p)).transpose();
    Ok(Streams {
        stdin: open(ports.stdin)?,
        stdout: open(ports.stdout)?,
        stderr: open(ports.stderr)?,
    })
}

/// The copying threads of one process.
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

impl Streams {
    /// Starts copying: our stdin to the process (end of file becomes a
    /// half-close, which the agent turns into the process's end of file),
    /// its stdout and stderr to ours.
    pub fn start(self) -> io::Result<Copies> {
        if let Some(stream) = self.stdin {
            // Not joined: it may sit in a read of a terminal that never
            // ends; the process exiting ends this tool, thread and all.
            spawn("stdin", move || copy_stdin(stream))?;
        }
        let mut outputs = Vec::new();
        for (stream, which) in [(self.stdout, Output::Stdout), (self.stderr, Output::Stderr)] {
            if let Some(stream) = stream {
                outputs.push(spawn("output", move || copy_output(stream, which))?);
            }
        }
        Ok(Copies { outputs })
    }
}

impl Copies {
    /// Waits until the process's output streams have ended (the agent
    /// closes them once the process and anything holding its stdout are
    /// gone) and everything is written out.
    pub fn finish(self) {
        for h in self.outputs {
            let _ = h.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

fn copy_stdin(mut stream: UnixStream) {
    let mut input = io::stdin().lock();
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    // The process closed its stdin or is gone.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn copy_output(mut stream: UnixStream, which: Output) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A reset stream loses the rest: say so rather than end
                // as if the output were complete.
                let name = match which {
                    Output::Stdout => "stdout",
                    Output::Stderr => "stderr",
                };
                eprintln!("palisade: the process's {name} stream failed ({e}): its output may be incomplete");
                return;
            }
        };
        // Unbuffered (stdout's lock is re-taken per chunk, so stdout and
        // stderr interleave as they arrive). If our output is gone (a
        // closed pipe), stop reading: the agent then discards the rest so
        // the process is not blocked.
        let written = match which {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&buf[..n]).and_then(|()| out.flush())
            }
            Output::Stderr => io::stderr().lock().write_all(&buf[..n]),
        };
        if written.is_err() {
            return;
        }
    }
}
