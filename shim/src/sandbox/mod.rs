//! A sandbox is one pod's microVM: its state directory, the VMM process,
//! the shared directory exported to the guest, and the connection to the
//! guest agent. [`Sandbox::start`] boots it and returns once the agent
//! answers; [`Sandbox::stop`] powers it off and removes everything it made.
//! If the VMM dies on its own, the `on_vmm_exit` callback given to `start`
//! is called once, from the sandbox's monitor thread.

pub mod diagnostics;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::agent_client::{self, AgentClient, AgentError, DialOptions};
use crate::config::Config;
use crate::sandbox_dir::{self, SandboxDir, SandboxDirError};
use crate::share::{Share, ShareError};
use crate::vmm_process::{VmmProcess, VmmProcessError};

/// Where the guest mounts the shared directory (the agent does, at boot).
pub const GUEST_SHARED_DIR: &str = "/run/palisade/shared";
/// The VMM's pid, for `delete` after a shim crash.
const VMM_PID_FILE: &str = "vmm.pid";
/// SIGTERM to SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a guest gets to power off after Shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The monitor re-checks this often whether it is still wanted.
const MONITOR_TICK: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Dir(#[from] SandboxDirError),
    #[error(transparent)]
    Vmm(#[from] VmmProcessError),
    #[error("cannot make the pod's share")]
    Share(#[from] ShareError),
    #[error("cannot start the sandbox's monitor thread")]
    Thread(#[source] std::io::Error),
    #[error("{hint}{}", console_suffix(.console))]
    Boot {
        hint: &'static str,
        #[source]
        source: Box<AgentError>,
        console: Option<String>,
    },
    #[error("the guest agent is unusable{}", console_suffix(.console))]
    Agent {
        #[source]
        source: Box<AgentError>,
        console: Option<String>,
    },
}

fn console_suffix(console: &Option<String>) -> String {
    match console {
        Some(tail) => format!("; the guest console ended with:\n{tail}"),
        None => String::new(),
    }
}

/// Called once if the VMM ends while the sandbox is not being stopped,
/// with a sentence saying how.
pub type VmmExitHandler = Box<dyn FnOnce(String) + Send>;

/// Shared freely (`Arc<Sandbox>`): every method takes `&self`, and
/// [`Sandbox::stop`] may be called from any thread, more than once.
pub struct Sandbox {
    id: String,
    dir_path: PathBuf,
    /// Taken by the first stop, which removes the directory.
    dir: Mutex<Option<SandboxDir>>,
    /// What the guest sees over virtio-fs; detached by the first stop.
    share: Arc<Share>,
    vmm: Arc<Mutex<VmmProcess>>,
    vmm_pid: u32,
    /// Set once the agent answered; only `start` sees it unset.
    agent: Option<AgentClient>,
    stopping: Arc<AtomicBool>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl Sandbox {
    /// Creates `dir` (which must not exist), boots a VM sized by
    /// `config.hypervisor`, and dials its agent until it answers or
    /// `config.agent.dial_timeout_ms` passes. On any error everything made
    /// so far is gone again.
    pub fn start(
        id: &str,
        dir: &Path,
        config: &Config,
        on_vmm_exit: VmmExitHandler,
    ) -> Result<Self, SandboxError> {
        let dir = SandboxDir::create(dir)?;
        let stopping = Arc::new(AtomicBool::new(false));
        // From here on an error drops `dir`, which removes it, and
        // `share`, which detaches it first.
        let share = Arc::new(Share::create(&sandbox_dir::shared_dir(dir.path()))?);
        let (vmm, monitor) =
            spawn_monitored(&dir, share.path(), config, stopping.clone(), on_vmm_exit)?;
        let vmm_pid = lock(&vmm).pid();
        // Only for `delete` after a crash: failing to write it is harmless.
        let _ = std::fs::File::create(dir.path().join(VMM_PID_FILE))
            .and_then(|mut f| writeln!(f, "{vmm_pid}"));
        let mut sandbox = Sandbox {
            id: id.to_owned(),
            dir_path: dir.path().to_owned(),
            dir: Mutex::new(Some(dir)),
            share,
            vmm,
            vmm_pid,
            agent: None,
            stopping,
            monitor: Mutex::new(Some(monitor)),
        };
        // On error, dropping `sandbox` kills the VMM and removes the dir.
        sandbox.agent = Some(sandbox.connect(config)?);
        Ok(sandbox)
    }

    fn connect(&self, config: &Config) -> Result<AgentClient, SandboxError> {
        let (socket, console_log) = {
            let vmm = lock(&self.vmm);
            (vmm.vsock_socket().to_owned(), vmm.console_log().to_owned())
        };
        let options = DialOptions::new(&socket, &console_log, config.agent.dial_timeout());
        let dialed = agent_client::dial(&options, || {
            let mut vmm = lock(&self.vmm);
            if vmm.has_stopped() {
                return Err(Box::new(vmm.ended_error("the guest agent")));
            }
            Ok(())
        });
        let console = || diagnostics::console_tail(&console_log);
        let agent = dialed.map_err(|source| SandboxError::Boot {
            hint: diagnostics::stuck_hint(&lock(&self.vmm).progress()),
            source: Box::new(source),
            console: console(),
        })?;
        agent.version().map_err(|source| SandboxError::Agent {
            source: Box::new(source),
            console: console(),
        })?;
        Ok(agent)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn agent(&self) -> &AgentClient {
        match &self.agent {
            Some(agent) => agent,
            // `start` returns a sandbox only with its agent connected.
            None => unreachable!("a started sandbox has an agent"),
        }
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm_pid
    }

    /// The sandbox's state directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The host side of the guest's `/run/palisade/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.share.path().to_owned()
    }

    /// The pod's share, to put containers' files in.
    pub fn share(&self) -> &Arc<Share> {
        &self.share
    }

    /// The guest console log (kept while the sandbox runs).
    pub fn console_log(&self) -> PathBuf {
        lock(&self.vmm).console_log().to_owned()
    }

    /// Whether the VMM process is still running.
    pub fn is_running(&self) -> bool {
        !lock(&self.vmm).has_stopped()
    }

    /// Kills the VMM at once, for a guest whose agent stopped answering: a
    /// SIGKILL containerd sends must end the container whatever the guest
    /// does. Not a stop: the monitor sees the VMM end and reports it through
    /// `on_vmm_exit`, as when the VMM dies by itself, so every process of
    /// the pod exits and the pod cleans up as after any VMM death.
    pub fn kill_vm(&self) -> Result<(), SandboxError> {
        lock(&self.vmm).kill(Duration::ZERO)?;
        Ok(())
    }

    /// Powers the guest off (the agent syncs and resets the VM), stops the
    /// VMM if it does not go by itself, unmounts whatever is left in the
    /// shared directory and removes the state directory.
    /// Later calls (and calls after the VMM died) only finish the cleanup.
    /// Not to be called from the `on_vmm_exit` callback, which runs on the
    /// monitor thread this joins.
    pub fn stop(&self) -> Result<(), SandboxError> {
        self.teardown(true)
    }

    fn teardown(&self, graceful: bool) -> Result<(), SandboxError> {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let mut vmm = lock(&self.vmm);
            if let (true, false, Some(agent)) = (graceful, vmm.has_stopped(), &self.agent) {
                // The guest may reset before its reply leaves: the VMM's
                // exit is what counts.
                let _ = agent.shutdown();
                let _ = vmm.wait_exit(SHUTDOWN_TIMEOUT);
            }
            if !matches!(vmm.wait_exit(Duration::ZERO), Ok(Some(_))) {
                vmm.kill(KILL_GRACE)?;
            }
        }
        let monitor = self
            .monitor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(monitor) = monitor {
            let _ = monitor.join();
        }
        // The VMM is gone: nothing holds the share's files any more.
        let detached = self.share.close();
        let dir = self
            .dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let removed = match dir {
            Some(dir) => dir.remove().map_err(SandboxError::from),
            None => Ok(()),
        };
        detached?;
        removed
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.teardown(false);
    }
}

fn lock(vmm: &Mutex<VmmProcess>) -> MutexGuard<'_, VmmProcess> {
    vmm.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spawns the VMM from a thread that lives exactly as long as the VMM:
/// the VMM's PR_SET_PDEATHSIG fires when the *thread* that spawned it ends,
/// and the shim's RPC worker threads come and go. The thread then waits for
/// the VMM to stop and reports an unexpected end.
fn spawn_monitored(
    dir: &SandboxDir,
    shared_dir: &Path,
    config: &Config,
    stopping: Arc<AtomicBool>,
    on_vmm_exit: VmmExitHandler,
) -> Result<(Arc<Mutex<VmmProcess>>, JoinHandle<()>), SandboxError> {
    let hypervisor = config.hypervisor.clone();
    let dir_path = dir.path().to_owned();
    let shared_dir = shared_dir.to_owned();
    let (tx, rx) = mpsc::channel();
    let monitor = thread::Builder::new()
        .name("vmm-monitor".into())
        .spawn(move || {
            let vmm = match VmmProcess::spawn(&hypervisor, &dir_path, &shared_dir) {
                Ok(vmm) => Arc::new(Mutex::new(vmm)),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let watch = lock(&vmm).stop_watch();
            if tx.send(Ok(vmm.clone())).is_err() {
                return;
            }
            while !watch.wait(MONITOR_TICK) {}
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let how = {
                let mut vmm = lock(&vmm);
                let pid = vmm.pid();
                let status = match vmm.wait_exit(KILL_GRACE) {
                    Ok(Some(t)) => vmm.describe_end(&t),
                    _ => "stopped answering".to_owned(),
                };
                let stderr = vmm.stderr_last_line();
                if status.starts_with("the VMM was killed by its seccomp filter") {
                    // Its stderr line says the same.
                    format!("{status} (VMM pid {pid})")
                } else if stderr.is_empty() {
                    format!("the VMM process (pid {pid}) ended: {status}")
                } else {
                    format!("the VMM process (pid {pid}) ended: {status}: {stderr}")
                }
            };
            if !stopping.load(Ordering::SeqCst) {
                on_vmm_exit(how);
            }
        })
        .map_err(SandboxError::Thread)?;
    match rx.recv() {
        Ok(Ok(vmm)) => Ok((vmm, monitor)),
        Ok(Err(e)) => {
            let _ = monitor.join();
            Err(e.into())
        }
        Err(_) => {
            let _ = monitor.join();
            Err(SandboxError::Thread(std::io::Error::other(
                "the VMM monitor thread ended before starting the VMM",
            )))
        }
    }
}
