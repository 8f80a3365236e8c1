//! Where in the host's cgroup hierarchies a pod goes: the sandbox
//! container's `linux.cgroupsPath`, in either of the two forms containerd
//! and the kubelet write it:
//!
//! - cgroupfs driver: an absolute path, `/kubepods/burstable/pod<uid>/<id>`
//!   (and `ctr run`'s default, `/<namespace>/<id>`);
//! - systemd driver: `slice:prefix:name`, for example
//!   `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`, which names
//!   the unit `cri-containerd-<id>.scope` inside the slice
//!   `kubepods-burstable-pod<uid>.slice`, whose parents are the slices named
//!   by its dash-separated prefixes. runc and Kata expand it the same way,
//!   which is what makes the path agree with the kubelet's own:
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`.
//!
//! The form is told apart by its shape, as Kata does (runc is told by a
//! flag, which a shim does not get): an absolute path is cgroupfs, a
//! relative one with two colons is systemd, anything else is refused.

use std::fmt;

/// A cgroup directory's name is a file name.
const NAME_MAX: usize = 255;
/// Leaves room under PATH_MAX (4096) for the mount point
/// (`/sys/fs/cgroup/cpu,cpuacct`) and the longest control file name.
pub const MAX_PATH_LEN: usize = 3968;
/// systemd's parent slice when the slice part is empty (runc's default).
const DEFAULT_SLICE: &str = "system.slice";
const SLICE_SUFFIX: &str = ".slice";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupPathError {
    #[error(
        "cgroupsPath {0:?} is relative: give an absolute cgroupfs path (/kubepods/burstable/pod<uid>/<id>) or a systemd path (slice:prefix:name)"
    )]
    Relative(String),
    #[error(
        "cgroupsPath {0:?} names the host's root cgroup: a pod needs a cgroup of its own below it"
    )]
    Root(String),
    #[error(
        "cgroupsPath {path:?} has the component {component:?}: cgroups are named by plain components, without . or .."
    )]
    DotComponent { path: String, component: String },
    #[error("cgroupsPath {0:?} contains a control character (a newline, a tab, NUL, ...)")]
    ControlCharacter(String),
    #[error(
        "cgroupsPath is {len} bytes long, more than the {MAX_PATH_LEN} a cgroup path may have here"
    )]
    TooLong { len: usize },
    #[error(
        "cgroupsPath {path:?} has a component of {len} bytes; a cgroup's name is at most {NAME_MAX} bytes"
    )]
    ComponentTooLong { path: String, len: usize },
    #[error(
        "systemd cgroupsPath {path:?}: {problem}; the form is slice:prefix:name, as in kubepods-burstable-pod<uid>.slice:cri-containerd:<id>"
    )]
    Systemd { path: String, problem: String },
}

/// Which form the path was given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// A validated cgroup path below a hierarchy's root: plain components, no
/// `.` or `..`, no control characters, and at least one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    components: Vec<String>,
    driver: Driver,
}

impl CgroupPath {
    /// Parses a spec's `linux.cgroupsPath`.
    pub fn parse(raw: &str) -> Result<Self, CgroupPathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(CgroupPathError::TooLong { len: raw.len() });
        }
        if raw.chars().any(char::is_control) {
            return Err(CgroupPathError::ControlCharacter(raw.to_owned()));
        }
        let (components, driver) = if raw.starts_with('/') {
            (cgroupfs_components(raw)?, Driver::Cgroupfs)
        } else if raw.matches(':').count() == 2 {
            (systemd_components(raw)?, Driver::Systemd)
        } else {
            return Err(CgroupPathError::Relative(raw.to_owned()));
        };
        let joined: usize = components.iter().map(|c| c.len() + 1).sum();
        if joined > MAX_PATH_LEN {
            return Err(CgroupPathError::TooLong { len: joined });
        }
        if let Some(long) = components.iter().find(|c| c.len() > NAME_MAX) {
            return Err(CgroupPathError::ComponentTooLong {
                path: raw.to_owned(),
                len: long.len(),
            });
        }
        Ok(CgroupPath { components, driver })
    }

    /// An absolute path made of components the caller vouches for (ids
    /// that are already plain names).
    pub fn from_components(components: &[&str]) -> Result<Self, CgroupPathError> {
        Self::parse(&format!("/{}", components.join("/")))
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

/// `/a//b/` is `/a/b` (runc cleans paths the same way); `.` and `..` are
/// refused rather than resolved, so a path cannot climb out of the parent
/// it names.
fn cgroupfs_components(raw: &str) -> Result<Vec<String>, CgroupPathError> {
    let mut components = Vec::new();
    for c in raw.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(CgroupPathError::DotComponent {
                path: raw.to_owned(),
                component: c.to_owned(),
            });
        }
        components.push(c.to_owned());
    }
    if components.is_empty() {
        return Err(CgroupPathError::Root(raw.to_owned()));
    }
    Ok(components)
}

