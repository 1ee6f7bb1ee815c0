//! One PCI function as enumeration left it, and what drivers do with it.

use hal::{IrqLine, Mmio, MmioMapper};

use crate::PciError;
use crate::bar::{Bar, BarSlot, MAX_BARS};
use crate::cap::{self, Capabilities};
use crate::config::{self, Bdf, ConfigAccess, ConfigSpace};
use crate::regs::{
    CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PCIE, CAP_ID_PM, CMD_BUS_MASTER, CMD_INTX_DISABLE, CMD_IO,
    CMD_MEMORY, COMMAND, HEADER_MULTI_FUNCTION, HEADER_TYPE_MASK, PM_CTRL, PM_PME_STATUS,
    PM_STATE_MASK,
};

/// Class, subclass and programming interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class (0x01 mass storage, 0x06 bridge, ...).
    pub class: u8,
    /// Subclass (for mass storage: 0x06 SATA, 0x08 NVM, ...).
    pub subclass: u8,
    /// Programming interface (SATA 0x01 = AHCI, NVM 0x02 = NVMe).
    pub prog_if: u8,
}

impl ClassCode {
    /// A short English name for the common classes met in QEMU and on boards, or `"other"`.
    pub fn name(self) -> &'static str {
        match (self.class, self.subclass, self.prog_if) {
            (0x01, 0x00, _) => "SCSI controller",
            (0x01, 0x01, _) => "IDE controller",
            (0x01, 0x06, 0x01) => "SATA controller (AHCI)",
            (0x01, 0x06, _) => "SATA controller",
            (0x01, 0x08, 0x02) => "NVM controller (NVMe)",
            (0x01, 0x08, _) => "NVM controller",
            (0x01, _, _) => "mass storage controller",
            (0x02, _, _) => "network controller",
            (0x03, _, _) => "display controller",
            (0x06, 0x00, _) => "host bridge",
            (0x06, 0x01, _) => "ISA bridge",
            (0x06, 0x04, _) => "PCI-to-PCI bridge",
            (0x06, _, _) => "bridge",
            (0x07, _, _) => "communication controller",
            (0x08, _, _) => "system peripheral",
            (0x0c, 0x03, _) => "USB controller",
            (0x0c, 0x05, _) => "SMBus controller",
            (0x0c, _, _) => "serial bus controller",
            (0x00, _, _) => "unclassified device",
            (0xff, _, _) => "vendor-specific device",
            _ => "other",
        }
    }
}

/// An INTx pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxPin {
    /// INTA#
    A,
    /// INTB#
    B,
    /// INTC#
    C,
    /// INTD#
    D,
}

impl IntxPin {
    /// The pin for an interrupt-pin register value (1..=4), `None` for 0 (no INTx) or junk.
    pub fn from_register(v: u8) -> Option<IntxPin> {
        match v {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }

    /// 0 for A .. 3 for D.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The pin this one arrives on one bridge up, for a device with number `dev` below the
    /// bridge (the standard swizzle: `(pin + dev) mod 4`).
    pub fn swizzle(self, dev: u8) -> IntxPin {
        match (self.index() + dev) % 4 {
            0 => IntxPin::A,
            1 => IntxPin::B,
            2 => IntxPin::C,
            _ => IntxPin::D,
        }
    }
}

/// Platform knowledge that turns a root-bus INTx into an interrupt line: the riscv64 virt
/// device tree's `interrupt-map`, an x86 `_PRT`. The boot crate implements it; any
/// `Fn(u8, IntxPin) -> Option<IrqLine>` closure does.
pub trait IntxRouter {
    /// The line raised when the device `root_dev` on the first bus asserts `pin` (after
    /// swizzling through any bridges in between).
    fn route(&self, root_dev: u8, pin: IntxPin) -> Option<IrqLine>;
}

impl<F: Fn(u8, IntxPin) -> Option<IrqLine>> IntxRouter for F {
    fn route(&self, root_dev: u8, pin: IntxPin) -> Option<IrqLine> {
        self(root_dev, pin)
    }
}

/// Bus numbers and windows of a PCI-to-PCI bridge, as enumeration programmed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeInfo {
    /// The bus right below the bridge.
    pub secondary: u8,
    /// The highest bus below the bridge.
    pub subordinate: u8,
    /// Memory window forwarded downstream, `(pci base, size)`.
    pub mem_window: Option<(u64, u64)>,
    /// I/O window forwarded downstream, `(base, size)`.
    pub io_window: Option<(u64, u64)>,
}

