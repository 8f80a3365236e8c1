//! Guest physical memory layout (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT for the PVH entry (32-bit protected mode)
//! 0x0000_6000  PVH hvm_start_info, module list right after
//! 0x0000_7000  PVH memory map (e820-style entries)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (in the EBDA, where Linux scans for it)
//! 0x0010_0000  RAM from 1 MiB; the kernel loads at its ELF addresses
//! 0xc000_0000  MMIO gap up to 4 GiB: virtio-mmio devices, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM beyond 3 GiB continues here
//! ```

/// Start of the GDT used by the PVH entry.
pub const GDT_START: u64 = 0x500;
/// PVH start info (hvm_start_info).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Linux's x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// End of usable low memory: the EBDA starts here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the MP table goes (start of the EBDA, scanned by Linux).
pub const MPTABLE_START: u64 = EBDA_START;
/// 1 MiB: start of high memory, where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device gets [`MMIO_DEVICE_SIZE`].
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// IOAPIC and local APIC MMIO addresses.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// TSS needs three pages the guest never uses, inside the MMIO gap.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Legacy IRQs: the serial console; virtio-mmio devices use the ones after.
pub const SERIAL_IRQ: u32 = 4;
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// IOAPIC pins available (KVM's in-kernel IOAPIC has 24).
pub const IOAPIC_PINS: u32 = 24;

/// Guest RAM as (start, size) regions around the MMIO gap.
pub fn ram_regions(memory_bytes: u64) -> Vec<(u64, u64)> {
    let low = memory_bytes.min(MMIO_GAP_START);
    let mut regions = vec![(0, low)];
    if memory_bytes > MMIO_GAP_START {
        regions.push((MMIO_GAP_END, memory_bytes - MMIO_GAP_START));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
