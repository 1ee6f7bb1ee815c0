//! Recovery: a protocol violation or a timeout resets the device (it stops touching memory),
//! fails everything in flight with `Aborted` (dispatched again by the block layer without
//! counting a retry), and brings the device up again.

use core::sync::atomic::Ordering;

use blk::driver::CompletionBatch;
use blk::{BlkError, TimeoutAction};
use spin::MutexGuard;
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::reap::{BATCH, Batch};
use super::setup::bring_up;
use super::{Inner, Slot, VirtioBlk};
use crate::QUEUE_DEPTH;

impl VirtioBlk {
    /// A used entry broke the protocol: reset, then deliver `reaped` and everything that was in
    /// flight.
    #[cold]
    #[inline(never)]
    pub(super) fn reset_deliver(&self, mut inner: MutexGuard<'_, Inner>, reaped: &Batch) -> usize {
        let mut done = CompletionBatch::<{ QUEUE_DEPTH + BATCH }>::new();
        for c in reaped.as_slice() {
            done.push(c.tag, c.status);
        }
        self.reset_locked(&mut inner, &mut done);
        drop(inner);
        self.deliver(&done);
        done.len()
    }

    /// The device broke the protocol: reset it (it stops touching memory), fail everything in
    /// flight (appended to `done` while it has room), and bring it up again.
    pub(super) fn reset_locked<const N: usize>(
        &self,
        inner: &mut Inner,
        done: &mut CompletionBatch<N>,
    ) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        inner.transport.set_status(DeviceStatus::empty());
        let slots = &mut inner.slots;
        inner.heads.drain(|tag| {
            if let Some(s) = slots.get_mut(tag as usize) {
                *s = Slot::EMPTY;
            }
            done.push(tag, Err(BlkError::Aborted));
        });
        let ring = self.info.ring_size as usize;
        match bring_up(&mut inner.transport, self.mode, ring) {
            // The same features and ring size: the limits and tags given to the block layer
            // still hold.
            Ok((features, vq, used)) if features == self.info.features && vq.size() == ring => {
                inner.vq = vq;
                inner.used = used;
                inner.added = 0;
                inner.taken = 0;
                inner.notified = 0;
                if let Some(&(f, mapper, entry)) = self.msix.get() {
                    crate::pci::set_queue_msix_vector(f, mapper, entry);
                }
                inner.transport.finish_init();
            }
            _ => {
                inner.dead = true;
                inner.transport.set_status(DeviceStatus::FAILED);
            }
        }
    }

    /// A request passed its deadline. virtio has no per-request abort: the device is reset
    /// (it stops using every chain), everything else in flight fails with `Aborted`, and the late request is retried by the block layer.
    pub(super) fn abort_by_reset(&self, tag: u16) -> TimeoutAction {
        let a = self.abort_by_reset_inner(tag);
        // An interrupt may have handed its reap over while this held the lock.
        self.reap_if_pending();
        a
    }

    fn abort_by_reset_inner(&self, tag: u16) -> TimeoutAction {
        let mut inner = self.inner.lock();
        let Some(slot_in_flight) = inner.slots.get(tag as usize).map(|s| s.readable != 0) else {
            return TimeoutAction::Fail;
        };
        if !slot_in_flight {
            // Not in the ring (refused or already reaped): nothing to abort.
            return TimeoutAction::Retry;
        }
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut done = CompletionBatch::<QUEUE_DEPTH>::new();
        self.reset_locked(&mut inner, &mut done);
        drop(inner);
        // The late request's own completion is dropped by the queue (it owns the tag now).
        self.deliver(&done);
        TimeoutAction::Retry
    }
}
