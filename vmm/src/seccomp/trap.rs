//! What happens on a seccomp violation: the filters answer
//! SECCOMP_RET_TRAP, the kernel delivers SIGSYS with the syscall number in
//! its siginfo, and this handler writes one line naming it to stderr
//! (which the shim keeps) and ends the process with SIGSYS.
//!
//! Why TRAP and not SECCOMP_RET_KILL_PROCESS: a killed process says
//! nothing, and the kernel's audit record of the kill is often unreadable
//! to the shim (no auditd, `dmesg_restrict`, a container's kernel log);
//! the trap lets the VMM name the syscall itself. It keeps the kill's
//! guarantees: the syscall never runs, and the handler does not return
//! (SA_RESETHAND restores the default action, which then kills the whole
//! process, so the shim sees "killed by SIGSYS" as with a kill). A thread
//! that blocked SIGSYS gains nothing: the kernel forces a trap's SIGSYS
//! through, killing the process if it cannot be handled.
//!
//! The handler only makes syscalls every filter allows (`write`, `prctl`
//! PR_SET_DUMPABLE 0, `kill` of its own process with SIGSYS), allocates
//! nothing, takes no lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};

use super::{syscall_name, SeccompError, ThreadKind};

/// How the VMM's violation line starts; the shim looks for it.
pub const VIOLATION_PREFIX: &str = "palisade-vmm: seccomp violation: syscall ";
/// How the line for a SIGSYS sent by another process starts.
pub const SENT_PREFIX: &str = "palisade-vmm: SIGSYS sent by pid ";

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

thread_local! {
    static THREAD_KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// The process the handler kills: this one, captured before any filter.
static OWN_PID: AtomicI32 = AtomicI32::new(0);

pub(super) fn set_thread_kind(kind: ThreadKind) {
    THREAD_KIND.with(|k| k.set(Some(kind)));
}

/// The fields of a SIGSYS siginfo (`_sigsys` in the kernel's union),
/// which the libc crate does not expose on Linux.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    /// `si_call_addr` for a seccomp trap; `si_pid`/`si_uid` for kill(2).
    call_addr_or_sender: u64,
    syscall: i32,
    arch: u32,
}

/// Installs the SIGSYS handler for the whole process. Call before any
/// filter is installed and before threads start.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    OWN_PID.store(std::process::id() as i32, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction with our handler, flags and an empty mask
    // is a valid argument; the handler is async-signal-safe (see module).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let mut line = LineBuf::default();
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // SigsysInfo mirrors its layout's first fields on 64-bit Linux.
    let info = unsafe { &*(info as *const SigsysInfo) };
    if info.code == SYS_SECCOMP {
        let kind = THREAD_KIND
            .try_with(Cell::get)
            .ok()
            .flatten()
            .map_or("unfiltered", ThreadKind::name);
        violation_line(&mut line, i64::from(info.syscall), kind);
    } else {
        // kill -SYS from outside (or a SIGSYS from the kernel for another
        // reason): say so, and die the same way.
        line.push(SENT_PREFIX);
        line.push_num(i64::from(info.call_addr_or_sender as u32 as i32));
        line.push("\n");
    }
    let bytes = line.as_bytes();
    // SAFETY: write, prctl and kill are async-signal-safe and take plain
    // values or a buffer we own.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
        // A core dump would copy guest memory to the host's disk.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        // SA_RESETHAND made SIGSYS's action the default (terminate) again,
        // and SA_NODEFER leaves it unblocked here.
        libc::kill(OWN_PID.load(Ordering::Relaxed), libc::SIGSYS);
        // Not reached: the process is gone. Should it not be, end anyway.
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// A fixed-size line built without allocating.
struct LineBuf {
    buf: [u8; 160],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl LineBuf {
    fn push(&mut self, s: &str) {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, n: i64) {
        if n < 0 {
            self.push("-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = d;
                self.len += 1;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What a VMM's stderr says about its SIGSYS death, parsed by the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigsysReport {
    /// The seccomp filter trapped syscall `nr` (`name`) on a `thread` thread.
    Violation {
        nr: i64,
        name: String,
        thread: String,
    },
    /// Another process sent SIGSYS.
    Sent { pid: i32 },
}

impl SigsysReport {
    /// The last report in `stderr`, if any.
    pub fn find(stderr: &str) -> Option<Self> {
        stderr.lines().rev().find_map(Self::parse_line)
    }

    fn parse_line(line: &str) -> Option<Self> {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(VIOLATION_PREFIX) {
            let (nr, rest) = rest.split_once(" (")?;
            let (name, rest) = rest.split_once(") by the ")?;
            let thread = rest.strip_suffix(" thread")?;
            return Some(SigsysReport::Violation {
                nr: nr.parse().ok()?,
                name: name.to_owned(),
                thread: thread.to_owned(),
            });
        }
        let pid = line.strip_prefix(SENT_PREFIX)?;
        Some(SigsysReport::Sent {
            pid: pid.parse().ok()?,
        })
    }
}

/// `palisade-vmm: seccomp violation: syscall 41 (socket) by the vcpu thread`.
fn violation_line(line: &mut LineBuf, nr: i64, kind: &str) {
    line.push(VIOLATION_PREFIX);
    line.push_num(nr);
    line.push(" (");
    line.push(syscall_name(nr).unwrap_or("unknown"));
    line.push(") by the ");
    line.push(kind);
    line.push(" thread\n");
}

#[cfg(test)]
pub(super) fn format_violation_for_test(nr: i64, kind: ThreadKind) -> String {
    let mut line = LineBuf::default();
    violation_line(&mut line, nr, kind.name());
    String::from_utf8_lossy(line.as_bytes()).into_owned()
}
