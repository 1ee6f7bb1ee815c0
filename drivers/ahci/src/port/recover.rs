//! Error recovery (process context): queued commands that finished complete, the failed
//! command is named (the exclusive or only command, else the NCQ command error log, else
//! nobody: the others become suspects), the port gets a COMRESET, the failed command fails and
//! the others are replayed. Timeouts take the same path.

use core::sync::atomic::Ordering;

use super::complete::{DEAD, DoneList, IO, NO_DONE};
use super::{Ahci, Inner, Mode, SCRATCH_OFF};
use crate::cmd::H2dFis;
use crate::regs::{PxCmd, port as px};
use crate::spec::{LOG_NCQ_ERROR, NcqErrorLog, parse_ncq_error_log};

impl Ahci {
    /// Process-context work: error recovery when an error stopped the port. The kernel calls
    /// it from its deferred-work loop.
    pub fn deferred(&self) {
        if self.mode == Mode::Polling {
            self.poll_once();
        }
        if self.recovery_pending.load(Ordering::Relaxed)
            && self.recovery_pending.swap(false, Ordering::AcqRel)
        {
            let mut g = self.inner.lock();
            let mut done = NO_DONE;
            if g.tracker.stopped() {
                self.recover(&mut g, None, &mut done);
            }
            self.unlock_and_deliver(g, done);
        }
    }

    /// Reads the NCQ command error log; `Some(tag mask)` when it names a command in the port.
    pub(super) fn read_ncq_log(&self, inner: &Inner) -> Option<u32> {
        if !self.port_stop() {
            return None;
        }
        self.pwrite(px::SERR, !0);
        self.pwrite(px::IS, !0);
        let c = self.pcmd();
        self.pwrite(px::CMD, (c | PxCmd::FRE).bits());
        let c = self.pcmd();
        self.pwrite(px::CMD, (c | PxCmd::ST).bits());
        let scratch = self.mem.phys().add(SCRATCH_OFF as u64);
        self.exec_internal(
            H2dFis::read_log_ext(LOG_NCQ_ERROR, 1),
            Some((scratch, 512)),
            false,
        )
        .ok()?;
        let mut page = [0u8; 512];
        for (i, b) in page.iter_mut().enumerate() {
            *b = self.mem.read8(SCRATCH_OFF + i);
        }
        match parse_ncq_error_log(&page) {
            NcqErrorLog::Tag { tag, .. } if inner.tracker.active() & (1 << tag) != 0 => {
                self.stats.log_reads.fetch_add(1, Ordering::Relaxed);
                Some(1 << tag)
            }
            _ => None,
        }
    }

    /// Error recovery: name the failed command, reset the port, fail it, replay the rest.
    /// `timed_out` is a tag the block layer took back (forgotten, not completed here).
    pub(super) fn recover(&self, inner: &mut Inner, timed_out: Option<u8>, done: &mut DoneList) {
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        // The internal command below reuses slot 0's header: every slot is written afresh
        // before it is issued again.
        inner.loaded = 0;
        // Queued commands that finished before the error complete normally.
        let sact = self.pread(px::SACT);
        let ok = if inner.tracker.stopped() || timed_out.is_some() {
            inner.tracker.reap_ncq(sact)
        } else {
            0
        };
        let failed = match timed_out {
            Some(t) => {
                inner.tracker.forget(t);
                Some(0)
            }
            None => inner
                .tracker
                .obvious_culprit()
                .or_else(|| self.read_ncq_log(inner)),
        };
        if failed.is_none() {
            self.stats.isolations.fetch_add(1, Ordering::Relaxed);
        }
        let reset_ok = self.port_reset();
        inner.tracker.stop();
        let r = inner.tracker.recover(failed);
        self.stats.replays.fetch_add(
            (r.replayed | r.suspects).count_ones() as u64,
            Ordering::Relaxed,
        );
        if !reset_ok {
            inner.dead = true;
        }
        done.ok(ok.into());
        done.fail(IO, r.failed.into());
        done.mark_pt(((ok | r.failed) & inner.pt).into());
        if inner.dead {
            let mut rest = inner.tracker.busy();
            done.fail(DEAD, rest.into());
            done.mark_pt((rest & inner.pt).into());
            while rest != 0 {
                let tag = rest.trailing_zeros() as u8;
                rest &= rest - 1;
                inner.tracker.forget(tag);
            }
            return;
        }
        self.issue_ready(inner);
    }
}
