//! [`block_range`]: where a request starts and how long it is, in the device's blocks.

use crate::bio::SECTOR_SHIFT;
use crate::error::BlkError;
use crate::request::Request;

/// A request's range in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (at least 1).
    pub blocks: u32,
}

/// The range of `rq` (a read, write, discard or write-zeroes) on a device of
/// `1 << block_shift`-byte blocks (`9..=16`) that takes at most `max_blocks` per command.
///
/// `Misaligned` if the start or the size is not a whole number of blocks; `InvalidArgument`
/// if the size is zero or above `max_blocks`. The queue's limits normally rule all of these
/// out; this is the driver's check before it writes a command.
#[inline]
pub fn block_range(
    rq: &Request,
    block_shift: u32,
    max_blocks: u32,
) -> Result<BlockRange, BlkError> {
    let mask = (1u64 << block_shift) - 1;
    let start = rq.sector() << SECTOR_SHIFT;
    let bytes = rq.bytes() as u64;
    if (start | bytes) & mask != 0 {
        return Err(BlkError::Misaligned);
    }
    let blocks = bytes >> block_shift;
    if blocks == 0 || blocks > max_blocks as u64 {
        return Err(BlkError::InvalidArgument);
    }
    Ok(BlockRange {
        lba: start >> block_shift,
        blocks: blocks as u32,
    })
}
