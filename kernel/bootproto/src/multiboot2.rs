//! The Multiboot2 boot information structure (Multiboot2 specification, section 3.6).
//!
//! Layout: `total_size: u32`, `reserved: u32`, then tags, each `type: u32`, `size: u32` (header
//! included) and a body, each starting 8-byte aligned; an end tag (type 0, size 8) closes the
//! list. [`Info::parse`] walks the tags of a structure already in memory and checks that each
//! lies inside `total_size`, that the end tag is there, and that the memory map's entries are
//! whole.

use crate::{u32_at, u64_at};

/// `eax` at a Multiboot2 entry.
pub const BOOT_MAGIC: u32 = 0x36D7_6289;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_BOOTLOADER: u32 = 2;
const TAG_BASIC_MEMINFO: u32 = 4;
const TAG_MMAP: u32 = 6;
const TAG_EFI32: u32 = 11;
const TAG_EFI64: u32 = 12;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;

/// Largest structure accepted (guards against a garbage `total_size`).
pub const MAX_LEN: u32 = 1 << 20;

/// Why an information structure was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than its 8-byte header, or `total_size` is under 16 (header + end tag).
    TooShort,
    /// `total_size` is larger than [`MAX_LEN`] or than the bytes given.
    BadTotalSize(u32),
    /// A tag at this offset has a size under 8 or runs past `total_size`.
    BadTag {
        /// Offset of the tag from the structure's start.
        offset: usize,
        /// Its type.
        kind: u32,
        /// Its size field.
        size: u32,
    },
    /// No end tag before `total_size`.
    NoEndTag,
    /// The memory map tag's entry size is under 24 or not a multiple of 8.
    BadMmapEntrySize(u32),
}

/// Kinds of memory map entries (`type` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// 1: RAM the kernel may use.
    Available,
    /// 3: ACPI tables; reusable once they are read.
    AcpiReclaimable,
    /// 4: must be preserved across hibernation.
    AcpiNvs,
    /// 5: defective RAM.
    Bad,
    /// 2 and anything else: reserved.
    Reserved(u32),
}

impl MemKind {
    fn from_raw(raw: u32) -> MemKind {
        match raw {
            1 => MemKind::Available,
            3 => MemKind::AcpiReclaimable,
            4 => MemKind::AcpiNvs,
            5 => MemKind::Bad,
            other => MemKind::Reserved(other),
        }
    }
}

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// Physical base address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the region is.
    pub kind: MemKind,
}

impl MemRegion {
    /// End address (exclusive), saturating.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.len)
    }
}

/// The memory map tag's entries.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap<'a> {
    entries: &'a [u8],
    entry_size: usize,
}

impl<'a> MemoryMap<'a> {
    /// Every entry, in the order the loader gave them.
    pub fn regions(&self) -> impl Iterator<Item = MemRegion> + 'a {
        let size = self.entry_size;
        self.entries.chunks_exact(size).filter_map(|e| {
            Some(MemRegion {
                base: u64_at(e, 0)?,
                len: u64_at(e, 8)?,
                kind: MemKind::from_raw(u32_at(e, 16)?),
            })
        })
    }

    /// Whether `base..base + len` lies inside one available region.
    pub fn is_available(&self, base: u64, len: u64) -> bool {
        let Some(end) = base.checked_add(len) else {
            return false;
        };
        self.regions()
            .any(|r| r.kind == MemKind::Available && r.base <= base && end <= r.end())
    }

    /// Bytes of available RAM below and at or above 4 GiB.
    pub fn available_bytes(&self) -> (u64, u64) {
        const FOUR_GIB: u64 = 1 << 32;
        self.regions()
            .filter(|r| r.kind == MemKind::Available)
            .fold((0, 0), |(low, high), r| {
                let below = r.end().min(FOUR_GIB).saturating_sub(r.base.min(FOUR_GIB));
                (low + below, high + (r.len - below))
            })
    }

    /// The end of the highest available region (0 if none).
    pub fn top_of_ram(&self) -> u64 {
        self.regions()
            .filter(|r| r.kind == MemKind::Available)
            .map(|r| r.end())
            .max()
            .unwrap_or(0)
    }
}

