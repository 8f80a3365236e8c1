//! From an OCI runtime spec to the plan the container's init process
//! carries out. Everything that can be checked without touching the system
//! is checked here, before anything is created, so a bad spec is refused
//! with nothing to clean up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::mounts::{self, MountPlan};
use super::oci::{Capabilities, Device, Linux, Mount, Namespace, NamespaceType, Process, Spec};
use super::paths::{check_container_path, PathError};
use super::seccomp::{self, SeccompError};

/// Where a container's PATH lookup falls back to if its env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("{what} is not valid JSON for it: {error}")]
    Json { what: &'static str, error: String },
    #[error("the spec has no `root`; an OCI spec for Linux must have one")]
    NoRoot,
    #[error("the spec has no `process`; say what the container runs")]
    NoProcess,
    #[error("the spec has no `linux` section; a Linux container needs one (with namespaces)")]
    NoLinux,
    #[error("rootfs {path:?}: {problem}")]
    Rootfs { path: PathBuf, problem: String },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("linux.namespaces: {0}")]
    Namespace(String),
    #[error("mounts[{index}] ({destination:?}): {problem}")]
    Mount {
        index: usize,
        destination: PathBuf,
        problem: String,
    },
    #[error("linux.devices[{index}] ({path:?}): {problem}")]
    Device {
        index: usize,
        path: PathBuf,
        problem: String,
    },
    #[error("process: {0}")]
    Process(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Parses JSON into `T`, naming the field that failed (e.g.
/// `linux.namespaces[2].type: unknown variant "foo"`).
pub fn parse_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let error = if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        };
        SpecError::Json { what, error }
    })
}

/// Namespaces the init process creates or joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// CLONE_NEW* flags for clone(2): the namespaces created fresh, except
    /// cgroup (see `unshare_cgroup`).
    pub clone_flags: i32,
    /// Unshared by the init process once the agent has put it into its
    /// cgroup, so the container's cgroup namespace is rooted there.
    pub unshare_cgroup: bool,
    /// Existing namespaces to enter, by /proc/.../ns name and path, in
    /// order. Entered by the init process itself.
    pub join: Vec<(String, PathBuf)>,
    /// An existing pid namespace: entered by the agent's spawning thread
    /// before clone, since setns(CLONE_NEWPID) only affects children.
    pub join_pid: Option<PathBuf>,
}

