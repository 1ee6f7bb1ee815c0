//! Completion: each vector's interrupt handler and `poll_hctx` reap one I/O queue pair's
//! completion queue (pair 0's also the admin one while an admin command is outstanding) by phase bit, check each entry's queue, head and
//! command id, and deliver after the locks are let go. A reaper that finds a lock taken hands
//! the reap to its holder, and INTx is masked until a reap completes: the handshake of
//! `blk::handover` (checked by loom there), which holds with the handler on one CPU and
//! process context on any number of others.

use core::sync::atomic::Ordering;

use blk::driver::{CompletionBatch, Delivered};
use blk::{BlkError, BlkStatus};

use crate::ctrl::{AdminQ, IoQ, MAX_IO_QUEUES, Nvme, Pair, QUEUE_DEPTH};
use crate::queue::INTERNAL_CID;
use crate::regs::IntVectors;
use crate::stats::DriverStats;

/// Completions delivered per pass of the interrupt path: a full batch leaves the reap pending
/// for another pass. The cold paths (bring-up, reset, waits for admin commands) collect into a
/// batch with room for every tag.
const BATCH: usize = 16;

/// What became of a staged write when its pre-flush completed.
enum Staged {
    /// On the submission queue (the doorbell is due).
    Submitted,
    /// Left in flight for a reset.
    InFlight,
    /// Complete the request with this status.
    Done(BlkStatus),
}

impl Nvme {
    /// The interrupt handler of vector 0: with INTx or a single MSI-X vector the only one.
    /// See [`Nvme::handle_vector`].
    pub fn handle_irq(&self) {
        self.reap_vector(0);
    }

    /// The interrupt handler of vector `v`: reaps I/O queue pair `v` (vector 0 also the admin
    /// queue) and completes by tag. Never waits. A vector past the pairs in use has nothing
    /// to reap.
    pub fn handle_vector(&self, v: usize) {
        if v >= self.nr_io {
            return;
        }
        self.reap_vector(v);
    }

    /// What a vector's handler does, for pair `v` (below the pairs in use).
    #[inline(always)]
    fn reap_vector(&self, v: usize) {
        let pair = &self.pairs[v];
        pair.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let hand = &pair.hand;
        hand.request();
        if self.reap_pending(pair, v == 0) || !self.cfg.intx {
            return;
        }
        // INTx (one pair, so `v` is 0). A lock holder (process context, on this CPU or
        // another) has the reap: mask the level interrupt until a reap completes. Mask, then
        // record it, which hands the reap over again: whoever takes it unmasks after its reap
        // (the holder that took the first hand-over may have finished before the mask). Then
        // try once more ourselves.
        self.regs.mask_vectors(IntVectors::V0);
        hand.masked();
        pair.stats.masks.fetch_add(1, Ordering::Relaxed);
        self.reap_pending(pair, v == 0);
    }

    /// Reaps `pair` (and, with `admin` (pair 0), the admin queue) while someone asked for it;
    /// `false` if a lock was taken (its holder reaps).
    /// A complete reap also lifts the handler's INTx mask, whoever does it: the handler, the
    /// lock holder's `after_unlock`, `poll` (passthrough waits, tag waits, timeouts). When
    /// only `after_unlock` unmasked, a `poll` that consumed the request first left INTx
    /// masked for good and every later completion went unsignalled (see `docs/nvme.md`).
    pub(crate) fn reap_pending(&self, pair: &Pair, admin_too: bool) -> bool {
        // Made once per call (not per pass): making a batch is a store to each of its slots.
        let mut done = CompletionBatch::<BATCH>::new();
        while pair.hand.take() {
            done.clear();
            let Some(mut io) = pair.hand.lock_or_hand_over(|| pair.io.try_lock()) else {
                return false;
            };
            let mut admin = None;
            let mut handed_over = false;
            loop {
                // Looked at on every pass: another CPU may submit an admin command while this
                // reaps (it raises `admin_outstanding` under the admin lock before its
                // doorbell), and with INTx its completion keeps the shared line high. The
                // admin queue signals vector 0: pair 0's reaper takes it.
                if admin_too
                    && admin.is_none()
                    && self.admin_outstanding.load(Ordering::Acquire) != 0
                {
                    admin = pair.hand.lock_or_hand_over(|| self.admin.try_lock());
                    // Not got: the admin lock's holder reaps both queues when it lets go.
                    handed_over = admin.is_none();
                }
                let mut n = self.reap_io(&mut io, &mut done, &pair.stats);
                if let Some(a) = admin.as_mut() {
                    n += self.reap_admin(a, &mut done, &pair.stats);
                }
                if done.is_full() {
                    pair.hand.request();
                    break;
                }
                // Each reap ran until its queue looked empty. With MSI-X an entry posted after
                // that look sends another message. With INTx, go round until a pass finds both
                // queues empty after their head doorbells: the controller only lowers the line
                // when a head doorbell finds its queue empty, and QEMU 7.2's PLIC only signals
                // a rising edge, so an entry posted after the last look but before the doorbell
                // would otherwise wait for the next interrupt.
                if n == 0 || !self.cfg.intx || handed_over {
                    break;
                }
            }
            drop(admin);
            drop(io);
            self.deliver(&done, &pair.stats);
            if handed_over {
                return false;
            }
        }
        // Both queues were found empty after their head doorbells with no lock taken: the
        // controller has lowered its INTx status, and unmasking raises the line again only
        // if something new was posted since (a fresh edge for the PLIC).
        if pair.hand.take_mask() {
            pair.stats.unmasks.fetch_add(1, Ordering::Relaxed);
            self.regs.unmask_vectors(IntVectors::V0);
        }
        true
    }

