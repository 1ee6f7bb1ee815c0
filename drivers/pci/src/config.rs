//! Configuration-space access: function addresses, the access trait, ECAM, the legacy I/O-port
//! mechanism, and [`ConfigSpace`], the one a platform found.

use core::ops::RangeInclusive;

use hal::Mmio;

use crate::PciError;
use crate::regs::{COMMAND, CONFIG_SPACE_LEN};

/// A function's address on the bus: bus, device (0..32), function (0..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    dev: u8,
    func: u8,
}

impl Bdf {
    /// The function `bus:dev.func`, or `None` if `dev >= 32` or `func >= 8`.
    pub const fn try_new(bus: u8, dev: u8, func: u8) -> Option<Bdf> {
        if dev < 32 && func < 8 {
            Some(Bdf { bus, dev, func })
        } else {
            None
        }
    }

    /// The function `bus:dev.func`; `dev` and `func` are reduced to their 5 and 3 bits.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf {
            bus,
            dev: dev & 0x1f,
            func: func & 0x7,
        }
    }

    /// Bus number.
    pub const fn bus(self) -> u8 {
        self.bus
    }

    /// Device number (0..32).
    pub const fn dev(self) -> u8 {
        self.dev
    }

    /// Function number (0..8).
    pub const fn func(self) -> u8 {
        self.func
    }

    /// Offset of this function's 4 KiB in an ECAM window that starts at bus 0:
    /// `bus << 20 | dev << 15 | func << 12`.
    pub const fn ecam_offset(self) -> usize {
        (self.bus as usize) << 20 | (self.dev as usize) << 15 | (self.func as usize) << 12
    }
}

/// Reads and writes of configuration registers, 32 bits at a time.
///
/// Implemented by [`Ecam`] for real hardware and by device models in tests. Offsets handed to
/// the implementation are below 4096 and multiples of 4. A read of a function that does not
/// exist returns all ones; a write to it is dropped.
///
/// The crate never writes a 16-bit register by read-modify-write of its dword when the other
/// half holds write-one-to-clear bits (the status registers): it writes zeros there instead,
/// so a plain 32-bit store is always correct.
pub trait ConfigAccess {
    /// The bus numbers this access method reaches. Enumeration starts at the first and only
    /// numbers bridges inside the range.
    fn bus_range(&self) -> RangeInclusive<u8>;

    /// The dword at `off` (a multiple of 4 below 4096) of function `bdf`.
    fn read32(&self, bdf: Bdf, off: u16) -> u32;

    /// Stores `value` into the dword at `off` of function `bdf`.
    fn write32(&self, bdf: Bdf, off: u16, value: u32);

    /// The 16 bits at `off` (a multiple of 2).
    fn read16(&self, bdf: Bdf, off: u16) -> u16 {
        (self.read32(bdf, off & !3) >> ((off & 2) * 8)) as u16
    }

    /// The byte at `off`.
    fn read8(&self, bdf: Bdf, off: u16) -> u8 {
        (self.read32(bdf, off & !3) >> ((off & 3) * 8)) as u8
    }
}

/// Writes the command register; the status half of the dword gets zeros (its bits are
/// read-only or write-one-to-clear, so zeros leave it untouched).
pub(crate) fn write_command<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, cmd: u16) {
    cfg.write32(bdf, COMMAND, u32::from(cmd));
}

/// Sets and clears bits of the command register.
pub(crate) fn update_command<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, set: u16, clear: u16) {
    let cmd = cfg.read16(bdf, COMMAND);
    write_command(cfg, bdf, (cmd & !clear) | set);
}

/// Replaces the upper 16 bits of the dword at `off` (a capability's control register at
/// `cap + 2`), keeping the lower half, which there holds the read-only ID and next pointer.
pub(crate) fn write_upper16<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, off: u16, value: u16) {
    let low = cfg.read32(bdf, off) & 0xffff;
    cfg.write32(bdf, off, low | u32::from(value) << 16);
}

/// Size of one bus in an ECAM window.
const ECAM_BUS_SIZE: usize = 1 << 20;

/// PCIe enhanced configuration access: a memory window in which every function has 4 KiB.
///
/// On x86_64 the window comes from the ACPI MCFG table (q35: usually `0xb000_0000`), on riscv64
/// virt from the device tree (`0x3000_0000`, 256 MiB).
#[derive(Debug)]
pub struct Ecam {
    mmio: Mmio,
    first_bus: u8,
    last_bus: u8,
}

impl Ecam {
    /// Config access over `mmio`, whose offset 0 is the configuration space of bus `first_bus`
    /// (for an MCFG entry: its base address plus `first_bus << 20`). The window must be a whole
    /// number of 1 MiB bus slices; buses past 255 are ignored.
    pub fn new(mmio: Mmio, first_bus: u8) -> Result<Ecam, PciError> {
        let buses = mmio.len() / ECAM_BUS_SIZE;
        if buses == 0 || !mmio.len().is_multiple_of(ECAM_BUS_SIZE) {
            return Err(PciError::BadEcamWindow);
        }
        let last = (usize::from(first_bus) + buses - 1).min(255) as u8;
        Ok(Ecam {
            mmio,
            first_bus,
            last_bus: last,
        })
    }

