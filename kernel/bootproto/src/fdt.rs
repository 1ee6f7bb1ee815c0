//! The flattened device tree header (Devicetree Specification 0.4, section 5.2): checked before
//! the blob is handed to a parser, so that a bad pointer in `a1` or a truncated blob stops the
//! boot with a reason instead of a wild read.

/// `magic`.
pub const MAGIC: u32 = 0xd00d_feed;
/// Bytes of the version-17 header.
pub const HEADER_LEN: usize = 40;
/// Largest blob accepted.
pub const MAX_SIZE: u32 = 4 << 20;

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer than 40 bytes.
    TooShort,
    /// `magic` is not 0xd00dfeed.
    BadMagic(u32),
    /// `totalsize` under the header or over [`MAX_SIZE`].
    BadSize(u32),
    /// A block (`off_dt_struct`, `off_dt_strings`, `off_mem_rsvmap` with its size) outside
    /// `totalsize`.
    BlockOutside,
    /// `last_comp_version` newer than 17 (a format this parser does not know).
    Incompatible(u32),
}

/// The header fields that locate the blob's parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the whole blob.
    pub total_size: u32,
    /// The structure block.
    pub off_dt_struct: u32,
    /// The strings block.
    pub off_dt_strings: u32,
    /// The memory reservation block.
    pub off_mem_rsvmap: u32,
    /// Format version.
    pub version: u32,
}

fn be32(bytes: &[u8], i: usize) -> u32 {
    let w = [
        bytes[i * 4],
        bytes[i * 4 + 1],
        bytes[i * 4 + 2],
        bytes[i * 4 + 3],
    ];
    u32::from_be_bytes(w)
}

/// `totalsize` from the first 8 bytes (magic, size), checked: how many bytes to read.
pub fn total_size(first8: &[u8]) -> Result<u32, Error> {
    if first8.len() < 8 {
        return Err(Error::TooShort);
    }
    let magic = be32(first8, 0);
    if magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    let size = be32(first8, 1);
    if size < HEADER_LEN as u32 || size > MAX_SIZE {
        return Err(Error::BadSize(size));
    }
    Ok(size)
}

impl Header {
    /// Checks the header of `blob` (at least its `totalsize` bytes).
    pub fn parse(blob: &[u8]) -> Result<Header, Error> {
        if blob.len() < HEADER_LEN {
            return Err(Error::TooShort);
        }
        let total = total_size(blob)?;
        if total as usize > blob.len() {
            return Err(Error::BadSize(total));
        }
        let h = Header {
            total_size: total,
            off_dt_struct: be32(blob, 2),
            off_dt_strings: be32(blob, 3),
            off_mem_rsvmap: be32(blob, 4),
            version: be32(blob, 5),
        };
        let last_comp = be32(blob, 6);
        if last_comp > 17 {
            return Err(Error::Incompatible(last_comp));
        }
        let (strings_size, struct_size) = (be32(blob, 8), be32(blob, 9));
        let inside = |off: u32, len: u32| {
            off >= HEADER_LEN as u32 && off.checked_add(len).is_some_and(|end| end <= total)
        };
        // The reservation map holds at least its terminating 16-byte entry.
        if !inside(h.off_dt_struct, struct_size)
            || !inside(h.off_dt_strings, strings_size)
            || !inside(h.off_mem_rsvmap, 16)
        {
            return Err(Error::BlockOutside);
        }
        Ok(h)
    }
}

/// Whether `a_start..a_start + a_len` and `b_start..b_end` share a byte.
pub fn overlaps(a_start: u64, a_len: u64, b_start: u64, b_end: u64) -> bool {
    a_start < b_end && a_start.saturating_add(a_len) > b_start
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn blob(total: u32) -> Vec<u8> {
        let mut b = std::vec![0u8; total as usize];
        let fields = [MAGIC, total, 56, 100, 40, 17, 16, 0, 20, 44];
        for (i, f) in fields.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&f.to_be_bytes());
        }
        b
    }

    #[test]
    fn good_header() {
        let b = blob(128);
        assert_eq!(total_size(&b[..8]), Ok(128));
        let h = Header::parse(&b).unwrap();
        assert_eq!((h.total_size, h.off_dt_struct, h.version), (128, 56, 17));
    }

    #[test]
    fn bad_headers() {
        assert_eq!(total_size(&[0xd0, 0x0d]), Err(Error::TooShort));
        let mut b = blob(128);
        b[0] = 0;
        assert_eq!(total_size(&b), Err(Error::BadMagic(0x000d_feed)));
        let b = blob(128);
        assert_eq!(
            Header::parse(&b[..100]),
            Err(Error::BadSize(128)),
            "truncated"
        );
        let mut b = blob(128);
        b[4..8].copy_from_slice(&(8u32 << 20).to_be_bytes());
        assert_eq!(total_size(&b), Err(Error::BadSize(8 << 20)));
        b[4..8].copy_from_slice(&8u32.to_be_bytes());
        assert_eq!(total_size(&b), Err(Error::BadSize(8)));
        let mut b = blob(128);
        b[36..40].copy_from_slice(&1000u32.to_be_bytes()); // struct block past the end
        assert_eq!(Header::parse(&b), Err(Error::BlockOutside));
        let mut b = blob(128);
        b[12..16].copy_from_slice(&u32::MAX.to_be_bytes()); // strings offset wraps
        assert_eq!(Header::parse(&b), Err(Error::BlockOutside));
        let mut b = blob(128);
        b[24..28].copy_from_slice(&18u32.to_be_bytes());
        assert_eq!(Header::parse(&b), Err(Error::Incompatible(18)));
    }

    #[test]
    fn overlap() {
        assert!(overlaps(0x8f00_0000, 0x1000, 0x8f00_0800, 0x8f00_2000));
        assert!(!overlaps(0x8f00_0000, 0x1000, 0x8f00_1000, 0x8f00_2000));
        assert!(!overlaps(u64::MAX - 4, 100, 0, 0x1000), "saturates");
    }
}
