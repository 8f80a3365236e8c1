//! Opening KVM and creating the VM with its in-kernel interrupt chips.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::arch::layout::KVM_TSS_ADDRESS;

const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "cannot open {path}: {source} (is KVM enabled, and may this user open it read-write?)"
    )]
    OpenKvm {
        path: String,
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version {0}, palisade needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("KVM lacks {0:?}, which palisade needs")]
    MissingCapability(Cap),
    #[error("KVM could not {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

const REQUIRED_CAPS: [Cap; 7] = [
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::ExtCpuid,
];

const KVM_PATH: &std::ffi::CStr = c"/dev/kvm";

pub fn open_kvm() -> Result<Kvm, VmError> {
    let path = KVM_PATH.to_string_lossy().into_owned();
    let kvm = Kvm::new_with_path(KVM_PATH).map_err(|source| VmError::OpenKvm { path, source })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmError::ApiVersion(version));
    }
    if let Some(cap) = REQUIRED_CAPS.into_iter().find(|c| !kvm.check_extension(*c)) {
        return Err(VmError::MissingCapability(cap));
    }
    Ok(kvm)
}

/// A VM with the in-kernel PIC, IOAPIC, local APICs and PIT.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let err = |what| move |source| VmError::Kvm { what, source };
    let vm = kvm.create_vm().map_err(err("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(err("create the interrupt controllers"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(err("create the PIT"))?;
    Ok(vm)
}
