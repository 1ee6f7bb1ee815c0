//! ATA/ATAPI command set (ACS-3) pieces the driver needs: command opcodes, the IDENTIFY DEVICE
//! words, and the NCQ command error log (page 10h). Pure data and parsing, tested on the host.

/// ATA command opcodes.
pub mod ata {
    /// DATA SET MANAGEMENT (TRIM when feature bit 0 is set).
    pub const DATA_SET_MANAGEMENT: u8 = 0x06;
    /// READ DMA EXT (48-bit LBA).
    pub const READ_DMA_EXT: u8 = 0x25;
    /// READ LOG EXT (PIO data-in).
    pub const READ_LOG_EXT: u8 = 0x2f;
    /// WRITE DMA EXT (48-bit LBA).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// WRITE DMA FUA EXT.
    pub const WRITE_DMA_FUA_EXT: u8 = 0x3d;
    /// READ FPDMA QUEUED (NCQ).
    pub const READ_FPDMA_QUEUED: u8 = 0x60;
    /// WRITE FPDMA QUEUED (NCQ).
    pub const WRITE_FPDMA_QUEUED: u8 = 0x61;
    /// FLUSH CACHE EXT.
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    /// IDENTIFY DEVICE (PIO data-in, 512 bytes).
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    /// GET MEDIA STATUS (non-data; removable-media status notification, ATA-4 to ATA-7): ERR
    /// with the error register's WP bit when the media is write-protected.
    pub const GET_MEDIA_STATUS: u8 = 0xda;
}

/// Bits of the ATA error register (`PxTFD` bits 15:8, the NCQ log's error byte).
pub mod ata_error {
    /// Write protected (bit 6 of the error register on a failed write command): the media is
    /// write-protected. From the removable-media status notification feature set (ATA-4 to
    /// ATA/ATAPI-7, e.g. CompactFlash and other removable media behind SATA bridges); on reads
    /// this bit is UNC, so it is only taken as write protection for a write.
    pub const WP: u8 = 1 << 6;
    /// Uncorrectable data (bit 6 on a read).
    pub const UNC: u8 = 1 << 6;
    /// Command aborted.
    pub const ABRT: u8 = 1 << 2;
}

/// Sense data of a failed NCQ command in the NCQ command error log (ACS-4 NCQ autosense:
/// bytes 14, 15 and 16 of page 10h hold sense key, ASC and ASCQ).
pub mod sense {
    /// Sense key DATA PROTECT.
    pub const KEY_DATA_PROTECT: u8 = 0x07;
    /// Additional sense code WRITE PROTECTED (ASCQ 00h: write protected, 01h: hardware, 02h:
    /// software write protect, ...).
    pub const ASC_WRITE_PROTECTED: u8 = 0x27;
}

/// The NCQ command error log page.
pub const LOG_NCQ_ERROR: u8 = 0x10;

/// Most sectors one READ/WRITE DMA EXT or FPDMA command moves (a count of 0 means 65536).
pub const MAX_ATA_SECTORS: u32 = 65536;

/// Most blocks one TRIM range entry covers.
pub const TRIM_RANGE_MAX: u64 = 0xffff;

/// What IDENTIFY DEVICE says about a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyInfo {
    /// Logical blocks (LBA48 count when supported, else the 28-bit count).
    pub blocks: u64,
    /// Logical sector size in bytes.
    pub logical_sector_size: u32,
    /// Physical sector size in bytes.
    pub physical_sector_size: u32,
    /// 48-bit addressing.
    pub lba48: bool,
    /// NCQ supported.
    pub ncq: bool,
    /// NCQ queue depth the device takes (1..=32).
    pub ncq_depth: u8,
    /// A volatile write cache exists.
    pub write_cache: bool,
    /// The write cache is enabled.
    pub write_cache_enabled: bool,
    /// WRITE DMA FUA EXT supported.
    pub fua: bool,
    /// DATA SET MANAGEMENT with TRIM supported.
    pub trim: bool,
    /// 512-byte blocks of TRIM ranges one DSM command takes (word 105; at least 1 with TRIM).
    pub trim_max_blocks: u16,
    /// Model, ASCII, trailing blanks kept.
    pub model: [u8; 40],
    /// Serial number, ASCII.
    pub serial: [u8; 20],
    /// The removable-media status notification feature set (word 127 bits 1:0 = 01b): GET
    /// MEDIA STATUS tells whether the media is write-protected.
    pub media_status: bool,
}

/// Why IDENTIFY data was refused.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyError {
    /// Not a disk (word 0 bit 15: ATAPI or another kind of device).
    NotAta,
    /// No capacity.
    Empty,
    /// The sector size words make no sense.
    BadSectorSize,
}

