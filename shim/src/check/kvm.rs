//! Is there a KVM here that boots palisade's guest kernel?

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::report::Finding;

/// The API version every KVM since Linux 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;
/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;

/// What kind of KVM the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted KVM (Intel VT-x or AMD-V): boots standard guests.
    Hardware(VirtExtension),
    /// PVM (`kvm_pvm`): a paging-based hypervisor without hardware
    /// virtualization that boots only PVM-enlightened guest kernels.
    Pvm,
    /// `/dev/kvm` exists but the CPU has neither vmx nor svm: some other
    /// software KVM, no better than PVM for standard guests.
    NoHardwareVirt,
    /// No `/dev/kvm`.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtExtension {
    Vmx,
    Svm,
}

impl KvmKind {
    /// Name in `palisade check --json`.
    pub fn id(self) -> &'static str {
        match self {
            KvmKind::Hardware(VirtExtension::Vmx) => "hardware-vmx",
            KvmKind::Hardware(VirtExtension::Svm) => "hardware-svm",
            KvmKind::Pvm => "pvm",
            KvmKind::NoHardwareVirt => "no-hardware-virt",
            KvmKind::Absent => "absent",
        }
    }

    pub fn boots_standard_guests(self) -> bool {
        matches!(self, KvmKind::Hardware(_))
    }

    /// Whether `--force` may try a boot anyway: a KVM is there, it just
    /// cannot be expected to boot our kernel.
    pub fn forceable(self) -> bool {
        matches!(self, KvmKind::Pvm | KvmKind::NoHardwareVirt)
    }
}

/// Decides the kind from what the host shows. The PVM module wins over CPU
/// flags: when it is loaded, it is what serves `/dev/kvm`.
pub fn classify(kvm_device_present: bool, pvm_module_loaded: bool, cpuinfo: &str) -> KvmKind {
    if !kvm_device_present {
        return KvmKind::Absent;
    }
    if pvm_module_loaded {
        return KvmKind::Pvm;
    }
    if cpu_has_flag(cpuinfo, "vmx") {
        KvmKind::Hardware(VirtExtension::Vmx)
    } else if cpu_has_flag(cpuinfo, "svm") {
        KvmKind::Hardware(VirtExtension::Svm)
    } else {
        KvmKind::NoHardwareVirt
    }
}

/// Whether the first CPU's `flags` line in /proc/cpuinfo lists `flag`.
pub fn cpu_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
}

/// Where the host facts are read from; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub kvm_device: PathBuf,
    pub sys_module: PathBuf,
    pub cpuinfo: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            kvm_device: PathBuf::from("/dev/kvm"),
            sys_module: PathBuf::from("/sys/module"),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
        }
    }
}

const FIX_NO_KVM: &str = "load KVM (`modprobe kvm_intel` or `modprobe kvm_amd`) and enable virtualization (VT-x/AMD-V) in the firmware; in a cloud VM, choose an instance type with nested virtualization.";

/// Checks `/dev/kvm` and the kind of KVM behind it; also returns the kind.
pub fn check(paths: &HostPaths) -> (Vec<Finding>, KvmKind) {
    let dev = paths.kvm_device.display();
    let mut findings = Vec::new();

    let present = match std::fs::metadata(&paths.kvm_device) {
        Ok(meta) if meta.file_type().is_char_device() => {
            findings.push(Finding::ok("kvm_device", format!("{dev} exists")));
            true
        }
        Ok(_) => {
            findings.push(Finding::fail(
                "kvm_device",
                format!("{dev} exists but is not a character device"),
                format!("{dev} should be the KVM device node (char 10:232): remove whatever is there and reload the kvm module."),
            ));
            false
        }
        Err(e) => {
            findings.push(Finding::fail(
                "kvm_device",
                format!("{dev} is missing ({e})"),
                FIX_NO_KVM,
            ));
            false
        }
    };

    if present {
        match OpenOptions::new().read(true).write(true).open(&paths.kvm_device) {
            Ok(file) => {
                findings.push(Finding::ok("kvm_open", format!("{dev} opens read-write")));
                findings.push(api_version_finding(&dev.to_string(), api_version(&file)));
            }
            Err(e) => findings.push(Finding::fail(
                "kvm_open",
                format!("cannot open {dev} read-write: {e}"),
                format!("run as root, or add this user to the group that owns {dev} (usually `kvm`: `usermod -aG kvm USER`, then log in again)."),
            )),
        }
    }

    let pvm_loaded = paths.sys_module.join("kvm_pvm").exists();
    let cpuinfo = std::fs::read_to_string(&paths.cpuinfo).unwrap_or_default();
    let kind = classify(present, pvm_loaded, &cpuinfo);
    findings.push(kind_finding(kind));
    (findings, kind)
}

fn api_version(file: &std::fs::File) -> io::Result<i32> {
    // KVM refuses (EINVAL) a non-zero argument here, so pass an explicit 0
    // rather than whatever a missing variadic argument leaves in the register.
    // SAFETY: KVM_GET_API_VERSION reads no memory and only returns a value.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(version)
    }
}

fn api_version_finding(dev: &str, version: io::Result<i32>) -> Finding {
    match version {
        Ok(KVM_API_VERSION) => Finding::ok(
            "kvm_api_version",
            format!("KVM API version {KVM_API_VERSION}"),
        ),
        Ok(other) => Finding::fail(
            "kvm_api_version",
            format!("KVM API version {other}, palisade needs {KVM_API_VERSION}"),
            format!("{dev} is not a standard KVM; use a host kernel with upstream KVM."),
        ),
        Err(e) => Finding::fail(
            "kvm_api_version",
            format!("KVM_GET_API_VERSION on {dev} failed: {e}"),
            format!(
                "{dev} does not answer KVM ioctls; check that it is the KVM device (char 10:232)."
            ),
        ),
    }
}

