//! The console: `defmt` frames over the arch's serial port.
//!
//! The stream starts with one 0x00 byte (so the host decoder can tell firmware text before it
//! from frames after it); every frame is rzcobs-encoded and ends with 0x00. Frames are written
//! with interrupts off, so a trap handler logging in the middle of a frame cannot interleave.

use crate::arch;
use core::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);
static INTERRUPTS_WERE_ON: AtomicBool = AtomicBool::new(false);
static ENCODER: spin::Mutex<defmt::Encoder> = spin::Mutex::new(defmt::Encoder::new());

/// Writes the sync byte that starts the frame stream. Called once, first thing in `kmain`.
pub fn start() {
    arch::console_write(&[0]);
}

/// Ends a frame a panic interrupted, so the message after it decodes.
pub fn recover_for_panic() {
    if TAKEN.swap(false, Ordering::Acquire) {
        arch::console_write(&[0]);
        // SAFETY: the frame holder is the code the panic interrupted on this (only) CPU; it
        // never resumes, so nothing else uses the encoder state being reset.
        unsafe { ENCODER.force_unlock() };
        *ENCODER.lock() = defmt::Encoder::new();
    }
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` disables interrupts and marks the logger taken before any frame byte is
// written and `release` undoes both, so frames from this single CPU never interleave; a nested
// acquire (a fault while logging) is the one case that could, and it only garbles that frame
// (the decoder resynchronises on the next 0x00).
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let was_on = arch::interrupts_enabled();
        arch::interrupts_disable();
        if TAKEN.swap(true, Ordering::Acquire) {
            // Nested (a fault inside the logger): close the broken frame and go on.
            arch::console_write(&[0]);
        } else {
            INTERRUPTS_WERE_ON.store(was_on, Ordering::Relaxed);
        }
        ENCODER.lock().start_frame(arch::console_write);
    }

    unsafe fn flush() {}

    unsafe fn release() {
        ENCODER.lock().end_frame(arch::console_write);
        TAKEN.store(false, Ordering::Release);
        if INTERRUPTS_WERE_ON.load(Ordering::Relaxed) {
            arch::interrupts_enable();
        }
    }

    unsafe fn write(bytes: &[u8]) {
        ENCODER.lock().write(bytes, arch::console_write);
    }
}

defmt::timestamp!("{=u64:us}", arch::now_ns() / 1000);