fn systemd_components(raw: &str) -> Result<Vec<String>, CgroupPathError> {
    let bad = |problem: String| CgroupPathError::Systemd {
        path: raw.to_owned(),
        problem,
    };
    let mut parts = raw.splitn(3, ':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n)) => (s, p, n),
        _ => return Err(bad("it does not have three parts".to_owned())),
    };
    for (what, part) in [("slice", slice), ("prefix", prefix), ("name", name)] {
        if part.contains('/') {
            return Err(bad(format!("the {what} {part:?} contains a '/'")));
        }
        if part == "." || part == ".." {
            return Err(bad(format!("the {what} is {part:?}")));
        }
    }
    if name.is_empty() {
        return Err(bad("the name is empty".to_owned()));
    }
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let mut components = expand_slice(slice).map_err(bad)?;
    // A name that is itself a slice is a nested slice, not a scope.
    let unit = if name.ends_with(SLICE_SUFFIX) {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    components.push(unit);
    Ok(components)
}

/// `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the
/// root slice (no component).
fn expand_slice(slice: &str) -> Result<Vec<String>, String> {
    let Some(stem) = slice.strip_suffix(SLICE_SUFFIX).filter(|s| !s.is_empty()) else {
        return Err(format!(
            "the slice {slice:?} does not end in {SLICE_SUFFIX}"
        ));
    };
    if stem == "-" {
        return Ok(Vec::new());
    }
    let mut components = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(format!(
                "the slice {slice:?} has an empty dash-separated part (a leading, trailing or double '-')"
            ));
        }
        prefix.push_str(part);
        components.push(format!("{prefix}{SLICE_SUFFIX}"));
        prefix.push('-');
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> String {
        CgroupPath::parse(raw)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            .to_string()
    }

    #[test]
    fn cgroupfs_paths_are_taken_as_they_are() {
        assert_eq!(
            parsed("/kubepods/burstable/pod1234/abcd"),
            "/kubepods/burstable/pod1234/abcd"
        );
        assert_eq!(parsed("/default/c1"), "/default/c1");
        assert_eq!(parsed("//default///c1/"), "/default/c1");
        let p = CgroupPath::parse("/default/c1").expect("parse");
        assert_eq!(p.driver(), Driver::Cgroupfs);
        assert_eq!(p.components(), ["default", "c1"]);
    }

    #[test]
    fn systemd_paths_expand_as_runc_expands_them() {
        let p = CgroupPath::parse("kubepods-burstable-pod1234.slice:cri-containerd:abcd")
            .expect("parse");
        assert_eq!(p.driver(), Driver::Systemd);
        assert_eq!(
            p.to_string(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope"
        );
        assert_eq!(
            parsed("kubepods-pod1.slice:cri-containerd:x"),
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-x.scope"
        );
        assert_eq!(parsed(":docker:x"), "/system.slice/docker-x.scope");
        assert_eq!(parsed("-.slice:p:x"), "/p-x.scope");
        assert_eq!(parsed("a.slice::x"), "/a.slice/x.scope");
        assert_eq!(parsed("a.slice:p:b.slice"), "/a.slice/b.slice");
    }

    #[test]
    fn refuses_bad_paths_and_says_why() {
        let cases: &[(&str, &str)] = &[
            ("relative/path", "is relative"),
            ("", "is relative"),
            ("one:colon", "is relative"),
            ("/", "root cgroup"),
            ("///", "root cgroup"),
            ("/a/../b", "\"..\""),
            ("/a/./b", "\".\""),
            ("/..", "\"..\""),
            ("/a\nb", "control character"),
            ("/a\0b", "control character"),
            ("pod.slice:p:../x", "contains a '/'"),
            ("pod.slice:p:..", "the name is \"..\""),
            ("pod.slice:p:", "the name is empty"),
            ("pod:p:x", "does not end in .slice"),
            (".slice:p:x", "does not end in .slice"),
            ("a--b.slice:p:x", "empty dash-separated part"),
            ("-a.slice:p:x", "empty dash-separated part"),
            ("a/b.slice:p:x", "contains a '/'"),
        ];
        for (raw, why) in cases {
            let err = CgroupPath::parse(raw).expect_err(raw);
            assert!(err.to_string().contains(why), "{raw:?}: {err}");
        }
    }

    #[test]
    fn refuses_paths_too_long_for_the_kernel() {
        let long_name = format!("/pods/{}", "x".repeat(NAME_MAX + 1));
        let err = CgroupPath::parse(&long_name).expect_err("long name");
        assert!(
            matches!(err, CgroupPathError::ComponentTooLong { len: 256, .. }),
            "{err}"
        );
        assert!(CgroupPath::parse(&format!("/pods/{}", "x".repeat(NAME_MAX))).is_ok());

        let deep = "/abcdefgh".repeat(MAX_PATH_LEN / 9 + 1);
        let err = CgroupPath::parse(&deep).expect_err("long path");
        assert!(matches!(err, CgroupPathError::TooLong { .. }), "{err}");
        assert!(err.to_string().contains("bytes long"), "{err}");

        // The systemd expansion repeats the prefixes: its result is checked.
        let parts: Vec<String> = (0..40).map(|i| format!("part{i:03}")).collect();
        let slice = format!("{}.slice:p:x", parts.join("-"));
        assert!(slice.len() < MAX_PATH_LEN);
        let err = CgroupPath::parse(&slice).expect_err("long expansion");
        assert!(matches!(err, CgroupPathError::TooLong { .. }), "{err}");
    }
}
