//! 8250/16550-compatible serial port, transmit only, by polling; and the SBI console, for
//! messages before the device tree has named the UART (or when it names none).
//!
//! Boards put these UARTs at different register spacings and access widths: QEMU `virt` has
//! byte registers 1 byte apart; SoCs such as the JH7110 (VisionFive 2) have
//! `snps,dw-apb-uart` with `reg-shift = <2>` and `reg-io-width = <4>` (32-bit accesses to
//! registers 4 bytes apart). Both come from the device tree.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Where QEMU `virt` puts it; used until the device tree says otherwise.
pub const DEFAULT_BASE: usize = 0x1000_0000;

const THR: usize = 0; // transmit holding (DLAB = 0)
const DLL: usize = 0; // divisor latch low (DLAB = 1)
const IER: usize = 1; // interrupt enable (DLAB = 0)
const DLM: usize = 1; // divisor latch high (DLAB = 1)
const FCR: usize = 2;
const LCR: usize = 3;
const MCR: usize = 4;
const LSR: usize = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
const BAUD: u32 = 115_200;

static BASE: AtomicUsize = AtomicUsize::new(DEFAULT_BASE);
static SHIFT: AtomicU32 = AtomicU32::new(0);
/// Register access width in bytes: 1 or 4.
static WIDTH: AtomicU32 = AtomicU32::new(1);

fn reg(r: usize) -> usize {
    BASE.load(Ordering::Relaxed) + (r << SHIFT.load(Ordering::Relaxed))
}

fn read(r: usize) -> u8 {
    let addr = reg(r);
    if WIDTH.load(Ordering::Relaxed) == 4 {
        // SAFETY: `BASE` is the identity-mapped register block of a 16550 whose registers are
        // 32-bit wide (`init`'s caller vouched for it); `r` is one of its registers, so `addr`
        // is 4-byte aligned.
        unsafe { (addr as *const u32).read_volatile() as u8 }
    } else {
        // SAFETY: `BASE` is the identity-mapped register block of a 16550 (QEMU's default, or
        // one `init`'s caller vouched for), and `r` is one of its byte registers.
        unsafe { (addr as *const u8).read_volatile() }
    }
}

fn write(r: usize, v: u8) {
    let addr = reg(r);
    if WIDTH.load(Ordering::Relaxed) == 4 {
        // SAFETY: as in `read`.
        unsafe { (addr as *mut u32).write_volatile(u32::from(v)) }
    } else {
        // SAFETY: as in `read`.
        unsafe { (addr as *mut u8).write_volatile(v) }
    }
}

/// Moves the console to the UART at `base` (registers `1 << shift` bytes apart, accessed
/// `width` bytes wide: 1 or 4) and sets it up: 8N1, FIFOs on, no interrupts, 115200 baud if
/// the input `clock` is known (else the divisor the firmware set stays).
///
/// # Safety
/// `base` is the identity-mapped register block of an 8250/16550-compatible UART with
/// registers `1 << shift` bytes apart, `width` bytes wide (1 or 4), used by nothing else;
/// `base` is `width`-aligned.
pub unsafe fn init(base: usize, shift: u32, width: u32, clock: Option<u32>) {
    BASE.store(base, Ordering::Relaxed);
    SHIFT.store(shift, Ordering::Relaxed);
    WIDTH.store(if width == 4 { 4 } else { 1 }, Ordering::Relaxed);
    write(IER, 0);
    if let Some(div) = clock
        .map(|c| (c + 8 * BAUD) / (16 * BAUD))
        .filter(|&d| d > 0 && d <= 0xffff)
    {
        write(LCR, 0x80);
        write(DLL, div as u8);
        write(DLM, (div >> 8) as u8);
    }
    write(LCR, 0x03);
    write(FCR, 0x07);
    write(MCR, 0x03);
}

/// Sends `bytes`, waiting for room in the transmitter before each.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        while read(LSR) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        write(THR, b);
    }
}

/// Writes `text` through the SBI firmware's console (legacy `console_putchar`, which OpenSBI
/// prints on the UART it uses itself): for messages before the device tree named the UART.
pub fn sbi_write(text: &str) {
    for b in text.bytes() {
        #[allow(deprecated)] // the legacy call is the one every SBI firmware has
        sbi_rt::legacy::console_putchar(usize::from(b));
    }
}
