//! The submit path of a [`Queue`]: split, bounce, merge into requests, dispatch to the
//! driver, and the direct path for a bio that needs none of it.

use core::sync::atomic::Ordering;

use super::slot::{BUILD, COMPLETING, DISPATCHING, NO_BYTES, RqSlot};
use super::{Open, Queue};
use crate::bio::{Bio, BioFlags, BioList, BioVec, Op, bio_io_error};
use crate::bounce::BOUNCE_MAX_BYTES;
use crate::driver::QueueRqError;
use crate::error::{BlkError, status_from_code};
use crate::limits::{check_bio, split_point};
use crate::request::Attempts;
use crate::request::Request;
use crate::slab::Wait;
use crate::slot_state::{self, Dispatched};
use crate::split::bio_split_on;

impl<const D: usize> Queue<D> {
    /// Splits, bounces, merges and dispatches `bios` (in order) for CPU `cpu`: on its hardware
    /// context, split bios from its magazine.
    pub(super) fn make_requests(&'static self, mut bios: BioList, cpu: u32) {
        let h = self.hw_context_of(cpu);
        let mut open = Open::new();
        let l = &self.limits;
        while let Some(bio) = bios.pop_front() {
            self.stats.bios_submitted(1);
            if let Err(e) = check_bio(l, &bio) {
                self.stats.bio_errors(1);
                bio_io_error(bio, e);
                continue;
            }
            let mut work = BioList::new();
            work.push_back(bio);
            while let Some(mut b) = work.pop_front() {
                if l.needs_bounce(&b) {
                    let Some(bouncer) = self.bouncer else {
                        self.stats.bio_errors(1);
                        bio_io_error(b, BlkError::Unsupported);
                        continue;
                    };
                    let cap = BOUNCE_MAX_BYTES / l.logical_block_size * l.logical_block_size;
                    if b.size() > cap {
                        match self.split_front(&mut b, cap, &mut open, cpu) {
                            Ok(front) => {
                                self.stats.splits(1);
                                work.push_front(b);
                                work.push_front(front);
                            }
                            Err(e) => {
                                self.stats.bio_errors(1);
                                bio_io_error(b, e);
                            }
                        }
                        continue;
                    }
                    let bounced = match bouncer.bounce(b, l, Wait::Never) {
                        Err((BlkError::NoMemory, b)) if self.may_wait() => {
                            // As for a split (`split_front`): the open batch holds bounce
                            // clones and pages; it goes to the driver before we wait.
                            self.dispatch(&open);
                            open.clear();
                            bouncer.bounce(b, l, self.cfg.wait)
                        }
                        r => r,
                    };
                    match bounced {
                        Ok(c) => {
                            self.stats.bounces(1);
                            b = c;
                        }
                        Err((e, b)) => {
                            self.stats.bio_errors(1);
                            bio_io_error(b, e);
                            continue;
                        }
                    }
                }
                match split_point(l, &b, None) {
                    Err(e) => {
                        self.stats.bio_errors(1);
                        bio_io_error(b, e);
                    }
                    Ok(None) => self.add_bio(b, &mut open, h),
                    Ok(Some(n)) => match self.split_front(&mut b, n, &mut open, cpu) {
                        Ok(front) => {
                            self.stats.splits(1);
                            work.push_front(b);
                            self.add_bio(front, &mut open, h);
                        }
                        Err(e) => {
                            self.stats.bio_errors(1);
                            bio_io_error(b, e);
                        }
                    },
                }
            }
        }
        self.dispatch(&open);
        self.kick();
    }

