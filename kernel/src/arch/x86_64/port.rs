//! x86 port I/O, private to the arch code.
//!
//! Only fixed platform ports are accessed (COM1, the 8259 PICs, the PIT, the debug-exit
//! device); none of them can change memory, so the accessors are safe functions.

use x86_64::instructions::port::{PortReadOnly, PortWriteOnly};

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes do not touch memory; callers only use the platform ports above.
    unsafe { PortWriteOnly::new(port).write(value) }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: port reads do not touch memory; callers only use the platform ports above.
    unsafe { PortReadOnly::new(port).read() }
}
