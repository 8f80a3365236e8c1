//! The container's init (or exec) process before it becomes the workload:
//! the agent binary re-executed as `palisade-agent __palisade-container-init`
//! in the new namespaces (see `spawn.rs` for why). Single-threaded, so it
//! can do the whole OCI setup in plain Rust, one small step at a time:
//!
//! 1. reset what it inherited (signal mask, stray fds), become undumpable;
//! 2. read its `InitConfig` from the agent on fd 3;
//! 3. enter existing namespaces; unshare the cgroup namespace (the agent
//!    has put it in its cgroup by now);
//! 4. rootfs: mounts, devices, pivot_root; hostname; sysctls; the
//!    terminal, if any (see `open_terminal`); read-only and masked paths;
//!    read-only root;
//! 5. process: rlimits, session and terminal, user and groups,
//!    capabilities, cwd, no_new_privs, seccomp;
//! 6. say Ready, wait for Start, exec.
//!
//! Errors go back to the agent as one message naming the step; nothing is
//! logged (fds 1 and 2 are the workload's). The agent kills and reaps this
//! process when it fails, and its namespaces (with every mount made here)
//! go with it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::unistd::{Gid, Uid};
use thiserror::Error;

use super::procfs::ProcFs;
use super::rootfs;
use super::seccomp;
use super::spawn::{Channel, FromInit, ToInit, CHANNEL_FD};
use super::spec::{CapsPlan, InitConfig, NamespacePlan, ProcessPlan, DEFAULT_PATH};

#[derive(Debug, Error)]
#[error("{step}: {error}")]
pub struct InitError {
    step: &'static str,
    error: String,
}

fn step<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> InitError {
    move |e| InitError {
        step,
        error: e.to_string(),
    }
}

/// Entry point; never returns: execs the workload or exits.
pub fn main() -> ! {
    // SAFETY: the agent placed our end of the channel at fd 3 for us.
    let stream = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    let mut channel = Channel::new(stream);
    let error = match run(&mut channel) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let _ = channel.send(&FromInit::Failed(error.to_string()));
    std::process::exit(127)
}

fn run(channel: &mut Channel) -> Result<Infallible, InitError> {
    reset_inherited().map_err(step("resetting inherited state"))?;
    let config = match channel
        .recv::<ToInit>()
        .map_err(step("reading the configuration"))?
    {
        Some(ToInit::Config(c)) => *c,
        // The agent gave up on us (e.g. the container was removed).
        None => std::process::exit(0),
        Some(other) => {
            return Err(step("reading the configuration")(format!(
                "unexpected {other:?}"
            )))
        }
    };
    let program = setup(&config, channel)?;
    channel
        .send(&FromInit::Ready)
        .map_err(step("reporting ready"))?;
    match channel
        .recv::<ToInit>()
        .map_err(step("waiting for start"))?
    {
        Some(ToInit::Start) => {}
        None => std::process::exit(0),
        Some(other) => return Err(step("waiting for start")(format!("unexpected {other:?}"))),
    }
    Err(exec(&program, &config.process))
}

/// Everything up to the exec; returns the program to run.
fn setup(config: &InitConfig, channel: &mut Channel) -> Result<CString, InitError> {
    // Every /proc write goes through this private procfs, made while
    // this process is still in the guest's namespaces (procfs.rs).
    let proc = ProcFs::private().map_err(step("opening a private procfs"))?;
    if let Some(adj) = config.process.oom_score_adj {
        proc.write(Path::new("self/oom_score_adj"), adj.to_string().as_bytes())
            .map_err(step("setting oomScoreAdj"))?;
    }
    join_namespaces(&config.namespaces)?;
    if let Some(plan) = &config.rootfs {
        rootfs::prepare(plan).map_err(step("preparing the rootfs"))?;
    }
    if let Some(name) = &config.hostname {
        nix::unistd::sethostname(name).map_err(step("setting the hostname"))?;
    }
    if let Some(name) = &config.domainname {
        // SAFETY: the pointer and length describe `name`'s bytes.
        let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        if rc != 0 {
            return Err(step("setting the domainname")(io::Error::last_os_error()));
        }
    }
    for (key, value) in &config.sysctl {
        let path = PathBuf::from("sys").join(key.replace('.', "/"));
        proc.write(&path, value.as_bytes()).map_err(|e| InitError {
            step: "setting sysctls",
            error: format!("{key}={value}: {e}"),
        })?;
    }
    if config.process.terminal {
        // Once the container's mounts (its devpts) are in place; before
        // the masked and read-only paths, which restrict the workload, not
        // its setup (runc's order too).
        // Only a new container's init gets /dev/console (as in runc): an
        // exec process shares the container's mount namespace, where a
        // bind would replace the init's console for everyone.
        let console = config.rootfs.is_some();
        let master = open_terminal(Uid::from_raw(config.process.uid), console)?;
        channel
            .send_fd(&FromInit::Terminal, master.as_fd())
            .map_err(step("passing the terminal to the agent"))?;
        // The agent has its own copy; ours would only outlive a failed setup.
        drop(master);
    }
    if let Some(plan) = &config.rootfs {
        rootfs::finish(plan).map_err(step("finishing the rootfs"))?;
    }
    setup_process(&config.process, config.seccomp.as_ref())
}

