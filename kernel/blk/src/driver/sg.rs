//! [`with_sg`]: a request's scatter-gather list on the stack, in a small array when it fits
//! and in a large one (out of line) otherwise.

use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::map_sg::SgEntry;
use crate::request::Request;

/// Maps `rq` with `limits` (see [`map_sg`](crate::map_sg())) and calls `f` with the entries.
///
/// Requests of at most `SMALL` segments (most of them) map into a `SMALL`-entry array inlined
/// in the caller; the others (and any that would not fit the small array after all) map into
/// a `LARGE`-entry array in a separate, never-inlined function, so the common path neither
/// reserves nor clears the large array. `LARGE` should be the driver's `max_segments`.
/// Errors of the mapping (`InvalidArgument`: the entries would exceed `LARGE` or
/// `limits.max_segments`) are returned; `f` is then not called.
#[inline]
pub fn with_sg<const SMALL: usize, const LARGE: usize, R>(
    rq: &Request,
    limits: &QueueLimits,
    f: impl FnOnce(&[SgEntry]) -> R,
) -> Result<R, BlkError> {
    if rq.nr_segments() as usize <= SMALL {
        let mut sg = [SgEntry::default(); SMALL];
        if let Ok(n) = rq.map_sg(limits, &mut sg) {
            return Ok(f(&sg[..n]));
        }
    }
    with_sg_large::<LARGE, R>(rq, limits, f)
}

/// The large path of [`with_sg`].
#[inline(never)]
fn with_sg_large<const LARGE: usize, R>(
    rq: &Request,
    limits: &QueueLimits,
    f: impl FnOnce(&[SgEntry]) -> R,
) -> Result<R, BlkError> {
    let mut sg = [SgEntry::default(); LARGE];
    let n = rq.map_sg(limits, &mut sg)?;
    Ok(f(&sg[..n]))
}
