//! The virtio-pci transport over our PCI function handles, and the MSI-X vector programming
//! virtio-drivers leaves to the driver.

use ::pci::PciFunction;
use hal::MmioMapper;
use virtio_drivers::transport::SomeTransport;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{DeviceFunction, PciRoot};

use crate::InitError;
use crate::hal_impl::{FunctionConfig, VirtioHal};
use crate::spec::pci_common;

/// Modern virtio-blk PCI device ID.
pub const DEVICE_ID_MODERN: u16 = 0x1042;
/// Transitional virtio-blk PCI device ID.
pub const DEVICE_ID_TRANSITIONAL: u16 = 0x1001;
/// Red Hat / virtio vendor ID.
pub const VENDOR_ID: u16 = 0x1af4;

/// The virtio-pci transport of `f` (BARs assigned; bus mastering and memory decoding are
/// enabled here).
pub fn transport(f: &'static PciFunction<'static>) -> Result<SomeTransport<'static>, InitError> {
    f.enable_memory_space().map_err(|_| InitError::Transport)?;
    f.enable_bus_master();
    let bdf = f.bdf();
    let df = DeviceFunction {
        bus: bdf.bus(),
        device: bdf.dev(),
        function: bdf.func(),
    };
    let mut root = PciRoot::new(FunctionConfig(f));
    PciTransport::new::<VirtioHal, _>(&mut root, df)
        .map(SomeTransport::Pci)
        .map_err(|_| InitError::Transport)
}

/// Points queue `queue`'s interrupt at MSI-X table entry `entry` and turns configuration-change
/// interrupts off. Call after the queue is set up; `false` if the device refused.
pub fn set_queue_msix_vector(
    f: &'static PciFunction<'static>,
    mapper: &dyn MmioMapper,
    queue: u16,
    entry: u16,
) -> bool {
    let Some(common) = common_cfg(f, mapper) else {
        return false;
    };
    common.write16(pci_common::MSIX_CONFIG, pci_common::NO_VECTOR);
    common.write16(pci_common::QUEUE_SELECT, queue);
    common.write16(pci_common::QUEUE_MSIX_VECTOR, entry);
    common.read16(pci_common::QUEUE_MSIX_VECTOR) == entry
}

/// Where each queue's doorbell is (the notification capability), so that every queue is
/// notified with one register write of its own, without the transport (whose `notify` selects
/// the queue in the shared common configuration first, which two CPUs must not do at once).
pub struct Doorbells {
    common: hal::Mmio,
    notify: hal::Mmio,
    multiplier: u32,
}

impl Doorbells {
    /// The doorbells of `f`: `None` if its common configuration or notification capability is
    /// missing or outside its BAR.
    pub fn of(f: &'static PciFunction<'static>, mapper: &dyn MmioMapper) -> Option<Doorbells> {
        let common = common_cfg(f, mapper)?;
        let cap = find_cap(f, pci_common::CAP_NOTIFY_CFG)?;
        let multiplier = f.config_read32(cap + 16);
        let notify = cap_window(f, mapper, cap)?;
        Some(Doorbells {
            common,
            notify,
            multiplier,
        })
    }

    /// Queue `queue`'s doorbell (a 16-bit register the queue index is written to). Selects the
    /// queue in the common configuration: only while nothing else does (bring-up).
    pub(crate) fn for_queue(&self, queue: u16) -> Option<hal::Mmio> {
        self.common.write16(pci_common::QUEUE_SELECT, queue);
        let off = self.common.read16(pci_common::QUEUE_NOTIFY_OFF) as usize;
        let at = off.checked_mul(self.multiplier as usize)?;
        self.notify.subregion(at, 2)
    }
}

/// The first virtio vendor capability of type `cfg_type` (byte 3 of each).
///
/// The capability list is the one enumeration recorded (bounded against loops); each virtio
/// vendor capability holds `cfg_type` in byte 3, then the BAR, the offset and the length.
fn find_cap(f: &'static PciFunction<'static>, cfg_type: u8) -> Option<u16> {
    f.capabilities()
        .find_all(::pci::cap::id::VENDOR)
        .map(u16::from)
        .find(|&cap| (f.config_read32(cap) >> 24) as u8 == cfg_type)
}

/// The window a virtio vendor capability at `cap` describes (BAR, offset, length).
fn cap_window(
    f: &'static PciFunction<'static>,
    mapper: &dyn MmioMapper,
    cap: u16,
) -> Option<hal::Mmio> {
    let bar = f.config_read32(cap + 4) & 0xff;
    let off = f.config_read32(cap + 8) as usize;
    let len = f.config_read32(cap + 12) as usize;
    let regs = f.map_bar(bar as usize, mapper)?;
    regs.subregion(off, len)
}

/// The common configuration window (from the vendor capability of type 1).
fn common_cfg(f: &'static PciFunction<'static>, mapper: &dyn MmioMapper) -> Option<hal::Mmio> {
    cap_window(f, mapper, find_cap(f, pci_common::CAP_COMMON_CFG)?)
}
