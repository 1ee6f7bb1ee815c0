//! What the boot loader hands over: the PVH `hvm_start_info` (QEMU `-kernel`) or the Multiboot2
//! information structure (GRUB, BIOS or UEFI). Both give a command line and may give the ACPI
//! RSDP; Multiboot2 also gives the memory map and, under UEFI, the EFI system table.
//!
//! The Multiboot2 structure is parsed by `bootproto::multiboot2` (every tag checked against the
//! structure's size). A structure that is missing or malformed, a kernel image or page table
//! outside the RAM the map lists as available, or an unknown boot protocol stops the boot with
//! a plain-text message on the serial console ([`Fatal`]): the defmt stream has not
//! started yet, so the host (or a terminal) shows it as text.

use super::acpi::phys_bytes;
use bootproto::multiboot2::{self, Info, MemKind};
use spin::Once;

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336E_C578;
/// Longest command line kept (longer ones are cut).
const CMDLINE_MAX: usize = 1024;
/// Memory map entries kept.
const MAP_MAX: usize = 64;

/// The parts of the hand-over the kernel uses.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// "pvh", "multiboot2" or "unknown".
    pub protocol: &'static str,
    /// The kernel command line, "" if none.
    pub cmdline: &'static str,
    /// Physical address of the ACPI RSDP if the loader gave one.
    pub rsdp: Option<u64>,
    /// Physical address of the EFI system table (Multiboot2 under UEFI).
    pub efi_system_table: Option<u64>,
}

/// A memory map entry kept from the hand-over.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// Physical base.
    pub base: u64,
    /// Bytes.
    pub len: u64,
    /// Available RAM (type 1).
    pub available: bool,
}

/// What the memory map said, for the boot log.
#[derive(Debug, Default)]
pub struct Memory {
    /// The entries, in the loader's order (the first [`MAP_MAX`]).
    pub regions: heapless::Vec<Region, MAP_MAX>,
    /// Entries beyond [`MAP_MAX`] (not kept).
    pub dropped: usize,
    /// Available bytes below 4 GiB (identity-mapped) and above (not mapped, not used).
    pub below_4g: u64,
    /// Available bytes at or above 4 GiB.
    pub above_4g: u64,
    /// The boot loader's name.
    pub loader: heapless::String<64>,
    /// Physical address of the EFI system table (UEFI boots).
    pub efi_system_table: Option<u64>,
}

/// Why the boot stops.
#[derive(Debug)]
pub enum Fatal {
    /// Neither the Multiboot2 magic in `eax` nor a PVH start info at `ebx`.
    UnknownProtocol { magic: u32, info: u32 },
    /// The Multiboot2 structure's address is 0 or not below 4 GiB.
    NoInfo(u32),
    /// The Multiboot2 structure does not parse.
    Malformed(multiboot2::Error),
    /// No memory map tag (GRUB always gives one).
    NoMemoryMap,
    /// Available RAM inside the device window the kernel maps uncached and assigns PCI BARs
    /// in (0xC000_0000..4 GiB).
    RamInDeviceWindow { base: u64, end: u64 },
    /// The kernel image (code, data, page tables, DMA area, stack) is not inside available RAM.
    ImageOutsideRam {
        start: u64,
        end: u64,
        /// The map's entries that overlap the image (the first few): base, end, type.
        overlapping: heapless::Vec<(u64, u64, u32), 3>,
    },
}

/// The command line, copied out of loader memory so nothing later can overwrite it.
static CMDLINE: Once<heapless::String<CMDLINE_MAX>> = Once::new();
/// The memory map, copied out of loader memory.
static MEMORY: Once<Memory> = Once::new();

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The memory map summary, if the loader gave one.
pub fn memory() -> Option<&'static Memory> {
    MEMORY.get()
}

/// Keeps `bytes` (the command line, up to [`CMDLINE_MAX`] bytes, valid UTF-8 prefix).
fn keep_cmdline(bytes: &[u8]) -> &'static str {
    let kept = CMDLINE.call_once(|| {
        let mut s = heapless::String::new();
        let bytes = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
        let bytes = &bytes[..bytes.len().min(CMDLINE_MAX - 1)];
        let text = match core::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        // Cannot fail: `text` is shorter than the capacity.
        let _ = s.push_str(text.trim());
        s
    });
    kept.as_str()
}