    /// Splits the first `bytes` off `b` with a bio of the split set, never waiting for one
    /// while the open batch holds bios: the split is tried without waiting first, and when the
    /// set is empty the open batch (requests built from earlier splits of this submission,
    /// whose bios only this call would dispatch) goes to the driver before the may-wait
    /// allocation. The wait is then only for bios in flight, which complete and come back.
    /// This is what Linux's bio-set rescuer threads are for (docs/blk.md, "Forward progress").
    fn split_front(
        &'static self,
        b: &mut Bio,
        bytes: u32,
        open: &mut Open,
        cpu: u32,
    ) -> Result<Bio, BlkError> {
        match bio_split_on(cpu, b, bytes, self.split_set, Wait::Never) {
            Err(BlkError::NoMemory) if self.may_wait() => {
                self.dispatch(open);
                open.clear();
                bio_split_on(cpu, b, bytes, self.split_set, self.cfg.wait)
            }
            r => r,
        }
    }

    /// Whether the queue's allocations may wait (`QueueConfig::wait` is not `Never`).
    fn may_wait(&self) -> bool {
        !matches!(self.cfg.wait, Wait::Never)
    }

    pub(super) fn try_merge(&self, rq: &mut Request, bio: &Bio, segs: u32) -> Option<bool> {
        let l = &self.limits;
        let mergeable = |f: BioFlags| !f.intersects(BioFlags::NOMERGE | BioFlags::PREFLUSH);
        if rq.pt.is_some()
            || rq.op != bio.op()
            || !bio.op().has_data()
            || rq.flags != bio.flags()
            || !mergeable(bio.flags())
            || rq.bytes as u64 + bio.size() as u64 > l.max_bytes() as u64
            || rq.nr_segs + segs > l.max_segments as u32
        {
            return None;
        }
        let (start, end) = (
            rq.sector.min(bio.sector()),
            rq.end_sector().max(bio.end_sector()),
        );
        if l.chunk_sectors != 0
            && start / l.chunk_sectors as u64 != (end - 1) / l.chunk_sectors as u64
        {
            return None;
        }
        let first = bio.segments().next()?;
        let last = bio.segments().last()?;
        if rq.end_sector() == bio.sector() && !l.virt_gap(&rq.last_seg, &first) {
            return Some(true);
        }
        if bio.end_sector() == rq.sector && !l.virt_gap(&last, &rq.first_seg) {
            return Some(false);
        }
        None
    }

    /// Merges `bio` into a request of the open batch, or starts a request for it with a tag of
    /// hardware context `h`.
    pub(super) fn add_bio(&'static self, bio: Bio, open: &mut Open, h: usize) {
        let segs = self.limits.bio_segments(&bio);
        for &t in open.iter().rev() {
            let Some(slot) = self.slot(t) else { continue };
            let mut rq = slot.rq.lock();
            match self.try_merge(&mut rq, &bio, segs) {
                Some(true) => {
                    rq.bytes += bio.size();
                    rq.nr_segs += segs;
                    if let Some(v) = bio.segments().last() {
                        rq.last_seg = v;
                    }
                    rq.bios.push_back(bio);
                    self.stats.merges_back(1);
                    return;
                }
                Some(false) => {
                    rq.bytes += bio.size();
                    rq.nr_segs += segs;
                    rq.sector = bio.sector();
                    if let Some(v) = bio.segments().next() {
                        rq.first_seg = v;
                    }
                    rq.bios.push_front(bio);
                    self.stats.merges_front(1);
                    return;
                }
                None => {}
            }
        }
        if open.is_full() {
            self.dispatch(open);
            open.clear();
        }
        let tag = match self.alloc_tag(h) {
            Some(t) => Some(t),
            None => {
                // Let the open batch go first: its completions free tags.
                self.dispatch(open);
                open.clear();
                self.get_tag(h)
            }
        };
        let Some(tag) = tag else {
            self.stats.bio_errors(1);
            bio_io_error(bio, BlkError::Busy);
            return;
        };
        let Some(slot) = self.slot(tag) else { return };
        slot.state.store(BUILD, Ordering::Relaxed);
        {
            let mut rq = slot.rq.lock();
            rq.tag = tag;
            rq.op = bio.op();
            rq.flags = bio.flags();
            rq.sector = bio.sector();
            rq.bytes = bio.size();
            rq.nr_segs = segs;
            rq.attempts = Attempts::NONE;
            rq.pt = None;
            rq.first_seg = bio.segments().next().unwrap_or(BioVec::ZERO);
            rq.last_seg = bio.segments().last().unwrap_or(BioVec::ZERO);
            rq.bios.push_back(bio);
        }
        let _ = open.push(tag);
    }