impl NamespacePlan {
    pub fn has_new(&self, flag: i32) -> bool {
        self.clone_flags & flag != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// Absolute path inside the container.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: u32,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsPlan {
    pub path: PathBuf,
    pub readonly: bool,
    /// Propagation for the container's `/` (default rslave, as runc), as
    /// mount(2) flags.
    pub propagation: libc::c_ulong,
    pub mounts: Vec<MountPlan>,
    /// Create the standard /dev nodes and links: /dev is a fresh tmpfs.
    pub default_devices: bool,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsPlan {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub terminal: bool,
    /// None: keep the capabilities the init process has (all of root's).
    pub capabilities: Option<CapsPlan>,
    /// (RLIMIT_*, soft, hard)
    pub rlimits: Vec<(i32, u64, u64)>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
}

/// Everything the container's init process (or an exec process) needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// None for an exec process, which enters an existing container.
    pub rootfs: Option<RootfsPlan>,
    pub namespaces: NamespacePlan,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub process: ProcessPlan,
    pub seccomp: Option<seccomp::Program>,
}

/// Builds the plan for a new container from its spec and the rootfs path
/// the shim gave.
pub fn plan_container(spec: &Spec, rootfs: &Path) -> Result<InitConfig, SpecError> {
    let root = spec.root.as_ref().ok_or(SpecError::NoRoot)?;
    check_rootfs(rootfs)?;
    let process = spec.process.as_ref().ok_or(SpecError::NoProcess)?;
    let linux = spec.linux.as_ref().ok_or(SpecError::NoLinux)?;
    if spec.hooks.is_some() {
        return Err(SpecError::Unsupported(
            "hooks are not supported: they would run inside the guest; remove them from the spec"
                .into(),
        ));
    }
    refuse_unimplemented(linux)?;

    let namespaces = plan_namespaces(&linux.namespaces)?;
    if !namespaces.has_new(libc::CLONE_NEWNS) {
        return Err(SpecError::Namespace(
            "a new mount namespace is required (add {\"type\": \"mount\"}): the agent does not run containers in its own or another container's mount namespace".into(),
        ));
    }
    let uts = namespaces.has_new(libc::CLONE_NEWUTS);
    if (spec.hostname.is_some() || spec.domainname.is_some()) && !uts {
        return Err(SpecError::Namespace(
            "hostname/domainname are set but the container has no UTS namespace of its own; add {\"type\": \"uts\"}".into(),
        ));
    }

    let mounts = spec
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| plan_mount(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let default_devices = mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev") && !m.bind);
    let devices = linux
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| plan_device(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    let propagation = match linux.rootfs_propagation.as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(name) => mounts::rootfs_propagation(name).ok_or_else(|| {
            SpecError::Unsupported(format!(
                "linux.rootfsPropagation {name:?}: want private, rprivate, slave, rslave, shared, rshared, unbindable or runbindable"
            ))
        })?,
    };
    let masked_paths = container_paths("linux.maskedPaths", &linux.masked_paths)?;
    let readonly_paths = container_paths("linux.readonlyPaths", &linux.readonly_paths)?;

    let mut sysctl: Vec<(String, String)> = linux
        .sysctl
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    sysctl.sort();
    for (key, _) in &sysctl {
        check_sysctl_key(key)?;
    }

    let seccomp = linux.seccomp.as_ref().map(seccomp::compile).transpose()?;

    Ok(InitConfig {
        rootfs: Some(RootfsPlan {
            path: rootfs.to_path_buf(),
            readonly: root.readonly.unwrap_or(false),
            propagation: propagation.bits(),
            mounts,
            default_devices,
            devices,
            masked_paths,
            readonly_paths,
        }),
        namespaces,
        hostname: spec.hostname.clone(),
        domainname: spec.domainname.clone(),
        sysctl,
        process: plan_process(process)?,
        seccomp,
    })
}

/// Spec features the agent knows of but does not implement: refused by
/// name, rather than silently not done.
fn refuse_unimplemented(linux: &Linux) -> Result<(), SpecError> {
    let present = [
        (
            linux.uid_mappings.is_some() || linux.gid_mappings.is_some(),
            "linux.uidMappings/gidMappings (user namespaces)",
        ),
        (linux.intel_rdt.is_some(), "linux.intelRdt"),
        (linux.personality.is_some(), "linux.personality"),
        (linux.time_offsets.is_some(), "linux.timeOffsets"),
        (linux.memory_policy.is_some(), "linux.memoryPolicy"),
        (linux.net_devices.is_some(), "linux.netDevices"),
    ];
    match present.iter().find(|(p, _)| *p) {
        Some((_, what)) => Err(SpecError::Unsupported(format!(
            "{what} is not supported in the guest yet; remove it from the spec"
        ))),
        None => Ok(()),
    }
}

fn check_rootfs(rootfs: &Path) -> Result<(), SpecError> {
    let problem = |p: &str| SpecError::Rootfs {
        path: rootfs.to_path_buf(),
        problem: p.to_string(),
    };
    if rootfs.as_os_str().is_empty() {
        return Err(problem(
            "no rootfs given; the shim must pass the guest path of the container's root filesystem",
        ));
    }
    if !rootfs.is_absolute() {
        return Err(problem("not an absolute guest path"));
    }
    match std::fs::metadata(rootfs) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(problem("not a directory")),
        Err(e) => Err(problem(&format!(
            "{e} (is the shared directory mounted and the rootfs placed there?)"
        ))),
    }
}

fn container_paths(what: &str, paths: &[String]) -> Result<Vec<PathBuf>, SpecError> {
    paths
        .iter()
        .map(|p| {
            let p = PathBuf::from(p);
            check_container_path(what, &p)?;
            Ok(p)
        })
        .collect()
}

fn check_sysctl_key(key: &str) -> Result<(), SpecError> {
    let ok = !key.is_empty()
        && key
            .split(['.', '/'])
            .all(|part| !part.is_empty() && part != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::Unsupported(format!(
            "linux.sysctl: {key:?} is not a sysctl name (like net.ipv4.ip_forward)"
        )))
    }
}

