//! The request path: `queue_rq` builds the command for its namespace (data pointer from the
//! scatter-gather list, PRPs or SGLs in the slot's list pages), takes a command id on the I/O
//! queue pair of the request's hardware context (`Request::hctx`: one pair per CPU when the
//! controller granted them), writes the entry at that pair's submission queue tail and rings
//! its doorbell for the last request of a batch; `commit_hctx` rings for what is still unrung
//! on that pair. Namespace queue `q`'s tag `t` is slot
//! `q * QUEUE_DEPTH + t`: `HwQueue for Nvme` is queue 0, [`NsQueue`] any of them.

use core::sync::atomic::{Ordering, fence};

use blk::driver::{block_range, with_sg};
use blk::{BioFlags, BlkError, HwQueue, Op, QueueRqError, Request, SgEntry, TimeoutAction};

use crate::cmd::{Command, DataPtr};
use crate::ctrl::{IoQ, LIST_PAGES, MAX_IO_QUEUES, MAX_SEGMENTS, Nvme, QUEUE_DEPTH};
use crate::device_error;
use crate::prp::{ListPages, PAGE, build_prp, build_sgl};
use crate::spec::nvm;
use crate::stats::DriverStats;

/// Scatter-gather entries of the list on the stack for requests of a few segments (clearing
/// a `MAX_SEGMENTS` list for each of them was ~300 instructions); bigger ones map out of line.
const SMALL_SG: usize = 4;

/// Blocks per read, write or write zeroes command (the count field is 16 bits, zero-based).
const MAX_BLOCKS: u32 = 65536;

