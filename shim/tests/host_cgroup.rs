//! The pod cgroup code on this host's real cgroup hierarchies (v1 hybrid on
//! the project's machines, v2 elsewhere): a child `sleep` is moved into a
//! new cgroup with a memory limit, and everything made is removed after.
//!
//! Needs root: cgroupfs is root's. A plain `cargo test` skips them as
//! ignored; `make test` (tests/run-all) runs them as root with
//! `--ignored`, and there, without root, they fail and say so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use palisade_shim::host_cgroup::layout::Layout;
use palisade_shim::host_cgroup::{self, CgroupPath, PodCgroup, PodCgroupSpec};

const LIMIT: u64 = 64 << 20;

fn require_root() {
    let root = nix::unistd::geteuid().is_root();
    assert!(
        root,
        "these tests change the host's cgroups and need root: run them as root (sudo make test)"
    );
}

fn layout() -> Layout {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    Layout::from_mountinfo(&mountinfo).expect("a cgroup hierarchy is mounted")
}

/// A `sleep` that is killed when the test ends, however it ends.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Self {
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("starting sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn cgroups(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).expect("proc cgroup")
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.end();
    }
}

/// A cgroup path of this test's own, and its directory in every hierarchy
/// (parent first), removed at the end if a failed assertion left it.
struct Scratch {
    top: String,
    dirs: Vec<PathBuf>,
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let top = format!("palisade-test-{}-{test}", std::process::id());
        let mut dirs = Vec::new();
        for h in layout().hierarchies() {
            dirs.push(h.mount.join(&top));
            dirs.push(h.mount.join(&top).join("pod"));
        }
        Scratch {
            top,
            dirs,
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn spec(&self) -> PodCgroupSpec {
        PodCgroupSpec {
            path: CgroupPath::parse(&format!("/{}/pod", self.top)).expect("path"),
            memory_limit: Some(LIMIT),
        }
    }

    fn record(&self) -> PathBuf {
        self.tmp.path().join(".cgroups/pod")
    }

    fn existing(&self) -> Vec<&PathBuf> {
        self.dirs.iter().filter(|d| d.exists()).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The lines of /proc/PID/cgroup for the hierarchies the code manages
/// (the v1 ones on a hybrid host; its empty cgroup2 is left alone).
fn managed_lines(proc_cgroup: &str) -> Vec<String> {
    let v1 = !layout().is_v2();
    proc_cgroup
        .lines()
        .filter(|l| !(v1 && l.starts_with("0::")))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root (host cgroups): tests/run-all runs it"]
fn a_process_moves_into_a_new_limited_cgroup_and_back() {
    require_root();
    let scratch = Scratch::new("move");
    let mut sleeper = Sleeper::start();
    let before = sleeper.cgroups();
    let spec = scratch.spec();

    let cgroup = PodCgroup::join_process(sleeper.pid(), &spec, &scratch.record()).expect("join");
    let inside = sleeper.cgroups();
    let want = format!("/{}/pod", scratch.top);
    for line in managed_lines(&inside) {
        assert!(
            line.ends_with(&format!(":{want}")),
            "not moved: {line}\n{inside}"
        );
    }
    let layout = layout();
    for h in layout.hierarchies() {
        let dir = h.mount.join(&scratch.top).join("pod");
        assert!(dir.is_dir(), "{} missing", dir.display());
        if layout.is_v2() {
            assert_eq!(read(&dir.join("memory.max")), LIMIT.to_string());
        } else if h.has("memory") {
            assert_eq!(read(&dir.join("memory.limit_in_bytes")), LIMIT.to_string());
        } else if h.has("cpuset") {
            assert!(!read(&dir.join("cpuset.cpus")).is_empty());
            assert!(!read(&dir.join("cpuset.mems")).is_empty());
        }
    }
    assert!(scratch.record().is_file());

    cgroup.leave().expect("leave");
    assert_eq!(managed_lines(&sleeper.cgroups()), managed_lines(&before));
    assert!(
        scratch.existing().is_empty(),
        "left: {:?}",
        scratch.existing()
    );
    assert!(!scratch.record().exists());
    sleeper.end();
}

#[test]
#[ignore = "needs root (host cgroups): tests/run-all runs it"]
fn delete_after_a_crash_removes_the_recorded_cgroups() {
    require_root();
    let scratch = Scratch::new("crash");
    let mut sleeper = Sleeper::start();
    let cgroup =
        PodCgroup::join_process(sleeper.pid(), &scratch.spec(), &scratch.record()).expect("join");
    // The process dies in the cgroup, and nobody leaves it.
    sleeper.end();
    // Dropping the handle does not leave: a dead shim would not either.
    drop(cgroup);

    host_cgroup::remove_recorded(&scratch.record()).expect("remove");
    assert!(
        scratch.existing().is_empty(),
        "left: {:?}",
        scratch.existing()
    );
    assert!(!scratch.record().exists());
}

#[test]
#[ignore = "needs root (host cgroups): tests/run-all runs it"]
fn a_process_that_cannot_join_leaves_nothing_behind() {
    require_root();
    let scratch = Scratch::new("refused");
    // kthreadd: kernel threads cannot be moved between cgroups.
    let err = match PodCgroup::join_process(2, &scratch.spec(), &scratch.record()) {
        Ok(_) => panic!("a kernel thread joined a cgroup"),
        Err(e) => palisade_shim::error_chain(&e),
    };
    assert!(err.contains(&format!("/{}/pod", scratch.top)), "{err}");
    assert!(err.contains("cannot move process 2 into cgroup"), "{err}");
    assert!(
        scratch.existing().is_empty(),
        "left: {:?}",
        scratch.existing()
    );
    assert!(!scratch.record().exists());
}
