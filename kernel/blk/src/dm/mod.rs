//! Device-mapper: a device made of a table of targets over other devices ([`table`] parses
//! the dmsetup line format), the targets `linear`, `striped`, `mirror` ([`mirror`]), `error`
//! and `zero`, and dm-io ([`io`]), the service that does I/O to several regions in one call.
//!
//! A [`DmDevice`] is a [`BlockDevice`]: a bio crossing a line of the table is split there (the
//! rest goes back to the device through the submission context), then each target remaps it
//! and hands it on through [`CpuCtx::submit`], so any stack of dm devices, partitions and
//! queues is run by the submission loop without recursion. See `docs/dm.md`.

pub mod io;
pub mod mirror;
pub mod table;

#[cfg(test)]
#[allow(unsafe_code)] // test segments over test buffers
mod tests;

use crate::bio::{Bio, Op, SECTOR_SHIFT, bio_endio, bio_io_error};
use crate::bioset::BioSet;
use crate::device::{BlockDevice, CpuCtx, submit_to_leaf};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::slab::Wait;
use crate::split::{bio_clone_chained, bio_split};
use crate::stats::BlkStats;

use self::io::DmIo;
use self::mirror::{LegWrite, Mirror};
use self::table::{Leg, MAX_LEGS, MAX_TARGETS, Table, TargetKind};

/// One line of a live table.
// A mirror carries its dirty bitmap inline: tables live in static slots, built once, so the
// size of the other variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    /// A window of one device.
    Linear(Leg),
    /// Chunks spread over the legs.
    Striped {
        /// Chunk size in sectors (a power of two).
        chunk: u64,
        /// The legs.
        legs: heapless::Vec<Leg, MAX_LEGS>,
    },
    /// Copies on every leg.
    Mirror(Mirror),
    /// Every I/O fails with `Io`.
    Error,
    /// Reads return zeroes, writes succeed and are dropped.
    Zero,
}

struct Line {
    start: u64,
    len: u64,
    target: Target,
    /// A `linear` line over a request queue (`is_leaf`): its bios go to it directly.
    direct: bool,
}

/// What a dm device needs from its owner: a bio set for splits and flush clones (reserve at
/// least [`MAX_LEGS`] + 1), the dm-io client of its mirrors, the set of its mirrors' direct
/// write bios, and how its allocations wait.
#[derive(Clone, Copy)]
pub struct DmEnv {
    /// Split and clone bios.
    pub split_set: &'static BioSet<()>,
    /// The leg bios of mirror writes with every leg in sync (taken without waiting: when none
    /// is free the write goes through dm-io).
    pub mirror_set: &'static BioSet<LegWrite>,
    /// The dm-io client mirrors use.
    pub io: &'static DmIo,
    /// How allocations wait inside `submit` (the kernel's wait hook).
    pub wait: Wait,
}

/// A mapped device.
pub struct DmDevice {
    lines: heapless::Vec<Line, MAX_TARGETS>,
    len: u64,
    lbs: u32,
    limits: QueueLimits,
    env: DmEnv,
    stats: BlkStats,
    /// Ops every lower device does (bit per [`op_bit`]), fixed at creation.
    ops: u8,
    /// Some lower device refuses writes (fixed at creation).
    ro: bool,
}

fn op_bit(op: Op) -> u8 {
    match op {
        Op::Read => 1,
        Op::Write => 2,
        Op::Flush => 4,
        Op::Discard => 8,
        Op::WriteZeroes => 16,
    }
}

/// The limits a stack meets: the tightest of each.
fn stack_limits(a: &QueueLimits, b: &QueueLimits) -> QueueLimits {
    let mut l = *a;
    l.logical_block_size = a.logical_block_size.max(b.logical_block_size);
    l.max_sectors = a.max_sectors.min(b.max_sectors);
    l.max_segments = a.max_segments.min(b.max_segments);
    l.max_segment_size = a.max_segment_size.min(b.max_segment_size);
    l.seg_boundary_mask = a.seg_boundary_mask.min(b.seg_boundary_mask);
    l.virt_boundary_mask = a.virt_boundary_mask.max(b.virt_boundary_mask);
    l.dma_alignment = a.dma_alignment.max(b.dma_alignment);
    l.dma_limit = a.dma_limit.min(b.dma_limit);
    l.max_discard_sectors = a.max_discard_sectors.min(b.max_discard_sectors);
    l.max_write_zeroes_sectors = a.max_write_zeroes_sectors.min(b.max_write_zeroes_sectors);
    l
}

