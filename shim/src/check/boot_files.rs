//! Are the configured guest kernel and initrd usable? Looks at their
//! headers only; nothing is booted here.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::report::Finding;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_NOTE: u32 = 4;
const ELF64_HEADER_LEN: usize = 64;
const ELF64_PHDR_LEN: usize = 56;
/// The Xen note that carries the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Real kernels have a handful of program headers and small note segments;
/// the caps keep a hostile file from making us read much.
const MAX_PHDRS: usize = 64;
const MAX_NOTE_SEGMENT: u64 = 1 << 20;

/// Why a kernel image cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    #[error("cannot read it")]
    Io(#[from] io::Error),
    #[error("it is a bzImage (the compressed image boot loaders use)")]
    BzImage,
    #[error("it is a {0}-compressed file, not an ELF image")]
    Compressed(&'static str),
    #[error("it is not an ELF file")]
    NotElf,
    #[error("it is a 32-bit or big-endian ELF file")]
    NotElf64,
    #[error("it is an ELF file for machine {0}, not x86-64")]
    WrongMachine(u16),
    #[error("its ELF headers are truncated or inconsistent")]
    Malformed,
    #[error("it has no PVH entry point (no XEN_ELFNOTE_PHYS32_ENTRY note)")]
    NoPvhNote,
}

/// What was learnt from a bootable kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelImage {
    pub pvh_entry: u64,
}

/// Checks the configured kernel.
pub fn check_kernel(path: &Path) -> Finding {
    let shown = path.display();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Finding::fail(
                "kernel",
                format!("kernel {shown} not found"),
                format!("install palisade's guest kernel at {shown} (build it with guest-kernel/), or set [hypervisor] kernel in the configuration to where it is."),
            )
        }
        Err(e) => {
            return Finding::fail(
                "kernel",
                format!("kernel {shown} cannot be opened: {e}"),
                format!("make {shown} a readable file."),
            )
        }
    };
    match inspect_kernel(file) {
        Ok(image) => Finding::ok(
            "kernel",
            format!("kernel {shown}: x86-64 ELF with PVH entry point {:#x}", image.pvh_entry),
        ),
        Err(e @ (KernelImageError::BzImage | KernelImageError::Compressed(_))) => Finding::fail(
            "kernel",
            format!("kernel {shown}: {e}"),
            "palisade boots the uncompressed `vmlinux` ELF file from the top of the kernel build tree (built with CONFIG_PVH=y), not a bzImage/vmlinuz; see guest-kernel/.",
        ),
        Err(KernelImageError::NoPvhNote) => Finding::fail(
            "kernel",
            format!("kernel {shown}: {}", KernelImageError::NoPvhNote),
            "rebuild the guest kernel with CONFIG_PVH=y (guest-kernel/ does this).",
        ),
        Err(e) => Finding::fail(
            "kernel",
            format!("kernel {shown}: {}", crate::error_chain(&e)),
            "point [hypervisor] kernel at palisade's guest `vmlinux` (an x86-64 ELF file built with CONFIG_PVH=y).",
        ),
    }
}

/// Reads the ELF header, program headers and note segments of `file`.
pub fn inspect_kernel(mut file: impl Read + Seek) -> Result<KernelImage, KernelImageError> {
    let mut header = [0u8; ELF64_HEADER_LEN];
    let got = read_up_to(&mut file, &mut header)?;
    if got >= 4 && header[..4] != ELF_MAGIC[..] {
        if let Some(format) = compression(&header[..got]) {
            return Err(KernelImageError::Compressed(format));
        }
        if is_bzimage(&mut file)? {
            return Err(KernelImageError::BzImage);
        }
        return Err(KernelImageError::NotElf);
    }
    if got < 4 {
        return Err(KernelImageError::NotElf);
    }
    if got < ELF64_HEADER_LEN || header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
        return Err(KernelImageError::NotElf64);
    }
    let machine = u16_at(&header, 18);
    if machine != EM_X86_64 {
        return Err(KernelImageError::WrongMachine(machine));
    }
    let phoff = u64_at(&header, 32);
    let phentsize = usize::from(u16_at(&header, 54));
    let phnum = usize::from(u16_at(&header, 56));
    if phentsize != ELF64_PHDR_LEN || phnum == 0 || phnum > MAX_PHDRS {
        return Err(KernelImageError::Malformed);
    }

    let mut phdrs = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut phdrs).map_err(truncated)?;
    for phdr in phdrs.chunks_exact(ELF64_PHDR_LEN) {
        if u32_at(phdr, 0) != PT_NOTE {
            continue;
        }
        let offset = u64_at(phdr, 8);
        let size = u64_at(phdr, 32);
        if size > MAX_NOTE_SEGMENT {
            return Err(KernelImageError::Malformed);
        }
        let mut notes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut notes).map_err(truncated)?;
        if let Some(entry) = find_pvh_entry(&notes) {
            return Ok(KernelImage { pvh_entry: entry });
        }
    }
    Err(KernelImageError::NoPvhNote)
}

