//! Turns on every cgroup v2 controller the kernel offers for the root's
//! children, so container cgroups can use them.

use std::fs;
use std::io;
use std::path::Path;

/// Controllers container specs commonly use; a missing one is reported so a
/// kernel config gap shows up at boot, not as a failed container later.
const EXPECTED: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

#[derive(Debug, Default, PartialEq)]
pub struct ControllerReport {
    pub enabled: Vec<String>,
    /// Offered by the kernel but refused by subtree_control.
    pub failed: Vec<(String, String)>,
    /// Expected but not offered (not built into the kernel, or not
    /// delegated to this cgroup).
    pub missing: Vec<&'static str>,
}

pub fn enable_all(cgroup_root: &Path) -> io::Result<ControllerReport> {
    let available = fs::read_to_string(cgroup_root.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let subtree = cgroup_root.join("cgroup.subtree_control");

    let mut report = ControllerReport {
        missing: EXPECTED
            .iter()
            .copied()
            .filter(|c| !available.contains(c))
            .collect(),
        ..Default::default()
    };
    if available.is_empty() {
        return Ok(report);
    }

    let all: Vec<String> = available.iter().map(|c| format!("+{c}")).collect();
    if fs::write(&subtree, all.join(" ")).is_ok() {
        report.enabled = available.iter().map(|c| c.to_string()).collect();
        return Ok(report);
    }
    // The kernel rejects the whole write if one controller fails; retry one
    // at a time to enable the rest and name the culprit.
    for c in available {
        match fs::write(&subtree, format!("+{c}")) {
            Ok(()) => report.enabled.push(c.to_string()),
            Err(e) => report.failed.push((c.to_string(), e.to_string())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(name: &str, controllers: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-cgroups-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn enables_everything_offered_in_one_write() {
        let root = fake_root("all", "cpuset cpu io memory hugetlb pids rdma misc\n");
        let r = enable_all(&root).unwrap();
        assert_eq!(
            r.enabled,
            ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"]
        );
        assert!(r.missing.is_empty() && r.failed.is_empty());
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpuset +cpu +io +memory +hugetlb +pids +rdma +misc"
        );
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn reports_expected_controllers_the_kernel_lacks() {
        let root = fake_root("missing", "cpu memory\n");
        let r = enable_all(&root).unwrap();
        assert_eq!(r.enabled, ["cpu", "memory"]);
        assert_eq!(r.missing, ["cpuset", "io", "pids"]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_cgroup2_is_an_error() {
        assert!(enable_all(Path::new("/nonexistent-cgroup-root")).is_err());
    }
}
