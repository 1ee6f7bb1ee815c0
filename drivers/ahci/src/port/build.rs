//! Request building: a request becomes a command in its slot (FIS, header and PRDT; READ/WRITE
//! FPDMA QUEUED or an exclusive command, with flush steps for PREFLUSH and FUA), and issuing
//! what the tracker allows (PxSACT, PxCI).

use core::sync::atomic::Ordering;

use blk::{BioFlags, BlkError, Op, PtCmd, QueueRqError, Request, SgEntry};

use super::{Ahci, CL_OFF, DEAD, Inner};
use crate::cmd::{H2dFis, HEADER_BYTES, TRIM_OFFSET, header_dw0, trim_ranges};
use crate::regs::port as px;
use crate::sg::{Prd, build_prdt, write_prdt};
use crate::spec::ata;

/// One step of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The data command (or passthrough, TRIM) saved in the slot.
    Main,
    /// FLUSH CACHE EXT.
    Flush,
}

/// A slot's saved command.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotCmd {
    fis: H2dFis,
    dw0: u32,
    steps: [Step; 3],
    nsteps: u8,
}

impl SlotCmd {
    /// The LBA of the saved command.
    pub(super) fn lba(&self) -> u64 {
        self.fis.lba
    }

    pub(super) const EMPTY: SlotCmd = SlotCmd {
        fis: H2dFis {
            command: 0,
            features: 0,
            lba: 0,
            device: 0,
            count: 0,
        },
        dw0: 0,
        steps: [Step::Main; 3],
        nsteps: 1,
    };
}

impl Ahci {
    /// Builds the command for `rq` in its slot; `Ok(ncq, steps)`.
    pub(super) fn build(
        &self,
        inner: &mut Inner,
        rq: &Request,
    ) -> Result<(bool, u8), QueueRqError> {
        let tag = rq.tag() as usize;
        let table = Self::table_off(tag);
        let shift = self.lbs_shift;
        let wc = self.info.identify.write_cache;
        let b = 1u32 << tag;
        // Set again below only when this request's first step is written here.
        inner.loaded &= !b;
        if let Some(pt) = rq.passthrough() {
            return self.build_pt(inner, tag, pt);
        }
        inner.pt &= !b;
        match rq.op() {
            Op::Read | Op::Write => {
                let write = rq.op() == Op::Write;
                let (np, bytes) = self.map_prdt(rq, table)?;
                let lbs_mask = (1u32 << shift) - 1;
                if bytes != rq.bytes() || bytes & lbs_mask != 0 || bytes == 0 {
                    return Err(QueueRqError::Fatal(BlkError::Misaligned));
                }
                if np as u64 > self.stats.max_prdt_entries.load(Ordering::Relaxed) {
                    self.stats
                        .max_prdt_entries
                        .fetch_max(np as u64, Ordering::Relaxed);
                }
                let lba = (rq.sector() << 9) >> shift;
                let blocks = bytes >> shift;
                let flags = rq.flags();
                let pre = write && wc && flags.contains(BioFlags::PREFLUSH);
                let post = write && wc && flags.contains(BioFlags::FUA);
                let ncq = self.info.ncq && (tag as u8) < self.info.ncq_depth && !pre && !post;
                let c = &mut inner.cmds[tag];
                c.fis = if ncq {
                    H2dFis::fpdma(write, lba, blocks, tag as u8, false)
                } else {
                    H2dFis::dma_ext(write, lba, blocks)
                };
                c.dw0 = header_dw0(write, np as u16);
                let mut k = 0;
                if pre {
                    c.steps[k] = Step::Flush;
                    k += 1;
                }
                c.steps[k] = Step::Main;
                k += 1;
                if post {
                    c.steps[k] = Step::Flush;
                    k += 1;
                }
                c.nsteps = k as u8;
                if !pre {
                    // The first step is the data command: its FIS and header go out now, so
                    // issuing is only the register writes.
                    self.write_cfis(table, &c.fis);
                    self.write_header(tag, c.dw0, table);
                    inner.loaded |= b;
                }
                Ok((ncq, k as u8))
            }
            Op::Flush => {
                let c = &mut inner.cmds[tag];
                c.steps[0] = Step::Flush;
                c.nsteps = 1;
                Ok((false, 1))
            }
            Op::Discard if self.info.identify.trim => {
                let lba = (rq.sector() << 9) >> shift;
                let blocks = rq.bytes() as u64 >> shift;
                let mut ranges = [0u64; 64];
                let n = trim_ranges(lba, blocks, &mut ranges)
                    .ok_or(QueueRqError::Fatal(BlkError::Misaligned))?;
                for (i, r) in ranges.iter().enumerate() {
                    let v = if i < n { *r } else { 0 };
                    self.mem.write64(table + TRIM_OFFSET + 8 * i, v);
                }
                let a = self.mem.phys().0 + (table + TRIM_OFFSET) as u64;
                write_prdt(&self.mem, table, &[Prd { dba: a, bytes: 512 }]);
                let c = &mut inner.cmds[tag];
                c.fis = H2dFis::trim(1);
                c.dw0 = header_dw0(true, 1);
                c.steps[0] = Step::Main;
                c.nsteps = 1;
                self.stats.trims.fetch_add(1, Ordering::Relaxed);
                Ok((false, 1))
            }
            _ => Err(QueueRqError::Fatal(BlkError::Unsupported)),
        }
    }

