//! The vCPU threads' allowlist: KVM_RUN, the vCPU state reads that
//! describe a guest crash, and what device emulation on a vCPU exit does.
//!
//! Port and MMIO exits are emulated on the vCPU thread, so this list also
//! holds what those devices do there: the serial console writes (and
//! rotates) its log file; interrupts and the exit event are eventfd
//! writes; and a guest that resets a virtio device through its MMIO
//! registers has the device close what it held for the old driver (vsock
//! connections, virtio-fs inodes) and virtio-fs reopen its root
//! (`PassthroughFs::import`: an `O_PATH` open, a stat, `umask`). The
//! filter cannot tell those paths apart from the rest of the thread, so
//! the vCPU thread can open files: opening is what the console log needs.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events, KVMIO};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr};

use super::rules::{when, Allow, Arg};
use super::{Rules, SeccompError};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);

/// The ioctl requests a vCPU thread makes, on its own vCPU fd.
pub fn ioctls() -> [u64; 4] {
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_GET_SREGS(),
        KVM_GET_VCPU_EVENTS(),
    ]
    .map(u64::from)
}

pub fn rules() -> Result<Rules, SeccompError> {
    // The vCPU kick (SIGRTMIN) only interrupts KVM_RUN: its handler makes
    // no syscall, so nothing else is needed for it.
    Ok(Allow::default()
        .any(&[
            // The console log: emptied when a rename fails.
            // The console log's rotation (`console.log` → `console.log.1`).
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_ftruncate,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_newfstatat,
            // virtio-fs's root, reopened after a device reset.
            libc::SYS_umask,
            // vmm-sys-util's EventFd reads to drain.
            libc::SYS_read,
        ])
        // The console log, opened again write-only on rotation, and
        // virtio-fs's root, an O_PATH fd: never a file opened to be read.
        .with(
            libc::SYS_openat,
            vec![
                when(&[Arg::Masked(
                    2,
                    libc::O_ACCMODE as u64,
                    libc::O_WRONLY as u64,
                )])?,
                when(&[Arg::Masked(2, libc::O_PATH as u64, libc::O_PATH as u64)])?,
            ],
        )
        .with_arg_in(libc::SYS_ioctl, 1, &ioctls())?
        .build())
}