impl DmDevice {
    /// A device over a parsed table.
    pub fn new(table: Table, env: DmEnv) -> Self {
        let mut lines = heapless::Vec::new();
        let mut limits: Option<QueueLimits> = None;
        let mut lbs = 512u32;
        let len = table.len();
        for t in table.targets {
            let legs: &[Leg] = match &t.kind {
                TargetKind::Linear(l) => core::slice::from_ref(l),
                TargetKind::Striped { legs, .. } | TargetKind::Mirror { legs, .. } => legs,
                TargetKind::Error | TargetKind::Zero => &[],
            };
            for l in legs {
                lbs = lbs.max(l.lower.dev.logical_block_size());
                limits = Some(match limits {
                    None => l.lower.limits,
                    Some(x) => stack_limits(&x, &l.lower.limits),
                });
            }
            let target = match t.kind {
                TargetKind::Linear(l) => Target::Linear(l),
                TargetKind::Striped { chunk, legs } => Target::Striped { chunk, legs },
                TargetKind::Mirror {
                    region,
                    nosync: _,
                    legs,
                } => Target::Mirror(Mirror::new(
                    legs,
                    t.start,
                    t.len,
                    region,
                    env.io,
                    env.mirror_set,
                )),
                TargetKind::Error => Target::Error,
                TargetKind::Zero => Target::Zero,
            };
            let direct = matches!(&target, Target::Linear(l) if l.lower.dev.is_leaf());
            let _ = lines.push(Line {
                start: t.start,
                len: t.len,
                target,
                direct,
            });
        }
        let mut limits = limits.unwrap_or_default();
        limits.logical_block_size = lbs;
        let mut d = DmDevice {
            lines,
            len,
            lbs,
            limits,
            env,
            stats: BlkStats::new(),
            ops: 0,
            ro: false,
        };
        d.ops = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes]
            .into_iter()
            .filter(|&op| d.lower_supports(op))
            .fold(0, |m, op| m | op_bit(op));
        d.ro = d.lower_read_only();
        d
    }

    /// Counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// The limits of the devices below, combined (the tightest of each).
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The targets, with their first sector and length.
    pub fn targets(&self) -> impl Iterator<Item = (u64, u64, &Target)> {
        self.lines.iter().map(|l| (l.start, l.len, &l.target))
    }

    /// The mirrors of the table.
    pub fn mirrors(&'static self) -> impl Iterator<Item = &'static Mirror> {
        self.lines.iter().filter_map(|l| match &l.target {
            Target::Mirror(m) => Some(m),
            _ => None,
        })
    }

    /// Resubmits what the mirrors deferred (reads to retry on another leg). Process context.
    pub fn run_deferred(&'static self, ctx: &CpuCtx) {
        for m in self.mirrors() {
            m.run_deferred(ctx, self.env.wait);
        }
    }

    /// Every lower device of every line, once each, to flush.
    fn flush(&'static self, bio: Bio, ctx: &CpuCtx) {
        let mut seen: heapless::Vec<*const (), { MAX_TARGETS * MAX_LEGS }> = heapless::Vec::new();
        for line in &self.lines {
            let legs: &[Leg] = match &line.target {
                Target::Linear(l) => core::slice::from_ref(l),
                Target::Striped { legs, .. } => legs,
                Target::Mirror(m) => {
                    match bio_clone_chained(&bio, self.env.split_set, self.env.wait) {
                        Ok(c) => m.submit(0, c, ctx, self.env.wait),
                        Err(e) => bio.fail(e),
                    }
                    continue;
                }
                Target::Error | Target::Zero => &[],
            };
            for l in legs {
                let key = l.lower.dev as *const dyn BlockDevice as *const ();
                if seen.contains(&key) {
                    continue;
                }
                let _ = seen.push(key);
                match bio_clone_chained(&bio, self.env.split_set, self.env.wait) {
                    Ok(mut c) => {
                        c.set_dev(l.lower.dev);
                        self.stats.remaps(1);
                        ctx.submit(c);
                    }
                    Err(e) => bio.fail(e),
                }
            }
        }
        bio_endio(bio);
    }

    /// Splits off the part of `bio` before `bytes`, sends the rest back to this device, and
    /// returns the front (or ends `bio` on an error).
    fn cut(&'static self, mut bio: Bio, bytes: u64, ctx: &CpuCtx) -> Option<Bio> {
        if bio.size() as u64 <= bytes {
            return Some(bio);
        }
        match bio_split(&mut bio, bytes as u32, self.env.split_set, self.env.wait) {
            Ok(front) => {
                self.stats.splits(1);
                ctx.submit(bio);
                Some(front)
            }
            Err(e) => {
                self.stats.bio_errors(1);
                bio_io_error(bio, e);
                None
            }
        }
    }
}

