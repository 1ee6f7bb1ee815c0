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
        Err(tinyfs::crc::AccelError::Wrong) => "software (the crc32 instruction gave wrong values)",
    }
}

/// Advances the CRC32C state `c` (not inverted) over `data`, eight bytes per instruction.
fn crc32c_sse42(c: u32, data: &[u8]) -> u32 {
    let mut c = u64::from(c);
    let (words, rest) = data.as_chunks::<8>();
    for w in words {
        let w = u64::from_le_bytes(*w);
        // SAFETY: installed by `install_crc` only when CPUID reported SSE4.2, which defines
        // `crc32` with a 64-bit operand; it reads and writes only the two registers named.
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