/// Walks ELF notes (`namesz`, `descsz`, `type`, name, desc; each padded to
/// 4 bytes) looking for Xen's PHYS32_ENTRY.
fn find_pvh_entry(mut notes: &[u8]) -> Option<u64> {
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        let name_start: usize = 12;
        let desc_start = name_start.checked_add(namesz.checked_next_multiple_of(4)?)?;
        let next = desc_start.checked_add(descsz.checked_next_multiple_of(4)?)?;
        if next > notes.len() || desc_start + descsz > notes.len() {
            return None;
        }
        let name = &notes[name_start..name_start + namesz];
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            let desc = &notes[desc_start..desc_start + descsz];
            return match descsz {
                4 => Some(u64::from(u32_at(desc, 0))),
                8 => Some(u64_at(desc, 0)),
                _ => None,
            };
        }
        notes = &notes[next..];
    }
    None
}

/// The x86 boot protocol puts "HdrS" at offset 0x202 of a bzImage.
fn is_bzimage(file: &mut (impl Read + Seek)) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))?;
    Ok(read_up_to(file, &mut magic)? == 4 && &magic == b"HdrS")
}

/// Names the compression format `header` starts with, if any.
fn compression(header: &[u8]) -> Option<&'static str> {
    const FORMATS: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"BZh", "bzip2"),
        (b"\x89LZO", "lzo"),
        (b"\x5d\x00\x00", "lzma"),
    ];
    FORMATS
        .iter()
        .find(|(magic, _)| header.starts_with(magic))
        .map(|(_, name)| *name)
}

/// Checks the configured initrd: present, non-empty, a cpio archive
/// (compressed or not). An unrecognised format would make the guest kernel
/// quietly ignore it and panic later for want of an init.
pub fn check_initrd(path: &Path) -> Finding {
    let shown = path.display();
    let fix_missing = format!("build the agent initramfs with rootfs-builder/ and install it at {shown}, or set [hypervisor] initrd in the configuration to where it is.");
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Finding::fail("initrd", format!("initrd {shown} not found"), fix_missing)
        }
        Err(e) => {
            return Finding::fail(
                "initrd",
                format!("initrd {shown} cannot be opened: {e}"),
                format!("make {shown} a readable file."),
            )
        }
    };
    let mut header = [0u8; 6];
    let got = match read_up_to(&mut file, &mut header) {
        Ok(n) => n,
        Err(e) => {
            return Finding::fail(
                "initrd",
                format!("initrd {shown} cannot be read: {e}"),
                format!("make {shown} a readable file."),
            )
        }
    };
    match initrd_format(&header[..got]) {
        Some(format) => Finding::ok("initrd", format!("initrd {shown}: {format}")),
        None if got == 0 => {
            Finding::fail("initrd", format!("initrd {shown} is empty"), fix_missing)
        }
        None => Finding::fail(
            "initrd",
            format!("initrd {shown} is not a cpio archive (compressed or not)"),
            fix_missing,
        ),
    }
}

fn initrd_format(header: &[u8]) -> Option<String> {
    if header.starts_with(b"070701") || header.starts_with(b"070702") {
        return Some("cpio archive".to_owned());
    }
    compression(header).map(|c| format!("{c}-compressed archive"))
}

