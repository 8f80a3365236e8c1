//! The create/join/leave/remove logic against a fake cgroupfs tree
//! ([`super::fake`]) in both layouts, and the spec policy.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::fake::FakeCgroupFs;
use super::*;

const SHIM: u32 = 4242;
const OTHER_POD: u32 = 77;

/// `/proc/<pid>/cgroup` for a process at `position` in every hierarchy.
fn proc_cgroup(layout: &Layout, position: &str) -> String {
    match layout {
        Layout::V2(_) => format!("0::{position}\n"),
        Layout::V1(hs) => hs
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{}:{}:{position}\n", i + 1, h.controllers.join(",")))
            .collect(),
    }
}

fn spec(path: &str, limit: Option<u64>) -> PodCgroupSpec {
    PodCgroupSpec {
        path: CgroupPath::parse(path).expect("path"),
        memory_limit: limit,
    }
}

struct Rig {
    fake: FakeCgroupFs,
    record: PathBuf,
    /// containerd's cgroup, where the shim starts.
    origin: &'static str,
}

impl Rig {
    fn new(fake: FakeCgroupFs) -> Self {
        let record = fake.root.join("run/palisade/.cgroups/pod1");
        let rig = Rig {
            fake,
            record,
            origin: "/system.slice/containerd.service",
        };
        for h in rig.fake.layout().hierarchies() {
            let dir = h.mount.join("system.slice/containerd.service");
            rig.fake.premake_bare(&dir);
            rig.fake.place(SHIM, &dir);
        }
        rig
    }

    fn enter(&self, s: &PodCgroupSpec) -> Result<PodGroup<&FakeCgroupFs>, HostCgroupError> {
        let layout = self.fake.layout();
        enter_with(
            &self.fake,
            layout,
            &proc_cgroup(layout, self.origin),
            SHIM,
            s,
            &self.record,
        )
    }

    /// The directory of `path` in every hierarchy.
    fn everywhere(&self, path: &str) -> Vec<PathBuf> {
        self.fake
            .layout()
            .hierarchies()
            .iter()
            .map(|h| h.mount.join(path.trim_start_matches('/')))
            .collect()
    }

    fn assert_shim_in(&self, path: &str) {
        for dir in self.everywhere(path) {
            assert!(
                self.fake.procs(&dir).contains(&SHIM),
                "the shim is not in {}",
                dir.display()
            );
        }
    }

