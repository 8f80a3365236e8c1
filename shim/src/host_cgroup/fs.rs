//! The four operations the cgroup code needs from a cgroup filesystem.
//! They are a trait so the logic above them runs in unit tests against a
//! fake tree in a temporary directory, which behaves as cgroupfs does
//! where it matters (control files appear with the directory, writes to
//! `cgroup.procs` move a process, `rmdir` of a busy cgroup fails).

use std::io::{self, Write};
use std::path::Path;

pub trait CgroupFs {
    /// Creates one cgroup directory; `AlreadyExists` if it is there.
    fn mkdir(&self, dir: &Path) -> io::Result<()>;
    /// Removes one (empty) cgroup directory.
    fn rmdir(&self, dir: &Path) -> io::Result<()>;
    fn read(&self, file: &Path) -> io::Result<String>;
    /// Writes `value` to an existing control file in one `write(2)`:
    /// cgroupfs takes each write as one command.
    fn write(&self, file: &Path, value: &str) -> io::Result<()>;
}

/// The real cgroup filesystems of this host.
pub struct Kernel;

impl CgroupFs for Kernel {
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir(dir)
    }

    fn rmdir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }

    fn read(&self, file: &Path) -> io::Result<String> {
        std::fs::read_to_string(file)
    }

    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        // Never creates: a missing control file means a missing
        // controller, which must not become a regular file.
        let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
        f.write_all(value.as_bytes())
    }
}

impl<T: CgroupFs + ?Sized> CgroupFs for &T {
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        (**self).mkdir(dir)
    }

    fn rmdir(&self, dir: &Path) -> io::Result<()> {
        (**self).rmdir(dir)
    }

    fn read(&self, file: &Path) -> io::Result<String> {
        (**self).read(file)
    }

    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        (**self).write(file, value)
    }
}
