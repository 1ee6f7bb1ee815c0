//! NS16550A serial port, transmit only, by polling.

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

fn reg(r: usize) -> *mut u8 {
    (BASE.load(Ordering::Relaxed) + (r << SHIFT.load(Ordering::Relaxed))) as *mut u8
}

fn read(r: usize) -> u8 {
    // SAFETY: `BASE` is the identity-mapped register block of an NS16550 (QEMU's default, or
    // one `init`'s caller vouched for), and `r` is one of its byte registers.
    unsafe { reg(r).read_volatile() }
}

fn write(r: usize, v: u8) {
    // SAFETY: as in `read`.
    unsafe { reg(r).write_volatile(v) }
}

/// Moves the console to the UART at `base` (registers `1 << shift` bytes apart) and sets it up:
/// 8N1, FIFOs on, no interrupts, 115200 baud if the input `clock` is known.
///
/// # Safety
/// `base` is the identity-mapped register block of an NS16550-compatible UART with byte
/// registers `1 << shift` bytes apart, used by nothing else.
pub unsafe fn init(base: usize, shift: u32, clock: Option<u32>) {
    BASE.store(base, Ordering::Relaxed);
    SHIFT.store(shift, Ordering::Relaxed);
    write(IER, 0);
    if let Some(div) = clock
        .map(|c| c / (16 * BAUD))
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
