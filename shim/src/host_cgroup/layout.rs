//! Which cgroup hierarchies the host has, read from `/proc/self/mountinfo`,
//! and where a process sits in each, read from `/proc/<pid>/cgroup`.
//!
//! Two layouts matter: cgroup v2 alone (one `cgroup2` mount, controllers
//! enabled through `cgroup.subtree_control`), and cgroup v1 (one `cgroup`
//! mount per hierarchy, each with its own controllers, possibly co-mounted
//! as `cpu,cpuacct`; on a "hybrid" host there is also an empty `cgroup2`
//! at `/sys/fs/cgroup/unified`). When any v1 hierarchy is mounted, the v1
//! hierarchies are the ones that account resources, so the layout is v1
//! and the hybrid `cgroup2` (which has no controllers) is left alone.

use std::path::{Path, PathBuf};

/// One hierarchy: where it is mounted and what it controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1: the controllers (and `name=...` of a named hierarchy) in its
    /// mount options, sorted. v2: empty (its controllers are per cgroup).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// For messages: `memory`, `cpu,cpuacct`, `name=systemd`, `cgroup2`.
    pub fn describe(&self) -> String {
        if self.controllers.is_empty() {
            "cgroup2".to_owned()
        } else {
            self.controllers.join(",")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2(Hierarchy),
    V1(Vec<Hierarchy>),
}

impl Layout {
    pub fn hierarchies(&self) -> &[Hierarchy] {
        match self {
            Layout::V2(h) => std::slice::from_ref(h),
            Layout::V1(hs) => hs,
        }
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2(_))
    }

    /// The layout mountinfo describes, or `None` if no cgroup filesystem
    /// is mounted.
    pub fn from_mountinfo(mountinfo: &str) -> Option<Layout> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut v2: Vec<PathBuf> = Vec::new();
        for line in mountinfo.lines() {
            let Some(mount) = parse_mount(line) else {
                continue;
            };
            match mount.fstype {
                "cgroup" => {
                    let mut controllers: Vec<String> = mount
                        .super_options
                        .split(',')
                        .filter(|o| is_controller_option(o))
                        .map(str::to_owned)
                        .collect();
                    controllers.sort();
                    // One hierarchy can be mounted at several places.
                    if !controllers.is_empty() && !v1.iter().any(|h| h.controllers == controllers) {
                        v1.push(Hierarchy {
                            mount: mount.mount_point,
                            controllers,
                        });
                    }
                }
                "cgroup2" => v2.push(mount.mount_point),
                _ => {}
            }
        }
        if !v1.is_empty() {
            return Some(Layout::V1(v1));
        }
        // The usual place first, if cgroup2 is mounted more than once.
        let standard = Path::new("/sys/fs/cgroup");
        let mount = v2
            .iter()
            .find(|m| m.as_path() == standard)
            .or_else(|| v2.first())?
            .clone();
        Some(Layout::V2(Hierarchy {
            mount,
            controllers: Vec::new(),
        }))
    }

    /// Where `/proc/<pid>/cgroup` (its text) puts the process in each of
    /// this layout's hierarchies, in the same order; `Err` names the
    /// hierarchy it has no line for.
    pub fn positions(&self, proc_cgroup: &str) -> Result<Vec<String>, String> {
        let lines: Vec<(&str, &str, &str)> = proc_cgroup
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                Some((f.next()?, f.next()?, f.next()?))
            })
            .collect();
        self.hierarchies()
            .iter()
            .map(|h| {
                let found = lines.iter().find(|(id, ctrls, _)| {
                    if h.controllers.is_empty() {
                        *id == "0" && ctrls.is_empty()
                    } else {
                        let mut listed: Vec<&str> = ctrls.split(',').collect();
                        listed.sort_unstable();
                        listed == h.controllers
                    }
                });
                found
                    .map(|(_, _, path)| (*path).to_owned())
                    .ok_or_else(|| h.describe())
            })
            .collect()
    }
}

/// Mount options that name a v1 controller or a named hierarchy, as
/// opposed to generic ones (`rw`, `relatime`, `release_agent=...`).
fn is_controller_option(option: &str) -> bool {
    const GENERIC: &[&str] = &[
        "rw",
        "ro",
        "noprefix",
        "clone_children",
        "cpuset_v2_mode",
        "xattr",
        "favordynmods",
        "none",
    ];
    if option.is_empty() || GENERIC.contains(&option) {
        return false;
    }
    match option.split_once('=') {
        Some((key, _)) => key == "name",
        None => true,
    }
}

struct Mount<'a> {
    mount_point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// `36 35 98:0 /root /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_mount(line: &str) -> Option<Mount<'_>> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let _source = after.next()?;
    let super_options = after.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype,
        super_options,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's machines: v1 hierarchies plus an empty cgroup2.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:29 / /mnt/again\\040here rw - cgroup cgroup rw,cpuacct,cpu
";

    #[test]
    fn reads_a_v1_hybrid_layout() {
        let layout = Layout::from_mountinfo(HYBRID).expect("layout");
        let Layout::V1(hs) = &layout else {
            panic!("not v1: {layout:?}")
        };
        let found: Vec<(String, String)> = hs
            .iter()
            .map(|h| (h.mount.display().to_string(), h.describe()))
            .collect();
        let want = [
            ("/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
            ("/sys/fs/cgroup/cpuset", "cpuset"),
            ("/sys/fs/cgroup/memory", "memory"),
            ("/sys/fs/cgroup/pids", "pids"),
            ("/sys/fs/cgroup/systemd", "name=systemd"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(found, want);
        assert!(hs[0].has("cpu") && hs[0].has("cpuacct") && !hs[0].has("memory"));
    }

    #[test]
    fn reads_a_v2_layout() {
        let mountinfo = "\
22 1 0:20 / /sys rw - sysfs sysfs rw
25 22 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
26 1 0:23 / /elsewhere rw - cgroup2 cgroup2 rw
";
        let layout = Layout::from_mountinfo(mountinfo).expect("layout");
        assert_eq!(
            layout,
            Layout::V2(Hierarchy {
                mount: "/sys/fs/cgroup".into(),
                controllers: vec![]
            })
        );
        assert!(Layout::from_mountinfo("22 1 0:20 / /sys rw - sysfs sysfs rw\n").is_none());
        assert_eq!(unescape("/a\\040b\\\\"), "/a b\\\\");
    }

    #[test]
    fn finds_where_a_process_is_in_each_hierarchy() {
        let layout = Layout::from_mountinfo(HYBRID).expect("layout");
        let proc_cgroup = "\
9:name=systemd:/system.slice/containerd.service
8:pids:/system.slice/containerd.service
4:memory:/process_api/eb7b
3:cpuset:/
1:cpuacct,cpu:/system.slice
0::/system.slice/containerd.service
";
        assert_eq!(
            layout.positions(proc_cgroup).expect("positions"),
            [
                "/system.slice",
                "/",
                "/process_api/eb7b",
                "/system.slice/containerd.service",
                "/system.slice/containerd.service"
            ]
        );
        let missing = layout.positions("4:memory:/\n").expect_err("no cpu line");
        assert_eq!(missing, "cpu,cpuacct");

        let v2 = Layout::V2(Hierarchy {
            mount: "/sys/fs/cgroup".into(),
            controllers: vec![],
        });
        assert_eq!(
            v2.positions("0::/kubepods/pod1/c1\n").expect("v2"),
            ["/kubepods/pod1/c1"]
        );
    }
}