/// One function found by enumeration.
///
/// It holds a reference to the configuration access it was found through, so its methods
/// touch its registers directly. It is deliberately not `Clone`: whoever holds it (a driver)
/// owns the function's command register, MSI and MSI-X state.
#[derive(Debug)]
pub struct PciFunction<'a, C: ConfigAccess + ?Sized = ConfigSpace> {
    pub(crate) cfg: &'a C,
    pub(crate) bdf: Bdf,
    pub(crate) ids: u32,
    pub(crate) class_rev: u32,
    pub(crate) header: u8,
    pub(crate) interrupt_pin: u8,
    /// Device number on the first bus this function's INTx reaches, and the swizzle to add.
    pub(crate) intx_root: (u8, u8),
    /// A BAR sized but not yet placed reads `Failed(request, BarNotAssigned)`; enumeration
    /// settles every slot before it hands the function out.
    pub(crate) bars: [BarSlot; MAX_BARS],
    pub(crate) caps: Capabilities,
    pub(crate) bridge: Option<BridgeInfo>,
}

impl<'a, C: ConfigAccess + ?Sized> PciFunction<'a, C> {
    /// Bus, device and function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Vendor ID (0x1af4 virtio, 0x1b36 Red Hat/QEMU, 0x8086 Intel, ...).
    pub fn vendor_id(&self) -> u16 {
        self.ids as u16
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        (self.ids >> 16) as u16
    }

    /// Class, subclass and programming interface.
    pub fn class(&self) -> ClassCode {
        ClassCode {
            class: (self.class_rev >> 24) as u8,
            subclass: (self.class_rev >> 16) as u8,
            prog_if: (self.class_rev >> 8) as u8,
        }
    }

    /// Revision ID.
    pub fn revision(&self) -> u8 {
        self.class_rev as u8
    }

    /// Header layout: 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.
    pub fn header_type(&self) -> u8 {
        self.header & HEADER_TYPE_MASK
    }

    /// Whether the device has several functions (bit 7 of the header type).
    pub fn is_multi_function(&self) -> bool {
        self.header & HEADER_MULTI_FUNCTION != 0
    }

    /// Bridge details, for PCI-to-PCI bridges that enumeration numbered.
    pub fn bridge(&self) -> Option<BridgeInfo> {
        self.bridge
    }

    /// The interrupt pin the function uses for INTx, `None` if it has none.
    pub fn interrupt_pin(&self) -> Option<IntxPin> {
        IntxPin::from_register(self.interrupt_pin)
    }

    /// The device number on the first bus and the pin there that this function's INTx
    /// arrives as, after the standard swizzle through every bridge on the way. For functions
    /// on the first bus that is their own device number and pin.
    pub fn root_intx(&self) -> Option<(u8, IntxPin)> {
        let pin = self.interrupt_pin()?;
        Some((self.intx_root.0, pin.swizzle(self.intx_root.1)))
    }

    /// The interrupt line of this function's INTx, as `router` maps the root-bus pin.
    pub fn intx_line(&self, router: &dyn IntxRouter) -> Option<IrqLine> {
        let (dev, pin) = self.root_intx()?;
        router.route(dev, pin)
    }