/// Namespace types the agent knows, with their clone flag and /proc name.
fn namespace_flag(typ: NamespaceType) -> Result<(i32, &'static str), SpecError> {
    Ok(match typ {
        NamespaceType::Mount => (libc::CLONE_NEWNS, "mnt"),
        NamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
        NamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
        NamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
        NamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
        NamespaceType::Network => (libc::CLONE_NEWNET, "net"),
        NamespaceType::User => {
            return Err(SpecError::Namespace(
                "user namespaces are not supported yet; remove {\"type\": \"user\"}".into(),
            ))
        }
        NamespaceType::Time => {
            return Err(SpecError::Namespace(
                "time namespaces are not supported yet; remove {\"type\": \"time\"}".into(),
            ))
        }
    })
}

/// Order to enter existing namespaces in: ipc, uts, net before mnt (so
/// their paths still resolve in the agent's mount namespace), cgroup last.
const JOIN_ORDER: &[&str] = &["ipc", "uts", "net", "mnt", "cgroup"];

pub fn plan_namespaces(list: &[Namespace]) -> Result<NamespacePlan, SpecError> {
    let mut plan = NamespacePlan::default();
    let mut seen = HashSet::new();
    for ns in list {
        let (flag, name) = namespace_flag(ns.typ)?;
        if !seen.insert(flag) {
            return Err(SpecError::Namespace(format!("{name} is listed twice")));
        }
        match &ns.path {
            None => {
                if flag == libc::CLONE_NEWCGROUP {
                    plan.unshare_cgroup = true;
                } else {
                    plan.clone_flags |= flag;
                }
            }
            Some(path) => {
                check_container_path(&format!("linux.namespaces {name} path"), path)?;
                if flag == libc::CLONE_NEWNS {
                    return Err(SpecError::Namespace(
                        "joining an existing mount namespace is not supported; a container gets its own".into(),
                    ));
                }
                if !path.exists() {
                    return Err(SpecError::Namespace(format!(
                        "{name} namespace path {path:?} does not exist"
                    )));
                }
                if flag == libc::CLONE_NEWPID {
                    plan.join_pid = Some(path.clone());
                } else {
                    plan.join.push((name.to_string(), path.clone()));
                }
            }
        }
    }
    plan.join
        .sort_by_key(|(name, _)| JOIN_ORDER.iter().position(|n| n == name));
    Ok(plan)
}

fn plan_mount(index: usize, m: &Mount) -> Result<MountPlan, SpecError> {
    let destination = m.destination.clone();
    let problem = |p: String| SpecError::Mount {
        index,
        destination: destination.clone(),
        problem: p,
    };
    check_container_path("mount destination", &destination).map_err(|e| problem(e.to_string()))?;
    if m.uid_mappings.is_some() || m.gid_mappings.is_some() {
        return Err(problem(
            "idmapped mounts (uidMappings/gidMappings) are not supported".into(),
        ));
    }
    let parsed = mounts::parse_options(&m.options).map_err(|e| problem(e.to_string()))?;
    let bind = m.typ.as_deref() == Some("bind") || parsed.flags.contains(MsFlags::MS_BIND);
    if bind {
        let source = m
            .source
            .as_deref()
            .ok_or_else(|| problem("a bind mount needs a source".into()))?;
        if !source.is_absolute() {
            return Err(problem(format!(
                "bind source {source:?} is relative; there is no bundle directory in the guest, give an absolute guest path"
            )));
        }
        if let Err(e) = std::fs::symlink_metadata(source) {
            return Err(problem(format!("bind source {source:?}: {e}")));
        }
    } else if m.typ.as_deref().unwrap_or("").is_empty() {
        return Err(problem(
            "no type; say which filesystem (tmpfs, proc, ...) or \"bind\"".into(),
        ));
    }
    let flags = if bind {
        parsed.flags | MsFlags::MS_BIND
    } else {
        parsed.flags
    };
    Ok(MountPlan {
        destination: destination.clone(),
        source: m.source.clone(),
        fstype: m.typ.clone().filter(|t| t != "bind"),
        flags: flags.bits(),
        propagation: parsed.propagation.iter().map(|p| p.bits()).collect(),
        data: parsed.data.join(","),
        bind,
    })
}

