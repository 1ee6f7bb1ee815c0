//! Stacked devices: a linear window of a lower device (also what a partition is) and a
//! striped device. They remap bios and hand them on through the submission context, so
//! stacking never deepens the call stack.

use crate::bio::{Bio, Op, SECTOR_SHIFT, bio_endio, bio_io_error};
use crate::bioset::BioSet;
use crate::device::{BlockDevice, CpuCtx, submit_to_leaf};
use crate::error::BlkError;
use crate::partition::PartEntry;
use crate::slab::Wait;
use crate::split::{bio_clone_chained, bio_split};
use crate::stats::BlkStats;

/// Sectors `[start, start + len)` of a lower device, seen as a device of `len` sectors.
/// A bio reaching past `len` is refused before the remap, so I/O never leaves the window.
pub struct Linear {
    lower: &'static dyn BlockDevice,
    /// `lower.is_leaf()`: remapped bios go to it directly, not through the submission context.
    direct: bool,
    start: u64,
    len: u64,
    read_only: bool,
    stats: BlkStats,
}

impl Linear {
    /// A window of `lower`; `OutOfRange` if it does not fit, `Misaligned` if `start` or `len`
    /// are not multiples of the lower logical block size.
    pub fn new(lower: &'static dyn BlockDevice, start: u64, len: u64) -> Result<Self, BlkError> {
        let end = start.checked_add(len).ok_or(BlkError::OutOfRange)?;
        if end > lower.capacity() {
            return Err(BlkError::OutOfRange);
        }
        let lbs_sectors = (lower.logical_block_size() >> SECTOR_SHIFT) as u64;
        if !start.is_multiple_of(lbs_sectors) || !len.is_multiple_of(lbs_sectors) {
            return Err(BlkError::Misaligned);
        }
        Ok(Linear {
            lower,
            direct: lower.is_leaf(),
            start,
            len,
            read_only: false,
            stats: BlkStats::new(),
        })
    }

    /// A partition of `disk`.
    pub fn partition(disk: &'static dyn BlockDevice, p: &PartEntry) -> Result<Self, BlkError> {
        Self::new(disk, p.start, p.sectors)
    }

    /// Refuses writes through this window.
    pub fn set_read_only(&mut self, ro: bool) {
        self.read_only = ro;
    }

    /// Counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// First sector on the lower device.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl BlockDevice for Linear {
    fn capacity(&self) -> u64 {
        self.len
    }
    fn logical_block_size(&self) -> u32 {
        self.lower.logical_block_size()
    }
    fn read_only(&self) -> bool {
        self.read_only || self.lower.read_only()
    }
    fn supports(&self, op: Op) -> bool {
        self.lower.supports(op)
    }
    fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
        self.stats.bios_submitted(1);
        if bio.op() != Op::Flush {
            let in_range = bio
                .sector()
                .checked_add(bio.sectors())
                .is_some_and(|end| end <= self.len);
            let Some(lower_sector) = bio.sector().checked_add(self.start).filter(|_| in_range)
            else {
                self.stats.bio_errors(1);
                bio_io_error(bio, BlkError::OutOfRange);
                return;
            };
            bio.set_sector(lower_sector);
        }
        bio.set_dev(self.lower);
        self.stats.remaps(1);
        if self.direct {
            // A request queue below (a partition of a disk).
            submit_to_leaf(self.lower, bio, ctx);
            return;
        }
        ctx.submit(bio);
    }
}

/// `N` devices striped in chunks of `chunk_sectors`: chunk `c` lives on leg `c % N` at chunk
/// `c / N`. Bios crossing a chunk boundary are split there; a flush goes to every leg.
pub struct Striped<const N: usize> {
    legs: [&'static dyn BlockDevice; N],
    chunk: u64,
    len: u64,
    split_set: &'static BioSet<()>,
    wait: Wait,
    stats: BlkStats,
}

impl<const N: usize> Striped<N> {
    /// A striped device; `InvalidArgument` unless `chunk_sectors` is a power of two and a
    /// multiple of every leg's block size, and `N >= 1`.
    pub fn new(
        legs: [&'static dyn BlockDevice; N],
        chunk_sectors: u64,
        split_set: &'static BioSet<()>,
        wait: Wait,
    ) -> Result<Self, BlkError> {
        if N == 0 || !chunk_sectors.is_power_of_two() {
            return Err(BlkError::InvalidArgument);
        }
        if legs
            .iter()
            .any(|l| !chunk_sectors.is_multiple_of((l.logical_block_size() >> SECTOR_SHIFT) as u64))
        {
            return Err(BlkError::Misaligned);
        }
        let per_leg =
            legs.iter().map(|l| l.capacity()).min().unwrap_or(0) / chunk_sectors * chunk_sectors;
        Ok(Striped {
            legs,
            chunk: chunk_sectors,
            len: per_leg * N as u64,
            split_set,
            wait,
            stats: BlkStats::new(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Leg and leg sector of sector `s`.
    pub fn map(&self, s: u64) -> (usize, u64) {
        let (c, off) = (s / self.chunk, s % self.chunk);
        ((c % N as u64) as usize, (c / N as u64) * self.chunk + off)
    }
}

impl<const N: usize> BlockDevice for Striped<N> {
    fn capacity(&self) -> u64 {
        self.len
    }
    fn logical_block_size(&self) -> u32 {
        self.legs
            .iter()
            .map(|l| l.logical_block_size())
            .max()
            .unwrap_or(512)
    }
    fn read_only(&self) -> bool {
        self.legs.iter().any(|l| l.read_only())
    }
    fn supports(&self, op: Op) -> bool {
        self.legs.iter().all(|l| l.supports(op))
    }
    fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
        self.stats.bios_submitted(1);
        if bio.op() == Op::Flush {
            for leg in self.legs {
                match bio_clone_chained(&bio, self.split_set, self.wait) {
                    Ok(mut c) => {
                        c.set_dev(leg);
                        self.stats.remaps(1);
                        ctx.submit(c);
                    }
                    Err(e) => bio.fail(e),
                }
            }
            bio_endio(bio);
            return;
        }
        if bio.end_sector() > self.len {
            self.stats.bio_errors(1);
            bio_io_error(bio, BlkError::OutOfRange);
            return;
        }
        let room = (self.chunk - bio.sector() % self.chunk) << SECTOR_SHIFT;
        if bio.size() as u64 > room {
            match bio_split(&mut bio, room as u32, self.split_set, self.wait) {
                Ok(front) => {
                    self.stats.splits(1);
                    // The rest comes back to this device after the front went down.
                    ctx.submit(bio);
                    bio = front;
                }
                Err(e) => {
                    self.stats.bio_errors(1);
                    bio_io_error(bio, e);
                    return;
                }
            }
        }
        let (leg, s) = self.map(bio.sector());
        bio.set_sector(s);
        bio.set_dev(self.legs[leg]);
        self.stats.remaps(1);
        ctx.submit(bio);
    }
}
