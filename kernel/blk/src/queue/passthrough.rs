//! Passthrough commands sent through a [`Queue`] (identify, admin commands): asynchronous
//! with a callback, or waited for.

use core::sync::atomic::Ordering;

use super::Queue;
use super::slot::{BUILD, PT_DONE, PtKind};
use crate::bio::{BioFlags, Op};
use crate::driver::{PtCmd, PtResult};
use crate::error::{BlkError, status_from_code};
use crate::request::Attempts;

impl<const D: usize> Queue<D> {
    pub(super) fn start_pt(&self, cmd: PtCmd, kind: PtKind) -> Result<u16, (BlkError, PtCmd)> {
        let Some(tag) = self.get_tag(0) else {
            return Err((BlkError::Busy, cmd));
        };
        let Some(slot) = self.slot(tag) else {
            return Err((BlkError::Busy, cmd));
        };
        slot.state.store(BUILD, Ordering::Relaxed);
        slot.result.store(0, Ordering::Relaxed);
        {
            let mut rq = slot.rq.lock();
            rq.tag = tag;
            rq.op = if cmd.write { Op::Write } else { Op::Read };
            rq.flags = BioFlags::empty();
            rq.sector = 0;
            rq.bytes = 0;
            rq.nr_segs = 0;
            rq.attempts = Attempts::NONE;
            rq.pt = Some((cmd, kind));
        }
        self.stats.passthrough(1);
        Ok(tag)
    }

    /// Sends a passthrough command through the queue; `done` gets the result (often in
    /// interrupt context). On refusal the command is handed back.
    pub fn passthrough(
        &self,
        cmd: PtCmd,
        done: fn(PtResult),
        private: usize,
    ) -> Result<(), (BlkError, PtCmd)> {
        let tag = self.start_pt(cmd, PtKind::Async(done, private))?;
        self.dispatch(&[tag]);
        Ok(())
    }

    /// Sends a passthrough command and waits for it, calling `wait` (and the driver's `poll`)
    /// between checks.
    pub fn passthrough_wait(&self, cmd: PtCmd, wait: fn()) -> Result<PtResult, (BlkError, PtCmd)> {
        let tag = self.start_pt(cmd, PtKind::Sync)?;
        self.dispatch(&[tag]);
        let Some(slot) = self.slot(tag) else {
            return Err((BlkError::Io, cmd));
        };
        while slot.state.load(Ordering::Acquire) != PT_DONE {
            self.kick();
            self.hw.poll_hctx(0);
            if slot.state.load(Ordering::Acquire) == PT_DONE {
                break;
            }
            wait();
        }
        let cmd = slot.rq.lock().pt.take().map(|(c, _)| c).unwrap_or(cmd);
        let res = PtResult {
            status: status_from_code(slot.early_status.load(Ordering::Acquire)),
            result: slot.result.load(Ordering::Acquire),
            private: 0,
            cmd,
        };
        self.release(slot, tag);
        Ok(res)
    }
}
