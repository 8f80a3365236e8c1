//! Container cgroups on the guest's cgroup v2 hierarchy: one directory per
//! container under `<root>/palisade/`, limits from the OCI resources,
//! statistics, freezing and killing.
//!
//! The guest is ours and the pod is the VM, so the spec's `cgroupsPath` (a
//! host path, often systemd-style) is not used.
//!
//! Everything goes through plain files under a root directory, so the unit
//! tests drive it against a fake directory, and a host-mode agent (whose
//! host may have cgroup v1) runs with cgroups off altogether.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::oci::Resources;
use thiserror::Error;

/// The agent's subtree; containers are its children.
const PARENT: &str = "palisade";
/// Controllers delegated to container cgroups when the kernel has them.
const CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids", "hugetlb"];
/// How long a freeze may take before the agent gives up waiting.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("linux.resources: {0}")]
    Resources(String),
    #[error("cgroup {0}: still not frozen after {FREEZE_TIMEOUT:?}")]
    FreezeTimeout(PathBuf),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Where container cgroups live, or nowhere.
#[derive(Debug, Clone)]
pub enum Cgroups {
    /// No cgroups: limits in specs are ignored, stats/pause/update refused.
    Disabled,
    /// A cgroup v2 hierarchy mounted at this path (normally /sys/fs/cgroup).
    V2(PathBuf),
}

impl Cgroups {
    /// Creates the container's cgroup and applies `resources`. On error
    /// nothing is left behind.
    pub fn create(
        &self,
        id: &str,
        resources: Option<&Resources>,
    ) -> Result<Option<CgroupDir>, CgroupError> {
        let Cgroups::V2(root) = self else {
            return Ok(None);
        };
        let writes = resources
            .map(resource_writes)
            .transpose()?
            .unwrap_or_default();
        let parent = root.join(PARENT);
        ensure_parent(root, &parent)?;
        let path = parent.join(id);
        fs::create_dir(&path).map_err(io_err(&path, "creating"))?;
        let dir = CgroupDir { path };
        if let Err(e) = dir.write_all(&writes) {
            let _ = dir.remove();
            return Err(e);
        }
        Ok(Some(dir))
    }
}

/// Creates `<root>/palisade` and delegates the controllers to its children.
fn ensure_parent(root: &Path, parent: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(parent, "creating")(e)),
    }
    let available = fs::read_to_string(parent.join("cgroup.controllers"))
        .or_else(|_| fs::read_to_string(root.join("cgroup.subtree_control")))
        .unwrap_or_default();
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !wanted.is_empty() {
        let file = parent.join("cgroup.subtree_control");
        fs::write(&file, wanted.join(" ")).map_err(io_err(&file, "enabling controllers"))?;
    }
    Ok(())
}

/// One container's cgroup directory.
#[derive(Debug)]
pub struct CgroupDir {
    path: PathBuf,
}

/// A file to write in a cgroup directory and its content.
pub type Write = (String, String);

