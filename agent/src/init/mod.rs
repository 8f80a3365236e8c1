//! PID 1 duties that must be done before the agent can serve: base mounts,
//! cgroups, hostname, runtime directories. Only called when the agent is
//! the guest's init.

mod cgroups;
mod mounts;

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use log::{debug, info, warn};
use thiserror::Error;

use crate::logger;
use crate::options::{self, CmdlineOptions};
use mounts::{MountError, MountSpec, Outcome};

const HOSTNAME: &str = "palisade";
/// The kernel hands init no PATH at all.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The agent's own state; the shared directory from the host lands below it.
pub const RUN_DIR: &str = "/run/palisade";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("reading /proc/cmdline: {0}")]
    Cmdline(io::Error),
    #[error("creating {RUN_DIR}: {0}")]
    RunDir(io::Error),
}

/// Sets PATH. Call before any thread exists: the environment is not
/// thread-safe.
pub fn set_path() {
    std::env::set_var("PATH", PATH);
}

/// Runs the init duties in order and returns the kernel command line
/// options found on the way.
pub fn run() -> Result<CmdlineOptions, InitError> {
    mount(&mounts::PROC)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(InitError::Cmdline)?;
    let opts = options::parse_cmdline(&cmdline);
    if let Some(level) = opts.log_level {
        logger::set_level(level);
    }
    for w in &opts.warnings {
        warn!("kernel command line: {w}");
    }

    mount(&mounts::SYS)?;
    mount(&mounts::DEV)?;
    if let Err(e) = logger::attach_console() {
        // Logging still goes wherever fd 2 points, possibly nowhere.
        warn!("attaching /dev/console: {e}");
    }
    for spec in mounts::AFTER_DEV {
        mount(spec)?;
    }

    enable_cgroup_controllers();

    if let Err(e) = nix::unistd::sethostname(HOSTNAME) {
        warn!("setting hostname {HOSTNAME:?}: {e}");
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(RUN_DIR)
        .map_err(InitError::RunDir)?;
    mount(&mounts::SHARED)?;
    match mounts::set_fuse_readahead(mounts::SHARED.target, mounts::SHARED_READAHEAD_KB) {
        Ok(true) => debug!(
            "{}: readahead {} KiB",
            mounts::SHARED.target,
            mounts::SHARED_READAHEAD_KB
        ),
        Ok(false) => {}
        // Slower sequential reads, nothing worse.
        Err(e) => warn!("{}: setting readahead: {e}", mounts::SHARED.target),
    }
    Ok(opts)
}

/// Mounts `spec`; an optional mount that fails is only reported.
fn mount(spec: &MountSpec) -> Result<(), InitError> {
    match mounts::mount_fs(spec) {
        Ok(Outcome::Mounted) => debug!("mounted {} on {}", spec.fstype, spec.target),
        Ok(Outcome::AlreadyMounted) => debug!("{} already mounted, skipped", spec.target),
        Err(e) if !spec.required => warn!("{e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn enable_cgroup_controllers() {
    let report = match cgroups::enable_all(Path::new(CGROUP_ROOT)) {
        Ok(r) => r,
        Err(e) => {
            warn!("cgroup2: no controllers at {CGROUP_ROOT}: {e}");
            return;
        }
    };
    info!("cgroup2 controllers: {}", report.enabled.join(" "));
    for (c, e) in &report.failed {
        warn!("cgroup2: enabling {c}: {e}");
    }
    if !report.missing.is_empty() {
        warn!(
            "cgroup2: controllers not available: {}",
            report.missing.join(" ")
        );
    }
}
