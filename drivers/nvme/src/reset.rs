//! Recovery: a request past its deadline is aborted, and the controller reset when the abort
//! does not take; a fatal status (`CSTS.CFS`) resets from deferred work. A reset fails what
//! was in flight with a retryable error and sets the queues up again.

use core::sync::atomic::Ordering;

use blk::{BlkError, HwQueue, TimeoutAction};

use crate::cmd::Command;
use crate::ctrl::{AdminQ, ColdBatch, Locked, Mode, Nvme, wait_until};
use crate::queue::Cqe;
use crate::regs::{Csts, IntVectors};
use crate::spec::AbortResult;

/// `BlkError::DeviceError` codes this driver reports besides the controller's status.
pub mod device_error {
    /// The controller is unusable (a reset failed).
    pub const DEAD: u16 = 0x1002;
}

impl Nvme {
    /// Runs one internal admin command from process context (locks taken here).
    fn admin_command(&self, c: Command) -> Result<Cqe, BlkError> {
        let mut done = ColdBatch::new();
        let r = {
            let mut a = self.admin.lock();
            self.admin_sync(&mut a, c, &mut done)
        };
        self.deliver(&done, &self.stats);
        self.after_unlock(0);
        r
    }

    /// Resets the controller: every command in flight on every I/O queue pair and every
    /// namespace queue (except slot `skip`'s) completes once with `Aborted` (the block layer
    /// dispatches it again without counting a retry), and the same queue pairs are set up
    /// again. Process context.
    pub fn reset_controller(&self, skip: Option<u16>) -> bool {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        let mut done = ColdBatch::new();
        let ok = {
            let mut ios = self.lock_pairs();
            let mut a = self.admin.lock();
            // What already finished completes normally.
            for io in ios.iter_mut() {
                self.reap_io(io, &mut done, &self.stats);
            }
            self.reap_admin(&mut a, &mut done, &self.stats);
            self.delete_io_queues(&mut a, &mut ios, &mut done);
            let _ = self.disable();
            // What was still in flight fails after it (dropped if `done` is full: it has room
            // for every slot, and a slot is in flight on one pair at most).
            let reset = Err(BlkError::Aborted);
            for io in ios.iter_mut() {
                io.staged = 0;
                io.cids.drain(|t| {
                    if let Some(s) = self.staged.get(t as usize) {
                        *s.lock() = None;
                    }
                    if Some(t) != skip {
                        let _ = done.push(t, reset);
                    }
                });
            }
            a.cids.drain(|t| {
                if Some(t) != skip {
                    let _ = done.push_pt(t, reset, 0);
                }
            });
            // Every pair the block layer maps CPUs onto must come back: fewer granted after
            // the reset than before is a failed reset.
            let ok = self.enable(&mut a).is_ok()
                && self
                    .setup_io(&mut a, &mut ios)
                    .is_ok_and(|(_, used)| used == self.nr_io);
            // A reset that works brings a dead controller back (`force_reset`).
            self.dead.store(!ok, Ordering::Relaxed);
            ok
        };
        if self.cfg.intx {
            // The disable cleared the controller's mask; keep ours in step.
            self.pairs[0].hand.clear_mask();
            self.regs.unmask_vectors(IntVectors::V0);
        }
        self.deliver(&done, &self.stats);
        self.after_unlock_all();
        ok
    }

    /// Deletes the I/O queue pairs before a disable, as long as the controller still answers:
    /// the controller stops fetching commands and finishes (or cancels) the ones it started,
    /// so none of them is still being processed when `CC.EN` clears. What it completes while
    /// deleting is reaped (the completion queues still exist then). QEMU 7.2 fetches and
    /// starts commands it had not fetched yet while `CC.EN = 0` drains the namespace, then
    /// frees the queue under them and crashes when they finish (see `docs/nvme.md`).
    fn delete_io_queues(&self, a: &mut AdminQ, ios: &mut Locked<'_>, done: &mut ColdBatch) {
        if self.is_dead() || !self.regs.csts().is_operational() {
            return;
        }
        // Every submission queue first (a completion queue cannot go while a submission queue
        // posts to it), then the completion queues.
        for io in ios.iter_mut().filter(|io| io.live) {
            if self
                .admin_sync(a, Command::delete_sq(io.qid), done)
                .is_err()
            {
                return;
            }
            io.live = false;
            self.reap_io(io, done, &self.stats);
        }
        // A completion queue that will not go is dropped by the disable that follows (every
        // submission queue is gone already, so nothing posts to it): nothing to report.
        for io in ios.iter_mut() {
            let _ = self.admin_sync(a, Command::delete_cq(io.qid), done);
        }
    }

    /// A fatal status (or a reset asked for): reset from deferred work.
    #[cold]
    #[inline(never)]
    fn fatal_reset(&self) {
        self.stats.fatal.fetch_add(1, Ordering::Relaxed);
        self.reset_controller(None);
    }

    /// Test hook: reset the controller now, as a timeout or a fatal status would.
    pub fn force_reset(&self) -> bool {
        self.reset_controller(None)
    }

    /// Process-context work: reset after a fatal status; reap in polling mode.
    #[inline]
    pub fn deferred(&self) {
        if self.reset_wanted.swap(false, Ordering::AcqRel)
            || (!self.is_dead() && self.regs.csts().contains(Csts::CFS))
        {
            self.fatal_reset();
        }
        if self.cfg.mode == Mode::Polling {
            HwQueue::poll(self);
        }
    }

    /// Slot `tag` passed its deadline: abort it; if the controller does not confirm the abort
    /// and complete the command soon, reset it.
    pub(crate) fn abort_or_reset(&self, tag: u16) -> TimeoutAction {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        self.reap_all();
        let (sqid, cid) = match (self.io_in_flight(tag), self.admin_in_flight(tag)) {
            (Some(c), _) => c,
            (None, Some(c)) => (0, c),
            (None, None) => return TimeoutAction::Retry,
        };
        self.stats.aborts.fetch_add(1, Ordering::Relaxed);
        if let Ok(e) = self.admin_command(Command::abort(sqid, cid))
            && !AbortResult::from_bits_retain(e.result).contains(AbortResult::NOT_ABORTED)
        {
            let gone = wait_until(self.cfg.clock, 100, || {
                self.reap_all();
                self.io_in_flight(tag).is_none() && self.admin_in_flight(tag).is_none()
            });
            if gone {
                return TimeoutAction::Retry;
            }
        }
        if self.reset_controller(Some(tag)) {
            TimeoutAction::Retry
        } else {
            TimeoutAction::Fail
        }
    }

    /// The queue id and command id of slot `slot`'s I/O command, on whichever pair it is.
    fn io_in_flight(&self, slot: u16) -> Option<(u16, u16)> {
        let mut found = None;
        for k in 0..self.nr_io {
            let io = self.pairs[k].io.lock();
            let c = io.cids.in_flight(slot).map(|c| (io.qid, c));
            drop(io);
            self.after_unlock(k);
            found = found.or(c);
        }
        found
    }

    /// The command id of slot `slot`'s passthrough command on the admin queue.
    fn admin_in_flight(&self, slot: u16) -> Option<u16> {
        let c = self.admin.lock().cids.in_flight(slot);
        self.after_unlock(0);
        c
    }
}
