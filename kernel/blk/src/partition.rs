//! MBR and GPT partition table parsing. Pure functions over sector bytes: every field read
//! from the disk is checked (signature, CRCs, bounds, overlap) before a partition is built.

use crate::error::BlkError;

/// Most partitions returned.
pub const MAX_PARTS: usize = 16;

/// What kind of entry a partition came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartKind {
    /// An MBR entry with its type byte.
    Mbr(u8),
    /// A GPT entry with its type and unique GUIDs (raw bytes).
    Gpt {
        /// Partition type GUID.
        type_guid: [u8; 16],
        /// Unique partition GUID.
        unique_guid: [u8; 16],
    },
}

/// One partition: `sectors` 512-byte sectors from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartEntry {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// Origin.
    pub kind: PartKind,
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
            });
            return Ok(p);
        }
        push_checked(
            &mut t,
            PartEntry {
                start,
                sectors: count,
                kind: PartKind::Mbr(ty),
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
    let ok = my_lba == 1
        && first_usable <= last_usable
        && last_usable < disk_sectors
        && h.entry_size >= 128
        && h.entry_size.is_multiple_of(8)
        && h.entry_size <= 4096
        && h.num_entries <= 1024
        && h.entries_lba >= 2
        && h.entries_lba
            .saturating_add((h.entries_bytes() as u64).div_ceil(512))
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
    for e in bytes.chunks_exact(h.entry_size as usize) {
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[0..16]);
        if type_guid == [0; 16] {
            continue;
        }
        let mut unique_guid = [0u8; 16];
        unique_guid.copy_from_slice(&e[16..32]);
        let first = le64(e, 32)?;
        let last = le64(e, 40)?;
        if first < h.first_usable || last > h.last_usable || last < first {
            return Err(BlkError::BadPartitionTable);
        }
        push_checked(
            &mut t,
            PartEntry {
                start: first,
                sectors: last - first + 1,
                kind: PartKind::Gpt {
                    type_guid,
                    unique_guid,
                },
            },
            disk_sectors,
        )?;
    }
    Ok(t)
}
