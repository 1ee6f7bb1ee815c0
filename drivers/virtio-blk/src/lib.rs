//! virtio-blk: a block device over virtio-pci (modern) or virtio-mmio, as a `blk` hardware
//! queue.
//!
//! One request is one descriptor chain built from `Request::map_sg` (header, every data
//! segment, status byte); `commit` notifies the device once per batch (with
//! `VIRTIO_F_EVENT_IDX`, only when the device asked for it). Completion reaps the used ring from
//! the interrupt handler (or from `poll`) and completes by tag. The device is not trusted: every
//! used id is checked against the driver's own table of chains in flight and every used length
//! against what the chain needed; a bad id resets the device and fails what was in flight with
//! a device error. See `docs/virtio-blk.md`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
mod fake;
mod hal_impl;
pub mod pci;
pub mod queue;
pub mod sg;
pub mod spec;
#[cfg(test)]
mod tests;

pub use queue::{DeviceInfo, DriverStats, Mode, VirtioBlk};
pub use sg::{RequestKind, UsedError};
pub use virtio_drivers::transport::SomeTransport;

/// Ring entries of the one request queue (QEMU's default `queue-size`).
pub const RING_SIZE: usize = 256;
/// Requests in flight at once (tags). Without indirect descriptors each request takes at least
/// three descriptors, so the tag count is a quarter of the ring: any request of up to two data
/// segments always finds room at full depth; bigger ones may be told `Busy` and requeued.
pub const QUEUE_DEPTH: usize = RING_SIZE / 4;
/// Most data segments per request (also capped by the device's `seg_max`).
pub const MAX_SEGMENTS: u16 = 64;

/// Why a device could not be brought up.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The transport could not be created (bad registers, missing capabilities).
    Transport,
    /// Not a block device.
    NotBlock,
    /// A legacy (pre-1.0) device.
    Legacy,
    /// The queue is smaller than [`RING_SIZE`] or could not be set up.
    Queue,
    /// No DMA memory.
    NoMemory,
    /// The device's configuration makes no sense (block size, limits).
    BadConfig,
}

/// The transport [`VirtioBlk::new`] takes: virtio-drivers' MMIO or PCI transport. This crate's
/// own unit tests put the device model of `fake.rs` in its place.
#[cfg(not(test))]
pub type DeviceTransport = SomeTransport<'static>;
/// The transport [`VirtioBlk::new`] takes (unit tests: the in-memory device model).
#[cfg(test)]
pub type DeviceTransport = fake::FakeTransport;

/// A virtio-mmio transport over a mapped slot.
pub fn mmio_transport(regs: &hal::Mmio) -> Result<SomeTransport<'static>, InitError> {
    hal_impl::mmio_transport(regs).map(SomeTransport::Mmio)
}
