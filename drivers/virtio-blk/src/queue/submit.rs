//! Request building: a block-layer request to a descriptor chain (header, data, range
//! segment, status byte in this tag's command memory), staged pre-flush and FUA post-flush
//! chains, and the batched doorbell decision. A read or write is mapped on the stack with
//! `blk::driver::with_sg` into the smallest array that holds it: `TINY_CHAIN - 2` entries for
//! the common one- and two-segment requests, `SMALL_CHAIN - 2`, the full [`MAX_SEGMENTS`] one
//! only for big ones (`add_locked` then picks the chain array by the number of entries).

use core::sync::atomic::Ordering;

use blk::driver::with_sg;
use blk::{BioFlags, BlkError, Op, QueueRqError, Request, SgEntry};

use super::{CMD_RANGE, CMD_SG, CMD_STATUS, CMD_STRIDE, Inner, Slot, VirtioBlk, Vq, device_error};
use virtio_drivers::transport::Transport;

use crate::MAX_SEGMENTS;
use crate::hal_impl::{ChainBuf, MAX_CHAIN, SMALL_CHAIN, TINY_CHAIN};
use crate::sg::{RequestKind, need_event, plan};

impl VirtioBlk {
    /// Starts the next chain of a staged request on queue `v` (its lock held as `inner`);
    /// `false` if the ring has no room.
    pub(super) fn next_stage_locked(
        &self,
        v: &Vq,
        inner: &mut Inner,
        tag: u16,
        slot: &Slot,
    ) -> bool {
        let mut sg = [SgEntry::default(); MAX_SEGMENTS as usize];
        let (kind, nsg, fua) = if slot.preflush_segs > 0 {
            let base = tag as usize * CMD_STRIDE + CMD_SG;
            let nsg = (slot.preflush_segs as usize).min(sg.len());
            for (i, e) in sg.iter_mut().take(nsg).enumerate() {
                e.addr = hal::PhysAddr(self.cmd.read64(base + 16 * i));
                e.len = self.cmd.read32(base + 16 * i + 8);
            }
            self.write_header(tag, RequestKind::Write, slot.sector);
            (RequestKind::Write, nsg, slot.fua)
        } else {
            v.stats.fua_flushes.fetch_add(1, Ordering::Relaxed);
            self.write_header(tag, RequestKind::Flush, 0);
            (RequestKind::Flush, 0, false)
        };
        let p = plan(kind, nsg as u16, slot.bytes);
        if self.add_locked(inner, tag, kind, &sg[..nsg]).is_err() {
            return false;
        }
        inner.slots[tag as usize] = Slot {
            readable: p.readable,
            writable: p.writable,
            min_used_len: p.min_used_len,
            bytes: slot.bytes,
            fua,
            preflush_segs: 0,
            sector: slot.sector,
        };
        true
    }

    pub(super) fn write_header(&self, tag: u16, kind: RequestKind, sector: u64) {
        let base = tag as usize * CMD_STRIDE;
        self.cmd.write32(base, kind.wire_type());
        self.cmd.write32(base + 4, 0);
        self.cmd.write64(base + 8, sector);
        // A device that never writes the status leaves an error behind.
        self.cmd.write8(base + CMD_STATUS, 0xff);
    }

    /// Adds the chain for `tag`: header, `data` (readable or writable by kind), range segment,
    /// status; arrays sized for the chain.
    pub(super) fn add_locked(
        &self,
        inner: &mut Inner,
        tag: u16,
        kind: RequestKind,
        data: &[SgEntry],
    ) -> Result<u16, QueueRqError> {
        let base = self.cmd.phys().0 + (tag as usize * CMD_STRIDE) as u64;
        let header = ChainBuf {
            addr: base,
            len: 16,
        };
        let status = ChainBuf {
            addr: base + CMD_STATUS as u64,
            len: 1,
        };
        let range =
            matches!(kind, RequestKind::Discard | RequestKind::WriteZeroes).then_some(ChainBuf {
                addr: base + CMD_RANGE as u64,
                len: 16,
            });
        let writable = kind == RequestKind::Read;
        let vq = &mut inner.vq;
        // The request's segments (the block layer's until completion) and this tag's command
        // memory: `add_request`'s contract.
        let res = if data.len() + 2 <= TINY_CHAIN {
            vq.add_request::<TINY_CHAIN>(header, data, writable, range, status)
        } else if data.len() + 2 <= SMALL_CHAIN {
            vq.add_request::<SMALL_CHAIN>(header, data, writable, range, status)
        } else {
            vq.add_request::<MAX_CHAIN>(header, data, writable, range, status)
        };
        let head = res.map_err(|e| match e {
            virtio_drivers::Error::QueueFull => QueueRqError::Busy,
            _ => QueueRqError::Fatal(BlkError::InvalidArgument),
        })?;
        inner.heads.insert(head, tag);
        inner.added = inner.added.wrapping_add(1);
        Ok(head)
    }

