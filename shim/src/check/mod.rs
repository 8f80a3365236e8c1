//! `palisade check`: can this host run palisade sandboxes? Checks the
//! configuration, /dev/kvm, the kind of KVM, the guest kernel and initrd;
//! then, if nothing blocks, boots one sandbox VM, talks to its agent, shuts
//! it down and reports how long each phase took.

mod boot_files;
mod boot_probe;
mod interrupt;
mod kvm;
mod report;

use std::process::ExitCode;
use std::time::Duration;

pub use boot_files::{check_initrd, check_kernel, inspect_kernel, KernelImage, KernelImageError};
pub use kvm::{check as check_kvm, classify, cpu_has_flag, HostPaths, KvmKind, VirtExtension};
pub use report::{BootReport, Finding};

use crate::config::{self, ConfigLocation};
use report::Reporter;

/// Exit status when the host cannot run sandboxes or the boot failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status after SIGINT (128 + 2), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub config: ConfigLocation,
    /// One JSON object on stdout instead of text.
    pub json: bool,
    /// Try to boot even on a KVM that cannot boot standard guests (PVM).
    pub force: bool,
    /// Overrides `[agent] dial_timeout_ms`: how long the guest may take to
    /// boot and answer.
    pub timeout: Option<Duration>,
}

/// Runs the check and prints its results; returns the process exit status.
pub fn run(options: &CheckOptions) -> ExitCode {
    let mut reporter = Reporter::new(options.json);
    reporter.config_path = options.config.path.display().to_string();
    reporter.say("palisade check");

    let config = match config::load(&options.config) {
        Ok(loaded) => {
            let path = loaded.location.path.display();
            reporter.add(Finding::ok(
                "config",
                if loaded.builtin_defaults {
                    format!("configuration {path} not found, using the built-in defaults")
                } else {
                    format!("configuration {path} is valid")
                },
            ));
            Some(loaded.config)
        }
        Err(e) => {
            reporter.add(Finding::fail(
                "config",
                crate::error_chain(&e),
                "fix the configuration file as the message says (the repository's configuration.toml documents every key).",
            ));
            None
        }
    };

    let (kvm_findings, kind) = kvm::check(&HostPaths::default());
    reporter.kvm_kind = Some(kind.id());
    for mut finding in kvm_findings {
        if finding.id == "kvm_kind" && options.force && kind.forceable() {
            finding.forced = true;
        }
        reporter.add(finding);
    }

    if let Some(config) = &config {
        reporter.add(check_kernel(&config.hypervisor.kernel));
        reporter.add(check_initrd(&config.hypervisor.initrd));
    }

    let config = match config {
        Some(config) if !reporter.has_blocking_failure() => config,
        _ => {
            reporter.finish_blocked();
            return ExitCode::from(EXIT_FAILED);
        }
    };

    if let Err(e) = interrupt::install() {
        // Without the handler a Ctrl-C can leave the sandbox directory.
        reporter.say(format!("  note: cannot install the Ctrl-C handler ({e})"));
    }
    let timeout = options
        .timeout
        .unwrap_or_else(|| config.agent.dial_timeout());
    reporter.say(format!(
        "booting a sandbox VM ({} vCPU, {} MiB; timeout {} ms)...",
        config.hypervisor.vcpus,
        config.hypervisor.memory_mib,
        timeout.as_millis()
    ));
    match boot_probe::run(&config, timeout, &mut reporter.boot) {
        Ok(()) => {
            reporter.finish_ok();
            ExitCode::SUCCESS
        }
        Err(e) => {
            reporter.finish_failed(&format!("{e:#}"));
            if interrupt::interrupted().is_some() {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}
