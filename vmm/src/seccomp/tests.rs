use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use super::*;

#[test]
fn every_filter_compiles_in_every_mode() {
    for mode in [SeccompMode::Enforce, SeccompMode::Log] {
        let filters = Filters::build(mode).expect("filters build");
        for program in [&filters.vcpu, &filters.event_loop] {
            let program = program.as_ref().expect("a program");
            // A BPF program holds at most 4096 instructions.
            assert!(
                !program.is_empty() && program.len() <= 4096,
                "{mode}: {} instructions",
                program.len()
            );
        }
    }
    let off = Filters::build(SeccompMode::Off).expect("off builds");
    assert!(off.vcpu.is_none() && off.event_loop.is_none());
}

#[test]
fn allowlists_keep_to_their_thread() {
    let vcpu = ThreadKind::Vcpu.allowlist().expect("vcpu");
    let event_loop = ThreadKind::EventLoop.allowlist().expect("event loop");
    for forbidden in [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_sendmsg,
        libc::SYS_open_by_handle_at,
        libc::SYS_setxattr,
        libc::SYS_clone,
        libc::SYS_clone3,
    ] {
        assert!(!vcpu.contains_key(&forbidden), "vcpu allows {forbidden}");
        assert!(
            !event_loop.contains_key(&forbidden),
            "event loop allows {forbidden}"
        );
    }
    // Sockets belong to the event loop, and only AF_UNIX ones.
    assert!(!vcpu.contains_key(&libc::SYS_socket));
    assert_eq!(event_loop[&libc::SYS_socket].len(), 1);
    // ioctl is argument-checked on both.
    assert_eq!(vcpu[&libc::SYS_ioctl].len(), 4);
    // FIONBIO, and TUNSETOFFLOAD for virtio-net's tap.
    assert_eq!(event_loop[&libc::SYS_ioctl].len(), 2);
}

#[test]
fn modes_parse_and_print() {
    for name in SeccompMode::NAMES {
        let mode: SeccompMode = name.parse().expect("known");
        assert_eq!(mode.to_string(), name);
    }
    assert_eq!(SeccompMode::default(), SeccompMode::Enforce);
    assert!("Enforce".parse::<SeccompMode>().is_err());
}

#[test]
fn syscall_names_come_from_the_table() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(41), Some("socket"));
    assert_eq!(syscall_name(59), Some("execve"));
    assert_eq!(syscall_name(435), Some("clone3"));
    assert_eq!(syscall_name(100_000), None);
    assert!(syscall_names::SYSCALL_NAMES
        .windows(2)
        .all(|w| w[0].0 < w[1].0));
}

#[test]
fn the_violation_line_is_what_the_shim_parses() {
    let line = trap::format_violation_for_test(41, ThreadKind::EventLoop);
    assert_eq!(
        line,
        "palisade-vmm: seccomp violation: syscall 41 (socket) by the event loop thread\n"
    );
    assert_eq!(
        SigsysReport::find(&format!("palisade-vmm: warn: x\n{line}")),
        Some(SigsysReport::Violation {
            nr: 41,
            name: "socket".into(),
            thread: "event loop".into(),
        })
    );
    assert_eq!(
        SigsysReport::find("palisade-vmm: SIGSYS sent by pid 77\n"),
        Some(SigsysReport::Sent { pid: 77 })
    );
    assert_eq!(
        SigsysReport::find("palisade-vmm: seccomp violation: syscall x"),
        None
    );
    assert_eq!(SigsysReport::find(""), None);
}

/// How a forked child that installed a filter ended, and its stderr.
struct ChildEnd {
    status: libc::c_int,
    stderr: String,
}

impl ChildEnd {
    fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
    fn exit_code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }
}

