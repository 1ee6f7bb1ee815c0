//! Just enough ACPI: find the RSDP, walk the RSDT/XSDT (checksums checked) and read the MCFG
//! (PCI ECAM windows) and the MADT (IOAPIC address).
//!
//! Hand-written rather than the `acpi` crate: that crate needs `alloc` (its table and MADT
//! types allocate), and the kernel links no allocator; two tables are all the kernel reads.

/// Everything the kernel reads from ACPI.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcpiInfo {
    /// Segment 0's ECAM: (base address of bus 0, first bus, last bus).
    pub ecam: Option<(u64, u8, u8)>,
    /// The IOAPIC serving GSI 0.
    pub ioapic: Option<u64>,
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
            b"APIC" => info.ioapic = info.ioapic.or_else(|| parse_madt(table)),
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

/// The address of the IOAPIC whose GSI base is 0.
fn parse_madt(table: &[u8]) -> Option<u64> {
    let mut off = 44;
    while off + 2 <= table.len() {
        let (kind, len) = (table[off], table[off + 1] as usize);
        if len < 2 || off + len > table.len() {
            break;
        }
        if kind == 1 && len >= 12 && u32_at(table, off + 8) == Some(0) {
            return u32_at(table, off + 4).map(u64::from);
        }
        off += len;
    }
    None
}
