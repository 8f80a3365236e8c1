//! A cgroup filesystem in a temporary directory that behaves as the
//! kernel's does where the code relies on it: `mkdir` makes the control
//! files (a v2 child's `cgroup.controllers` is its parent's
//! `subtree_control`), `+ctrl` in `cgroup.subtree_control` needs the
//! controller in `cgroup.controllers`, a pid written to `cgroup.procs`
//! leaves every other cgroup of its hierarchy, a v1 cpuset cgroup without
//! CPUs refuses processes (ENOSPC), a v2 cgroup that has enabled
//! controllers for children refuses processes (EBUSY), `rmdir` of a
//! cgroup with processes or children fails (EBUSY), and writes to control
//! files that do not exist fail (ENOENT). Writes to chosen files can be
//! made to fail.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::fs::CgroupFs;
use super::layout::{Hierarchy, Layout};

pub struct FakeCgroupFs {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    layout: Layout,
    /// (file name, the value written if only that one fails, errno)
    failing: Mutex<Vec<(String, Option<String>, i32)>>,
}

impl FakeCgroupFs {
    /// One cgroup2 hierarchy at `<tmp>/unified` whose root offers
    /// `controllers` and has enabled `enabled` for its children.
    pub fn v2(controllers: &[&str], enabled: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let mount = root.join("unified");
        std::fs::create_dir(&mount).expect("mkdir");
        write_file(&mount.join("cgroup.controllers"), &controllers.join(" "));
        write_file(&mount.join("cgroup.subtree_control"), &enabled.join(" "));
        write_file(&mount.join("cgroup.procs"), "");
        let layout = Layout::V2(Hierarchy {
            mount,
            controllers: Vec::new(),
        });
        FakeCgroupFs {
            _tmp: tmp,
            root,
            layout,
            failing: Mutex::new(Vec::new()),
        }
    }

