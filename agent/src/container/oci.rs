//! The parts of the OCI runtime spec (config.json, v1.x) the agent reads.
//!
//! Own types rather than the oci-spec crate: its `Process` deserializer
//! validates `execCPUAffinity` with the regex crate, which alone added about
//! a megabyte to a binary every boot unpacks. Own types also let the agent
//! name the fields it knows but does not implement (and refuse them)
//! instead of dropping them silently; fields it has never heard of are
//! ignored, as the spec asks of runtimes.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub root: Option<Root>,
    pub process: Option<Process>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub linux: Option<Linux>,
    /// Refused: hooks would run in the guest, where the host paths they
    /// name do not exist.
    pub hooks: Option<IgnoredAny>,
}

/// `path` is not read: CreateContainer names the rootfs as a guest path.
#[derive(Debug, Default, Deserialize)]
pub struct Root {
    pub readonly: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub terminal: Option<bool>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    pub command_line: Option<IgnoredAny>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: PathBuf,
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: Option<bool>,
    pub apparmor_profile: Option<String>,
    pub oom_score_adj: Option<i32>,
    pub selinux_label: Option<String>,
    // Known, not implemented yet: refused if present.
    pub io_priority: Option<IgnoredAny>,
    pub scheduler: Option<IgnoredAny>,
    #[serde(rename = "execCPUAffinity")]
    pub exec_cpu_affinity: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    pub username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub typ: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    #[serde(default)]
    pub destination: PathBuf,
    #[serde(rename = "type")]
    pub typ: Option<String>,
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub options: Vec<String>,
    pub uid_mappings: Option<IgnoredAny>,
    pub gid_mappings: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub uid_mappings: Option<IgnoredAny>,
    pub gid_mappings: Option<IgnoredAny>,
    #[serde(default)]
    pub sysctl: HashMap<String, String>,
    /// (`cgroupsPath` is not read: it is a host path, and the guest uses
    /// its own layout, see cgroups.rs.)
    pub resources: Option<Resources>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub devices: Vec<Device>,
    pub seccomp: Option<Seccomp>,
    pub rootfs_propagation: Option<String>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    // Known, not implemented: refused if present.
    pub intel_rdt: Option<IgnoredAny>,
    pub personality: Option<IgnoredAny>,
    pub time_offsets: Option<IgnoredAny>,
    pub memory_policy: Option<IgnoredAny>,
    pub net_devices: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceType {
    Pid,
    Network,
    Mount,
    Ipc,
    Uts,
    User,
    Cgroup,
    Time,
}

#[derive(Debug, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub typ: NamespaceType,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    #[serde(rename = "type")]
    pub typ: String,
    pub path: PathBuf,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    pub file_mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Device cgroup rules (not enforced in the guest yet; see cgroups.rs).
    pub devices: Option<Vec<IgnoredAny>>,
    pub memory: Option<Memory>,
    pub cpu: Option<Cpu>,
    pub pids: Option<Pids>,
    #[serde(rename = "blockIO")]
    pub block_io: Option<BlockIo>,
    #[serde(default)]
    pub hugepage_limits: Vec<HugepageLimit>,
    /// (`network` is not read: cgroup v1 only, runc ignores it on v2 too.)
    pub rdma: Option<IgnoredAny>,
    #[serde(default)]
    pub unified: HashMap<String, String>,
}

/// (`kernel`, `kernelTCP`, `swappiness`, `useHierarchy` are not read: cgroup
/// v1 only; runc ignores them on v2, and Kubernetes still sends some.)
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    pub limit: Option<i64>,
    pub reservation: Option<i64>,
    pub swap: Option<i64>,
    #[serde(rename = "disableOOMKiller")]
    pub disable_oom_killer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    pub shares: Option<u64>,
    pub quota: Option<i64>,
    pub burst: Option<u64>,
    pub period: Option<u64>,
    pub realtime_runtime: Option<i64>,
    pub realtime_period: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    pub idle: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pids {
    #[serde(default)]
    pub limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIo {
    pub weight: Option<u16>,
    #[serde(default)]
    pub weight_device: Vec<WeightDevice>,
    #[serde(default)]
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    #[serde(default)]
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleReadIOPSDevice")]
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    #[serde(default, rename = "throttleWriteIOPSDevice")]
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
}

#[derive(Debug, Deserialize)]
pub struct WeightDevice {
    pub major: i64,
    pub minor: i64,
    pub weight: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct ThrottleDevice {
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SeccompAction {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SeccompOp {
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: SeccompAction,
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    pub listener_path: Option<PathBuf>,
    #[serde(default)]
    pub syscalls: Vec<Syscall>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscall {
    pub names: Vec<String>,
    pub action: SeccompAction,
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SeccompArg>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    pub index: usize,
    pub value: u64,
    pub value_two: Option<u64>,
    pub op: SeccompOp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_runc_style_spec_and_ignores_unknown_fields() {
        let s: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.2.0","root":{"path":"rootfs","readonly":true},
                "process":{"terminal":true,"user":{"uid":1,"gid":2,"additionalGids":[3]},"args":["sh"],
                           "env":["A=b"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"]},
                           "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true},
                "mounts":[{"destination":"/proc","type":"proc","source":"proc"}],
                "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}],
                         "resources":{"memory":{"limit":1024},"blockIO":{"weight":10}},
                         "cgroupsPath":"/a/b","someFutureField":{"x":1}},
                "annotations":{"k":"v"}}"#,
        )
        .unwrap();
        let p = s.process.unwrap();
        assert_eq!(p.user.additional_gids, [3]);
        assert_eq!(p.capabilities.unwrap().bounding, ["CAP_KILL"]);
        let l = s.linux.unwrap();
        assert_eq!(l.namespaces[1].typ, NamespaceType::Network);
        assert_eq!(l.resources.unwrap().block_io.unwrap().weight, Some(10));
        assert!(s.hooks.is_none());
    }
}