impl Nvme {
    /// Rings an I/O submission queue doorbell for entries pushed since the last ring (counted
    /// in `stats`: its pair's).
    pub(crate) fn ring_io(&self, io: &mut IoQ, stats: &DriverStats) {
        if io.rung != io.sq.tail() {
            fence(Ordering::SeqCst);
            self.regs.ring(io.sq_db, io.sq.tail());
            io.rung = io.sq.tail();
            stats.doorbells.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The PRP/SGL list pages of slot `slot`.
    pub(crate) fn list_pages(&self, slot: u16) -> ListPages<'_> {
        ListPages {
            buf: &self.lists,
            first: slot as usize * LIST_PAGES * PAGE as usize,
            pages: LIST_PAGES,
        }
    }

    /// PRPs or SGLs for `sg` in slot `slot`'s list pages (counted in `stats`).
    pub(crate) fn data_ptr(
        &self,
        slot: u16,
        sg: &[SgEntry],
        stats: &DriverStats,
    ) -> Result<DataPtr, QueueRqError> {
        let lp = self.list_pages(slot);
        let r = if self.info.sgl {
            build_sgl(sg, &lp)
        } else {
            build_prp(sg, &lp)
        };
        let (d, pages) = r.map_err(|_| QueueRqError::Fatal(BlkError::InvalidArgument))?;
        if self.info.sgl {
            stats.sgls.fetch_add(1, Ordering::Relaxed);
        } else if pages > 0 {
            stats.prp_lists.fetch_add(1, Ordering::Relaxed);
        }
        if pages > 1 {
            stats.chained_lists.fetch_add(1, Ordering::Relaxed);
        }
        Ok(d)
    }

    /// The command of a read, write, flush, write zeroes or discard for namespace queue `q`
    /// in slot `slot` (list pages counted in `stats`); `true` when a PREFLUSH write needs a
    /// flush first.
    fn build<Q: QueueIndex>(
        &self,
        q: Q,
        slot: u16,
        rq: &Request,
        stats: &DriverStats,
    ) -> Result<(Command, bool), QueueRqError> {
        let ns = &self.ns[q.get()];
        let shift = ns.block_size.trailing_zeros();
        let nsid = ns.nsid;
        let c = match rq.op() {
            Op::Read | Op::Write => {
                let r = block_range(rq, shift, MAX_BLOCKS)?;
                let write = rq.op() == Op::Write;
                let opc = if write { nvm::WRITE } else { nvm::READ };
                let fua = write && rq.flags().contains(BioFlags::FUA);
                let mut c = Command::rw(opc, nsid, r.lba, r.blocks, fua);
                let data = with_sg::<SMALL_SG, MAX_SEGMENTS, _>(rq, &self.limits, |sg| {
                    self.data_ptr(slot, sg, stats)
                })??;
                c.set_data(data);
                let pre = write && self.info.vwc && rq.flags().contains(BioFlags::PREFLUSH);
                return Ok((c, pre));
            }
            Op::Flush => Command::flush(nsid),
            Op::WriteZeroes if self.info.write_zeroes => {
                let r = block_range(rq, shift, MAX_BLOCKS)?;
                Command::rw(nvm::WRITE_ZEROES, nsid, r.lba, r.blocks, false)
            }
            Op::Discard if self.info.dsm => {
                let r = block_range(rq, shift, u32::MAX)?;
                // One range in the slot's first list page: attributes, length, start.
                let lp = self.list_pages(slot);
                let off = lp.first;
                self.lists.write32(off, 0);
                self.lists.write32(off + 4, r.blocks);
                self.lists.write64(off + 8, r.lba);
                let mut c = Command::deallocate(nsid, 1);
                c.set_data(DataPtr::Prp(self.lists.phys().0 + off as u64, 0));
                c
            }
            _ => return Err(QueueRqError::Fatal(BlkError::Unsupported)),
        };
        Ok((c, false))
    }

    /// Puts `rq` of namespace queue `q` (below `ns_count`) on the I/O queue pair of its
    /// hardware context; the last request of a batch rings the doorbell here (under the pair's
    /// lock already taken), earlier ones leave it to `commit`.
    fn submit<Q: QueueIndex>(&self, q: Q, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        // A tag beyond the queue's range would name another namespace queue's slot.
        let Some(slot) = slot(q.get(), rq.tag()) else {
            return Err(QueueRqError::Fatal(BlkError::InvalidArgument));
        };
        if rq.passthrough().is_some() {
            let r = self.submit_admin(slot, rq);
            self.after_unlock(0);
            return r;
        }
        let pair = &self.pairs[self.pair_of(rq.hctx())];
        let (cmd, preflush) = self.build(q, slot, rq, &pair.stats)?;
        let mut io = pair.io.lock();
        if io.sq.is_full() {
            drop(io);
            pair.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        }
        let Some(cid) = io.cids.issue(slot) else {
            drop(io);
            pair.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        };
        let mut first = if preflush {
            pair.stats.preflushes.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = self.staged.get(slot as usize) {
                *s.lock() = Some(cmd);
                io.staged += 1;
            }
            Command::flush(self.ns[q.get()].nsid)
        } else {
            cmd
        };
        first.set_cid(cid);
        let _ = io.sq.push(&first);
        pair.stats.requests.fetch_add(1, Ordering::Relaxed);
        if last {
            self.ring_io(&mut io, &pair.stats);
        } else {
            pair.unrung.store(true, Ordering::Relaxed);
        }
        drop(io);
        Ok(())
    }

    /// The I/O queue pair of hardware context `hctx`: the same index while it is below the
    /// pairs in use (the block layer maps its contexts with [`Nvme::io_queues`]), pair 0
    /// otherwise.
    #[inline(always)]
    pub(crate) fn pair_of(&self, hctx: usize) -> usize {
        // The mask (a no-op: `nr_io` is at most `MAX_IO_QUEUES`) spares the bounds check of
        // the index that follows.
        (if hctx < self.nr_io { hctx } else { 0 }) & (MAX_IO_QUEUES - 1)
    }
}

/// Which namespace queue a request is for. The request path is generic over it so that queue
/// 0's copy (`HwQueue for Nvme`, [`First`]) has the index as a constant: one namespace costs
/// what it did before there were several (the slot is the tag, the namespace a fixed field).
pub(crate) trait QueueIndex: Copy {
    /// The index.
    fn get(self) -> usize;
}

/// Namespace queue 0.
#[derive(Clone, Copy)]
pub(crate) struct First;

impl QueueIndex for First {
    #[inline(always)]
    fn get(self) -> usize {
        0
    }
}

impl QueueIndex for usize {
    #[inline(always)]
    fn get(self) -> usize {
        self
    }
}

/// Slot of namespace queue `q`'s tag `tag`; `None` for a tag beyond `QUEUE_DEPTH`.
#[inline]
pub(crate) fn slot(q: usize, tag: u16) -> Option<u16> {
    ((tag as usize) < QUEUE_DEPTH).then_some((q * QUEUE_DEPTH) as u16 + tag)
}

impl Nvme {
    /// The `HwQueue` of namespace queue `q` (`q` below [`Nvme::ns_queues`]), for the block
    /// layer's queue of that namespace; its `TagComplete` goes to [`Nvme::attach_ns`]. Queue 0
    /// is the same as `HwQueue for Nvme` itself.
    pub fn ns_queue(&self, q: usize) -> Option<NsQueue<'_>> {
        (q < self.ns_count).then_some(NsQueue { hw: self, q })
    }

