//! Scatter-gather mapping by size class: a request is mapped into the smallest stack array
//! that holds its segments (small chains for the common one- and two-segment requests, the
//! full [`MAX_SEGMENTS`] array only for big ones; `submit::add_locked` then picks the chain array
//! of the same class). Plumbing every driver has, kept apart from the virtio logic.

use blk::{BlkError, QueueRqError, Request};

use super::VirtioBlk;
use crate::MAX_SEGMENTS;
use crate::hal_impl::{SMALL_CHAIN, TINY_CHAIN};

impl VirtioBlk {
    /// Maps and adds `rq` with the smallest scatter-gather array that holds it.
    pub(super) fn submit(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let segs = rq.nr_segments() as usize;
        // More entries than segments (a boundary cut) fail with `InvalidArgument`: the next
        // larger size.
        if segs <= TINY_CHAIN - 2 {
            match self.submit_n::<{ TINY_CHAIN - 2 }>(rq, last) {
                Err(QueueRqError::Fatal(BlkError::InvalidArgument)) => {}
                r => return r,
            }
        }
        if segs <= SMALL_CHAIN - 2 {
            match self.submit_n::<{ SMALL_CHAIN - 2 }>(rq, last) {
                Err(QueueRqError::Fatal(BlkError::InvalidArgument)) => {}
                r => return r,
            }
        }
        self.submit_n::<{ MAX_SEGMENTS as usize }>(rq, last)
    }
}
