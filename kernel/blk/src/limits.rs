//! Queue limits, limit checks and split points.

use crate::bio::{Bio, BioVec, Op, SECTOR_SHIFT, SECTOR_SIZE};
use crate::error::BlkError;

/// What a queue's driver (hardware) accepts in one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Smallest unit the device addresses (power of two, 512..=65536).
    pub logical_block_size: u32,
    /// Most 512-byte sectors per request.
    pub max_sectors: u32,
    /// Most scatter-gather segments per request.
    pub max_segments: u16,
    /// Largest scatter-gather segment in bytes.
    pub max_segment_size: u32,
    /// A segment never crosses a multiple of `seg_boundary_mask + 1` (`u64::MAX`: no boundary).
    pub seg_boundary_mask: u64,
    /// NVMe PRP rule, `0` for none: every segment but the first starts on a multiple of
    /// `mask + 1` and every segment but the last ends on one.
    pub virt_boundary_mask: u64,
    /// Segment addresses and lengths are multiples of this (power of two).
    pub dma_alignment: u32,
    /// Highest address the device can reach; segments above go through bounce buffers.
    pub dma_limit: u64,
    /// Requests never cross a multiple of this many sectors (`0`: no chunks).
    pub chunk_sectors: u32,
    /// Most sectors per discard (`0`: discard unsupported).
    pub max_discard_sectors: u32,
    /// Most sectors per write-zeroes (`0`: unsupported).
    pub max_write_zeroes_sectors: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueLimits {
    /// Permissive defaults: 512-byte blocks, 1 MiB requests, 128 segments of up to 64 KiB.
    pub const fn new() -> Self {
        QueueLimits {
            logical_block_size: 512,
            max_sectors: 2048,
            max_segments: 128,
            max_segment_size: 65536,
            seg_boundary_mask: u64::MAX,
            virt_boundary_mask: 0,
            dma_alignment: 4,
            dma_limit: u64::MAX,
            chunk_sectors: 0,
            max_discard_sectors: 0,
            max_write_zeroes_sectors: 0,
        }
    }

    /// Checks the limits are consistent.
    pub fn validate(&self) -> Result<(), BlkError> {
        let l = self;
        let pow2_mask = |m: u64| m.wrapping_add(1) & m == 0;
        let ok = l.logical_block_size.is_power_of_two()
            && (SECTOR_SIZE..=65536).contains(&l.logical_block_size)
            && (l.max_sectors as u64) << SECTOR_SHIFT >= l.logical_block_size as u64
            && (l.max_sectors as u64) << SECTOR_SHIFT <= u32::MAX as u64
            && l.max_segments >= 1
            && l.max_segment_size >= 512
            && l.dma_alignment.is_power_of_two()
            && l.dma_alignment <= 4096
            && l.max_segment_size.is_multiple_of(l.dma_alignment)
            && pow2_mask(l.seg_boundary_mask)
            && l.seg_boundary_mask >= 511
            && (l.virt_boundary_mask == 0
                || (pow2_mask(l.virt_boundary_mask)
                    && l.virt_boundary_mask >= 511
                    && l.virt_boundary_mask < l.seg_boundary_mask
                    && l.max_segment_size == u32::MAX))
            && l.dma_limit >= 4095
            && (l.chunk_sectors == 0
                || (l.chunk_sectors.is_power_of_two()
                    && l.chunk_sectors << SECTOR_SHIFT >= l.logical_block_size));
        if ok {
            Ok(())
        } else {
            Err(BlkError::InvalidLimits)
        }
    }

    /// Most bytes per request.
    pub fn max_bytes(&self) -> u32 {
        ((self.max_sectors as u64) << SECTOR_SHIFT).min(u32::MAX as u64) as u32
    }

    /// Bytes of segment memory at `addr` before the next segment boundary.
    pub fn bytes_to_boundary(&self, addr: u64) -> u64 {
        if self.seg_boundary_mask == u64::MAX {
            u64::MAX
        } else {
            (addr | self.seg_boundary_mask) - addr + 1
        }
    }

    /// Whether segment `next` may follow segment `prev` in one request under the virt boundary.
    pub fn virt_gap(&self, prev: &BioVec, next: &BioVec) -> bool {
        let m = self.virt_boundary_mask;
        m != 0 && (prev.end() & m != 0 || next.addr().0 & m != 0)
    }

    /// How many scatter-gather segments `v` needs on its own (boundary and size cuts).
    pub fn pieces(&self, v: &BioVec) -> u32 {
        let (mut a, mut left, mut n) = (v.addr().0, v.len() as u64, 0);
        while left > 0 {
            let piece = left
                .min(self.max_segment_size as u64)
                .min(self.bytes_to_boundary(a));
            a += piece;
            left -= piece;
            n += 1;
        }
        n
    }

    /// Segments a bio needs (the sum of its pieces; `map_sg` never needs more).
    pub fn bio_segments(&self, bio: &Bio) -> u32 {
        bio.segments().map(|v| self.pieces(&v)).sum()
    }

    /// Whether any segment of `bio` reaches above `dma_limit`.
    pub fn needs_bounce(&self, bio: &Bio) -> bool {
        self.dma_limit != u64::MAX && bio.segments().any(|v| v.end() - 1 > self.dma_limit)
    }
}

