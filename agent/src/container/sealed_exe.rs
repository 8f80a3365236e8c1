//! The agent binary as a sealed memfd, which container init processes
//! are executed from (CVE-2019-5736 class).
//!
//! A container's init and exec processes run agent code inside the
//! container's namespaces until they exec the workload (spawn.rs). Were
//! they executed from the agent's own file, a process of the container
//! (or of a sibling sharing its pid namespace) could open
//! `/proc/<pid>/exe` of one of them in that window, keep the fd, and write
//! through it once the file is no longer busy: the agent binary, PID 1 of
//! the guest and the code every later container runs, would be the
//! attacker's. So at start the agent copies itself once into a memfd and
//! seals it (F_SEAL_SEAL | SHRINK | GROW | WRITE): no one, root included,
//! can change a byte of it, and `/proc/<pid>/exe` of every container init
//! leads only to that copy. The agent itself keeps running from its
//! file rather than re-executing into the copy: it is PID 1 for the
//! guest's whole life, and the kernel refuses writes to a running
//! executable (ETXTBSY), so the window above never opens for it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{fcntl_add_seals, fcntl_get_seals, memfd_create, MemfdFlags, SealFlags};

static SEALED: OnceLock<Result<OwnedFd, String>> = OnceLock::new();

const SEALS: SealFlags = SealFlags::SEAL
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::WRITE);

/// Makes the sealed copy, once; later calls return the first result. Call
/// at start, while the agent's binary is what was booted.
pub fn init() -> Result<BorrowedFd<'static>, String> {
    match SEALED.get_or_init(|| seal_copy_of_self().map_err(|e| e.to_string())) {
        Ok(fd) => Ok(fd.as_fd()),
        Err(e) => Err(e.clone()),
    }
}

fn seal_copy_of_self() -> io::Result<OwnedFd> {
    let ctx = |what: &'static str| move |e: io::Error| io::Error::other(format!("{what}: {e}"));
    let mut exe = File::open("/proc/self/exe").map_err(ctx("opening /proc/self/exe"))?;
    // Close-on-exec: the child execs the fd itself (execveat), which works
    // for an ELF binary; no workload ever inherits it.
    let memfd = memfd_create(
        "palisade-agent",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| ctx("memfd_create")(e.into()))?;
    let mut copy = File::from(memfd);
    io::copy(&mut exe, &mut copy).map_err(ctx("copying the agent binary"))?;
    let memfd = OwnedFd::from(copy);
    fcntl_add_seals(&memfd, SEALS).map_err(|e| ctx("sealing the copy")(e.into()))?;
    check_sealed(memfd.as_fd())?;
    Ok(memfd)
}

/// Checks that `fd` carries every seal that makes it immutable.
pub fn check_sealed(fd: BorrowedFd) -> io::Result<()> {
    let seals = fcntl_get_seals(fd).map_err(io::Error::from)?;
    if !seals.contains(SEALS) {
        return Err(io::Error::other(format!(
            "the agent's copy is not sealed ({seals:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    #[test]
    fn the_copy_is_the_binary_and_cannot_be_changed() {
        let fd = init().unwrap();
        check_sealed(fd).unwrap();
        let orig = std::fs::read("/proc/self/exe").unwrap();
        let copy = std::fs::read(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .unwrap();
        assert!(orig == copy, "the copy differs from the binary");
        // Not even a writable reopen through /proc can change it.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
            .unwrap();
        assert!(w.write_all(b"\x7fELF-overwritten").is_err());
        assert!(w.seek(io::SeekFrom::End(0)).is_ok());
        assert!(w.write_all(b"more").is_err());
        assert!(w.set_len(1).is_err());
        // The same fd on a second call: one copy per agent.
        assert_eq!(
            std::os::fd::AsRawFd::as_raw_fd(&init().unwrap()),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        );
    }
}
