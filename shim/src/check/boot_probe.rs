//! Boots one sandbox VM the way the shim will, talks to its agent, shuts it
//! down, and times every phase.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use palisade_vmm::{VmExit, BOOT_SIGNAL_AGENT_READY, BOOT_SIGNAL_AGENT_STARTED};

use super::interrupt;
use super::report::BootReport;
use crate::agent_client::{self, AgentClient, DialOptions};
use crate::config::Config;
use crate::sandbox::diagnostics::{console_tail, stuck_hint};
use crate::sandbox_dir::{SandboxDir, SANDBOX_ROOT};
use crate::share::Share;
use crate::smaps;
use crate::vmm_process::{Progress, VmmProcess};

/// Shutdown covers a filesystem sync and a reset; slow machines get the
/// boot timeout instead if that is longer.
const MIN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// SIGTERM to SIGKILL when the VMM has to be stopped.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Boots a VM for `config`, filling `report` as phases complete (so a
/// failure still shows how far the boot got). Everything it creates is
/// gone when it returns, whether it succeeds or not.
pub fn run(config: &Config, timeout: Duration, report: &mut BootReport) -> anyhow::Result<()> {
    let hypervisor = &config.hypervisor;
    report.vcpus = Some(hypervisor.vcpus);
    report.memory_mib = Some(hypervisor.memory_mib);
    report.timeout_ms = Some(timeout.as_millis() as u64);

    let sandbox = create_sandbox_dir()?;
    report.sandbox_dir = Some(sandbox.path().display().to_string());
    let console_log = sandbox.console_log();

    let share = make_share(sandbox.path())?;
    let mut vmm = VmmProcess::spawn(hypervisor, sandbox.path(), &share.path())?;
    let watch = interrupt::watch_vmm(vmm.pid());
    report.vmm_pid = Some(vmm.pid());

    let outcome = boot_and_talk(&mut vmm, config, timeout, report);
    record_progress(report, &vmm.progress(), vmm.spawned_at_ns());
    let outcome = outcome.and_then(|client| shut_down(&mut vmm, client, timeout, report));

    if let Err(error) = outcome {
        if vmm.wait_exit(Duration::ZERO).ok().flatten().is_none() {
            let _ = vmm.kill(KILL_GRACE);
        }
        drop(watch);
        report.console_tail = console_tail(&console_log);
        // The sandbox directory goes when `sandbox` drops.
        return Err(match interrupt::interrupted() {
            Some(signal) => {
                anyhow!("interrupted by {signal}; stopped the VM and removed its sandbox")
            }
            None => error,
        });
    }
    drop(watch);
    drop(share);
    sandbox.remove()?;
    Ok(())
}

/// What the probe exports to its guest: an empty share like a pod's
/// (which needs root to mount), or, for an unprivileged user with access
/// to /dev/kvm, an empty directory of that user's: the VMM then runs as
/// that user, so the guest can do no more there than the user could.
enum ProbeShare {
    Pod(Share),
    UserDir(std::path::PathBuf),
}

impl ProbeShare {
    fn path(&self) -> std::path::PathBuf {
        match self {
            ProbeShare::Pod(share) => share.path().to_owned(),
            ProbeShare::UserDir(dir) => dir.clone(),
        }
    }
}

fn make_share(sandbox: &Path) -> anyhow::Result<ProbeShare> {
    let path = crate::sandbox_dir::shared_dir(sandbox);
    if nix::unistd::geteuid().is_root() {
        return Ok(ProbeShare::Pod(Share::create(&path)?));
    }
    std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(ProbeShare::UserDir(path))
}

/// `/run/palisade/check-<pid>`, or under the temporary directory where
/// /run/palisade is not writable (an unprivileged user with access to
/// /dev/kvm). A leftover directory of the same name belonged to a dead
/// process that had our pid, so it is replaced.
fn create_sandbox_dir() -> anyhow::Result<SandboxDir> {
    let name = format!("check-{}", std::process::id());
    let primary = Path::new(SANDBOX_ROOT).join(&name);
    let fallback = std::env::temp_dir().join(format!("palisade-{name}"));
    let mut last_error = None;
    for path in [primary, fallback] {
        let _ = std::fs::remove_dir_all(&path);
        match SandboxDir::create(&path) {
            Ok(dir) => return Ok(dir),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => anyhow::Error::new(e),
        None => anyhow!("no sandbox directory candidates"),
    })
}

