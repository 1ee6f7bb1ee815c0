//! Reaping: the interrupt handler and the poll path take used entries under the lock, check
//! each against the driver's own records (id in flight, length at least what the chain needed),
//! read the status byte, and deliver outside the lock.

use core::sync::atomic::{Ordering, fence};

use blk::BlkError;
use blk::driver::{CompletionBatch, Deliver};
use spin::MutexGuard;
use virtio_drivers::transport::Transport;

use super::{CMD_STATUS, CMD_STRIDE, DriverStats, Inner, Mode, Slot, VirtioBlk, Vq, device_error};
use crate::sg::NONE;
use crate::spec::status;

/// Completions reaped per pass under the lock (then delivered outside it; a full batch leaves
/// `reap_pending` set so the next pass picks up the rest). Small, so the array is cheap to set
/// up on every interrupt.
pub(super) const BATCH: usize = 8;

/// The completions of one reap pass.
pub(super) type Batch = CompletionBatch<BATCH>;

/// Why a reap pass stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The used ring is empty.
    Empty,
    /// The batch is full; more may be waiting.
    Full,
    /// A used entry broke the protocol: the device has to be reset.
    Violation,
}

impl VirtioBlk {
    /// The interrupt handler of a device with one interrupt for all its queues (INTx, a
    /// virtio-mmio line, one MSI-X vector): acknowledge, reap every queue, complete by tag.
    /// Never waits.
    pub fn handle_irq(&self) {
        self.handle_vq_irq(&self.vq0);
        if self.nr_queues > 1 {
            self.handle_other_queues();
        }
    }

    /// [`VirtioBlk::handle_irq`] for queues 1.. (several queues on one interrupt: only a
    /// device whose queues did not each get a vector).
    #[cold]
    #[inline(never)]
    fn handle_other_queues(&self) {
        for v in self.more.iter().flatten() {
            self.handle_vq_irq(v);
        }
    }

    /// The interrupt handler of queue `q` alone (its own MSI-X vector, delivered to the CPU
    /// that submits to it); returns the requests it completed. Never waits.
    pub fn handle_queue_irq(&self, q: usize) -> usize {
        match self.queue(q) {
            Some(v) => self.handle_vq_irq(v),
            None => 0,
        }
    }

    /// Acknowledge (not with MSI-X), reap queue `v`, complete by tag; the completions
    /// delivered here (not those handed over).
    ///
    /// With the queue's lock taken (process context, on this CPU or another), the reap is
    /// handed to the holder: `reap_pending` is set before each look at the lock, and every
    /// holder looks at it after letting go (`VirtioBlk::reap_if_pending`), with a full fence
    /// on both sides, so one of the two always reaps. A level-triggered line is masked
    /// meanwhile and the reap handed over once more after the mask: the holder that reaps it
    /// unmasks after the mask, whatever CPU it runs on.
    #[inline]
    fn handle_vq_irq(&self, v: &Vq) -> usize {
        v.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        v.reap_pending.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if let Some(inner) = v.inner.try_lock() {
            self.ack();
            let n = self.reap_deliver(v, inner);
            self.reap_if_pending(v);
            return n;
        }
        if let Some(l) = self.irq.get() {
            let _ = l.disable();
            v.reap_pending.store(true, Ordering::Release);
            fence(Ordering::SeqCst);
            // The holder may have let go (and reaped) before the mask: then nobody else
            // would unmask.
            self.reap_if_pending_fenced(v);
        }
        0
    }

    /// Acknowledges the interrupt at the device (reads the ISR), with a queue's lock held;
    /// nothing with MSI-X, where the vector says which queue.
    #[inline]
    fn ack(&self) {
        if self.msix.get().is_none() {
            self.transport.lock().ack_interrupt();
        }
    }

    /// Reaps queue `v` if an interrupt asked for it while its lock was taken. Called after
    /// letting go of the lock: the fence orders that release before the look at
    /// `reap_pending`.
    #[inline]
    pub(super) fn reap_if_pending(&self, v: &Vq) {
        fence(Ordering::SeqCst);
        if v.reap_pending.load(Ordering::Acquire) {
            self.reap_if_pending_fenced(v);
        }
    }

    /// `VirtioBlk::reap_if_pending` after the fence (out of line: the look at `reap_pending`
    /// is the common case, and finds nothing).
    #[inline(never)]
    fn reap_if_pending_fenced(&self, v: &Vq) {
        while v.reap_pending.load(Ordering::Acquire) {
            let Some(inner) = v.inner.try_lock() else {
                // The holder looks at `reap_pending` after it lets go.
                return;
            };
            if self.mode == Mode::Interrupt {
                self.ack();
            }
            self.reap_deliver(v, inner);
            if let Some(l) = self.irq.get()
                && self.mode == Mode::Interrupt
            {
                let _ = l.enable();
            }
        }
    }