/// Allocates the process's terminal from the container's own /dev/ptmx,
/// so the tty belongs to the devpts instance the container's /dev/pts
/// shows: ttyname() finds it there, which it cannot for a pty of the
/// agent's devpts. Puts the slave on fds 0-2 (the session step makes it
/// the controlling terminal) and returns the master for the agent. With
/// `console`, also binds the slave onto the container's /dev/console, as
/// the OCI spec asks for a process with a terminal.
///
/// Runs in the container's mount namespace: after pivot_root for an init,
/// after entering the namespaces for an exec.
fn open_terminal(owner: Uid, console: bool) -> Result<OwnedFd, InitError> {
    const STEP: &str = "allocating the terminal";
    let fail = |what: &str, e: Errno, hint: &str| InitError {
        step: STEP,
        error: format!("{what}: {e}{hint}"),
    };
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        let hint = match e {
            // A dangling /dev/ptmx -> pts/ptmx, or a ptmx node with no
            // devpts beside it, look the same.
            Errno::ENOENT => {
                "; a terminal needs a devpts mounted at the container's /dev/pts \
                 and /dev/ptmx (a link to pts/ptmx, made on a tmpfs /dev)"
            }
            _ => "",
        };
        fail("opening the container's /dev/ptmx", e, hint)
    })?;
    // SAFETY: open returned a new fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer, which is valid.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        let e = Errno::last();
        let hint = match e {
            Errno::ENOTTY => "; /dev/ptmx is not the pty multiplexer (character device 5:2)",
            _ => "",
        };
        return Err(fail("unlocking a pty from /dev/ptmx", e, hint));
    }
    // TIOCGPTPEER opens the slave through the master, so it is the very
    // pty just allocated, whatever sits at its /dev/pts path.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(fail("opening the pty's slave", Errno::last(), ""));
    }
    // SAFETY: a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    // The kernel made the opener (root) its owner; the process's user
    // must own its terminal to reopen it by name (as runc does, the group
    // stays the devpts mount's).
    nix::unistd::fchown(slave.as_raw_fd(), Some(owner), None)
        .map_err(|e| fail(&format!("giving the pty to uid {owner}"), e, ""))?;
    if console {
        rootfs::bind_console(slave.as_fd())
            .map_err(step("binding the terminal to /dev/console"))?;
    }
    // The slave is above fd 2 (0-2 hold the agent's /dev/null until now),
    // so each dup2 makes a copy without close-on-exec, for the workload.
    for fd in 0..=2 {
        nix::unistd::dup2(slave.as_raw_fd(), fd)
            .map_err(|e| fail(&format!("making the pty fd {fd}"), e, ""))?;
    }
    Ok(master)
}

/// Undoes what a child of the agent inherits: blocked signals (the agent
/// blocks the ones its signal thread takes), any fd past the channel, and
/// dumpability (so container processes cannot open /proc/<pid>/ of this
/// process while it still runs agent code).
fn reset_inherited() -> io::Result<()> {
    SigSet::all().thread_unblock()?;
    // SAFETY: close_range has no memory-safety preconditions; it closes
    // fds we do not use (all past the channel).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, CHANNEL_FD + 1, u32::MAX, 0) };
    if rc != 0 {
        for fd in CHANNEL_FD + 1..1024 {
            // SAFETY: as above, fds nothing here uses.
            unsafe { libc::close(fd) };
        }
    }
    nix::fcntl::fcntl(
        CHANNEL_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

fn join_namespaces(ns: &NamespacePlan) -> Result<(), InitError> {
    let fail = |name: &str, path: &Path, e: &dyn std::fmt::Display| InitError {
        step: "entering namespaces",
        error: format!("{name} {}: {e}", path.display()),
    };
    // All opened first: once in another mount namespace, the paths (under
    // the agent's /proc) may no longer resolve.
    let files = ns
        .join
        .iter()
        .map(|(name, path)| File::open(path).map_err(|e| fail(name, path, &e)))
        .collect::<Result<Vec<_>, _>>()?;
    for ((name, path), file) in ns.join.iter().zip(&files) {
        setns(file, CloneFlags::empty()).map_err(|e| fail(name, path, &e))?;
    }
    if ns.unshare_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(step("creating the cgroup namespace"))?;
    }
    Ok(())
}

fn setup_process(p: &ProcessPlan, filter: Option<&seccomp::Program>) -> Result<CString, InitError> {
    for &(resource, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit.
        if unsafe { libc::setrlimit(resource as _, &lim) } != 0 {
            return Err(InitError {
                step: "setting rlimits",
                error: format!("resource {resource}: {}", io::Error::last_os_error()),
            });
        }
    }
    nix::unistd::setsid().map_err(step("starting a session"))?;
    if p.terminal {
        // SAFETY: TIOCSCTTY on fd 0, the pty open_terminal put there.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(step("taking the terminal")(io::Error::last_os_error()));
        }
    }
    // Resolved while still root, in the container's filesystem.
    let program = find_program(&p.args[0], &p.env).map_err(step("finding the program"))?;
    if let Some(mask) = p.umask {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which
    // goes with the capability drop: so it comes first, and the rest of the
    // setup runs under it (as in runc).
    if !p.no_new_privileges {
        if let Some(f) = filter {
            seccomp::install(f).map_err(step("installing the seccomp filter"))?;
        }
    }
    if let Some(c) = &p.capabilities {
        drop_bounding(c).map_err(step("dropping bounding capabilities"))?;
    }
    switch_user(p)?;
    if let Some(c) = &p.capabilities {
        set_capabilities(c).map_err(step("setting capabilities"))?;
    }
    nix::unistd::chdir(&p.cwd).map_err(|e| InitError {
        step: "entering the working directory",
        error: format!("{}: {e}", p.cwd.display()),
    })?;
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(step("setting no_new_privs"))?;
        if let Some(f) = filter {
            seccomp::install(f).map_err(step("installing the seccomp filter"))?;
        }
    }
    Ok(program)
}

