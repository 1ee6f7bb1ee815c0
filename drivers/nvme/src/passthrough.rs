//! Passthrough: admin commands from the block layer's queue (`PtCmd`), under its tags, on
//! the admin queue; the result word is completion dword 0.

use core::sync::atomic::{Ordering, fence};

use blk::{BlkError, QueueRqError, Request, SgEntry};

use crate::cmd::Command;
use crate::ctrl::Nvme;
use crate::prp::build_prp;

/// Passthrough opcodes (`PtCmd::opcode`).
pub mod pt {
    /// An admin command. `args[0]`: opcode (bits 7:0) and NSID (bits 63:32); `args[1..4]`:
    /// command dwords 10..16 (low half first). Data: the optional segment (PRPs). The result
    /// word is completion dword 0.
    pub const ADMIN: u32 = 1;
}

impl Nvme {
    /// Puts passthrough request `rq` (in slot `slot`) on the admin queue and rings its
    /// doorbell.
    pub(crate) fn submit_admin(&self, slot: u16, rq: &Request) -> Result<(), QueueRqError> {
        let Some(p) = rq.passthrough() else {
            return Err(QueueRqError::Fatal(BlkError::Io));
        };
        if p.opcode != pt::ADMIN {
            return Err(QueueRqError::Fatal(BlkError::Unsupported));
        }
        let mut c = Command::new(p.args[0] as u8, (p.args[0] >> 32) as u32);
        for k in 0..3 {
            c.dw[10 + 2 * k] = p.args[1 + k] as u32;
            c.dw[11 + 2 * k] = (p.args[1 + k] >> 32) as u32;
        }
        if let Some(v) = p.data {
            let sg = [SgEntry {
                addr: v.addr(),
                len: v.len(),
            }];
            let lp = self.list_pages(slot);
            let (d, _) =
                build_prp(&sg, &lp).map_err(|_| QueueRqError::Fatal(BlkError::InvalidArgument))?;
            c.set_data(d);
        }
        let mut a = self.admin.lock();
        let Some(cid) = a.cids.issue(slot) else {
            return Err(QueueRqError::Busy);
        };
        c.set_cid(cid);
        if !a.sq.push(&c) {
            a.cids.forget(slot);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        }
        self.admin_outstanding.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        self.regs.ring_sq(0, a.sq.tail());
        self.stats.passthrough.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
