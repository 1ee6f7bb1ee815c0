//! Scatter-gather mapping: a read or write request's segments (`Request::map_sg`) into the
//! PRDT of its slot, through a small list for the common case of a few segments.

use blk::{BlkError, QueueRqError, Request, SgEntry};

use super::Ahci;
use crate::cmd::PRDT_ENTRIES;
use crate::sg::write_prdt_sg;

impl Ahci {
    /// The PRDT of a read or write, straight into the slot's table at `table`; (entries,
    /// bytes). Requests of a few segments (most of them) map into a small list; the full
    /// 128-entry list is only built for the others.
    #[inline]
    pub(super) fn map_prdt(
        &self,
        rq: &Request,
        table: usize,
    ) -> Result<(usize, u32), QueueRqError> {
        const SMALL: usize = 4;
        if rq.nr_segments() as usize <= SMALL {
            let mut sg = [SgEntry::default(); SMALL];
            if let Ok(n) = rq.map_sg(&self.limits, &mut sg) {
                return write_prdt_sg(&self.mem, table, &sg[..n], self.limits.dma_limit)
                    .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned));
            }
        }
        self.map_prdt_large(rq, table)
    }

    #[inline(never)]
    fn map_prdt_large(&self, rq: &Request, table: usize) -> Result<(usize, u32), QueueRqError> {
        let mut sg = [SgEntry::default(); PRDT_ENTRIES];
        let n = rq
            .map_sg(&self.limits, &mut sg)
            .map_err(QueueRqError::Fatal)?;
        write_prdt_sg(&self.mem, table, &sg[..n], self.limits.dma_limit)
            .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned))
    }
}
