//! MBR and GPT partition table parsing. Pure functions over sector bytes: every field read
//! from the disk is checked (signature, CRCs, bounds, overlap) before a partition is built.
//!
//! [`parse_mbr`], [`parse_gpt_header`] and [`parse_gpt_entries`] are strict: any bad entry
//! refuses the whole table. [`scan`] is what a kernel runs on a disk at attach: it reads the
//! sectors itself (through a callback), follows the MBR's extended/logical chain, falls back to
//! the backup GPT header at the end of the disk when the primary one or its entry array is
//! damaged (and says so), and refuses single entries (out of the disk, overlapping) with the
//! reason while keeping the others.

use crate::error::BlkError;

/// Most partitions returned.
pub const MAX_PARTS: usize = 16;

/// What kind of entry a partition came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartKind {
    /// An MBR entry with its type byte.
    Mbr(u8),
    /// A GPT entry with its type and unique GUIDs (raw bytes) and its name.
    Gpt {
        /// Partition type GUID.
        type_guid: [u8; 16],
        /// Unique partition GUID.
        unique_guid: [u8; 16],
        /// Partition name, UTF-16LE code units as on disk, 0-padded ([`PartEntry::name`]).
        name: [u16; GPT_NAME_UNITS],
    },
}

/// UTF-16 code units of a GPT partition name.
pub const GPT_NAME_UNITS: usize = 36;

/// One partition: `sectors` 512-byte sectors from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartEntry {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// Origin.
    pub kind: PartKind,
    /// Number as Linux gives it (the `N` of `vdaN`): MBR primary slots 1-4, logical
    /// partitions 5 on in chain order, GPT entry index + 1.
    pub number: u32,
}

impl PartEntry {
    /// The GPT name decoded (up to the first NUL; unpaired surrogates become U+FFFD); empty
    /// for MBR entries.
    pub fn name(&self) -> impl Iterator<Item = char> + '_ {
        let units: &[u16] = match &self.kind {
            PartKind::Gpt { name, .. } => {
                let n = name.iter().position(|&u| u == 0).unwrap_or(name.len());
                &name[..n]
            }
            PartKind::Mbr(_) => &[],
        };
        char::decode_utf16(units.iter().copied()).map(|c| c.unwrap_or('\u{fffd}'))
    }

    /// Sector after the last one.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.sectors)
    }
}

/// A parsed table.
pub type PartTable = heapless::Vec<PartEntry, MAX_PARTS>;

/// The MBR type of a GPT protective entry.
pub const MBR_PROTECTIVE: u8 = 0xee;

