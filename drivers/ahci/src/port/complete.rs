//! Completion: the interrupt handler and polling acknowledge PxIS, reap PxSACT/PxCI into a
//! [`DoneList`] under the lock, and deliver it by tag after the lock is dropped. A reap the
//! handler hands to a lock holder on another CPU goes back to the interrupt's CPU when an
//! [`Owner`](super::Owner) is set, so completions run there.

use core::sync::atomic::{Ordering, fence};

use blk::BlkError;
use blk::driver::TagMaskBatch;
use spin::MutexGuard;

use super::{Ahci, Inner, device_error};
use crate::regs::{PxIs, Serr, Tfd, hba, port as px};

/// Completions collected under the lock, delivered after it: one bit per tag (a tag is in at
/// most one of the status masks, since the tracker lets every tag leave once). Error kind
/// [`IO`] fails with `BlkError::Io`, [`DEAD`] with `DeviceError(DEAD)` (the port is dead).
/// Writes failed as write-protected go through [`Ahci::deliver_read_only`] instead (recovery
/// only), so the batch of every completion stays this small.
pub(super) type DoneList = TagMaskBatch<2>;

/// Error kind of a [`DoneList`]: the command failed (`BlkError::Io`).
pub(super) const IO: usize = 0;
/// Error kind of a [`DoneList`]: the port is dead (`DeviceError(device_error::DEAD)`).
pub(super) const DEAD: usize = 1;

/// An empty [`DoneList`].
pub(super) const NO_DONE: DoneList =
    TagMaskBatch::new([BlkError::Io, BlkError::DeviceError(device_error::DEAD)]);

impl Ahci {
    /// Reaps finished commands; an error stops the port for recovery.
    fn reap_locked(&self, inner: &mut Inner, done: &mut DoneList) {
        self.reap_pending.store(false, Ordering::Release);
        let is_bits = PxIs::from_bits_retain(self.pending_is.swap(0, Ordering::AcqRel));
        let t = self.tfd();
        let error =
            is_bits.intersects(PxIs::ERRORS) || (t.contains(Tfd::ERR) && !t.contains(Tfd::BSY));
        // Only the registers of commands in the port: with none of a kind, reaping that kind
        // finds nothing.
        let mut ok = if inner.tracker.ncq_active() != 0 {
            inner.tracker.reap_ncq(self.pread(px::SACT))
        } else {
            0
        };
        if error {
            if !inner.tracker.stopped() {
                if is_bits.intersects(PxIs::INTERFACE_ERRORS) {
                    self.stats.interface_errors.fetch_add(1, Ordering::Relaxed);
                }
                if is_bits.contains(PxIs::TFES) || t.contains(Tfd::ERR) {
                    self.stats.task_file_errors.fetch_add(1, Ordering::Relaxed);
                }
                inner.err_is = is_bits;
                inner.err_tfd = t;
                inner.err_serr = Serr::from_bits_retain(self.pread(px::SERR));
                inner.tracker.stop();
            }
            self.recovery_pending.store(true, Ordering::Release);
        } else if inner.tracker.excl_active() != 0 {
            let t = inner.tracker.excl_active().trailing_zeros() as u8;
            let step = inner.tracker.step(t);
            if let Some((tag, finished)) = inner.tracker.reap_exclusive(self.pread(px::CI)) {
                if self.short_transfer(inner, tag, step) {
                    // The device says it finished but moved fewer bytes than asked: never a
                    // success. The request fails with `Io` (the block layer may retry it).
                    self.stats.short_transfers.fetch_add(1, Ordering::Relaxed);
                    inner.tracker.forget(tag);
                    done.fail(IO, 1 << tag);
                } else if finished {
                    ok |= 1 << tag;
                } else {
                    self.issue_exclusive(inner, tag);
                }
            }
        }
        done.ok(ok.into());
        done.mark_pt((ok & inner.pt).into());
        self.issue_ready(inner);
    }

    /// Drops the lock, delivers completions, and reaps again while the interrupt handler left
    /// work behind.
    pub(super) fn unlock_and_deliver<'a>(
        &'a self,
        mut guard: MutexGuard<'a, Inner>,
        mut done: DoneList,
    ) {
        loop {
            drop(guard);
            self.deliver(&done);
            // Orders the release above before the look at `reap_pending`; the handler fences
            // between its store and its look at the lock: one of the two always reaps, on
            // whichever CPUs they run.
            fence(Ordering::SeqCst);
            if !self.reap_pending.load(Ordering::Acquire) {
                return;
            }
            if self.kicked_owner() {
                return;
            }
            match self.inner.try_lock() {
                Some(g) => guard = g,
                None => return,
            }
            done = NO_DONE;
            self.reap_locked(&mut guard, &mut done);
        }
    }

    /// A reap was handed over to a CPU that does not own the port's interrupt: send it to
    /// the owner (its handler reaps; `reap_pending` stays set for it). `false` when this CPU
    /// reaps itself (no owner set, or this is the owner).
    #[cold]
    #[inline(never)]
    fn kicked_owner(&self) -> bool {
        match self.owner.get() {
            Some(o) if !(o.here)() => {
                self.stats.kicks.fetch_add(1, Ordering::Relaxed);
                (o.kick)();
                true
            }
            _ => false,
        }
    }

    /// Completes the writes a recovery failed as write-protected (`BlkError::ReadOnly`),
    /// with the lock not held.
    #[cold]
    pub(super) fn deliver_read_only(&self) {
        let mut m = self.ro_done.swap(0, Ordering::AcqRel);
        while m != 0 {
            let tag = m.trailing_zeros();
            m &= m - 1;
            self.queue.complete(tag as u16, Err(BlkError::ReadOnly));
            self.stats.completions.fetch_add(1, Ordering::Relaxed);
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn deliver(&self, done: &DoneList) {
        if done.is_empty() {
            return;
        }
        let d = self.queue.deliver(done);
        d.count(&self.stats.completions, &self.stats.errors);
    }

    /// The interrupt handler: acknowledge the port and the HBA, then reap (or leave it to
    /// whoever holds the lock).
    pub fn handle_irq(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let s = self.pread(px::IS);
        if s != 0 {
            self.pwrite(px::IS, s);
        }
        self.abar.write32(hba::IS, 1 << self.port);
        self.pending_is.fetch_or(s, Ordering::AcqRel);
        self.reap_pending.store(true, Ordering::Release);
        // See `unlock_and_deliver`: a holder on another CPU that fails to see this store
        // must still hold the lock when it is looked at below.
        fence(Ordering::SeqCst);
        if let Some(mut g) = self.inner.try_lock() {
            let mut done = NO_DONE;
            self.reap_locked(&mut g, &mut done);
            self.unlock_and_deliver(g, done);
        }
    }

    pub(super) fn poll_once(&self) -> usize {
        let Some(mut g) = self.inner.try_lock() else {
            return 0;
        };
        let s = self.pread(px::IS);
        if s != 0 {
            self.pwrite(px::IS, s);
        }
        self.pending_is.fetch_or(s, Ordering::AcqRel);
        let mut done = NO_DONE;
        self.reap_locked(&mut g, &mut done);
        let n = done.all().count_ones() as usize;
        self.unlock_and_deliver(g, done);
        n
    }
}
