//! The console: `defmt` frames over the arch's serial port.
//!
//! The stream starts with one 0x00 byte (so the host decoder can tell firmware text before it
//! from frames after it); every frame is rzcobs-encoded and ends with 0x00. A frame is written
//! by one CPU at a time, holding the logger (a spin lock naming the owning CPU) with interrupts
//! off on that CPU: frames of several CPUs never interleave, and a trap handler logging on the
//! CPU that holds the logger cannot deadlock on it.

use crate::arch;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The CPU holding the logger, or [`FREE`].
static OWNER: AtomicUsize = AtomicUsize::new(FREE);
const FREE: usize = usize::MAX;
/// Whether the owner had interrupts on before it took the logger (written and read by the
/// owner only).
static INTERRUPTS_WERE_ON: AtomicBool = AtomicBool::new(false);
static ENCODER: spin::Mutex<defmt::Encoder> = spin::Mutex::new(defmt::Encoder::new());
/// How long a panicking CPU waits for another CPU's frame to end before writing anyway.
const PANIC_WAIT_NS: u64 = 100_000_000;

/// Writes the sync byte that starts the frame stream. Called once, first thing in `kmain`.
pub fn start() {
    arch::console_write(&[0]);
}

/// Ends a frame a panic interrupted, so the message after it decodes. Takes the logger away
/// from this CPU's interrupted code, or waits a little for another CPU to finish its frame
/// (and takes it anyway if that CPU is stuck).
pub fn recover_for_panic() {
    let me = arch::cpu_id();
    if OWNER.load(Ordering::Acquire) == me {
        arch::console_write(&[0]);
    } else {
        let start = arch::now_ns();
        while OWNER
            .compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if arch::now_ns().wrapping_sub(start) > PANIC_WAIT_NS {
                arch::console_write(&[0]);
                break;
            }
            core::hint::spin_loop();
        }
    }
    // SAFETY: the encoder's holder is the code the panic interrupted on this CPU (which never
    // resumes) or a CPU stuck for PANIC_WAIT_NS; the run ends after the panic message, so the
    // reset state is the only one used from here on.
    unsafe { ENCODER.force_unlock() };
    *ENCODER.lock() = defmt::Encoder::new();
    OWNER.store(FREE, Ordering::Release);
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` disables interrupts on this CPU and takes the logger (a spin lock owned by
// one CPU at a time) before any frame byte is written, and `release` gives both back, so frames
// never interleave, neither between CPUs nor with a handler on the owning CPU. A nested acquire
// on the owning CPU (a fault inside the logger) is the one case that could, and it only garbles
// that frame (the decoder resynchronises on the next 0x00).
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        let was_on = arch::interrupts_enabled();
        arch::interrupts_disable();
        let me = arch::cpu_id();
        if OWNER.load(Ordering::Relaxed) == me {
            // Nested (a fault inside the logger): close the broken frame and go on.
            arch::console_write(&[0]);
        } else {
            while OWNER
                .compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
            INTERRUPTS_WERE_ON.store(was_on, Ordering::Relaxed);
        }
        ENCODER.lock().start_frame(arch::console_write);
    }

    unsafe fn flush() {}

    unsafe fn release() {
        ENCODER.lock().end_frame(arch::console_write);
        let restore = INTERRUPTS_WERE_ON.load(Ordering::Relaxed);
        OWNER.store(FREE, Ordering::Release);
        if restore {
            arch::interrupts_enable();
        }
    }

    unsafe fn write(bytes: &[u8]) {
        ENCODER.lock().write(bytes, arch::console_write);
    }
}

defmt::timestamp!("{=u64:us}", arch::now_ns() / 1000);