fn le32(b: &[u8], at: usize) -> Result<u32, BlkError> {
    let s = b.get(at..at + 4).ok_or(BlkError::BadPartitionTable)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le64(b: &[u8], at: usize) -> Result<u64, BlkError> {
    let lo = le32(b, at)? as u64;
    let hi = le32(b, at + 4)? as u64;
    Ok(lo | hi << 32)
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn push_checked(t: &mut PartTable, e: PartEntry, disk_sectors: u64) -> Result<(), BlkError> {
    let end = e
        .start
        .checked_add(e.sectors)
        .ok_or(BlkError::BadPartitionTable)?;
    if e.start == 0 || e.sectors == 0 || end > disk_sectors {
        return Err(BlkError::BadPartitionTable);
    }
    if t.iter()
        .any(|o| e.start < o.start + o.sectors && o.start < end)
    {
        return Err(BlkError::BadPartitionTable);
    }
    t.push(e).map_err(|_| BlkError::BadPartitionTable)
}

/// Parses the MBR in `sector0` (512 bytes) of a disk of `disk_sectors` sectors. A GPT disk
/// shows one protective entry (`PartKind::Mbr(MBR_PROTECTIVE)`): then read the GPT.
pub fn parse_mbr(sector0: &[u8], disk_sectors: u64) -> Result<PartTable, BlkError> {
    if sector0.len() < 512 || sector0[510] != 0x55 || sector0[511] != 0xaa {
        return Err(BlkError::BadPartitionTable);
    }
    let mut t = PartTable::new();
    for i in 0..4 {
        let e = 446 + 16 * i;
        let ty = sector0[e + 4];
        if ty == 0 {
            continue;
        }
        let start = le32(sector0, e + 8)? as u64;
        let count = le32(sector0, e + 12)? as u64;
        if ty == MBR_PROTECTIVE {
            // Covers the whole disk (or 2^32-1 sectors); not a real partition.
            let mut p = PartTable::new();
            let _ = p.push(PartEntry {
                start,
                sectors: count,
                kind: PartKind::Mbr(ty),
                number: i as u32 + 1,
            });
            return Ok(p);
        }
        push_checked(
            &mut t,
            PartEntry {
                start,
                sectors: count,
                kind: PartKind::Mbr(ty),
                number: i as u32 + 1,
            },
            disk_sectors,
        )?;
    }
    Ok(t)
}

/// Where a GPT header says its entry array is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GptHeader {
    /// First sector of the entry array.
    pub entries_lba: u64,
    /// Number of entries.
    pub num_entries: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// CRC-32 of the entry array.
    pub entries_crc: u32,
    /// First usable sector.
    pub first_usable: u64,
    /// Last usable sector (inclusive).
    pub last_usable: u64,
}

impl GptHeader {
    /// Bytes of the entry array.
    pub fn entries_bytes(&self) -> usize {
        self.num_entries as usize * self.entry_size as usize
    }
}

/// Parses and checks the GPT header in `lba1` (the 512 bytes of sector 1).
pub fn parse_gpt_header(lba1: &[u8], disk_sectors: u64) -> Result<GptHeader, BlkError> {
    gpt_header_at(lba1, disk_sectors, 1)
}

/// Parses and checks a GPT header read from LBA `at` (1 for the primary, the disk's last LBA
/// for the backup); sizes in logical blocks of `lba1.len()` bytes (at least 512).
fn gpt_header_at(lba1: &[u8], disk_sectors: u64, at: u64) -> Result<GptHeader, BlkError> {
    let block = lba1.len().max(512) as u64;
    if lba1.len() < 92 || &lba1[0..8] != b"EFI PART" {
        return Err(BlkError::BadPartitionTable);
    }
    let hsize = le32(lba1, 12)? as usize;
    if !(92..=lba1.len().min(512)).contains(&hsize) {
        return Err(BlkError::BadPartitionTable);
    }
    let want = le32(lba1, 16)?;
    let mut buf = [0u8; 512];
    buf[..hsize].copy_from_slice(&lba1[..hsize]);
    buf[16..20].fill(0);
    if crc32(&buf[..hsize]) != want {
        return Err(BlkError::BadPartitionTable);
    }
    let my_lba = le64(lba1, 24)?;
    let first_usable = le64(lba1, 40)?;
    let last_usable = le64(lba1, 48)?;
    let h = GptHeader {
        entries_lba: le64(lba1, 72)?,
        num_entries: le32(lba1, 80)?,
        entry_size: le32(lba1, 84)?,
        entries_crc: le32(lba1, 88)?,
        first_usable,
        last_usable,
    };
    let ok = my_lba == at
        && first_usable <= last_usable
        && last_usable < disk_sectors
        && h.entry_size >= 128
        && h.entry_size.is_multiple_of(8)
        && h.entry_size <= 4096
        && h.num_entries <= 1024
        && h.entries_lba >= 2
        && h.entries_lba
            .saturating_add((h.entries_bytes() as u64).div_ceil(block))
            <= disk_sectors;
    if ok {
        Ok(h)
    } else {
        Err(BlkError::BadPartitionTable)
    }
}

/// Parses the GPT entry array `entries` (at least `h.entries_bytes()` bytes) described by `h`.
pub fn parse_gpt_entries(
    h: &GptHeader,
    entries: &[u8],
    disk_sectors: u64,
) -> Result<PartTable, BlkError> {
    let bytes = entries
        .get(..h.entries_bytes())
        .ok_or(BlkError::BadPartitionTable)?;
    if crc32(bytes) != h.entries_crc {
        return Err(BlkError::BadPartitionTable);
    }
    let mut t = PartTable::new();
    for (i, e) in bytes.chunks_exact(h.entry_size as usize).enumerate() {
        let Some((first, last, kind)) = gpt_entry(e)? else {
            continue;
        };
        if first < h.first_usable || last > h.last_usable || last < first {
            return Err(BlkError::BadPartitionTable);
        }
        push_checked(
            &mut t,
            PartEntry {
                start: first,
                sectors: last - first + 1,
                kind,
                number: i as u32 + 1,
            },
            disk_sectors,
        )?;
    }
    Ok(t)
}

/// One GPT entry: first and last LBA and its kind, or `None` for an unused entry.
fn gpt_entry(e: &[u8]) -> Result<Option<(u64, u64, PartKind)>, BlkError> {
    let field = |r: core::ops::Range<usize>| e.get(r).ok_or(BlkError::BadPartitionTable);
    let mut type_guid = [0u8; 16];
    type_guid.copy_from_slice(field(0..16)?);
    if type_guid == [0; 16] {
        return Ok(None);
    }
    let mut unique_guid = [0u8; 16];
    unique_guid.copy_from_slice(field(16..32)?);
    let mut name = [0u16; GPT_NAME_UNITS];
    for (k, u) in field(56..56 + 2 * GPT_NAME_UNITS)?
        .chunks_exact(2)
        .enumerate()
    {
        name[k] = u16::from_le_bytes([u[0], u[1]]);
    }
    let kind = PartKind::Gpt {
        type_guid,
        unique_guid,
        name,
    };
    Ok(Some((le64(e, 32)?, le64(e, 40)?, kind)))
}

/// MBR types of an extended partition (the container of the logical partitions' chain).
pub const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

/// Which table a disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// An MBR (DOS) table, with its logical partitions.
    Mbr,
    /// A GPT behind a protective MBR.
    Gpt,
}

