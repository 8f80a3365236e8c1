//! What every VMM thread needs, whatever its job: memory (the allocator,
//! thread stacks), locks, time, writing its log lines and protocol
//! messages, signals, and exiting.

use super::rules::{when, Allow, Arg};
use super::{Rules, SeccompError};

pub fn rules() -> Result<Rules, SeccompError> {
    let no_exec = Arg::Masked(2, libc::PROT_EXEC as u64, 0);
    // Private anonymous memory only: no thread maps a file or shares pages
    // after start-up (guest memory is mapped before any filter).
    let private_anon = Arg::Masked(
        3,
        (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64,
        libc::MAP_ANONYMOUS as u64,
    );
    let own_pid = std::process::id() as u64;
    Ok(Allow::default()
        .any(&[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            // Log lines (stderr), protocol messages (stdout), eventfds.
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            // Rust threads drop their alternate signal stack on exit.
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_gettid,
            libc::SYS_getpid,
        ])
        // W^X after start-up: no new executable memory, ever.
        .with(libc::SYS_mmap, vec![when(&[no_exec, private_anon])?])
        .with(libc::SYS_mprotect, vec![when(&[no_exec])?])
        // The allocator returns memory; glibc frees thread stacks so too.
        .with_arg_in(libc::SYS_madvise, 2, &[libc::MADV_DONTNEED as u64])?
        // The SIGSYS handler: no core dump of guest memory, then SIGSYS
        // to this process and nothing else.
        .with(
            libc::SYS_prctl,
            vec![when(&[
                Arg::Eq(0, libc::PR_SET_DUMPABLE as u64),
                Arg::Eq(1, 0),
            ])?],
        )
        .with(
            libc::SYS_kill,
            vec![when(&[
                Arg::Eq(0, own_pid),
                Arg::Eq(1, libc::SIGSYS as u64),
            ])?],
        )
        .build())
}
