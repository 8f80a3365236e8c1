//! Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI, this is how Linux learns how many CPUs there are, where the
//! IOAPIC is, and how ISA IRQs reach it. The table is small and fixed: one
//! processor entry per vCPU, one ISA bus, one IOAPIC, identity-mapped IRQs.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR};

/// Most vCPUs the table (and palisade) supports.
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs requested, the MP table supports 1 to {MAX_VCPUS}")]
    TooManyCpus(u8),
    #[error("the MP table does not fit in guest memory at {0:#x}")]
    NotEnoughMemory(u64),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const CPU_FEATURE_FPU: u32 = 1 << 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the table bytes for a table placed at `base`.
fn build(base: u64, vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let ioapic_id = vcpus; // APIC IDs 0..vcpus are the CPUs.

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = 1 | if cpu == 0 { 2 } else { 0 }; // enabled, bootstrap
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // Every ISA IRQ maps 1:1 to an IOAPIC pin as a normal interrupt. KVM's
    // in-kernel IOAPIC routes GSI n to pin n; declaring pin 0 as ExtINT
    // instead leaves IRQ 0 unmapped and Linux's timer check dereferences
    // its missing irq data.
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // LINT0 takes the PIC (ExtINT), LINT1 the NMI, on every local APIC.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOATING_LEN as u64;
    let table_len = (HEADER_LEN + entries.len()) as u16;

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"PALISADE");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, patched below
    floating.extend_from_slice(&[0u8; 5]); // feature bytes: table present
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Writes the MP table for `vcpus` CPUs at `base`.
pub fn setup_mptable<M: GuestMemory>(mem: &M, base: u64, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(base, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(base))
        .map_err(|_| MptableError::NotEnoughMemory(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_valid_and_entries_counted() {
        let t = build(0x9fc00, 4).expect("table");
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count as u32, 4 + 1 + 1 + IOAPIC_PINS + 2);
        // The pointer in the floating structure points just past it.
        assert_eq!(u32::from_le_bytes([t[4], t[5], t[6], t[7]]), 0x9fc00 + 16);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(build(0, 0).is_err());
        assert!(build(0, MAX_VCPUS + 1).is_err());
        assert!(build(0, MAX_VCPUS).is_ok());
    }
}
