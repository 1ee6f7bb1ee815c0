//! Safe handles to hardware for drivers.
//!
//! Drivers (`drivers/*`) deny `unsafe`; everything that touches raw addresses lives here or in
//! the arch code of the boot crate. The boot crate creates the handles (the `unsafe`
//! constructors are where it vouches for an address range), drivers only use them:
//!
//! - [`mmio::Mmio`]: a device register window, bounds-checked volatile accesses through typed
//!   register handles of the `volatile` crate (read-only, write-only, read-write).
//! - [`dma::DmaBuf`]: DMA-able memory from a static region, with its physical address.
//! - [`mem`]: the virtual <-> physical translation the arch code sets up at boot, and the CPU
//!   copies to and from memory named by physical address (`unsafe`: the caller vouches for it).
//! - [`irq::IrqLine`]: an interrupt line (a PLIC source, an IOAPIC pin or an MSI vector) that a
//!   driver registers a handler on.
//!
//! The crate is `no_std`, has no heap, and builds on the host so drivers can be tested there
//! with memory standing in for devices.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod addr;
pub mod dma;
pub mod irq;
pub mod mem;
pub mod mmio;

pub use addr::PhysAddr;
pub use dma::{DmaBuf, DmaError};
pub use irq::{IrqHandler, IrqLine, MsiMessage};
pub use mmio::{Mmio, MmioMapper, Register};
/// The `volatile` crate the register handles come from (its `access` types name a handle's
/// access), so drivers need no dependency of their own.
pub use volatile;
