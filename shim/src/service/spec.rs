//! The OCI runtime spec containerd wrote for the host, rewritten for the
//! guest: paths point into the shared directory, host-only parts (hooks,
//! LSM labels, host devices, the network namespace path) are removed. The
//! spec is handled as JSON values so fields this shim does not know pass
//! through to the agent unchanged.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The annotation CRI puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// `sandbox` for the pod's own (pause) container, `container` otherwise.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// Pod-level resources CRI (containerd 1.7+) puts on the sandbox container.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read the OCI spec {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the OCI spec {} is not valid JSON: {error}", .path.display())]
    Json { path: PathBuf, error: String },
    #[error("the OCI spec is not a JSON object")]
    NotAnObject,
    #[error("the OCI spec has no root.path: say where the container's root filesystem is")]
    NoRoot,
    #[error("{field} is {value:?}, which is not {expected}")]
    BadField {
        field: String,
        value: String,
        expected: &'static str,
    },
}

/// A bind mount of a host path the guest must see: the shim bind-mounts
/// `host_source` into the shared directory and the spec names the guest
/// side of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedVolume {
    pub host_source: PathBuf,
    /// Relative to the container's directory in the shared directory.
    pub shared_name: String,
    /// Options of the spec's mount (ro, rbind, ...), applied on the host
    /// side as well, so a read-only volume is read-only on both sides.
    pub options: Vec<String>,
}

/// What the host side must do for the guest spec to be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpec {
    pub json: Vec<u8>,
    /// The root path the host spec named, relative to the bundle or
    /// absolute (used when containerd passed no rootfs mounts).
    pub host_root: PathBuf,
    pub volumes: Vec<SharedVolume>,
    /// What was dropped, for the shim log.
    pub dropped: Vec<String>,
}

/// Reads `<bundle>/config.json`.
pub fn read_bundle_spec(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Value = serde_json::from_slice(&bytes).map_err(|e| SpecError::Json {
        path,
        error: e.to_string(),
    })?;
    if !spec.is_object() {
        return Err(SpecError::NotAnObject);
    }
    Ok(spec)
}

/// An annotation's value, if the spec has it as a string.
pub fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// The pod a container belongs to: CRI's sandbox id, else its own id.
pub fn sandbox_id(spec: &Value, container_id: &str) -> String {
    match annotation(spec, SANDBOX_ID_ANNOTATION) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => container_id.to_owned(),
    }
}

/// Namespace types whose host paths mean nothing in the guest. The pod's
/// network is the guest's own network namespace (the VM is the pod), so
/// containers join it by not asking for one.
const DROPPED_NAMESPACE_PATHS: &[&str] = &["network", "mount", "user", "cgroup", "time"];

/// Rewrites `spec` for container `id`, whose root filesystem the guest sees
/// at `guest_rootfs` and whose other shared files live under
/// `guest_container_dir`.
pub fn rewrite_for_guest(
    mut spec: Value,
    guest_rootfs: &str,
    guest_container_dir: &str,
) -> Result<GuestSpec, SpecError> {
    let obj = spec.as_object_mut().ok_or(SpecError::NotAnObject)?;
    let mut dropped = Vec::new();

    let root = obj
        .get_mut("root")
        .and_then(Value::as_object_mut)
        .ok_or(SpecError::NoRoot)?;
    let host_root = root
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .ok_or(SpecError::NoRoot)?;
    root.insert("path".into(), Value::String(guest_rootfs.to_owned()));

    if obj.remove("hooks").is_some() {
        dropped.push("hooks (they would run in the guest, not on the host)".to_owned());
    }
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        for key in ["apparmorProfile", "selinuxLabel"] {
            if process.remove(key).is_some() {
                dropped.push(format!("process.{key} (the guest has no LSM)"));
            }
        }
    }

    let volumes = rewrite_mounts(obj, guest_container_dir, &mut dropped)?;

    if let Some(linux) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        rewrite_linux(linux, &mut dropped);
    }

    let json = serde_json::to_vec(&spec).map_err(|e| SpecError::Json {
        path: PathBuf::from("(rewritten spec)"),
        error: e.to_string(),
    })?;
    Ok(GuestSpec {
        json,
        host_root,
        volumes,
        dropped,
    })
}

