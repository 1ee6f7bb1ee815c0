//! CRC32C with the SSE4.2 `crc32` instruction, installed as the filesystem's checksum
//! ([`tinyfs::crc::set_accel`], which checks it against the software version first). The
//! instruction works on general registers, so it needs no SSE state in this soft-float kernel.
//! Every x86_64 CPU since 2008 has it; without it the filesystem keeps its slice-by-8 tables.

use core::arch::asm;
use core::arch::x86_64::__cpuid;

/// CPUID leaf 1, ECX bit 20: SSE4.2 (which brings `crc32`).
const SSE42: u32 = 1 << 20;

/// Whether the CPU has the `crc32` instruction.
pub fn crc_instruction() -> bool {
    __cpuid(1).ecx & SSE42 != 0
}

/// Installs the instruction when the CPU has it; returns what the filesystem's CRC32C uses.
pub fn install_crc() -> &'static str {
    if !crc_instruction() {
        return "software (the CPU has no SSE4.2)";
    }
    match tinyfs::crc::set_accel(crc32c_sse42) {
        Ok(()) | Err(tinyfs::crc::AccelError::Installed) => "the SSE4.2 crc32 instruction",
        Err(tinyfs::crc::AccelError::Wrong) => {
            // A CPU that claims SSE4.2 and computes wrong CRCs: said as a warning, not only in
            // the boot line.
            defmt::warn!("crc32c: the crc32 instruction disagrees with the software CRC32C");
            "software (the crc32 instruction gave wrong values)"
        }
    }
}

/// Advances the CRC32C state `c` (not inverted) over `data`, eight bytes per instruction, four
/// of them per loop step (a 4 KiB node or bitmap: 128 steps).
fn crc32c_sse42(c: u32, data: &[u8]) -> u32 {
    let mut c = u64::from(c);
    let (quads, rest) = data.as_chunks::<32>();
    for q in quads {
        let w = |i: usize| {
            u64::from_le_bytes([
                q[i],
                q[i + 1],
                q[i + 2],
                q[i + 3],
                q[i + 4],
                q[i + 5],
                q[i + 6],
                q[i + 7],
            ])
        };
        let (w0, w1, w2, w3) = (w(0), w(8), w(16), w(24));
        // SAFETY: installed by `install_crc` only when CPUID reported SSE4.2, which defines
        // `crc32` with a 64-bit operand; it reads and writes only the registers named.
        unsafe {
            asm!(
                "crc32 {c}, {w0}",
                "crc32 {c}, {w1}",
                "crc32 {c}, {w2}",
                "crc32 {c}, {w3}",
                c = inout(reg) c,
                w0 = in(reg) w0,
                w1 = in(reg) w1,
                w2 = in(reg) w2,
                w3 = in(reg) w3,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
    }
    let (words, rest) = rest.as_chunks::<8>();
    for w in words {
        let w = u64::from_le_bytes(*w);
        // SAFETY: as above.
        unsafe {
            asm!("crc32 {c}, {w}", c = inout(reg) c, w = in(reg) w, options(pure, nomem, nostack, preserves_flags));
        }
    }
    let mut c = c as u32;
    for &b in rest {
        // SAFETY: as above, with an 8-bit operand.
        unsafe {
            asm!("crc32 {c:e}, {b}", c = inout(reg) c, b = in(reg_byte) b, options(pure, nomem, nostack, preserves_flags));
        }
    }
    c
}
