//! Requeue and `kick`: requests the driver refused (`Busy`), partially completed or retried
//! wait in a bitmap until `kick` dispatches them again.

use core::sync::atomic::Ordering;

use super::slot::{BUILD, REQUEUE, RqSlot};
use super::{KICK_ROUNDS, Open, Queue};

impl<const D: usize> Queue<D> {
    /// Bitmap words the depth uses.
    pub(super) const WORDS: usize = D.div_ceil(64);

    #[inline]
    pub(super) fn requeue_pending(&self) -> bool {
        self.requeue[..Self::WORDS]
            .iter()
            .any(|w| w.load(Ordering::Relaxed) != 0)
    }

    pub(super) fn mark_requeue(&self, slot: &RqSlot, tag: u16) {
        slot.state.store(REQUEUE, Ordering::Release);
        self.requeue[tag as usize / 64].fetch_or(1 << (tag % 64), Ordering::Release);
    }

    /// Dispatches every requeued request (process context). Requests requeued again while
    /// this runs (partial completion, retry) go again, for a bounded number of rounds.
    #[inline]
    pub fn kick(&self) {
        if self.requeue_pending() {
            self.kick_rounds();
        }
    }

    #[inline(never)]
    pub(super) fn kick_rounds(&self) {
        for _ in 0..KICK_ROUNDS {
            if !self.requeue_pending() {
                return;
            }
            self.kick_once();
        }
    }

    pub(super) fn kick_once(&self) {
        let mut batch = Open::new();
        for w in 0..Self::WORDS {
            if self.requeue[w].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = self.requeue[w].swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let tag = (w * 64) as u16 + b as u16;
                let Some(slot) = self.slot(tag) else { continue };
                if slot
                    .state
                    .compare_exchange(REQUEUE, BUILD, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if batch.is_full() {
                        self.dispatch(&batch);
                        batch.clear();
                    }
                    let _ = batch.push(tag);
                }
            }
        }
        self.dispatch(&batch);
    }
}