    /// One reap pass of queue `v` with its lock held, then delivery outside it; returns the
    /// completions delivered. A full batch leaves `reap_pending` set: callers follow with
    /// `VirtioBlk::reap_if_pending`. A protocol violation resets the device (every queue).
    pub(super) fn reap_deliver(&self, v: &Vq, mut inner: MutexGuard<'_, Inner>) -> usize {
        let mut done = Batch::new();
        match self.reap_locked(v, &mut inner, &mut done) {
            Stop::Empty => {}
            Stop::Full => v.reap_pending.store(true, Ordering::Release),
            Stop::Violation => {
                drop(inner);
                return self.reset_all_deliver(&done, false);
            }
        }
        // Only the lock holder counts: a plain add.
        let c = v.completions.load(Ordering::Relaxed);
        v.completions
            .store(c + done.len() as u64, Ordering::Relaxed);
        drop(inner);
        self.deliver(&done, &v.stats);
        done.len()
    }

    /// Completes `done` to the attached queue, counting completions and errors in `stats`
    /// (called with the queue lock released).
    pub(super) fn deliver(&self, done: &impl Deliver, stats: &DriverStats) {
        let d = self.sink.deliver(done);
        d.count(&stats.completions, &stats.errors);
    }

    /// Takes used entries, checking each, until the ring is empty, `done` is full or an entry
    /// breaks the protocol; returns why it stopped.
    pub(super) fn reap_locked(&self, v: &Vq, inner: &mut Inner, done: &mut Batch) -> Stop {
        v.reap_pending.store(false, Ordering::Relaxed);
        let mut reaped = 0u64;
        let mut renotify = false;
        let used = inner.used;
        // Entries published and not taken yet, as of the last read of the used index.
        let mut pending = 0u16;
        let stop = loop {
            if done.is_full() {
                break Stop::Full;
            }
            if pending == 0 {
                pending = used.idx().wrapping_sub(inner.taken);
                if pending == 0 {
                    break Stop::Empty;
                }
                // More entries published than chains in flight: the index jumped ahead (stale
                // entries would complete chains the device has not finished) or went back.
                if pending > inner.heads.in_flight() {
                    // Some entry names no chain in flight: a bad id, found early.
                    v.stats.bad_used_ids.fetch_add(1, Ordering::Relaxed);
                    v.stats.bad_used_idx.fetch_add(1, Ordering::Relaxed);
                    break Stop::Violation;
                }
                // The entries are read after the index that published them.
                fence(Ordering::Acquire);
            }
            pending -= 1;
            // All 32 bits: an id past the ring never lands on a chain in flight.
            let id = u16::try_from(used.id(inner.taken)).unwrap_or(NONE);
            #[cfg(feature = "fault-injection")]
            let id = self.corrupted_used_id(id);
            let Ok(tag) = inner.heads.check(id) else {
                v.stats.bad_used_ids.fetch_add(1, Ordering::Relaxed);
                break Stop::Violation;
            };
            let Some(&slot) = inner.slots.get(tag as usize) else {
                break Stop::Violation;
            };
            let Ok(len) = inner.vq.pop_chain(id, slot.readable + slot.writable) else {
                break Stop::Violation;
            };
            inner.heads.remove(id);
            inner.taken = inner.taken.wrapping_add(1);
            reaped += 1;
            let st = if len < slot.min_used_len {
                v.stats.short_lengths.fetch_add(1, Ordering::Relaxed);
                Err(BlkError::DeviceError(device_error::SHORT_LENGTH))
            } else {
                match self.cmd.read8(tag as usize * CMD_STRIDE + CMD_STATUS) {
                    status::OK => Ok(()),
                    status::IOERR => Err(BlkError::Io),
                    status::UNSUPP => Err(BlkError::Unsupported),
                    other => Err(BlkError::DeviceError(other as u16)),
                }
            };
            if st.is_ok() && (slot.fua || slot.preflush_segs > 0) {
                // The next stage of the same request: the write after its pre-flush, or the
                // flush that makes a FUA write stable.
                if self.next_stage_locked(v, inner, tag, &slot) {
                    renotify = true;
                    continue;
                }
                // No room: let the block layer retry the whole request (`Busy` is the one
                // error it retries for a flushing request; an error of a flush step above
                // goes to the submitter as it is).
                inner.slots[tag as usize] = Slot::EMPTY;
                done.push(tag, Err(BlkError::Busy));
                continue;
            }
            inner.slots[tag as usize] = Slot::EMPTY;
            done.push(tag, st);
        };
        v.stats.reaped.fetch_add(reaped, Ordering::Relaxed);
        if renotify {
            self.notify_locked(v, inner);
        }
        stop
    }
}