/// What the kernel reads from the structure. Slices point into the structure itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Info<'a> {
    /// The command line's bytes (without the NUL), if the tag is there.
    pub cmdline: Option<&'a [u8]>,
    /// The boot loader's name (without the NUL).
    pub bootloader: Option<&'a [u8]>,
    /// The memory map, if the tag is there.
    pub memory_map: Option<MemoryMap<'a>>,
    /// Basic memory info: KiB of lower and upper memory.
    pub basic_mem_kib: Option<(u32, u32)>,
    /// Offset (from the structure's start) of the body of the ACPI 2.0+ RSDP tag: a copy of
    /// the RSDP.
    pub rsdp_new: Option<usize>,
    /// Offset of the body of the ACPI 1.0 RSDP tag.
    pub rsdp_old: Option<usize>,
    /// Physical address of the EFI system table (64-bit tag, else the 32-bit one).
    pub efi_system_table: Option<u64>,
    /// Size in bytes of the whole structure.
    pub total_size: usize,
}

impl<'a> Info<'a> {
    /// The structure's `total_size` from its first 8 bytes, checked against [`MAX_LEN`]: how
    /// many bytes to hand to [`Info::parse`].
    pub fn total_size(header: &[u8]) -> Result<usize, Error> {
        let total = u32_at(header, 0).ok_or(Error::TooShort)?;
        if total < 16 {
            return Err(Error::TooShort);
        }
        if total > MAX_LEN {
            return Err(Error::BadTotalSize(total));
        }
        Ok(total as usize)
    }

