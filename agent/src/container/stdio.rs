//! Process stdio over dedicated streams: one listening port per stream the
//! shim asked for, one connection each, bytes copied by a thread per
//! stream. Pipes (or a terminal) connect the process to the agent.
//!
//! A terminal is not made here: a pty from the agent's devpts would be a
//! stranger in the container's /dev/pts (ttyname() fails). The process
//! allocates it from the container's /dev/ptmx and passes the master back
//! (init.rs); until then its ports exist with nothing behind them.
//!
//! No byte is lost: output waits in the pipe (or pty) until the shim
//! connects, and the process's exit is published only after
//! `wait_outputs` has seen every output stream reach end of file with all
//! bytes written to the shim.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::debug;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, bind, listen, socket, AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr,
};

/// Streams the shim wants for one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// The ports the shim connects to; 0 = not requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub stdin: u32,
    pub stdout: u32,
    pub stderr: u32,
}

/// How stdio ports are reached.
#[derive(Debug, Clone)]
enum Transport {
    /// Guest mode: AF_VSOCK on any CID.
    Vsock,
    /// Host test mode: unix sockets at `<base>_<port>`, the names a hybrid
    /// vsock (Firecracker, Cloud Hypervisor) uses for ports.
    Unix(PathBuf),
}

/// Hands out ports and listens on them.
#[derive(Debug)]
pub struct PortAllocator {
    transport: Transport,
    next: AtomicU32,
}

impl PortAllocator {
    /// Serves stdio the same way the agent API is served on `listen_addr`.
    pub fn for_listen_addr(listen_addr: &str) -> Self {
        let transport = match listen_addr.strip_prefix("unix://") {
            Some(path) => Transport::Unix(PathBuf::from(path)),
            None => Transport::Vsock,
        };
        Self {
            transport,
            next: AtomicU32::new(palisade_protocols::STDIO_PORT_FIRST),
        }
    }

    /// Listens on the next free port.
    fn listen(&self) -> io::Result<(u32, Listener)> {
        // Ports in use (by a lingering listener) are skipped; a full sweep
        // without success means something else is wrong.
        for _ in 0..1024 {
            let port = self.next_port();
            match self.bind(port) {
                Ok(l) => return Ok((port, l)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free stdio port",
        ))
    }

    fn next_port(&self) -> u32 {
        let first = palisade_protocols::STDIO_PORT_FIRST;
        let port = self.next.fetch_add(1, Ordering::Relaxed);
        if port == u32::MAX {
            self.next.store(first, Ordering::Relaxed);
        }
        port.max(first)
    }

    fn bind(&self, port: u32) -> io::Result<Listener> {
        match &self.transport {
            Transport::Unix(base) => {
                let mut path = base.clone().into_os_string();
                path.push(format!("_{port}"));
                let path = PathBuf::from(path);
                let l = UnixListener::bind(&path)?;
                Ok(Listener {
                    fd: l.into(),
                    path: Some(path),
                })
            }
            Transport::Vsock => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
                listen(&fd, Backlog::new(1).unwrap_or(Backlog::MAXCONN))?;
                Ok(Listener { fd, path: None })
            }
        }
    }
}