    /// The doorbell decision for queue `v` (its lock held as `inner`).
    #[inline]
    pub(super) fn notify_locked(&self, v: &Vq, inner: &mut Inner) {
        v.unnotified.store(false, Ordering::Relaxed);
        if inner.added == inner.notified {
            return;
        }
        let need = if self.info.event_idx {
            need_event(inner.used.avail_event(), inner.added, inner.notified)
        } else {
            inner.vq.should_notify()
        };
        inner.notified = inner.added;
        if need {
            v.stats.notifies.fetch_add(1, Ordering::Relaxed);
            match &inner.doorbell {
                Some(d) => d.write16(0, v.index),
                None => self.notify_transport(v.index),
            }
        } else {
            v.stats.notifies_suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notifies queue `q` through the transport (a queue without a doorbell of its own).
    #[inline(never)]
    fn notify_transport(&self, q: u16) {
        self.transport.lock().notify(q);
    }

    /// Checks `rq`, maps a read's or write's segments and adds its chain (`queue_rq`).
    pub(super) fn submit(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let tag = rq.tag();
        if tag >= self.info.queue_depth {
            return Err(QueueRqError::Fatal(BlkError::InvalidArgument));
        }
        if rq.passthrough().is_some() {
            return Err(QueueRqError::Fatal(BlkError::Unsupported));
        }
        let kind = match rq.op() {
            Op::Read => RequestKind::Read,
            Op::Write => RequestKind::Write,
            Op::Flush => RequestKind::Flush,
            Op::Discard => RequestKind::Discard,
            Op::WriteZeroes => RequestKind::WriteZeroes,
        };
        if kind.modifies() && self.info.read_only {
            return Err(QueueRqError::Fatal(BlkError::ReadOnly));
        }
        match kind {
            RequestKind::Read | RequestKind::Write => {
                let add = |sg: &[SgEntry]| self.submit_sg(rq, kind, sg, last);
                // One or two segments (most requests): a tiny array, the small one out of line
                // if a boundary cut makes more entries; past that (`InvalidArgument`), or for
                // more segments, the small array and the full one out of line.
                if rq.nr_segments() as usize <= TINY_CHAIN - 2 {
                    match with_sg::<{ TINY_CHAIN - 2 }, { SMALL_CHAIN - 2 }, _>(
                        rq,
                        &self.limits,
                        add,
                    ) {
                        Ok(r) => return r,
                        Err(BlkError::InvalidArgument) => {}
                        Err(e) => return Err(QueueRqError::Fatal(e)),
                    }
                }
                match with_sg::<{ SMALL_CHAIN - 2 }, { MAX_SEGMENTS as usize }, _>(
                    rq,
                    &self.limits,
                    add,
                ) {
                    Ok(r) => r,
                    Err(e) => Err(QueueRqError::Fatal(e)),
                }
            }
            RequestKind::Flush if !self.info.flush => {
                // Write-through device: nothing to flush.
                self.sink.complete(tag, Ok(()));
                Ok(())
            }
            RequestKind::Discard if self.info.max_discard_sectors == 0 => {
                Err(QueueRqError::Fatal(BlkError::Unsupported))
            }
            RequestKind::WriteZeroes if self.info.max_write_zeroes_sectors == 0 => {
                Err(QueueRqError::Fatal(BlkError::Unsupported))
            }
            _ => self.submit_sg(rq, kind, &[], last),
        }
    }

    /// Adds the chain of `rq` (of `kind`, data segments `sg`) and records its slot.
    fn submit_sg(
        &self,
        rq: &Request,
        kind: RequestKind,
        sg: &[SgEntry],
        last: bool,
    ) -> Result<(), QueueRqError> {
        let tag = rq.tag();
        let nsg = sg.len();
        if kind.has_data() && nsg == 0 {
            return Err(QueueRqError::Fatal(BlkError::InvalidArgument));
        }
        let fua =
            kind == RequestKind::Write && self.info.flush && rq.flags().contains(BioFlags::FUA);
        let sector = if kind == RequestKind::Flush {
            0
        } else {
            rq.sector()
        };
        // A pre-flush runs first as its own chain; the write's segments wait in command memory.
        let preflush = kind == RequestKind::Write
            && self.info.flush
            && rq.flags().contains(BioFlags::PREFLUSH);
        let data_segs = nsg as u16;
        let (kind, nsg) = if preflush {
            let base = tag as usize * CMD_STRIDE + CMD_SG;
            for (i, e) in sg[..nsg].iter().enumerate() {
                self.cmd.write64(base + 16 * i, e.addr.0);
                self.cmd.write32(base + 16 * i + 8, e.len);
            }
            (RequestKind::Flush, 0)
        } else {
            (kind, nsg)
        };
        let v = self.vq(rq.hctx());
        let preflush_segs = if preflush {
            v.stats.preflushes.fetch_add(1, Ordering::Relaxed);
            data_segs
        } else {
            0
        };
        self.write_header(tag, kind, sector);
        if matches!(kind, RequestKind::Discard | RequestKind::WriteZeroes) {
            let base = tag as usize * CMD_STRIDE + CMD_RANGE;
            self.cmd.write64(base, rq.sector());
            self.cmd.write32(base + 8, rq.bytes() >> 9);
            self.cmd.write32(base + 12, 0);
        }
        let p = plan(kind, nsg as u16, rq.bytes());
        let mut inner = v.inner.lock();
        if self.dead.load(Ordering::Relaxed) {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        let res = self.add_locked(&mut inner, tag, kind, &sg[..nsg]);
        match res {
            Ok(_) => {
                inner.slots[tag as usize] = Slot {
                    readable: p.readable,
                    writable: p.writable,
                    min_used_len: p.min_used_len,
                    bytes: rq.bytes(),
                    fua,
                    preflush_segs,
                    sector,
                };
                v.stats.requests.fetch_add(1, Ordering::Relaxed);
                if last {
                    // The end of the batch: the doorbell decision now, under this lock
                    // (`commit` then has nothing to do).
                    self.notify_locked(v, &mut inner);
                } else {
                    v.unnotified.store(true, Ordering::Relaxed);
                }
            }
            Err(QueueRqError::Busy) => {
                v.stats.busy.fetch_add(1, Ordering::Relaxed);
                // Descriptors may only come back through a reap: make sure one happens.
                if inner.heads.in_flight() > 0 {
                    self.notify_locked(v, &mut inner);
                }
            }
            Err(_) => {}
        }
        drop(inner);
        self.reap_if_pending(v);
        res.map(|_| ())
    }
}
