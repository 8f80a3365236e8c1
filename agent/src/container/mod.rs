//! The agent's container runtime: the pod's containers and their processes,
//! built to the OCI runtime spec inside the guest.
//!
//! Own code rather than youki's libcontainer, which was evaluated first
//! (0.7, `default-features = false, features = ["v2"]`): it builds
//! statically, but
//! - without its `libseccomp` feature it silently skips the spec's seccomp
//!   profile (a warning in its log), and with it the agent needs
//!   libseccomp.a at every build;
//! - it runs the container setup in clone3'd children of the calling
//!   process without exec, which in a multi-threaded agent can deadlock on
//!   a lock another thread held at the clone (the allocator's, a logger's);
//! - it waitpid()s its intermediate process itself, where the agent's
//!   reaper must be the only one to wait;
//! - it roughly triples the agent binary (+3 MB, from netlink, procfs,
//!   regex, criu, chrono), and the agent is in every boot's initramfs.
//!   (For the same reason the spec is read with own serde types, oci.rs,
//!   not the oci-spec crate.)
//!
//! So: clone + re-exec of the agent (spawn.rs), the OCI setup in small steps
//! in the fresh child (init.rs, rootfs.rs), seccomp compiled in pure Rust
//! with seccompiler (seccomp/), cgroup v2 through files (cgroups.rs).

mod cgroup_view;
pub mod cgroups;
pub mod events;
mod fdmount;
pub mod init;
mod inroot;
mod mounts;
mod oci;
mod oom;
mod paths;
pub mod process;
mod procfs;
mod rootfs;
pub mod sealed_exe;
mod seccomp;
mod spawn;
pub mod spec;
pub mod stdio;

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use nix::sched::CloneFlags;
use thiserror::Error;

use crate::reaper::Reaper;
use cgroups::{CgroupDir, CgroupError, Cgroups, Stats};
use events::{Event, EventKind, Events};
use oci::{Process as OciProcess, Resources, Spec};
use process::Process;
use spawn::{Channel, FromInit, SpawnRequest, Spawned, ToInit};
use spec::{InitConfig, NamespacePlan, SpecError};
use stdio::{PortAllocator, Ports, Wanted};

pub use spawn::INIT_ARG;

