//! CRC32C (Castagnoli), slice-by-8: eight 256-entry tables built at compile time, eight bytes
//! per step (about four times fewer instructions per byte than a byte-at-a-time table). Every
//! checksum of both format versions goes through it.
//!
//! A platform with a CRC32C instruction (x86_64's SSE4.2 `crc32`) installs it once with
//! [`set_accel`]; every later [`crc32c`] uses it. The crate itself forbids `unsafe`, so the
//! instruction lives with the platform code (the kernel's `arch`), and this module only checks
//! that what it is given computes the same values as [`update`] before using it.

use spin::Once;

const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    t[0] = TABLE;
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let c = t[k - 1][i];
            t[k][i] = (c >> 8) ^ TABLE[(c & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// A CRC32C update the platform offers: the running (not inverted) state and bytes in, the
/// state after those bytes out, exactly as [`update`].
pub type Accel = fn(u32, &[u8]) -> u32;

static ACCEL: Once<Accel> = Once::new();

/// Why [`set_accel`] refused an accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelError {
    /// It computed a different value than [`update`] on the check inputs.
    Wrong,
    /// Another accelerator is installed already.
    Installed,
}

/// Makes every later [`crc32c`] use `f`, after checking it against [`update`] on inputs of
/// every length from 0 to 64 and of 4095 and 4096 bytes (a whole block, and one with a piece
/// of every size below an accelerator's step left over), each at every alignment to 8.
pub fn set_accel(f: Accel) -> Result<(), AccelError> {
    let mut buf = [0u8; 4096 + 8];
    let mut x = 0x9e37_79b9u32;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let same = |d: &[u8]| f(!0, d) == update(!0, d) && f(0x1234_5678, d) == update(0x1234_5678, d);
    for lo in 0..8 {
        for len in 0..=64 {
            if !same(&buf[lo..lo + len]) {
                return Err(AccelError::Wrong);
            }
        }
        if !same(&buf[lo..lo + 4095]) || !same(&buf[lo..lo + 4096]) {
            return Err(AccelError::Wrong);
        }
    }
    let mut installed = false;
    ACCEL.call_once(|| {
        installed = true;
        f
    });
    if installed {
        Ok(())
    } else {
        Err(AccelError::Installed)
    }
}

/// Whether [`crc32c`] uses an installed accelerator.
pub fn accelerated() -> bool {
    ACCEL.get().is_some()
}

/// CRC32C of `data` (initial value and final xor `!0`), with the installed accelerator if any.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    match ACCEL.get() {
        Some(f) => !f(!0, data),
        None => !update(!0, data),
    }
}

/// CRC32C of `data` in software, whatever is installed.
pub fn crc32c_soft(data: &[u8]) -> u32 {
    !update(!0, data)
}

/// Advances the running CRC32C state `c` (not inverted) over `data`, in software.
pub fn update(c: u32, data: &[u8]) -> u32 {
    let mut c = c;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ c;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_vectors() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c(&[0u8; 32]), 0x8A91_36AA);
        // Every length and alignment against the byte-at-a-time definition.
        let data: [u8; 100] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5c);
        for lo in 0..9 {
            for hi in lo..data.len() {
                let mut c = !0u32;
                for &b in &data[lo..hi] {
                    c = super::TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
                }
                assert_eq!(super::crc32c(&data[lo..hi]), !c, "{lo}..{hi}");
            }
        }
    }

    /// A byte-at-a-time accelerator (correct, only slower).
    fn bytewise(mut c: u32, data: &[u8]) -> u32 {
        for &b in data {
            c = super::TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
        c
    }

    /// Wrong on inputs longer than 40 bytes only, so the check's long inputs must catch it.
    fn wrong_when_long(c: u32, data: &[u8]) -> u32 {
        super::update(c, data) ^ u32::from(data.len() > 40)
    }

    /// Wrong on inputs that end in an odd byte after 4 KiB less 128 (the remainder after a
    /// 128-byte step), which only the 4095-byte input has.
    fn wrong_in_a_long_tail(c: u32, data: &[u8]) -> u32 {
        super::update(c, data) ^ u32::from(data.len() > 3968 && data.len() % 2 == 1)
    }

    #[test]
    fn accelerator_is_checked_before_use() {
        use super::{AccelError, set_accel};
        assert_eq!(set_accel(|c, _| c), Err(AccelError::Wrong));
        assert_eq!(set_accel(wrong_when_long), Err(AccelError::Wrong));
        assert_eq!(set_accel(wrong_in_a_long_tail), Err(AccelError::Wrong));
        assert!(!super::accelerated() || set_accel(bytewise).is_err());
        // The process-wide accelerator the other tests then share computes the same values.
        let first = set_accel(bytewise);
        assert!(super::accelerated());
        assert!(first.is_ok() || first == Err(AccelError::Installed));
        assert_eq!(set_accel(bytewise), Err(AccelError::Installed));
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c_soft(b"123456789"), 0xE306_9283);
    }
}
