//! Just enough ACPI: find the RSDP, walk the RSDT/XSDT (checksums checked) and read the MCFG
//! (PCI ECAM windows) and the MADT (IOAPIC address, the local APICs of the CPUs, the ISA
//! interrupt source overrides).
//!
//! Hand-written rather than the `acpi` crate: that crate needs `alloc` (its table and MADT
//! types allocate), and the kernel links no allocator; two tables are all the kernel reads.

/// Everything the kernel reads from ACPI.
#[derive(Debug, Default, Clone)]
pub struct AcpiInfo {
    /// Segment 0's ECAM: (base address of bus 0, first bus, last bus).
    pub ecam: Option<(u64, u8, u8)>,
    /// The IOAPIC serving GSI 0.
    pub ioapic: Option<u64>,
    /// The local APIC ids of the usable CPUs (enabled, or online-capable), in MADT order.
    /// Empty without a MADT.
    pub cpus: heapless::Vec<u32, MAX_MADT_CPUS>,
    /// CPUs the MADT lists beyond [`MAX_MADT_CPUS`] (not started).
    pub cpus_dropped: usize,
    /// Interrupt source overrides for ISA IRQs 0..=15.
    pub isa: [Option<IsaOverride>; 16],
}

/// Most CPUs read from the MADT.
pub const MAX_MADT_CPUS: usize = 64;

/// A MADT interrupt source override: ISA IRQ `n` arrives on `gsi` with this polarity/trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaOverride {
    /// The global system interrupt (IOAPIC pin for the IOAPIC at GSI base 0).
    pub gsi: u32,
    /// Active low (else active high).
    pub active_low: bool,
    /// Level-triggered (else edge).
    pub level: bool,
}

impl IsaOverride {
    /// From the MADT's MPS INTI flags: bits 0..=1 polarity (0 = bus default, 1 = high, 3 = low),
    /// bits 2..=3 trigger mode (0 = bus default, 1 = edge, 3 = level). The ISA default is edge,
    /// active high.
    pub fn from_flags(gsi: u32, flags: u16) -> IsaOverride {
        IsaOverride {
            gsi,
            active_low: flags & 0x3 == 0x3,
            level: (flags >> 2) & 0x3 == 0x3,
        }
    }
}

/// Largest table accepted (guards against garbage lengths).
const MAX_TABLE_LEN: u32 = 1 << 20;
const HEADER_LEN: usize = 36;

/// `len` bytes of firmware memory at physical `addr`, or `None` for a null or unmapped range.
///
/// # Safety
/// If the range is below 4 GiB it must be memory the firmware handed over (ACPI tables, the
/// BIOS area, boot information), readable without side effects and not written while the slice
/// lives.
pub unsafe fn phys_bytes(addr: u64, len: usize) -> Option<&'static [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || end > 1 << 32 {
        return None;
    }
    // SAFETY: everything below 4 GiB is identity-mapped; the caller vouches for the contents.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(off..off + 8)?.try_into().ok()?,
    ))
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

/// The RSDP at `addr` if its signature and checksums are right.
fn rsdp_at(addr: u64) -> Option<&'static [u8]> {
    // SAFETY: the address comes from the boot protocol or lies in the BIOS area; both are
    // firmware memory.
    let v1 = unsafe { phys_bytes(addr, 20) }?;
    if &v1[..8] != b"RSD PTR " || !checksum_ok(v1) {
        return None;
    }
    if v1[15] >= 2 {
        // SAFETY: as above; an ACPI 2.0 RSDP is 36 bytes.
        let v2 = unsafe { phys_bytes(addr, 36) }?;
        let len = u32_at(v2, 20)? as usize;
        // SAFETY: as above; the length was checked against the 36-byte minimum below.
        let full = unsafe { phys_bytes(addr, len.max(36)) }?;
        return checksum_ok(full).then_some(full);
    }
    Some(v1)
}

/// Searches the first KiB of the EBDA and the BIOS area 0xE0000..0x100000.
fn scan_for_rsdp() -> Option<&'static [u8]> {
    // SAFETY: the BIOS data area word at 0x40E holds the EBDA segment.
    let ebda =
        unsafe { phys_bytes(0x40E, 2) }.map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])) << 4);
    let ebda_range = ebda
        .filter(|&e| (0x80000..0xA0000).contains(&e))
        .map(|e| e..e + 1024);
    ebda_range
        .into_iter()
        .flat_map(|r| r.step_by(16))
        .chain((0xE0000..0x100000u64).step_by(16))
        .find_map(rsdp_at)
}

