//! Bridges containerd's stdio FIFOs to a guest process's stdio streams
//! (one agent connection per stream, see `containers.proto`). One thread
//! per stream; none of them can block an RPC: FIFOs are opened without
//! blocking, and [`Bridge::abort`] ends every stream at once.
//!
//! Output streams copy until the agent closes the connection, which it
//! does only after the process's output reached end of file: joining them
//! ([`Bridge::wait_outputs`]) before reporting an exit is what makes sure no
//! byte is lost. If containerd's reader goes away, output is still read
//! and dropped, so a container never blocks on a vanished reader.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::agent_client::containers::{Ports, StdioWanted};
use crate::agent_client::{AgentClient, AgentError};

/// How often an output stream retries opening a FIFO nobody reads yet.
const OPEN_RETRY: Duration = Duration::from_millis(20);
const COPY_CHUNK: usize = 64 * 1024;

/// The FIFO paths containerd gave for one process; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// The streams to ask the agent for. A terminal has one output stream.
    pub fn wanted(&self) -> StdioWanted {
        StdioWanted {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot connect the process's {stream} stream")]
    Connect {
        stream: &'static str,
        #[source]
        source: Box<AgentError>,
    },
    #[error("cannot start the {stream} copy thread")]
    Thread {
        stream: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the {stream} FIFO {}", .path.display())]
    Fifo {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The running copies of one process's streams.
pub struct Bridge {
    stdin: Option<StdinControl>,
    outputs: Vec<JoinHandle<()>>,
    /// Every connection, to end them all on abort.
    streams: Vec<UnixStream>,
    aborted: Arc<AtomicBool>,
}

struct StdinControl {
    /// Writing a byte here tells the stdin thread to finish.
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Connects every port the agent handed out (the agent holds the
    /// process's output until then), opens the FIFOs and starts copying.
    /// On error every connection made is closed again.
    pub fn connect(
        agent: &AgentClient,
        paths: &StdioPaths,
        ports: Ports,
    ) -> Result<Self, StdioError> {
        let connect =
            |stream: &'static str, port: Option<u32>| -> Result<Option<UnixStream>, StdioError> {
                port.map(|p| {
                    agent.connect_port(p).map_err(|source| StdioError::Connect {
                        stream,
                        source: Box::new(source),
                    })
                })
                .transpose()
            };
        let stdin = connect("stdin", ports.stdin)?;
        let stdout = connect("stdout", ports.stdout)?;
        let stderr = connect("stderr", ports.stderr)?;

        // The stdin FIFO is opened here, not in its thread, so a bad path
        // fails the call that asked for it.
        let stdin_fifo = match (&stdin, paths.stdin.is_empty()) {
            (Some(_), false) => Some(open_stdin_fifo(Path::new(&paths.stdin))?),
            _ => None,
        };

        let aborted = Arc::new(AtomicBool::new(false));
        let mut bridge = Bridge {
            stdin: None,
            outputs: Vec::new(),
            streams: Vec::new(),
            aborted: aborted.clone(),
        };
        for s in [&stdin, &stdout, &stderr].into_iter().flatten() {
            if let Ok(clone) = s.try_clone() {
                bridge.streams.push(clone);
            }
        }
        for (name, stream, path) in [
            ("stdout", stdout, &paths.stdout),
            ("stderr", stderr, &paths.stderr),
        ] {
            let Some(stream) = stream else { continue };
            let path = PathBuf::from(path);
            let aborted = aborted.clone();
            let handle = thread::Builder::new()
                .name(format!("stdio-{name}"))
                .spawn(move || copy_output(stream, &path, &aborted))
                .map_err(|source| StdioError::Thread {
                    stream: name,
                    source,
                });
            match handle {
                Ok(h) => bridge.outputs.push(h),
                Err(e) => {
                    bridge.abort();
                    return Err(e);
                }
            }
        }
        if let (Some(stream), Some(fifo)) = (stdin, stdin_fifo) {
            let (wake, woken) = UnixStream::pair().map_err(|source| StdioError::Thread {
                stream: "stdin",
                source,
            })?;
            let handle = thread::Builder::new()
                .name("stdio-stdin".into())
                .spawn(move || copy_stdin(fifo, stream, woken))
                .map_err(|source| StdioError::Thread {
                    stream: "stdin",
                    source,
                });
            match handle {
                Ok(h) => {
                    bridge.stdin = Some(StdinControl {
                        wake,
                        thread: Some(h),
                    })
                }
                Err(e) => {
                    bridge.abort();
                    return Err(e);
                }
            }
        }
        Ok(bridge)
    }

    /// Delivers what containerd already wrote to stdin, then closes the
    /// process's stdin (CloseIO).
    pub fn close_stdin(&mut self) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.wake.write_all(b"c");
        }
    }

    /// Whether the process has a stdin stream still open.
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Waits until every output stream has been copied to the end.
    pub fn wait_outputs(&mut self) {
        for handle in self.outputs.drain(..) {
            let _ = handle.join();
        }
    }

    /// Ends every stream now, delivered or not (Delete, a dead VM).
    pub fn abort(&mut self) {
        self.aborted.store(true, Ordering::SeqCst);
        for s in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.wake.shutdown(Shutdown::Both);
            // Its thread ends on the shut socket; nothing to wait for.
            stdin.thread.take();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Opens a stdin FIFO for reading without waiting for a writer.
fn open_stdin_fifo(path: &Path) -> Result<File, StdioError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| StdioError::Fifo {
            stream: "stdin",
            path: path.to_owned(),
            source,
        })
}

/// Opens an output FIFO for writing once containerd has opened its read
/// side (opening a FIFO for writing without a reader fails with ENXIO when
/// non-blocking, and would block otherwise). Gives up when aborted.
fn open_output_fifo(path: &Path, aborted: &AtomicBool) -> io::Result<File> {
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => {
                set_blocking(&file)?;
                return Ok(file);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if aborted.load(Ordering::SeqCst) {
                    return Err(e);
                }
                thread::sleep(OPEN_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Agent connection -> containerd FIFO, until the agent closes it.
fn copy_output(mut from: UnixStream, path: &Path, aborted: &AtomicBool) {
    let mut fifo = if path.as_os_str().is_empty() {
        None
    } else {
        match open_output_fifo(path, aborted) {
            Ok(f) => Some(f),
            Err(e) => {
                if !aborted.load(Ordering::SeqCst) {
                    log::warn!(
                        "stdio: cannot open {}: {e}; dropping output",
                        path.display()
                    );
                }
                None
            }
        }
    };
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Some(f) = &mut fifo {
            if let Err(e) = f.write_all(&buf[..n]) {
                // The reader is gone (EPIPE): keep draining so the
                // container never blocks on its output.
                log::debug!("stdio: {} closed by its reader: {e}", path.display());
                fifo = None;
            }
        }
    }
}

/// containerd FIFO -> agent connection. Ends at the FIFO's end of file, or
/// when woken: then whatever the FIFO holds is still delivered before the
/// process's stdin is closed (half-close of the connection).
fn copy_stdin(mut fifo: File, mut to: UnixStream, mut woken: UnixStream) {
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let (fifo_ready, wake_ready) = {
            let mut fds = [
                PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if wake_ready {
            // CloseIO (a byte) or abort (the socket shut): deliver what is
            // buffered either way; an aborted connection just fails.
            let mut b = [0u8; 1];
            let _ = woken.read(&mut b);
            drain_nonblocking(&mut fifo, &mut to, &mut buf);
            break;
        }
        if fifo_ready {
            match fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn drain_nonblocking(fifo: &mut File, to: &mut UnixStream, buf: &mut [u8]) {
    loop {
        match fifo.read(buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn terminal_has_no_stderr_stream() {
        let p = StdioPaths {
            stdin: "/i".into(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        assert_eq!(
            p.wanted(),
            StdioWanted {
                stdin: true,
                stdout: true,
                stderr: false
            }
        );
        assert_eq!(StdioPaths::default().wanted(), StdioWanted::default());
    }

    #[test]
    fn output_reaches_the_fifo_and_survives_a_vanished_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        mkfifo(&path);
        let (agent_side, shim_side) = UnixStream::pair().expect("pair");
        let aborted = Arc::new(AtomicBool::new(false));
        let p = path.clone();
        let a = aborted.clone();
        let copier = thread::spawn(move || copy_output(shim_side, &p, &a));
        // The reader comes late: the copier waits for it.
        thread::sleep(Duration::from_millis(50));
        let mut reader = File::open(&path).expect("open reader");
        let mut agent_side = agent_side;
        agent_side.write_all(b"hello").expect("write");
        let mut got = [0u8; 5];
        reader.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
        drop(reader);
        // Nobody reads any more: the copier drains and drops the rest.
        agent_side
            .write_all(&vec![7u8; 1 << 20])
            .expect("write after reader left");
        drop(agent_side);
        copier.join().expect("copier ends at end of stream");
    }

    #[test]
    fn stdin_is_delivered_then_half_closed_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdin");
        mkfifo(&path);
        let fifo = open_stdin_fifo(&path).expect("open");
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        let (mut agent_side, shim_side) = UnixStream::pair().expect("pair");
        let (mut wake, woken) = UnixStream::pair().expect("pair");
        let copier = thread::spawn(move || copy_stdin(fifo, shim_side, woken));
        writer.write_all(b"line one\n").expect("write");
        writer.write_all(b"line two\n").expect("write");
        // CloseIO while the writer is still open: what it wrote arrives,
        // then end of file.
        wake.write_all(b"c").expect("wake");
        let mut got = String::new();
        agent_side.read_to_string(&mut got).expect("read to EOF");
        assert_eq!(got, "line one\nline two\n");
        copier.join().expect("copier");
    }

    #[test]
    fn stdin_ends_when_the_writer_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdin");
        mkfifo(&path);
        let fifo = open_stdin_fifo(&path).expect("open");
        let (mut agent_side, shim_side) = UnixStream::pair().expect("pair");
        let (_wake, woken) = UnixStream::pair().expect("pair");
        let copier = thread::spawn(move || copy_stdin(fifo, shim_side, woken));
        {
            let mut writer = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("writer");
            writer.write_all(b"data").expect("write");
        }
        let mut got = String::new();
        agent_side.read_to_string(&mut got).expect("read to EOF");
        assert_eq!(got, "data");
        copier.join().expect("copier");
    }
}
