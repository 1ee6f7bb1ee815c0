//! Calls into the SBI firmware (OpenSBI): timer, reset, implementation id.

use core::arch::asm;

const EXT_LEGACY_SET_TIMER: usize = 0x00;
const EXT_BASE: usize = 0x10;
const EXT_TIME: usize = 0x5449_4d45;
const EXT_SRST: usize = 0x5352_5354;

const BASE_GET_IMPL_ID: usize = 1;
const BASE_PROBE_EXTENSION: usize = 3;

/// Error code "not supported" of the SBI v0.2+ calling convention.
const ERR_NOT_SUPPORTED: isize = -2;

/// One SBI call: `(error, value)`.
fn call(ext: usize, fid: usize, a0: usize, a1: usize) -> (isize, usize) {
    let (err, val);
    // SAFETY: `ecall` from S-mode traps to the SBI firmware, which follows the SBI calling
    // convention: it reads a0..a1, a6, a7, returns in a0/a1 and preserves every other register.
    // None of the calls made here touch memory the kernel owns.
    unsafe {
        asm!(
            "ecall",
            inlateout("a0") a0 => err,
            inlateout("a1") a1 => val,
            in("a6") fid,
            in("a7") ext,
            options(nostack),
        );
    }
    (err, val)
}

/// Whether the firmware implements extension `ext`.
fn has_extension(ext: usize) -> bool {
    let (err, val) = call(EXT_BASE, BASE_PROBE_EXTENSION, ext, 0);
    err == 0 && val != 0
}

/// Name of the SBI implementation.
pub fn implementation() -> &'static str {
    match call(EXT_BASE, BASE_GET_IMPL_ID, 0, 0) {
        (0, 0) => "bbl",
        (0, 1) => "opensbi",
        (0, 2) => "xvisor",
        (0, 3) => "kvm",
        (0, 4) => "rustsbi",
        (0, 5) => "diosix",
        (0, 6) => "coffer",
        _ => "sbi",
    }
}

/// Programs the next timer interrupt at `time` (in `time` CSR units); clears a pending one.
pub fn set_timer(time: u64) {
    let (err, _) = call(EXT_TIME, 0, time as usize, 0);
    if err == ERR_NOT_SUPPORTED {
        call(EXT_LEGACY_SET_TIMER, 0, time as usize, 0);
    }
}

/// Asks the firmware to power the machine off (`failure` sets the reset reason). Returns if the
/// firmware has no reset extension or refuses.
pub fn system_reset(failure: bool) {
    if has_extension(EXT_SRST) {
        // Type 0: shutdown. Reason 0: none, 1: system failure.
        call(EXT_SRST, 0, 0, usize::from(failure));
    }
}
