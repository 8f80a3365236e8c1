//! `palisade sandbox run`: boots one sandbox VM the way the shim does
//! (state directory `/run/palisade/<id>/`, VMM process, shared directory),
//! prints where everything is as one JSON line once the agent answers, and
//! stays in the foreground until SIGINT, SIGTERM or SIGHUP, or until the VM
//! ends by itself; then it powers the guest off and removes everything.
//! `palisade agent --sandbox <id> ...` drives it meanwhile.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use nix::sys::signal::Signal;
use serde_json::json;

use nix::mount::MsFlags;

use super::args::{SandboxRun, ShareVolume};
use super::signals;
use super::target::sandbox_dir;
use crate::check::{check_initrd, check_kernel, check_kvm, HostPaths};
use crate::config::{self, Config, ConfigLocation};
use crate::mount::MountSource;
use crate::sandbox::{diagnostics, Sandbox, SandboxError, GUEST_SHARED_DIR};
use crate::sandbox_dir;
use crate::share::EntryKind;

/// How often an interrupted boot looks for the VMM's pid to stop it.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);
/// The VMM's pid, written by `Sandbox::start` right after spawning it.
const VMM_PID_FILE: &str = "vmm.pid";

enum Happened {
    Signal(Signal),
    Booted(Box<Result<Sandbox, SandboxError>>, Duration),
    VmmEnded(String),
}

/// Runs the command; returns the exit status (0 after a clean stop on
/// request, 1 on any failure, 130 if interrupted during boot).
pub fn run(args: &SandboxRun, global_config: Option<PathBuf>) -> ExitCode {
    match run_inner(args, global_config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade sandbox run: {e:#}");
            ExitCode::from(super::EXIT_FAILED)
        }
    }
}

fn load_config(args: &SandboxRun, global: Option<PathBuf>) -> anyhow::Result<Config> {
    let location = ConfigLocation::from_cli_or_env(args.config.clone().or(global));
    let mut config = config::load(&location)
        .map_err(|e| anyhow!(crate::error_chain(&e)))?
        .config;
    if let Some(n) = args.vcpus {
        config.hypervisor.vcpus = n;
    }
    if let Some(m) = args.memory_mib {
        config.hypervisor.memory_mib = m;
    }
    if let Some(t) = args.timeout {
        config.agent.dial_timeout_ms = t.as_millis() as u64;
    }
    Ok(config)
}

/// The checks `palisade check` makes before booting, refusing at once what
/// cannot work (a PVM /dev/kvm would only time out).
fn preflight(config: &Config) -> anyhow::Result<()> {
    let (mut findings, _) = check_kvm(&HostPaths::default());
    findings.push(check_kernel(&config.hypervisor.kernel));
    findings.push(check_initrd(&config.hypervisor.initrd));
    match findings.into_iter().find(|f| !f.ok) {
        Some(f) => Err(anyhow!(
            "{}{}",
            f.message,
            f.fix.map(|fix| format!("; {fix}")).unwrap_or_default()
        )),
        None => Ok(()),
    }
}