    /// Walks the tags of the structure in `bytes` (at least `total_size` bytes).
    pub fn parse(bytes: &'a [u8]) -> Result<Info<'a>, Error> {
        let total = Self::total_size(bytes)?;
        if total > bytes.len() {
            return Err(Error::BadTotalSize(total as u32));
        }
        let all = &bytes[..total];
        let mut info = Info {
            total_size: total,
            ..Info::default()
        };
        let mut off = 8usize;
        loop {
            let (Some(kind), Some(size)) = (u32_at(all, off), u32_at(all, off + 4)) else {
                return Err(Error::NoEndTag);
            };
            let bad = Error::BadTag {
                offset: off,
                kind,
                size,
            };
            let len = size as usize;
            if len < 8 || off.checked_add(len).is_none_or(|end| end > total) {
                return Err(bad);
            }
            let body = &all[off + 8..off + len];
            match kind {
                TAG_END => return Ok(info),
                TAG_CMDLINE => info.cmdline = Some(until_nul(body)),
                TAG_BOOTLOADER => info.bootloader = Some(until_nul(body)),
                TAG_BASIC_MEMINFO => {
                    info.basic_mem_kib = u32_at(body, 0).zip(u32_at(body, 4));
                }
                TAG_MMAP => {
                    let entry_size = u32_at(body, 0).ok_or(bad)?;
                    if entry_size < 24 || !entry_size.is_multiple_of(8) {
                        return Err(Error::BadMmapEntrySize(entry_size));
                    }
                    info.memory_map = Some(MemoryMap {
                        entries: &body[8.min(body.len())..],
                        entry_size: entry_size as usize,
                    });
                }
                TAG_EFI64 => info.efi_system_table = u64_at(body, 0).or(info.efi_system_table),
                TAG_EFI32 => {
                    info.efi_system_table =
                        info.efi_system_table.or(u32_at(body, 0).map(u64::from));
                }
                TAG_ACPI_NEW => info.rsdp_new = Some(off + 8),
                TAG_ACPI_OLD => info.rsdp_old = Some(off + 8),
                _ => {}
            }
            off = off.checked_add(len.next_multiple_of(8)).ok_or(bad)?;
        }
    }

    /// Offset of the RSDP copy to use: the ACPI 2.0+ one, else the 1.0 one.
    pub fn rsdp(&self) -> Option<usize> {
        self.rsdp_new.or(self.rsdp_old)
    }
}

fn until_nul(body: &[u8]) -> &[u8] {
    body.split(|&b| b == 0).next().unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Builds an information structure from `(type, body)` tags, then the end tag.
    fn build(tags: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = std::vec![0u8; 8];
        for (kind, body) in tags {
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        let total = out.len() as u32;
        out[..4].copy_from_slice(&total.to_le_bytes());
        out
    }

    fn mmap(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&24u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for (base, len, kind) in entries {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(&kind.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
        }
        body
    }

    #[test]
    fn reads_every_tag_the_kernel_uses() {
        let map = mmap(&[
            (0, 0x9fc00, 1),
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x7ee0_0000, 1),
            (0x7ef0_0000, 0x10_0000, 3),
            (0x1_0000_0000, 0x4000_0000, 1),
        ]);
        let rsdp_v1 = b"RSD PTR \x00BOCHS \x00\x00\x00\x00\x00";
        let bytes = build(&[
            (TAG_CMDLINE, b"mode=test root=vda\0"),
            (TAG_BOOTLOADER, b"GRUB 2.06\0"),
            (TAG_MMAP, &map),
            (TAG_ACPI_OLD, rsdp_v1),
            (TAG_EFI64, &0x7fbe_e018u64.to_le_bytes()),
        ]);
        let info = Info::parse(&bytes).unwrap();
        assert_eq!(info.cmdline.unwrap(), b"mode=test root=vda");
        assert_eq!(info.bootloader.unwrap(), b"GRUB 2.06");
        assert_eq!(info.efi_system_table, Some(0x7fbe_e018));
        let off = info.rsdp().unwrap();
        assert_eq!(&bytes[off..off + 8], b"RSD PTR ");
        let map = info.memory_map.unwrap();
        assert_eq!(map.regions().count(), 5);
        assert_eq!(map.available_bytes(), (0x9fc00 + 0x7ee0_0000, 0x4000_0000));
        assert_eq!(map.top_of_ram(), 0x1_4000_0000);
        assert!(map.is_available(0x20_0000, 0x10_0000));
        assert!(!map.is_available(0x7ef0_0000, 0x1000), "ACPI tables");
        assert!(
            !map.is_available(0x9f000, 0x2000),
            "crosses the end of a region"
        );
        assert!(!map.is_available(u64::MAX - 1, 4), "wraps");
    }

    #[test]
    fn new_rsdp_wins_over_old() {
        let bytes = build(&[(TAG_ACPI_NEW, b"new"), (TAG_ACPI_OLD, b"old")]);
        let info = Info::parse(&bytes).unwrap();
        assert_eq!(&bytes[info.rsdp().unwrap()..][..3], b"new");
        let bytes = build(&[(TAG_ACPI_OLD, b"old")]);
        let info = Info::parse(&bytes).unwrap();
        assert_eq!(&bytes[info.rsdp().unwrap()..][..3], b"old");
        assert!(Info::parse(&build(&[])).unwrap().rsdp().is_none());
    }

    #[test]
    fn refuses_malformed_structures() {
        assert_eq!(Info::parse(&[]).unwrap_err(), Error::TooShort);
        assert_eq!(
            Info::parse(&[8, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            Error::TooShort
        );
        // total_size larger than the bytes there, or absurd.
        let mut bytes = build(&[(TAG_CMDLINE, b"x\0")]);
        bytes[..4].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(Info::parse(&bytes).unwrap_err(), Error::BadTotalSize(4096));
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Info::total_size(&bytes).unwrap_err(),
            Error::BadTotalSize(u32::MAX)
        );
        // No end tag: cut the structure before it.
        let mut bytes = build(&[(TAG_CMDLINE, b"mode=run\0")]);
        let cut = bytes.len() as u32 - 8;
        bytes[..4].copy_from_slice(&cut.to_le_bytes());
        assert_eq!(Info::parse(&bytes).unwrap_err(), Error::NoEndTag);
        // A tag whose size runs past the end, and one too small to hold its header.
        let mut bytes = build(&[(TAG_CMDLINE, b"mode=run\0")]);
        bytes[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Info::parse(&bytes),
            Err(Error::BadTag {
                offset: 8,
                kind: 1,
                size: 1000
            })
        ));
        bytes[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            Info::parse(&bytes),
            Err(Error::BadTag { size: 4, .. })
        ));
        // A memory map with an impossible entry size.
        let mut map = mmap(&[(0, 0x1000, 1)]);
        map[..4].copy_from_slice(&20u32.to_le_bytes());
        let bytes = build(&[(TAG_MMAP, &map)]);
        assert_eq!(
            Info::parse(&bytes).unwrap_err(),
            Error::BadMmapEntrySize(20)
        );
        // A memory map tag with no room for its entry-size field.
        let bytes = build(&[(TAG_MMAP, b"\x18\x00")]);
        assert!(matches!(
            Info::parse(&bytes),
            Err(Error::BadTag { kind: 6, .. })
        ));
    }

    #[test]
    fn partial_mmap_entries_are_ignored() {
        let mut map = mmap(&[(0, 0x1000, 1), (0x1000, 0x1000, 1)]);
        map.truncate(map.len() - 4);
        let bytes = build(&[(TAG_MMAP, &map)]);
        let info = Info::parse(&bytes).unwrap();
        assert_eq!(info.memory_map.unwrap().regions().count(), 1);
    }
}
