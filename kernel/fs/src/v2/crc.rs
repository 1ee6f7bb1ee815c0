//! CRC32C (Castagnoli) for version 2, slice-by-8: eight 256-entry tables built at compile
//! time, eight bytes per step. The same function as [`crate::crc::crc32c`] (initial value and
//! final xor `!0`), about four times fewer instructions per byte than the byte-at-a-time
//! table; every node, bitmap, log block and (with data checksums) data block goes through it.

const POLY: u32 = 0x82F6_3B78;

const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// CRC32C of `data` (initial value and final xor `!0`).
pub fn crc32c(data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for w in &mut chunks {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ c;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use crate::tests::Rng;

    #[test]
    fn known_vectors_and_agrees_with_the_byte_table() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(super::crc32c(&[]), 0);
        let mut rng = Rng::new(0xC5C);
        let data: std::vec::Vec<u8> = (0..5000).map(|_| rng.next() as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 4092, 4096 - start] {
                let s = &data[start..start + len];
                assert_eq!(super::crc32c(s), crate::crc::crc32c(s), "{start} {len}");
            }
        }
    }
}
