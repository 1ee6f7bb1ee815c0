//! `map_sg`: a request's segments as the scatter-gather list the hardware reads.
//!
//! It works on the bios alone (a [`BioList`]) and the limits; [`Request::map_sg`] is the
//! wrapper drivers call.
//!
//! [`Request::map_sg`]: crate::Request::map_sg

use hal::PhysAddr;

use crate::bio::BioList;
use crate::error::BlkError;
use crate::limits::QueueLimits;

/// One scatter-gather entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SgEntry {
    /// Physical address.
    pub addr: PhysAddr,
    /// Length in bytes.
    pub len: u32,
}

/// Builds the scatter-gather list of the remaining data of `bios` (a request's) into `out`: physically contiguous segments (across
/// bios too) are merged as long as the entry stays within `max_segment_size` and does not cross
/// a segment boundary. Returns the number of entries; never more than `limits.max_segments` or
/// `out.len()` (`InvalidArgument` if they would not suffice).
#[inline]
pub fn map_sg(
    bios: &BioList,
    limits: &QueueLimits,
    out: &mut [SgEntry],
) -> Result<usize, BlkError> {
    match single_entry(bios, limits) {
        Some(e) => match out.first_mut() {
            Some(o) if limits.max_segments > 0 => {
                *o = e;
                Ok(1)
            }
            _ => Err(BlkError::InvalidArgument),
        },
        None => map_sg_walk(bios, limits, out),
    }
}

/// The general case of [`map_sg`]: walks every segment of every bio.
#[inline(never)]
fn map_sg_walk(
    bios: &BioList,
    limits: &QueueLimits,
    out: &mut [SgEntry],
) -> Result<usize, BlkError> {
    let max = out.len().min(limits.max_segments as usize);
    let mut n = 0usize;
    let mut cur: Option<SgEntry> = None;
    for v in bios.iter().flat_map(|b| b.segments()) {
        let (mut a, mut left) = (v.addr().0, v.len() as u64);
        while left > 0 {
            if let Some(c) = cur.as_mut()
                && c.addr.0 + c.len as u64 == a
            {
                let room = (limits.max_segment_size as u64 - c.len as u64).min(
                    limits
                        .bytes_to_boundary(c.addr.0)
                        .saturating_sub(c.len as u64),
                );
                let take = left.min(room);
                if take > 0 {
                    c.len += take as u32;
                    a += take;
                    left -= take;
                    continue;
                }
            }
            if let Some(c) = cur.take() {
                if n >= max {
                    return Err(BlkError::InvalidArgument);
                }
                out[n] = c;
                n += 1;
            }
            let take = left
                .min(limits.max_segment_size as u64)
                .min(limits.bytes_to_boundary(a));
            cur = Some(SgEntry {
                addr: PhysAddr(a),
                len: take as u32,
            });
            a += take;
            left -= take;
        }
    }
    if let Some(c) = cur {
        if n >= max {
            return Err(BlkError::InvalidArgument);
        }
        out[n] = c;
        n += 1;
    }
    Ok(n)
}

/// The one entry of a request made of one bio whose remaining data sits in one vector that is
/// within the segment size and boundary (the common small I/O), without the general walk.
#[inline]
fn single_entry(bios: &BioList, limits: &QueueLimits) -> Option<SgEntry> {
    let mut bios = bios.iter();
    let bio = bios.next()?;
    if bios.next().is_some() {
        return None;
    }
    let it = bio.iter();
    let v = bio.vecs().get(it.idx as usize)?;
    let len = it.size;
    if len == 0 || Some(len) > v.len().checked_sub(it.done) || len > limits.max_segment_size {
        return None;
    }
    let addr = v.addr().0 + it.done as u64;
    (len as u64 <= limits.bytes_to_boundary(addr)).then_some(SgEntry {
        addr: PhysAddr(addr),
        len,
    })
}
