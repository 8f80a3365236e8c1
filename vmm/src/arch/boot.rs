//! Loading the guest: the ELF `vmlinux` (PVH entry), the initramfs, the
//! command line, and the PVH start info with its memory map.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::*;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {source} (palisade needs an uncompressed ELF vmlinux)")]
    LoadKernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} has no PVH entry point: build it with CONFIG_PVH=y")]
    NoPvhEntry(String),
    #[error("cannot read initramfs {path}: {source}")]
    ReadInitrd {
        path: String,
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory above the kernel: raise memory_mib")]
    InitrdTooBig { path: String, size: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot information into guest memory failed: {0}")]
    WriteBootInfo(String),
}

/// Where the loaded pieces ended up.
pub struct LoadedGuest {
    pub entry: GuestAddress,
    kernel_end: u64,
}

/// Loads the ELF kernel at its own physical addresses.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedGuest, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: shown.clone(),
        source,
    })?;
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::LoadKernel {
                path: shown.clone(),
                source,
            }
        })?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(BootError::NoPvhEntry(shown)),
    };
    Ok(LoadedGuest {
        entry,
        kernel_end: result.kernel_end,
    })
}

/// Loads the initramfs at the top of low memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    guest: &LoadedGuest,
) -> Result<(GuestAddress, u64), BootError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| BootError::ReadInitrd {
        path: shown.clone(),
        source,
    })?;
    let size = bytes.len() as u64;
    let low_end = mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    let too_big = || BootError::InitrdTooBig {
        path: shown.clone(),
        size,
    };
    let start = low_end.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if start < guest.kernel_end {
        return Err(too_big());
    }
    vm_memory::Bytes::write_slice(mem, &bytes, GuestAddress(start))
        .map_err(|e| BootError::WriteBootInfo(format!("initramfs: {e}")))?;
    Ok((GuestAddress(start), size))
}

/// Builds the full command line: what the VMM's devices need, then the
/// user's parameters.
pub fn build_cmdline(
    base: &str,
    user: &str,
    virtio_mmio: &[(u64, u32)],
) -> Result<Cmdline, BootError> {
    let err = |e: linux_loader::cmdline::Error| BootError::Cmdline(e.to_string());
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(err)?;
    cmdline.insert_str(base).map_err(err)?;
    for (i, (addr, irq)) in virtio_mmio.iter().enumerate() {
        cmdline
            .add_virtio_mmio_device(MMIO_DEVICE_SIZE, GuestAddress(*addr), *irq, Some(i as u32))
            .map_err(err)?;
    }
    if !user.trim().is_empty() {
        cmdline.insert_str(user.trim()).map_err(err)?;
    }
    Ok(cmdline)
}

/// The PVH memory map: RAM, the reserved EBDA with the MP table, RAM from
/// 1 MiB, and RAM above 4 GiB when memory crosses the MMIO gap.
fn memory_map(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the command line and the PVH start info (memory map, initramfs
/// as module 0).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let cstring = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let bytes = cstring.as_bytes_with_nul();
    vm_memory::Bytes::write_slice(mem, bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::WriteBootInfo(format!("command line: {e}")))?;

    let map = memory_map(mem);
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|(addr, size)| hvm_modlist_entry {
            paddr: addr.raw_value(),
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&map, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| BootError::WriteBootInfo(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_reserves_the_ebda_and_skips_the_gap() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("mem");
        let map = memory_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(
            (map[0].addr, map[0].size, map[0].type_),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!(map[1].type_, E820_RESERVED);
        assert_eq!(
            (map[2].addr, map[2].addr + map[2].size),
            (HIMEM_START, 64 << 20)
        );
    }

    #[test]
    fn cmdline_lists_devices_then_user_params() {
        let c =
            build_cmdline("console=ttyS0", "quiet", &[(VIRTIO_MMIO_START, 5)]).expect("cmdline");
        let s = c
            .as_cstring()
            .expect("cstring")
            .into_string()
            .expect("utf8");
        assert!(
            s.starts_with("console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"),
            "{s}"
        );
        assert!(s.ends_with(" quiet"), "{s}");
    }

    #[test]
    fn oversized_cmdline_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build_cmdline("console=ttyS0", &long, &[]).is_err());
    }
}