    /// Hands requests in state BUILD or REQUEUE (already moved to BUILD) to the driver. A
    /// batch of one submission is all on one hardware context; a requeue batch may mix them:
    /// `last` and the commit then close each run of one context.
    pub(super) fn dispatch(&self, tags: &[u16]) {
        if tags.is_empty() {
            return;
        }
        let now = (self.cfg.clock)();
        let n = tags.len();
        for (i, &t) in tags.iter().enumerate() {
            let Some(slot) = self.slot(t) else { continue };
            let h = slot.hctx.load(Ordering::Relaxed);
            let last = match tags.get(i + 1).and_then(|&u| self.slot(u)) {
                Some(next) => next.hctx.load(Ordering::Relaxed) != h,
                None => true,
            };
            slot.early_bytes.store(NO_BYTES, Ordering::Relaxed);
            slot.deadline
                .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
            slot.state.store(DISPATCHING, Ordering::Release);
            let hc = self.hctx(h as usize);
            if hc.shared.load(Ordering::Relaxed) {
                let res = {
                    let _g = hc.lock.lock();
                    let mut rq = slot.rq.lock();
                    rq.bios.normalize();
                    let res = self.hw.queue_rq(&rq, last || i + 1 == n);
                    drop(rq);
                    if last {
                        self.hw.commit_hctx(h as usize);
                    }
                    res
                };
                self.dispatched(slot, t, res);
            } else {
                // One CPU on this context: no lock, and the request is in flight before the
                // doorbell, so its completion finds it INFLIGHT (not DISPATCHING, which would
                // send it through the early-completion path).
                let res = {
                    let mut rq = slot.rq.lock();
                    rq.bios.normalize();
                    self.hw.queue_rq(&rq, last || i + 1 == n)
                };
                self.dispatched(slot, t, res);
                if last {
                    self.hw.commit_hctx(h as usize);
                }
            }
        }
    }

    /// What follows the driver's answer to `queue_rq` for request `t`.
    #[inline]
    pub(super) fn dispatched(&self, slot: &RqSlot, t: u16, res: Result<(), QueueRqError>) {
        self.stats.requests_dispatched(1);
        {
            {
                match res {
                    Ok(()) => {
                        let early = (&slot.early_status, &slot.early_bytes);
                        if let Dispatched::FinishEarly(st, b) =
                            slot_state::dispatched(&slot.state, early)
                        {
                            // Completed during queue_rq (state EARLY): finish it here.
                            let st = status_from_code(st);
                            self.finish(t, st, (b != NO_BYTES).then_some(b), true);
                        }
                    }
                    Err(QueueRqError::Busy) => {
                        // A completion cannot have arrived for a request the driver refused.
                        self.stats.requeues(1);
                        self.mark_requeue(slot, t);
                    }
                    Err(QueueRqError::Fatal(e)) => {
                        slot.state.store(COMPLETING, Ordering::Release);
                        self.finish(t, Err(e), Some(0), false);
                    }
                }
            }
        }
    }