/// What is wrong with one GPT copy (header and entry array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GptDamage {
    /// No `EFI PART` signature.
    NoSignature,
    /// The header's CRC-32 does not match.
    HeaderCrc,
    /// A header field is out of bounds (own LBA, usable range, entry size or count, array
    /// position).
    HeaderFields,
    /// The entry array's CRC-32 does not match the header's.
    EntriesCrc,
    /// The entry array is larger than the scan's scratch buffer.
    EntriesTooLarge,
    /// Reading it failed.
    Read(BlkError),
}

/// Why one partition entry was refused (the others are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It reaches past the end of the disk (or of the extended partition, for a logical one).
    OutOfDisk,
    /// It overlaps partition number `.0`, accepted before it.
    Overlap(u32),
    /// It starts at sector 0 or has no sectors.
    Empty,
    /// A GPT entry outside the header's usable range.
    OutsideUsable,
    /// More partitions than [`MAX_PARTS`].
    TooMany,
    /// The logical chain points back to a link already read, or at more links than
    /// [`MAX_PARTS`]: the chain stops there.
    ChainLoop,
    /// A link of the logical chain lies outside the extended partition, or has no `55 aa`
    /// signature: the chain stops there.
    ChainBroken,
}

/// One refused entry: its number and what it claimed, in the disk's logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The partition number it would have had.
    pub number: u32,
    /// First logical block it claimed.
    pub start: u64,
    /// Logical blocks it claimed.
    pub blocks: u64,
    /// Why.
    pub why: Refusal,
}

/// What [`scan`] found on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Which table.
    pub scheme: Scheme,
    /// The partitions accepted, in 512-byte sectors, in number order.
    pub parts: PartTable,
    /// The entries refused, with the reason, in the disk's logical blocks.
    pub refused: heapless::Vec<Refused, MAX_PARTS>,
    /// GPT: why the primary copy was not used, when the backup at the end of the disk was.
    pub primary_damage: Option<GptDamage>,
}

/// Why [`scan`] found no table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// No `55 aa` signature in block 0: the disk is not partitioned.
    NoTable,
    /// A protective MBR, but neither GPT copy is usable.
    BadGpt {
        /// What is wrong with the primary copy.
        primary: GptDamage,
        /// What is wrong with the backup copy.
        backup: GptDamage,
    },
    /// Block 0 could not be read.
    Read(BlkError),
    /// The logical block size is not a multiple of 512 bytes, or the scratch buffer is
    /// smaller than two blocks.
    BadArguments,
}

/// Reads whole logical blocks: `read(lba, buf)` fills `buf` (a multiple of the block size)
/// from block `lba` on.
pub type ReadBlocks<'a> = &'a mut dyn FnMut(u64, &mut [u8]) -> Result<(), BlkError>;