/// Like `read_exact` but a short file is not an error.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn truncated(e: io::Error) -> KernelImageError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        KernelImageError::Malformed
    } else {
        KernelImageError::Io(e)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(name);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(desc);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// A minimal x86-64 ELF: header, one PT_LOAD and one PT_NOTE with `notes`.
    fn elf(notes: &[u8]) -> Vec<u8> {
        let phoff = ELF64_HEADER_LEN as u64;
        let notes_offset = phoff + 2 * ELF64_PHDR_LEN as u64;
        let mut f = vec![0u8; ELF64_HEADER_LEN];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = ELFCLASS64;
        f[5] = ELFDATA2LSB;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[32..40].copy_from_slice(&phoff.to_le_bytes());
        f[54..56].copy_from_slice(&(ELF64_PHDR_LEN as u16).to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let mut load = vec![0u8; ELF64_PHDR_LEN];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&load);
        let mut phdr = vec![0u8; ELF64_PHDR_LEN];
        phdr[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        phdr[8..16].copy_from_slice(&notes_offset.to_le_bytes());
        phdr[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(&phdr);
        f.extend_from_slice(notes);
        f
    }

    fn pvh_notes() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[0xab; 20]);
        notes.extend(note(b"Xen\0", 6, b"linux\0"));
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0100_0000u32.to_le_bytes(),
        ));
        notes
    }

    #[test]
    fn finds_the_pvh_entry() {
        let image = inspect_kernel(Cursor::new(elf(&pvh_notes()))).expect("pvh kernel");
        assert_eq!(image.pvh_entry, 0x0100_0000);
    }

    #[test]
    fn accepts_a_64_bit_entry_descriptor() {
        let notes = note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x0200_0000u64.to_le_bytes(),
        );
        assert_eq!(
            inspect_kernel(Cursor::new(elf(&notes)))
                .expect("pvh")
                .pvh_entry,
            0x0200_0000
        );
    }

    #[test]
    fn rejects_a_kernel_without_pvh() {
        let notes = note(b"GNU\0", 3, &[1; 8]);
        assert!(matches!(
            inspect_kernel(Cursor::new(elf(&notes))),
            Err(KernelImageError::NoPvhNote)
        ));
    }

    #[test]
    fn rejects_non_elf_images() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(matches!(
            inspect_kernel(Cursor::new(bz)),
            Err(KernelImageError::BzImage)
        ));
        assert!(matches!(
            inspect_kernel(Cursor::new(b"\x1f\x8b\x08\x00rest".to_vec())),
            Err(KernelImageError::Compressed("gzip"))
        ));
        assert!(matches!(
            inspect_kernel(Cursor::new(b"#!/bin/sh\n".to_vec())),
            Err(KernelImageError::NotElf)
        ));
        assert!(matches!(
            inspect_kernel(Cursor::new(Vec::new())),
            Err(KernelImageError::NotElf)
        ));
    }

    #[test]
    fn rejects_wrong_elf_flavours() {
        let mut f = elf(&pvh_notes());
        f[4] = 1; // ELFCLASS32
        assert!(matches!(
            inspect_kernel(Cursor::new(f)),
            Err(KernelImageError::NotElf64)
        ));
        let mut f = elf(&pvh_notes());
        f[18..20].copy_from_slice(&183u16.to_le_bytes()); // aarch64
        assert!(matches!(
            inspect_kernel(Cursor::new(f)),
            Err(KernelImageError::WrongMachine(183))
        ));
    }

    #[test]
    fn rejects_truncated_and_hostile_headers() {
        let f = elf(&pvh_notes());
        assert!(matches!(
            inspect_kernel(Cursor::new(f[..100].to_vec())),
            Err(KernelImageError::Malformed)
        ));
        let mut f = elf(&pvh_notes());
        f[56..58].copy_from_slice(&60000u16.to_le_bytes());
        assert!(matches!(
            inspect_kernel(Cursor::new(f)),
            Err(KernelImageError::Malformed)
        ));
        // A note claiming a huge name must not be trusted.
        let mut notes = Vec::new();
        notes.extend_from_slice(&u32::MAX.to_le_bytes());
        notes.extend_from_slice(&4u32.to_le_bytes());
        notes.extend_from_slice(&18u32.to_le_bytes());
        assert!(matches!(
            inspect_kernel(Cursor::new(elf(&notes))),
            Err(KernelImageError::NoPvhNote)
        ));
    }

    #[test]
    fn kernel_findings_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = check_kernel(&dir.path().join("vmlinux"));
        assert!(!missing.ok);
        assert!(
            missing.message.ends_with("vmlinux not found"),
            "{}",
            missing.message
        );
        let path = dir.path().join("bzImage");
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&path, bz).expect("write");
        let finding = check_kernel(&path);
        assert!(
            finding.message.contains("is a bzImage"),
            "{}",
            finding.message
        );
        assert!(finding.fix.expect("fix").contains("vmlinux"));
        let good = dir.path().join("good");
        std::fs::write(&good, elf(&pvh_notes())).expect("write");
        assert!(check_kernel(&good).ok);
    }

    #[test]
    fn initrd_findings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("initrd");
        assert!(check_initrd(&path).message.ends_with("not found"));
        std::fs::write(&path, b"").expect("write");
        assert!(check_initrd(&path).message.ends_with("is empty"));
        std::fs::write(&path, b"hello world").expect("write");
        assert!(!check_initrd(&path).ok);
        std::fs::write(&path, b"\x1f\x8b\x08\x00\x00\x00").expect("write");
        let finding = check_initrd(&path);
        assert!(finding.ok);
        assert!(
            finding.message.ends_with("gzip-compressed archive"),
            "{}",
            finding.message
        );
        std::fs::write(&path, b"070701000000").expect("write");
        assert!(check_initrd(&path).message.ends_with("cpio archive"));
    }
}