/// Reads the hand-over given `eax` (`magic`) and `ebx` (`info`) at entry.
pub fn parse(magic: u32, info: u32) -> Result<Handoff, Fatal> {
    if magic == multiboot2::BOOT_MAGIC {
        return parse_multiboot2(info);
    }
    // SAFETY: `ebx` points at the loader's boot information under PVH; `phys_bytes` refuses
    // address 0 and ranges past 4 GiB.
    let pvh = unsafe { phys_bytes(u64::from(info), 40) };
    let Some(start) = pvh.filter(|s| read_u32(s, 0) == Some(PVH_MAGIC)) else {
        return Err(Fatal::UnknownProtocol { magic, info });
    };
    let cmdline_paddr = read_u64(start, 24).unwrap_or(0);
    let rsdp_paddr = read_u64(start, 32).unwrap_or(0);
    // SAFETY: PVH's command line is a NUL-terminated string in loader memory below 4 GiB
    // (checked by `phys_bytes`); only the bytes before the NUL are used.
    let cmdline = match unsafe { phys_bytes(cmdline_paddr, CMDLINE_MAX - 1) } {
        Some(bytes) => keep_cmdline(bytes),
        None => "",
    };
    Ok(Handoff {
        protocol: "pvh",
        cmdline,
        rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
        efi_system_table: None,
    })
}

fn parse_multiboot2(addr: u32) -> Result<Handoff, Fatal> {
    let base = u64::from(addr);
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err(Fatal::NoInfo(addr));
    }
    // SAFETY: under Multiboot2, `ebx` is the information structure's address in loader
    // memory, which the kernel does not write; its first 8 bytes are its header.
    let header = unsafe { phys_bytes(base, 8) }.ok_or(Fatal::NoInfo(addr))?;
    let total = Info::total_size(header).map_err(Fatal::Malformed)?;
    // SAFETY: as above, for the `total` bytes the header declares (at most 1 MiB, below 4 GiB:
    // checked by `phys_bytes`).
    let all = unsafe { phys_bytes(base, total) }.ok_or(Fatal::NoInfo(addr))?;
    let info = Info::parse(all).map_err(Fatal::Malformed)?;
    let map = info.memory_map.ok_or(Fatal::NoMemoryMap)?;

    // The kernel image, with its page tables, DMA area and stack, must be RAM.
    let start = (&raw const __kernel_start) as u64;
    let end = (&raw const __kernel_end) as u64;
    if !map.is_available(start, end - start) {
        let mut overlapping = heapless::Vec::new();
        for r in map.regions().filter(|r| r.base < end && r.end() > start) {
            let kind = match r.kind {
                MemKind::Available => 1,
                MemKind::AcpiReclaimable => 3,
                MemKind::AcpiNvs => 4,
                MemKind::Bad => 5,
                MemKind::Reserved(k) => k,
            };
            if overlapping.push((r.base, r.end(), kind)).is_err() {
                break;
            }
        }
        return Err(Fatal::ImageOutsideRam {
            start,
            end,
            overlapping,
        });
    }
    if let Some(r) = map.regions().find(|r| {
        r.kind == MemKind::Available
            && r.base < super::DEVICE_HOLE.1
            && r.end() > super::DEVICE_HOLE.0
    }) {
        return Err(Fatal::RamInDeviceWindow {
            base: r.base,
            end: r.end(),
        });
    }
    MEMORY.call_once(|| {
        let mut memory = Memory::default();
        for r in map.regions() {
            let kept = Region {
                base: r.base,
                len: r.len,
                available: r.kind == MemKind::Available,
            };
            if memory.regions.push(kept).is_err() {
                memory.dropped += 1;
            }
        }
        (memory.below_4g, memory.above_4g) = map.available_bytes();
        memory.efi_system_table = info.efi_system_table;
        if let Some(name) = info.bootloader {
            for c in core::str::from_utf8(name).unwrap_or("?").chars() {
                if memory.loader.push(c).is_err() {
                    break;
                }
            }
        }
        memory
    });
    Ok(Handoff {
        protocol: "multiboot2",
        cmdline: keep_cmdline(info.cmdline.unwrap_or(&[])),
        // The tags hold a copy of the RSDP inside the structure.
        rsdp: info.rsdp().map(|off| base + off as u64),
        efi_system_table: info.efi_system_table,
    })
}

