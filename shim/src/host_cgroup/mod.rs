//! The pod's cgroup on the host: the shim and the VMM of a pod run in it,
//! so what the pod's VM uses (guest RAM the guest touched, VMM threads,
//! page cache of the files it serves, kernel memory for its page tables)
//! is charged to the pod, not to containerd. This is Kata's
//! `sandbox_cgroup_only = true`.
//!
//! - Which cgroup: the sandbox container's `linux.cgroupsPath` ([`path`]):
//!   under CRI, a cgroup below the kubelet's pod cgroup, which carries the
//!   pod's limits (and the RuntimeClass overhead), so nothing is added
//!   here. Without CRI (`ctr run`, whose default is `/<namespace>/<id>`),
//!   the cgroup gets a memory limit of the guest RAM plus
//!   [`OVERHEAD_MIB`]. A spec without a cgroupsPath gets
//!   `/palisade/<sandbox>`, limited the same way.
//! - When: the shim moves itself (all its threads) in before it spawns the
//!   VMM, which then starts there with all its threads; it moves back to
//!   where it came from and removes what it created once the VM is gone.
//! - Layouts ([`layout`]): cgroup v2 (controllers enabled down the path
//!   through `cgroup.subtree_control`, as runc does) and cgroup v1 (the
//!   cgroup made in every mounted v1 hierarchy, cpuset's CPUs and memory
//!   nodes copied down; the empty v2 hierarchy of a hybrid host is left
//!   alone: it controls nothing).
//! - A shim that dies leaves its cgroups; what it created is recorded in
//!   `/run/palisade/.cgroups/<sandbox>` (`.` keeps it apart from sandbox
//!   directories, whose names never start with one) for the shim's
//!   `delete`, which removes them.
//!
//! The systemd driver's paths are made as directories in cgroupfs, like
//! the cgroupfs driver's, not as transient units over D-Bus: systemd does
//! not know the pod's scope, so it neither applies unit properties to it
//! nor removes it. The kubelet's slices are units and stay its own.
//!
//! Why not the `cgroups-rs` crate (0.5.1, already in the tree through
//! containerd-shim): it hard-codes `/sys/fs/cgroup` and
//! `/proc/self/mountinfo`, so its logic cannot run against a test tree; it
//! creates paths with `create_dir_all`, so it cannot tell which
//! directories it made and which were the kubelet's, and removing "ours"
//! is the point; and it ignores failures to enable controllers and to copy
//! cpuset values (logging them) where a pod must fail clearly. What is
//! needed is a few files per level, so this module does it itself.

pub mod fs;
mod group;
pub mod layout;
pub mod path;

#[cfg(test)]
mod fake;

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use self::fs::{CgroupFs, Kernel};
use self::group::PodGroup;
pub use self::group::{Backoff, GroupError};
use self::layout::Layout;
pub use self::path::{CgroupPath, CgroupPathError, Driver};
use crate::service::spec::{self as oci, CONTAINER_TYPE_ANNOTATION, SANDBOX_ID_ANNOTATION};

