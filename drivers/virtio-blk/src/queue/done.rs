//! The completion list: what a reap or reset pass collected under the lock, and its delivery
//! to the block layer outside it (plumbing every driver has, kept apart from the virtio logic).

use core::sync::atomic::Ordering;

use blk::BlkStatus;

use super::VirtioBlk;

/// One completion: tag and status.
pub(super) type Done = (u16, BlkStatus);

impl VirtioBlk {
    /// Completes `done` to the attached queue, counting completions and errors (called with
    /// the queue lock released).
    pub(super) fn deliver(&self, done: &[Done]) {
        let Some(sink) = self.sink.get() else { return };
        self.stats
            .completions
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        for &(tag, st) in done {
            match st {
                Ok(()) => sink.complete(tag, Ok(()), None),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    sink.complete(tag, Err(e), Some(0));
                }
            }
        }
    }
}
