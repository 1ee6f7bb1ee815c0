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

/// Advances the CRC32C state `c` (not inverted) over `data`, eight bytes per instruction, each
/// `crc32` reading its operand from memory: 128 bytes per loop step (16 instructions and an
/// add and a branch; a 4 KiB block: 32 steps, about 580 instructions), then what is left in
/// pieces of 64, 32, 16, 8, 4, 2 and 1 bytes.
fn crc32c_sse42(c: u32, data: &[u8]) -> u32 {
    let mut c = u64::from(c);
    let (blocks, rest) = data.as_chunks::<128>();
    if !blocks.is_empty() {
        let len = blocks.len() * 128;
        let end = blocks.as_ptr_range().end.cast::<u8>();
        // SAFETY: installed by `install_crc` only when CPUID reported SSE4.2, which defines
        // `crc32`. Memory: `end - len .. end` is `blocks`, inside `data`; the index runs from
        // `-len` up to 0 in steps of 128 (`len` is a non-zero multiple of 128) and each step
        // reads the 128 bytes at `end + index`, so every read is inside the slice (`readonly`:
        // it writes no memory). It writes only `c`, the index and the flags (so no
        // `preserves_flags`), and touches no stack.
        unsafe {
            asm!(
                "2:",
                "crc32 {c}, qword ptr [{end} + {i}]",
                "crc32 {c}, qword ptr [{end} + {i} + 8]",
                "crc32 {c}, qword ptr [{end} + {i} + 16]",
                "crc32 {c}, qword ptr [{end} + {i} + 24]",
                "crc32 {c}, qword ptr [{end} + {i} + 32]",
                "crc32 {c}, qword ptr [{end} + {i} + 40]",
                "crc32 {c}, qword ptr [{end} + {i} + 48]",
                "crc32 {c}, qword ptr [{end} + {i} + 56]",
                "crc32 {c}, qword ptr [{end} + {i} + 64]",
                "crc32 {c}, qword ptr [{end} + {i} + 72]",
                "crc32 {c}, qword ptr [{end} + {i} + 80]",
                "crc32 {c}, qword ptr [{end} + {i} + 88]",
                "crc32 {c}, qword ptr [{end} + {i} + 96]",
                "crc32 {c}, qword ptr [{end} + {i} + 104]",
                "crc32 {c}, qword ptr [{end} + {i} + 112]",
                "crc32 {c}, qword ptr [{end} + {i} + 120]",
                "add {i}, 128",
                "jnz 2b",
                c = inout(reg) c,
                i = inout(reg) len.wrapping_neg() => _,
                end = in(reg) end,
                options(pure, readonly, nostack),
            );
        }
    }
    // What is left (under 128 bytes), largest piece first.
    let mut rest = rest;
    if let Some((p, r)) = rest.split_first_chunk::<64>() {
        // SAFETY: the instruction as above. It reads only the 64 bytes of `p` (offsets 0 to
        // 56, 8 bytes each), writes only `c`, leaves the flags and the stack alone.
        unsafe {
            asm!(
                "crc32 {c}, qword ptr [{p}]",
                "crc32 {c}, qword ptr [{p} + 8]",
                "crc32 {c}, qword ptr [{p} + 16]",
                "crc32 {c}, qword ptr [{p} + 24]",
                "crc32 {c}, qword ptr [{p} + 32]",
                "crc32 {c}, qword ptr [{p} + 40]",
                "crc32 {c}, qword ptr [{p} + 48]",
                "crc32 {c}, qword ptr [{p} + 56]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    if let Some((p, r)) = rest.split_first_chunk::<32>() {
        // SAFETY: as above; `p` is 32 bytes.
        unsafe {
            asm!(
                "crc32 {c}, qword ptr [{p}]",
                "crc32 {c}, qword ptr [{p} + 8]",
                "crc32 {c}, qword ptr [{p} + 16]",
                "crc32 {c}, qword ptr [{p} + 24]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    if let Some((p, r)) = rest.split_first_chunk::<16>() {
        // SAFETY: as above; `p` is 16 bytes.
        unsafe {
            asm!(
                "crc32 {c}, qword ptr [{p}]",
                "crc32 {c}, qword ptr [{p} + 8]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    if let Some((p, r)) = rest.split_first_chunk::<8>() {
        // SAFETY: as above; `p` is 8 bytes.
        unsafe {
            asm!(
                "crc32 {c}, qword ptr [{p}]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    // The 32-, 16- and 8-bit forms write the low half of the register and zero the rest, as
    // the 64-bit form leaves the state in the low half.
    let mut c = c as u32;
    if let Some((p, r)) = rest.split_first_chunk::<4>() {
        // SAFETY: as above, with a 32-bit operand; `p` is 4 bytes.
        unsafe {
            asm!(
                "crc32 {c:e}, dword ptr [{p}]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    if let Some((p, r)) = rest.split_first_chunk::<2>() {
        // SAFETY: as above, with a 16-bit operand; `p` is 2 bytes.
        unsafe {
            asm!(
                "crc32 {c:e}, word ptr [{p}]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        rest = r;
    }
    if let Some(p) = rest.first() {
        // SAFETY: as above, with an 8-bit operand; `p` is 1 byte.
        unsafe {
            asm!(
                "crc32 {c:e}, byte ptr [{p}]",
                c = inout(reg) c,
                p = in(reg) p,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
    }
    c
}