impl Fatal {
    /// Writes the reason as plain text to the console and stops the machine (failure).
    pub fn stop(&self) -> ! {
        let mut line: heapless::String<512> = heapless::String::new();
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!("\r\nboot stopped: {}\r\n", self.describe()),
        );
        super::console_write(line.as_bytes());
        super::exit(false)
    }

    fn describe(&self) -> Describe<'_> {
        Describe(self)
    }
}

struct Describe<'a>(&'a Fatal);

impl core::fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Fatal::UnknownProtocol { magic, info } => write!(
                f,
                "no boot information: eax = {magic:#x} is not the Multiboot2 magic and ebx = \
                 {info:#x} holds no PVH start info (boot with GRUB's multiboot2 or QEMU -kernel)"
            ),
            Fatal::NoInfo(addr) => write!(
                f,
                "Multiboot2 information structure missing (ebx = {addr:#x}: null, misaligned or \
                 above 4 GiB)"
            ),
            Fatal::Malformed(e) => write!(f, "Multiboot2 information structure malformed: {e:?}"),
            Fatal::NoMemoryMap => {
                f.write_str("Multiboot2 information structure has no memory map tag (type 6)")
            }
            Fatal::RamInDeviceWindow { base, end } => write!(
                f,
                "the memory map lists RAM at {base:#x}..{end:#x}, inside 0xc0000000..4 GiB, \
                 where the kernel maps devices uncached and assigns PCI BARs: this memory \
                 layout is not supported"
            ),
            Fatal::ImageOutsideRam {
                start,
                end,
                overlapping,
            } => {
                write!(
                    f,
                    "the kernel image {start:#x}..{end:#x} (page tables, DMA memory, stack) is \
                     not inside RAM the memory map lists as available; map entries there:"
                )?;
                for (base, end, kind) in overlapping {
                    write!(f, " {base:#x}..{end:#x} type {kind};")?;
                }
                Ok(())
            }
        }
    }
}

fn read_u32(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(off..off + 8)?.try_into().ok()?,
    ))
}

/// `EFI_SYSTEM_TABLE_SIGNATURE` ("IBI SYST").
const EFI_SYSTEM_TABLE_SIGNATURE: u64 = 0x5453_5953_2049_4249;
/// `EFI_ACPI_20_TABLE_GUID` and `ACPI_10_TABLE_GUID`, in memory byte order.
const EFI_ACPI_20_GUID: [u8; 16] = guid(
    0x8868_e871,
    0xe4f1,
    0x11d3,
    [0xbc, 0x22, 0x00, 0x80, 0xc7, 0x3c, 0x88, 0x81],
);
const EFI_ACPI_10_GUID: [u8; 16] = guid(
    0xeb9d_2d30,
    0x2d88,
    0x11d3,
    [0x9a, 0x16, 0x00, 0x90, 0x27, 0x3f, 0xc1, 0x4d],
);
/// Configuration table entries looked at, at most.
const EFI_CONFIG_MAX: u64 = 256;

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The RSDP the EFI system table's configuration table names (ACPI 2.0 entry, else 1.0), for a
/// Multiboot2 hand-over under UEFI that carried no RSDP tag.
pub fn efi_rsdp(system_table: u64) -> Option<u64> {
    // SAFETY: the loader gave this as the EFI system table, firmware memory that stays in place
    // after boot services (runtime data); `phys_bytes` refuses null and ranges past 4 GiB.
    let st = unsafe { phys_bytes(system_table, 120) }?;
    if read_u64(st, 0)? != EFI_SYSTEM_TABLE_SIGNATURE {
        return None;
    }
    let entries = read_u64(st, 104)?.min(EFI_CONFIG_MAX);
    let table = read_u64(st, 112)?;
    // SAFETY: the configuration table the system table points at: `entries` GUID/pointer pairs
    // of 24 bytes in firmware memory (checked below 4 GiB by `phys_bytes`).
    let config = unsafe { phys_bytes(table, (entries * 24) as usize) }?;
    let find = |want: &[u8; 16]| {
        config
            .chunks_exact(24)
            .find(|e| &e[..16] == want)
            .and_then(|e| read_u64(e, 16))
            .filter(|&a| a != 0)
    };
    find(&EFI_ACPI_20_GUID).or_else(|| find(&EFI_ACPI_10_GUID))
}
