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

/// Points queue 0's interrupt at MSI-X table entry `entry` and turns configuration-change
/// interrupts off. Call after the device is initialised; `false` if the device refused.
pub fn set_queue_msix_vector(
    f: &'static PciFunction<'static>,
    mapper: &dyn MmioMapper,
    entry: u16,
) -> bool {
    let Some(common) = common_cfg(f, mapper) else {
        return false;
    };
    common.write16(pci_common::MSIX_CONFIG, pci_common::NO_VECTOR);
    common.write16(pci_common::QUEUE_SELECT, 0);
    common.write16(pci_common::QUEUE_MSIX_VECTOR, entry);
    common.read16(pci_common::QUEUE_MSIX_VECTOR) == entry
}

/// The common configuration window (from the vendor capability of type 1).
///
/// The capability list is the one enumeration recorded (bounded against loops); each virtio
/// vendor capability holds `cfg_type` in byte 3, then the BAR, the offset and the length.
fn common_cfg(f: &'static PciFunction<'static>, mapper: &dyn MmioMapper) -> Option<hal::Mmio> {
    let cap = f
        .capabilities()
        .find_all(::pci::cap::id::VENDOR)
        .map(u16::from)
        .find(|&cap| (f.config_read32(cap) >> 24) as u8 == pci_common::CAP_COMMON_CFG)?;
    let bar = f.config_read32(cap + 4) & 0xff;
    let off = f.config_read32(cap + 8) as usize;
    let len = f.config_read32(cap + 12) as usize;
    let regs = f.map_bar(bar as usize, mapper)?;
    regs.subregion(off, len)
}