/// A listening socket for one stream; its unix socket file goes with it.
struct Listener {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Listener {
    /// Waits for the shim's connection, or None once any of `cancels` fires.
    fn accept(&self, cancels: &[&Cancel]) -> io::Result<Option<OwnedFd>> {
        loop {
            let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                cancels
                    .iter()
                    .map(|c| PollFd::new(c.fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[1..].iter().any(|f| f.any().unwrap_or(true)) {
                return Ok(None);
            }
            match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                Ok(fd) => return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Wakes the threads of one process's stdio: pending accepts return, and
/// connections registered with it are shut down.
pub struct Cancel {
    read: OwnedFd,
    write: Mutex<Option<OwnedFd>>,
    conns: Mutex<Vec<Arc<OwnedFd>>>,
}

impl Cancel {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        Ok(Self {
            read,
            write: Mutex::new(Some(write)),
            conns: Mutex::new(Vec::new()),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    fn is_cancelled(&self) -> bool {
        lock(&self.write).is_none()
    }

    /// Tracks a connection so `cancel` can shut it down; false if already
    /// cancelled (the caller drops the connection).
    fn register(&self, conn: &Arc<OwnedFd>) -> bool {
        let write = lock(&self.write);
        if write.is_none() {
            return false;
        }
        lock(&self.conns).push(conn.clone());
        true
    }

    pub fn cancel(&self) {
        // Closing the write end makes the read end readable (EOF) for
        // every poller, at once and for good.
        lock(&self.write).take();
        for c in lock(&self.conns).drain(..) {
            let _ = socket::shutdown(c.as_raw_fd(), Shutdown::Both);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves `fd` to a number of at least 10, so the child's dup2s onto 0-3
/// can never overwrite a source they still need.
pub(super) fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 10 {
        return Ok(fd);
    }
    let new = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    high(f.into())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((high(r)?, high(w)?))
}

/// The process's fds 0, 1 and 2, to be dup'ed into place in the child.
pub struct ChildStdio(pub [OwnedFd; 3]);

/// The agent's ends of a process's streams, for the copy threads.
#[derive(Default)]
struct Ends {
    /// Where what the shim sends on the stdin port goes.
    stdin: Option<OwnedFd>,
    /// What each output port carries, in the order of `PendingIo::outputs`.
    outputs: Vec<OwnedFd>,
    /// A terminal's output when the shim did not ask for it: still read,
    /// so the process does not block on a full terminal.
    discard: Option<OwnedFd>,
    pty: Option<Arc<OwnedFd>>,
}

/// The agent's side of a process's stdio before the process runs: the
/// listening ports and, once known, what they connect to. Dropping it
/// removes the ports.
pub struct PendingIo {
    ports: Ports,
    stdin: Option<Listener>,
    /// stdout, then stderr, those the shim asked for.
    outputs: Vec<Listener>,
    terminal: bool,
    /// Pipes: from the start. A terminal: from `attach_terminal`, since the
    /// process allocates it inside its container, after the ports are
    /// handed out. Nothing is read or written before the copy threads
    /// start, so bytes wait in the pipe or pty either way.
    ends: Option<Ends>,
}

/// Sets up pipes and listening ports for a process; for a terminal only
/// the ports (and /dev/null until the process opens its terminal).
pub fn prepare(
    alloc: &PortAllocator,
    wanted: Wanted,
    terminal: bool,
) -> io::Result<(ChildStdio, PendingIo)> {
    let mut pending = PendingIo {
        ports: Ports::default(),
        stdin: None,
        outputs: Vec::new(),
        terminal,
        ends: None,
    };
    if terminal {
        if wanted.stdin {
            let (port, l) = alloc.listen()?;
            pending.ports.stdin = port;
            pending.stdin = Some(l);
        }
        // The terminal merges stdout and stderr into one stream.
        if wanted.stdout {
            let (port, l) = alloc.listen()?;
            pending.ports.stdout = port;
            pending.outputs.push(l);
        }
        let child = ChildStdio([dev_null(false)?, dev_null(true)?, dev_null(true)?]);
        return Ok((child, pending));
    }
    let mut ends = Ends::default();
    let stdin = if wanted.stdin {
        let (port, l) = alloc.listen()?;
        pending.ports.stdin = port;
        pending.stdin = Some(l);
        let (r, w) = pipe()?;
        ends.stdin = Some(w);
        r
    } else {
        dev_null(false)?
    };
    let mut output = |want: bool, port: &mut u32| -> io::Result<OwnedFd> {
        if !want {
            return dev_null(true);
        }
        let (p, l) = alloc.listen()?;
        *port = p;
        let (r, w) = pipe()?;
        grow_output_pipe(&r);
        pending.outputs.push(l);
        ends.outputs.push(r);
        Ok(w)
    };
    let stdout = output(wanted.stdout, &mut pending.ports.stdout)?;
    let stderr = output(wanted.stderr, &mut pending.ports.stderr)?;
    pending.ends = Some(ends);
    Ok((ChildStdio([stdin, stdout, stderr]), pending))
}

/// Whether `fd` is the master side of a pty (TIOCGPTN works only there).
fn is_pty_master(fd: &OwnedFd) -> bool {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to the pointer, which is valid.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut n) == 0 }
}

impl PendingIo {
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Takes the master of the terminal the process allocated in its
    /// container: the ports connect to it from now on.
    pub fn attach_terminal(&mut self, master: OwnedFd) -> io::Result<()> {
        if !self.terminal {
            return Err(io::Error::other(
                "got a terminal for a process that has none",
            ));
        }
        if self.ends.is_some() {
            return Err(io::Error::other("got a second terminal"));
        }
        if !is_pty_master(&master) {
            return Err(io::Error::other("got a terminal that is not a pty master"));
        }
        let stdin = self
            .stdin
            .as_ref()
            .map(|_| master.try_clone())
            .transpose()?;
        let reader = master.try_clone()?;
        let (outputs, discard) = if self.outputs.is_empty() {
            (Vec::new(), Some(reader))
        } else {
            (vec![reader], None)
        };
        self.ends = Some(Ends {
            stdin,
            outputs,
            discard,
            pty: Some(Arc::new(master)),
        });
        Ok(())
    }

    /// Starts the copying threads; call once the process is set up.
    pub fn start(self, name: &str) -> io::Result<ProcessIo> {
        let ends = self
            .ends
            .ok_or_else(|| io::Error::other("the process never sent its terminal"))?;
        let cancel = Arc::new(Cancel::new()?);
        let stdin = Arc::new(StdinControl {
            cancel: Cancel::new()?,
            conn: Mutex::new(None),
        });
        if let (Some(listener), Some(sink)) = (self.stdin, ends.stdin) {
            let (cancel, control) = (cancel.clone(), stdin.clone());
            spawn(format!("{name}-stdin"), move || {
                copy_stdin(listener, sink, &cancel, &control)
            })?;
        }
        let mut outputs = Vec::new();
        for (i, (listener, source)) in self.outputs.into_iter().zip(ends.outputs).enumerate() {
            let cancel = cancel.clone();
            let stream = if i == 0 { "stdout" } else { "stderr" };
            outputs.push(spawn(format!("{name}-{stream}"), move || {
                copy_output(listener, source, &cancel)
            })?);
        }
        if let Some(source) = ends.discard {
            outputs.push(spawn(format!("{name}-tty"), move || {
                drain(File::from(source))
            })?);
        }
        Ok(ProcessIo {
            cancel,
            stdin,
            outputs: Mutex::new(outputs),
            pty: ends.pty,
        })
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f)
}

struct StdinControl {
    /// Fires when stdin is closed before the shim connected.
    cancel: Cancel,
    conn: Mutex<Option<Arc<OwnedFd>>>,
}

/// The running copy threads of one process.
pub struct ProcessIo {
    cancel: Arc<Cancel>,
    stdin: Arc<StdinControl>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
    pty: Option<Arc<OwnedFd>>,
}

impl ProcessIo {
    /// Blocks until every output stream has been drained to the shim (or
    /// the shim went away, or `cancel` ended the wait).
    pub fn wait_outputs(&self) {
        let handles: Vec<_> = lock(&self.outputs).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Closes the process's stdin once what the shim sent has been
    /// delivered, or at once if it never connected.
    pub fn close_stdin(&self) {
        let conn = lock(&self.stdin.conn);
        match conn.as_ref() {
            // Reads return what is queued, then end of file.
            Some(c) => {
                let _ = socket::shutdown(c.as_raw_fd(), Shutdown::Read);
            }
            None => self.stdin.cancel.cancel(),
        }
    }

    /// Ends every stream now: pending accepts return and connections are
    /// shut down. Output not yet copied is lost, so only for processes
    /// being removed (or already drained).
    pub fn cancel(&self) {
        self.cancel.cancel();
        self.stdin.cancel.cancel();
    }

    /// Sets the terminal's window size; false if there is no terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<bool> {
        let Some(pty) = &self.pty else {
            return Ok(false);
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid.
        let rc = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
}

/// Copy buffer, and the size output pipes are grown to. Every write to
/// the shim's connection is a trip through the guest's vsock driver and,
/// at least once per packet batch, a VM exit: the more a read returns, the
/// fewer of them per byte. A 64 KiB pipe and a 32 KiB buffer gave 8.8 MB/s
/// of container stdout in the nested test host (runc there: 28 MB/s).
const BUF: usize = 256 * 1024;
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

/// Lets a process's output pile up to [`OUTPUT_PIPE_SIZE`] while the copy
/// thread is writing, so its next read takes a large piece. Failing (a
/// lower fs.pipe-max-size) only leaves the default size.
fn grow_output_pipe(read_end: &OwnedFd) {
    if let Err(e) = fcntl(
        read_end.as_raw_fd(),
        FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE),
    ) {
        debug!("stdio: cannot grow an output pipe: {e}");
    }
}

/// Copies a process output to the shim's connection until end of file.
fn copy_output(listener: Listener, source: OwnedFd, cancel: &Cancel) {
    let mut source = File::from(source);
    let conn = match listener.accept(&[cancel]) {
        Ok(Some(c)) => Arc::new(c),
        // Cancelled: the process is being removed.
        Ok(None) => return,
        Err(e) => {
            debug!("stdio accept: {e}; discarding output");
            return drain(source);
        }
    };
    drop(listener);
    if !cancel.register(&conn) {
        return;
    }
    let mut sink = match conn.try_clone() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            debug!("stdio: {e}; discarding output");
            return drain(source);
        }
    };
    let mut buf = vec![0u8; BUF];
    loop {
        match source.read(&mut buf) {
            // EIO: a terminal whose last holder closed it.
            Ok(0) => break,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("stdio read: {e}");
                break;
            }
            Ok(n) => {
                if let Err(e) = sink.write_all(&buf[..n]) {
                    // The shim went away: keep the process from blocking.
                    debug!("stdio write: {e}; discarding the rest");
                    return drain(source);
                }
            }
        }
    }
    let _ = socket::shutdown(conn.as_raw_fd(), Shutdown::Write);
}

/// Reads and drops everything until end of file.
fn drain(mut source: File) {
    let mut buf = vec![0u8; BUF];
    loop {
        match source.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies the shim's stdin connection to the process until either side
/// ends; dropping `sink` then gives the process end of file.
fn copy_stdin(listener: Listener, sink: OwnedFd, cancel: &Cancel, control: &StdinControl) {
    // The stdin cancel covers CloseStdin before the shim connected.
    let conn = match listener.accept(&[cancel, &control.cancel]) {
        Ok(Some(c)) => Arc::new(c),
        Ok(None) => return,
        Err(e) => {
            debug!("stdin accept: {e}");
            return;
        }
    };
    drop(listener);
    {
        let mut slot = lock(&control.conn);
        if control.cancel.is_cancelled() || !cancel.register(&conn) {
            return;
        }
        *slot = Some(conn.clone());
    }
    let mut source = match conn.try_clone() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            debug!("stdin: {e}");
            return;
        }
    };
    let mut sink = File::from(sink);
    let mut buf = vec![0u8; BUF];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok(n) => {
                if sink.write_all(&buf[..n]).is_err() {
                    // The process closed its stdin or exited.
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("palisade-stdio-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn connect(base: &std::path::Path, port: u32) -> UnixStream {
        let mut p = base.as_os_str().to_owned();
        p.push(format!("_{port}"));
        UnixStream::connect(PathBuf::from(p)).unwrap()
    }

    #[test]
    fn ports_follow_the_listen_address() {
        let a = PortAllocator::for_listen_addr("unix:///run/x.sock");
        assert!(
            matches!(&a.transport, Transport::Unix(p) if p == std::path::Path::new("/run/x.sock"))
        );
        assert!(matches!(
            PortAllocator::for_listen_addr("vsock://-1:1024").transport,
            Transport::Vsock
        ));
    }

    // Output written before the shim connects, and after, all arrives; the
    // outputs finish only at end of file; ports vanish once used.
    #[test]
    fn pipes_deliver_everything_then_end() {
        let dir = scratch("pipes");
        let base = dir.join("agent.sock");
        let alloc = PortAllocator::for_listen_addr(&format!("unix://{}", base.display()));
        let wanted = Wanted {
            stdin: true,
            stdout: true,
            stderr: true,
        };
        let (child, pending) = prepare(&alloc, wanted, false).unwrap();
        let ports = pending.ports();
        assert!(ports.stdin >= palisade_protocols::STDIO_PORT_FIRST);
        assert!(ports.stdout != ports.stdin && ports.stderr != ports.stdout);
        let io = pending.start("t").unwrap();
        let [child_in, child_out, child_err] = child.0;

        let mut out_w = File::from(child_out);
        out_w.write_all(b"before ").unwrap();
        let mut out = connect(&base, ports.stdout);
        let mut err = connect(&base, ports.stderr);
        let mut inp = connect(&base, ports.stdin);
        out_w.write_all(b"after").unwrap();
        drop(out_w);
        File::from(child_err).write_all(b"oops").unwrap();

        inp.write_all(b"typed").unwrap();
        inp.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got_in = String::new();
        File::from(child_in).read_to_string(&mut got_in).unwrap();
        assert_eq!(got_in, "typed");

        io.wait_outputs();
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        assert_eq!(s, "before after");
        s.clear();
        err.read_to_string(&mut s).unwrap();
        assert_eq!(s, "oops");
        let leftover: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(leftover.is_empty(), "{leftover:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn close_stdin_before_connecting_gives_eof() {
        let dir = scratch("closein");
        let base = dir.join("a.sock");
        let alloc = PortAllocator::for_listen_addr(&format!("unix://{}", base.display()));
        let (child, pending) = prepare(
            &alloc,
            Wanted {
                stdin: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let io = pending.start("t").unwrap();
        io.close_stdin();
        let [child_in, _, _] = child.0;
        let mut s = String::new();
        File::from(child_in).read_to_string(&mut s).unwrap();
        assert_eq!(s, "");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cancel_ends_a_wait_for_a_shim_that_never_came() {
        let dir = scratch("cancel");
        let base = dir.join("a.sock");
        let alloc = PortAllocator::for_listen_addr(&format!("unix://{}", base.display()));
        let (child, pending) = prepare(
            &alloc,
            Wanted {
                stdout: true,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let io = pending.start("t").unwrap();
        drop(child);
        io.cancel();
        io.wait_outputs();
        std::fs::remove_dir_all(dir).unwrap();
    }

    // The terminal comes after the ports, from the process; what it wrote
    // before the shim connected still arrives.
    #[test]
    fn terminal_output_reaches_the_stdout_port() {
        let dir = scratch("tty");
        let base = dir.join("a.sock");
        let alloc = PortAllocator::for_listen_addr(&format!("unix://{}", base.display()));
        let (child, mut pending) = prepare(
            &alloc,
            Wanted {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
            true,
        )
        .unwrap();
        drop(child);
        let ports = pending.ports();
        assert_eq!(ports.stderr, 0, "a terminal has one output stream");
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut slave = File::from(pty.slave);
        slave.write_all(b"before ").unwrap();
        pending.attach_terminal(pty.master).unwrap();
        let io = pending.start("t").unwrap();
        assert!(io.resize(24, 80).unwrap());
        let mut out = connect(&base, ports.stdout);
        slave.write_all(b"after").unwrap();
        drop(slave);
        io.wait_outputs();
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        assert_eq!(s, "before after");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn terminals_come_only_where_expected() {
        let dir = scratch("tty-wrong");
        let base = dir.join("a.sock");
        let alloc = PortAllocator::for_listen_addr(&format!("unix://{}", base.display()));
        let wanted = Wanted {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let (_, mut pipes) = prepare(&alloc, wanted, false).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        assert!(pipes.attach_terminal(pty.master).is_err());

        let (_, mut tty) = prepare(&alloc, wanted, true).unwrap();
        assert!(
            tty.attach_terminal(pty.slave).is_err(),
            "a slave is not a master"
        );
        let e = tty.start("t").err().expect("no terminal, no start");
        assert!(e.to_string().contains("never sent its terminal"), "{e}");
        drop(pipes);
        let leftover: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(leftover.is_empty(), "{leftover:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
