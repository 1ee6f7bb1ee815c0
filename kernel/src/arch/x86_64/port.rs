//! x86 port I/O, private to the arch code.
//!
//! Only fixed platform ports are accessed (COM1, the 8259 PICs, the PIT, the debug-exit
//! device); none of them can change memory, so the accessors are safe functions.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes do not touch memory; callers only use the platform ports above.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port reads do not touch memory; callers only use the platform ports above.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}
