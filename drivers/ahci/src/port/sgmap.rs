//! Scatter-gather mapping: a read or write request's segments (`Request::map_sg`) into the
//! PRDT of its slot, through a small list for the common case of a few segments.

use blk::driver::with_sg;
use blk::{BlkError, QueueRqError, Request};

use super::Ahci;
use crate::cmd::PRDT_ENTRIES;
use crate::sg::write_prdt_sg;

impl Ahci {
    /// The PRDT of a read or write, straight into the slot's table at `table`; (entries,
    /// bytes). Requests of a few segments (most of them) map into a small list; the full
    /// 128-entry list is only built (out of line) for the others.
    #[inline]
    pub(super) fn map_prdt(
        &self,
        rq: &Request,
        table: usize,
    ) -> Result<(usize, u32), QueueRqError> {
        with_sg::<4, PRDT_ENTRIES, _>(
            rq,
            &self.limits,
            #[inline(always)]
            |sg| write_prdt_sg(&self.mem, table, sg, self.limits.dma_limit),
        )
        .map_err(QueueRqError::Fatal)?
        .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned))
    }
}