fn plan_device(index: usize, d: &Device) -> Result<DevicePlan, SpecError> {
    let path = d.path.clone();
    let problem = |p: String| SpecError::Device {
        index,
        path: path.clone(),
        problem: p,
    };
    check_container_path("device path", &path).map_err(|e| problem(e.to_string()))?;
    if !path.starts_with("/dev") {
        return Err(problem("device nodes go under /dev".into()));
    }
    let kind = match d.typ.as_str() {
        "c" | "u" => libc::S_IFCHR,
        "b" => libc::S_IFBLK,
        "p" => libc::S_IFIFO,
        other => return Err(problem(format!("type {other:?}: want c, u, b or p"))),
    };
    let number = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| problem(format!("{what} number {n} is negative")))
    };
    Ok(DevicePlan {
        path: path.clone(),
        kind,
        major: number(d.major, "major")?,
        minor: number(d.minor, "minor")?,
        mode: d.file_mode.unwrap_or(0o666) & 0o7777,
        uid: d.uid,
        gid: d.gid,
    })
}

fn rlimit_resource(name: &str) -> Option<i32> {
    Some(
        (match name {
            "RLIMIT_CPU" => libc::RLIMIT_CPU,
            "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
            "RLIMIT_DATA" => libc::RLIMIT_DATA,
            "RLIMIT_STACK" => libc::RLIMIT_STACK,
            "RLIMIT_CORE" => libc::RLIMIT_CORE,
            "RLIMIT_RSS" => libc::RLIMIT_RSS,
            "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
            "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
            "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
            "RLIMIT_AS" => libc::RLIMIT_AS,
            "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
            "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
            "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
            "RLIMIT_NICE" => libc::RLIMIT_NICE,
            "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
            "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
            _ => return None,
        }) as i32,
    )
}

/// The kernel's "no change" id: setuid(-1) would silently keep root.
const INVALID_ID: u32 = u32::MAX;

/// "CAP_SYS_ADMIN" from "CAP_SYS_ADMIN", "cap_sys_admin" or "SYS_ADMIN"
/// (Kubernetes writes the short form), if this agent knows it.
fn cap_name(set: &str, name: &str) -> Result<String, SpecError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    match full.parse::<caps::Capability>() {
        Ok(_) => Ok(full),
        Err(_) => Err(SpecError::Process(format!(
            "capabilities.{set}: {name:?} is not a capability this agent knows"
        ))),
    }
}

