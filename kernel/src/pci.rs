//! PCI bring-up: configuration access from the boot info (the ECAM window, or the legacy
//! I/O ports on x86 machines without one), enumeration with BAR assignment, and the platform's
//! INTx routing for drivers.

use crate::{arch, boot::BootInfo};
use hal::{IrqLine, PhysAddr};
use pci::{
    BarSlot, ConfigSpace, Ecam, FunctionList, IntxPin, PciFunction, PortConfig, Window, Windows,
};
use spin::Once;

static CONFIG: Once<ConfigSpace> = Once::new();
static FUNCTIONS: Once<FunctionList<'static>> = Once::new();

/// Enumerates the bus and assigns BARs. Boot code, once; logs each function.
pub fn init(info: &BootInfo) {
    let Some(host) = &info.pci else {
        defmt::println!("pci: no host bridge");
        return;
    };
    let config = match host.ports {
        Some(ports) => {
            defmt::println!(
                "pci: no ECAM (no ACPI MCFG): legacy configuration ports 0xcf8/0xcfc (mechanism #1), 256 bytes per function"
            );
            CONFIG.call_once(|| ConfigSpace::Ports(PortConfig::new(ports)))
        }
        None => {
            let Some(mmio) =
                arch::mmio_mapper().map(PhysAddr(host.ecam_base), host.ecam_size as usize)
            else {
                defmt::error!("pci: cannot map ECAM at {=u64:#x}", host.ecam_base);
                return;
            };
            match Ecam::new(mmio, host.bus_start) {
                Ok(e) => CONFIG.call_once(|| ConfigSpace::Ecam(e)),
                Err(e) => {
                    defmt::error!("pci: bad ECAM window: {}", defmt::Debug2Format(&e));
                    return;
                }
            }
        }
    };
    let windows = Windows {
        mem32: Some(Window::new(PhysAddr(host.mmio32.0), host.mmio32.1)),
        mem64: host.mmio64.map(|(b, s)| Window::new(PhysAddr(b), s)),
        io: host.io.map(|(b, s)| {
            // x86 has a port space (bus address == port); riscv virt maps it at a CPU address.
            if cfg!(target_arch = "x86_64") {
                Window::new(PhysAddr(b), s)
            } else {
                Window::translated(0, PhysAddr(b), s)
            }
        }),
    };
    match pci::enumerate(config, &windows) {
        Ok(list) => {
            let list = FUNCTIONS.call_once(|| list);
            for f in list {
                log_function(f);
            }
        }
        Err(e) => defmt::error!("pci: enumeration failed: {}", defmt::Debug2Format(&e)),
    }
}

fn log_function(f: &PciFunction<'static>) {
    let s = f.summary();
    defmt::println!(
        "pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x} {=str}{=str}{=str}",
        s.bdf.bus(),
        s.bdf.dev(),
        s.bdf.func(),
        s.vendor_id,
        s.device_id,
        s.class.name(),
        if s.msi { " msi" } else { "" },
        if s.msix { " msix" } else { "" },
    );
    for (i, slot) in s.bars.iter().enumerate() {
        match slot {
            BarSlot::Assigned(b) => defmt::println!(
                "    bar{=usize} {=str} {=u64:#x} size {=u64:#x}",
                i,
                match b.kind {
                    pci::BarKind::Io => "io ",
                    _ => "mem",
                },
                b.cpu_addr.as_u64(),
                b.size
            ),
            BarSlot::Failed(_, e) => {
                defmt::error!(
                    "    bar{=usize} not assigned: {}",
                    i,
                    defmt::Debug2Format(e)
                )
            }
            _ => {}
        }
    }
}

/// Every function found (empty without PCI).
pub fn functions() -> &'static [PciFunction<'static>] {
    FUNCTIONS.get().map_or(&[], |l| l.as_slice())
}

/// The first function with this vendor and device ID.
pub fn find(vendor: u16, device: u16) -> Option<&'static PciFunction<'static>> {
    functions()
        .iter()
        .find(|f| f.vendor_id() == vendor && f.device_id() == device)
}

/// The platform's INTx line for a function (riscv virt: from the device tree's interrupt-map).
pub fn intx_line(f: &PciFunction<'static>) -> Option<IrqLine> {
    let host = crate::boot_info().pci.as_ref()?;
    let router = |root_dev: u8, pin: IntxPin| {
        host.intx
            .route(host.bus_start, root_dev, 0, pin.index() + 1)
            .map(IrqLine::new)
    };
    f.intx_line(&router)
}