fn run_inner(args: &SandboxRun, global_config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Before any thread exists (see signals.rs).
    let set =
        signals::block(&signals::STOP_SIGNALS).map_err(|e| anyhow!("cannot block signals: {e}"))?;
    let config = load_config(args, global_config)?;
    preflight(&config)?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("dev-{}", std::process::id()));
    let dir = sandbox_dir(&id);

    let (tx, rx) = mpsc::channel();
    signals::forward(set, tx.clone(), Happened::Signal)
        .map_err(|e| anyhow!("cannot start the signal thread: {e}"))?;
    let boot = {
        let (tx, id, dir, config) = (tx.clone(), id.clone(), dir.clone(), config.clone());
        std::thread::Builder::new()
            .name("boot".into())
            .spawn(move || {
                let start = Instant::now();
                let vmm_tx = tx.clone();
                let on_exit = Box::new(move |how: String| {
                    let _ = vmm_tx.send(Happened::VmmEnded(how));
                });
                let result = Sandbox::start(&id, &dir, &config, on_exit);
                let _ = tx.send(Happened::Booted(Box::new(result), start.elapsed()));
            })
    }
    .map_err(|e| anyhow!("cannot start the boot thread: {e}"))?;
    drop(tx);

    let booted = wait_for_boot(&rx, &dir);
    let _ = boot.join();
    let (sandbox, boot_time) = match booted {
        Boot::Done(sandbox, t) => (sandbox, t),
        Boot::Failed(e) => return Err(anyhow!(crate::error_chain(&e))),
        Boot::Interrupted(signal) => {
            eprintln!("palisade sandbox run: interrupted by {signal} during boot; the VM is stopped and its directory removed");
            return Ok(ExitCode::from(128 + signal as u8));
        }
    };

    if let Err(e) = share_volumes(&sandbox, &args.volumes) {
        let _ = sandbox.stop();
        return Err(e);
    }
    let volumes: serde_json::Map<String, serde_json::Value> = args
        .volumes
        .iter()
        .map(|v| (v.name.clone(), json!(v.host)))
        .collect();
    let line = json!({
        "id": id,
        "state_dir": sandbox.dir(),
        "vsock_socket": sandbox_dir::vsock_socket(sandbox.dir()),
        "shared_dir": sandbox.shared_dir(),
        "guest_shared_dir": GUEST_SHARED_DIR,
        "volumes": volumes,
        "console_log": sandbox.console_log(),
        "vmm_pid": sandbox.vmm_pid(),
        "boot_ms": (boot_time.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    });
    {
        let mut out = std::io::stdout().lock();
        // A reader that went away must not keep the VM from stopping.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    let ended_by_itself = loop {
        match rx.recv() {
            Ok(Happened::Signal(s)) => {
                eprintln!("palisade sandbox run: {s}: stopping sandbox {id}");
                break None;
            }
            Ok(Happened::VmmEnded(how)) => break Some(how),
            Ok(Happened::Booted(..)) => {}
            // Every sender is gone: nothing more can happen; stop.
            Err(_) => break None,
        }
    };
    // Read before stop() removes the directory: the console is the only
    // record of why a guest died.
    let console = ended_by_itself
        .as_ref()
        .and_then(|_| diagnostics::console_tail(&sandbox.console_log()));
    let stopped = sandbox.stop();
    match (ended_by_itself, stopped) {
        (Some(how), stopped) => {
            let cleanup = match stopped {
                Ok(()) => "its directory is removed".to_owned(),
                Err(e) => format!("and cleaning up failed: {}", crate::error_chain(&e)),
            };
            let console = console
                .map(|tail| format!("\nthe guest console's last lines:\n{tail}"))
                .unwrap_or_default();
            Err(anyhow!("sandbox {id}: {how}; {cleanup}{console}"))
        }
        (None, Ok(())) => Ok(ExitCode::SUCCESS),
        (None, Err(e)) => Err(anyhow!("stopping sandbox {id}: {}", crate::error_chain(&e))),
    }
}

/// Bind-mounts each `--volume` into the share, as the shim does with a
/// container's volumes (nosuid, nodev: the guest's root writes there).
fn share_volumes(sandbox: &Sandbox, volumes: &[ShareVolume]) -> anyhow::Result<()> {
    for v in volumes {
        let name = std::path::Path::new(&v.name);
        let bind = MountSource {
            typ: "bind".into(),
            source: v.host.display().to_string(),
            options: vec!["rbind".into()],
        };
        sandbox
            .share()
            .make(name, EntryKind::Dir)
            .and_then(|()| {
                sandbox
                    .share()
                    .mount(name, &bind, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
            })
            .map_err(|e| {
                anyhow!(
                    "--volume {}:{}: {}",
                    v.host.display(),
                    v.name,
                    crate::error_chain(&e)
                )
            })?;
    }
    Ok(())
}

enum Boot {
    Done(Box<Sandbox>, Duration),
    Failed(SandboxError),
    Interrupted(Signal),
}

/// Waits for the boot thread. A signal meanwhile kills the VMM (found by
/// its pid file, which may not be written yet), which makes the boot fail
/// at once and clean up after itself.
fn wait_for_boot(rx: &Receiver<Happened>, dir: &std::path::Path) -> Boot {
    let mut interrupted: Option<Signal> = None;
    let mut killed = false;
    loop {
        let next = if interrupted.is_some() && !killed {
            rx.recv_timeout(INTERRUPT_POLL)
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(Happened::Booted(result, t)) => {
                return match (*result, interrupted) {
                    (Ok(sandbox), None) => Boot::Done(Box::new(sandbox), t),
                    (Ok(sandbox), Some(s)) => {
                        // Up just as the signal came: it still goes.
                        let _ = sandbox.stop();
                        Boot::Interrupted(s)
                    }
                    (Err(_), Some(s)) => Boot::Interrupted(s),
                    (Err(e), None) => Boot::Failed(e),
                };
            }
            Ok(Happened::Signal(s)) => {
                interrupted.get_or_insert(s);
            }
            Ok(Happened::VmmEnded(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Boot::Failed(SandboxError::Thread(std::io::Error::other(
                    "the boot thread ended without a result",
                )))
            }
        }
        if interrupted.is_some() && !killed {
            killed = kill_vmm(dir);
        }
    }
}

fn kill_vmm(dir: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(VMM_PID_FILE)) else {
        return false;
    };
    match text.trim().parse::<i32>() {
        // Our own child, which its supervisor has not reaped (it reaps
        // only in the waits the boot is in, and this runs before that boot
        // returns), so the pid cannot have been reused.
        Ok(pid) if pid > 0 => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            true
        }
        _ => false,
    }
}
