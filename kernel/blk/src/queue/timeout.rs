//! Timeouts: requests past their deadline go to the driver's timeout hook.

use core::sync::atomic::Ordering;

use super::Queue;
use super::slot::{COMPLETING, INFLIGHT};
use crate::driver::TimeoutAction;
use crate::error::BlkError;
use crate::slot_state;

impl<const D: usize> Queue<D> {
    /// Looks for requests past their deadline at time `now` and runs the driver's timeout
    /// hook on them; returns how many timed out. Then dispatches requeued requests.
    pub fn check_timeouts(&self, now: u64) -> usize {
        let mut n = 0;
        for (t, slot) in self.slots.iter().enumerate() {
            if slot.state.load(Ordering::Acquire) != INFLIGHT
                || slot.deadline.load(Ordering::Relaxed) > now
            {
                continue;
            }
            if !slot_state::time_out(&slot.state) {
                continue;
            }
            n += 1;
            self.stats.timeouts(1);
            let tag = t as u16;
            // A flush that timed out is not retried either (see `finish`).
            let (action, retries, no_retry) = {
                let rq = slot.rq.lock();
                (
                    self.hw.timeout(&rq),
                    rq.attempts.retries,
                    rq.pt.is_some() || rq.flushes(),
                )
            };
            match action {
                TimeoutAction::Extend => {
                    slot.deadline
                        .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
                    slot.state.store(INFLIGHT, Ordering::Release);
                }
                TimeoutAction::Retry if !no_retry && retries < self.cfg.max_retries => {
                    slot.rq.lock().attempts.retries += 1;
                    self.stats.retries(1);
                    self.stats.requeues(1);
                    self.mark_requeue(slot, tag);
                }
                _ => {
                    slot.state.store(COMPLETING, Ordering::Release);
                    self.finish(tag, Err(BlkError::Timeout), Some(0), false);
                }
            }
        }
        self.kick();
        n
    }
}
