//! virtio-blk: a block device over virtio-pci (modern) or virtio-mmio, as a `blk` hardware
//! queue.
//!
//! The ring is sized from what the device offers (4 to 256 entries, [`ring`]), and the tags and
//! segments per request follow it. One request is one descriptor chain built from
//! `Request::map_sg` (header, every data segment, status byte); `commit` notifies the device
//! once per batch (with `VIRTIO_F_EVENT_IDX`, only when the device asked for it). Completion
//! reaps the used ring from the interrupt handler (or from `poll`) and completes by tag. The
//! device is not trusted: the used index is checked against the chains in flight, every used id
//! against the driver's own table of them and every used length against what the chain needed;
//! a bad index or id resets the device and fails what was in flight with a device error. With
//! `VIRTIO_BLK_F_MQ` a device may get several request queues ([`VirtioBlk::with_queues`]), one
//! per hardware context of the block layer's queue, each with its own lock, doorbell and
//! interrupt handler ([`VirtioBlk::handle_queue_irq`]); a reset covers them all. See
//! `docs/virtio-blk.md`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
mod fake;
mod hal_impl;
#[cfg(test)]
mod hostile;
#[cfg(test)]
mod mq;
pub mod pci;
pub mod queue;
pub mod ring;
pub mod sg;
pub mod spec;
#[cfg(test)]
mod stack;
#[cfg(test)]
mod tests;

pub use queue::{DeviceInfo, DriverStats, Mode, VirtioBlk};
pub use ring::MIN_RING;
pub use sg::{RequestKind, UsedError};
pub use virtio_drivers::transport::SomeTransport;

/// Most ring entries of the one request queue (QEMU's default `queue-size`). The ring is the
/// largest power of two within this and the device's largest queue, down to [`MIN_RING`]
/// ([`DeviceInfo::ring_size`]).
pub const RING_SIZE: usize = 256;
/// Most requests in flight at once (tags), with a [`RING_SIZE`] ring: the block layer's queue
/// is `Queue<QUEUE_DEPTH>`, of which a smaller ring uses [`depth_for_ring`] tags
/// ([`DeviceInfo::queue_depth`]).
pub const QUEUE_DEPTH: usize = depth_for_ring(RING_SIZE);
/// Most data segments per request (also capped by the device's `seg_max` and by the ring: a
/// request of `n` segments takes `n + 2` descriptors).
pub const MAX_SEGMENTS: u16 = 64;

/// Tags for a ring of `ring` entries. Without indirect descriptors each request takes at least
/// three descriptors, so the tag count is a quarter of the ring (at least one): any request of
/// up to two data segments always finds room at full depth; bigger ones may be told `Busy` and
/// requeued, and any request fits an empty ring.
pub const fn depth_for_ring(ring: usize) -> usize {
    if ring < 8 { 1 } else { ring / 4 }
}

/// Why a device could not be brought up.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The transport could not be created (bad registers, missing capabilities).
    Transport,
    /// Not a block device.
    NotBlock,
    /// A legacy (pre-1.0) device on a transport without a legacy queue layout (PCI); legacy
    /// virtio-mmio (version 1) devices attach.
    Legacy,
    /// The queue could not be set up.
    Queue,
    /// The device's largest queue (the number given) is smaller than [`MIN_RING`]: no request
    /// fits.
    RingTooSmall(u32),
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
