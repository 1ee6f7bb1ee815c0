//! Completion of a [`Queue`]'s requests by tag: success, partial completion, errors and
//! retries, early completion during `queue_rq`, and the [`TagComplete`] implementation.

use core::sync::atomic::Ordering;

use super::Queue;
use super::slot::{NO_BYTES, PT_DONE, PtKind};
use crate::bio::{BioList, SECTOR_SHIFT, bio_endio};
use crate::driver::{PtResult, TagComplete};
use crate::error::{BlkError, BlkStatus, status_code};
use crate::request::MAX_ABORTS;
use crate::slot_state::{self, Completed};

impl<const D: usize> Queue<D> {
    /// Ends request `tag` (the caller moved its state to COMPLETING).
    pub(super) fn finish(
        &self,
        tag: u16,
        status: BlkStatus,
        done_bytes: Option<u32>,
        may_retry: bool,
    ) {
        let Some(slot) = self.slot(tag) else { return };
        let mut rq = slot.rq.lock();
        if status.is_ok() && done_bytes.is_none() && rq.pt.is_none() {
            // All done (the common case): every bio ends with success.
            let mut ended = core::mem::take(&mut rq.bios);
            rq.sector += (rq.bytes >> SECTOR_SHIFT) as u64;
            rq.bytes = 0;
            drop(rq);
            self.stats.requests_completed(1);
            self.release(slot, tag);
            while let Some(mut b) = ended.pop_front() {
                b.advance_all();
                bio_endio(b);
            }
            return;
        }
        let mut ended = BioList::new();
        if rq.pt.is_some()
            && let Some((cmd, kind)) = rq.pt.take()
        {
            drop(rq);
            let result = slot.result.load(Ordering::Acquire);
            self.stats.requests_completed(1);
            match kind {
                PtKind::Async(done, private) => {
                    self.release(slot, tag);
                    done(PtResult {
                        status,
                        result,
                        private,
                        cmd,
                    });
                }
                PtKind::Sync => {
                    // Keep the command for the waiter, which frees the slot.
                    slot.rq.lock().pt = Some((cmd, kind));
                    slot.early_status
                        .store(status_code(status), Ordering::Release);
                    slot.state.store(PT_DONE, Ordering::Release);
                }
            }
            return;
        }
        let done = match (status, done_bytes) {
            (Ok(()), None) => rq.bytes,
            // A failed flush, PREFLUSH or FUA write ends every bio with the error, even if the
            // driver says the data was transferred: none of it is known to be on stable media.
            (Err(_), _) if rq.flushes() => 0,
            (_, Some(b)) => b.min(rq.bytes),
            (Err(_), None) => 0,
        };
        let mut left = done >> SECTOR_SHIFT << SECTOR_SHIFT;
        while left > 0 {
            let Some(mut b) = rq.bios.pop_front() else {
                break;
            };
            let n = b.size().min(left);
            b.advance(n);
            left -= n;
            rq.bytes -= n;
            rq.sector += (n >> SECTOR_SHIFT) as u64;
            if b.size() == 0 {
                ended.push_back(b);
            } else {
                rq.bios.push_front(b);
            }
        }
        let mut final_done = rq.bytes == 0;
        match status {
            Ok(()) if !final_done => {
                // Partial completion: the rest goes again.
                self.stats.requeues(1);
            }
            Err(e) if !final_done || rq.flushes() => {
                // A failed flush is never retried: the device may have dropped dirty data
                // from its cache, and a later flush that succeeds would not bring it back.
                // The error goes to the submitter, who must treat that data as lost. `Busy`
                // is the driver's own shortage (a step it could not issue), not a device
                // failure, so it may go again.
                // `Aborted`: a reset of the device cut the request off through no fault of its
                // own; it goes again without using up a retry (a bounded number of times).
                let again = may_retry
                    && if e == BlkError::Aborted {
                        !rq.flushes() && rq.attempts.aborts < MAX_ABORTS
                    } else {
                        e.is_retryable()
                            && rq.attempts.retries < self.cfg.max_retries
                            && (e == BlkError::Busy || !rq.flushes())
                    };
                if again {
                    if e == BlkError::Aborted {
                        rq.attempts.aborts += 1;
                    } else {
                        rq.attempts.retries += 1;
                        self.stats.retries(1);
                    }
                    self.stats.requeues(1);
                    final_done = false;
                } else {
                    while let Some(b) = rq.bios.pop_front() {
                        b.fail(e);
                        self.stats.bio_errors(1);
                        ended.push_back(b);
                    }
                    final_done = true;
                }
            }
            _ => {}
        }
        if final_done {
            // Data-less requests (flush) end with their bios.
            while let Some(b) = rq.bios.pop_front() {
                ended.push_back(b);
            }
            drop(rq);
            self.stats.requests_completed(1);
            self.release(slot, tag);
        } else {
            rq.nr_segs = rq.bios.iter().map(|b| self.limits.bio_segments(b)).sum();
            drop(rq);
            self.mark_requeue(slot, tag);
        }
        while let Some(b) = ended.pop_front() {
            bio_endio(b);
        }
    }

    /// Completes request `tag` (see [`TagComplete::complete`]). Never waits.
    pub fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        let Some(slot) = self.slot(tag) else {
            self.stats.late_completions(1);
            return;
        };
        let record_early = || {
            slot.early_status
                .store(status_code(status), Ordering::Release);
            slot.early_bytes
                .store(done_bytes.unwrap_or(NO_BYTES), Ordering::Release);
        };
        match slot_state::complete(&slot.state, record_early) {
            Completed::Finish => self.finish(tag, status, done_bytes, true),
            Completed::Early => {}
            Completed::Late => self.stats.late_completions(1),
        }
    }
}

impl<const D: usize> TagComplete for Queue<D> {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        Queue::complete(self, tag, status, done_bytes);
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        if let Some(slot) = self.slot(tag) {
            slot.result.store(result, Ordering::Release);
        }
        Queue::complete(self, tag, status, None);
    }
    fn kick(&self) {
        Queue::kick(self);
    }
}