    /// Segment count of `bio` if it can become a request of its own as it is: a flush, or a
    /// read/write of at most `DIRECT_SEGS` segments, each within the DMA limit and alignment,
    /// the segment size and boundary, without virt-boundary gaps, within max sectors,
    /// max segments and one chunk. Sector, size and range were checked by `submit_bio`.
    #[inline]
    pub(super) fn direct_segments(&self, bio: &Bio) -> Option<u32> {
        const DIRECT_SEGS: u32 = 4;
        let l = &self.limits;
        match bio.op() {
            Op::Flush => return Some(0),
            Op::Read | Op::Write => {}
            Op::Discard | Op::WriteZeroes => return None,
        }
        let size = bio.size();
        if size == 0 || size > l.max_bytes() {
            return None;
        }
        if l.chunk_sectors != 0 {
            let c = l.chunk_sectors as u64;
            if bio.sector() / c != (bio.end_sector() - 1) / c {
                return None;
            }
        }
        let align = l.dma_alignment as u64 - 1;
        let mut n = 0u32;
        let mut prev: Option<BioVec> = None;
        for v in bio.segments() {
            n += 1;
            if n > DIRECT_SEGS
                || (v.addr().0 | v.len() as u64) & align != 0
                || v.end() - 1 > l.dma_limit
                || v.len() > l.max_segment_size
                || v.len() as u64 > l.bytes_to_boundary(v.addr().0)
                || prev.is_some_and(|p| l.virt_gap(&p, &v))
            {
                return None;
            }
            prev = Some(v);
        }
        (n <= l.max_segments as u32).then_some(n)
    }

    /// The direct path for a bio submitted without a plug that fits the limits as it is (in
    /// `segs` segments, [`Queue::direct_segments`]): if a tag is free now, it becomes a request
    /// and goes to the driver at once. Otherwise the bio is handed back for the general path.
    /// `ONE`: the queue has one context with one CPU
    /// on it (`h` is 0, whose tags start at 0, and no lock is needed).
    #[inline(always)]
    pub(super) fn submit_direct<const ONE: bool>(
        &'static self,
        bio: Bio,
        segs: u32,
        h: usize,
    ) -> Result<(), Bio> {
        let tag = if ONE {
            self.hctxs[0].tags.alloc()
        } else {
            self.alloc_tag(h)
        };
        let Some(tag) = tag else {
            return Err(bio);
        };
        let Some(slot) = self.slot(tag) else {
            return Err(bio);
        };
        self.stats.bios_submitted(1);
        let now = (self.cfg.clock)();
        slot.early_bytes.store(NO_BYTES, Ordering::Relaxed);
        slot.deadline
            .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
        if !ONE && self.hctx(h).shared.load(Ordering::Relaxed) {
            // A shared context locks out of line, around `queue_rq` and the commit.
            let res = self.issue_direct_shared(slot, tag, bio, segs, h);
            self.dispatched(slot, tag, res);
        } else {
            // A context of one CPU takes no lock, and the request is in flight before the
            // doorbell (its completion then finds it INFLIGHT, not DISPATCHING).
            let res = self.issue_direct(slot, tag, bio, segs);
            self.dispatched(slot, tag, res);
            self.hw.commit_hctx(h);
        }
        self.kick();
        Ok(())
    }

    /// Builds the one-bio request of the direct path in `slot` and hands it to the driver
    /// (the caller commits).
    #[inline(always)]
    fn issue_direct(
        &self,
        slot: &RqSlot,
        tag: u16,
        bio: Bio,
        segs: u32,
    ) -> Result<(), QueueRqError> {
        let mut rq = slot.rq.lock();
        rq.tag = tag;
        rq.op = bio.op();
        rq.flags = bio.flags();
        rq.sector = bio.sector();
        rq.bytes = bio.size();
        rq.nr_segs = segs;
        rq.attempts = Attempts::NONE;
        rq.pt = None;
        // One bio: merges never look at this request, so its first and last segments
        // are not needed.
        rq.bios.push_front(bio);
        slot.state.store(DISPATCHING, Ordering::Release);
        self.hw.queue_rq(&rq, true)
    }

    /// [`Queue::issue_direct`] and the commit under the lock of a context several CPUs share.
    #[cold]
    #[inline(never)]
    fn issue_direct_shared(
        &self,
        slot: &RqSlot,
        tag: u16,
        bio: Bio,
        segs: u32,
        h: usize,
    ) -> Result<(), QueueRqError> {
        let _g = self.hctx(h).lock.lock();
        let res = self.issue_direct(slot, tag, bio, segs);
        self.hw.commit_hctx(h);
        res
    }
}