/// What a pod started without CRI may use beyond its guest RAM: the VMM's
/// and shim's own memory, the kernel's for the VM, and page cache for the
/// files the VMM reads (kernel image, what the guest reads over virtio-fs).
/// Measured in the nested test host (cgroup v2, Debian 6.1 host kernel;
/// guest 256 MiB, 1 vCPU), from the pod cgroup's memory.stat and the
/// processes' smaps:
/// - idle pod (tests/bench/pod-start-bench, two runs): memory.current
///   27.4 and 31.9 MiB, of which anon 26.3 and 30.7 MiB (guest RAM touched
///   25.0 and 29.4 MiB, so VMM and shim heaps ~1.3 MiB charged here;
///   their RSS beyond guest RAM is 10-12 MiB,
///   most of it the binary's shared pages and what the shim allocated
///   before it moved in, charged elsewhere), kernel
///   1.0 MiB, file 0; the first pod on a host also pays ~11 MiB of page
///   cache for reading the guest kernel (memory.current 39 MiB);
/// - a guest that fills a 200 MiB tmpfs (the e2e test
///   cgroup-full-guest-within-limit): peak 240 MiB, anon 228 MiB (guest
///   RAM touched ~226 MiB), file 9 MiB, kernel 1 MiB (page tables below
///   1 MiB).
///
/// So beyond guest RAM a pod needs ~3 MiB that cannot be reclaimed and
/// ~10-15 MiB of page cache that can. 64 MiB leaves room for page cache
/// (reclaimed at the limit rather than the VMM OOM-killed) and for VMM
/// buffers under virtio-fs load, which was not measured.
pub const OVERHEAD_MIB: u64 = 64;
/// The parent of cgroups for specs without a cgroupsPath.
const DEFAULT_PARENT: &str = "palisade";
/// Beside the sandbox directories, under a name none of them can have.
const RECORD_DIR: &str = ".cgroups";
const RECORD_HEADER: &str = "# cgroup directories a palisade shim created for its pod, top-down";
const MOUNTINFO: &str = "/proc/self/mountinfo";
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error(transparent)]
    Path(#[from] CgroupPathError),
    #[error("cannot read the host's cgroup mounts ({MOUNTINFO})")]
    Mountinfo(#[source] io::Error),
    #[error("no cgroup filesystem is mounted on this host (none in {MOUNTINFO})")]
    NotMounted,
    #[error("cannot read which cgroups process {pid} is in (/proc/{pid}/cgroup)")]
    Positions {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} is in no cgroup of the {hierarchy} hierarchy: /proc/{pid}/cgroup has no line for it")]
    NoPosition { pid: u32, hierarchy: String },
    #[error("cannot put the pod's processes in cgroup {path}")]
    Setup {
        path: String,
        #[source]
        source: GroupError,
    },
    #[error("cannot record the pod's cgroups in {}", .path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the record of a dead pod's cgroups {}", .path.display())]
    ReadRecord {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Left(String),
}

/// Where a sandbox's cgroup is and what limit it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroupSpec {
    pub path: CgroupPath,
    pub memory_limit: Option<u64>,
}

impl PodCgroupSpec {
    /// From the sandbox container's host spec. `fallback_name` names the
    /// cgroup when the spec has no cgroupsPath (the sandbox directory's
    /// name: a plain id or a hash); `guest_memory_mib` is the VM's size.
    pub fn for_sandbox(
        host_spec: &Value,
        fallback_name: &str,
        guest_memory_mib: u32,
    ) -> Result<Self, CgroupPathError> {
        let raw = host_spec
            .pointer("/linux/cgroupsPath")
            .and_then(Value::as_str)
            .unwrap_or("");
        let path = if raw.is_empty() {
            CgroupPath::from_components(&[DEFAULT_PARENT, fallback_name])?
        } else {
            CgroupPath::parse(raw)?
        };
        // The kubelet's pod cgroup above carries the pod's limits.
        let kubernetes = [SANDBOX_ID_ANNOTATION, CONTAINER_TYPE_ANNOTATION]
            .iter()
            .any(|key| oci::annotation(host_spec, key).is_some());
        let memory_limit =
            (!kubernetes).then(|| (u64::from(guest_memory_mib) + OVERHEAD_MIB) * MIB);
        Ok(PodCgroupSpec { path, memory_limit })
    }
}

/// A pod's cgroup that a process (the shim) was moved into.
pub struct PodCgroup {
    group: PodGroup<Kernel>,
    record: PathBuf,
    path: CgroupPath,
}

impl PodCgroup {
    /// Moves the calling process into the pod's cgroup, made as needed;
    /// the processes it starts from now on start there. On error nothing
    /// is left: the process is where it was and nothing was created.
    pub fn enter(spec: &PodCgroupSpec, record: &Path) -> Result<Self, HostCgroupError> {
        Self::join_process(std::process::id(), spec, record)
    }

    /// [`PodCgroup::enter`] for another process.
    pub fn join_process(
        pid: u32,
        spec: &PodCgroupSpec,
        record: &Path,
    ) -> Result<Self, HostCgroupError> {
        let layout = host_layout()?;
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|source| HostCgroupError::Positions { pid, source })?;
        let group = enter_with(Kernel, &layout, &proc_cgroup, pid, spec, record)?;
        Ok(PodCgroup {
            group,
            record: record.to_owned(),
            path: spec.path.clone(),
        })
    }

    /// The pod's cgroup path, as given in the spec's form's expansion.
    pub fn path(&self) -> &CgroupPath {
        &self.path
    }

    /// The pod's cgroup directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.group.dirs()
    }

    /// Moves the process back where it came from and removes the
    /// directories made for the pod. Call it once the pod's other
    /// processes (the VMM) are gone.
    pub fn leave(mut self) -> Result<(), HostCgroupError> {
        leave_with(&mut self.group, &self.record)
    }
}

