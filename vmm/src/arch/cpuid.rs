//! CPUID the guest sees: what KVM supports, with per-vCPU topology.
//!
//! Leaf 0xd (XSAVE) passes through as KVM reports it: KVM rewrites the
//! leaf's size from the guest's XCR0 on every XSETBV, so it matches the
//! features the guest enabled. In the nested test host it does not:
//! QEMU's emulated SVM (7.2) has no XSETBV intercept, so the L1 KVM never
//! sees the guest's XCR0, reports the x87/SSE size (576) against the AVX
//! layout (832), and Linux prints "XSAVE consistency problem" and falls
//! back to FXSAVE; QEMU's own microvm guest does the same there. Hiding
//! AVX here would not make that host right: its KVM still loads XCR0 =
//! x87 into the guest on every entry, and a guest that kept XSAVE would
//! then lose SSE state, which the FXSAVE fallback avoids.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EBX_APIC_ID_SHIFT: u32 = 24;
const EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const EDX_HTT: u32 = 1 << 28;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("KVM reported more CPUID entries than a vCPU accepts")]
pub struct CpuidError;

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU
/// `cpu_id` of `cpu_count`: APIC IDs, the hypervisor bit, and a flat
/// topology of `cpu_count` single-threaded cores in one package.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) -> Result<(), CpuidError> {
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_id) << EBX_APIC_ID_SHIFT)
                    | (u32::from(cpu_count) << EBX_LOGICAL_COUNT_SHIFT);
                entry.ecx |= ECX_HYPERVISOR;
                if cpu_count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_AMD_EXT_APIC_ID => {
                entry.eax = u32::from(cpu_id);
                entry.ebx &= !0xff; // compute unit id
                entry.ecx &= !0x7ff; // node id, nodes per processor
            }
            _ => {}
        }
    }
    // KVM passes on whatever subleaves of the extended topology leaf its
    // host has, which can be just the SMT level (nested hosts do this).
    // Linux then sees each vCPU as its own package and, on AMD, declares
    // the TSCs unsynchronized. So palisade writes the whole leaf itself,
    // and drops leaf 0x1f rather than keep a second, contradicting copy.
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function != LEAF_EXT_TOPOLOGY && e.function != LEAF_V2_EXT_TOPOLOGY)
        .copied()
        .collect();
    entries.extend(extended_topology(cpu_id, cpu_count));
    *cpuid = CpuId::from_entries(&entries).map_err(|_| CpuidError)?;
    Ok(())
}

/// Advertises the local APIC's TSC-deadline mode, which KVM emulates but
/// leaves out of KVM_GET_SUPPORTED_CPUID (userspace sets the bit when
/// KVM_CAP_TSC_DEADLINE_TIMER says so). Without it Linux calibrates the
/// APIC timer against the PIT at boot: about 200 ms on hardware, and under
/// emulation the check that follows can fail ("APIC timer disabled due to
/// verification failure"), leaving an SMP guest without per-CPU timers,
/// every CPU's tick broadcast from the PIT by IPI.
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Leaf 0xb: an SMT level of one thread, a core level of `cpu_count`
/// cores, and the terminating invalid level.
fn extended_topology(cpu_id: u8, cpu_count: u8) -> [kvm_cpuid_entry2; 3] {
    let cores_shift = u32::from(cpu_count).next_power_of_two().trailing_zeros();
    let level = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: LEAF_EXT_TOPOLOGY,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: u32::from(cpu_id),
        ..Default::default()
    };
    [
        level(0, 0, 1, TOPOLOGY_LEVEL_SMT),
        level(1, cores_shift, u32::from(cpu_count), TOPOLOGY_LEVEL_CORE),
        level(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn apic_id_and_topology_are_per_vcpu() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            // A host that reports only the SMT level of leaf 0xb.
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ebx: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x1f,
                index: 0,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        filter_cpuid(&mut cpuid, 3, 4).expect("filter");
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);

        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 3));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (2, 4, (2 << 8) | 1, 3)
        );
        let end = find(&cpuid, 0xb, 2);
        assert_eq!(leaf1.ecx & ECX_TSC_DEADLINE, 0, "only when asked for");
        assert_eq!(end.ecx >> 8, 0, "terminating level is invalid");
        assert!(cpuid.as_slice().iter().all(|e| e.function != 0x1f));
    }

    #[test]
    fn tsc_deadline_is_set_in_leaf_1_only() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: 0x1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        enable_tsc_deadline(&mut cpuid);
        assert_eq!(find(&cpuid, 1, 0).ecx, 0x1 | ECX_TSC_DEADLINE);
        assert_eq!(find(&cpuid, 7, 0).ecx, 0);
    }
}