fn rewrite_linux(linux: &mut Map<String, Value>, dropped: &mut Vec<String>) {
    if linux.remove("mountLabel").is_some() {
        dropped.push("linux.mountLabel (the guest has no SELinux)".to_owned());
    }
    // Host device numbers mean nothing in the guest; the agent makes the
    // standard /dev nodes itself.
    if let Some(devices) = linux.get_mut("devices").and_then(Value::as_array_mut) {
        if !devices.is_empty() {
            dropped.push(format!("linux.devices ({} host devices)", devices.len()));
            devices.clear();
        }
    }
    // A host cgroup path means nothing in the guest, where the agent makes
    // the container cgroups; on the host it is the pod's (host_cgroup).
    linux.remove("cgroupsPath");
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        namespaces.retain_mut(|ns| {
            let Some(ns) = ns.as_object_mut() else {
                return true;
            };
            let typ = ns.get("type").and_then(Value::as_str).unwrap_or("");
            let has_path = ns
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty());
            if typ == "network" {
                if has_path {
                    dropped.push(
                        "the network namespace path (the pod's network is the VM's)".to_owned(),
                    );
                }
                // Every container of the pod shares the guest's network.
                return false;
            }
            if has_path && DROPPED_NAMESPACE_PATHS.contains(&typ) {
                dropped.push(format!("the {typ} namespace path (a host path)"));
                ns.remove("path");
            }
            true
        });
    }
}

/// Bind mounts of host files become bind mounts of their shared copies;
/// `/dev/shm` bound from the host (CRI's pod shm) becomes a guest tmpfs.
fn rewrite_mounts(
    obj: &mut Map<String, Value>,
    guest_container_dir: &str,
    dropped: &mut Vec<String>,
) -> Result<Vec<SharedVolume>, SpecError> {
    let mut volumes = Vec::new();
    let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(volumes);
    };
    for (index, mount) in mounts.iter_mut().enumerate() {
        let Some(m) = mount.as_object_mut() else {
            continue;
        };
        let options: Vec<String> = m
            .get("options")
            .and_then(Value::as_array)
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
        let is_bind = typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if !is_bind {
            continue;
        }
        let destination = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let source = m.get("source").and_then(Value::as_str).unwrap_or("");
        if !source.starts_with('/') {
            return Err(SpecError::BadField {
                field: format!("mounts[{index}].source"),
                value: source.to_owned(),
                expected: "an absolute host path (a bind mount's source)",
            });
        }
        if destination == "/dev/shm" {
            dropped.push("the host /dev/shm bind (the pod's shm is a guest tmpfs)".to_owned());
            *mount = serde_json::json!({
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            });
            continue;
        }
        let shared_name = format!("mounts/{index}");
        volumes.push(SharedVolume {
            host_source: PathBuf::from(source),
            shared_name: shared_name.clone(),
            options,
        });
        m.insert(
            "source".into(),
            Value::String(format!("{guest_container_dir}/{shared_name}")),
        );
    }
    Ok(volumes)
}

