//! Completion batches: completions gathered while the queue locks are held, handed to the
//! block layer (`TagComplete`) after they are let go.

use core::sync::atomic::Ordering;

use blk::BlkStatus;
use blk::error::{status_code, status_from_code};

use crate::ctrl::{Nvme, QUEUE_DEPTH};

/// One completion to hand to the block layer.
#[derive(Clone, Copy)]
pub(crate) struct Done {
    tag: u16,
    status: u32,
    result: u32,
    pt: bool,
}

/// Completions gathered under the locks, delivered after them. The interrupt path uses a
/// small batch ([`BATCH`]; a full batch leaves the reap pending for another pass), the cold
/// paths (bring-up, reset, waits for admin commands) room for every tag.
pub(crate) struct DoneList<const N: usize = QUEUE_DEPTH> {
    pub(crate) items: [Done; N],
    pub(crate) n: usize,
}

/// Completions delivered per pass of the interrupt path.
pub(crate) const BATCH: usize = 16;

impl<const N: usize> DoneList<N> {
    pub(crate) fn new() -> Self {
        DoneList {
            items: [Done {
                tag: 0,
                status: 0,
                result: 0,
                pt: false,
            }; N],
            n: 0,
        }
    }
    pub(crate) fn is_full(&self) -> bool {
        self.n == self.items.len()
    }
    pub(crate) fn push(&mut self, tag: u16, st: BlkStatus, result: u32, pt: bool) {
        if let Some(d) = self.items.get_mut(self.n) {
            *d = Done {
                tag,
                status: status_code(st),
                result,
                pt,
            };
            self.n += 1;
        }
    }
}

impl Nvme {
    /// Hands the gathered completions to the block layer (after the locks are let go).
    pub(crate) fn deliver<const N: usize>(&self, done: &DoneList<N>) {
        let Some(sink) = self.sink.get() else { return };
        if done.n == 0 {
            return;
        }
        self.stats
            .completions
            .fetch_add(done.n as u64, Ordering::Relaxed);
        for d in &done.items[..done.n] {
            let st = status_from_code(d.status);
            if st.is_err() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            if d.pt {
                sink.complete_pt(d.tag, st, d.result as u64);
            } else {
                sink.complete(d.tag, st, if st.is_err() { Some(0) } else { None });
            }
        }
    }
}
