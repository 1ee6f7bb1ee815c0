//! x86 port I/O, private to the arch code.
//!
//! Only fixed platform ports are accessed (COM1, the 8259 PICs, the PIT, the debug-exit
//! device, the PCI configuration ports); none of them can change memory, so the accessors are
//! safe functions. (A PCI configuration write can make a device master DMA, as the same write
//! through the ECAM window can: that is the PCI code's and the drivers' business, on either
//! path.)

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

/// PCI configuration mechanism #1: the address port.
const PCI_CONFIG_ADDRESS: u16 = 0xCF8;
/// PCI configuration mechanism #1: the data port.
const PCI_CONFIG_DATA: u16 = 0xCFC;

/// Reads the configuration dword `address` names (mechanism #1), the two port accesses with
/// interrupts off so nothing comes between them.
pub fn pci_config_read(address: u32) -> u32 {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration ports: the write selects a
        // configuration register and the read returns it; neither touches memory.
        unsafe {
            x86_64::instructions::port::PortWriteOnly::<u32>::new(PCI_CONFIG_ADDRESS)
                .write(address);
            x86_64::instructions::port::PortReadOnly::<u32>::new(PCI_CONFIG_DATA).read()
        }
    })
}

/// Writes `value` to the configuration dword `address` names (mechanism #1), interrupts off
/// between the two port accesses.
pub fn pci_config_write(address: u32, value: u32) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration ports. A configuration
        // write can make a device decode addresses or master DMA, exactly as the same write
        // through the ECAM window's safe `Mmio` handle can; the PCI crate's enumeration and the
        // drivers own those registers and program them as the ECAM path does.
        unsafe {
            x86_64::instructions::port::PortWriteOnly::<u32>::new(PCI_CONFIG_ADDRESS)
                .write(address);
            x86_64::instructions::port::PortWriteOnly::<u32>::new(PCI_CONFIG_DATA).write(value);
        }
    })
}

/// Whether the host bridge answers on the mechanism #1 ports: the address port keeps the
/// value written to it, and function 00:00.0 has a vendor ID.
pub fn pci_config_ports_present() -> bool {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: as for `pci_config_read`; the address port is restored afterwards.
        unsafe {
            let mut addr = x86_64::instructions::port::Port::<u32>::new(PCI_CONFIG_ADDRESS);
            let old = addr.read();
            addr.write(0x8000_0000);
            let kept = addr.read() == 0x8000_0000;
            addr.write(old);
            kept
        }
    }) && !matches!(pci_config_read(0x8000_0000) & 0xffff, 0xffff | 0)
}
