//! KVM state: the VM, its memory, its vCPUs.

pub mod memory;
pub mod vcpu;
pub mod vm;
