//! What a container sees at its cgroup mount (`/sys/fs/cgroup` in every
//! spec containerd writes): its own cgroup, as under runc.
//!
//! Programs that size themselves from their limits (the JVM, Go's
//! GOMEMLIMIT tooling, .NET, nginx) read `/proc/self/cgroup`, find the
//! cgroup2 mount in `/proc/self/mountinfo` and look for `memory.max` at
//! the path of the first relative to the root of the second. Both paths
//! agree only if the mount shows the container's own cgroup:
//!
//! - with a cgroup namespace, a fresh cgroup2 mount does: its root is the
//!   namespace's, which the init process creates once it is in its cgroup;
//! - without one, a fresh mount would show the whole guest hierarchy with
//!   the container's cgroup somewhere below; runc binds the container's
//!   own cgroup directory there instead, and so does the agent.
//!
//! Specs written for cgroup v1 hosts ask for `cgroup`: the guest has only
//! the unified hierarchy, so both types mean the same here.

use std::path::Path;

use super::mounts::MountPlan;
use super::spec::{InitConfig, NamespacePlan};

fn is_cgroup_mount(m: &MountPlan) -> bool {
    !m.bind && matches!(m.fstype.as_deref(), Some("cgroup" | "cgroup2"))
}

/// True when the container gets no cgroup namespace of its own, and none
/// to join: it sees the agent's cgroup tree.
fn shares_the_agents_cgroup_namespace(ns: &NamespacePlan) -> bool {
    !ns.unshare_cgroup && !ns.join.iter().any(|(name, _)| name == "cgroup")
}

/// Rewrites the spec's cgroup mounts so that the container sees
/// `cgroup_dir`, its own cgroup, at each of them. A container with its
/// own cgroup namespace keeps its fresh cgroup2 mount (see the module
/// comment); one in the agent's gets a bind of `cgroup_dir`, with the
/// spec's flags (read-only, nosuid, ...) applied to the bind.
pub fn show_own_cgroup(config: &mut InitConfig, cgroup_dir: &Path) {
    let bind = shares_the_agents_cgroup_namespace(&config.namespaces);
    let Some(rootfs) = config.rootfs.as_mut() else {
        return;
    };
    for m in rootfs.mounts.iter_mut().filter(|m| is_cgroup_mount(m)) {
        if bind {
            m.bind = true;
            m.source = Some(cgroup_dir.to_path_buf());
            m.fstype = None;
            m.flags |= libc::MS_BIND;
            // cgroup2's own options (nsdelegate, memory_recursiveprot)
            // belong to a superblock, not to a bind of one of its dirs.
            m.data.clear();
        } else {
            m.fstype = Some("cgroup2".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::oci::Spec;
    use crate::container::spec::{parse_json, plan_container};
    use std::path::PathBuf;

    fn config(namespaces: serde_json::Value, cgroup_type: &str) -> InitConfig {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": cgroup_type, "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro", "nsdelegate"]}
            ],
            "linux": {"namespaces": namespaces}
        });
        let spec: Spec = parse_json("spec", spec.to_string().as_bytes()).unwrap();
        plan_container(&spec, Path::new("/")).unwrap()
    }

    fn cgroup_mount(c: &InitConfig) -> &MountPlan {
        &c.rootfs.as_ref().unwrap().mounts[1]
    }

    const OWN: &str = "/sys/fs/cgroup/palisade/c1";

    #[test]
    fn without_a_cgroup_namespace_the_own_cgroup_is_bound_read_only() {
        for typ in ["cgroup", "cgroup2"] {
            let mut c = config(serde_json::json!([{"type": "mount"}, {"type": "pid"}]), typ);
            show_own_cgroup(&mut c, Path::new(OWN));
            let m = cgroup_mount(&c);
            assert!(m.bind, "{typ}");
            assert_eq!(m.source.as_deref(), Some(Path::new(OWN)));
            assert_eq!(m.fstype, None);
            assert_eq!(m.data, "");
            for flag in [
                libc::MS_BIND,
                libc::MS_RDONLY,
                libc::MS_NOSUID,
                libc::MS_NODEV,
            ] {
                assert_ne!(m.flags & flag, 0, "{typ}: flag {flag:#x} missing");
            }
            // Other mounts are left alone.
            assert_eq!(
                c.rootfs.as_ref().unwrap().mounts[0].fstype.as_deref(),
                Some("proc")
            );
        }
    }

    #[test]
    fn with_a_cgroup_namespace_the_mount_stays_a_fresh_cgroup2() {
        for typ in ["cgroup", "cgroup2"] {
            let mut c = config(
                serde_json::json!([{"type": "mount"}, {"type": "cgroup"}]),
                typ,
            );
            show_own_cgroup(&mut c, Path::new(OWN));
            let m = cgroup_mount(&c);
            assert!(!m.bind, "{typ}");
            assert_eq!(m.fstype.as_deref(), Some("cgroup2"));
            assert_eq!(m.data, "nsdelegate");
        }
    }

    #[test]
    fn a_joined_cgroup_namespace_keeps_a_fresh_mount() {
        let mut ns = NamespacePlan::default();
        ns.join
            .push(("cgroup".into(), PathBuf::from("/proc/1/ns/cgroup")));
        assert!(!shares_the_agents_cgroup_namespace(&ns));
        assert!(shares_the_agents_cgroup_namespace(&NamespacePlan::default()));
    }

    #[test]
    fn a_bind_of_a_cgroup_directory_is_not_rewritten() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/"},
            "mounts": [{"destination": "/cg", "type": "bind", "source": "/sys/fs/cgroup",
                        "options": ["rbind", "ro"]}],
            "linux": {"namespaces": [{"type": "mount"}]}
        });
        let spec: Spec = parse_json("spec", spec.to_string().as_bytes()).unwrap();
        let mut c = plan_container(&spec, Path::new("/")).unwrap();
        show_own_cgroup(&mut c, Path::new(OWN));
        let m = &c.rootfs.as_ref().unwrap().mounts[0];
        assert_eq!(m.source.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    }
}
