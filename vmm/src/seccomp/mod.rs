//! Per-thread seccomp filters for the VMM process.
//!
//! Every VMM thread runs with an allowlist of the syscalls its job needs,
//! compiled to BPF with seccompiler and installed on the thread itself
//! before it touches anything the guest controls:
//!
//! - **vCPU threads** ([`vcpu`]): KVM_RUN and the few vCPU ioctls that
//!   describe a crash, plus what the devices emulated on a vCPU exit need
//!   (the serial console's log file, eventfd writes, a virtio device reset).
//!   Installed by the thread itself before its first KVM_RUN.
//! - **the event loop** ([`event_loop`]), which is also the **virtio-fs
//!   worker** ([`virtio_fs`]): epoll, the vsock device's unix sockets, and
//!   the file syscalls of fuse-backend-rs's passthrough. Installed by the
//!   main thread once the VM is built and the vCPU threads are started,
//!   before the first guest request is read.
//!
//! Both include [`common`]: what any Rust thread needs to allocate, lock,
//! log and exit. There are no other VMM threads (a new one must get a
//! filter of its own: threads inherit their creator's filter, and the
//! main thread's would be the wrong one). Filters are built before any
//! thread starts, so installing one is a single `seccomp(2)` call.
//!
//! A syscall outside the allowlist raises SIGSYS (SECCOMP_RET_TRAP) whose
//! handler ([`trap`]) writes the syscall's number and name to stderr and
//! ends the process with SIGSYS. `log` mode lets the call through and has
//! the kernel log it (SECCOMP_RET_LOG, the audit log / `dmesg`), to find
//! what a filter lacks; `off` installs nothing. `no_new_privs` is set in
//! every mode: the VMM never executes anything.

mod common;
mod event_loop;
mod rules;
mod syscall_names;
mod trap;
mod vcpu;
mod virtio_fs;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use trap::{install_sigsys_handler, SigsysReport, VIOLATION_PREFIX};

/// How the filters treat a syscall outside their allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// SIGSYS: the VMM reports the syscall and dies (the default).
    #[default]
    Enforce,
    /// Allowed, and logged by the kernel (SECCOMP_RET_LOG): for finding
    /// what an allowlist lacks, never for production.
    Log,
    /// No filters at all.
    Off,
}

impl SeccompMode {
    pub const NAMES: [&'static str; 3] = ["enforce", "log", "off"];

    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!(
                "unknown seccomp mode {s:?} (expected {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// The kinds of VMM thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    /// The main thread once the VM runs: device event loop and virtio-fs.
    EventLoop,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 2] = [ThreadKind::Vcpu, ThreadKind::EventLoop];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event loop",
        }
    }

    /// The syscalls this kind of thread may make, with their argument rules.
    fn allowlist(self) -> Result<Rules, SeccompError> {
        let mut rules = common::rules()?;
        match self {
            ThreadKind::Vcpu => rules::merge(&mut rules, vcpu::rules()?),
            ThreadKind::EventLoop => {
                rules::merge(&mut rules, event_loop::rules()?);
                rules::merge(&mut rules, virtio_fs::rules()?);
            }
        }
        Ok(rules)
    }
}

/// Syscall number → the argument rules of which one must match (an empty
/// list allows the syscall with any arguments).
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind} thread's seccomp filter: {reason}")]
    Build { kind: &'static str, reason: String },
    #[error("a seccomp rule: {0}")]
    Rule(String),
    #[error("installing the {kind} thread's seccomp filter: {source}")]
    Install {
        kind: &'static str,
        source: std::io::Error,
    },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The compiled filters of every thread kind, built once per VMM before
/// any thread starts. `None` in [`SeccompMode::Off`].
#[derive(Debug, Clone)]
pub struct Filters {
    mode: SeccompMode,
    vcpu: Option<BpfProgram>,
    event_loop: Option<BpfProgram>,
}

impl Filters {
    pub fn build(mode: SeccompMode) -> Result<Self, SeccompError> {
        let action = match mode {
            SeccompMode::Enforce => SeccompAction::Trap,
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Off => {
                return Ok(Filters {
                    mode,
                    vcpu: None,
                    event_loop: None,
                })
            }
        };
        Ok(Filters {
            mode,
            vcpu: Some(compile(ThreadKind::Vcpu, action.clone())?),
            event_loop: Some(compile(ThreadKind::EventLoop, action)?),
        })
    }

    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// Sets no_new_privs and installs `kind`'s filter on the calling
    /// thread (nothing but no_new_privs in `off` mode). Filters stack and
    /// are inherited: call it once per thread, before the thread starts
    /// others.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        trap::set_thread_kind(kind);
        let program = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::EventLoop => &self.event_loop,
        };
        match program {
            // seccompiler sets no_new_privs before the filter.
            Some(program) => {
                seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
                    kind: kind.name(),
                    source: std::io::Error::other(e.to_string()),
                })
            }
            None => set_no_new_privs(),
        }
    }
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let build = |reason: String| SeccompError::Build {
        kind: kind.name(),
        reason,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| build(e.to_string()))?;
    let filter = SeccompFilter::new(kind.allowlist()?, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| build(e.to_string()))
}

fn set_no_new_privs() -> Result<(), SeccompError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The name of x86-64 syscall `nr`, if the table knows it.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    syscall_names::SYSCALL_NAMES
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| syscall_names::SYSCALL_NAMES[i].1)
}

#[cfg(test)]
mod tests;