/// Moves the shim into the cgroup of the sandbox whose state directory
/// is `sandbox_dir`, as its host spec says ([`PodCgroupSpec::for_sandbox`]).
pub fn enter_for_sandbox(
    host_spec: &Value,
    sandbox_dir: &Path,
    guest_memory_mib: u32,
) -> Result<PodCgroup, HostCgroupError> {
    let name = sandbox_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sandbox");
    let spec = PodCgroupSpec::for_sandbox(host_spec, name, guest_memory_mib)?;
    let cgroup = PodCgroup::enter(&spec, &record_path(sandbox_dir))?;
    let limit = match spec.memory_limit {
        Some(bytes) => format!(
            "memory limit {} MiB (guest RAM {guest_memory_mib} MiB + overhead {OVERHEAD_MIB} MiB)",
            bytes / MIB
        ),
        None => "no limit of its own (its parents carry the pod's limits)".to_owned(),
    };
    log::info!("pod cgroup {}: shim moved in; {limit}", spec.path);
    Ok(cgroup)
}

/// Leaves the pod's cgroup (if any), logging what could not be undone.
pub fn leave_logged(cgroup: Option<PodCgroup>) {
    let Some(cgroup) = cgroup else {
        return;
    };
    let path = cgroup.path().to_string();
    match cgroup.leave() {
        Ok(()) => log::info!("pod cgroup {path}: left and removed"),
        Err(e) => log::error!("leaving pod cgroup {path}: {}", crate::error_chain(&e)),
    }
}

/// `/run/palisade/.cgroups/<name>` for the sandbox directory
/// `/run/palisade/<name>`.
pub fn record_path(sandbox_dir: &Path) -> PathBuf {
    let name = sandbox_dir.file_name().unwrap_or_default();
    sandbox_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join(RECORD_DIR)
        .join(name)
}

/// After a shim died: removes the cgroups its record lists (once its VMM
/// is gone, which the caller sees to), then the record. No record: nothing
/// to do.
pub fn remove_recorded(record: &Path) -> Result<(), HostCgroupError> {
    if !record.exists() {
        return Ok(());
    }
    remove_recorded_with(&Kernel, &host_layout()?, record)
}

fn host_layout() -> Result<Layout, HostCgroupError> {
    let mountinfo = std::fs::read_to_string(MOUNTINFO).map_err(HostCgroupError::Mountinfo)?;
    Layout::from_mountinfo(&mountinfo).ok_or(HostCgroupError::NotMounted)
}

fn enter_with<F: CgroupFs>(
    fs: F,
    layout: &Layout,
    proc_cgroup: &str,
    pid: u32,
    spec: &PodCgroupSpec,
    record: &Path,
) -> Result<PodGroup<F>, HostCgroupError> {
    let positions = layout
        .positions(proc_cgroup)
        .map_err(|hierarchy| HostCgroupError::NoPosition { pid, hierarchy })?;
    let setup = |source| HostCgroupError::Setup {
        path: spec.path.to_string(),
        source,
    };
    let mut group = PodGroup::create(
        fs,
        layout,
        &positions,
        &spec.path,
        spec.memory_limit,
        Backoff::default(),
    )
    .map_err(setup)?;
    // Recorded before anything is in the cgroup: from here on a crash
    // leaves a record for `delete`.
    let joined =
        write_record(record, &group.created()).and_then(|()| group.join(pid).map_err(setup));
    if let Err(e) = joined {
        for problem in group.leave() {
            log::warn!(
                "undoing a failed cgroup setup: {}",
                crate::error_chain(&problem)
            );
        }
        remove_record(record);
        return Err(e);
    }
    Ok(group)
}