    fn build_pt(
        &self,
        inner: &mut Inner,
        tag: usize,
        pt: &PtCmd,
    ) -> Result<(bool, u8), QueueRqError> {
        let table = Self::table_off(tag);
        let mut n = 0u16;
        if let Some(v) = pt.data {
            let sg = [SgEntry {
                addr: v.addr(),
                len: v.len(),
            }];
            let mut prds = [Prd::default(); 1];
            build_prdt(&sg, self.limits.dma_limit, &mut prds)
                .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned))?;
            write_prdt(&self.mem, table, &prds);
            n = 1;
        }
        let device = if pt.args[3] == 0 {
            crate::cmd::DEVICE_LBA
        } else {
            pt.args[3] as u8
        };
        inner.pt |= 1 << tag;
        let c = &mut inner.cmds[tag];
        c.fis = H2dFis {
            command: pt.opcode as u8,
            features: pt.args[2] as u16,
            lba: pt.args[0] & 0xffff_ffff_ffff,
            device,
            count: pt.args[1] as u16,
        };
        c.dw0 = header_dw0(pt.write, n);
        c.steps[0] = Step::Main;
        c.nsteps = 1;
        Ok((false, 1))
    }

    /// Writes command header `slot` for a command table at `table`.
    /// Dword 0 and PRDBC (cleared) as one 64-bit store, CTBA and CTBAU as another.
    #[inline]
    pub(super) fn write_header(&self, slot: usize, dw0: u32, table: usize) {
        let h = CL_OFF + slot * HEADER_BYTES;
        let t = self.mem.phys().0 + table as u64;
        self.mem.write64(h, dw0 as u64);
        self.mem.write64(h + 8, t);
    }

    #[inline]
    pub(super) fn write_cfis(&self, table: usize, fis: &H2dFis) {
        let d = fis.to_dwords();
        self.mem.write64(table, d[0] as u64 | (d[1] as u64) << 32);
        self.mem
            .write64(table + 8, d[2] as u64 | (d[3] as u64) << 32);
        self.mem.write32(table + 16, d[4]);
    }

    /// Whether the step of `tag` that just finished (`step`, before the tracker moved on) is
    /// a non-queued read or write (READ/WRITE DMA EXT; PRDBC is not defined for NCQ commands)
    /// the device reported short: its PRDBC (command header dword 1, cleared when the header
    /// was written) is not the command's byte count.
    #[inline(never)]
    pub(super) fn short_transfer(&self, inner: &Inner, tag: u8, step: u8) -> bool {
        let c = &inner.cmds[tag as usize];
        let step = step.min(c.nsteps - 1);
        if c.steps[step as usize] != Step::Main
            || inner.pt & (1 << tag) != 0
            || !matches!(c.fis.command, ata::READ_DMA_EXT | ata::WRITE_DMA_EXT)
        {
            return false;
        }
        let blocks = if c.fis.count == 0 {
            65536
        } else {
            c.fis.count as u32
        };
        self.mem.read32(CL_OFF + tag as usize * HEADER_BYTES + 4) != blocks << self.lbs_shift
    }

    /// Tags whose current step writes the media (WRITE DMA EXT, WRITE FPDMA QUEUED, TRIM);
    /// passthrough commands are not counted.
    pub(super) fn media_writes(inner: &Inner) -> u32 {
        let mut m = inner.tracker.busy() & !inner.pt;
        let mut out = 0;
        while m != 0 {
            let t = m.trailing_zeros() as u8;
            m &= m - 1;
            let c = &inner.cmds[t as usize];
            let step = inner.tracker.step(t).min(c.nsteps - 1);
            let write = matches!(
                c.fis.command,
                ata::WRITE_DMA_EXT | ata::WRITE_FPDMA_QUEUED | ata::DATA_SET_MANAGEMENT
            );
            if c.steps[step as usize] == Step::Main && write {
                out |= 1 << t;
            }
        }
        out
    }

    /// Writes header and FIS of `tag` at its current step (unless `queue_rq` already did for
    /// the first issue).
    fn load_slot(&self, inner: &mut Inner, tag: u8) {
        let b = 1u32 << tag;
        if inner.loaded & b != 0 {
            inner.loaded &= !b;
            return;
        }
        self.write_slot(inner, tag);
    }

    /// Writes header and FIS of `tag` at its current step.
    fn write_slot(&self, inner: &Inner, tag: u8) {
        let c = &inner.cmds[tag as usize];
        let table = Self::table_off(tag as usize);
        let step = inner.tracker.step(tag).min(c.nsteps - 1);
        match c.steps[step as usize] {
            Step::Main => {
                self.write_cfis(table, &c.fis);
                self.write_header(tag as usize, c.dw0, table);
            }
            Step::Flush => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.write_cfis(table, &H2dFis::simple(ata::FLUSH_CACHE_EXT));
                self.write_header(tag as usize, header_dw0(false, 0), table);
            }
        }
    }

    /// Issues whatever the tracker allows.
    pub(super) fn issue_ready(&self, inner: &mut Inner) {
        self.unissued.store(false, Ordering::Relaxed);
        if inner.refuse & DEAD != 0 {
            return;
        }
        let iss = inner.tracker.next_issue();
        if iss.ncq != 0 {
            // Slots `queue_rq` loaded go out as they are; the others (replays) are written now.
            let mut m = iss.ncq & !inner.loaded;
            inner.loaded &= !iss.ncq;
            while m != 0 {
                let t = m.trailing_zeros() as u8;
                m &= m - 1;
                self.write_slot(inner, t);
            }
            self.stats
                .ncq_commands
                .fetch_add(iss.ncq.count_ones() as u64, Ordering::Relaxed);
            self.pwrite(px::SACT, iss.ncq);
            self.pwrite(px::CI, iss.ncq);
        }
        if let Some(t) = iss.exclusive {
            self.issue_exclusive(inner, t);
        }
    }

    pub(super) fn issue_exclusive(&self, inner: &mut Inner, t: u8) {
        self.load_slot(inner, t);
        self.stats
            .exclusive_commands
            .fetch_add(1, Ordering::Relaxed);
        self.pwrite(px::CI, 1 << t);
    }
}