/// Copies an ATA string (two characters per word, high byte first) out of IDENTIFY words.
fn ata_string<const N: usize>(w: &[u16; 256], first: usize) -> [u8; N] {
    let mut s = [b' '; N];
    for (i, pair) in s.chunks_exact_mut(2).enumerate() {
        let v = w[first + i];
        pair[0] = (v >> 8) as u8;
        pair[1] = v as u8;
    }
    for c in &mut s {
        if !c.is_ascii_graphic() {
            *c = b' ';
        }
    }
    s
}

/// Trims trailing (and leading) blanks off an ATA string.
pub fn trimmed(s: &[u8]) -> &str {
    core::str::from_utf8(s).unwrap_or("?").trim()
}

impl IdentifyInfo {
    /// Parses the 256 words of IDENTIFY DEVICE data.
    pub fn parse(w: &[u16; 256]) -> Result<IdentifyInfo, IdentifyError> {
        if w[0] & 0x8000 != 0 {
            return Err(IdentifyError::NotAta);
        }
        let lba48 = w[83] & (1 << 10) != 0;
        let blocks = if lba48 {
            (w[100] as u64) | (w[101] as u64) << 16 | (w[102] as u64) << 32 | (w[103] as u64) << 48
        } else {
            (w[60] as u64) | (w[61] as u64) << 16
        };
        if blocks == 0 {
            return Err(IdentifyError::Empty);
        }
        // Word 106 is valid when bit 14 is set and bit 15 clear.
        let w106 = w[106];
        let (mut logical, mut physical) = (512u32, 512u32);
        if w106 & 0xc000 == 0x4000 {
            if w106 & (1 << 12) != 0 {
                let words = (w[117] as u32) | (w[118] as u32) << 16;
                logical = words * 2;
            }
            physical = if w106 & (1 << 13) != 0 {
                logical << (w106 & 0xf)
            } else {
                logical
            };
        }
        if !logical.is_power_of_two() || !(512..=65536).contains(&logical) || physical < logical {
            return Err(IdentifyError::BadSectorSize);
        }
        let ncq = w[76] != 0xffff && w[76] & (1 << 8) != 0;
        let valid = |v: u16| v != 0 && v != 0xffff;
        let trim = valid(w[169]) && w[169] & 1 != 0;
        Ok(IdentifyInfo {
            blocks,
            logical_sector_size: logical,
            physical_sector_size: physical,
            lba48,
            ncq,
            ncq_depth: if ncq { (w[75] & 0x1f) as u8 + 1 } else { 1 },
            write_cache: valid(w[82]) && w[82] & (1 << 5) != 0,
            write_cache_enabled: valid(w[85]) && w[85] & (1 << 5) != 0,
            fua: lba48 && valid(w[84]) && w[84] & (1 << 6) != 0,
            trim,
            trim_max_blocks: if trim { w[105].clamp(1, 8) } else { 0 },
            model: ata_string(w, 27),
            serial: ata_string(w, 10),
            media_status: w[127] & 3 == 1,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.blocks * (self.logical_sector_size as u64 / 512)
    }
}

/// Converts 512 bytes of little-endian data into IDENTIFY words.
pub fn words(bytes: &[u8; 512]) -> [u16; 256] {
    let mut w = [0u16; 256];
    for (i, v) in w.iter_mut().enumerate() {
        *v = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    }
    w
}

/// What the NCQ command error log (page 10h) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcqErrorLog {
    /// The command with this tag failed; `status`/`error` are its ATA registers.
    Tag {
        /// The failed command's tag.
        tag: u8,
        /// ATA status.
        status: u8,
        /// ATA error.
        error: u8,
        /// Sense key, ASC, ASCQ (bytes 14 to 16; zero when the device does no NCQ autosense).
        sense: [u8; 3],
        /// The failed command's LBA (bytes 4 to 6 and 8 to 10).
        lba: u64,
    },
    /// The error was not in a queued command (NQ set), or the page is empty.
    NotQueued,
    /// The page checksum is wrong.
    BadChecksum,
}

/// Parses page 10h of the general purpose log.
pub fn parse_ncq_error_log(page: &[u8; 512]) -> NcqErrorLog {
    let sum = page.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    if sum != 0 {
        return NcqErrorLog::BadChecksum;
    }
    if page[0] & 0x80 != 0 {
        return NcqErrorLog::NotQueued;
    }
    NcqErrorLog::Tag {
        tag: page[0] & 0x1f,
        status: page[2],
        error: page[3],
        sense: [page[14] & 0x0f, page[15], page[16]],
        lba: [4, 5, 6, 8, 9, 10]
            .iter()
            .enumerate()
            .fold(0, |a, (i, &k)| a | (page[k] as u64) << (8 * i)),
    }
}

impl NcqErrorLog {
    /// Whether the log says the failed command hit write-protected media, for a failed write:
    /// the error register's WP bit (UNC on a read), or sense DATA PROTECT / WRITE PROTECTED.
    pub fn write_protected(&self) -> bool {
        match *self {
            NcqErrorLog::Tag { error, sense, .. } => {
                error & ata_error::WP != 0
                    || (sense[0] == sense::KEY_DATA_PROTECT
                        && sense[1] == sense::ASC_WRITE_PROTECTED)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn qemu_words() -> [u16; 256] {
        super::tests::qemu_like()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_str(w: &mut [u16; 256], first: usize, s: &str) {
        let b = s.as_bytes();
        for (i, pair) in b.chunks(2).enumerate() {
            w[first + i] = (pair[0] as u16) << 8 | pair.get(1).copied().unwrap_or(b' ') as u16;
        }
    }

    pub(crate) fn qemu_like() -> [u16; 256] {
        let mut w = [0u16; 256];
        w[0] = 0x0040;
        put_str(&mut w, 10, "QM00001             ");
        put_str(&mut w, 27, "QEMU HARDDISK                           ");
        w[60] = 0xffff;
        w[61] = 0x0fff;
        w[75] = 31;
        w[76] = 1 << 8;
        w[82] = 1 << 5;
        w[83] = 1 << 10;
        w[84] = 1 << 6;
        w[85] = 1 << 5;
        w[100] = 0x0000;
        w[101] = 0x0002; // 0x20000 blocks = 64 MiB
        w[106] = 0x4000 | 1 << 13 | 3; // 8 logical per physical
        w[169] = 1;
        w[105] = 1;
        w
    }

    #[test]
    fn identify_of_a_qemu_like_disk() {
        let i = IdentifyInfo::parse(&qemu_like()).unwrap();
        assert_eq!(i.blocks, 0x20000);
        assert_eq!(i.sectors(), 0x20000);
        assert_eq!(i.logical_sector_size, 512);
        assert_eq!(i.physical_sector_size, 4096);
        assert!(i.lba48 && i.ncq && i.write_cache && i.write_cache_enabled && i.fua && i.trim);
        assert_eq!(i.ncq_depth, 32);
        assert_eq!(i.trim_max_blocks, 1);
        assert_eq!(trimmed(&i.model), "QEMU HARDDISK");
        assert_eq!(trimmed(&i.serial), "QM00001");
    }

    #[test]
    fn identify_without_lba48_ncq_or_word_106() {
        let mut w = qemu_like();
        w[83] = 0;
        w[76] = 0;
        w[106] = 0xffff;
        w[169] = 0xffff;
        let i = IdentifyInfo::parse(&w).unwrap();
        assert_eq!(i.blocks, 0x0fff_ffff);
        assert!(!i.ncq && !i.trim && !i.fua);
        assert_eq!(i.ncq_depth, 1);
        assert_eq!(i.physical_sector_size, 512);
    }

    #[test]
    fn identify_large_logical_sectors_and_refusals() {
        let mut w = qemu_like();
        w[106] = 0x4000 | 1 << 12;
        w[117] = 2048; // words: 4096 bytes
        let i = IdentifyInfo::parse(&w).unwrap();
        assert_eq!(i.logical_sector_size, 4096);
        assert_eq!(i.sectors(), 0x20000 * 8);
        w[117] = 300;
        assert_eq!(IdentifyInfo::parse(&w), Err(IdentifyError::BadSectorSize));
        let mut w = qemu_like();
        w[0] = 0x8580;
        assert_eq!(IdentifyInfo::parse(&w), Err(IdentifyError::NotAta));
        let mut w = qemu_like();
        w[100] = 0;
        w[101] = 0;
        assert_eq!(IdentifyInfo::parse(&w), Err(IdentifyError::Empty));
    }

    #[test]
    fn ncq_error_log_page() {
        let mut p = [0u8; 512];
        p[0] = 7;
        p[2] = 0x41;
        p[3] = 0x40;
        p[511] = 0u8.wrapping_sub(7 + 0x41 + 0x40);
        assert_eq!(
            parse_ncq_error_log(&p),
            NcqErrorLog::Tag {
                tag: 7,
                status: 0x41,
                error: 0x40,
                sense: [0; 3],
                lba: 0,
            }
        );
        // UNC on a read is bit 6, the bit that means write protected on a write.
        assert!(parse_ncq_error_log(&p).write_protected());
        let mut wp = [0u8; 512];
        wp[0] = 3;
        wp[3] = ata_error::ABRT;
        wp[14] = sense::KEY_DATA_PROTECT;
        wp[15] = sense::ASC_WRITE_PROTECTED;
        wp[511] = 0u8.wrapping_sub(3 + 4 + 7 + 0x27);
        let l = parse_ncq_error_log(&wp);
        assert!(l.write_protected(), "{l:?}");
        wp[15] = 0x11;
        wp[511] = wp[511].wrapping_add(0x27 - 0x11);
        assert!(!parse_ncq_error_log(&wp).write_protected());
        p[1] = 1;
        assert_eq!(parse_ncq_error_log(&p), NcqErrorLog::BadChecksum);
        let mut q = [0u8; 512];
        q[0] = 0x80;
        q[511] = 0x80;
        assert_eq!(parse_ncq_error_log(&q), NcqErrorLog::NotQueued);
    }
}
