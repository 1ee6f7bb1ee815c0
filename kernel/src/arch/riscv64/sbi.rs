//! Calls into the SBI firmware (OpenSBI): timer, reset, implementation id, made with the
//! `sbi-rt` crate (each call is one inline `ecall` following the SBI calling convention).

use sbi_rt::{NoReason, Reset, Shutdown, SystemFailure};

/// Error code "not supported" of the SBI v0.2+ calling convention.
const ERR_NOT_SUPPORTED: usize = -2isize as usize;

/// Name of the SBI implementation.
pub fn implementation() -> &'static str {
    match sbi_rt::get_sbi_impl_id() {
        0 => "bbl",
        1 => "opensbi",
        2 => "xvisor",
        3 => "kvm",
        4 => "rustsbi",
        5 => "diosix",
        6 => "coffer",
        _ => "sbi",
    }
}

/// Programs the next timer interrupt at `time` (in `time` CSR units); clears a pending one.
/// Falls back to the legacy call on firmware without the TIME extension.
pub fn set_timer(time: u64) {
    if sbi_rt::set_timer(time).error == ERR_NOT_SUPPORTED {
        #[allow(deprecated)] // the legacy call is what such firmware has
        sbi_rt::legacy::set_timer(time);
    }
}

/// Asks the firmware to power the machine off (`failure` sets the reset reason). Returns if the
/// firmware has no reset extension or refuses.
pub fn system_reset(failure: bool) {
    if sbi_rt::probe_extension(Reset).is_available() {
        if failure {
            sbi_rt::system_reset(Shutdown, SystemFailure);
        } else {
            sbi_rt::system_reset(Shutdown, NoReason);
        }
    }
}