impl CgroupDir {
    #[cfg(test)]
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(|source| CgroupError::Io {
            path,
            op: "writing",
            source,
        })
    }

    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.path.join(file);
        fs::read_to_string(&path).map_err(|source| CgroupError::Io {
            path,
            op: "reading",
            source,
        })
    }

    fn write_all(&self, writes: &[Write]) -> Result<(), CgroupError> {
        for (file, value) in writes {
            self.write(file, value)?;
        }
        Ok(())
    }

    /// Applies new limits (UpdateContainer).
    pub fn update(&self, resources: &Resources) -> Result<(), CgroupError> {
        self.write_all(&resource_writes(resources)?)
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Freezes or thaws every process in the cgroup and waits until the
    /// kernel reports it done.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "1" } else { "0" };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            let events = self.read("cgroup.events")?;
            if flat_keyed(&events, "frozen").as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout(self.path.clone()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills every process in the cgroup: cgroup.kill (Linux 5.14+) does it
    /// atomically, even to processes forking as it runs.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.path.join("cgroup.kill").exists() {
            return self.write("cgroup.kill", "1");
        }
        for pid in self.pids()? {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }

    /// Removes the directory. The kernel refuses while processes remain or
    /// are still being torn down, so this retries for a moment.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // Fake directories in tests hold plain files; a real cgroup
                // directory never does.
                Err(_) if cfg!(test) && fs::remove_dir_all(&self.path).is_ok() => return Ok(()),
                Err(e) => return Err(io_err(&self.path, "removing")(e)),
            }
        }
    }

    pub fn memory_events_path(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    /// The OOM kill count (memory.events `oom_kill`).
    pub fn oom_kills(&self) -> u64 {
        self.read("memory.events")
            .ok()
            .and_then(|e| flat_keyed(&e, "oom_kill"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn stats(&self) -> Stats {
        let num = |file: &str| -> u64 {
            self.read(file)
                .ok()
                .and_then(|s| parse_max(s.trim()))
                .unwrap_or(0)
        };
        let keyed = |file: &str, key: &str| -> u64 {
            self.read(file)
                .ok()
                .and_then(|s| flat_keyed(&s, key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let io = self
            .read("io.stat")
            .map(|s| parse_io_stat(&s))
            .unwrap_or_default();
        Stats {
            cpu_usage_usec: keyed("cpu.stat", "usage_usec"),
            cpu_user_usec: keyed("cpu.stat", "user_usec"),
            cpu_system_usec: keyed("cpu.stat", "system_usec"),
            cpu_nr_periods: keyed("cpu.stat", "nr_periods"),
            cpu_nr_throttled: keyed("cpu.stat", "nr_throttled"),
            cpu_throttled_usec: keyed("cpu.stat", "throttled_usec"),
            memory_current: num("memory.current"),
            memory_max: num("memory.max"),
            memory_oom: keyed("memory.events", "oom"),
            memory_oom_kill: keyed("memory.events", "oom_kill"),
            pids_current: num("pids.current"),
            pids_max: num("pids.max"),
            io,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_current: u64,
    /// 0 = no limit.
    pub memory_max: u64,
    pub memory_oom: u64,
    pub memory_oom_kill: u64,
    pub pids_current: u64,
    /// 0 = no limit.
    pub pids_max: u64,
    pub io: IoStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IoStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
}

/// A number, or "max" as 0 (no limit).
fn parse_max(s: &str) -> Option<u64> {
    if s == "max" {
        Some(0)
    } else {
        s.parse().ok()
    }
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn flat_keyed(content: &str, key: &str) -> Option<String> {
    content.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Sums io.stat (`MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..` per device).
fn parse_io_stat(content: &str) -> IoStats {
    let mut s = IoStats::default();
    for field in content.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        let Ok(v) = v.parse::<u64>() else { continue };
        match k {
            "rbytes" => s.read_bytes += v,
            "wbytes" => s.write_bytes += v,
            "rios" => s.read_ios += v,
            "wios" => s.write_ios += v,
            _ => {}
        }
    }
    s
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), the
/// conversion runc and the kernel documentation use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// v1 blkio weight (10..1000) to v2 io.weight (1..10000).
fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight).clamp(10, 1000) - 10) * 9999 / 990
}

/// The file writes that set `r` on a cgroup v2 directory, in order.
pub fn resource_writes(r: &Resources) -> Result<Vec<Write>, CgroupError> {
    let mut w: Vec<Write> = Vec::new();
    let mut push = |file: &str, value: String| w.push((file.to_string(), value));
    let limit = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    let refuse = |m: &str| Err(CgroupError::Resources(m.to_string()));

    if let Some(cpu) = &r.cpu {
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            push("cpu.weight", shares_to_weight(shares).to_string());
        }
        if cpu.quota.is_some() || cpu.period.is_some() {
            let quota = cpu
                .quota
                .filter(|q| *q > 0)
                .map_or("max".to_string(), |q| q.to_string());
            let period = cpu.period.unwrap_or(100_000);
            push("cpu.max", format!("{quota} {period}"));
        }
        if let Some(burst) = cpu.burst {
            push("cpu.max.burst", burst.to_string());
        }
        if let Some(idle) = cpu.idle {
            push("cpu.idle", idle.to_string());
        }
        if let Some(cpus) = cpu.cpus.as_deref().filter(|s| !s.is_empty()) {
            push("cpuset.cpus", cpus.to_string());
        }
        if let Some(mems) = cpu.mems.as_deref().filter(|s| !s.is_empty()) {
            push("cpuset.mems", mems.to_string());
        }
        if cpu.realtime_runtime.is_some() || cpu.realtime_period.is_some() {
            return refuse("cpu.realtimeRuntime/realtimePeriod are cgroup v1 only; remove them");
        }
    }
    if let Some(mem) = &r.memory {
        if let Some(limit_bytes) = mem.limit {
            push("memory.max", limit(limit_bytes));
            // v1's swap is memory+swap; v2's memory.swap.max is swap only.
            if let Some(swap) = mem.swap {
                let swap_only = if swap < 0 || limit_bytes < 0 {
                    "max".to_string()
                } else if swap < limit_bytes {
                    return Err(CgroupError::Resources(format!(
                        "memory.swap {swap} is below memory.limit {limit_bytes}; swap is memory+swap, so it must be at least the limit"
                    )));
                } else {
                    (swap - limit_bytes).to_string()
                };
                push("memory.swap.max", swap_only);
            }
        } else if mem.swap.is_some() {
            return refuse(
                "memory.swap without memory.limit cannot be converted to cgroup v2; set both",
            );
        }
        if let Some(res) = mem.reservation {
            push("memory.low", limit(res));
        }
        if mem.disable_oom_killer == Some(true) {
            return refuse("memory.disableOOMKiller has no cgroup v2 equivalent; remove it");
        }
        // kernel, kernelTCP and swappiness are v1 only; runc ignores them on
        // v2 too, and Kubernetes still sends swappiness.
    }
    if let Some(pids) = &r.pids {
        let max = if pids.limit > 0 {
            pids.limit.to_string()
        } else {
            "max".into()
        };
        push("pids.max", max);
    }
    if let Some(bio) = &r.block_io {
        if let Some(weight) = bio.weight.filter(|w| *w > 0) {
            push(
                "io.weight",
                format!("default {}", blkio_to_io_weight(weight)),
            );
        }
        for d in &bio.weight_device {
            if let Some(weight) = d.weight.filter(|w| *w > 0) {
                let weight = blkio_to_io_weight(weight);
                push("io.weight", format!("{}:{} {weight}", d.major, d.minor));
            }
        }
        for (list, key) in [
            (&bio.throttle_read_bps_device, "rbps"),
            (&bio.throttle_write_bps_device, "wbps"),
            (&bio.throttle_read_iops_device, "riops"),
            (&bio.throttle_write_iops_device, "wiops"),
        ] {
            for d in list {
                push(
                    "io.max",
                    format!("{}:{} {key}={}", d.major, d.minor, d.rate),
                );
            }
        }
    }
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() || !h.page_size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CgroupError::Resources(format!(
                "hugepageLimits: page size {:?} is not like 2MB or 1GB",
                h.page_size
            )));
        }
        push(&format!("hugetlb.{}.max", h.page_size), h.limit.to_string());
    }
    let mut unified: Vec<_> = r.unified.iter().collect();
    unified.sort();
    for (key, value) in unified {
        // A name like "memory.high": one file, directly in the directory.
        let valid = key.contains('.')
            && !key.starts_with("cgroup.")
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
        if !valid {
            return Err(CgroupError::Resources(format!(
                "unified key {key:?} is not a cgroup v2 interface file (like memory.high)"
            )));
        }
        push(key, value.clone());
    }
    if r.rdma.is_some() {
        return refuse("rdma limits are not supported in the guest yet; remove them");
    }
    if r.devices.as_deref().is_some_and(|d| !d.is_empty()) {
        // v2 device control is an eBPF program; the guest only has the
        // virtio devices the VMM gives it.
        log::debug!("linux.resources.devices: not enforced in the guest yet");
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> Resources {
        serde_json::from_str(json).unwrap()
    }

    struct Fake(PathBuf);
    impl Fake {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("palisade-cg-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.subtree_control"), "cpu io memory pids").unwrap();
            Fake(d)
        }
    }
    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn converts_common_limits() {
        let w = resource_writes(&resources(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},
                "memory":{"limit":268435456,"swap":536870912,"reservation":1048576},
                "pids":{"limit":100},
                "blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]},
                "unified":{"memory.high":"200000000"}}"#,
        ))
        .unwrap();
        let get = |f: &str| {
            w.iter()
                .filter(|(k, _)| k == f)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("cpu.weight"), ["39"]);
        assert_eq!(get("cpu.max"), ["50000 100000"]);
        assert_eq!(get("cpuset.cpus"), ["0-1"]);
        assert_eq!(get("memory.max"), ["268435456"]);
        assert_eq!(get("memory.swap.max"), ["268435456"]);
        assert_eq!(get("memory.low"), ["1048576"]);
        assert_eq!(get("pids.max"), ["100"]);
        assert_eq!(get("io.weight"), ["default 4950"]);
        assert_eq!(get("io.max"), ["8:0 rbps=1048576"]);
        assert_eq!(get("memory.high"), ["200000000"]);
    }

    #[test]
    fn unlimited_values_become_max() {
        let w = resource_writes(&resources(
            r#"{"memory":{"limit":-1},"pids":{"limit":0},"cpu":{"quota":-1}}"#,
        ))
        .unwrap();
        assert!(w.contains(&("memory.max".into(), "max".into())));
        assert!(w.contains(&("pids.max".into(), "max".into())));
        assert!(w.contains(&("cpu.max".into(), "max 100000".into())));
    }

    #[test]
    fn refuses_what_v2_cannot_express() {
        let e = |j: &str| resource_writes(&resources(j)).unwrap_err().to_string();
        assert!(e(r#"{"memory":{"limit":100,"swap":50}}"#).contains("below memory.limit"));
        assert!(e(r#"{"memory":{"swap":50}}"#).contains("without memory.limit"));
        assert!(
            e(r#"{"unified":{"../../cgroup.procs":"1"}}"#).contains("not a cgroup v2 interface")
        );
        assert!(e(r#"{"unified":{"cgroup.procs":"1"}}"#).contains("not a cgroup v2 interface"));
        assert!(e(r#"{"cpu":{"realtimeRuntime":1}}"#).contains("v1 only"));
    }

    #[test]
    fn shares_conversion_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn creates_applies_and_removes_on_a_fake_hierarchy() {
        let fake = Fake::new("create");
        let cg = Cgroups::V2(fake.0.clone());
        let dir = cg
            .create(
                "c1",
                Some(&resources(
                    r#"{"memory":{"limit":1000},"pids":{"limit":5}}"#,
                )),
            )
            .unwrap()
            .unwrap();
        assert_eq!(dir.path(), fake.0.join("palisade/c1"));
        assert_eq!(
            fs::read_to_string(fake.0.join("palisade/c1/memory.max")).unwrap(),
            "1000"
        );
        assert_eq!(
            fs::read_to_string(fake.0.join("palisade/c1/pids.max")).unwrap(),
            "5"
        );
        assert_eq!(
            fs::read_to_string(fake.0.join("palisade/cgroup.subtree_control")).unwrap(),
            "+cpu +io +memory +pids"
        );
        dir.add(42).unwrap();
        assert_eq!(dir.pids().unwrap(), [42]);
        dir.remove().unwrap();
        assert!(!fake.0.join("palisade/c1").exists());
    }

    #[test]
    fn a_bad_limit_leaves_no_directory() {
        let fake = Fake::new("bad");
        let cg = Cgroups::V2(fake.0.clone());
        assert!(cg
            .create("c1", Some(&resources(r#"{"memory":{"swap":5}}"#)))
            .is_err());
        assert!(!fake.0.join("palisade/c1").exists());
    }

    #[test]
    fn disabled_creates_nothing() {
        assert!(Cgroups::Disabled.create("c1", None).unwrap().is_none());
    }

    #[test]
    fn reads_stats() {
        let fake = Fake::new("stats");
        let d = CgroupDir::at(fake.0.clone());
        fs::write(d.path().join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 20\n").unwrap();
        fs::write(d.path().join("memory.current"), "4096\n").unwrap();
        fs::write(d.path().join("memory.max"), "max\n").unwrap();
        fs::write(
            d.path().join("memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(d.path().join("pids.current"), "3\n").unwrap();
        fs::write(d.path().join("pids.max"), "100\n").unwrap();
        fs::write(d.path().join("io.stat"), "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=3 wios=4\n").unwrap();
        let s = d.stats();
        assert_eq!(s.cpu_usage_usec, 1500);
        assert_eq!(s.cpu_user_usec, 1000);
        assert_eq!(s.cpu_throttled_usec, 20);
        assert_eq!(s.memory_current, 4096);
        assert_eq!(s.memory_max, 0);
        assert_eq!((s.memory_oom, s.memory_oom_kill), (1, 1));
        assert_eq!((s.pids_current, s.pids_max), (3, 100));
        assert_eq!(
            s.io,
            IoStats {
                read_bytes: 101,
                write_bytes: 202,
                read_ios: 4,
                write_ios: 6
            }
        );
        assert_eq!(d.oom_kills(), 1);
    }

    #[test]
    fn freeze_waits_for_the_kernel() {
        let fake = Fake::new("freeze");
        let d = CgroupDir::at(fake.0.clone());
        fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        d.freeze(true).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "1"
        );
        fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        d.freeze(false).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0"
        );
    }

    #[test]
    fn kill_all_prefers_cgroup_kill() {
        let fake = Fake::new("kill");
        let d = CgroupDir::at(fake.0.clone());
        fs::write(d.path().join("cgroup.kill"), "").unwrap();
        d.kill_all().unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("cgroup.kill")).unwrap(),
            "1"
        );
    }
}