    /// One v1 hierarchy per entry of `hierarchies` (its controllers),
    /// mounted at `<tmp>/<controllers joined by ','>`.
    pub fn v1(hierarchies: &[&[&str]]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let mut hs = Vec::new();
        for controllers in hierarchies {
            let mut controllers: Vec<String> =
                controllers.iter().map(|c| (*c).to_owned()).collect();
            controllers.sort();
            let mount = root.join(controllers.join(","));
            std::fs::create_dir(&mount).expect("mkdir");
            let h = Hierarchy { mount, controllers };
            populate_v1(&h, &h.mount);
            if h.has("cpuset") {
                write_file(&h.mount.join("cpuset.cpus"), "0-3\n");
                write_file(&h.mount.join("cpuset.mems"), "0\n");
            }
            hs.push(h);
        }
        FakeCgroupFs {
            _tmp: tmp,
            root,
            layout: Layout::V1(hs),
            failing: Mutex::new(Vec::new()),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Writes to files named `name` fail with `errno` from now on.
    pub fn fail_writes_to(&self, name: &str, errno: i32) {
        self.failing
            .lock()
            .expect("lock")
            .push((name.to_owned(), None, errno));
    }

    /// Writes of `value` to files named `name` fail with `errno`.
    pub fn fail_writes_of(&self, name: &str, value: &str, errno: i32) {
        self.failing
            .lock()
            .expect("lock")
            .push((name.to_owned(), Some(value.to_owned()), errno));
    }

    /// Makes `dir` (absolute), parents first, as someone else (the
    /// kubelet) would: v2 controllers handed down all the way, v1 cpusets
    /// copied down.
    pub fn premake(&self, dir: &Path) {
        self.premake_with(dir, true);
    }

    /// [`FakeCgroupFs::premake`] without handing v2 controllers down (a
    /// service manager's cgroup that controls nothing).
    pub fn premake_bare(&self, dir: &Path) {
        self.premake_with(dir, false);
    }

    fn premake_with(&self, dir: &Path, hand_down: bool) {
        let h = self.hierarchy_of(dir).clone();
        let mut cur = h.mount.clone();
        for c in dir.strip_prefix(&h.mount).expect("under").components() {
            if self.layout.is_v2() && hand_down {
                let all = read_file(&cur.join("cgroup.controllers"));
                write_file(&cur.join("cgroup.subtree_control"), &all);
            }
            let parent = cur.clone();
            cur.push(c);
            if cur.exists() {
                continue;
            }
            self.mkdir(&cur).expect("premake");
            if h.has("cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    write_file(&cur.join(f), &read_file(&parent.join(f)));
                }
            }
        }
    }

    /// Puts `pid` into the cgroup `dir` as the kernel would at fork.
    pub fn place(&self, pid: u32, dir: &Path) {
        self.write(&dir.join("cgroup.procs"), &pid.to_string())
            .expect("place");
    }

    /// The pids listed in `dir`'s cgroup.procs.
    pub fn procs(&self, dir: &Path) -> Vec<u32> {
        read_file(&dir.join("cgroup.procs"))
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// All cgroup directories below the hierarchies' roots, sorted.
    pub fn all_cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in self.layout.hierarchies() {
            collect_dirs(&h.mount, &mut out);
        }
        out.sort();
        out
    }

    fn hierarchy_of(&self, path: &Path) -> &Hierarchy {
        self.layout
            .hierarchies()
            .iter()
            .find(|h| path.starts_with(&h.mount))
            .expect("a path in the fake cgroupfs")
    }

    fn injected(&self, file: &Path, value: &str) -> Option<io::Error> {
        let name = file.file_name()?.to_str()?;
        self.failing
            .lock()
            .expect("lock")
            .iter()
            .find(|(n, v, _)| n == name && v.as_deref().is_none_or(|v| v == value))
            .map(|(_, _, errno)| io::Error::from_raw_os_error(*errno))
    }
}

impl CgroupFs for FakeCgroupFs {
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)?;
        let h = self.hierarchy_of(dir).clone();
        if self.layout.is_v2() {
            let parent = dir.parent().expect("parent");
            let handed_down = read_file(&parent.join("cgroup.subtree_control"));
            write_file(&dir.join("cgroup.controllers"), &handed_down);
            write_file(&dir.join("cgroup.subtree_control"), "");
            write_file(&dir.join("cgroup.procs"), "");
            if handed_down.split_whitespace().any(|c| c == "memory") {
                write_file(&dir.join("memory.max"), "max\n");
                write_file(&dir.join("memory.current"), "0\n");
            }
        } else {
            populate_v1(&h, dir);
        }
        Ok(())
    }

    fn rmdir(&self, dir: &Path) -> io::Result<()> {
        let mut subdirs = Vec::new();
        collect_dirs(dir, &mut subdirs);
        if !subdirs.is_empty() || !self.procs(dir).is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        std::fs::remove_dir_all(dir)
    }

    fn read(&self, file: &Path) -> io::Result<String> {
        std::fs::read_to_string(file)
    }

    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        if !file.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if let Some(e) = self.injected(file, value) {
            return Err(e);
        }
        let dir = file.parent().expect("parent");
        match file.file_name().and_then(|n| n.to_str()) {
            Some("cgroup.subtree_control") => {
                let available = read_file(&dir.join("cgroup.controllers"));
                let mut enabled: Vec<String> = read_file(file)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                for word in value.split_whitespace() {
                    let (on, name) = word.split_at(1);
                    if !available.split_whitespace().any(|c| c == name) {
                        return Err(io::Error::from_raw_os_error(libc::ENOENT));
                    }
                    enabled.retain(|c| c != name);
                    if on == "+" {
                        enabled.push(name.to_owned());
                    }
                }
                write_file(file, &enabled.join(" "));
            }
            Some("cgroup.procs") => {
                let pid: u32 = value
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let h = self.hierarchy_of(dir).clone();
                let cpus = dir.join("cpuset.cpus");
                if cpus.is_file() && read_file(&cpus).trim().is_empty() {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
                if self.layout.is_v2()
                    && dir != h.mount
                    && !read_file(&dir.join("cgroup.subtree_control"))
                        .trim()
                        .is_empty()
                {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                let mut all = vec![h.mount.clone()];
                collect_dirs(&h.mount, &mut all);
                for cg in all {
                    let procs = cg.join("cgroup.procs");
                    let kept: Vec<String> = read_file(&procs)
                        .split_whitespace()
                        .filter(|p| *p != pid.to_string())
                        .map(str::to_owned)
                        .collect();
                    write_file(&procs, &kept.join("\n"));
                }
                let mut procs = read_file(file);
                procs.push_str(&format!("\n{pid}"));
                write_file(file, procs.trim());
            }
            _ => write_file(file, value),
        }
        Ok(())
    }
}

fn populate_v1(h: &Hierarchy, dir: &Path) {
    write_file(&dir.join("cgroup.procs"), "");
    if h.has("cpuset") {
        write_file(&dir.join("cpuset.cpus"), "");
        write_file(&dir.join("cpuset.mems"), "");
    }
    if h.has("memory") {
        write_file(&dir.join("memory.limit_in_bytes"), "9223372036854771712\n");
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push(path.clone());
            collect_dirs(&path, out);
        }
    }
}

fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("writing a fake control file");
}
