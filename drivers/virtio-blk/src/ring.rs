//! The request queue's split virtqueue, sized at bring-up from what the device offers.
//!
//! virtio-drivers' `VirtQueue` takes its size as a const generic, while a device states its
//! largest queue at run time (virtio-pci `queue_size`, which a 1.x driver may lower; virtio-mmio
//! `QueueNumMax`). `Ring` holds one of the power-of-two sizes from [`MIN_RING`] to
//! [`RING_SIZE`] and forwards each call to it: one match on the size per call.

use blk::SgEntry;
use virtio_drivers::queue::VirtQueue;

use crate::hal_impl::{ChainBuf, VirtioHal, add_request, pop_chain};
use crate::{DeviceTransport, RING_SIZE};

/// The smallest usable ring: without indirect descriptors a request of one data segment (or a
/// discard with its range segment) takes three descriptors, so a two-entry ring carries none.
pub const MIN_RING: usize = 4;

/// The ring size to use when the device's largest queue holds `max` entries and the driver
/// wants at most `want`: the largest power of two within both (a split ring's size is a power
/// of two), or `None` below [`MIN_RING`].
pub const fn ring_size(max: u32, want: usize) -> Option<usize> {
    let cap = if (max as usize) < want {
        max as usize
    } else {
        want
    };
    if cap < MIN_RING {
        return None;
    }
    // Largest power of two <= cap.
    Some(1 << (usize::BITS - 1 - cap.leading_zeros()))
}

macro_rules! rings {
    ($($variant:ident = $n:literal),* $(,)?) => {
        /// A split virtqueue of one of the supported sizes.
        // As big as the largest queue, which is what the driver held before rings were sized
        // at run time; there is no heap to box the others into.
        #[allow(clippy::large_enum_variant)]
        pub(crate) enum Ring {
            $(
                #[doc = concat!("A ", stringify!($n), "-entry ring.")]
                $variant(VirtQueue<VirtioHal, $n>),
            )*
        }

        impl Ring {
            /// Sets up queue `idx` with `size` entries (one of the supported sizes).
            pub(crate) fn new(
                t: &mut DeviceTransport,
                idx: u16,
                size: usize,
                event_idx: bool,
            ) -> virtio_drivers::Result<Ring> {
                match size {
                    $( $n => VirtQueue::new(t, idx, false, event_idx).map(Ring::$variant), )*
                    _ => Err(virtio_drivers::Error::InvalidParam),
                }
            }

            /// Entries.
            pub(crate) fn size(&self) -> usize {
                match self {
                    $( Ring::$variant(_) => $n, )*
                }
            }
        }
    };
}

rings! {
    R4 = 4,
    R8 = 8,
    R16 = 16,
    R32 = 32,
    R64 = 64,
    R128 = 128,
    R256 = 256,
}

const _: () = assert!(RING_SIZE == 256 && MIN_RING == 4);

/// Runs `$body` with `$q` bound to the queue, whatever its size.
macro_rules! each {
    ($ring:expr, $q:ident => $body:expr) => {
        each!($ring, $q => $body, Ring::R256($q) => $body)
    };
    ($ring:expr, $q:ident => $body:expr, $full:pat => $full_body:expr) => {
        match $ring {
            Ring::R4($q) => $body,
            Ring::R8($q) => $body,
            Ring::R16($q) => $body,
            Ring::R32($q) => $body,
            Ring::R64($q) => $body,
            Ring::R128($q) => $body,
            $full => $full_body,
        }
    };
}

impl Ring {
    /// `VirtQueue::set_dev_notify`.
    pub(crate) fn set_dev_notify(&mut self, enable: bool) {
        each!(self, q => q.set_dev_notify(enable))
    }

    /// `VirtQueue::should_notify` (without the event index only: kept out of the doorbell
    /// decision's inlined code).
    #[inline(never)]
    pub(crate) fn should_notify(&self) -> bool {
        each!(self, q => q.should_notify())
    }

    /// [`pop_chain`] on this ring. The full-size ring (QEMU's default) is the inlined path;
    /// smaller rings take one out-of-line call, so that the common case's code stays as small
    /// as with one fixed size.
    #[inline]
    pub(crate) fn pop_chain(&mut self, head: u16, descriptors: u16) -> virtio_drivers::Result<u32> {
        match self {
            Ring::R256(q) => pop_chain(q, head, descriptors),
            other => other.pop_chain_any(head, descriptors),
        }
    }

    /// The smaller rings (the full-size one has its own call site, so that it stays the only
    /// caller of its instance and is inlined there).
    #[inline(never)]
    fn pop_chain_any(&mut self, head: u16, descriptors: u16) -> virtio_drivers::Result<u32> {
        each!(
            self,
            q => pop_chain(q, head, descriptors),
            Ring::R256(_) => Err(virtio_drivers::Error::InvalidParam)
        )
    }

    /// [`add_request`] on this ring, with chain arrays of `N` entries (the full-size ring
    /// inlined, as for [`Ring::pop_chain`]).
    #[inline]
    pub(crate) fn add_request<const N: usize>(
        &mut self,
        header: ChainBuf,
        data: &[SgEntry],
        data_writable: bool,
        range: Option<ChainBuf>,
        status: ChainBuf,
    ) -> virtio_drivers::Result<u16> {
        match self {
            Ring::R256(q) => add_request::<_, N>(q, header, data, data_writable, range, status),
            other => other.add_request_any::<N>(header, data, data_writable, range, status),
        }
    }

    /// The smaller rings (as for [`Ring::pop_chain`]).
    #[inline(never)]
    fn add_request_any<const N: usize>(
        &mut self,
        header: ChainBuf,
        data: &[SgEntry],
        data_writable: bool,
        range: Option<ChainBuf>,
        status: ChainBuf,
    ) -> virtio_drivers::Result<u16> {
        each!(
            self,
            q => add_request::<_, N>(q, header, data, data_writable, range, status),
            Ring::R256(_) => Err(virtio_drivers::Error::InvalidParam)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_device() {
        assert_eq!(ring_size(1024, 256), Some(256));
        assert_eq!(ring_size(256, 256), Some(256));
        assert_eq!(
            ring_size(100, 256),
            Some(64),
            "not a power of two: round down"
        );
        assert_eq!(ring_size(16, 256), Some(16));
        assert_eq!(ring_size(4, 256), Some(4));
        assert_eq!(ring_size(3, 256), None);
        assert_eq!(ring_size(2, 256), None);
        assert_eq!(ring_size(0, 256), None);
        assert_eq!(ring_size(u32::MAX, 64), Some(64));
    }
}