/// Forks; the child builds the filters of `mode` (in the child: they name
/// its own pid; glibc's fork leaves malloc usable), installs `kind`'s with
/// the real SIGSYS handler, runs `body`, and `_exit`s with its result.
fn in_filtered_child(mode: SeccompMode, kind: ThreadKind, body: fn() -> i32) -> ChildEnd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-int array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and ours.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child builds and installs the filters, makes raw
    // syscalls, then _exits; it takes no lock another thread may hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        use std::os::fd::AsRawFd;
        // SAFETY: plain fd calls in the child.
        unsafe { libc::dup2(write_end.as_raw_fd(), 2) };
        let code = match Filters::build(mode) {
            Ok(filters) if install_sigsys_handler().is_ok() && filters.install(kind).is_ok() => {
                body()
            }
            _ => 100,
        };
        // SAFETY: leaving the forked child without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    let mut stderr = String::new();
    let _ = std::fs::File::from(read_end).read_to_string(&mut stderr);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    ChildEnd { status, stderr }
}

fn socket(family: libc::c_int) -> libc::c_long {
    // SAFETY: socket(2) with integer arguments; the fd is left to _exit.
    unsafe { libc::syscall(libc::SYS_socket, family, libc::SOCK_STREAM, 0) }
}

#[test]
fn a_forbidden_syscall_kills_with_sigsys_and_is_named() {
    let end = in_filtered_child(SeccompMode::Enforce, ThreadKind::EventLoop, || {
        if socket(libc::AF_UNIX) < 0 {
            return 3; // the allowed family must work
        }
        socket(libc::AF_INET);
        4 // not reached
    });
    assert_eq!(
        end.signal(),
        Some(libc::SIGSYS),
        "status {:#x}, stderr {:?}",
        end.status,
        end.stderr
    );
    assert_eq!(
        SigsysReport::find(&end.stderr),
        Some(SigsysReport::Violation {
            nr: libc::SYS_socket,
            name: "socket".into(),
            thread: "event loop".into(),
        }),
        "{}",
        end.stderr
    );
}

#[test]
fn a_vcpu_thread_may_run_kvm_ioctls_but_not_others() {
    let end = in_filtered_child(SeccompMode::Enforce, ThreadKind::Vcpu, || {
        // KVM_RUN on a closed fd: allowed through, so EBADF.
        // SAFETY: ioctl on an fd that is not open touches no memory.
        let r = unsafe { libc::ioctl(-1, vcpu::ioctls()[0] as _) };
        if r != -1 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF) {
            return 3;
        }
        // SAFETY: as above; FIONBIO is not a vCPU ioctl.
        unsafe { libc::ioctl(-1, libc::FIONBIO, 0) };
        4
    });
    assert_eq!(
        end.signal(),
        Some(libc::SIGSYS),
        "status {:#x}, stderr {:?}",
        end.status,
        end.stderr
    );
    assert!(
        end.stderr.contains("syscall 16 (ioctl) by the vcpu thread"),
        "{}",
        end.stderr
    );
}

#[test]
fn executable_memory_is_refused() {
    let end = in_filtered_child(SeccompMode::Enforce, ThreadKind::EventLoop, || {
        let len = 4096;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping, never used.
        let rw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if rw == libc::MAP_FAILED {
            return 3;
        }
        // SAFETY: changing the protection of the mapping made above.
        unsafe { libc::mprotect(rw, len, libc::PROT_READ | libc::PROT_EXEC) };
        4
    });
    assert_eq!(end.signal(), Some(libc::SIGSYS), "{:?}", end.stderr);
    assert!(end.stderr.contains("(mprotect)"), "{}", end.stderr);
}

#[test]
fn log_mode_lets_the_syscall_through() {
    let end = in_filtered_child(SeccompMode::Log, ThreadKind::EventLoop, || {
        if socket(libc::AF_INET) < 0 {
            return 3;
        }
        0
    });
    assert_eq!(
        end.exit_code(),
        Some(0),
        "status {:#x}, stderr {:?}",
        end.status,
        end.stderr
    );
}

#[test]
fn a_sigsys_from_outside_is_reported_as_such() {
    let end = in_filtered_child(SeccompMode::Enforce, ThreadKind::EventLoop, || {
        // SAFETY: kill(2) of this process, as `kill -SYS` would.
        unsafe { libc::syscall(libc::SYS_kill, libc::getpid(), libc::SIGSYS) };
        4
    });
    assert_eq!(end.signal(), Some(libc::SIGSYS), "{:?}", end.stderr);
    assert!(
        matches!(
            SigsysReport::find(&end.stderr),
            Some(SigsysReport::Sent { .. })
        ),
        "{}",
        end.stderr
    );
}