    /// What slot `index` holds: an assigned BAR, a failure, nothing.
    pub fn bar_slot(&self, index: usize) -> BarSlot {
        self.bars.get(index).copied().unwrap_or(BarSlot::Unused)
    }

    /// BAR `index` if it was given an address.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        match self.bar_slot(index) {
            BarSlot::Assigned(bar) => Some(bar),
            _ => None,
        }
    }

    /// All six slots (two meaningful ones for bridges), for printing.
    pub fn bar_slots(&self) -> [BarSlot; MAX_BARS] {
        core::array::from_fn(|i| self.bar_slot(i))
    }

    /// Maps memory BAR `index` through `mapper`.
    pub fn try_map_bar(&self, index: usize, mapper: &dyn MmioMapper) -> Result<Mmio, PciError> {
        let bar = self.memory_bar(index)?;
        let len = usize::try_from(bar.size).map_err(|_| PciError::MapFailed)?;
        mapper.map(bar.cpu_addr, len).ok_or(PciError::MapFailed)
    }

    /// Maps memory BAR `index` through `mapper`; `None` if it is not an assigned memory BAR
    /// or the mapper refuses (see [`try_map_bar`](Self::try_map_bar) for the reason).
    pub fn map_bar(&self, index: usize, mapper: &dyn MmioMapper) -> Option<Mmio> {
        self.try_map_bar(index, mapper).ok()
    }

    /// The assigned memory BAR `index`, or why not.
    pub(crate) fn memory_bar(&self, index: usize) -> Result<Bar, PciError> {
        match self.bar_slot(index) {
            BarSlot::Assigned(bar) if bar.kind.is_memory() => Ok(bar),
            BarSlot::Assigned(_) => Err(PciError::NotMemoryBar),
            BarSlot::Failed(..) => Err(PciError::BarNotAssigned),
            BarSlot::Unused | BarSlot::Upper | BarSlot::Invalid => Err(PciError::NoSuchBar),
        }
    }

    /// The standard capability list found during enumeration.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Offset of the first capability with `id` (see [`cap::id`]).
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.caps.find(id)
    }

    /// Offset of the MSI capability.
    pub fn msi_offset(&self) -> Option<u8> {
        self.caps.find(CAP_ID_MSI)
    }

    /// Offset of the MSI-X capability.
    pub fn msix_offset(&self) -> Option<u8> {
        self.caps.find(CAP_ID_MSIX)
    }

    /// Offset of the PCI Express capability (present on PCIe functions).
    pub fn pcie_offset(&self) -> Option<u8> {
        self.caps.find(CAP_ID_PCIE)
    }

    /// Offset of the power management capability.
    pub fn power_management_offset(&self) -> Option<u8> {
        self.caps.find(CAP_ID_PM)
    }

    /// Offset of the PCIe extended capability `id` (from 0x100), for PCIe functions only.
    /// The walk is bounded and stops at a malformed entry.
    pub fn find_ext_capability(&self, id: u16) -> Option<u16> {
        self.pcie_offset()?;
        cap::find_ext(self.cfg, self.bdf, id)
    }

    /// Raw configuration read (for drivers with device-specific registers, e.g. virtio's
    /// vendor capabilities). `off` is rounded down to a multiple of 4 and must be below 4096.
    pub fn config_read32(&self, off: u16) -> u32 {
        self.cfg.read32(self.bdf, off & 0xffc)
    }

    /// Raw configuration write; see [`config_read32`](Self::config_read32).
    pub fn config_write32(&self, off: u16, value: u32) {
        self.cfg.write32(self.bdf, off & 0xffc, value);
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.cfg.read16(self.bdf, COMMAND)
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.cfg.read16(self.bdf, COMMAND + 2)
    }

    /// Lets the function issue memory requests (DMA, MSI writes). Drivers call this once their
    /// queues are set up.
    pub fn enable_bus_master(&self) {
        config::update_command(self.cfg, self.bdf, CMD_BUS_MASTER, 0);
    }

    /// Stops the function's memory requests.
    pub fn disable_bus_master(&self) {
        config::update_command(self.cfg, self.bdf, 0, CMD_BUS_MASTER);
    }

    /// Turns on memory decoding. Enumeration already does this for functions whose memory
    /// BARs were all assigned; this is for drivers that turned it off.
    pub fn enable_memory_space(&self) -> Result<(), PciError> {
        if !self.all_assigned(true) {
            return Err(PciError::BarNotAssigned);
        }
        config::update_command(self.cfg, self.bdf, CMD_MEMORY, 0);
        Ok(())
    }

    /// Turns on I/O decoding, if every I/O BAR has an address.
    pub fn enable_io_space(&self) -> Result<(), PciError> {
        if !self.all_assigned(false) {
            return Err(PciError::BarNotAssigned);
        }
        config::update_command(self.cfg, self.bdf, CMD_IO, 0);
        Ok(())
    }

    /// Whether no BAR of the given space failed to get an address.
    pub(crate) fn all_assigned(&self, memory: bool) -> bool {
        !self.bars.iter().any(|b| match b {
            BarSlot::Failed(req, _) => req.kind.is_memory() == memory,
            _ => false,
        })
    }

    /// Whether the function has BARs of the given space (assigned or not).
    pub(crate) fn has_bars(&self, memory: bool) -> bool {
        self.bars.iter().any(|b| match b {
            BarSlot::Assigned(bar) => bar.kind.is_memory() == memory,
            BarSlot::Failed(req, _) => req.kind.is_memory() == memory,
            _ => false,
        })
    }

    /// Lets the function assert INTx (clears command bit 10).
    pub fn enable_intx(&self) {
        config::update_command(self.cfg, self.bdf, 0, CMD_INTX_DISABLE);
    }

    /// Stops INTx (sets command bit 10); done automatically when MSI or MSI-X is enabled.
    pub fn disable_intx(&self) {
        config::update_command(self.cfg, self.bdf, CMD_INTX_DISABLE, 0);
    }

    /// Puts the function in power state D0 if it has power management and is in another
    /// state. Returns the state it was in (0 for D0 .. 3 for D3hot), `None` without the
    /// capability. Leaving D3hot resets some devices; the caller waits 10 ms before use.
    pub fn set_power_state_d0(&self) -> Option<u8> {
        let pm = u16::from(self.power_management_offset()?);
        let pmcsr = self.cfg.read16(self.bdf, pm + PM_CTRL);
        let state = (pmcsr & PM_STATE_MASK) as u8;
        if state != 0 {
            // Upper half (bridge extensions, data) is read-only; PME status is write-one-to-
            // clear, so it is written as zero.
            let value = pmcsr & !PM_STATE_MASK & !PM_PME_STATUS;
            self.cfg.write32(self.bdf, pm + PM_CTRL, u32::from(value));
        }
        Some(state)
    }

    /// A one-line-worth summary for boot logs.
    pub fn summary(&self) -> Summary {
        Summary {
            bdf: self.bdf,
            vendor_id: self.vendor_id(),
            device_id: self.device_id(),
            class: self.class(),
            revision: self.revision(),
            header_type: self.header_type(),
            bars: self.bar_slots(),
            msi: self.msi_offset().is_some(),
            msix: self.msix_offset().is_some(),
        }
    }
}

/// What a boot log prints about a function: `bb:dd.f vvvv:dddd class BARs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Class code; [`ClassCode::name`] gives a readable name.
    pub class: ClassCode,
    /// Revision ID.
    pub revision: u8,
    /// Header type (0 endpoint, 1 bridge).
    pub header_type: u8,
    /// BAR slots.
    pub bars: [BarSlot; MAX_BARS],
    /// Has an MSI capability.
    pub msi: bool,
    /// Has an MSI-X capability.
    pub msix: bool,
}
