//! What the arch code learned at boot, handed to [`crate::kmain`].

use heapless::Vec;

/// Platform facts found by the arch code (firmware tables, device tree).
#[derive(Debug)]
pub struct BootInfo {
    /// Kernel command line (`-append` in QEMU); empty if none.
    pub cmdline: &'static str,
    /// How the kernel was entered (`pvh`, `multiboot2`, `opensbi`).
    pub firmware: &'static str,
    /// The PCI host bridge, if the platform has one.
    pub pci: Option<PciHost>,
    /// virtio-mmio slots (riscv64 virt), in discovery order.
    pub virtio_mmio: Vec<MmioDevice, 8>,
}

/// A PCI(e) host bridge: an ECAM window, or (x86 machines without one) the legacy
/// configuration ports.
#[derive(Debug, Clone)]
pub struct PciHost {
    /// Physical base of the ECAM window (bus `bus_start` at offset 0).
    pub ecam_base: u64,
    /// Length of the ECAM window in bytes; 0 when `ports` is used instead.
    pub ecam_size: u64,
    /// Configuration mechanism #1 through I/O ports, for a host without ECAM.
    pub ports: Option<pci::ConfigPorts>,
    /// First bus number decoded.
    pub bus_start: u8,
    /// Last bus number decoded.
    pub bus_end: u8,
    /// 32-bit memory window for BAR assignment: (base, size), CPU address == bus address.
    pub mmio32: (u64, u64),
    /// 64-bit memory window, if any.
    pub mmio64: Option<(u64, u64)>,
    /// I/O window: (CPU base address or port base, size), if any.
    pub io: Option<(u64, u64)>,
    /// Legacy INTx routing (empty where MSI is used).
    pub intx: IntxMap,
}

/// A memory-mapped device with one interrupt line.
#[derive(Debug, Clone, Copy)]
pub struct MmioDevice {
    /// Physical base address.
    pub base: u64,
    /// Register window size.
    pub size: u64,
    /// Interrupt controller line.
    pub irq: u32,
}

/// The device tree's `interrupt-map` for a PCI host: (device, pin) to interrupt line.
#[derive(Debug, Default, Clone)]
pub struct IntxMap {
    /// Mask applied to the child unit address' high cell (device/function bits).
    pub mask_hi: u32,
    /// Mask applied to the pin (1 = INTA .. 4 = INTD).
    pub mask_pin: u32,
    /// Map entries.
    pub entries: Vec<IntxEntry, 64>,
}

/// One `interrupt-map` entry.
#[derive(Debug, Clone, Copy)]
pub struct IntxEntry {
    /// Child unit address high cell, already masked.
    pub hi: u32,
    /// Pin, already masked.
    pub pin: u32,
    /// Interrupt controller line.
    pub irq: u32,
}

impl IntxMap {
    /// The interrupt line the pin `pin` (1..=4) of function `bus:dev.func` raises, if mapped.
    pub fn route(&self, bus: u8, dev: u8, func: u8, pin: u8) -> Option<u32> {
        let hi =
            (u32::from(bus) << 16 | u32::from(dev) << 11 | u32::from(func) << 8) & self.mask_hi;
        let pin = u32::from(pin) & self.mask_pin;
        self.entries
            .iter()
            .find(|e| e.hi == hi && e.pin == pin)
            .map(|e| e.irq)
    }
}

/// The value of `key=value` on the command line, if present.
pub fn cmdline_arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}
