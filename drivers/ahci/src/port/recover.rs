//! Error recovery (process context): queued commands that finished complete, the failed
//! command is named (the exclusive or only command, else the NCQ command error log, else
//! nobody: the others become suspects), the port gets a COMRESET, the failed command fails and
//! the others are replayed. Timeouts take the same path.

use core::sync::atomic::Ordering;

use super::complete::{DEAD as DEAD_KIND, DoneList, IO, NO_DONE};
use super::{Ahci, DEAD, Inner, Mode, READ_ONLY, SCRATCH_OFF};
use crate::cmd::H2dFis;
use crate::regs::{PxCmd, PxIs, Tfd, port as px};
use crate::spec::{LOG_NCQ_ERROR, NcqErrorLog, ata_error, parse_ncq_error_log};

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
            if self.ro_done.load(Ordering::Acquire) != 0 {
                self.deliver_read_only();
            }
        }
    }

    /// Reads the NCQ command error log; `Some((tag mask, write protected))` when it names a
    /// command in the port.
    pub(super) fn read_ncq_log(&self, inner: &Inner) -> Option<(u32, bool)> {
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
        let log = parse_ncq_error_log(&page);
        match log {
            // A log naming a command in the port with its LBA (an older entry of a hostile or
            // confused device names a tag that has since been reused).
            NcqErrorLog::Tag { tag, lba, .. }
                if inner.tracker.active() & (1 << tag) != 0
                    && inner.cmds[tag as usize].lba() == lba =>
            {
                self.stats.log_reads.fetch_add(1, Ordering::Relaxed);
                Some((1 << tag, log.write_protected()))
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
        // The timed-out tag belongs to the block layer again: it leaves before anything is
        // reaped, so it is not completed here even when the device did finish it.
        if let Some(t) = timed_out {
            inner.tracker.forget(t);
        }
        // Queued commands that finished before the error complete normally.
        let sact = self.pread(px::SACT);
        let ok = if inner.tracker.stopped() || timed_out.is_some() {
            inner.tracker.reap_ncq(sact)
        } else {
            0
        };
        // The failed command, and whether the device said the media is write-protected (the
        // error register's WP bit in PxTFD for the only command, or the NCQ log).
        // After an interface error PxTFD and the NCQ log may still hold an older command's
        // status (UNC of a read is the WP bit of a write): only a task-file error is read
        // there; otherwise the culprit is the only command, or unknown.
        let device_error = !inner.err_is.intersects(PxIs::INTERFACE_ERRORS);
        let (failed, wp) = match timed_out {
            Some(_) => (Some(0), false),
            None => match inner.tracker.obvious_culprit() {
                Some(m) => {
                    let t = inner.err_tfd;
                    let wp = t.contains(Tfd::ERR) && t.error() & ata_error::WP != 0;
                    (Some(m), device_error && wp)
                }
                None if device_error => match self.read_ncq_log(inner) {
                    Some((m, wp)) => (Some(m), wp),
                    None => (None, false),
                },
                None => (None, false),
            },
        };
        // Only a write is failed as write-protected (bit 6 is UNC on a read).
        let writes = Self::media_writes(inner);
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
            inner.refuse |= DEAD;
        }
        let mut ro = if wp {
            failed.unwrap_or(0) & r.failed & writes
        } else {
            0
        };
        if ro != 0 {
            // Write-protected: this write fails with `ReadOnly` (never retried), so do the
            // writes waiting in the driver; later ones are refused by `queue_rq`.
            inner.refuse |= READ_ONLY;
            let mut waiting = inner.tracker.busy() & writes;
            ro |= waiting;
            while waiting != 0 {
                let tag = waiting.trailing_zeros() as u8;
                waiting &= waiting - 1;
                inner.tracker.forget(tag);
            }
            self.stats
                .write_protected
                .fetch_add(ro.count_ones() as u64, Ordering::Relaxed);
        }
        done.ok(ok.into());
        done.fail(IO, (r.failed & !ro).into());
        // Delivered by `deferred` once the lock is dropped (a timeout never sets `ro`).
        self.ro_done.fetch_or(ro, Ordering::AcqRel);
        done.mark_pt(((ok | r.failed) & inner.pt).into());
        if inner.refuse & DEAD != 0 {
            let mut rest = inner.tracker.busy();
            done.fail(DEAD_KIND, rest.into());
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
