//! One pod: its sandbox VM and its containers' state as containerd sees
//! it. The task service ([`super::task`]) turns each RPC into one call
//! here.
//!
//! Locking: `state` is held only briefly and never across an agent call or
//! a VM boot. `boot` serializes container creation, so two Creates of one
//! pod never boot two VMs. Events are queued while `state` is held, which
//! gives containerd the order in which the state changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::mount::Mount as MountMessage;
use palisade_protocols::containers::StatsContainerResponse;

use super::error::{TaskError, TaskResult};
use super::events::EventQueue;
use super::rootfs::{self, ContainerFiles};
use super::sizing;
use super::spec::{self, GuestSpec};
use super::stdio::{Bridge, StdioPaths};
use crate::agent_client::containers::{AgentEvent, Exit};
use crate::agent_client::AgentError;
use crate::config::{self, Config, ConfigLocation};
use crate::host_cgroup::{self, PodCgroup};
use crate::mount::MountSource;
use crate::sandbox::{Sandbox, GUEST_SHARED_DIR};

/// The exit status containerd reports when the real one is unknown (the
/// VM died under the process).
pub const UNKNOWN_EXIT_STATUS: u32 = 255;
/// How long one GetEvents long poll waits in the guest.
const EVENT_POLL: Duration = Duration::from_secs(30);
/// Pause after a failed poll while the VM still runs.
const EVENT_RETRY: Duration = Duration::from_millis(200);
/// At most one `/tasks/oom` per container in this time: an OOM kill is
/// news once, and a guest that reports them in a loop must not flood
/// containerd (or its clients) through the shim.
const OOM_COALESCE: Duration = Duration::from_secs(1);

/// Everything Create needs from the request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<MountSource>,
    pub stdio: StdioPaths,
    /// `config_path` of the runtime options, if containerd passed one.
    pub config_path: Option<PathBuf>,
    /// The original mounts, for the `/tasks/create` event.
    pub rootfs_messages: Vec<MountMessage>,
}

/// What containerd's State RPC reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    /// The pod's VMM on the host (see [`Pids`]).
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub bundle: PathBuf,
    pub exit: Option<ExitStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExitStatus {
    /// The pod's VMM on the host (see [`Pids`]).
    pub pid: u32,
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    NotStarted,
    /// The start call is out: an exit that arrives now waits until the
    /// start event is queued.
    Starting,
    Started,
}

/// Where Wait blocks.
#[derive(Default)]
struct ExitCell {
    value: Mutex<Option<ExitStatus>>,
    set: Condvar,
}

impl ExitCell {
    fn set(&self, exit: ExitStatus) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(exit);
        self.set.notify_all();
    }

    fn wait(&self) -> ExitStatus {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(exit) = value.as_ref() {
                return exit.clone();
            }
            value = self.set.wait(value).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A process's pids. containerd and the tools around it act on a task's
/// pid on the host (`nsenter -t`, monitoring agents), where a guest pid
/// names some unrelated host process: every task reports the pod's VMM,
/// the host process that holds it, as Kata does. The guest pid stays for
/// the process listing (Pids) and for matching execs to it.
#[derive(Debug, Clone, Copy, Default)]
struct Pids {
    guest: u32,
    host: u32,
}

struct Process {
    pid: Pids,
    stdio: StdioPaths,
    start: Start,
    exit: Option<ExitStatus>,
    /// An exit that arrived while starting.
    early_exit: Option<Exit>,
    /// An exit is being finished (outputs drained) right now.
    exiting: bool,
    bridge: Option<Bridge>,
    cell: Arc<ExitCell>,
    /// An exec's OCI process, until it is started.
    exec_spec: Option<Vec<u8>>,
}

impl Process {
    fn new(pid: Pids, stdio: StdioPaths) -> Self {
        Process {
            pid,
            stdio,
            start: Start::NotStarted,
            exit: None,
            early_exit: None,
            exiting: false,
            bridge: None,
            cell: Arc::new(ExitCell::default()),
            exec_spec: None,
        }
    }

    fn is_running(&self) -> bool {
        self.start == Start::Started && self.exit.is_none()
    }

    /// Records that the process went down with its VM, status unknown,
    /// and releases its waiters; returns the exit to publish.
    fn end_with_vm(&mut self) -> ExitStatus {
        let exit = ExitStatus {
            pid: self.pid.host,
            code: UNKNOWN_EXIT_STATUS,
            at: now(),
        };
        self.exit = Some(exit.clone());
        self.exiting = false;
        self.cell.set(exit.clone());
        exit
    }

    fn status(&self, paused: bool) -> Status {
        match (self.exit.is_some(), self.start) {
            (true, _) => Status::Stopped,
            (false, Start::Started) if paused => Status::Paused,
            (false, Start::Started) => Status::Running,
            (false, _) => Status::Created,
        }
    }
}

struct Container {
    bundle: PathBuf,
    files: Option<ContainerFiles>,
    init: Process,
    execs: HashMap<String, Process>,
    paused: bool,
    deleting: bool,
    /// When the last `/tasks/oom` went out.
    last_oom: Option<Instant>,
}

/// Whether an OOM kill reported at `now` is published, given the last one
/// published; records it if so.
fn oom_is_news(last: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_some_and(|t| now.saturating_duration_since(t) < OOM_COALESCE) {
        return false;
    }
    *last = Some(now);
    true
}

impl Container {
    fn process(&self, exec_id: &str) -> TaskResult<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| TaskError::not_found(format!("exec {exec_id:?}")))
    }

    fn process_mut(&mut self, exec_id: &str) -> TaskResult<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| TaskError::not_found(format!("exec {exec_id:?}")))
    }
}

