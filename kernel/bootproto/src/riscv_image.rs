//! The RISC-V Linux `Image` header: the first 64 bytes of a flat kernel image, which U-Boot's
//! `booti` reads to decide where the image goes (RAM base + `text_offset`) and how much memory
//! it takes (`image_size`, `.bss` and stack included).
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `code0`, `code1` | the first instructions (a jump over the header) |
//! | 8 | `text_offset` | load offset from the start of RAM, little endian |
//! | 16 | `image_size` | bytes the image occupies once loaded |
//! | 24 | `flags` | bit 0: big endian |
//! | 32 | `version` | major << 16 \| minor (0.2 or later has `magic2`) |
//! | 48 | `magic` | `"RISCV\0\0\0"` (deprecated) |
//! | 56 | `magic2` | `"RSC\x05"` |

use crate::{u32_at, u64_at};

/// Bytes of the header.
pub const HEADER_LEN: usize = 64;
/// `magic2`.
pub const MAGIC2: &[u8; 4] = b"RSC\x05";
/// Offset of `text_offset` in the header.
pub const TEXT_OFFSET_AT: usize = 8;
/// `booti` moves the image to a 2 MiB-aligned RAM base plus `text_offset`; an offset that is
/// not a multiple of 4 KiB cannot be where a page-aligned kernel is linked.
const PAGE: u64 = 4096;

/// Why a header (or an image) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer than [`HEADER_LEN`] bytes.
    TooShort(usize),
    /// `magic2` is not `"RSC\x05"`.
    BadMagic,
    /// A header version before 0.2 (no `magic2`).
    OldVersion(u32),
    /// `flags` says big endian (or sets bits this format does not define).
    BadFlags(u64),
    /// `text_offset` is not a multiple of 4 KiB.
    MisalignedTextOffset(u64),
    /// `image_size` is smaller than the file: `booti` would place data over its tail.
    ImageSizeTooSmall {
        /// The header's `image_size`.
        image_size: u64,
        /// Bytes of the file.
        file: u64,
    },
}

/// The fields `booti` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Load offset from the start of RAM.
    pub text_offset: u64,
    /// Bytes the loaded image occupies.
    pub image_size: u64,
    /// Flags (0: little endian).
    pub flags: u64,
    /// Header version, major << 16 | minor.
    pub version: u32,
}

impl Header {
    /// Reads and checks the header at the start of `image` (the whole file, or at least its
    /// first 64 bytes; the size check uses `image.len()` only when it is more than the header).
    pub fn parse(image: &[u8]) -> Result<Header, Error> {
        if image.len() < HEADER_LEN {
            return Err(Error::TooShort(image.len()));
        }
        if &image[56..60] != MAGIC2 {
            return Err(Error::BadMagic);
        }
        let field = |off| u64_at(image, off).ok_or(Error::TooShort(image.len()));
        let header = Header {
            text_offset: field(8)?,
            image_size: field(16)?,
            flags: field(24)?,
            version: u32_at(image, 32).ok_or(Error::TooShort(image.len()))?,
        };
        if header.version < 2 {
            return Err(Error::OldVersion(header.version));
        }
        if header.flags != 0 {
            return Err(Error::BadFlags(header.flags));
        }
        if !header.text_offset.is_multiple_of(PAGE) {
            return Err(Error::MisalignedTextOffset(header.text_offset));
        }
        let file = image.len() as u64;
        if image.len() > HEADER_LEN && header.image_size < file {
            return Err(Error::ImageSizeTooSmall {
                image_size: header.image_size,
                file,
            });
        }
        Ok(header)
    }

    /// Where `booti` puts the image on a board whose RAM starts at `ram_base`.
    pub fn load_address(&self, ram_base: u64) -> Option<u64> {
        ram_base.checked_add(self.text_offset)
    }
}

/// Rewrites `text_offset` so that `booti` on a board whose RAM starts at `ram_base` places the
/// image at `linked` (its link address). Fails when `linked` is below `ram_base`, not 4 KiB
/// aligned, or the header is not valid.
pub fn set_load_address(image: &mut [u8], ram_base: u64, linked: u64) -> Result<Header, Error> {
    Header::parse(image)?;
    let offset = linked
        .checked_sub(ram_base)
        .ok_or(Error::MisalignedTextOffset(linked.wrapping_sub(ram_base)))?;
    if !offset.is_multiple_of(PAGE) {
        return Err(Error::MisalignedTextOffset(offset));
    }
    image[TEXT_OFFSET_AT..TEXT_OFFSET_AT + 8].copy_from_slice(&offset.to_le_bytes());
    Header::parse(image)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut out = std::vec![0u8; len.max(HEADER_LEN)];
        out[8..16].copy_from_slice(&text_offset.to_le_bytes());
        out[16..24].copy_from_slice(&image_size.to_le_bytes());
        out[24..32].copy_from_slice(&flags.to_le_bytes());
        out[32..36].copy_from_slice(&2u32.to_le_bytes());
        out[48..56].copy_from_slice(b"RISCV\0\0\0");
        out[56..60].copy_from_slice(MAGIC2);
        out
    }

    #[test]
    fn good_header() {
        let img = image(0x20_0000, 0x113_5000, 0, 0x10_0000);
        let h = Header::parse(&img).unwrap();
        assert_eq!(h.text_offset, 0x20_0000);
        assert_eq!(h.load_address(0x8000_0000), Some(0x8020_0000));
        assert!(Header::parse(&img[..HEADER_LEN]).is_ok(), "header alone");
    }

    #[test]
    fn bad_headers() {
        assert_eq!(Header::parse(&[0; 10]).unwrap_err(), Error::TooShort(10));
        let mut img = image(0x20_0000, 0x1000, 0, 64);
        img[56] = b'X';
        assert_eq!(Header::parse(&img).unwrap_err(), Error::BadMagic);
        let mut img = image(0x20_0000, 0x1000, 0, 64);
        img[32..36].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Header::parse(&img).unwrap_err(), Error::OldVersion(1));
        let img = image(0x20_0000, 0x1000, 1, 64);
        assert_eq!(Header::parse(&img).unwrap_err(), Error::BadFlags(1));
        let img = image(0x20_0100, 0x1000, 0, 64);
        assert_eq!(
            Header::parse(&img).unwrap_err(),
            Error::MisalignedTextOffset(0x20_0100)
        );
        let img = image(0x20_0000, 0x1000, 0, 0x2000);
        assert_eq!(
            Header::parse(&img).unwrap_err(),
            Error::ImageSizeTooSmall {
                image_size: 0x1000,
                file: 0x2000
            }
        );
    }

    #[test]
    fn text_offset_for_another_ram_base() {
        let mut img = image(0x20_0000, 0x10_0000, 0, 0x1000);
        let h = set_load_address(&mut img, 0x4000_0000, 0x8020_0000).unwrap();
        assert_eq!(h.text_offset, 0x4020_0000);
        assert_eq!(h.load_address(0x4000_0000), Some(0x8020_0000));
        assert!(
            set_load_address(&mut img, 0x9000_0000, 0x8020_0000).is_err(),
            "RAM above"
        );
        assert!(
            set_load_address(&mut img, 0x4000_0800, 0x8020_0000).is_err(),
            "misaligned"
        );
    }
}