/// How long the init process may take to set a container up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed process may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ID_LEN: usize = 128;

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container {id:?} has no process {exec_id:?}")]
    ExecNotFound { id: String, exec_id: String },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {id:?} already has a process {exec_id:?}")]
    ExecExists { id: String, exec_id: String },
    #[error("{what} {id:?} is not valid: use 1-{MAX_ID_LEN} letters, digits, '.', '_' or '-', not starting with '.'")]
    BadId { what: &'static str, id: String },
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid resources: {0}")]
    Resources(String),
    #[error("container {id:?} is {state}: {what}")]
    State {
        id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("{0} is not a signal number (1-64)")]
    BadSignal(u32),
    #[error("process {0} has already exited")]
    Exited(String),
    #[error("{0} needs cgroups, and this agent runs without them (host mode, or no cgroup2 in the guest)")]
    NoCgroups(&'static str),
    #[error("{what}: {error}")]
    System { what: String, error: String },
    #[error("{0}")]
    Setup(String),
}

impl ContainerError {
    fn system(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |e| ContainerError::System {
            what,
            error: e.to_string(),
        }
    }
}

impl From<CgroupError> for ContainerError {
    fn from(e: CgroupError) -> Self {
        match e {
            CgroupError::Resources(m) => ContainerError::Resources(m),
            other => ContainerError::System {
                what: "cgroup".into(),
                error: other.to_string(),
            },
        }
    }
}

type Result<T> = std::result::Result<T, ContainerError>;

fn check_id(what: &'static str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::BadId {
            what,
            id: id.to_string(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Set up, waiting for StartContainer.
    Created,
    Running,
    Paused,
    /// RemoveContainer in progress.
    Removing,
}

pub struct Container {
    id: String,
    init: Arc<Process>,
    /// The init process's channel until StartContainer takes it.
    start: Mutex<Option<Channel>>,
    state: Mutex<State>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: Option<CgroupDir>,
    /// Applied to exec processes too.
    seccomp: Option<seccomp::Program>,
    /// Whether the container has a pid namespace of its own.
    own_pid_ns: bool,
    oom_kills_seen: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Container {
    fn state_name(&self) -> &'static str {
        if self.init.exit().is_some() {
            return "stopped";
        }
        match *lock(&self.state) {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Removing => "being removed",
        }
    }

    fn wrong_state(&self, what: &'static str) -> ContainerError {
        ContainerError::State {
            id: self.id.clone(),
            state: self.state_name(),
            what,
        }
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ExecNotFound {
                id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn cgroup(&self, what: &'static str) -> Result<&CgroupDir> {
        self.cgroup.as_ref().ok_or(ContainerError::NoCgroups(what))
    }

    /// Pids of every process in the container, as the guest sees them.
    fn pids(&self) -> Result<Vec<i32>> {
        if let Some(cg) = &self.cgroup {
            return Ok(cg.pids()?);
        }
        if self.own_pid_ns && self.init.exit().is_none() {
            let ns = pid_ns_of(self.init.pid.as_raw()).map_err(ContainerError::system(
                "reading the container's pid namespace",
            ))?;
            return Ok(processes_in_pid_ns(ns));
        }
        let mut pids: Vec<i32> = std::iter::once(self.init.clone())
            .chain(lock(&self.execs).values().cloned())
            .filter(|p| p.alive())
            .map(|p| p.pid.as_raw())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Reports an OOM kill seen in the cgroup since the last check.
    fn check_oom(&self, events: &Events) {
        let Some(cg) = &self.cgroup else { return };
        let now = cg.oom_kills();
        let mut seen = lock(&self.oom_kills_seen);
        if now > *seen {
            *seen = now;
            events.push(&self.id, EventKind::OomKilled);
        }
    }
}

/// The inode of a process's pid namespace.
fn pid_ns_of(pid: i32) -> io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/pid"))?.ino())
}

/// Every process in the pid namespace with inode `ns`.
fn processes_in_pid_ns(ns: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| pid_ns_of(*pid).is_ok_and(|n| n == ns))
        .collect();
    pids.sort_unstable();
    pids
}

enum Slot {
    /// CreateContainer is running for this id.
    Creating,
    Ready(Arc<Container>),
}

type ExitReceiver = std::sync::mpsc::Receiver<crate::reaper::ExitStatus>;

/// A process through its setup, before it is published in its container.
struct Started {
    process: Arc<Process>,
    exit: ExitReceiver,
    ports: Ports,
    channel: Channel,
}

pub struct Manager {
    reaper: Arc<Reaper>,
    cgroups: Cgroups,
    ports: PortAllocator,
    events: Arc<Events>,
    /// Started with the first container that has a cgroup.
    oom: std::sync::OnceLock<Option<Arc<oom::OomWatcher>>>,
    containers: Mutex<HashMap<String, Slot>>,
}

impl Manager {
    pub fn new(reaper: Arc<Reaper>, cgroups: Cgroups, ports: PortAllocator) -> Self {
        Self {
            reaper,
            cgroups,
            ports,
            events: Arc::new(Events::new()),
            oom: std::sync::OnceLock::new(),
            containers: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        match lock(&self.containers).get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            _ => Err(ContainerError::NotFound(id.to_string())),
        }
    }

    /// Creates a container whose init process waits for `start`. On error
    /// nothing of it remains: no process, cgroup or port.
    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        wanted: Wanted,
    ) -> Result<(u32, Ports)> {
        check_id("container id", id)?;
        {
            let mut map = lock(&self.containers);
            if map.contains_key(id) {
                return Err(ContainerError::Exists(id.to_string()));
            }
            map.insert(id.to_string(), Slot::Creating);
        }
        let result = self.create_reserved(id, spec_json, rootfs, wanted);
        let mut map = lock(&self.containers);
        match result {
            Ok((container, exit, ports)) => {
                map.insert(id.to_string(), Slot::Ready(container.clone()));
                drop(map);
                let pid = container.init.pid;
                if container.cgroup.is_some() {
                    let events = self.events.clone();
                    if let Some(w) = self.oom.get_or_init(|| oom::OomWatcher::start(events)) {
                        w.watch(&container);
                    }
                }
                self.watch(&container, container.init.clone(), exit);
                info!("container {id}: created, init pid {pid}");
                Ok((pid.as_raw() as u32, ports))
            }
            Err(e) => {
                map.remove(id);
                info!("container {id}: not created: {e}");
                Err(e)
            }
        }
    }

    fn create_reserved(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Path,
        wanted: Wanted,
    ) -> Result<(Arc<Container>, ExitReceiver, Ports)> {
        let spec: Spec = spec::parse_json("spec", spec_json)?;
        let mut config = spec::plan_container(&spec, rootfs)?;
        let resources = spec.linux.as_ref().and_then(|l| l.resources.as_ref());
        let cgroup = self.cgroups.create(id, resources)?;
        if let Some(cg) = &cgroup {
            cgroup_view::show_own_cgroup(&mut config, cg.path());
        }
        let started = match self.start_process(id, "", &config, cgroup.as_ref(), wanted) {
            Ok(s) => s,
            Err(e) => {
                if let Some(Err(ce)) = cgroup.as_ref().map(CgroupDir::remove) {
                    warn!("container {id}: {ce}");
                }
                return Err(e);
            }
        };
        let container = Arc::new(Container {
            id: id.to_string(),
            init: started.process,
            start: Mutex::new(Some(started.channel)),
            state: Mutex::new(State::Created),
            execs: Mutex::new(HashMap::new()),
            own_pid_ns: config.namespaces.has_new(libc::CLONE_NEWPID),
            seccomp: config.seccomp,
            oom_kills_seen: Mutex::new(cgroup.as_ref().map_or(0, |c| c.oom_kills())),
            cgroup,
        });
        Ok((container, started.exit, started.ports))
    }

    /// Spawns an init or exec process and runs its setup up to Ready. On
    /// error nothing of it remains (process killed and reaped, ports
    /// closed).
    fn start_process(
        &self,
        id: &str,
        exec_id: &str,
        config: &InitConfig,
        cgroup: Option<&CgroupDir>,
        wanted: Wanted,
    ) -> Result<Started> {
        let (child_stdio, mut pending) =
            stdio::prepare(&self.ports, wanted, config.process.terminal)
                .map_err(ContainerError::system("setting up stdio"))?;
        let ports = pending.ports();
        let Spawned {
            pid,
            pidfd,
            exit,
            mut channel,
        } = spawn::spawn(
            &self.reaper,
            SpawnRequest {
                clone_flags: CloneFlags::from_bits_truncate(config.namespaces.clone_flags),
                pid_namespace: config.namespaces.join_pid.as_deref(),
                stdio: child_stdio,
            },
        )
        .map_err(ContainerError::system("starting the container process"))?;
        let name = if exec_id.is_empty() {
            id.to_string()
        } else {
            format!("{id}/{exec_id}")
        };
        let setup = (|| -> Result<stdio::ProcessIo> {
            if let Some(cg) = cgroup {
                cg.add(pid.as_raw())?;
            }
            channel
                .set_timeout(Some(SETUP_TIMEOUT))
                .map_err(ContainerError::system("configuring the init channel"))?;
            channel
                .send(&ToInit::Config(Box::new(config.clone())))
                .map_err(ContainerError::system("sending the configuration"))?;
            loop {
                match channel.recv_with_fds::<FromInit>() {
                    Ok(Some((FromInit::Terminal, fds))) => attach_terminal(&mut pending, fds)?,
                    Ok(Some((FromInit::Ready, _))) => break,
                    Ok(Some((FromInit::Failed(m), _))) => return Err(ContainerError::Setup(m)),
                    Ok(None) => {
                        return Err(ContainerError::Setup(
                            "the container's init process died during setup".into(),
                        ))
                    }
                    Err(e) => {
                        return Err(ContainerError::Setup(format!(
                            "no word from the container's init process: {e}"
                        )))
                    }
                }
            }
            pending
                .start(&name)
                .map_err(ContainerError::system("starting stdio threads"))
        })();
        match setup {
            Ok(io) => Ok(Started {
                process: Arc::new(Process::new(exec_id.to_string(), pid, pidfd, io)),
                exit,
                ports,
                channel,
            }),
            Err(e) => {
                kill_and_reap(
                    || process::send_signal(pidfd.as_ref(), pid, libc::SIGKILL),
                    pid,
                    &exit,
                );
                Err(e)
            }
        }
    }

    /// Starts the thread that publishes `process`'s exit (after its output
    /// is drained) to waiters and as an event.
    fn watch(&self, container: &Arc<Container>, process: Arc<Process>, exit: ExitReceiver) {
        let id = container.id.clone();
        let container = container.clone();
        let events = self.events.clone();
        let name = format!("wait-{}", process.pid);
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            process::monitor(&process, exit, |info| {
                // An OOM kill is reported before the exit it caused.
                container.check_oom(&events);
                debug!(
                    "container {}: process {:?} (pid {}) exited: {:?}",
                    container.id, process.exec_id, info.pid, info.status
                );
                events.push(
                    &container.id,
                    EventKind::Exited {
                        exec_id: process.exec_id.clone(),
                        exit: info,
                    },
                );
            })
        });
        if let Err(e) = spawned {
            // Without the thread, this exit is never reported; the process
            // itself is unaffected and still reaped.
            log::error!("container {id}: no thread to watch a process: {e}");
        }
    }

    /// Execs the init process's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let c = self.get(id)?;
        let mut channel = lock(&c.start)
            .take()
            .ok_or_else(|| c.wrong_state("it has already been started"))?;
        if c.init.exit().is_some() || *lock(&c.state) != State::Created {
            return Err(c.wrong_state("only a created container can be started"));
        }
        run_program(&mut channel)?;
        *lock(&c.state) = State::Running;
        info!("container {id}: started");
        Ok(())
    }

    /// Starts another process in a created or running container.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        wanted: Wanted,
    ) -> Result<(u32, Ports)> {
        check_id("exec id", exec_id)?;
        let c = self.get(id)?;
        let oci: OciProcess = spec::parse_json("process", process_json)?;
        let process = spec::plan_process(&oci)?;
        // Held across the spawn: one exec id, one process.
        let mut execs = lock(&c.execs);
        if execs.contains_key(exec_id) {
            return Err(ContainerError::ExecExists {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
            });
        }
        let state = *lock(&c.state);
        if c.init.exit().is_some() || !matches!(state, State::Created | State::Running) {
            return Err(c.wrong_state("exec needs a created or running container"));
        }
        // The init process's namespaces, by /proc path. Its pid cannot be
        // reused before its exit is published, which we just checked; a
        // pidfd-based setns (Linux 5.8) would close even that window.
        let init = c.init.pid.as_raw();
        let ns = |name: &str| PathBuf::from(format!("/proc/{init}/ns/{name}"));
        let config = InitConfig {
            rootfs: None,
            namespaces: NamespacePlan {
                clone_flags: 0,
                unshare_cgroup: false,
                join: ["ipc", "uts", "net", "mnt", "cgroup"]
                    .iter()
                    .map(|n| (n.to_string(), ns(n)))
                    .collect(),
                join_pid: Some(ns("pid")),
            },
            hostname: None,
            domainname: None,
            sysctl: Vec::new(),
            process,
            seccomp: c.seccomp.clone(),
        };
        let mut started = self.start_process(id, exec_id, &config, c.cgroup.as_ref(), wanted)?;
        let pid = started.process.pid;
        if let Err(e) = run_program(&mut started.channel) {
            started.process.io.cancel();
            kill_and_reap(|| started.process.signal(libc::SIGKILL), pid, &started.exit);
            return Err(e);
        }
        execs.insert(exec_id.to_string(), started.process.clone());
        drop(execs);
        self.watch(&c, started.process, started.exit);
        info!("container {id}: exec {exec_id} started, pid {pid}");
        Ok((pid.as_raw() as u32, started.ports))
    }

    /// Signals one process, or with `all` every process of the container.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=libc::SIGRTMAX()).contains(s))
            .ok_or(ContainerError::BadSignal(signal))?;
        let c = self.get(id)?;
        if all {
            for pid in c.pids()? {
                // SAFETY: kill(2); processes of the container, listed just
                // now (one that exited meanwhile gives ESRCH, ignored).
                unsafe { libc::kill(pid, sig) };
            }
            return Ok(());
        }
        let p = c.process(exec_id)?;
        if p.exit().is_some() {
            return Err(ContainerError::Exited(describe(id, exec_id)));
        }
        match p.signal(sig) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                Err(ContainerError::Exited(describe(id, exec_id)))
            }
            Err(e) => Err(ContainerError::system(format!(
                "signalling {}",
                describe(id, exec_id)
            ))(e)),
        }
    }

    /// The process, to wait on without holding any lock.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.get(id)?.process(exec_id)
    }

    /// Removes a container: kills what still runs (only with `force` if it
    /// was started), waits for the exits, removes the cgroup.
    pub fn remove(&self, id: &str, force: bool) -> Result<()> {
        let c = self.get(id)?;
        {
            let mut state = lock(&c.state);
            // Removing again (a retry after a failed removal, or two at once)
            // is fine: every step below can be repeated.
            let running =
                c.init.exit().is_none() && !matches!(*state, State::Created | State::Removing);
            if running && !force {
                drop(state);
                return Err(c.wrong_state("stop it first, or remove with force"));
            }
            *state = State::Removing;
        }
        // A created container's init is waiting in setup: closing its
        // channel makes it exit; SIGKILL below makes sure.
        lock(&c.start).take();
        let processes: Vec<Arc<Process>> = std::iter::once(c.init.clone())
            .chain(lock(&c.execs).values().cloned())
            .collect();
        if let Some(cg) = &c.cgroup {
            // A frozen cgroup would hold the kills back.
            let _ = cg.freeze(false);
            if let Err(e) = cg.kill_all() {
                warn!("container {id}: {e}");
            }
        }
        for p in &processes {
            if p.exit().is_none() {
                let _ = p.signal(libc::SIGKILL);
                // Killed processes are removed: their unread output is not
                // wanted, and its stream must not keep the exit waiting.
                p.io.cancel();
            }
        }
        for p in &processes {
            if p.wait(Some(KILL_TIMEOUT)).is_none() {
                warn!(
                    "container {id}: pid {} still not gone {KILL_TIMEOUT:?} after SIGKILL",
                    p.pid
                );
            }
        }
        if let Some(cg) = &c.cgroup {
            cg.remove()?;
        }
        lock(&self.containers).remove(id);
        info!("container {id}: removed");
        Ok(())
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        self.get(id)?.pids()
    }

    pub fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.get(id)?.cgroup("StatsContainer")?.stats())
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        let c = self.get(id)?;
        let cg = c.cgroup("UpdateContainer")?;
        let resources: Resources = spec::parse_json("resources", resources_json)?;
        Ok(cg.update(&resources)?)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.freeze(id, true)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.freeze(id, false)
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let c = self.get(id)?;
        let cg = c.cgroup(if frozen {
            "PauseContainer"
        } else {
            "ResumeContainer"
        })?;
        let mut state = lock(&c.state);
        let (from, to) = if frozen {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if *state != from || c.init.exit().is_some() {
            drop(state);
            return Err(c.wrong_state(if frozen {
                "only a running container can be paused"
            } else {
                "only a paused container can be resumed"
            }));
        }
        cg.freeze(frozen)?;
        *state = to;
        Ok(())
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.process(id, exec_id)?.io.close_stdin();
        Ok(())
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let p = self.process(id, exec_id)?;
        let dim = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        match p.io.resize(dim(rows), dim(cols)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ContainerError::State {
                id: id.to_string(),
                state: "without a terminal",
                what: "only a process with a terminal can be resized",
            }),
            Err(e) => Err(ContainerError::system("resizing the terminal")(e)),
        }
    }

    pub fn events(&self, after: u64, max: usize, timeout: Duration) -> Vec<Event> {
        self.events.fetch(after, max, timeout)
    }

    /// Kills every container and removes its cgroup: the agent is going
    /// away (on a host; in a guest the VM goes with it anyway).
    pub fn shutdown(&self) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove(&id, true) {
                warn!("container {id}: at shutdown: {e}");
            }
        }
    }
}

fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("{id:?} (init)")
    } else {
        format!("{exec_id:?} of {id:?}")
    }
}

/// Takes the terminal master that came with a `FromInit::Terminal`.
fn attach_terminal(pending: &mut stdio::PendingIo, mut fds: Vec<OwnedFd>) -> Result<()> {
    let fail = |error: String| ContainerError::Setup(format!("receiving the terminal: {error}"));
    if fds.len() != 1 {
        return Err(fail(format!("want one fd, got {}", fds.len())));
    }
    pending
        .attach_terminal(fds.remove(0))
        .map_err(|e| fail(e.to_string()))
}

/// Tells a set-up process to exec its program and waits for the verdict.
fn run_program(channel: &mut Channel) -> Result<()> {
    channel
        .send(&ToInit::Start)
        .map_err(ContainerError::system("starting the program"))?;
    match channel.recv::<FromInit>() {
        // Close-on-exec closed the channel: the program runs.
        Ok(None) => Ok(()),
        Ok(Some(FromInit::Failed(m))) => Err(ContainerError::Setup(m)),
        Ok(Some(other @ (FromInit::Ready | FromInit::Terminal))) => Err(ContainerError::Setup(
            format!("the init process answered Start with {other:?}"),
        )),
        Err(e) => Err(ContainerError::system("starting the program")(e)),
    }
}

/// SIGKILLs (through `kill`) a child that failed setup and waits until the
/// reaper has it.
fn kill_and_reap(
    kill: impl FnOnce() -> io::Result<()>,
    pid: nix::unistd::Pid,
    exit: &ExitReceiver,
) {
    // Already reaped: its pid may be someone else's by now.
    if exit.try_recv().is_ok() {
        return;
    }
    let _ = kill();
    if exit.recv_timeout(KILL_TIMEOUT).is_err() {
        warn!("pid {pid} was not reaped within {KILL_TIMEOUT:?} of SIGKILL");
    }
}
