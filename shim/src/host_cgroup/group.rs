//! Creating a pod's cgroup in every hierarchy, moving a process into it and
//! back, and removing what was created, over any [`CgroupFs`].
//!
//! What is created is remembered per directory, top-down, so removal takes
//! away exactly those (deepest first) and never a parent someone else
//! made (the kubelet's pod and QoS cgroups, `/<namespace>` of an earlier
//! pod).

use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::fs::CgroupFs;
use super::layout::{Hierarchy, Layout};
use super::path::CgroupPath;

const PROCS: &str = "cgroup.procs";
const CONTROLLERS: &str = "cgroup.controllers";
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const V2_MEMORY_LIMIT: &str = "memory.max";
const V1_MEMORY_LIMIT: &str = "memory.limit_in_bytes";
/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no
/// process can join it until they are set.
const CPUSET_FILES: [&str; 2] = ["cpuset.cpus", "cpuset.mems"];
/// v2 controllers enabled down to the pod's cgroup, as runc and the
/// kubelet do. Only memory is required: without it nothing the VM uses
/// would be charged to the pod. The others are enabled if the host has
/// them, and a refusal is logged.
const V2_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];
const REQUIRED_V2_CONTROLLER: &str = "memory";
/// A directory that vanished while the path was being made (another pod
/// of the same parent removing it as it left) is made again; this often.
const CREATE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("cannot create cgroup {}", .dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {}", .file.display())]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the memory controller is not enabled for cgroup {} (its cgroup.controllers does not list it), so the pod's memory would not be charged there: enable memory in its parents' cgroup.subtree_control",
        .dir.display()
    )]
    NoMemoryController { dir: PathBuf },
    #[error(
        "the host has no cgroup v1 memory hierarchy mounted, so the pod's memory cannot be charged to it"
    )]
    NoMemoryHierarchy,
    #[error("cannot move process {pid} into cgroup {}", .dir.display())]
    Join {
        pid: u32,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move process {pid} back to cgroup {} (nor to the hierarchy's root)", .dir.display())]
    Return {
        pid: u32,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove cgroup {}", .dir.display())]
    Remove {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How long removing a pod's own cgroup keeps trying while it is busy:
/// the VMM that just exited, or was just killed, leaves it a moment later.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub tries: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // About 1.3 s in all.
        Backoff {
            tries: 10,
            first: Duration::from_millis(10),
            max: Duration::from_millis(250),
        }
    }
}

/// The pod's cgroup in one hierarchy.
#[derive(Debug)]
struct Placement {
    hierarchy: Hierarchy,
    /// The cgroup the process was in (absolute directory).
    origin: PathBuf,
    /// The pod's cgroup.
    dir: PathBuf,
    /// What this pod created, top-down.
    created: Vec<PathBuf>,
}

/// A pod's cgroup, made in every hierarchy of the layout.
pub struct PodGroup<F: CgroupFs> {
    fs: F,
    placements: Vec<Placement>,
    /// The process moved in, once [`PodGroup::join`] succeeded.
    joined: Option<u32>,
    backoff: Backoff,
}

impl<F: CgroupFs> PodGroup<F> {
    /// Makes `path` in every hierarchy of `layout` (with the v2
    /// controllers enabled on the way, or the v1 cpuset copied down) and
    /// sets `memory_limit` on it. `positions` are where the process that
    /// will join is now, one per hierarchy ([`Layout::positions`]). On
    /// error, whatever was created is removed again.
    pub fn create(
        fs: F,
        layout: &Layout,
        positions: &[String],
        path: &CgroupPath,
        memory_limit: Option<u64>,
        backoff: Backoff,
    ) -> Result<Self, GroupError> {
        let mut group = PodGroup {
            fs,
            placements: Vec::new(),
            joined: None,
            backoff,
        };
        match group.make(layout, positions, path, memory_limit) {
            Ok(()) => Ok(group),
            Err(e) => {
                for problem in group.remove_created() {
                    log::warn!(
                        "undoing a failed cgroup setup: {}",
                        crate::error_chain(&problem)
                    );
                }
                Err(e)
            }
        }
    }

    fn make(
        &mut self,
        layout: &Layout,
        positions: &[String],
        path: &CgroupPath,
        memory_limit: Option<u64>,
    ) -> Result<(), GroupError> {
        if let Layout::V1(hs) = layout {
            if !hs.iter().any(|h| h.has("memory")) {
                return Err(GroupError::NoMemoryHierarchy);
            }
        }
        for (hierarchy, position) in layout.hierarchies().iter().zip(positions) {
            let origin = under(&hierarchy.mount, position.split('/'));
            let dir = under(
                &hierarchy.mount,
                path.components().iter().map(String::as_str),
            );
            self.placements.push(Placement {
                hierarchy: hierarchy.clone(),
                origin,
                dir,
                created: Vec::new(),
            });
            let index = self.placements.len() - 1;
            self.make_in(index, layout.is_v2(), path)?;
            let placement = &self.placements[index];
            let limit_file = if layout.is_v2() {
                Some(V2_MEMORY_LIMIT)
            } else if placement.hierarchy.has("memory") {
                Some(V1_MEMORY_LIMIT)
            } else {
                None
            };
            if let (Some(file), Some(bytes)) = (limit_file, memory_limit) {
                self.write(&placement.dir.join(file), &bytes.to_string())?;
            }
        }
        Ok(())
    }

    /// Makes the pod's directory in placement `index`, top-down.
    fn make_in(&mut self, index: usize, v2: bool, path: &CgroupPath) -> Result<(), GroupError> {
        let mount = self.placements[index].hierarchy.mount.clone();
        let is_cpuset = self.placements[index].hierarchy.has("cpuset");
        let components = path.components();
        let mut attempt = 0;
        'walk: loop {
            attempt += 1;
            let mut dir = mount.clone();
            for (depth, component) in components.iter().enumerate() {
                if v2 {
                    // Each parent, the hierarchy's root included, hands
                    // the controllers down to the next level.
                    self.enable_controllers(&dir)?;
                }
                let parent = dir.clone();
                dir.push(component);
                match self.fs.mkdir(&dir) {
                    Ok(()) => {
                        self.placements[index].created.push(dir.clone());
                        if is_cpuset {
                            self.copy_cpuset(&parent, &dir)?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < CREATE_ATTEMPTS => {
                        log::debug!(
                            "cgroup {} vanished while its child was made; again",
                            parent.display()
                        );
                        continue 'walk;
                    }
                    Err(source) => return Err(GroupError::Create { dir, source }),
                }
                if v2 && depth + 1 == components.len() {
                    let listed = self.read(&dir.join(CONTROLLERS))?;
                    if !listed
                        .split_whitespace()
                        .any(|c| c == REQUIRED_V2_CONTROLLER)
                    {
                        return Err(GroupError::NoMemoryController { dir });
                    }
                }
            }
            return Ok(());
        }
    }

    /// Enables in `dir`'s subtree_control the wanted controllers it has
    /// and has not enabled yet (the kubelet's cgroups have them all).
    fn enable_controllers(&self, dir: &Path) -> Result<(), GroupError> {
        let available = self.read(&dir.join(CONTROLLERS))?;
        let enabled = self.read(&dir.join(SUBTREE_CONTROL))?;
        let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
        for controller in V2_CONTROLLERS {
            if !has(&available, controller) || has(&enabled, controller) {
                continue;
            }
            match self.write(&dir.join(SUBTREE_CONTROL), &format!("+{controller}")) {
                Ok(()) => {}
                Err(e) if controller == REQUIRED_V2_CONTROLLER => return Err(e),
                Err(e) => log::warn!("{}", crate::error_chain(&e)),
            }
        }
        Ok(())
    }

    fn copy_cpuset(&self, parent: &Path, dir: &Path) -> Result<(), GroupError> {
        for file in CPUSET_FILES {
            if !self.read(&dir.join(file))?.trim().is_empty() {
                continue;
            }
            let value = self.read(&parent.join(file))?;
            if !value.trim().is_empty() {
                self.write(&dir.join(file), value.trim())?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn set_backoff(&mut self, backoff: Backoff) {
        self.backoff = backoff;
    }

    /// Every directory this pod created, in every hierarchy, top-down.
    pub fn created(&self) -> Vec<PathBuf> {
        self.placements
            .iter()
            .flat_map(|p| p.created.iter().cloned())
            .collect()
    }

    /// The pod's cgroup directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.placements.iter().map(|p| p.dir.clone()).collect()
    }

    /// Moves process `pid` (all its threads) into the pod's cgroup in
    /// every hierarchy. On error it is back where it was.
    pub fn join(&mut self, pid: u32) -> Result<(), GroupError> {
        for (i, placement) in self.placements.iter().enumerate() {
            let file = placement.dir.join(PROCS);
            if let Err(source) = self.fs.write(&file, &pid.to_string()) {
                for earlier in &self.placements[..i] {
                    if let Err(e) = self.move_back(earlier, pid) {
                        log::warn!("undoing a failed cgroup join: {}", crate::error_chain(&e));
                    }
                }
                return Err(GroupError::Join {
                    pid,
                    dir: placement.dir.clone(),
                    source,
                });
            }
        }
        self.joined = Some(pid);
        Ok(())
    }

    /// Moves the joined process back where it came from and removes what
    /// was created. Returns what could not be done; the directories that
    /// are still there are in [`PodGroup::created`] afterwards.
    pub fn leave(&mut self) -> Vec<GroupError> {
        let mut problems = Vec::new();
        if let Some(pid) = self.joined.take() {
            for placement in &self.placements {
                if let Err(e) = self.move_back(placement, pid) {
                    problems.push(e);
                }
            }
        }
        problems.extend(self.remove_created());
        problems
    }

    fn move_back(&self, placement: &Placement, pid: u32) -> Result<(), GroupError> {
        let pid_text = pid.to_string();
        match self.fs.write(&placement.origin.join(PROCS), &pid_text) {
            Ok(()) => Ok(()),
            // The origin went away (it is not ours to keep): the root
            // always exists, and the pod's cgroup must be left to go.
            Err(first) => self
                .fs
                .write(&placement.hierarchy.mount.join(PROCS), &pid_text)
                .map_err(|_| GroupError::Return {
                    pid,
                    dir: placement.origin.clone(),
                    source: first,
                }),
        }
    }

    /// Removes this pod's directories, deepest first: the pod's own
    /// cgroup with retries while it is busy, the parents it made once
    /// (busy means another pod's cgroup is in them now; theirs to keep).
    fn remove_created(&mut self) -> Vec<GroupError> {
        let mut problems = Vec::new();
        for placement in &mut self.placements {
            while let Some(dir) = placement.created.pop() {
                let own = dir == placement.dir;
                let tries = if own { self.backoff.tries } else { 1 };
                match remove_dir(&self.fs, &dir, tries, self.backoff) {
                    Ok(()) => {}
                    Err(e) if !own && is_busy(&e) => {
                        log::debug!("cgroup {} is in use by others: left", dir.display());
                    }
                    Err(source) => {
                        placement.created.push(dir.clone());
                        problems.push(GroupError::Remove { dir, source });
                        break;
                    }
                }
            }
        }
        problems
    }

    fn read(&self, file: &Path) -> Result<String, GroupError> {
        self.fs.read(file).map_err(|source| GroupError::Read {
            file: file.to_owned(),
            source,
        })
    }

    fn write(&self, file: &Path, value: &str) -> Result<(), GroupError> {
        self.fs
            .write(file, value)
            .map_err(|source| GroupError::Write {
                file: file.to_owned(),
                value: value.to_owned(),
                source,
            })
    }
}

/// Removes directories a pod created (as recorded, top-down within each
/// hierarchy), deepest first, after its shim died: the pod's own cgroups
/// are the deepest and get the retries. Directories that are gone count as
/// removed; parents still busy with other pods' cgroups are left. Returns
/// what could not be removed.
pub fn remove_recorded<F: CgroupFs>(
    fs: &F,
    dirs: &[PathBuf],
    backoff: Backoff,
) -> Vec<(PathBuf, io::Error)> {
    let mut left = Vec::new();
    for (i, dir) in dirs.iter().enumerate().rev() {
        // The deepest of its hierarchy: nothing recorded lies below it.
        let own = !dirs[i + 1..].iter().any(|d| d.starts_with(dir));
        let tries = if own { backoff.tries } else { 1 };
        match remove_dir(fs, dir, tries, backoff) {
            Ok(()) => {}
            Err(e) if !own && is_busy(&e) => {}
            Err(e) => left.push((dir.clone(), e)),
        }
    }
    left
}

fn remove_dir<F: CgroupFs>(fs: &F, dir: &Path, tries: u32, backoff: Backoff) -> io::Result<()> {
    let mut delay = backoff.first;
    let mut attempt = 1;
    loop {
        match fs.rmdir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if is_busy(&e) && attempt < tries => {
                thread::sleep(delay);
                delay = (delay * 2).min(backoff.max);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBUSY)
}

fn under<'a>(mount: &Path, components: impl Iterator<Item = &'a str>) -> PathBuf {
    let mut dir = mount.to_owned();
    for c in components.filter(|c| !c.is_empty()) {
        dir.push(c);
    }
    dir
}