fn leave_with<F: CgroupFs>(group: &mut PodGroup<F>, record: &Path) -> Result<(), HostCgroupError> {
    let problems = group.leave();
    let left = group.created();
    if left.is_empty() {
        remove_record(record);
    } else if let Err(e) = write_record(record, &left) {
        log::warn!("{}", crate::error_chain(&e));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = problems.iter().map(|p| crate::error_chain(p)).collect();
    Err(HostCgroupError::Left(listed.join("; ")))
}

fn remove_recorded_with<F: CgroupFs>(
    fs: &F,
    layout: &Layout,
    record: &Path,
) -> Result<(), HostCgroupError> {
    let text = std::fs::read_to_string(record).map_err(|source| HostCgroupError::ReadRecord {
        path: record.to_owned(),
        source,
    })?;
    let mut dirs = Vec::new();
    let mut refused = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let dir = PathBuf::from(line);
        if is_cgroup_below_a_root(layout, &dir) {
            dirs.push(dir);
        } else {
            refused.push(line.to_owned());
        }
    }
    let left = group::remove_recorded(fs, &dirs, Backoff::default());
    let mut problems: Vec<String> = refused
        .iter()
        .map(|l| {
            format!(
                "{l:?} in {} is not a cgroup directory: left alone",
                record.display()
            )
        })
        .collect();
    problems.extend(
        left.iter()
            .map(|(dir, e)| format!("cannot remove cgroup {}: {e}", dir.display())),
    );
    if left.is_empty() {
        remove_record(record);
    } else {
        let still: Vec<PathBuf> = left.into_iter().map(|(d, _)| d).collect();
        if let Err(e) = write_record(record, &still) {
            problems.push(crate::error_chain(&e));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HostCgroupError::Left(problems.join("; ")))
    }
}

/// A record is ours, but what it names is removed as root: only plain
/// directories strictly below a hierarchy's root.
fn is_cgroup_below_a_root(layout: &Layout, dir: &Path) -> bool {
    let plain = dir
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    plain
        && layout
            .hierarchies()
            .iter()
            .any(|h| dir.starts_with(&h.mount) && dir != h.mount)
}

/// Writes the record whole or not at all (a torn record could name a
/// parent of the pod's cgroup).
fn write_record(record: &Path, dirs: &[PathBuf]) -> Result<(), HostCgroupError> {
    let failed = |source| HostCgroupError::Record {
        path: record.to_owned(),
        source,
    };
    let mut text = format!("{RECORD_HEADER}\n");
    for dir in dirs {
        text.push_str(&dir.to_string_lossy());
        text.push('\n');
    }
    // A leading dot: no record (a sandbox directory's name) has one.
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(record.file_name().unwrap_or_default());
    partial_name.push(".partial");
    let partial = record.with_file_name(partial_name);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let written = write_whole(record, &partial, &text);
        match written {
            Ok(()) => return Ok(()),
            // Another pod's shim removed the (then empty) record
            // directory in between: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => {}
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(failed(e));
            }
        }
    }
}

fn write_whole(record: &Path, partial: &Path, text: &str) -> io::Result<()> {
    if let Some(parent) = record.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(partial, record)
}

/// Removes the record, and the record directory once it is empty
/// (another pod's record keeps it).
fn remove_record(record: &Path) {
    match std::fs::remove_file(record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("removing {}: {e}", record.display()),
    }
    if let Some(parent) = record.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests;