/// The explanation for a KVM that cannot boot standard guests.
const FIX_SOFTWARE_KVM: &str = "Only PVM-enlightened guest kernels boot on it; palisade's standard guest kernel cannot (it hangs right after its setup code). Run palisade on bare metal or in a VM with nested virtualization (`vmx` or `svm` in /proc/cpuinfo, no kvm_pvm module), or, for testing, inside the repository's nested KVM test host (see docs/testing.md). `palisade check --force` tries a boot anyway and gives up at the timeout.";

fn kind_finding(kind: KvmKind) -> Finding {
    match kind {
        KvmKind::Hardware(VirtExtension::Vmx) => {
            Finding::ok("kvm_kind", "hardware KVM (Intel VT-x: vmx)")
        }
        KvmKind::Hardware(VirtExtension::Svm) => {
            Finding::ok("kvm_kind", "hardware KVM (AMD-V: svm)")
        }
        KvmKind::Pvm => Finding::fail(
            "kvm_kind",
            "KVM is PVM (kvm_pvm): standard guests cannot boot on this host",
            format!("This host's /dev/kvm is PVM (the kvm_pvm module), a paging-based hypervisor for machines without hardware virtualization. {FIX_SOFTWARE_KVM}"),
        ),
        KvmKind::NoHardwareVirt => Finding::fail(
            "kvm_kind",
            "KVM without hardware virtualization (the CPU has no vmx/svm flag): standard guests cannot boot on this host",
            format!("This host's /dev/kvm exists, but the CPU offers neither Intel VT-x (vmx) nor AMD-V (svm), so it is a software KVM such as PVM. {FIX_SOFTWARE_KVM}"),
        ),
        KvmKind::Absent => Finding::fail("kvm_kind", "no KVM on this host", FIX_NO_KVM),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse svm extapic\nbugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: fpu\n";
    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vmx ept\n";
    // What this project's PVM hosts show: a hypervisor flag, no vmx/svm.
    const PVM_GUEST: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme hypervisor lahf_lm cmp_legacy\n";

    #[test]
    fn classifies_hosts() {
        assert_eq!(
            classify(true, false, AMD),
            KvmKind::Hardware(VirtExtension::Svm)
        );
        assert_eq!(
            classify(true, false, INTEL),
            KvmKind::Hardware(VirtExtension::Vmx)
        );
        assert_eq!(classify(true, true, PVM_GUEST), KvmKind::Pvm);
        // The module decides even if the CPU flags look fine.
        assert_eq!(classify(true, true, AMD), KvmKind::Pvm);
        assert_eq!(classify(true, false, PVM_GUEST), KvmKind::NoHardwareVirt);
        assert_eq!(classify(false, false, AMD), KvmKind::Absent);
        assert_eq!(classify(true, false, ""), KvmKind::NoHardwareVirt);
    }

    #[test]
    fn flag_matching_is_exact_and_uses_the_flags_line() {
        assert!(!cpu_has_flag("flags\t: svmx\n", "svm"));
        assert!(!cpu_has_flag(
            "model name\t: svm vmx\nflags\t: fpu\n",
            "svm"
        ));
        assert!(cpu_has_flag("flags : a svm\n", "svm"));
    }

    #[test]
    fn kinds_say_what_they_allow() {
        assert!(KvmKind::Hardware(VirtExtension::Svm).boots_standard_guests());
        assert!(!KvmKind::Pvm.boots_standard_guests());
        assert!(KvmKind::Pvm.forceable());
        assert!(!KvmKind::Absent.forceable());
    }

    #[test]
    fn reports_a_pvm_host_from_fake_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).expect("mkdir");
        std::fs::write(dir.path().join("cpuinfo"), PVM_GUEST).expect("write");
        let paths = HostPaths {
            kvm_device: dir.path().join("kvm"),
            sys_module: dir.path().join("sys/module"),
            cpuinfo: dir.path().join("cpuinfo"),
        };
        // No device node: absent wins over the module.
        let (findings, kind) = check(&paths);
        assert_eq!(kind, KvmKind::Absent);
        assert!(findings.iter().any(|f| f.id == "kvm_device" && !f.ok));

        // A regular file is not a device.
        std::fs::write(&paths.kvm_device, b"").expect("write");
        let (findings, _) = check(&paths);
        assert!(
            findings[0].message.contains("not a character device"),
            "{:?}",
            findings[0]
        );
    }

    #[test]
    fn pvm_finding_explains_the_way_out() {
        let finding = kind_finding(KvmKind::Pvm);
        assert!(!finding.ok);
        assert!(finding.message.contains("standard guests cannot boot"));
        let fix = finding.fix.expect("fix");
        assert!(fix.contains("nested virtualization"));
        assert!(fix.contains("test host"));
        assert!(fix.contains("--force"));
    }

    #[test]
    fn api_version_findings() {
        assert!(api_version_finding("/dev/kvm", Ok(12)).ok);
        assert!(!api_version_finding("/dev/kvm", Ok(11)).ok);
        assert!(
            !api_version_finding("/dev/kvm", Err(io::Error::from_raw_os_error(libc::ENOTTY))).ok
        );
    }

    #[test]
    fn real_host_probe_does_not_panic() {
        let _ = check(&HostPaths::default());
    }
}