    fn recorded(&self) -> Vec<PathBuf> {
        std::fs::read_to_string(&self.record)
            .expect("record")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(PathBuf::from)
            .collect()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn v2_makes_the_path_with_controllers_handed_down_and_removes_only_its_own() {
    let rig = Rig::new(FakeCgroupFs::v2(
        &["cpu", "io", "memory", "pids", "rdma"],
        &[],
    ));
    let before = rig.fake.all_cgroups();
    let mut group = rig
        .enter(&spec("/default/pod1", Some(300 << 20)))
        .expect("enter");

    let mount = rig.fake.layout().hierarchies()[0].mount.clone();
    // The root and /default hand the wanted controllers down (not rdma).
    for dir in [mount.clone(), mount.join("default")] {
        assert_eq!(
            read(&dir.join("cgroup.subtree_control")),
            "cpu io memory pids"
        );
    }
    let leaf = mount.join("default/pod1");
    assert_eq!(read(&leaf.join("cgroup.subtree_control")), "");
    assert_eq!(read(&leaf.join("memory.max")), (300u64 << 20).to_string());
    rig.assert_shim_in("/default/pod1");
    assert_eq!(group.dirs(), std::slice::from_ref(&leaf));
    assert_eq!(rig.recorded(), [mount.join("default"), leaf.clone()]);

    leave_with(&mut group, &rig.record).expect("leave");
    rig.assert_shim_in(rig.origin);
    assert_eq!(rig.fake.all_cgroups(), before);
    assert!(!rig.record.exists());
    assert!(!rig.record.parent().expect("parent").exists());
}

#[test]
fn v2_keeps_the_kubelets_parents_and_sets_no_limit_for_them() {
    let rig = Rig::new(FakeCgroupFs::v2(&["cpu", "memory", "pids"], &[]));
    let mount = rig.fake.layout().hierarchies()[0].mount.clone();
    let pod = mount.join("kubepods/burstable/pod1234");
    rig.fake.premake(&pod);
    let before = rig.fake.all_cgroups();

    let mut group = rig
        .enter(&spec("/kubepods/burstable/pod1234/sandbox1", None))
        .expect("enter");
    let leaf = pod.join("sandbox1");
    rig.assert_shim_in("/kubepods/burstable/pod1234/sandbox1");
    assert_eq!(read(&leaf.join("memory.max")), "max");
    assert_eq!(rig.recorded(), [leaf]);

    leave_with(&mut group, &rig.record).expect("leave");
    assert_eq!(rig.fake.all_cgroups(), before);
    assert!(pod.is_dir(), "the kubelet's pod cgroup must stay");
}

#[test]
fn v2_without_the_memory_controller_fails_and_leaves_nothing() {
    let rig = Rig::new(FakeCgroupFs::v2(&["cpu", "pids"], &[]));
    let before = rig.fake.all_cgroups();
    let err = match rig.enter(&spec("/default/pod1", Some(1 << 30))) {
        Ok(_) => panic!("entered without memory"),
        Err(e) => e,
    };
    let text = crate::error_chain(&err);
    assert!(text.contains("/default/pod1"), "{text}");
    assert!(text.contains("memory controller is not enabled"), "{text}");
    assert_eq!(rig.fake.all_cgroups(), before);
    rig.assert_shim_in(rig.origin);
    assert!(!rig.record.exists());
}

#[test]
fn v2_a_refused_optional_controller_is_no_failure_but_memory_is() {
    let rig = Rig::new(FakeCgroupFs::v2(&["cpu", "memory"], &[]));
    // The cpu controller cannot be enabled (as with realtime threads).
    rig.fake
        .fail_writes_of("cgroup.subtree_control", "+cpu", libc::EINVAL);
    let mut group = rig.enter(&spec("/default/pod1", None)).expect("enter");
    let mount = rig.fake.layout().hierarchies()[0].mount.clone();
    assert_eq!(read(&mount.join("cgroup.subtree_control")), "memory");
    leave_with(&mut group, &rig.record).expect("leave");

    let rig = Rig::new(FakeCgroupFs::v2(&["cpu", "memory"], &[]));
    let before = rig.fake.all_cgroups();
    rig.fake
        .fail_writes_of("cgroup.subtree_control", "+memory", libc::EBUSY);
    let err = match rig.enter(&spec("/default/pod1", None)) {
        Ok(_) => panic!("a refused memory controller must fail"),
        Err(e) => e,
    };
    let text = crate::error_chain(&err);
    assert!(text.contains("cannot write \"+memory\""), "{text}");
    assert!(text.contains("Device or resource busy"), "{text}");
    assert_eq!(rig.fake.all_cgroups(), before);
}

#[test]
fn v1_makes_the_cgroup_in_every_hierarchy_with_cpusets_copied() {
    let rig = Rig::new(FakeCgroupFs::v1(&[
        &["cpu", "cpuacct"],
        &["cpuset"],
        &["memory"],
        &["pids"],
        &["name=systemd"],
    ]));
    let before = rig.fake.all_cgroups();
    let mut group = rig
        .enter(&spec("/kubepods/pod1/sandbox1", Some(320 << 20)))
        .expect("enter");
    rig.assert_shim_in("/kubepods/pod1/sandbox1");
    let cpuset = rig.fake.root.join("cpuset/kubepods/pod1/sandbox1");
    assert_eq!(read(&cpuset.join("cpuset.cpus")), "0-3");
    assert_eq!(read(&cpuset.join("cpuset.mems")), "0");
    let memory = rig.fake.root.join("memory/kubepods/pod1/sandbox1");
    assert_eq!(
        read(&memory.join("memory.limit_in_bytes")),
        (320u64 << 20).to_string()
    );
    // Three levels in each of five hierarchies, all new.
    assert_eq!(rig.recorded().len(), 15);
    assert_eq!(group.dirs().len(), 5);

    leave_with(&mut group, &rig.record).expect("leave");
    rig.assert_shim_in(rig.origin);
    assert_eq!(rig.fake.all_cgroups(), before);
    assert!(!rig.record.exists());
}

#[test]
fn v1_a_failed_join_moves_the_process_back_and_removes_everything() {
    let rig = Rig::new(FakeCgroupFs::v1(&[
        &["cpu", "cpuacct"],
        &["memory"],
        &["pids"],
    ]));
    let before = rig.fake.all_cgroups();
    // The third hierarchy refuses the process (pids.max reached, say).
    let pids_leaf = rig.fake.root.join("pids/default/pod1");
    rig.fake.premake(&pids_leaf);
    rig.fake.fail_writes_to("cgroup.procs", libc::EAGAIN);
    let err = match rig.enter(&spec("/default/pod1", Some(1 << 30))) {
        Ok(_) => panic!("joined"),
        Err(e) => e,
    };
    let text = crate::error_chain(&err);
    assert!(
        text.contains("cannot put the pod's processes in cgroup /default/pod1"),
        "{text}"
    );
    assert!(
        text.contains("cannot move process 4242 into cgroup"),
        "{text}"
    );
    let mut after_premake = before.clone();
    after_premake.extend([rig.fake.root.join("pids/default"), pids_leaf]);
    after_premake.sort();
    assert_eq!(rig.fake.all_cgroups(), after_premake);
    rig.assert_shim_in(rig.origin);
    assert!(!rig.record.exists());
}

#[test]
fn v1_without_a_memory_hierarchy_fails_clearly() {
    let rig = Rig::new(FakeCgroupFs::v1(&[&["cpu", "cpuacct"], &["pids"]]));
    let err = match rig.enter(&spec("/default/pod1", None)) {
        Ok(_) => panic!("entered"),
        Err(e) => e,
    };
    assert!(
        crate::error_chain(&err).contains("no cgroup v1 memory hierarchy"),
        "{err}"
    );
}

#[test]
fn a_parent_another_pod_uses_is_left_to_it() {
    let rig = Rig::new(FakeCgroupFs::v2(&["memory"], &[]));
    let mount = rig.fake.layout().hierarchies()[0].mount.clone();
    let mut group = rig.enter(&spec("/default/pod1", None)).expect("enter");
    // A second pod's cgroup appears in /default, which this pod made.
    let other = mount.join("default/pod2");
    rig.fake.premake(&other);
    rig.fake.place(OTHER_POD, &other);

    leave_with(&mut group, &rig.record).expect("leave");
    assert!(!mount.join("default/pod1").exists());
    assert!(other.is_dir());
    assert!(!rig.record.exists());
}

#[test]
fn a_busy_pod_cgroup_is_reported_and_stays_recorded() {
    let rig = Rig::new(FakeCgroupFs::v2(&["memory"], &[]));
    let mount = rig.fake.layout().hierarchies()[0].mount.clone();
    let leaf = mount.join("default/pod1");
    let mut group = rig.enter(&spec("/default/pod1", None)).expect("enter");
    // The VMM never went away.
    rig.fake.place(OTHER_POD, &leaf);
    group.set_backoff(Backoff {
        tries: 2,
        first: std::time::Duration::ZERO,
        max: std::time::Duration::ZERO,
    });

    let err = leave_with(&mut group, &rig.record).expect_err("busy");
    let text = crate::error_chain(&err);
    assert!(
        text.contains("cannot remove cgroup") && text.contains("default/pod1"),
        "{text}"
    );
    rig.assert_shim_in(rig.origin);
    assert_eq!(rig.recorded(), [mount.join("default"), leaf]);
}

#[test]
fn delete_after_a_crash_removes_what_the_record_lists() {
    let rig = Rig::new(FakeCgroupFs::v1(&[&["memory"], &["pids"]]));
    let before = rig.fake.all_cgroups();
    let group = rig
        .enter(&spec("/kubepods/pod1/sandbox1", Some(1 << 30)))
        .expect("enter");
    // The shim dies: the kernel takes it out of every cgroup.
    for dir in group.dirs() {
        std::fs::write(dir.join("cgroup.procs"), "").expect("exit");
    }
    drop(group);
    // Another pod lives in /kubepods now.
    let other = rig.fake.root.join("memory/kubepods/pod2");
    rig.fake.premake(&other);
    rig.fake.place(OTHER_POD, &other);
    // A record naming something that is no cgroup is not followed.
    let mut text = std::fs::read_to_string(&rig.record).expect("record");
    text.push_str("/etc\n");
    text.push_str(&format!(
        "{}\n",
        rig.fake.root.join("memory/../etc").display()
    ));
    std::fs::write(&rig.record, text).expect("write");

    let err = remove_recorded_with(&rig.fake, rig.fake.layout(), &rig.record).expect_err("refused");
    assert!(err.to_string().contains("\"/etc\""), "{err}");
    let mut want = before;
    want.extend([rig.fake.root.join("memory/kubepods"), other]);
    want.sort();
    assert_eq!(rig.fake.all_cgroups(), want);
    assert!(!rig.record.exists());
}

#[test]
fn the_spec_says_where_and_whether_to_limit() {
    let ctr = json!({"linux": {"cgroupsPath": "/default/web"}});
    let s = PodCgroupSpec::for_sandbox(&ctr, "web", 256).expect("ctr");
    assert_eq!(s.path.to_string(), "/default/web");
    assert_eq!(s.memory_limit, Some((256 + OVERHEAD_MIB) << 20));

    let cri = json!({
        "linux": {"cgroupsPath": "kubepods-besteffort-pod12.slice:cri-containerd:abc"},
        "annotations": {SANDBOX_ID_ANNOTATION: "abc", CONTAINER_TYPE_ANNOTATION: "sandbox"},
    });
    let s = PodCgroupSpec::for_sandbox(&cri, "abc", 2048).expect("cri");
    assert_eq!(
        s.path.to_string(),
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
    );
    assert_eq!(s.memory_limit, None);

    let bare = json!({"linux": {}});
    let s = PodCgroupSpec::for_sandbox(&bare, "h-0123abcd", 128).expect("bare");
    assert_eq!(s.path.to_string(), "/palisade/h-0123abcd");
    assert!(s.memory_limit.is_some());

    let bad = json!({"linux": {"cgroupsPath": "/default/../../etc"}});
    let err = PodCgroupSpec::for_sandbox(&bad, "x", 128).expect_err("bad");
    assert!(err.to_string().contains("\"..\""), "{err}");
}

#[test]
fn records_sit_beside_the_sandbox_directories() {
    assert_eq!(
        record_path(Path::new("/run/palisade/pod1")),
        Path::new("/run/palisade/.cgroups/pod1")
    );
}