/// Scans a disk of `disk_blocks` logical blocks of `block_size` bytes for an MBR or GPT
/// table, reading it through `read`. `scratch` holds one block plus the GPT entry array (16
/// KiB + one block for the usual 128 entries of 128 bytes). See the module docs.
pub fn scan(
    block_size: u32,
    disk_blocks: u64,
    read: ReadBlocks<'_>,
    scratch: &mut [u8],
) -> Result<Scan, ScanError> {
    let bs = block_size as usize;
    if bs < 512 || !bs.is_multiple_of(512) || scratch.len() < 2 * bs {
        return Err(ScanError::BadArguments);
    }
    let per_block = block_size as u64 / 512;
    let (block, rest) = scratch.split_at_mut(bs);
    read(0, block).map_err(ScanError::Read)?;
    if block[510] != 0x55 || block[511] != 0xaa {
        return Err(ScanError::NoTable);
    }
    let mut s = Scan {
        scheme: Scheme::Mbr,
        parts: PartTable::new(),
        refused: heapless::Vec::new(),
        primary_damage: None,
    };
    let protective = (0..4).any(|i| block[446 + 16 * i + 4] == MBR_PROTECTIVE);
    if protective {
        s.scheme = Scheme::Gpt;
        scan_gpt(&mut s, disk_blocks, read, block, rest)?;
    } else {
        scan_mbr(&mut s, disk_blocks, read, block);
    }
    // Blocks to 512-byte sectors, then number order.
    for p in s.parts.iter_mut() {
        p.start *= per_block;
        p.sectors *= per_block;
    }
    s.parts.sort_unstable_by_key(|p| p.number);
    Ok(s)
}

/// Accepts `e` (in blocks) into `s` unless it is empty, leaves `[lo, hi)` or overlaps an
/// accepted entry; a refusal is recorded instead.
fn accept(s: &mut Scan, e: PartEntry, lo: u64, hi: u64) {
    let end = e.start.checked_add(e.sectors);
    let why = if e.start == 0 || e.sectors == 0 {
        Some(Refusal::Empty)
    } else if e.start < lo || end.is_none_or(|end| end > hi) {
        Some(Refusal::OutOfDisk)
    } else if let Some(o) = s
        .parts
        .iter()
        .find(|o| e.start < o.end() && o.start < e.end())
    {
        Some(Refusal::Overlap(o.number))
    } else {
        s.parts.push(e).err().map(|_| Refusal::TooMany)
    };
    if let Some(why) = why {
        refuse(s, e.number, e.start, e.sectors, why);
    }
}

fn refuse(s: &mut Scan, number: u32, start: u64, blocks: u64, why: Refusal) {
    // The list has room for MAX_PARTS refusals; further ones are dropped.
    let _ = s.refused.push(Refused {
        number,
        start,
        blocks,
        why,
    });
}

/// One MBR slot: type, start, length.
fn mbr_slot(b: &[u8], i: usize) -> (u8, u64, u64) {
    let e = 446 + 16 * i;
    let start = u32::from_le_bytes([b[e + 8], b[e + 9], b[e + 10], b[e + 11]]);
    let count = u32::from_le_bytes([b[e + 12], b[e + 13], b[e + 14], b[e + 15]]);
    (b[e + 4], start as u64, count as u64)
}

