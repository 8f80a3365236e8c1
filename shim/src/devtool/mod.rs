//! The developer tool that drives a guest agent by hand, as Kata's
//! agent-ctl does: `palisade sandbox run` boots a sandbox VM and keeps it
//! up, `palisade agent ...` makes the agent API's calls on it (or on an
//! agent in host test mode), with stdio attached to the terminal. Tests and
//! benchmarks use it too.
//!
//! | file | job |
//! |---|---|
//! | `scan.rs` | the option scanner both commands share |
//! | `args.rs` | the typed command lines |
//! | `values.rs` | sizes, signals, users, ids |
//! | `spec.rs` | the default OCI spec of `agent run`, the process of `exec` |
//! | `bundle.rs` | reading an OCI bundle for `agent create` |
//! | `paths.rs` | host paths in the shared directory as guest paths |
//! | `target.rs` | dialing the agent named by `--sandbox/--vsock/--unix` |
//! | `commands.rs` | the agent commands |
//! | `session.rs` | an attached process: stdio, signals, exit |
//! | `attach.rs` | copying stdio between the process and this tool |
//! | `terminal.rs` | raw mode and window size for `--tty` |
//! | `signals.rs` | signals delivered as channel messages |
//! | `report.rs` | JSON output and error wording |
//! | `sandbox_run.rs` | `palisade sandbox run` |

pub mod args;
mod attach;
mod bundle;
mod commands;
pub mod paths;
mod report;
mod sandbox_run;
pub mod scan;
mod session;
mod signals;
pub mod spec;
mod target;
mod terminal;
pub mod values;

use std::path::PathBuf;
use std::process::ExitCode;

pub use args::{AgentCommand, AgentInvocation, SandboxCommand};
pub use scan::ArgsError;

/// A command that failed (the agent refused, a connection failed, ...).
pub const EXIT_FAILED: u8 = 1;

pub const SANDBOX_USAGE: &str = "\
Usage: palisade [--config PATH] sandbox run [--id ID] [--vcpus N] [--memory-mib M]
                                           [--timeout-ms N] [--config PATH]
                                           [--volume HOST_DIR:NAME]...

Boots a sandbox VM (state directory /run/palisade/ID/, default ID dev-<pid>)
with the configuration, and prints one line of JSON once its agent answers:
  id, state_dir, vsock_socket, shared_dir (the host side of the guest's
  /run/palisade/shared), guest_shared_dir, volumes, console_log, vmm_pid,
  boot_ms
Then stays in the foreground until SIGINT, SIGTERM or SIGHUP, powers the
guest off and removes the state directory with everything in it. Drive it
meanwhile with `palisade agent --sandbox ID ...`.

  --vcpus N        1 to 32 (default: [hypervisor] vcpus)
  --memory-mib M   64 to 65536 (default: [hypervisor] memory_mib)
  --timeout-ms N   how long the boot may take (default: [agent] dial_timeout_ms)
  -v, --volume HOST_DIR:NAME
                   bind-mounts HOST_DIR at shared_dir/NAME, the guest's
                   /run/palisade/shared/NAME (repeatable). The share itself
                   is read-only to the guest, as a pod's is: a rootfs or any
                   other files for the guest go in a volume.

Exit status: 0 stopped on request, 1 failed (or the VM ended by itself),
2 bad usage, 128+N interrupted by signal N during the boot.
";

pub const AGENT_USAGE: &str = "\
Usage: palisade agent (--sandbox ID | --vsock SOCKET | --unix SOCKET)
                      [--timeout-ms N] COMMAND [ARGS]

Makes the agent API's calls by hand. --sandbox ID is a `palisade sandbox
run`; --vsock SOCKET a VMM's hybrid vsock socket; --unix SOCKET an agent in
host test mode (palisade-agent --listen unix://SOCKET). --timeout-ms sets
each call's deadline (default 60000). Rootfs paths are guest paths; a host
path inside the sandbox's shared directory is translated.

Commands:
  create ID --bundle DIR [--rootfs PATH]
          create from DIR/config.json (rootfs: --rootfs, else root.path,
          relative to DIR); the process's stdio is /dev/null; prints the pid
  start ID                           start a created container
  exec ID EXEC_ID [PROCESS OPTIONS] [--detach] -- CMD...
          run CMD in the container attached to this terminal (or with
          --detach in the background, printing its pid)
  kill ID [--exec EXEC_ID] [--all] [SIGNAL]
          signal init (or EXEC_ID, or with --all every process); SIGNAL is
          a name (TERM, SIGKILL) or number, default TERM
  wait ID [--exec EXEC_ID] [--wait-ms N]
          wait for the exit; prints pid, exit_code, signal
  rm ID [--force]                    remove (--force: also a running one)
  ps ID                              guest pids of the container, one a line
  stats ID                           cgroup v2 figures as JSON
  update ID (--memory BYTES | --pids N | --resources FILE)
          new limits (FILE: an OCI linux.resources JSON object)
  pause ID / resume ID               freeze / thaw the container
  events [--follow]                  process exits and OOM kills, JSON lines
          (--follow: keep waiting; the agent forgets what was printed)
  resize ID [--exec EXEC_ID] ROWS COLS
  run ID --rootfs PATH [PROCESS OPTIONS] [--memory BYTES] [--pids N]
         [--hostname H] [--readonly] [--detach] -- CMD...
          create with a default spec (as `runc spec`: pid, ipc, uts, mount
          and cgroup namespaces, proc/dev/devpts/shm/mqueue/sysfs/cgroup
          mounts, masked and read-only paths, runc's capabilities), attach,
          start, wait, remove; exits with the container's exit code.
          --detach: create and start only, print the pid
  version                            agent and guest versions

Process options:
  --tty, -t         a terminal (this terminal goes raw; window size follows)
  --env, -e K=V     environment (repeatable; PATH is preset)
  --cwd DIR         working directory (default /)
  --user, -u U[:G]  numeric uid and gid (default 0:0)
  --cap-add CAP     a capability beyond the default set (repeatable)

BYTES take k, M, G suffixes (binary). While an attached process runs,
SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 are passed on to it (the
third SIGINT/SIGTERM/SIGHUP sends SIGKILL).

Exit status: the process's for attached run/exec; else 0 ok, 1 failed,
2 bad usage.
";

/// `palisade sandbox ...`.
pub fn run_sandbox(command: &SandboxCommand, config: Option<PathBuf>) -> ExitCode {
    match command {
        SandboxCommand::Help => {
            print!("{SANDBOX_USAGE}");
            ExitCode::SUCCESS
        }
        SandboxCommand::Run(args) => sandbox_run::run(args, config),
    }
}

/// `palisade agent ...`.
pub fn run_agent(invocation: &AgentInvocation) -> ExitCode {
    if invocation.command == AgentCommand::Help {
        print!("{AGENT_USAGE}");
        return ExitCode::SUCCESS;
    }
    let attached = match &invocation.command {
        AgentCommand::Run(r) => !r.detach,
        AgentCommand::Exec { detach, .. } => !detach,
        _ => false,
    };
    if attached {
        // Before the connection starts threads (see signals.rs).
        if let Err(e) = signals::block(&session::SESSION_SIGNALS) {
            eprintln!("palisade agent: cannot block signals: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    let result = target::connect(&invocation.target, invocation.rpc_timeout)
        .and_then(|conn| commands::run(&conn, &invocation.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade agent: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
