//! The OCI runtime spec `palisade agent run` generates, and the OCI
//! `process` object `exec` sends: the defaults of `runc spec` (its
//! capabilities, mounts, masked and read-only paths, RLIMIT_NOFILE and
//! no_new_privileges), adjusted for a container inside a pod VM:
//! - no network namespace: the containers of a pod share the guest's
//!   network, as they share a pod's network on a host;
//! - a cgroup namespace, so the container sees its own cgroup as the root;
//! - no ambient capabilities: `runc spec` lists them without listing them
//!   as inheritable, which the kernel (and the agent) refuse;
//! - a writable root unless `--readonly`, as `docker run` has it.

use serde_json::{json, Value};

use super::args::{Limits, ProcessArgs, RunArgs};

/// `runc spec`'s capability set.
pub const DEFAULT_CAPABILITIES: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The environment: PATH (and TERM for a terminal) unless given, then the
/// user's entries, a later entry replacing an earlier one of the same name.
fn environment(p: &ProcessArgs) -> Vec<String> {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_owned()];
    if p.tty {
        env.push("TERM=xterm".to_owned());
    }
    for entry in &p.env {
        let name = entry.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(name));
        env.push(entry.clone());
    }
    env
}

fn capabilities(cap_add: &[String]) -> Value {
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for c in cap_add {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    json!({
        "bounding": caps,
        "effective": caps,
        "permitted": caps,
        "inheritable": [],
        "ambient": [],
    })
}

/// The OCI `process` object for `run` and `exec`.
pub fn process(p: &ProcessArgs) -> Value {
    let (uid, gid) = p.user.unwrap_or((0, 0));
    json!({
        "terminal": p.tty,
        "user": {"uid": uid, "gid": gid},
        "args": p.args,
        "env": environment(p),
        "cwd": p.cwd.as_deref().unwrap_or("/"),
        "capabilities": capabilities(&p.cap_add),
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
    })
}

/// `linux.resources` for the limits given; None if there are none.
pub fn resources(limits: &Limits) -> Option<Value> {
    if limits.is_empty() {
        return None;
    }
    let mut r = serde_json::Map::new();
    if let Some(bytes) = limits.memory_bytes {
        // Swap equal to the limit: no swap on top (the guest has none
        // anyway), so the limit is what the container can use.
        r.insert("memory".into(), json!({"limit": bytes, "swap": bytes}));
    }
    if let Some(n) = limits.pids {
        r.insert("pids".into(), json!({"limit": n}));
    }
    Some(Value::Object(r))
}

fn mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ])
}

/// The whole spec for `agent run`.
pub fn run_spec(run: &RunArgs) -> Value {
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "cgroup"},
        ],
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
    });
    if let Some(r) = resources(&run.limits) {
        linux["resources"] = r;
    }
    json!({
        "ociVersion": "1.1.0",
        "process": process(&run.process),
        // The agent takes the rootfs from CreateContainer; `path` is for
        // readers of the spec.
        "root": {"path": run.rootfs, "readonly": run.readonly},
        "hostname": run.hostname.as_deref().unwrap_or(&run.id),
        "mounts": mounts(),
        "linux": linux,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args() -> RunArgs {
        RunArgs {
            id: "c1".into(),
            rootfs: "/run/palisade/shared/bb".into(),
            process: ProcessArgs {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                ..Default::default()
            },
            limits: Limits::default(),
            hostname: None,
            readonly: false,
            detach: false,
        }
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect()
    }

    #[test]
    fn default_spec_is_runc_like() {
        let s = run_spec(&run_args());
        assert_eq!(s["root"]["path"], "/run/palisade/shared/bb");
        assert_eq!(s["root"]["readonly"], false);
        assert_eq!(s["hostname"], "c1");
        let p = &s["process"];
        assert_eq!(strings(&p["args"]), ["sh", "-c", "echo hi"]);
        assert_eq!(strings(&p["env"]), [DEFAULT_PATH]);
        assert_eq!(p["cwd"], "/");
        assert_eq!(p["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(p["terminal"], false);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            strings(&p["capabilities"]["bounding"]),
            DEFAULT_CAPABILITIES
        );
        assert_eq!(
            strings(&p["capabilities"]["effective"]),
            DEFAULT_CAPABILITIES
        );
        assert!(p["capabilities"]["ambient"].as_array().unwrap().is_empty());
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup"]);
        let dests: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert!(strings(&s["linux"]["maskedPaths"]).contains(&"/proc/kcore"));
        assert!(strings(&s["linux"]["readonlyPaths"]).contains(&"/proc/sys"));
        assert!(s["linux"].get("resources").is_none());
    }

    #[test]
    fn options_reach_the_spec() {
        let mut r = run_args();
        r.process.tty = true;
        r.process.env = vec!["PATH=/bin".into(), "A=1".into(), "A=2".into()];
        r.process.cwd = Some("/tmp".into());
        r.process.user = Some((1000, 100));
        r.process.cap_add = vec!["CAP_MKNOD".into(), "CAP_KILL".into()];
        r.limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(16),
        };
        r.hostname = Some("box".into());
        r.readonly = true;
        let s = run_spec(&r);
        let p = &s["process"];
        assert_eq!(p["terminal"], true);
        assert_eq!(strings(&p["env"]), ["TERM=xterm", "PATH=/bin", "A=2"]);
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(
            strings(&p["capabilities"]["permitted"]),
            [
                "CAP_AUDIT_WRITE",
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_MKNOD"
            ]
        );
        assert_eq!(
            s["linux"]["resources"],
            json!({"memory": {"limit": 64 << 20, "swap": 64 << 20}, "pids": {"limit": 16}})
        );
        assert_eq!(s["hostname"], "box");
        assert_eq!(s["root"]["readonly"], true);
    }

    #[test]
    fn resources_only_for_limits_given() {
        assert_eq!(resources(&Limits::default()), None);
        assert_eq!(
            resources(&Limits {
                memory_bytes: None,
                pids: Some(3)
            }),
            Some(json!({"pids": {"limit": 3}}))
        );
    }
}
