//! Starting a container's init (or exec) process, agent side.
//!
//! The agent is multi-threaded (ttrpc workers, stdio copiers), and a child
//! forked from a multi-threaded process may only make async-signal-safe
//! calls until it execs: another thread may have held the allocator's lock
//! at the fork. So the child is created with a raw clone(2) (which also
//! creates its namespaces), only dup2s its fds into place and re-executes
//! the agent binary (`palisade-agent __palisade-container-init`, from the
//! sealed memfd copy of sealed_exe.rs, never the agent's file). The fresh,
//! single-threaded process then does the container setup in ordinary Rust
//! (see `init.rs`), driven by messages on fd 3. That is runc's design too;
//! youki's libcontainer instead runs its setup in the cloned child without
//! exec, which is why the agent does not use it.
//!
//! The child is cloned while the reaper's lock is held, so its exit status
//! always reaches us, and a pidfd taken at once makes later signals immune
//! to pid reuse.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::sealed_exe;
use super::spec::InitConfig;
use super::stdio::{high, ChildStdio};
use crate::reaper::{ExitStatus, Reaper};

/// argv[1] that makes the agent binary act as a container's init process.
pub const INIT_ARG: &str = "__palisade-container-init";
/// Where the init process finds its channel to the agent.
pub const CHANNEL_FD: RawFd = 3;
/// A frame larger than this is a bug, not a spec.
const MAX_FRAME: u32 = 16 << 20;
/// Room for more fds than any message carries, so a surplus is seen (and
/// closed) rather than truncated away unnoticed.
const MAX_FDS: usize = 4;

/// Agent to init process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    Config(Box<InitConfig>),
    /// Exec the program now.
    Start,
}

/// Init process to agent. After `Ready` and `Start`, end of file means the
/// exec succeeded (the channel is close-on-exec).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromInit {
    /// The master of the terminal now on the process's fds 0-2, passed as
    /// SCM_RIGHTS with this message (before `Ready`).
    Terminal,
    Ready,
    Failed(String),
}

/// Length-prefixed JSON messages over a socketpair. A message may carry
/// fds; they travel as SCM_RIGHTS on the first byte of its frame.
pub struct Channel(UnixStream);

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Self(stream)
    }

    fn frame<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
        let body = serde_json::to_vec(msg)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("message too large"))?;
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.0.write_all(&Self::frame(msg)?)
    }

    /// Sends `msg` with a duplicate of `fd` (the caller keeps its own).
    pub fn send_fd<T: Serialize>(&mut self, msg: &T, fd: BorrowedFd<'_>) -> io::Result<()> {
        let frame = Self::frame(msg)?;
        let fds = [fd.as_raw_fd()];
        let sent = loop {
            match sendmsg::<()>(
                self.0.as_raw_fd(),
                &[IoSlice::new(&frame)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // The fd went with the first byte; what did not fit is plain data.
        self.0.write_all(&frame[sent..])
    }

    /// The next message, or None if the peer closed the channel. Fds that
    /// came with it are closed: this caller expects none.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        Ok(self.recv_with_fds()?.map(|(msg, _fds)| msg))
    }

    /// The next message and the fds that came with it (close-on-exec), or
    /// None if the peer closed the channel.
    pub fn recv_with_fds<T: DeserializeOwned>(&mut self) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut fds = Vec::new();
        let mut len = [0u8; 4];
        if !self.read_exact(&mut len, &mut fds)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(io::Error::other(format!(
                "message of {len} bytes is too large"
            )));
        }
        let mut body = vec![0u8; len as usize];
        if !self.read_exact(&mut body, &mut fds)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Some((serde_json::from_slice(&body)?, fds)))
    }

    /// Fills `buf`, adding any fds received on the way to `fds`: reading
    /// with plain read(2) would make the kernel drop them. Never reads past
    /// `buf`, so fds stay with the frame they were sent with. False at end
    /// of file before the first byte.
    fn read_exact(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let msg = match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let n = msg.bytes;
            // Fails (ENOBUFS) if fds were cut off: more than any message has.
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these fds for us.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if n == 0 {
                return match got {
                    0 => Ok(false),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
            got += n;
        }
        Ok(true)
    }

    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(t)
    }
}

/// What to start.
pub struct SpawnRequest<'a> {
    /// CLONE_NEW* flags for the new namespaces.
    pub clone_flags: CloneFlags,
    /// A pid namespace to start the process in (a container's, for exec).
    pub pid_namespace: Option<&'a Path>,
    pub stdio: ChildStdio,
}

pub struct Spawned {
    pub pid: Pid,
    pub pidfd: Option<OwnedFd>,
    pub exit: Receiver<ExitStatus>,
    pub channel: Channel,
}

/// Everything the child needs, allocated before clone: after it, the child
/// must not allocate.
struct ExecPlan {
    /// The sealed copy of the agent (execveat with AT_EMPTY_PATH).
    exe: RawFd,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    fds: Vec<(RawFd, RawFd)>,
    _strings: Vec<CString>,
}

impl ExecPlan {
    fn new(exe: BorrowedFd<'_>, fds: Vec<(RawFd, RawFd)>) -> Self {
        let strings = vec![
            CString::from(c"palisade-agent"),
            CString::new(INIT_ARG).unwrap_or_default(),
        ];
        let mut argv: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        Self {
            exe: exe.as_raw_fd(),
            argv,
            envp: vec![std::ptr::null()],
            fds,
            _strings: strings,
        }
    }
}