    /// After process context let go of pair `k`'s lock (0 for the admin lock): reap what an
    /// interrupt or another CPU handed over (which unmasks INTx if the handler masked it).
    /// Every path that takes a pair's `io` or `admin` ends with this; `submit` relies on the
    /// block layer's `commit`.
    #[inline]
    pub(crate) fn after_unlock(&self, k: usize) {
        // `k` is below the pairs in use (every caller's): the mask only spares a bounds check.
        self.after_unlock_pair(&self.pairs[k & (MAX_IO_QUEUES - 1)], k == 0);
    }

    /// [`Nvme::after_unlock`] for `pair` (`first`: pair 0, which also reaps the admin queue).
    #[inline(always)]
    pub(crate) fn after_unlock_pair(&self, pair: &Pair, first: bool) {
        if pair.hand.after_unlock() {
            self.reap_pending(pair, first);
        }
    }

    /// [`Nvme::after_unlock`] for every pair in use (after paths that held them all).
    pub(crate) fn after_unlock_all(&self) {
        for k in 0..self.nr_io {
            self.after_unlock(k);
        }
    }

    /// entry; starts the write after a finished pre-flush.
    pub(crate) fn reap_io<const N: usize>(
        &self,
        io: &mut IoQ,
        done: &mut CompletionBatch<N>,
        stats: &DriverStats,
    ) -> usize {
        let mut n = 0;
        let mut resubmit = false;
        while !done.is_full() {
            let Some(e) = io.cq.peek() else { break };
            io.cq.advance();
            n += 1;
            if e.sq_id != io.qid || !io.sq.set_head(e.sq_head) {
                stats.bad_sq.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(tag) = io.cids.complete(e.cid) else {
                stats.bad_cids.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let st = e.status.to_blk();
            if io.staged != 0 && self.is_staged(tag) {
                match self.start_staged(io, tag, st) {
                    Staged::Submitted => {
                        resubmit = true;
                        continue;
                    }
                    Staged::InFlight => continue,
                    Staged::Done(st) => {
                        let _ = done.push(tag, st);
                        continue;
                    }
                }
            }
            let _ = done.push(tag, st);
        }
        if n > 0 {
            stats.reaped.fetch_add(n as u64, Ordering::Relaxed);
            self.regs.ring(io.cq_db, io.cq.head());
        }
        if resubmit {
            self.ring_io(io, stats);
        }
        n
    }

    /// The pre-flush of tag `tag`'s staged write completed with `st`: submit the write.
    #[cold]
    #[inline(never)]
    fn start_staged(&self, io: &mut IoQ, tag: u16, st: BlkStatus) -> Staged {
        let Some(mut w) = self.staged.get(tag as usize).and_then(|s| s.lock().take()) else {
            return Staged::Done(st);
        };
        io.staged = io.staged.saturating_sub(1);
        if st.is_err() {
            return Staged::Done(st);
        }
        let Some(cid) = io.cids.issue(tag) else {
            // The write was not sent: never report it done (`Busy` sends the whole request,
            // pre-flush included, again).
            return Staged::Done(Err(BlkError::Busy));
        };
        w.set_cid(cid);
        if !io.live {
            // The queue is being deleted: the write stays in flight for the reset.
            return Staged::InFlight;
        }
        if io.sq.push(&w) {
            return Staged::Submitted;
        }
        io.cids.forget(tag);
        Staged::Done(Err(BlkError::Busy))
    }

    /// Consumes the admin completion queue: the driver's own command goes to `internal`,
    /// passthrough completions to `done`. Only entries that complete a command in flight
    /// count against `admin_outstanding`, and only the awaited id becomes `internal`: a made-up
    /// or repeated entry neither hides a later completion from the interrupt path nor
    /// overwrites the one the driver waits for.
    pub(crate) fn reap_admin<const N: usize>(
        &self,
        a: &mut AdminQ,
        done: &mut CompletionBatch<N>,
        stats: &DriverStats,
    ) -> usize {
        let mut n = 0;
        let mut matched = 0u32;
        while !done.is_full() {
            let Some(e) = a.cq.peek() else { break };
            a.cq.advance();
            n += 1;
            if e.sq_id != 0 || !a.sq.set_head(e.sq_head) {
                stats.bad_sq.fetch_add(1, Ordering::Relaxed);
            }
            if e.cid & INTERNAL_CID != 0 {
                if a.internal_cid == Some(e.cid) {
                    a.internal_cid = None;
                    a.internal = Some(e);
                    matched += 1;
                } else {
                    stats.bad_cids.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            match a.cids.complete(e.cid) {
                Ok(tag) => {
                    matched += 1;
                    let _ = done.push_pt(tag, e.status.to_blk(), e.result as u64);
                }
                Err(_) => {
                    stats.bad_cids.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if n > 0 {
            stats.reaped.fetch_add(n as u64, Ordering::Relaxed);
            self.regs.ring_cq(0, a.cq.head());
            let left = self.admin_outstanding.load(Ordering::Relaxed);
            self.admin_outstanding
                .store(left.saturating_sub(matched), Ordering::Release);
        }
        n
    }

    /// Hands the gathered completions to the block layer (after the locks are let go) and
    /// counts them. With one namespace queue a slot is its tag; with more, each completion
    /// goes to its slot's queue.
    pub(crate) fn deliver<const N: usize>(&self, done: &CompletionBatch<N>, stats: &DriverStats) {
        if done.is_empty() {
            return;
        }
        let d = if self.ns_count <= 1 {
            self.sinks[0].deliver(done)
        } else {
            self.deliver_routed(done)
        };
        d.count(&stats.completions, &stats.errors);
    }

    /// [`Nvme::deliver`] for several namespace queues: slot `q * QUEUE_DEPTH + t` completes
    /// tag `t` of queue `q` (as `Deliver` does: an error as having transferred nothing).
    #[inline(never)]
    fn deliver_routed<const N: usize>(&self, done: &CompletionBatch<N>) -> Delivered {
        let mut d = Delivered::default();
        for c in done.as_slice() {
            let q = c.tag as usize / QUEUE_DEPTH;
            let tag = (c.tag as usize % QUEUE_DEPTH) as u16;
            let Some(sink) = self.sinks.get(q).and_then(|s| s.get()) else {
                continue;
            };
            d.completed += 1;
            if c.status.is_err() {
                d.errors += 1;
            }
            if c.pt {
                sink.complete_pt(tag, c.status, c.result);
            } else {
                sink.complete(tag, c.status, c.status.is_err().then_some(0));
            }
        }
        d
    }

    /// Whether slot `slot` has a write waiting for its pre-flush.
    #[cold]
    #[inline(never)]
    fn is_staged(&self, slot: u16) -> bool {
        self.staged
            .get(slot as usize)
            .is_some_and(|s| s.lock().is_some())
    }

    /// Reaps every pair and the admin queue now (`poll`, timeouts, waits); returns the
    /// entries consumed (on this and, meanwhile, other CPUs).
    pub(crate) fn reap_all(&self) -> usize {
        (0..self.nr_io).map(|k| self.reap_pair(k)).sum()
    }

    /// Reaps pair `k` (pair 0: and the admin queue) now (`poll_hctx`, tag waits).
    pub(crate) fn reap_pair(&self, k: usize) -> usize {
        let Some(pair) = self.pairs[..self.nr_io].get(k) else {
            return 0;
        };
        pair.hand.request();
        let before = pair.stats.reaped.load(Ordering::Relaxed);
        self.reap_pending(pair, k == 0);
        pair.stats
            .reaped
            .load(Ordering::Relaxed)
            .wrapping_sub(before) as usize
    }
}

impl hal::IrqHandler for Nvme {
    fn handle(&self) {
        self.handle_irq();
    }
}