/// Zeroes the data segments of a read.
fn zero_fill(bio: &Bio) {
    for v in bio.segments() {
        #[allow(unsafe_code)]
        // SAFETY: `v` is a segment of a read bio in progress, so under the segment contract
        // (`BioVec::new`): memory the device (here this target) may write, reached through
        // `hal`'s translation, owned by the I/O until the bio completes.
        unsafe {
            hal::mem::zero_phys(v.addr(), v.len() as usize)
        };
    }
}

impl DmDevice {
    fn lower_supports(&self, op: Op) -> bool {
        self.lines.iter().all(|l| match &l.target {
            Target::Linear(g) => g.lower.dev.supports(op),
            Target::Striped { legs, .. } => legs.iter().all(|g| g.lower.dev.supports(op)),
            Target::Mirror(m) => m.legs().iter().all(|g| g.lower.dev.supports(op)),
            Target::Error | Target::Zero => true,
        })
    }
    fn lower_read_only(&self) -> bool {
        self.lines.iter().any(|l| match &l.target {
            Target::Linear(g) => g.lower.dev.read_only(),
            Target::Striped { legs, .. } => legs.iter().any(|g| g.lower.dev.read_only()),
            Target::Mirror(m) => m.legs().iter().any(|g| g.lower.dev.read_only()),
            Target::Error | Target::Zero => false,
        })
    }
}

impl BlockDevice for DmDevice {
    fn capacity(&self) -> u64 {
        self.len
    }
    fn logical_block_size(&self) -> u32 {
        self.lbs
    }
    fn supports(&self, op: Op) -> bool {
        self.ops & op_bit(op) != 0
    }
    fn read_only(&self) -> bool {
        self.ro
    }
    fn check(&self, bio: &Bio) -> Result<(), BlkError> {
        // The checks of `check_bio_dev`, on the fields (no virtual call per property).
        let op = bio.op();
        if self.ops & op_bit(op) == 0 {
            return Err(BlkError::Unsupported);
        }
        if op == Op::Flush {
            return if bio.size() == 0 {
                Ok(())
            } else {
                Err(BlkError::InvalidArgument)
            };
        }
        if op.is_write() && self.ro {
            return Err(BlkError::ReadOnly);
        }
        let lbs = self.lbs as u64;
        if !(bio.sector() << SECTOR_SHIFT).is_multiple_of(lbs)
            || !(bio.size() as u64).is_multiple_of(lbs)
        {
            return Err(BlkError::Misaligned);
        }
        match bio.sector().checked_add(bio.sectors()) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(BlkError::OutOfRange),
        }
    }
    fn submit(&'static self, bio: Bio, ctx: &CpuCtx) {
        self.stats.bios_submitted(1);
        if bio.op() == Op::Flush {
            self.flush(bio, ctx);
            return;
        }
        let s = bio.sector();
        let Some(line) = self
            .lines
            .iter()
            .find(|l| s >= l.start && s < l.start + l.len)
        else {
            self.stats.bio_errors(1);
            bio_io_error(bio, BlkError::OutOfRange);
            return;
        };
        let rel = s - line.start;
        let Some(mut bio) = self.cut(bio, (line.len - rel) << SECTOR_SHIFT, ctx) else {
            return;
        };
        match &line.target {
            Target::Linear(l) => {
                bio.set_sector(l.offset + rel);
                bio.set_dev(l.lower.dev);
                self.stats.remaps(1);
                if line.direct {
                    submit_to_leaf(l.lower.dev, bio, ctx);
                    return;
                }
                ctx.submit(bio);
            }
            Target::Striped { chunk, legs } => {
                let room = (chunk - rel % chunk) << SECTOR_SHIFT;
                let Some(mut bio) = self.cut(bio, room, ctx) else {
                    return;
                };
                let n = legs.len() as u64;
                let (c, off) = (rel / chunk, rel % chunk);
                let l = &legs[(c % n) as usize];
                bio.set_sector(l.offset + (c / n) * chunk + off);
                bio.set_dev(l.lower.dev);
                self.stats.remaps(1);
                ctx.submit(bio);
            }
            Target::Mirror(m) => {
                self.stats.remaps(1);
                m.submit(rel, bio, ctx, self.env.wait);
            }
            Target::Error => {
                self.stats.bio_errors(1);
                bio_io_error(bio, BlkError::Io);
            }
            Target::Zero => {
                if bio.op() == Op::Read {
                    zero_fill(&bio);
                }
                bio_endio(bio);
            }
        }
    }
}
