//! Command construction: the host-to-device register FIS (SATA 3.x section 10.5.5), the
//! command header (AHCI 4.2.2), the command table layout, and TRIM range entries. Pure, tested
//! on the host.

use crate::spec::{MAX_ATA_SECTORS, TRIM_RANGE_MAX, ata};

/// Command slots (and NCQ tags) per port.
pub const SLOTS: usize = 32;
/// Bytes of one command header.
pub const HEADER_BYTES: usize = 32;
/// Bytes of a received-FIS area.
pub const RFIS_BYTES: usize = 256;
/// Offset of the PRDT in a command table (after CFIS, ACMD and reserved bytes).
pub const PRDT_OFFSET: usize = 0x80;
/// Bytes of one PRDT entry.
pub const PRD_BYTES: usize = 16;
/// PRDT entries per command table.
pub const PRDT_ENTRIES: usize = 128;
/// Offset of the TRIM range block in a command table.
pub const TRIM_OFFSET: usize = PRDT_OFFSET + PRDT_ENTRIES * PRD_BYTES;
/// Bytes of one command table (128-byte aligned).
pub const TABLE_BYTES: usize = (TRIM_OFFSET + 512).next_multiple_of(128);

const _: () = assert!(TABLE_BYTES.is_multiple_of(128) && TRIM_OFFSET + 512 <= TABLE_BYTES);

/// Host-to-device register FIS type.
pub const FIS_TYPE_REG_H2D: u8 = 0x27;
/// Length of a register FIS in dwords (the header's CFL).
pub const FIS_H2D_DWORDS: u32 = 5;
/// ATA device register: LBA mode.
pub const DEVICE_LBA: u8 = 1 << 6;
/// ATA device register bit 7 in an FPDMA command: force unit access.
pub const DEVICE_FUA: u8 = 1 << 7;

/// A host-to-device register FIS (20 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2dFis {
    /// ATA command.
    pub command: u8,
    /// Features (16 bits: 7:0 and 15:8).
    pub features: u16,
    /// 48-bit LBA.
    pub lba: u64,
    /// Device register.
    pub device: u8,
    /// Count (16 bits).
    pub count: u16,
}

impl H2dFis {
    /// The 20 wire bytes (command bit set: this FIS carries a new command).
    pub fn to_bytes(&self) -> [u8; 20] {
        let l = self.lba.to_le_bytes();
        let f = self.features.to_le_bytes();
        let c = self.count.to_le_bytes();
        [
            FIS_TYPE_REG_H2D,
            0x80,
            self.command,
            f[0],
            l[0],
            l[1],
            l[2],
            self.device,
            l[3],
            l[4],
            l[5],
            f[1],
            c[0],
            c[1],
            0,
            0,
            0,
            0,
            0,
            0,
        ]
    }

    /// The FIS as five little-endian dwords (the bytes of [`H2dFis::to_bytes`]).
    #[inline]
    pub fn to_dwords(&self) -> [u32; 5] {
        let f = self.features as u32;
        let lba = self.lba;
        [
            FIS_TYPE_REG_H2D as u32 | 0x80 << 8 | (self.command as u32) << 16 | (f & 0xff) << 24,
            (lba & 0xff_ffff) as u32 | (self.device as u32) << 24,
            ((lba >> 24) & 0xff_ffff) as u32 | (f >> 8) << 24,
            self.count as u32,
            0,
        ]
    }

    /// READ/WRITE FPDMA QUEUED of `blocks` (1..=65536) at `lba` with NCQ `tag`.
    pub fn fpdma(write: bool, lba: u64, blocks: u32, tag: u8, fua: bool) -> H2dFis {
        H2dFis {
            command: if write {
                ata::WRITE_FPDMA_QUEUED
            } else {
                ata::READ_FPDMA_QUEUED
            },
            features: count16(blocks),
            lba,
            device: DEVICE_LBA | if fua { DEVICE_FUA } else { 0 },
            count: ((tag as u16) & 0x1f) << 3,
        }
    }

    /// READ/WRITE DMA EXT of `blocks` (1..=65536) at `lba`.
    pub fn dma_ext(write: bool, lba: u64, blocks: u32) -> H2dFis {
        H2dFis {
            command: if write {
                ata::WRITE_DMA_EXT
            } else {
                ata::READ_DMA_EXT
            },
            features: 0,
            lba,
            device: DEVICE_LBA,
            count: count16(blocks),
        }
    }

    /// A command without parameters (FLUSH CACHE EXT, IDENTIFY DEVICE).
    pub fn simple(command: u8) -> H2dFis {
        H2dFis {
            command,
            device: DEVICE_LBA,
            ..H2dFis::default()
        }
    }

    /// READ LOG EXT of `pages` 512-byte pages of log `log`.
    pub fn read_log_ext(log: u8, pages: u16) -> H2dFis {
        H2dFis {
            command: ata::READ_LOG_EXT,
            features: 0,
            lba: log as u64,
            device: DEVICE_LBA,
            count: pages,
        }
    }

