//! Time: the TSC for clocks, calibrated (with the LAPIC timer) against PIT channel 2 at boot.

use super::apic;
use super::port::{inb, outb};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Calibration interval: 10 ms of PIT ticks.
const CALIBRATION_TICKS: u16 = (PIT_HZ / 100) as u16;
const PIT_CH2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
/// Port B of the legacy system controller: bit 0 gates PIT channel 2, bit 1 drives the speaker
/// from it, bit 5 reads its output.
const PORT_B: u16 = 0x61;
/// Used if calibration fails (it cannot under QEMU; a nonsense PIT on a board).
const FALLBACK_TSC_HZ: u64 = 1_000_000_000;

/// Nanoseconds per TSC tick as a 32.32 fixed-point number, so reading the clock needs a
/// multiply and a shift, not a 128-bit division.
static NS_PER_TICK_FP32: AtomicU64 = AtomicU64::new(ns_per_tick_fp32(FALLBACK_TSC_HZ));
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter. (Own asm: the `x86_64` crate has no RDTSC wrapper, and this is
/// read for every I/O.)
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the counter (CR4.TSD is clear, we run in ring 0).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Measures the TSC and LAPIC timer rates over 10 ms of PIT channel 2. Interrupts off.
pub fn calibrate() {
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
    // Gate off, speaker off; channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
    let port_b = inb(PORT_B) & !0x03;
    outb(PORT_B, port_b);
    outb(PIT_COMMAND, 0b1011_0000);
    outb(PIT_CH2_DATA, CALIBRATION_TICKS as u8);
    outb(PIT_CH2_DATA, (CALIBRATION_TICKS >> 8) as u8);
    apic::timer_free_run();
    let lapic_start = apic::timer_count();
    let tsc_start = rdtsc();
    outb(PORT_B, port_b | 0x01); // gate on: the count starts
    let mut spins: u64 = 0;
    while inb(PORT_B) & 0x20 == 0 {
        spins += 1;
        if spins > 100_000_000 {
            break;
        }
        core::hint::spin_loop();
    }
    let tsc_end = rdtsc();
    let lapic_end = apic::timer_count();
    outb(PORT_B, port_b);

    let per_second = |delta: u64| delta.saturating_mul(PIT_HZ) / u64::from(CALIBRATION_TICKS);
    let tsc_hz = per_second(tsc_end.wrapping_sub(tsc_start));
    if tsc_hz >= 1_000_000 {
        NS_PER_TICK_FP32.store(ns_per_tick_fp32(tsc_hz), Ordering::Relaxed);
    }
    let lapic_hz = per_second(u64::from(lapic_start.wrapping_sub(lapic_end)));
    // A LAPIC timer below 10 kHz is implausible: fall back to a typical 1 GHz bus / 16.
    apic::set_timer_hz(if lapic_hz >= 10_000 {
        lapic_hz
    } else {
        62_500_000
    });
}

const fn ns_per_tick_fp32(hz: u64) -> u64 {
    ((1_000_000_000u128 << 32) / hz as u128) as u64
}

/// Nanoseconds since [`calibrate`] started.
pub fn now_ns() -> u64 {
    let delta = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((u128::from(delta) * u128::from(NS_PER_TICK_FP32.load(Ordering::Relaxed))) >> 32) as u64
}