enum SandboxSlot {
    None,
    Running(Arc<Sandbox>),
    /// The VM died; the sentence says how.
    Dead(String),
}

struct PodState {
    sandbox: SandboxSlot,
    /// The host cgroup the shim and the VMM run in while the VM is up;
    /// left once the VM is stopped.
    host_cgroup: Option<PodCgroup>,
    config: Option<Config>,
    containers: HashMap<String, Container>,
}

pub struct Pod {
    events: EventQueue,
    /// containerd asked for debug logging (`-debug`).
    debug: bool,
    state: Mutex<PodState>,
    boot: Mutex<()>,
    /// VM stops running in the background.
    stopping: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Signalled when the shim should exit (Shutdown of an empty pod).
    exit: Arc<containerd_shim::ExitSignal>,
    me: Weak<Pod>,
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

impl Pod {
    pub fn new(
        events: EventQueue,
        debug: bool,
        exit: Arc<containerd_shim::ExitSignal>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Pod {
            events,
            debug,
            state: Mutex::new(PodState {
                sandbox: SandboxSlot::None,
                host_cgroup: None,
                config: None,
                containers: HashMap::new(),
            }),
            boot: Mutex::new(()),
            stopping: Mutex::new(Vec::new()),
            exit,
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn running_sandbox(&self) -> TaskResult<Arc<Sandbox>> {
        match &self.lock().sandbox {
            SandboxSlot::Running(s) => Ok(s.clone()),
            SandboxSlot::Dead(how) => Err(TaskError::new(
                Code::UNAVAILABLE,
                format!("the pod's VM is gone: {how}"),
            )),
            SandboxSlot::None => Err(TaskError::precondition("the pod's VM is not running")),
        }
    }

    // ---------------------------------------------------------------- create

    pub fn create(&self, req: CreateRequest) -> TaskResult<u32> {
        rootfs::check_id(&req.id).map_err(|e| TaskError::invalid(e.to_string()))?;
        if self.lock().containers.contains_key(&req.id) {
            return Err(TaskError::new(
                Code::ALREADY_EXISTS,
                format!("container {:?} already exists in this pod", req.id),
            ));
        }
        let host_spec = spec::read_bundle_spec(&req.bundle)
            .map_err(|e| TaskError::invalid(crate::error_chain(&e)))?;

        let _booting = self.boot.lock().unwrap_or_else(PoisonError::into_inner);
        let sandbox = self.ensure_sandbox(&req, &host_spec)?;
        let result = self.create_in(&sandbox, &req, host_spec);
        if result.is_err() {
            self.stop_sandbox_if_empty();
        }
        result
    }

    fn create_in(
        &self,
        sandbox: &Arc<Sandbox>,
        req: &CreateRequest,
        host_spec: serde_json::Value,
    ) -> TaskResult<u32> {
        let guest_dir = format!("{GUEST_SHARED_DIR}/{}", req.id);
        let guest_rootfs = format!("{guest_dir}/rootfs");
        let GuestSpec {
            json,
            host_root,
            volumes,
            dropped,
        } = spec::rewrite_for_guest(host_spec, &guest_rootfs, &guest_dir)
            .map_err(|e| TaskError::invalid(crate::error_chain(&e)))?;
        for what in dropped {
            log::info!("container {}: not passed to the guest: {what}", req.id);
        }
        let files = ContainerFiles::prepare(
            sandbox.share(),
            &req.id,
            &req.rootfs,
            &req.bundle,
            &host_root,
            &volumes,
        )
        .map_err(|e| match e {
            rootfs::RootfsError::BadId(_) | rootfs::RootfsError::NoRootfs(_) => {
                TaskError::invalid(crate::error_chain(&e))
            }
            e => TaskError::from_error("cannot share the container's files with the pod's VM", &e),
        })?;

        let agent = sandbox.agent();
        let creating = Instant::now();
        let started = agent
            .create_container(&req.id, json, &guest_rootfs, req.stdio.wanted())
            .map_err(|e| TaskError::from_agent("the guest refused the container", &e))?;
        log::debug!(
            "container {}: built in the guest in {} ms",
            req.id,
            creating.elapsed().as_millis()
        );
        let bridge = match Bridge::connect(agent, &req.stdio, started.ports) {
            Ok(b) => b,
            Err(e) => {
                let _ = agent.remove_container(&req.id, true);
                return Err(TaskError::from_error(
                    "cannot connect the container's stdio",
                    &e,
                ));
            }
        };

        let pid = Pids {
            guest: started.pid,
            host: sandbox.vmm_pid(),
        };
        let mut init = Process::new(pid, req.stdio.clone());
        init.bridge = Some(bridge);
        let mut state = self.lock();
        state.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                files: Some(files),
                init,
                execs: HashMap::new(),
                paused: false,
                deleting: false,
                last_oom: None,
            },
        );
        self.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.display().to_string(),
                rootfs: req.rootfs_messages.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdio.stdin.clone(),
                    stdout: req.stdio.stdout.clone(),
                    stderr: req.stdio.stderr.clone(),
                    terminal: req.stdio.terminal,
                    ..Default::default()
                }),
                pid: pid.host,
                ..Default::default()
            },
        );
        Ok(pid.host)
    }

    /// The pod's running sandbox, booted now if this is its first
    /// container. Called with `boot` held.
    fn ensure_sandbox(
        &self,
        req: &CreateRequest,
        host_spec: &serde_json::Value,
    ) -> TaskResult<Arc<Sandbox>> {
        {
            let state = self.lock();
            match &state.sandbox {
                SandboxSlot::Running(s) => return Ok(s.clone()),
                SandboxSlot::Dead(how) if !state.containers.is_empty() => {
                    return Err(TaskError::new(
                        Code::UNAVAILABLE,
                        format!("the pod's VM is gone ({how}); delete its containers and start the pod again"),
                    ))
                }
                _ => {}
            }
        }
        // A VM of this pod may still be powering off, in the same directory.
        self.wait_for_stops();
        let config = self.load_config(req)?;
        let sandbox_id = spec::sandbox_id(host_spec, &req.id);
        let sized = sizing::size_vm(&config, host_spec, self.debug)
            .map_err(|e| TaskError::invalid(crate::error_chain(&e)))?;
        if sized.runtime.enable_debug && log::max_level() < log::LevelFilter::Debug {
            // `[runtime] enable_debug` is the shim's debug log too, not
            // only the guest's: this shim serves this one pod.
            log::set_max_level(log::LevelFilter::Debug);
        }
        let dir = sizing::sandbox_dir(&sandbox_id);
        log::info!(
            "pod {sandbox_id}: booting a VM with {} vCPUs and {} MiB in {}",
            sized.hypervisor.vcpus,
            sized.hypervisor.memory_mib,
            dir.display()
        );
        // Before the VMM is spawned: it and all its threads start there.
        let refused = |e| match e {
            host_cgroup::HostCgroupError::Path(e) => TaskError::invalid(e.to_string()),
            e => TaskError::from_error("cannot put the pod in its host cgroup", &e),
        };
        let cgroup = host_cgroup::enter_for_sandbox(host_spec, &dir, sized.hypervisor.memory_mib)
            .map_err(refused)?;
        let me = self.me.clone();
        let on_exit = Box::new(move |how: String| {
            if let Some(pod) = me.upgrade() {
                pod.vm_died(how);
            }
        });
        let booting = Instant::now();
        let sandbox = match Sandbox::start(&sandbox_id, &dir, &sized, on_exit) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                // The VMM is gone again: nothing is left in the cgroup.
                host_cgroup::leave_logged(Some(cgroup));
                return Err(TaskError::new(
                    Code::UNAVAILABLE,
                    format!("cannot start the pod's VM: {}", crate::error_chain(&e)),
                ));
            }
        };
        log::info!(
            "pod {sandbox_id}: VM up, agent answered {} ms after the VMM was started",
            booting.elapsed().as_millis()
        );
        {
            let mut state = self.lock();
            state.sandbox = SandboxSlot::Running(sandbox.clone());
            state.host_cgroup = Some(cgroup);
            state.config = Some(config);
        }
        self.spawn_event_loop(sandbox.clone())
            .map_err(|e| TaskError::from_error("cannot start the agent event thread", &e))?;
        Ok(sandbox)
    }

    fn load_config(&self, req: &CreateRequest) -> TaskResult<Config> {
        if let Some(config) = &self.lock().config {
            return Ok(config.clone());
        }
        let location = match &req.config_path {
            Some(path) => ConfigLocation {
                path: path.clone(),
                origin: config::ConfigOrigin::RuntimeOptions,
            },
            None => ConfigLocation::from_cli_or_env(None),
        };
        config::load(&location)
            .map(|loaded| loaded.config)
            .map_err(|e| TaskError::invalid(crate::error_chain(&e)))
    }

    // ---------------------------------------------------------------- start

    pub fn start(&self, id: &str, exec_id: &str) -> TaskResult<u32> {
        let sandbox = self.running_sandbox()?;
        let (spec, stdio) = {
            let mut state = self.lock();
            let c = find_mut(&mut state, id)?;
            let p = c.process_mut(exec_id)?;
            if p.start != Start::NotStarted || p.exit.is_some() {
                return Err(TaskError::precondition(format!(
                    "{} has already been started",
                    describe(id, exec_id)
                )));
            }
            p.start = Start::Starting;
            (p.exec_spec.clone(), p.stdio.clone())
        };
        let agent = sandbox.agent();
        // Errors come with whether the connection to the guest was lost.
        let refused =
            |what: &str, e: AgentError| (TaskError::from_agent(what, &e), e.is_disconnect());
        let outcome = match &spec {
            None => agent
                .start_container(id)
                .map(|()| None)
                .map_err(|e| refused("the guest could not start the container", e)),
            Some(spec) => agent
                .exec_process(id, exec_id, spec.clone(), stdio.wanted())
                .map_err(|e| refused("the guest could not start the exec process", e))
                .and_then(|started| {
                    Bridge::connect(agent, &stdio, started.ports)
                        .map(|bridge| Some((started.pid, bridge)))
                        .map_err(|e| {
                            let _ = agent.signal_process(id, exec_id, libc::SIGKILL as u32, false);
                            (
                                TaskError::from_error(
                                    "cannot connect the exec process's stdio",
                                    &e,
                                ),
                                false,
                            )
                        })
                }),
        };

        let mut state = self.lock();
        let c = find_mut(&mut state, id)?;
        let p = c.process_mut(exec_id)?;
        let started = match outcome {
            Ok(s) => s,
            Err((e, lost_the_vm)) => {
                p.start = Start::NotStarted;
                if lost_the_vm && p.exit.is_none() {
                    // The VM is gone; the monitor notices a moment later
                    // (vm_died). Stop the process now: containerd's client
                    // refuses to delete a task still "created" with a pid,
                    // so `ctr run` would give up on it and leave the task,
                    // and with it the pod's shim, behind.
                    let exit = p.end_with_vm();
                    self.publish_exit(id, exec_id, &exit);
                }
                return Err(e);
            }
        };
        if let Some((guest_pid, bridge)) = started {
            p.pid = Pids {
                guest: guest_pid,
                host: sandbox.vmm_pid(),
            };
            p.bridge = Some(bridge);
        }
        p.start = Start::Started;
        let pid = p.pid.host;
        if exec_id.is_empty() {
            self.events.send(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: id.to_owned(),
                    pid,
                    ..Default::default()
                },
            );
        } else {
            self.events.send(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    pid,
                    ..Default::default()
                },
            );
        }
        if let Some(exit) = p.early_exit.take() {
            self.finish_exit(p, id, exec_id, exit);
        }
        Ok(pid)
    }

    // ---------------------------------------------------------------- exec

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        spec_json: Vec<u8>,
        stdio: StdioPaths,
    ) -> TaskResult<()> {
        if exec_id.is_empty() {
            return Err(TaskError::invalid("an exec needs an exec id"));
        }
        let mut state = self.lock();
        let c = find_mut(&mut state, id)?;
        if !c.init.is_running() {
            return Err(TaskError::precondition(format!(
                "container {id:?} is not running: start it before exec"
            )));
        }
        if c.execs.contains_key(exec_id) {
            return Err(TaskError::new(
                Code::ALREADY_EXISTS,
                format!("exec {exec_id:?} already exists in container {id:?}"),
            ));
        }
        let mut p = Process::new(Pids::default(), stdio);
        p.exec_spec = Some(spec_json);
        c.execs.insert(exec_id.to_owned(), p);
        self.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                ..Default::default()
            },
        );
        Ok(())
    }

    // ---------------------------------------------------------------- exits

    fn spawn_event_loop(&self, sandbox: Arc<Sandbox>) -> std::io::Result<()> {
        let me = self.me.clone();
        thread::Builder::new()
            .name("agent-events".into())
            .spawn(move || {
                let mut after = 0;
                loop {
                    let batch = sandbox.agent().get_events(after, EVENT_POLL);
                    let Some(pod) = me.upgrade() else { return };
                    if !pod.is_current(&sandbox) {
                        return;
                    }
                    match batch {
                        Ok(batch) => {
                            after = batch.last_sequence;
                            for event in batch.events {
                                pod.handle_agent_event(event);
                            }
                        }
                        Err(e) => {
                            if !sandbox.is_running() {
                                return;
                            }
                            log::warn!("reading the agent's events: {}", crate::error_chain(&e));
                            thread::sleep(EVENT_RETRY);
                        }
                    }
                }
            })
            .map(drop)
    }

    fn is_current(&self, sandbox: &Arc<Sandbox>) -> bool {
        matches!(&self.lock().sandbox, SandboxSlot::Running(s) if Arc::ptr_eq(s, sandbox))
    }

    fn handle_agent_event(&self, event: AgentEvent) {
        match event {
            AgentEvent::OomKilled { container_id } => {
                let mut state = self.lock();
                let news = state
                    .containers
                    .get_mut(&container_id)
                    .is_some_and(|c| oom_is_news(&mut c.last_oom, Instant::now()));
                if news {
                    self.events.send(
                        topics::TASK_OOM_EVENT_TOPIC,
                        TaskOOM {
                            container_id,
                            ..Default::default()
                        },
                    );
                }
            }
            AgentEvent::Exited {
                container_id,
                exec_id,
                exit,
            } => {
                let mut state = self.lock();
                let Ok(c) = find_mut(&mut state, &container_id) else {
                    log::debug!("exit of unknown container {container_id:?}");
                    return;
                };
                let Ok(p) = c.process_mut(&exec_id) else {
                    log::debug!("exit of unknown exec {exec_id:?} of {container_id:?}");
                    return;
                };
                if p.exit.is_some() || p.exiting {
                    return;
                }
                if p.start == Start::Starting {
                    p.early_exit = Some(exit);
                    return;
                }
                self.finish_exit(p, &container_id, &exec_id, exit);
            }
        }
    }

    /// Drains the process's outputs on a thread of its own (they may take a
    /// while to reach containerd), then records the exit.
    fn finish_exit(&self, p: &mut Process, id: &str, exec_id: &str, exit: Exit) {
        p.exiting = true;
        let bridge = p.bridge.take();
        let me = self.me.clone();
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        let spawned = thread::Builder::new().name("exit".into()).spawn(move || {
            let mut bridge = bridge;
            if let Some(b) = bridge.as_mut() {
                b.wait_outputs();
            }
            if let Some(pod) = me.upgrade() {
                pod.record_exit(&id, &exec_id, exit.code, bridge);
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start a thread to finish an exit: {e}");
        }
    }

    fn record_exit(&self, id: &str, exec_id: &str, code: u32, bridge: Option<Bridge>) {
        let mut state = self.lock();
        let Ok(c) = find_mut(&mut state, id) else {
            return;
        };
        let Ok(p) = c.process_mut(exec_id) else {
            return;
        };
        if p.exit.is_some() {
            return;
        }
        // Keeps stdin open for nobody; ending it frees the guest side.
        drop(bridge);
        let exit = ExitStatus {
            pid: p.pid.host,
            code,
            at: now(),
        };
        self.publish_exit(id, exec_id, &exit);
        p.exit = Some(exit.clone());
        p.exiting = false;
        p.cell.set(exit);
    }

    fn publish_exit(&self, id: &str, exec_id: &str, exit: &ExitStatus) {
        self.events.send(
            topics::TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: id.to_owned(),
                id: if exec_id.is_empty() { id } else { exec_id }.to_owned(),
                pid: exit.pid,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at.clone()),
                ..Default::default()
            },
        );
    }

    /// The VMM ended by itself: every process of the pod has exited, with
    /// an unknown status, and the VM's resources are released. The
    /// containers stay (stopped) until containerd deletes them.
    fn vm_died(&self, how: String) {
        log::error!("{how}");
        let (sandbox, files, cgroup) = {
            let mut state = self.lock();
            let sandbox = match std::mem::replace(&mut state.sandbox, SandboxSlot::Dead(how)) {
                SandboxSlot::Running(s) => Some(s),
                _ => None,
            };
            let cgroup = state.host_cgroup.take();
            let mut files = Vec::new();
            let ids: Vec<String> = state.containers.keys().cloned().collect();
            for id in ids {
                let Some(c) = state.containers.get_mut(&id) else {
                    continue;
                };
                files.extend(c.files.take());
                let mut ended = Vec::new();
                for (exec_id, p) in std::iter::once((String::new(), &mut c.init))
                    .chain(c.execs.iter_mut().map(|(e, p)| (e.clone(), p)))
                {
                    if let Some(mut b) = p.bridge.take() {
                        b.abort();
                    }
                    if p.exit.is_none() {
                        ended.push((exec_id, p.end_with_vm()));
                    }
                }
                // Execs first: containerd expects the init's exit last.
                ended.sort_by_key(|(exec_id, _)| exec_id.is_empty());
                for (exec_id, exit) in ended {
                    self.publish_exit(&id, &exec_id, &exit);
                }
            }
            (sandbox, files, cgroup)
        };
        // Not on this (the monitor) thread: stopping the sandbox joins it.
        // A new boot waits for it (`stopping`): the shim must have left
        // this pod cgroup before it enters the next one.
        let cleanup = thread::Builder::new()
            .name("vm-cleanup".into())
            .spawn(move || {
                for f in files {
                    if let Err(e) = f.remove() {
                        log::error!("cleaning up after the VM died: {}", crate::error_chain(&e));
                    }
                }
                if let Some(s) = sandbox {
                    if let Err(e) = s.stop() {
                        log::error!("cleaning up after the VM died: {}", crate::error_chain(&e));
                    }
                }
                host_cgroup::leave_logged(cgroup);
            });
        match cleanup {
            Ok(handle) => self
                .stopping
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle),
            Err(e) => log::error!("cannot start the cleanup thread: {e}"),
        }
    }

    // ---------------------------------------------------------------- signals, waits

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> TaskResult<()> {
        {
            let state = self.lock();
            let c = find(&state, id)?;
            let p = c.process(exec_id)?;
            if p.exit.is_some() && !all {
                return Err(TaskError::not_found(format!(
                    "{}: process already finished",
                    describe(id, exec_id)
                )));
            }
            if p.exit.is_some() {
                return Ok(());
            }
        }
        let sandbox = self.running_sandbox()?;
        match sandbox.agent().signal_process(id, exec_id, signal, all) {
            Err(e) if signal == libc::SIGKILL as u32 && e.is_unanswered() => {
                // The guest is hostile or wedged; either way SIGKILL must
                // work. The VM's death ends every process of the pod (the
                // agent serves them all, so none could be signalled now).
                log::error!(
                    "{}: SIGKILL unanswered ({}): killing the pod's VM",
                    describe(id, exec_id),
                    crate::error_chain(&e)
                );
                sandbox.kill_vm().map_err(|e| {
                    TaskError::internal(format!(
                        "cannot kill the VM of an unresponsive guest: {}",
                        crate::error_chain(&e)
                    ))
                })
            }
            result => result
                .map_err(|e| TaskError::from_agent("the guest could not signal the process", &e)),
        }
    }

    /// Blocks until the process has exited.
    pub fn wait(&self, id: &str, exec_id: &str) -> TaskResult<ExitStatus> {
        let cell = {
            let state = self.lock();
            find(&state, id)?.process(exec_id)?.cell.clone()
        };
        Ok(cell.wait())
    }

    pub fn state(&self, id: &str, exec_id: &str) -> TaskResult<ProcessState> {
        let state = self.lock();
        let c = find(&state, id)?;
        let p = c.process(exec_id)?;
        Ok(ProcessState {
            pid: p.pid.host,
            status: p.status(c.paused),
            stdio: p.stdio.clone(),
            bundle: c.bundle.clone(),
            exit: p.exit.clone(),
        })
    }

    // ---------------------------------------------------------------- delete

    pub fn delete(&self, id: &str, exec_id: &str) -> TaskResult<ExitStatus> {
        if !exec_id.is_empty() {
            let mut state = self.lock();
            let c = find_mut(&mut state, id)?;
            let p = c.process(exec_id)?;
            if p.is_running() || p.exiting {
                return Err(TaskError::precondition(format!(
                    "{} is still running: kill it first",
                    describe(id, exec_id)
                )));
            }
            let status = p.exit.clone().unwrap_or(ExitStatus {
                pid: p.pid.host,
                code: 0,
                at: now(),
            });
            // A never-started exec has no exit; a Wait on it gets this one
            // rather than blocking forever (and with it the shim's exit).
            p.cell.set(status.clone());
            c.execs.remove(exec_id);
            return Ok(status);
        }

        let (started, files) = {
            let mut state = self.lock();
            let c = find_mut(&mut state, id)?;
            if c.init.is_running() || c.init.exiting {
                return Err(TaskError::precondition(format!(
                    "container {id:?} is still running: kill it first (ctr task kill)"
                )));
            }
            c.deleting = true;
            (c.init.start == Start::Started, c.files.take())
        };
        let mut problems = Vec::new();
        if let Ok(sandbox) = self.running_sandbox() {
            match sandbox.agent().remove_container(id, !started) {
                Ok(()) => {}
                Err(e) if e.code() == Some(Code::NOT_FOUND) => {}
                Err(e) if e.is_disconnect() => {}
                Err(e) => problems.push(format!("the guest could not remove it: {}", e.message())),
            }
        }
        if let Some(files) = files {
            if let Err(e) = files.remove() {
                problems.push(crate::error_chain(&e));
            }
        }

        let (status, empty) = {
            let mut state = self.lock();
            let Some(mut c) = state.containers.remove(id) else {
                return Err(TaskError::not_found(format!("container {id:?}")));
            };
            if let Some(mut b) = c.init.bridge.take() {
                b.abort();
            }
            let status = c.init.exit.clone().unwrap_or(ExitStatus {
                pid: c.init.pid.host,
                code: UNKNOWN_EXIT_STATUS,
                at: now(),
            });
            // A never-started init has no exit; Wait gets this one.
            c.init.cell.set(status.clone());
            self.events.send(
                topics::TASK_DELETE_EVENT_TOPIC,
                TaskDelete {
                    container_id: id.to_owned(),
                    id: id.to_owned(),
                    pid: status.pid,
                    exit_status: status.code,
                    exited_at: MessageField::some(status.at.clone()),
                    ..Default::default()
                },
            );
            (status, state.containers.is_empty())
        };
        if empty {
            self.stop_sandbox_if_empty();
        }
        if problems.is_empty() {
            Ok(status)
        } else {
            Err(TaskError::internal(format!(
                "container {id:?} was deleted, but: {}",
                problems.join("; ")
            )))
        }
    }

    /// Stops the VM once the pod has no containers left. The stop runs on
    /// a thread of its own, so containerd's Delete (and `ctr run --rm`)
    /// does not wait for the guest to power off. A new Create waits for it
    /// before booting again, and the shim waits for it before exiting
    /// ([`Pod::finish`]).
    fn stop_sandbox_if_empty(&self) {
        let (sandbox, cgroup) = {
            let mut state = self.lock();
            if !state.containers.is_empty() {
                return;
            }
            let cgroup = state.host_cgroup.take();
            match std::mem::replace(&mut state.sandbox, SandboxSlot::None) {
                SandboxSlot::Running(s) => (s, cgroup),
                _ => {
                    drop(state);
                    host_cgroup::leave_logged(cgroup);
                    return;
                }
            }
        };
        // The cgroup is left after the VM is stopped, by the stop thread
        // or, if it cannot start, right here: the job goes to one of them.
        let stop = Arc::new(Mutex::new(Some((sandbox, cgroup))));
        let in_thread = stop.clone();
        let stopper = thread::Builder::new()
            .name("vm-stop".into())
            .spawn(move || stop_and_leave(&in_thread));
        match stopper {
            Ok(handle) => self
                .stopping
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle),
            Err(e) => {
                log::warn!("cannot stop the VM in the background ({e}); stopping it now");
                stop_and_leave(&stop);
            }
        }
    }

    /// containerd's Shutdown: the shim exits once its pod is empty.
    pub fn shutdown(&self) {
        let state = self.lock();
        if state.containers.is_empty() {
            self.exit.signal();
        } else {
            let ids: Vec<&String> = state.containers.keys().collect();
            log::debug!("shutdown: staying up for containers {ids:?}");
        }
    }

    /// Waits for every VM stop in flight; the shim calls this before it
    /// exits, so nothing outlives it.
    pub fn finish(&self) {
        self.stop_sandbox_if_empty();
        self.wait_for_stops();
    }

    fn wait_for_stops(&self) {
        let handles: Vec<_> = self
            .stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }

    // ---------------------------------------------------------------- the rest

    /// The container's processes by their guest pids (the only place
    /// guest pids are reported), each with its exec id if it is one.
    pub fn pids(&self, id: &str) -> TaskResult<Vec<(u32, Option<String>)>> {
        let execs: HashMap<u32, String> = {
            let state = self.lock();
            let c = find(&state, id)?;
            if c.init.exit.is_some() {
                return Ok(Vec::new());
            }
            c.execs
                .iter()
                .filter(|(_, p)| p.is_running())
                .map(|(e, p)| (p.pid.guest, e.clone()))
                .collect()
        };
        let pids = self
            .running_sandbox()?
            .agent()
            .list_processes(id)
            .map_err(|e| TaskError::from_agent("the guest could not list the processes", &e))?;
        Ok(pids
            .into_iter()
            .map(|pid| (pid, execs.get(&pid).cloned()))
            .collect())
    }

    pub fn pause(&self, id: &str) -> TaskResult<()> {
        self.set_paused(id, true)
    }

    pub fn resume(&self, id: &str) -> TaskResult<()> {
        self.set_paused(id, false)
    }

    fn set_paused(&self, id: &str, paused: bool) -> TaskResult<()> {
        {
            let state = self.lock();
            let c = find(&state, id)?;
            if !c.init.is_running() {
                return Err(TaskError::precondition(format!(
                    "container {id:?} is not running"
                )));
            }
        }
        let sandbox = self.running_sandbox()?;
        let agent = sandbox.agent();
        let result = if paused {
            agent.pause_container(id)
        } else {
            agent.resume_container(id)
        };
        result.map_err(|e| {
            TaskError::from_agent("the guest could not freeze or thaw the container", &e)
        })?;
        let mut state = self.lock();
        let c = find_mut(&mut state, id)?;
        c.paused = paused;
        if paused {
            self.events.send(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                },
            );
        } else {
            self.events.send(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> TaskResult<()> {
        let mut state = self.lock();
        let c = find_mut(&mut state, id)?;
        let p = c.process_mut(exec_id)?;
        if let Some(b) = p.bridge.as_mut() {
            b.close_stdin();
        }
        Ok(())
    }

    pub fn resize(&self, id: &str, exec_id: &str, cols: u32, rows: u32) -> TaskResult<()> {
        {
            let state = self.lock();
            let p = find(&state, id)?.process(exec_id)?;
            if !p.stdio.terminal {
                return Err(TaskError::precondition(format!(
                    "{} has no terminal",
                    describe(id, exec_id)
                )));
            }
            if p.exit.is_some() {
                return Ok(());
            }
        }
        self.running_sandbox()?
            .agent()
            .resize_terminal(id, exec_id, rows, cols)
            .map_err(|e| TaskError::from_agent("the guest could not resize the terminal", &e))
    }

    pub fn update(&self, id: &str, resources_json: Vec<u8>) -> TaskResult<()> {
        find(&self.lock(), id)?;
        self.running_sandbox()?
            .agent()
            .update_container(id, resources_json)
            .map_err(|e| TaskError::from_agent("the guest could not apply the resources", &e))
    }

    pub fn stats(&self, id: &str) -> TaskResult<StatsContainerResponse> {
        find(&self.lock(), id)?;
        self.running_sandbox()?
            .agent()
            .stats_container(id)
            .map_err(|e| TaskError::from_agent("the guest could not read the statistics", &e))
    }

    /// The init pid of `id`, for Connect.
    pub fn init_pid(&self, id: &str) -> TaskResult<u32> {
        Ok(find(&self.lock(), id)?.init.pid.host)
    }

    /// The sandbox's state directory, if it runs.
    pub fn sandbox_dir(&self) -> Option<PathBuf> {
        match &self.lock().sandbox {
            SandboxSlot::Running(s) => Some(s.dir().to_owned()),
            _ => None,
        }
    }
}

type StopJob = Mutex<Option<(Arc<Sandbox>, Option<PodCgroup>)>>;

/// Stops the VM, then leaves its cgroup; once, whoever calls it first.
fn stop_and_leave(job: &StopJob) {
    let Some((sandbox, cgroup)) = job.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return;
    };
    log::info!("pod {}: last container gone, stopping its VM", sandbox.id());
    if let Err(e) = sandbox.stop() {
        log::error!("stopping the pod's VM: {}", crate::error_chain(&e));
    }
    host_cgroup::leave_logged(cgroup);
}

fn find<'a>(state: &'a PodState, id: &str) -> TaskResult<&'a Container> {
    state
        .containers
        .get(id)
        .filter(|c| !c.deleting)
        .ok_or_else(|| TaskError::not_found(format!("container {id:?}")))
}

fn find_mut<'a>(state: &'a mut PodState, id: &str) -> TaskResult<&'a mut Container> {
    state
        .containers
        .get_mut(id)
        .filter(|c| !c.deleting)
        .ok_or_else(|| TaskError::not_found(format!("container {id:?}")))
}

fn describe(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("container {id:?}")
    } else {
        format!("exec {exec_id:?} of container {id:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_published_once_a_second_per_container() {
        let t0 = Instant::now();
        let mut last = None;
        assert!(oom_is_news(&mut last, t0));
        for ms in [0, 10, 999] {
            assert!(
                !oom_is_news(&mut last, t0 + Duration::from_millis(ms)),
                "{ms}"
            );
        }
        assert!(oom_is_news(&mut last, t0 + OOM_COALESCE));
        assert!(!oom_is_news(&mut last, t0 + OOM_COALESCE));
        // A clock that seems to go back publishes nothing either.
        assert!(!oom_is_news(&mut last, t0));
    }
}
