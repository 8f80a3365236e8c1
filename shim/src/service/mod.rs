//! containerd's runtime v2 shim protocol for `io.containerd.palisade.v2`:
//! `start` (one shim per pod), `delete` (cleaning up after a dead shim),
//! and serving the task API ([`task`]) for the pod ([`pod`]).

pub mod error;
pub mod events;
pub mod options;
pub mod pod;
pub mod rootfs;
pub mod sizing;
pub mod spec;
pub mod stdio;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::{timestamp, write_address};
use containerd_shim::{ExitSignal, Flags, StartOpts};

use self::events::EventQueue;
use self::pod::Pod;
use self::task::TaskService;

/// containerd's runtime name for palisade.
pub const RUNTIME_ID: &str = "io.containerd.palisade.v2";
/// What `delete` reports for a task whose shim died: killed.
const DEAD_SHIM_EXIT_STATUS: u32 = 128 + libc::SIGKILL as u32;

pub struct Service {
    namespace: String,
    /// containerd's main socket (`-address`), part of the shim socket name.
    address: String,
    /// The socket this shim serves on (`-socket`, serving mode only).
    socket: String,
    id: String,
    debug: bool,
    exit: Arc<ExitSignal>,
    /// The pod, once serving; waited for before the shim exits.
    pod: std::sync::Mutex<Option<Arc<Pod>>>,
}

impl containerd_shim::Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
            id: args.id.clone(),
            debug: args.debug,
            exit: Arc::new(ExitSignal::default()),
            pod: std::sync::Mutex::new(None),
        }
    }

    /// One shim per pod: containers of a pod (CRI's sandbox-id annotation)
    /// are served by the shim the pod's first container started.
    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = grouping(Path::new("."), &opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if socket_answers(&address) {
            write_address(&address)?;
            return Ok(address);
        }
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    /// Runs after the shim is gone (crashed or killed): its VM went with it
    /// (the VMM dies with the shim), so what is left is the sandbox's
    /// mounts and directory, and the host cgroups made for the pod.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = PathBuf::from(".");
        let group = grouping(&bundle, &self.id);
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &group);
        if socket_answers(&address) {
            // The pod's shim is alive and owns the sandbox; other
            // containers of the pod still run in it.
            log::warn!(
                "delete {}: the pod's shim still runs; leaving its sandbox alone",
                self.id
            );
        } else {
            // A killed shim could not remove its socket; the next shim of
            // this pod would find it in the way.
            remove_socket(&address);
            let dir = sizing::sandbox_dir(&group);
            cleanup_dead_sandbox(&dir);
            // After the VMM is gone: its cgroup is empty now.
            let record = crate::host_cgroup::record_path(&dir);
            if let Err(e) = crate::host_cgroup::remove_recorded(&record) {
                log::warn!(
                    "cleaning up the pod cgroups of {}: {}",
                    self.id,
                    crate::error_chain(&e)
                );
            }
        }
        Ok(DeleteResponse {
            exit_status: DEAD_SHIM_EXIT_STATUS,
            exited_at: MessageField::some(timestamp()?),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        let pod = self
            .pod
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(pod) = pod {
            pod.finish();
        }
        // The library removes the socket only if it can still read the
        // bundle's `address` file, and containerd has usually removed the
        // bundle by now (it was the pod's first container's).
        remove_socket(&self.socket);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = match EventQueue::start(&self.namespace, publisher) {
            Ok(q) => q,
            Err(e) => {
                // Without events containerd cannot follow tasks at all.
                log::error!("cannot start the event thread: {e}");
                std::process::exit(1);
            }
        };
        let pod = Pod::new(events, self.debug, self.exit.clone());
        *self
            .pod
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pod.clone());
        TaskService::new(pod)
    }
}

/// How the shim library must run this shim. It reads these before
/// [`containerd_shim::Shim::new`] is called, so they are passed to `run`.
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config {
        // The shim waits for its children itself (the VMM processes); the
        // library's SIGCHLD reaper would steal their exit statuses, and as
        // a subreaper the shim would inherit processes it never started.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The pod a bundle's container belongs to.
fn grouping(bundle: &Path, id: &str) -> String {
    match spec::read_bundle_spec(bundle) {
        Ok(s) => spec::sandbox_id(&s, id),
        Err(_) => id.to_owned(),
    }
}

/// Removes a shim socket (`unix://PATH` or a path) if it is a socket.
fn remove_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if path.as_os_str().is_empty() {
        return;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("removing the shim socket {}: {e}", path.display());
        }
    }
}

fn socket_answers(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Kills a VMM that outlived its shim (PR_SET_PDEATHSIG makes that rare),
/// unmounts whatever is left under the sandbox directory and removes it.
fn cleanup_dead_sandbox(dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(dir.join("vmm.pid")) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // Only a process running in this sandbox: the pid may have
            // been reused since.
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
            if cwd.is_ok_and(|c| c == dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    if let Err(e) = crate::mount::at::detach_all_beneath(dir) {
        log::warn!("cleaning up {}: {}", dir.display(), crate::error_chain(&e));
    }
    if crate::mount::mount_points_under(dir).is_ok_and(|m| m.is_empty()) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("removing {}: {e}", dir.display()),
        }
    }
}