fn switch_user(p: &ProcessPlan) -> Result<(), InitError> {
    // Keep the permitted set across setuid; set_capabilities trims it.
    nix::sys::prctl::set_keepcaps(true).map_err(step("switching user"))?;
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(step("setting additional groups"))?;
    nix::unistd::setgid(Gid::from_raw(p.gid)).map_err(|e| InitError {
        step: "switching user",
        error: format!("setgid {}: {e}", p.gid),
    })?;
    nix::unistd::setuid(Uid::from_raw(p.uid)).map_err(|e| InitError {
        step: "switching user",
        error: format!("setuid {}: {e}", p.uid),
    })?;
    nix::sys::prctl::set_keepcaps(false).map_err(step("switching user"))
}

fn cap_set(names: &[String]) -> Result<CapsHashSet, caps::errors::CapsError> {
    names.iter().map(|n| n.parse::<Capability>()).collect()
}

fn drop_bounding(c: &CapsPlan) -> Result<(), caps::errors::CapsError> {
    let keep = cap_set(&c.bounding)?;
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities newer than the kernel are not in its set:
            // dropping them fails harmlessly.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    Ok(())
}

fn set_capabilities(c: &CapsPlan) -> Result<(), caps::errors::CapsError> {
    // Effective must stay within permitted at every step: shrink effective
    // first, then permitted; inheritable before ambient.
    caps::set(None, CapSet::Effective, &cap_set(&c.effective)?)?;
    caps::set(None, CapSet::Permitted, &cap_set(&c.permitted)?)?;
    caps::set(None, CapSet::Inheritable, &cap_set(&c.inheritable)?)?;
    caps::clear(None, CapSet::Ambient)?;
    let ambient: HashSet<_> = cap_set(&c.ambient)?;
    for cap in ambient {
        caps::raise(None, CapSet::Ambient, cap)?;
    }
    Ok(())
}

/// Finds `name` the way execvp would, in the process's own PATH.
fn find_program(name: &str, env: &[String]) -> io::Result<CString> {
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
            .collect()
    };
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return CString::new(c.as_os_str().as_bytes()).map_err(io::Error::other);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        if name.contains('/') {
            format!("{name}: no such executable file in the container")
        } else {
            format!("{name}: not found in the container's PATH")
        },
    ))
}

/// Execs the workload; returns only on failure.
fn exec(program: &CString, p: &ProcessPlan) -> InitError {
    let cstrings = |v: &[String]| -> Vec<CString> {
        v.iter()
            .filter_map(|s| CString::new(OsStr::new(s).as_bytes()).ok())
            .collect()
    };
    let args = cstrings(&p.args);
    let env = cstrings(&p.env);
    // Rust ignores SIGPIPE at start-up, and an ignored signal stays ignored
    // across exec: give the workload the default back.
    // SAFETY: setting a default disposition installs no handler.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    match nix::unistd::execve(program, &args, &env) {
        Ok(never) => match never {},
        Err(e) => InitError {
            step: "executing the program",
            error: format!("{}: {e}", program.to_string_lossy()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_like_execvp() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        let sh = find_program("sh", &env).unwrap();
        assert!(sh.to_str().unwrap().ends_with("/sh"));
        assert!(find_program("/bin/sh", &[]).is_ok());
        let e = find_program("no-such-program-here", &env).unwrap_err();
        assert!(
            e.to_string().contains("not found in the container's PATH"),
            "{e}"
        );
        // A directory is not a program.
        assert!(find_program("/bin", &[]).is_err());
    }
}
