//! COM1: a 16550 UART at port 0x3f8, 115200 8N1, transmit by polling.
//!
//! No lock: bytes are written one at a time, so concurrent writers (a trap reporting while the
//! logger runs) interleave but never deadlock. The logger serialises normal output.

use super::port::{inb, outb};

const COM1: u16 = 0x3f8;
const THR: u16 = 0; // transmit holding (DLAB = 0) / divisor low (DLAB = 1)
const IER: u16 = 1; // interrupt enable / divisor high
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Programs the UART: no interrupts, 115200 baud (divisor 1), 8N1, FIFOs on.
pub fn init() {
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x80); // DLAB
    outb(COM1 + THR, 0x01);
    outb(COM1 + IER, 0x00);
    outb(COM1 + LCR, 0x03); // 8 bits, no parity, 1 stop bit
    outb(COM1 + FCR, 0xC7); // enable and clear FIFOs, 14-byte threshold
    outb(COM1 + MCR, 0x03); // DTR | RTS
}

/// Sends `bytes`, waiting for room before each one.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        while inb(COM1 + LSR) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        outb(COM1 + THR, b);
    }
}