/// The system description table at `addr` if its checksum is right.
fn table_at(addr: u64) -> Option<&'static [u8]> {
    // SAFETY: `addr` comes from the RSDT/XSDT, i.e. ACPI table memory.
    let header = unsafe { phys_bytes(addr, HEADER_LEN) }?;
    let len = u32_at(header, 4)?;
    if (len as usize) < HEADER_LEN || len > MAX_TABLE_LEN {
        return None;
    }
    // SAFETY: as above, with the length the table declares.
    let table = unsafe { phys_bytes(addr, len as usize) }?;
    checksum_ok(table).then_some(table)
}

/// Reads ACPI, starting from `rsdp` (from the boot protocol) or a BIOS-area scan.
pub fn discover(rsdp: Option<u64>) -> AcpiInfo {
    let mut info = AcpiInfo::default();
    let Some(rsdp) = rsdp.and_then(rsdp_at).or_else(scan_for_rsdp) else {
        return info;
    };
    let xsdt = if rsdp[15] >= 2 {
        u64_at(rsdp, 24).filter(|&a| a != 0)
    } else {
        None
    };
    let (root, entry_size) = match xsdt.and_then(table_at) {
        Some(t) => (t, 8),
        None => match u32_at(rsdp, 16).and_then(|a| table_at(u64::from(a))) {
            Some(t) => (t, 4),
            None => return info,
        },
    };
    for entry in root[HEADER_LEN..].chunks_exact(entry_size) {
        let addr = if entry_size == 8 {
            u64_at(entry, 0)
        } else {
            u32_at(entry, 0).map(u64::from)
        };
        let Some(table) = addr.and_then(table_at) else {
            continue;
        };
        match &table[..4] {
            b"MCFG" => info.ecam = info.ecam.or_else(|| parse_mcfg(table)),
            b"APIC" if info.ioapic.is_none() && info.cpus.is_empty() => {
                parse_madt(table, &mut info)
            }
            _ => {}
        }
    }
    info
}

/// Segment 0's entry: base, start bus, end bus.
fn parse_mcfg(table: &[u8]) -> Option<(u64, u8, u8)> {
    table.get(44..)?.chunks_exact(16).find_map(|e| {
        let base = u64_at(e, 0)?;
        let segment = u16::from_le_bytes([e[8], e[9]]);
        let (start, end) = (e[10], e[11]);
        (segment == 0 && start <= end && base != 0).then_some((base, start, end))
    })
}

/// Reads the MADT: the IOAPIC whose GSI base is 0, the local APIC (type 0) and x2APIC (type 9)
/// entries of usable CPUs, and the interrupt source overrides (type 2) of ISA IRQs.
fn parse_madt(table: &[u8], info: &mut AcpiInfo) {
    let mut off = 44;
    while off + 2 <= table.len() {
        let (kind, len) = (table[off], table[off + 1] as usize);
        if len < 2 || off + len > table.len() {
            break;
        }
        let entry = &table[off..off + len];
        match kind {
            // Processor local APIC: ACPI id, APIC id, flags (bit 0 enabled, bit 1 online
            // capable).
            0 if len >= 8 => {
                let flags = u32_at(entry, 4).unwrap_or(0);
                if flags & 0x3 != 0 {
                    add_cpu(info, u32::from(entry[3]));
                }
            }
            // Processor local x2APIC: reserved, x2APIC id, flags, ACPI uid. Only ids an xAPIC
            // can address are usable (the kernel drives the LAPIC in xAPIC mode).
            9 if len >= 16 => {
                let id = u32_at(entry, 4).unwrap_or(u32::MAX);
                let flags = u32_at(entry, 8).unwrap_or(0);
                if flags & 0x3 != 0 && id < 0xFF && !info.cpus.contains(&id) {
                    add_cpu(info, id);
                }
            }
            1 if len >= 12 && u32_at(entry, 8) == Some(0) && info.ioapic.is_none() => {
                info.ioapic = u32_at(entry, 4).map(u64::from);
            }
            // Interrupt source override: bus (0 = ISA), source IRQ, GSI, flags.
            2 if len >= 10 && entry[2] == 0 && entry[3] < 16 => {
                if let Some(gsi) = u32_at(entry, 4) {
                    let flags = u16::from_le_bytes([entry[8], entry[9]]);
                    info.isa[usize::from(entry[3])] = Some(IsaOverride::from_flags(gsi, flags));
                }
            }
            _ => {}
        }
        off += len;
    }
}

fn add_cpu(info: &mut AcpiInfo, apic_id: u32) {
    if info.cpus.push(apic_id).is_err() {
        info.cpus_dropped += 1;
    }
}