    /// DATA SET MANAGEMENT / TRIM with `blocks` 512-byte blocks of range entries.
    pub fn trim(blocks: u16) -> H2dFis {
        H2dFis {
            command: ata::DATA_SET_MANAGEMENT,
            features: 1,
            lba: 0,
            device: DEVICE_LBA,
            count: blocks,
        }
    }
}

/// A 16-bit ATA count where 0 means 65536.
fn count16(blocks: u32) -> u16 {
    debug_assert!((1..=MAX_ATA_SECTORS).contains(&blocks));
    (blocks & 0xffff) as u16
}

/// Dword 0 of a command header: FIS length, write direction, clear-busy-on-R_OK, PRDT length.
pub fn header_dw0(write: bool, prdtl: u16) -> u32 {
    FIS_H2D_DWORDS | if write { 1 << 6 } else { 0 } | (prdtl as u32) << 16
}

/// The PRDT length field of a header's dword 0.
pub fn header_prdtl(dw0: u32) -> u16 {
    (dw0 >> 16) as u16
}

/// One TRIM range entry: LBA in bits 47:0, block count in 63:48.
pub fn trim_entry(lba: u64, blocks: u64) -> u64 {
    debug_assert!(blocks <= TRIM_RANGE_MAX && lba < 1 << 48);
    (lba & 0xffff_ffff_ffff) | blocks << 48
}

/// Fills `out` with range entries covering `blocks` blocks from `lba`; returns how many were
/// used, or `None` when `out` is too small.
pub fn trim_ranges(mut lba: u64, mut blocks: u64, out: &mut [u64]) -> Option<usize> {
    let mut n = 0;
    while blocks > 0 {
        let b = blocks.min(TRIM_RANGE_MAX);
        *out.get_mut(n)? = trim_entry(lba, b);
        n += 1;
        lba += b;
        blocks -= b;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpdma_fis_bytes() {
        let f = H2dFis::fpdma(true, 0x0123_4567_89ab, 8, 31, true).to_bytes();
        assert_eq!(&f[..4], &[0x27, 0x80, 0x61, 8]);
        assert_eq!(&f[4..7], &[0xab, 0x89, 0x67]);
        assert_eq!(f[7], 0xc0);
        assert_eq!(&f[8..12], &[0x45, 0x23, 0x01, 0]);
        assert_eq!(&f[12..14], &[31 << 3, 0]);
        let r = H2dFis::fpdma(false, 5, 65536, 3, false).to_bytes();
        assert_eq!((r[2], r[3], r[11], r[7], r[12]), (0x60, 0, 0, 0x40, 3 << 3));
    }

    #[test]
    fn dma_ext_and_simple_fis() {
        let f = H2dFis::dma_ext(false, 1 << 40, 256).to_bytes();
        assert_eq!((f[2], f[10], f[12], f[13]), (0x25, 1, 0, 1));
        let d = H2dFis::dma_ext(true, 0, 1).to_dwords();
        assert_eq!(d[0], 0x0035_8027);
        assert_eq!(d[3], 1);
        let l = H2dFis::read_log_ext(0x10, 1).to_bytes();
        assert_eq!((l[2], l[4], l[12]), (0x2f, 0x10, 1));
        let t = H2dFis::trim(1).to_bytes();
        assert_eq!((t[2], t[3], t[12]), (0x06, 1, 1));
        assert_eq!(H2dFis::simple(0xec).to_bytes()[2], 0xec);
    }

    #[test]
    fn dwords_are_the_wire_bytes() {
        let fises = [
            H2dFis::fpdma(true, 0xfedc_ba98_7654, 65536, 31, true),
            H2dFis::fpdma(false, 1, 8, 0, false),
            H2dFis::dma_ext(true, 0xffff_ffff_ffff, 1),
            H2dFis::read_log_ext(0x10, 1),
            H2dFis::trim(1),
            H2dFis {
                command: 0xab,
                features: 0xa55a,
                lba: 0x0102_0304_0506,
                device: 0xe0,
                count: 0xbeef,
            },
        ];
        for f in fises {
            let b = f.to_bytes();
            let d = f.to_dwords();
            for i in 0..5 {
                assert_eq!(
                    d[i],
                    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
                    "{f:?} dword {i}"
                );
            }
        }
    }

    #[test]
    fn header_and_trim_entries() {
        assert_eq!(header_dw0(false, 3), 0x0003_0005);
        assert_eq!(header_dw0(true, 0), 0x45);
        assert_eq!(header_prdtl(header_dw0(true, 128)), 128);
        assert_eq!(trim_entry(0x10, 8), 0x0008_0000_0000_0010);
        let mut out = [0u64; 4];
        assert_eq!(trim_ranges(0, 0x1_0000, &mut out), Some(2));
        assert_eq!(out[0], trim_entry(0, 0xffff));
        assert_eq!(out[1], trim_entry(0xffff, 1));
        assert_eq!(trim_ranges(0, 0xffff * 5, &mut out), None);
    }
}
