//! Guest RAM: anonymous, private, MAP_NORESERVE mappings, so the host only
//! pays for pages the guest actually touches.

use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::arch::layout::ram_regions;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Map { mib: u32, reason: String },
    #[error("KVM refused guest memory slot {slot}: {source}")]
    Register {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

pub fn create_guest_memory(memory_mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = u64::from(memory_mib) << 20;
    let ranges: Vec<(vm_memory::GuestAddress, usize)> = ram_regions(bytes)
        .into_iter()
        .map(|(start, len)| (vm_memory::GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map {
        mib: memory_mib,
        reason: e.to_string(),
    })
}

/// Tells KVM where each region lives in this process.
pub fn register_with_kvm(vm: &kvm_ioctls::VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Map {
                mib: 0,
                reason: e.to_string(),
            })?;
        let kvm_region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping is owned by `mem`, which outlives the VM
        // (both live until the VMM tears down).
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}