    /// Ends a batch of hardware context `hctx`: rings its pair for entries still unrung
    /// (every namespace queue shares the pairs).
    #[inline(always)]
    fn commit_pair(&self, hctx: usize) {
        let k = self.pair_of(hctx);
        let pair = &self.pairs[k];
        // Entries of a batch whose last request was refused (or not marked last) are still
        // unrung; the last request of a batch rang the doorbell itself.
        if pair.unrung.load(Ordering::Relaxed) {
            let mut io = pair.io.lock();
            pair.unrung.store(false, Ordering::Relaxed);
            self.ring_io(&mut io, &pair.stats);
            drop(io);
        }
        self.after_unlock_pair(pair, k == 0);
    }

    /// Ends a batch on every pair (a caller that does not say which context).
    fn commit_io(&self) {
        for k in 0..self.nr_io {
            self.commit_pair(k);
        }
    }

    /// Namespace queue `q`'s request `rq` passed its deadline.
    fn timeout_rq(&self, q: usize, rq: &Request) -> TimeoutAction {
        match slot(q, rq.tag()) {
            Some(s) => self.abort_or_reset(s),
            // Never issued (`submit` refuses such tags).
            None => TimeoutAction::Fail,
        }
    }
}

/// The first attached namespace's queue (namespace queue 0).
impl HwQueue for Nvme {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(First, rq, last)
    }

    fn commit(&self) {
        self.commit_io();
    }

    fn commit_hctx(&self, hctx: usize) {
        self.commit_pair(hctx);
    }

    fn poll(&self) -> usize {
        self.reap_all()
    }

    fn poll_hctx(&self, hctx: usize) -> usize {
        self.reap_pair(self.pair_of(hctx))
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.timeout_rq(0, rq)
    }
}

/// One attached namespace's queue on a controller: requests name its namespace and use its
/// range of command slots on the I/O queue pairs every namespace shares; completions go to the `TagComplete`
/// attached with [`Nvme::attach_ns`]. From [`Nvme::ns_queue`].
#[derive(Clone, Copy)]
pub struct NsQueue<'a> {
    hw: &'a Nvme,
    q: usize,
}

impl NsQueue<'_> {
    /// Its index among the controller's namespace queues.
    pub fn index(&self) -> usize {
        self.q
    }
}

impl HwQueue for NsQueue<'_> {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.hw.submit(self.q, rq, last)
    }

    fn commit(&self) {
        self.hw.commit_io();
    }

    fn commit_hctx(&self, hctx: usize) {
        self.hw.commit_pair(hctx);
    }

    fn poll(&self) -> usize {
        self.hw.reap_all()
    }

    fn poll_hctx(&self, hctx: usize) -> usize {
        self.hw.reap_pair(self.hw.pair_of(hctx))
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.hw.timeout_rq(self.q, rq)
    }
}
