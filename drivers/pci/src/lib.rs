//! PCI and PCI Express enumeration over ECAM, for a bare-metal kernel.
//!
//! The boot crate wraps the ECAM window in an [`Ecam`], describes the address windows BARs
//! may use ([`Windows`]) and calls [`enumerate`]. That scans every bus reachable from the
//! first one, numbers PCI-to-PCI bridges, sizes every BAR and assigns it (firmware
//! assignments are ignored: riscv64 virt has none, qboot on x86_64 neither), programs bridge
//! windows, walks capability lists, and turns memory/I/O decoding on for functions whose BARs
//! of that space all found a place (a function with no BARs of a space keeps the decoding bit
//! it had, for legacy ranges such as an ISA bridge's). Drivers then pick their [`PciFunction`] from the list:
//!
//! ```ignore
//! let funcs = pci::enumerate(&ECAM, &windows)?;
//! let nvme = funcs.into_iter().find(|f| (f.vendor_id(), f.device_id()) == (0x1b36, 0x0010))?;
//! let regs = nvme.map_bar(0, &MAPPER)?;
//! nvme.enable_bus_master();
//! let (line, msg) = hal::irq::alloc_msi().ok_or(...)?;
//! let table = nvme.msix(&MAPPER)?;
//! table.set_entry(0, msg)?;
//! table.unmask(0)?;
//! table.enable();
//! ```
//!
//! Configuration space is reached through the [`ConfigAccess`] trait (32-bit reads and
//! writes at a function and offset), implemented by [`Ecam`]; host tests implement it with a
//! device model that emulates BAR size masks, read-only bits and capability lists.
//!
//! Interrupts: MSI and MSI-X are programmed here from a [`hal::MsiMessage`]. For INTx the
//! crate only knows the pin and the standard bridge swizzle ([`PciFunction::root_intx`]);
//! the platform routing is the boot crate's ([`IntxRouter`]).
//!
//! Not done: multi-vector MSI (one vector is enabled), bridge prefetchable windows (closed;
//! prefetchable BARs behind bridges use the memory window), CardBus bridges (listed, not
//! scanned), expansion ROMs (disabled), hot plug, and ECAM segments other than the first.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod bar;
pub mod cap;
mod config;
mod enumerate;
mod error;
mod function;
mod msi;
mod regs;
mod resource;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use bar::{Bar, BarKind, BarRequest, BarSlot, MAX_BARS};
pub use cap::{Capabilities, Capability};
pub use config::{Bdf, ConfigAccess, ConfigPorts, ConfigSpace, Ecam, PortConfig};
pub use enumerate::{ScanReport, enumerate_into};
pub use error::PciError;
pub use function::{BridgeInfo, ClassCode, IntxPin, IntxRouter, PciFunction, Summary};
pub use msi::{MsiInfo, MsixTable};
pub use resource::{MIN_MEM_BLOCK, Window, Windows};

/// Functions [`enumerate`] lists, at most. QEMU's machines have well under this; use
/// [`enumerate_into`] with a bigger list for more.
pub const MAX_FUNCTIONS: usize = 32;

/// The list [`enumerate`] returns.
pub type FunctionList<'a, C = ConfigSpace> = heapless::Vec<PciFunction<'a, C>, MAX_FUNCTIONS>;

/// Enumerates and assigns everything (see [`enumerate_into`]) into a list of up to
/// [`MAX_FUNCTIONS`] functions. Functions beyond that are left with decoding off.
///
/// The list is about 10 KiB and is returned by value; boot code short of stack can use
/// [`enumerate_into`] with a list in a `static`.
pub fn enumerate<'a, C: ConfigAccess + ?Sized>(
    cfg: &'a C,
    windows: &Windows,
) -> Result<FunctionList<'a, C>, PciError> {
    let mut list = FunctionList::new();
    enumerate_into(cfg, windows, &mut list)?;
    Ok(list)
}