// SAFETY: the pointers point into `_strings` and the CStrings, which the
// plan owns and nobody mutates; the spawning thread only reads them.
unsafe impl Sync for ExecPlan {}

/// Runs in the cloned child: only async-signal-safe calls.
///
/// # Safety
/// Call only in the child of a fork-like clone.
unsafe fn exec_child(plan: &ExecPlan) -> ! {
    for &(src, dst) in &plan.fds {
        // dup2 clears close-on-exec on the new fd.
        if libc::dup2(src, dst) < 0 {
            libc::_exit(126);
        }
    }
    // execveat(2) is a raw system call: async-signal-safe.
    libc::syscall(
        libc::SYS_execveat,
        plan.exe,
        c"".as_ptr(),
        plan.argv.as_ptr(),
        plan.envp.as_ptr(),
        libc::AT_EMPTY_PATH,
    );
    libc::_exit(127)
}

/// clone(2) like fork (no new stack, SIGCHLD on exit), in new namespaces.
fn clone_exec(flags: CloneFlags, plan: &ExecPlan) -> io::Result<Pid> {
    let flags = (flags.bits() as libc::c_ulong) | (libc::SIGCHLD as libc::c_ulong);
    // SAFETY: with a null stack clone behaves like fork: the child gets a
    // copy of this thread's stack and memory, and only runs exec_child.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        0 => unsafe { exec_child(plan) },
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// Clones on a short-lived thread that first enters `pid_ns`:
/// setns(CLONE_NEWPID) changes the pid namespace of that thread's future
/// children only, and the thread's change dies with it.
fn clone_in_pid_ns(pid_ns: &Path, flags: CloneFlags, plan: &ExecPlan) -> io::Result<Pid> {
    let ns = File::open(pid_ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWPID)?;
            clone_exec(flags, plan)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("spawning thread panicked")))
    })
}

fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // Older kernels (< 5.3) lack it; signals then go by pid.
    // SAFETY: a non-negative return is a new fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Starts the sealed copy of the agent as `__palisade-container-init` in
/// new namespaces with the given stdio and a channel on fd 3.
pub fn spawn(reaper: &Reaper, req: SpawnRequest<'_>) -> io::Result<Spawned> {
    let exe = sealed_exe::init()
        .map_err(|e| io::Error::other(format!("no sealed copy of the agent to run: {e}")))?;
    let (ours, theirs) = UnixStream::pair()?;
    // Above 0-3, so the dup2s in the child cannot overwrite it.
    let theirs = high(theirs.into())?;
    let [stdin, stdout, stderr] = &req.stdio.0;
    let plan = ExecPlan::new(
        exe,
        vec![
            (stdin.as_raw_fd(), 0),
            (stdout.as_raw_fd(), 1),
            (stderr.as_raw_fd(), 2),
            (theirs.as_raw_fd(), CHANNEL_FD),
        ],
    );
    let ((pid, pidfd), exit) = reaper.spawn_watched(|| {
        let pid = match req.pid_namespace {
            Some(ns) => clone_in_pid_ns(ns, req.clone_flags, &plan)?,
            None => clone_exec(req.clone_flags, &plan)?,
        };
        // Not reaped yet (we hold the reaper), so the pid is still ours.
        Ok(((pid, pidfd_open(pid)), pid))
    })?;
    // The child's ends now live in the child only.
    drop(theirs);
    drop(req.stdio);
    Ok(Spawned {
        pid,
        pidfd,
        exit,
        channel: Channel::new(ours),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn channel_frames_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        a.send(&FromInit::Failed("no such file".into())).unwrap();
        a.send(&FromInit::Ready).unwrap();
        drop(a);
        assert_eq!(
            b.recv::<FromInit>().unwrap(),
            Some(FromInit::Failed("no such file".into()))
        );
        assert_eq!(b.recv::<FromInit>().unwrap(), Some(FromInit::Ready));
        assert_eq!(b.recv::<FromInit>().unwrap(), None);
    }

    #[test]
    fn fds_travel_with_their_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        let (r, w) = nix::unistd::pipe().unwrap();
        a.send(&"first").unwrap();
        a.send_fd(&"with an fd", w.as_fd()).unwrap();
        drop(w);
        a.send(&"last").unwrap();
        let (msg, fds) = b.recv_with_fds::<String>().unwrap().unwrap();
        assert_eq!((msg.as_str(), fds.len()), ("first", 0));
        let (msg, mut fds) = b.recv_with_fds::<String>().unwrap().unwrap();
        assert_eq!((msg.as_str(), fds.len()), ("with an fd", 1));
        let passed = fds.remove(0);
        let flags = nix::fcntl::fcntl(passed.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received fds are close-on-exec"
        );
        File::from(passed).write_all(b"via the channel").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut File::from(r), &mut s).unwrap();
        assert_eq!(s, "via the channel");
        assert_eq!(b.recv::<String>().unwrap().as_deref(), Some("last"));
    }

    #[test]
    fn fds_nobody_expects_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        a.send_fd(&FromInit::Ready, w.as_fd()).unwrap();
        drop(w);
        assert_eq!(b.recv::<FromInit>().unwrap(), Some(FromInit::Ready));
        // End of file, not EAGAIN: the passed write end was closed too.
        let mut buf = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut File::from(r), &mut buf).unwrap(),
            0
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&(MAX_FRAME + 1).to_le_bytes()).unwrap();
        assert!(Channel::new(b).recv::<FromInit>().is_err());
    }
}