/// An annotation holding a non-negative integer; absent is `None`, garbage
/// is an error naming the annotation.
pub fn annotation_u64(spec: &Value, key: &str) -> Result<Option<u64>, SpecError> {
    let Some(raw) = annotation(spec, key) else {
        return Ok(None);
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    // CRI writes quota as -1 for "no limit".
    if raw.starts_with('-') {
        return match raw.parse::<i64>() {
            Ok(_) => Ok(None),
            Err(_) => Err(SpecError::BadField {
                field: format!("annotation {key}"),
                value: raw.to_owned(),
                expected: "an integer",
            }),
        };
    }
    raw.parse::<u64>()
        .map(Some)
        .map_err(|_| SpecError::BadField {
            field: format!("annotation {key}"),
            value: raw.to_owned(),
            expected: "an integer",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "apparmorProfile": "cri-default"},
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "web",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/var/lib/vol", "options": ["rbind", "ro"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/x/shm", "options": ["rbind"]},
                {"destination": "/etc/hosts", "source": "/var/lib/pod/hosts", "options": ["bind", "rw"]},
            ],
            "hooks": {"prestart": [{"path": "/usr/bin/nvidia"}]},
            "linux": {
                "cgroupsPath": "kubepods-besteffort.slice:cri-containerd:abc",
                "namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/42/ns/ipc"},
                    {"type": "network", "path": "/var/run/netns/cni-1"},
                    {"type": "mount"},
                ],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "mountLabel": "system_u:object_r:container_file_t",
                "someFutureField": {"kept": true},
            },
            "annotations": {SANDBOX_ID_ANNOTATION: "pod1", SANDBOX_MEMORY: "268435456", SANDBOX_CPU_QUOTA: "-1"}
        })
    }

    #[test]
    fn rewrites_paths_and_drops_host_only_parts() {
        let out = rewrite_for_guest(
            sample(),
            "/run/palisade/shared/c1/rootfs",
            "/run/palisade/shared/c1",
        )
        .expect("rewrite");
        assert_eq!(out.host_root, PathBuf::from("rootfs"));
        let spec: Value = serde_json::from_slice(&out.json).expect("json");
        assert_eq!(spec["root"]["path"], "/run/palisade/shared/c1/rootfs");
        assert!(spec.get("hooks").is_none());
        assert!(spec["process"].get("apparmorProfile").is_none());
        assert!(spec["linux"].get("cgroupsPath").is_none());
        assert!(spec["linux"].get("mountLabel").is_none());
        assert_eq!(spec["linux"]["devices"], json!([]));
        assert_eq!(spec["linux"]["someFutureField"], json!({"kept": true}));
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "mount"}])
        );
        assert_eq!(
            spec["mounts"][1]["source"],
            "/run/palisade/shared/c1/mounts/1"
        );
        assert_eq!(spec["mounts"][2]["type"], "tmpfs");
        assert_eq!(
            spec["mounts"][3]["source"],
            "/run/palisade/shared/c1/mounts/3"
        );
        assert_eq!(
            out.volumes,
            vec![
                SharedVolume {
                    host_source: "/var/lib/vol".into(),
                    shared_name: "mounts/1".into(),
                    options: vec!["rbind".into(), "ro".into()],
                },
                SharedVolume {
                    host_source: "/var/lib/pod/hosts".into(),
                    shared_name: "mounts/3".into(),
                    options: vec!["bind".into(), "rw".into()],
                },
            ]
        );
        assert!(out.dropped.iter().any(|d| d.contains("hooks")));
        assert!(out.dropped.iter().any(|d| d.contains("network namespace")));
    }

    #[test]
    fn refuses_a_spec_without_root_and_relative_bind_sources() {
        let mut spec = sample();
        spec.as_object_mut().expect("object").remove("root");
        assert!(matches!(
            rewrite_for_guest(spec, "/r", "/c"),
            Err(SpecError::NoRoot)
        ));
        let mut spec = sample();
        spec["mounts"][1]["source"] = json!("relative/dir");
        let err = rewrite_for_guest(spec, "/r", "/c").expect_err("relative");
        assert!(err.to_string().contains("mounts[1].source"), "{err}");
    }

    #[test]
    fn reads_pod_identity_and_resources_from_annotations() {
        let spec = sample();
        assert_eq!(sandbox_id(&spec, "c1"), "pod1");
        assert_eq!(sandbox_id(&json!({}), "c1"), "c1");
        assert_eq!(
            annotation_u64(&spec, SANDBOX_MEMORY).expect("memory"),
            Some(268435456)
        );
        assert_eq!(
            annotation_u64(&spec, SANDBOX_CPU_QUOTA).expect("quota"),
            None
        );
        assert_eq!(
            annotation_u64(&spec, SANDBOX_CPU_PERIOD).expect("period"),
            None
        );
        let bad = json!({"annotations": {SANDBOX_MEMORY: "lots"}});
        let err = annotation_u64(&bad, SANDBOX_MEMORY).expect_err("garbage");
        assert!(err.to_string().contains(SANDBOX_MEMORY), "{err}");
    }
}