/// The MBR in `block` (block 0) and the chain of logical partitions of its extended one.
fn scan_mbr(s: &mut Scan, disk: u64, read: ReadBlocks<'_>, block: &mut [u8]) {
    let mut extended = None;
    for i in 0..4 {
        let (ty, start, count) = mbr_slot(block, i);
        let number = i as u32 + 1;
        if ty == 0 {
            continue;
        }
        if MBR_EXTENDED.contains(&ty) {
            let end = start.checked_add(count);
            if start == 0 || count == 0 || end.is_none_or(|end| end > disk) {
                refuse(s, number, start, count, Refusal::OutOfDisk);
            } else if extended.is_none() {
                extended = Some((start, start + count));
            }
            continue;
        }
        let e = PartEntry {
            start,
            sectors: count,
            kind: PartKind::Mbr(ty),
            number,
        };
        accept(s, e, 1, disk);
    }
    let Some((ext_start, ext_end)) = extended else {
        return;
    };
    // Each link (EBR) holds a logical partition relative to itself and the next link
    // relative to the extended partition's start. Links read so far, for loop detection.
    let mut seen = heapless::Vec::<u64, MAX_PARTS>::new();
    let mut link = ext_start;
    let mut number = 5;
    loop {
        if seen.contains(&link) || seen.push(link).is_err() {
            refuse(s, number, link, 0, Refusal::ChainLoop);
            return;
        }
        if read(link, block).is_err() || block[510] != 0x55 || block[511] != 0xaa {
            refuse(s, number, link, 0, Refusal::ChainBroken);
            return;
        }
        let (ty, rel, count) = mbr_slot(block, 0);
        if ty != 0 && !MBR_EXTENDED.contains(&ty) {
            let e = PartEntry {
                start: link.saturating_add(rel),
                sectors: count,
                kind: PartKind::Mbr(ty),
                number,
            };
            // A logical partition lies after its link, inside the extended partition.
            accept(s, e, link + 1, ext_end);
            number += 1;
        }
        let (next_ty, next_rel, _) = mbr_slot(block, 1);
        if !MBR_EXTENDED.contains(&next_ty) || next_rel == 0 {
            return;
        }
        link = ext_start.saturating_add(next_rel);
        if link >= ext_end {
            refuse(s, number, link, 0, Refusal::ChainBroken);
            return;
        }
    }
}

/// The GPT: the primary copy, else the backup at the last block.
fn scan_gpt(
    s: &mut Scan,
    disk: u64,
    read: ReadBlocks<'_>,
    block: &mut [u8],
    entries: &mut [u8],
) -> Result<(), ScanError> {
    let primary = match gpt_copy(disk, 1, read, block, entries) {
        Ok(h) => h,
        Err(primary) => {
            let last = disk.checked_sub(1).ok_or(ScanError::BadGpt {
                primary,
                backup: GptDamage::HeaderFields,
            })?;
            match gpt_copy(disk, last, read, block, entries) {
                Ok(h) => {
                    s.primary_damage = Some(primary);
                    h
                }
                Err(backup) => return Err(ScanError::BadGpt { primary, backup }),
            }
        }
    };
    let h = primary;
    let bytes = &entries[..h.entries_bytes()];
    for (i, e) in bytes.chunks_exact(h.entry_size as usize).enumerate() {
        let Ok(Some((first, last, kind))) = gpt_entry(e) else {
            continue;
        };
        let number = i as u32 + 1;
        if last < first || first < h.first_usable || last > h.last_usable {
            let blocks = last.wrapping_sub(first).wrapping_add(1);
            let why = if last >= disk || last < first {
                Refusal::OutOfDisk
            } else {
                Refusal::OutsideUsable
            };
            refuse(s, number, first, blocks, why);
            continue;
        }
        let e = PartEntry {
            start: first,
            sectors: last - first + 1,
            kind,
            number,
        };
        accept(s, e, 1, disk);
    }
    Ok(())
}

/// Reads and checks the GPT header at block `at` and its entry array (into `entries`).
fn gpt_copy(
    disk: u64,
    at: u64,
    read: ReadBlocks<'_>,
    block: &mut [u8],
    entries: &mut [u8],
) -> Result<GptHeader, GptDamage> {
    read(at, block).map_err(GptDamage::Read)?;
    if &block[0..8] != b"EFI PART" {
        return Err(GptDamage::NoSignature);
    }
    let h = gpt_header_at(block, disk, at).map_err(|_| {
        // Tell a CRC mismatch from bad fields: the same check with the CRC field fixed up.
        let hsize = (le32(block, 12).unwrap_or(0) as usize).clamp(92, 512);
        let mut copy = [0u8; 512];
        copy[..hsize].copy_from_slice(&block[..hsize]);
        copy[16..20].fill(0);
        let crc = crc32(&copy[..hsize]);
        if le32(block, 16) == Ok(crc) {
            GptDamage::HeaderFields
        } else {
            GptDamage::HeaderCrc
        }
    })?;
    let bs = block.len();
    let len = h.entries_bytes().div_ceil(bs) * bs;
    let buf = entries.get_mut(..len).ok_or(GptDamage::EntriesTooLarge)?;
    read(h.entries_lba, buf).map_err(GptDamage::Read)?;
    if crc32(&buf[..h.entries_bytes()]) != h.entries_crc {
        return Err(GptDamage::EntriesCrc);
    }
    Ok(h)
}
