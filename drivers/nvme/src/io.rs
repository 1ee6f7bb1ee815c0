//! The request path: `queue_rq` builds the command (data pointer from the scatter-gather
//! list, PRPs or SGLs in the tag's list pages), takes a command id, writes the entry at the
//! submission queue tail and rings the doorbell for the last request of a batch; `commit`
//! rings for what is still unrung.

use core::sync::atomic::{Ordering, fence};

use blk::driver::{block_range, with_sg};
use blk::{BioFlags, BlkError, HwQueue, Op, QueueRqError, Request, SgEntry, TimeoutAction};

use crate::cmd::{Command, DataPtr};
use crate::ctrl::{IOQ, IoQ, LIST_PAGES, MAX_SEGMENTS, Nvme};
use crate::device_error;
use crate::prp::{ListPages, PAGE, build_prp, build_sgl};
use crate::spec::nvm;

/// Scatter-gather entries of the list on the stack for requests of a few segments (clearing
/// a `MAX_SEGMENTS` list for each of them was ~300 instructions); bigger ones map out of line.
const SMALL_SG: usize = 4;

/// Blocks per read, write or write zeroes command (the count field is 16 bits, zero-based).
const MAX_BLOCKS: u32 = 65536;

impl Nvme {
    /// Rings the I/O submission queue doorbell for entries pushed since the last ring.
    pub(crate) fn ring_io(&self, io: &mut IoQ) {
        if io.rung != io.sq.tail() {
            fence(Ordering::SeqCst);
            self.regs.ring_sq(IOQ, io.sq.tail());
            io.rung = io.sq.tail();
            self.stats.doorbells.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The PRP/SGL list pages of tag `tag`.
    pub(crate) fn list_pages(&self, tag: u16) -> ListPages<'_> {
        ListPages {
            buf: &self.lists,
            first: tag as usize * LIST_PAGES * PAGE as usize,
            pages: LIST_PAGES,
        }
    }

    /// PRPs or SGLs for `sg` in tag `tag`'s list pages.
    pub(crate) fn data_ptr(&self, tag: u16, sg: &[SgEntry]) -> Result<DataPtr, QueueRqError> {
        let lp = self.list_pages(tag);
        let r = if self.info.sgl {
            build_sgl(sg, &lp)
        } else {
            build_prp(sg, &lp)
        };
        let (d, pages) = r.map_err(|_| QueueRqError::Fatal(BlkError::InvalidArgument))?;
        if self.info.sgl {
            self.stats.sgls.fetch_add(1, Ordering::Relaxed);
        } else if pages > 0 {
            self.stats.prp_lists.fetch_add(1, Ordering::Relaxed);
        }
        if pages > 1 {
            self.stats.chained_lists.fetch_add(1, Ordering::Relaxed);
        }
        Ok(d)
    }

    /// The command of a read, write, flush, write zeroes or discard; `true` when a PREFLUSH
    /// write needs a flush first.
    fn build(&self, rq: &Request) -> Result<(Command, bool), QueueRqError> {
        let shift = self.info.block_size.trailing_zeros();
        let nsid = self.info.nsid;
        let c = match rq.op() {
            Op::Read | Op::Write => {
                let r = block_range(rq, shift, MAX_BLOCKS)?;
                let write = rq.op() == Op::Write;
                let opc = if write { nvm::WRITE } else { nvm::READ };
                let fua = write && rq.flags().contains(BioFlags::FUA);
                let mut c = Command::rw(opc, nsid, r.lba, r.blocks, fua);
                let data = with_sg::<SMALL_SG, MAX_SEGMENTS, _>(rq, &self.limits, |sg| {
                    self.data_ptr(rq.tag(), sg)
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
                // One range in the tag's first list page: attributes, length, start.
                let lp = self.list_pages(rq.tag());
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

    /// Puts `rq` on a queue; the last request of a batch rings the I/O doorbell here (under
    /// the lock already taken), earlier ones leave it to `commit`.
    fn submit(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        if rq.passthrough().is_some() {
            let r = self.submit_admin(rq);
            self.after_unlock();
            return r;
        }
        let (cmd, preflush) = self.build(rq)?;
        let tag = rq.tag();
        let mut io = self.io.lock();
        if io.sq.is_full() {
            drop(io);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        }
        let Some(cid) = io.cids.issue(tag) else {
            drop(io);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        };
        let mut first = if preflush {
            self.stats.preflushes.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = io.staged.get_mut(tag as usize) {
                *s = Some(cmd);
            }
            Command::flush(self.info.nsid)
        } else {
            cmd
        };
        first.set_cid(cid);
        let _ = io.sq.push(&first);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if last {
            self.ring_io(&mut io);
        } else {
            self.unrung.store(true, Ordering::Relaxed);
        }
        drop(io);
        Ok(())
    }
}

impl HwQueue for Nvme {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(rq, last)
    }

    fn commit(&self) {
        // Entries of a batch whose last request was refused (or not marked last) are still
        // unrung; the last request of a batch rang the doorbell itself.
        if self.unrung.load(Ordering::Relaxed) {
            let mut io = self.io.lock();
            self.unrung.store(false, Ordering::Relaxed);
            self.ring_io(&mut io);
            drop(io);
        }
        self.after_unlock();
    }

    fn poll(&self) -> usize {
        self.reap_all()
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.abort_or_reset(rq.tag())
    }
}