fn cap_names(set: &str, names: &[String]) -> Result<Vec<String>, SpecError> {
    let mut out = names
        .iter()
        .map(|n| cap_name(set, n))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn plan_caps(caps: &Capabilities) -> Result<CapsPlan, SpecError> {
    let plan = CapsPlan {
        bounding: cap_names("bounding", &caps.bounding)?,
        effective: cap_names("effective", &caps.effective)?,
        inheritable: cap_names("inheritable", &caps.inheritable)?,
        permitted: cap_names("permitted", &caps.permitted)?,
        ambient: cap_names("ambient", &caps.ambient)?,
    };
    // The kernel refuses these combinations at capset time; saying so now
    // names the capability.
    for (what, set) in [("effective", &plan.effective), ("ambient", &plan.ambient)] {
        if let Some(c) = set.iter().find(|c| !plan.permitted.contains(c)) {
            return Err(SpecError::Process(format!(
                "capabilities: {c} is {what} but not permitted; add it to permitted"
            )));
        }
    }
    if let Some(c) = plan.ambient.iter().find(|c| !plan.inheritable.contains(c)) {
        return Err(SpecError::Process(format!(
            "capabilities: {c} is ambient but not inheritable; add it to inheritable"
        )));
    }
    Ok(plan)
}

/// Checks and converts an OCI process (a container's or an exec's).
pub fn plan_process(p: &Process) -> Result<ProcessPlan, SpecError> {
    let err = |m: String| SpecError::Process(m);
    if p.args.first().is_none_or(|a| a.is_empty()) {
        return Err(err("args is empty; name the program to run".into()));
    }
    if p.command_line.is_some() {
        return Err(err("commandLine is for Windows; use args".into()));
    }
    for (what, present) in [
        ("ioPriority", p.io_priority.is_some()),
        ("scheduler", p.scheduler.is_some()),
        ("execCPUAffinity", p.exec_cpu_affinity.is_some()),
    ] {
        if present {
            return Err(err(format!(
                "{what} is not supported in the guest yet; remove it"
            )));
        }
    }
    for (i, e) in p.env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(err(format!("env[{i}] {e:?} is not NAME=value")));
        }
    }
    for s in p.args.iter().chain(&p.env) {
        if s.contains('\0') {
            return Err(err(format!("{s:?} contains a NUL byte")));
        }
    }
    check_container_path("process.cwd", &p.cwd)?;
    let user = &p.user;
    if user.username.is_some() {
        return Err(err("user.username is for Windows; give uid and gid".into()));
    }
    if user.uid == INVALID_ID || user.gid == INVALID_ID {
        return Err(err(format!(
            "user uid {} / gid {}: 4294967295 is (uid_t)-1, which the kernel reads as \"leave unchanged\"; give a real id",
            user.uid, user.gid
        )));
    }
    if user.additional_gids.contains(&INVALID_ID) {
        return Err(err(
            "user.additionalGids contains 4294967295, which is not a group".into(),
        ));
    }
    if let Some(mask) = user.umask {
        if mask > 0o777 {
            return Err(err(format!("user.umask {mask:#o} has bits beyond 0777")));
        }
    }
    let mut rlimits = Vec::new();
    let mut seen = HashSet::new();
    for r in &p.rlimits {
        let resource = rlimit_resource(&r.typ)
            .ok_or_else(|| err(format!("rlimits: {:?} is not an RLIMIT_* name", r.typ)))?;
        if !seen.insert(resource) {
            return Err(err(format!("rlimits: {} is listed twice", r.typ)));
        }
        if r.soft > r.hard {
            return Err(err(format!(
                "rlimits: {} soft limit {} is above its hard limit {}",
                r.typ, r.soft, r.hard
            )));
        }
        rlimits.push((resource, r.soft, r.hard));
    }
    if let Some(adj) = p.oom_score_adj {
        if !(-1000..=1000).contains(&adj) {
            return Err(err(format!("oomScoreAdj {adj} is outside -1000..1000")));
        }
    }
    if p.apparmor_profile.is_some() || p.selinux_label.is_some() {
        // The guest kernel has no LSM policy to load; the VM is the
        // boundary. Refusing would break every spec from an AppArmor host.
        log::debug!("ignoring apparmorProfile/selinuxLabel: no LSM in the guest");
    }
    Ok(ProcessPlan {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids.clone(),
        umask: user.umask,
        terminal: p.terminal.unwrap_or(false),
        capabilities: p.capabilities.as_ref().map(plan_caps).transpose()?,
        rlimits,
        no_new_privileges: p.no_new_privileges.unwrap_or(false),
        oom_score_adj: p.oom_score_adj,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A minimal valid spec, as `runc spec` would write it, trimmed.
    pub fn spec_json(rootfs_readonly: bool) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": "rootfs", "readonly": rootfs_readonly},
            "process": {
                "args": ["sh", "-c", "echo hi"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_CHOWN"],
                    "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL", "CAP_CHOWN"],
                    "inheritable": [],
                    "ambient": []
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
                "noNewPrivileges": true
            },
            "hostname": "c1",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts",
                 "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                               {"type": "ipc"}, {"type": "network"}, {"type": "cgroup"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "sysctl": {"net.ipv4.ip_forward": "0"}
            }
        })
    }

    fn plan(json: serde_json::Value) -> Result<InitConfig, SpecError> {
        let spec: Spec = parse_json("spec", json.to_string().as_bytes())?;
        plan_container(&spec, Path::new("/"))
    }

    fn error(json: serde_json::Value) -> String {
        plan(json).unwrap_err().to_string()
    }

    #[test]
    fn plans_a_valid_spec() {
        let c = plan(spec_json(true)).unwrap();
        let r = c.rootfs.as_ref().unwrap();
        assert!(r.readonly);
        assert!(r.default_devices);
        assert_eq!(r.mounts.len(), 3);
        assert!(r.mounts[2].bind);
        assert_eq!(r.mounts[1].data, "mode=755,size=65536k");
        let ns = &c.namespaces;
        for flag in [
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWNET,
        ] {
            assert!(ns.has_new(flag));
        }
        assert!(!ns.has_new(libc::CLONE_NEWCGROUP) && ns.unshare_cgroup);
        assert_eq!(c.process.args[0], "sh");
        assert!(c.process.no_new_privileges);
        let caps = c.process.capabilities.as_ref().unwrap();
        assert_eq!(caps.bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(
            c.process.rlimits,
            [(libc::RLIMIT_NOFILE as i32, 1024, 1024)]
        );
        assert_eq!(c.hostname.as_deref(), Some("c1"));
        // It crosses to the init process as JSON.
        let back: InitConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn missing_root_process_or_linux() {
        let mut s = spec_json(false);
        s.as_object_mut().unwrap().remove("root");
        assert!(error(s).contains("no `root`"));
        let mut s = spec_json(false);
        s.as_object_mut().unwrap().remove("process");
        assert!(error(s).contains("no `process`"));
        let mut s = spec_json(false);
        s.as_object_mut().unwrap().remove("linux");
        assert!(error(s).contains("no `linux`"));
    }

    #[test]
    fn rootfs_must_be_an_absolute_existing_dir() {
        let spec: Spec = parse_json("spec", spec_json(false).to_string().as_bytes()).unwrap();
        let e = |p: &str| plan_container(&spec, Path::new(p)).unwrap_err().to_string();
        assert!(e("rootfs").contains("not an absolute"), "{}", e("rootfs"));
        assert!(e("/nonexistent-rootfs").contains("No such file"));
        assert!(e("/proc/self/exe").contains("not a directory"));
        assert!(e("").contains("no rootfs"));
    }

    #[test]
    fn unknown_namespace_type_names_the_field() {
        let mut s = spec_json(false);
        s["linux"]["namespaces"][2]["type"] = "bogus".into();
        let e = error(s);
        assert!(e.contains("linux.namespaces[2].type"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn namespace_rules() {
        let mut s = spec_json(false);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        assert!(error(s).contains("new mount namespace is required"));
        let mut s = spec_json(false);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "user"}]);
        assert!(error(s).contains("user namespaces are not supported"));
        let mut s = spec_json(false);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "mount"}]);
        assert!(error(s).contains("listed twice"));
        let mut s = spec_json(false);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/proc/self/ns/net"}, {"type": "ipc", "path": "/proc/self/ns/ipc"}]);
        let p = plan(s).unwrap();
        let names: Vec<_> = p.namespaces.join.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ipc", "net"]);
        let mut s = spec_json(false);
        s["linux"]["namespaces"] =
            serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/nonexistent/ns"}]);
        assert!(error(s).contains("does not exist"));
        // No UTS namespace, but a hostname.
        let mut s = spec_json(false);
        s["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        assert!(error(s).contains("no UTS namespace"));
    }

    #[test]
    fn bad_mounts_are_named() {
        let mut s = spec_json(false);
        s["mounts"][0]["destination"] = "proc".into();
        let e = error(s);
        assert!(
            e.starts_with("mounts[0] (\"proc\")") && e.contains("not absolute"),
            "{e}"
        );
        let mut s = spec_json(false);
        s["mounts"][1]["destination"] = "/dev/../../etc".into();
        assert!(error(s).contains("\"..\""));
        let mut s = spec_json(false);
        s["mounts"][2]["source"] = "hosts".into();
        assert!(error(s).contains("relative"));
        let mut s = spec_json(false);
        s["mounts"][2]["source"] = "/nonexistent/hosts".into();
        assert!(error(s).contains("No such file"));
        let mut s = spec_json(false);
        s["mounts"][0].as_object_mut().unwrap().remove("type");
        assert!(error(s).contains("no type"));
        let mut s = spec_json(false);
        s["mounts"][1]["options"] = serde_json::json!(["idmap"]);
        assert!(error(s).contains("idmapped"));
    }

    #[test]
    fn bad_users_and_processes() {
        let mut s = spec_json(false);
        s["process"]["user"]["uid"] = 4294967295u32.into();
        assert!(error(s).contains("(uid_t)-1"));
        let mut s = spec_json(false);
        s["process"]["user"]["uid"] = (-1).into();
        let e = error(s);
        assert!(e.contains("process.user.uid"), "{e}");
        let mut s = spec_json(false);
        s["process"]["args"] = serde_json::json!([]);
        assert!(error(s).contains("args is empty"));
        let mut s = spec_json(false);
        s["process"]["cwd"] = "work".into();
        assert!(error(s).contains("process.cwd"));
        let mut s = spec_json(false);
        s["process"]["env"] = serde_json::json!(["JUSTNAME"]);
        assert!(error(s).contains("not NAME=value"));
        let mut s = spec_json(false);
        s["process"]["capabilities"]["effective"] = serde_json::json!(["CAP_SYS_ADMIN"]);
        assert!(error(s).contains("not permitted"));
        let mut s = spec_json(false);
        s["process"]["capabilities"]["effective"] = serde_json::json!(["CAP_NOT_A_THING"]);
        assert!(error(s).contains("capabilities.effective: \"CAP_NOT_A_THING\""));
        let mut s = spec_json(false);
        s["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert!(error(s).contains("above its hard limit"));
        let mut s = spec_json(false);
        s["process"]["oomScoreAdj"] = 5000.into();
        assert!(error(s).contains("oomScoreAdj"));
    }

    #[test]
    fn bad_seccomp_profile_is_refused() {
        let mut s = spec_json(false);
        s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"});
        assert!(error(s).contains("SCMP_ACT_NOTIFY"));
        let mut s = spec_json(false);
        s["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_SOMETIMES"});
        assert!(error(s).contains("linux.seccomp.defaultAction"));
    }

    #[test]
    fn bad_sysctl_and_devices() {
        let mut s = spec_json(false);
        s["linux"]["sysctl"] = serde_json::json!({"../../etc/passwd": "x"});
        assert!(error(s).contains("not a sysctl name"));
        let mut s = spec_json(false);
        s["linux"]["devices"] =
            serde_json::json!([{"path": "/etc/fuse", "type": "c", "major": 10, "minor": 229}]);
        assert!(error(s).contains("under /dev"));
        let mut s = spec_json(false);
        s["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
        let p = plan(s).unwrap();
        assert_eq!(p.rootfs.unwrap().devices[0].kind, libc::S_IFCHR);
    }
}
