//! Scatter-gather lists of a read or write: a small list on the stack for requests of a few
//! segments, a full one out of line for the rest.

use blk::{QueueRqError, Request, SgEntry};

use crate::cmd::DataPtr;
use crate::ctrl::{MAX_SEGMENTS, Nvme};

/// Scatter-gather entries of the list on the stack for small requests.
const SMALL_SG: usize = 4;

impl Nvme {
    /// The data pointer of a read or write: requests of a few segments map into a small
    /// list on the stack (clearing a `MAX_SEGMENTS` list for each of them was ~300
    /// instructions), bigger ones take the general path.
    pub(crate) fn map_data(&self, rq: &Request) -> Result<DataPtr, QueueRqError> {
        if rq.nr_segments() as usize <= SMALL_SG {
            let mut sg = [SgEntry::default(); SMALL_SG];
            if let Ok(n) = rq.map_sg(&self.limits, &mut sg) {
                return self.data_ptr(rq.tag(), &sg[..n]);
            }
        }
        self.map_data_large(rq)
    }

    #[inline(never)]
    fn map_data_large(&self, rq: &Request) -> Result<DataPtr, QueueRqError> {
        let mut sg = [SgEntry::default(); MAX_SEGMENTS];
        let n = rq
            .map_sg(&self.limits, &mut sg)
            .map_err(QueueRqError::Fatal)?;
        self.data_ptr(rq.tag(), &sg[..n])
    }
}