/// Waits for the agent and asks it everything; returns the open client.
fn boot_and_talk(
    vmm: &mut VmmProcess,
    config: &Config,
    timeout: Duration,
    report: &mut BootReport,
) -> anyhow::Result<AgentClient> {
    let options = DialOptions::new(vmm.vsock_socket(), vmm.console_log(), timeout);
    let dialed = agent_client::dial(&options, || {
        if interrupt::interrupted().is_some() {
            return Err("interrupted".into());
        }
        if vmm.has_stopped() {
            return Err(Box::new(vmm.ended_error("the guest agent")));
        }
        Ok(())
    });
    let client = match dialed {
        Ok(client) => client,
        Err(e) => {
            let hint = stuck_hint(&vmm.progress());
            return Err(anyhow::Error::new(e).context(hint));
        }
    };

    report.agent_connected_ms = Some(ms_between(
        vmm.spawned_at_ns(),
        palisade_vmm::monotonic_ns(),
    ));
    report.dial_attempts = Some(client.dial_attempts());

    client.check()?;
    let answered_ns = palisade_vmm::monotonic_ns();
    report.first_answer_ms = Some(ms_between(vmm.spawned_at_ns(), answered_ns));

    let version = client.version()?;
    report.agent_api_version = Some(version.api_version);

    let details = client.guest_details()?;
    report.kernel_release = Some(details.kernel_release);
    report.agent_version = Some(details.agent_version);
    report.guest_memory_total_kib = Some(details.memory_total_bytes / 1024);
    report.guest_cpus = Some(details.online_cpus);
    let guest_ms = |ns: Option<u64>| ns.map(|ns| ns as f64 / 1e6);
    report.guest_agent_start_ms = guest_ms(details.timeline.agent_start_ns);
    report.guest_init_done_ms = guest_ms(details.timeline.init_done_ns);
    report.guest_ready_ms = guest_ms(details.timeline.ready_ns);

    // Measured before Shutdown, while the guest is up and idle.
    let memory = smaps::read(vmm.pid(), config.hypervisor.memory_mib)
        .with_context(|| format!("cannot read /proc/{}/smaps of the VMM process", vmm.pid()))?;
    report.vmm_rss_kib = Some(memory.vmm_rss_kib);
    report.guest_memory_touched_kib = memory.guest_memory_touched_kib;
    report.vmm_rss_excluding_guest_kib = memory.vmm_rss_excluding_guest_kib;
    Ok(client)
}

/// Asks the agent to power off and waits for the VMM to report the reset.
fn shut_down(
    vmm: &mut VmmProcess,
    client: AgentClient,
    timeout: Duration,
    report: &mut BootReport,
) -> anyhow::Result<()> {
    let asked = Instant::now();
    // The guest may reset before its reply leaves; the VMM's exit decides.
    let rpc = client.shutdown();
    let wait = timeout.max(MIN_SHUTDOWN_TIMEOUT);
    let ended = vmm.wait_exit(wait)?;
    drop(client);
    let rpc_note = match &rpc {
        Ok(()) => String::new(),
        Err(e) => format!(
            " (the Shutdown call itself failed: {})",
            crate::error_chain(e)
        ),
    };
    match ended {
        Some(t) if t.exit == Some(VmExit::GuestReset) && t.status.success() => {
            report.shutdown_ms = Some(asked.elapsed().as_secs_f64() * 1e3);
            Ok(())
        }
        Some(t) => bail!(
            "after Shutdown the VMM process ended with {} instead of a guest reset{rpc_note}{}",
            vmm.describe_end(&t),
            stderr_suffix(&vmm.stderr_last_line()),
        ),
        None => {
            let _ = vmm.kill(KILL_GRACE);
            bail!(
                "the guest did not power off within {} ms of Shutdown{rpc_note}; the VMM process was killed",
                wait.as_millis()
            )
        }
    }
}

fn stderr_suffix(line: &str) -> String {
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}

fn record_progress(report: &mut BootReport, progress: &Progress, zero_ns: u64) {
    let since = |ns: Option<u64>| ns.map(|ns| ms_between(zero_ns, ns));
    report.vmm_started_ms = since(progress.started_ns);
    report.guest_entered_ms = since(progress.guest_entered_ns);
    report.agent_started_ms = since(progress.boot_signal(BOOT_SIGNAL_AGENT_STARTED));
    report.agent_ready_ms = since(progress.boot_signal(BOOT_SIGNAL_AGENT_READY));
}

/// Milliseconds from `from_ns` to `to_ns`, negative if the clocks disagree
/// (they should not: both are this host's CLOCK_MONOTONIC).
fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm_process::BootSignalAt;

    #[test]
    fn records_phases_relative_to_spawn() {
        let progress = Progress {
            started_ns: Some(1_500_000),
            guest_entered_ns: Some(3_000_000),
            boot_signals: vec![
                BootSignalAt {
                    value: 1,
                    mono_ns: 10_000_000,
                },
                BootSignalAt {
                    value: 2,
                    mono_ns: 12_000_000,
                },
            ],
            ..Progress::default()
        };
        let mut report = BootReport::default();
        record_progress(&mut report, &progress, 1_000_000);
        assert_eq!(report.vmm_started_ms, Some(0.5));
        assert_eq!(report.guest_entered_ms, Some(2.0));
        assert_eq!(report.agent_started_ms, Some(9.0));
        assert_eq!(report.agent_ready_ms, Some(11.0));
    }
}
