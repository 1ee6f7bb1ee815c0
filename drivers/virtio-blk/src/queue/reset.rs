//! Recovery: a protocol violation or a timeout resets the device (it stops touching memory),
//! fails everything in flight on every queue with `Aborted` (dispatched again by the block
//! layer without counting a retry), and brings the device up again with all its queues.
//!
//! A reset takes `reset_lock`, then every queue's lock in order, then the transport. Process
//! context (a timeout, [`VirtioBlk::recover`]) waits for them; an interrupt handler or a poll
//! only tries (the CPU it interrupted may hold one), and when it cannot take them all it leaves
//! the reset owed (`reset_wanted`) to the next process-context caller.

use core::sync::atomic::Ordering;

use blk::driver::CompletionBatch;
use blk::{BlkError, TimeoutAction};
use spin::MutexGuard;
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::reap::BATCH;
use super::setup::{negotiate, queue_fits, setup_queue};
use super::{Inner, MAX_QUEUES, Slot, VirtioBlk};
use crate::QUEUE_DEPTH;

/// Every queue's lock, in queue order.
type Guards<'a> = [Option<MutexGuard<'a, Inner>>; MAX_QUEUES];

impl VirtioBlk {
    /// Resets the device (every queue), then delivers `reaped` and everything that was in
    /// flight. `wait`: process context, wait for the locks; otherwise only try them, and leave
    /// the reset owed if one is taken (`reaped` is delivered either way).
    #[cold]
    #[inline(never)]
    pub(super) fn reset_all_deliver<const R: usize>(
        &self,
        reaped: &CompletionBatch<R>,
        wait: bool,
    ) -> usize {
        let mut done = CompletionBatch::<{ QUEUE_DEPTH + BATCH }>::new();
        for c in reaped.as_slice() {
            done.push(c.tag, c.status);
        }
        self.reset_wanted.store(true, Ordering::Release);
        // Not all locks got (interrupt context): the reset stays owed (`reset_wanted`).
        let _ = self.lock_for_reset(wait, |guards| self.reset_locked(guards, &mut done));
        self.deliver(&done, &self.stats);
        // Locks let go: an interrupt may have handed a reap over meanwhile.
        for v in self.queues() {
            self.reap_if_pending(v);
        }
        done.len()
    }

    /// Takes `reset_lock` and every queue's lock (waiting if `wait`), runs `f` with the
    /// queues' guards, and lets go; `None` if a lock was taken and `wait` is false.
    fn lock_for_reset<T>(&self, wait: bool, f: impl FnOnce(&mut Guards<'_>) -> T) -> Option<T> {
        let _r = if wait {
            self.reset_lock.lock()
        } else {
            self.reset_lock.try_lock()?
        };
        let mut guards: Guards<'_> = [const { None }; MAX_QUEUES];
        for (g, v) in guards.iter_mut().zip(self.queues()) {
            *g = Some(if wait {
                v.inner.lock()
            } else {
                v.inner.try_lock()?
            });
        }
        Some(f(&mut guards))
    }

    /// With every queue locked: reset the device (it stops touching memory), fail everything
    /// in flight on every queue (appended to `done` while it has room), and bring it up again
    /// with the same features and queues, or mark it dead.
    fn reset_locked<const N: usize>(&self, guards: &mut Guards<'_>, done: &mut CompletionBatch<N>) {
        self.reset_wanted.store(false, Ordering::Relaxed);
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        let mut t = self.transport.lock();
        t.set_status(DeviceStatus::empty());
        for g in guards.iter_mut().flatten() {
            let inner = &mut **g;
            let slots = &mut inner.slots;
            inner.heads.drain(|tag| {
                if let Some(s) = slots.get_mut(tag as usize) {
                    *s = Slot::EMPTY;
                }
                done.push(tag, Err(BlkError::Aborted));
            });
        }
        let ring = self.info.ring_size as usize;
        let mq = self.info.features & crate::spec::feature::MQ != 0;
        let up = negotiate(&mut t, self.mode, mq).is_ok_and(|f| f == self.info.features)
            && guards.iter_mut().flatten().enumerate().all(|(q, inner)| {
                let q = q as u16;
                // The same features and ring size: the limits and tags given to the block
                // layer still hold.
                if !queue_fits(&mut t, q, ring) {
                    return false;
                }
                let Ok((vq, used)) = setup_queue(&mut t, q, ring, self.info.features, self.mode)
                else {
                    return false;
                };
                inner.vq = vq;
                inner.used = used;
                inner.added = 0;
                inner.taken = 0;
                inner.notified = 0;
                true
            });
        if up {
            drop(t);
            self.program_msix();
            self.transport.lock().finish_init();
        } else {
            self.dead.store(true, Ordering::Release);
            t.set_status(DeviceStatus::FAILED);
        }
    }

    /// A request passed its deadline. virtio has no per-request abort: the device is reset
    /// (it stops using every chain on every queue), everything else in flight fails with
    /// `Aborted`, and the late request is retried by the block layer.
    pub(super) fn abort_by_reset(&self, tag: u16, hctx: usize) -> TimeoutAction {
        let q = usize::from(self.vq(hctx).index);
        let mut done = CompletionBatch::<QUEUE_DEPTH>::new();
        let action = self.lock_for_reset(true, |guards| {
            let slot = guards[q].as_ref().and_then(|i| i.slots.get(tag as usize));
            let Some(in_flight) = slot.map(|s| s.readable != 0) else {
                return TimeoutAction::Fail;
            };
            if !in_flight {
                // Not in the ring (refused or already reaped): nothing to abort.
                return TimeoutAction::Retry;
            }
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            self.reset_locked(guards, &mut done);
            TimeoutAction::Retry
        });
        // The late request's own completion is dropped by the queue (it owns the tag now).
        self.deliver(&done, &self.stats);
        // Locks let go: an interrupt may have handed a reap over meanwhile.
        for v in self.queues() {
            self.reap_if_pending(v);
        }
        action.unwrap_or(TimeoutAction::Retry)
    }
}