/// Refuses bios the device can never take: misaligned sector, size or buffers, unsupported ops.
pub fn check_bio(l: &QueueLimits, bio: &Bio) -> Result<(), BlkError> {
    let lbs = l.logical_block_size as u64;
    match bio.op() {
        Op::Flush => return Ok(()),
        Op::Discard if l.max_discard_sectors == 0 => return Err(BlkError::Unsupported),
        Op::WriteZeroes if l.max_write_zeroes_sectors == 0 => return Err(BlkError::Unsupported),
        _ => {}
    }
    if !(bio.sector() << SECTOR_SHIFT).is_multiple_of(lbs)
        || !(bio.size() as u64).is_multiple_of(lbs)
    {
        return Err(BlkError::Misaligned);
    }
    if bio.op().has_data() {
        let a = l.dma_alignment as u64 - 1;
        if bio
            .segments()
            .any(|v| v.addr().0 & a != 0 || v.len() as u64 & a != 0)
        {
            return Err(BlkError::Misaligned);
        }
    }
    Ok(())
}

/// Bytes of the largest front part of `bio` that obeys the limits (`extra_max` caps the size
/// further), or `None` if the whole bio fits. The split point is a multiple of the logical
/// block size; `Misaligned` if no such non-empty front part exists.
pub fn split_point(
    l: &QueueLimits,
    bio: &Bio,
    extra_max: Option<u32>,
) -> Result<Option<u32>, BlkError> {
    let size = bio.size();
    let lbs = l.logical_block_size;
    let mut max_bytes = match bio.op() {
        Op::Flush => return Ok(None),
        Op::Discard => (l.max_discard_sectors as u64) << SECTOR_SHIFT,
        Op::WriteZeroes => (l.max_write_zeroes_sectors as u64) << SECTOR_SHIFT,
        Op::Read | Op::Write => l.max_bytes() as u64,
    };
    if l.chunk_sectors != 0 {
        let c = l.chunk_sectors as u64;
        max_bytes = max_bytes.min((c - bio.sector() % c) << SECTOR_SHIFT);
    }
    if let Some(e) = extra_max {
        max_bytes = max_bytes.min(e as u64);
    }
    let max_bytes = max_bytes.min(u32::MAX as u64) as u32;
    let cut = |b: u32| -> Result<Option<u32>, BlkError> {
        let b = b / lbs * lbs;
        if b >= size {
            Ok(None)
        } else if b == 0 {
            Err(BlkError::Misaligned)
        } else {
            Ok(Some(b))
        }
    };
    if !bio.op().has_data() {
        return if size > max_bytes {
            cut(max_bytes)
        } else {
            Ok(None)
        };
    }
    let (mut bytes, mut nsegs) = (0u32, 0u32);
    let mut prev: Option<BioVec> = None;
    for v in bio.segments() {
        if let Some(p) = prev
            && l.virt_gap(&p, &v)
        {
            return cut(bytes);
        }
        let (mut a, mut left) = (v.addr().0, v.len());
        while left > 0 {
            let piece = (left as u64)
                .min(l.max_segment_size as u64)
                .min(l.bytes_to_boundary(a)) as u32;
            if nsegs + 1 > l.max_segments as u32 {
                return cut(bytes);
            }
            if bytes as u64 + piece as u64 > max_bytes as u64 {
                return cut(max_bytes);
            }
            nsegs += 1;
            bytes += piece;
            a += piece as u64;
            left -= piece;
        }
        prev = Some(v);
    }
    Ok(None)
}