    /// The byte offset of `bdf`'s register `off` in the window, if the bus is covered.
    fn offset(&self, bdf: Bdf, off: u16) -> Option<usize> {
        if !(self.first_bus..=self.last_bus).contains(&bdf.bus) || off >= CONFIG_SPACE_LEN {
            return None;
        }
        let rel = Bdf::new(bdf.bus - self.first_bus, bdf.dev, bdf.func);
        Some(rel.ecam_offset() + usize::from(off & !3))
    }
}

impl ConfigAccess for Ecam {
    fn bus_range(&self) -> RangeInclusive<u8> {
        self.first_bus..=self.last_bus
    }

    fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        match self.offset(bdf, off) {
            Some(at) => self.mmio.read32(at),
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, off: u16, value: u32) {
        if let Some(at) = self.offset(bdf, off) {
            self.mmio.write32(at, value);
        }
    }
}

/// The two I/O ports of PCI configuration mechanism #1, for [`PortConfig`]: an access writes
/// the function and register to the address port (`0xCF8`), then reads or writes the dword at
/// the data port (`0xCFC`).
///
/// The platform implements the pair as one step (nothing else may use the ports between the
/// two accesses: a single CPU with interrupts off, or a lock).
#[derive(Debug, Clone, Copy)]
pub struct ConfigPorts {
    /// Writes `address` to the address port, then returns the dword at the data port.
    pub read: fn(address: u32) -> u32,
    /// Writes `address` to the address port, then `value` to the data port.
    pub write: fn(address: u32, value: u32),
}

/// Legacy PCI configuration access through I/O ports (mechanism #1), for x86 machines whose
/// firmware describes no ECAM (no ACPI MCFG, e.g. QEMU's i440fx `-M pc`).
///
/// It reaches the first 256 bytes of each function's configuration space: reads beyond read as
/// all ones (so PCIe extended capabilities are not found) and writes beyond are dropped.
#[derive(Debug)]
pub struct PortConfig {
    ports: ConfigPorts,
}

/// Configuration bytes per function that mechanism #1 reaches.
const PORT_CONFIG_LEN: u16 = 0x100;

impl PortConfig {
    /// Access through `ports`, which must be the platform's mechanism #1 ports.
    pub const fn new(ports: ConfigPorts) -> PortConfig {
        PortConfig { ports }
    }

    /// The address-port value for `bdf`'s register `off`: enable bit, bus, device, function
    /// and dword offset; `None` past the first 256 bytes.
    pub fn address(bdf: Bdf, off: u16) -> Option<u32> {
        if off >= PORT_CONFIG_LEN {
            return None;
        }
        Some(
            1 << 31
                | u32::from(bdf.bus) << 16
                | u32::from(bdf.dev) << 11
                | u32::from(bdf.func) << 8
                | u32::from(off & 0xfc),
        )
    }
}

impl ConfigAccess for PortConfig {
    fn bus_range(&self) -> RangeInclusive<u8> {
        0..=255
    }

    fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        match PortConfig::address(bdf, off) {
            Some(a) => (self.ports.read)(a),
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, off: u16, value: u32) {
        if let Some(a) = PortConfig::address(bdf, off) {
            (self.ports.write)(a, value);
        }
    }
}

/// The configuration access a platform has: ECAM, or the legacy ports where there is none.
/// Drivers see it through the functions [`crate::enumerate`] hands out
/// ([`PciFunction`](crate::PciFunction) defaults to it).
#[derive(Debug)]
pub enum ConfigSpace {
    /// PCIe enhanced configuration access (a memory window).
    Ecam(Ecam),
    /// Mechanism #1 through I/O ports (first 256 bytes of each function).
    Ports(PortConfig),
}

impl ConfigAccess for ConfigSpace {
    fn bus_range(&self) -> RangeInclusive<u8> {
        match self {
            ConfigSpace::Ecam(e) => e.bus_range(),
            ConfigSpace::Ports(p) => p.bus_range(),
        }
    }

    fn read32(&self, bdf: Bdf, off: u16) -> u32 {
        match self {
            ConfigSpace::Ecam(e) => e.read32(bdf, off),
            ConfigSpace::Ports(p) => p.read32(bdf, off),
        }
    }

    fn write32(&self, bdf: Bdf, off: u16, value: u32) {
        match self {
            ConfigSpace::Ecam(e) => e.write32(bdf, off, value),
            ConfigSpace::Ports(p) => p.write32(bdf, off, value),
        }
    }
}
