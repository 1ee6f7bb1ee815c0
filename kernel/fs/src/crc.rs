//! CRC32C (Castagnoli), slice-by-8: eight 256-entry tables built at compile time, eight bytes
//! per step (about four times fewer instructions per byte than a byte-at-a-time table). Every
//! checksum of both format versions goes through it.

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

/// CRC32C of `data` (initial value and final xor `!0`).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
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
    !c
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
}
