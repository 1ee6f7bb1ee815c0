//! The `mirror` target: N legs holding the same data.
//!
//! - A write goes to every leg in service (in sync, or being resynced) through dm-io, and
//!   completes when every leg answered: successfully if at least one in-sync leg took it. A leg
//!   that fails a write (or a flush) is marked failed and leaves service; the device stays up,
//!   degraded, and says so ([`Mirror::status`], [`Mirror::take_events`]).
//! - A read goes to one in-sync leg (round robin); on an error it is retried on another
//!   in-sync leg not tried yet. The retry is submitted from process context
//!   ([`Mirror::run_deferred`]), never from the completion.
//! - Flush, FUA and PREFLUSH reach every leg in service.
//! - While a leg is out of service, every write marks its regions in a dirty bitmap (static,
//!   [`DIRTY_REGIONS`] regions; the region size is doubled until the device fits).
//!   [`Mirror::restore_leg`] brings a leg back by copying only the dirty regions to it.
//!
//! The bitmap lives in memory only: what a power cut leaves is described in `docs/dm.md`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::bio::{Bio, BioFlags, Op, SECTOR_SHIFT, bio_endio, bio_io_error};
use crate::bioset::BioSet;
use crate::device::{CpuCtx, submit_to_leaf};
use crate::dm::io::{DmIo, IoDone, IoNotify, IoRequest, Mem, Region};
use crate::dm::table::{Leg, MAX_LEGS};
use crate::error::BlkError;
use crate::mem::DmaRegion;
use crate::slab::Wait;
use crate::tag::TagSet;

/// Regions the dirty bitmap tracks.
pub const DIRTY_REGIONS: usize = 4096;
const DIRTY_WORDS: usize = DIRTY_REGIONS / 64;
/// Reads waiting for a retry on another leg at once (more fail with the leg's error).
pub const RETRY_SLOTS: usize = 32;
/// Writes the direct path has in flight at once per mirror (more go through dm-io).
pub const WRITE_SLOTS: usize = 64;
/// Resync passes at most before [`Mirror::restore_leg`] gives up (writes keep dirtying).
pub const RESYNC_PASSES: u32 = 8;

/// A leg's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegState {
    /// In service: reads and writes.
    InSync,
    /// Out of service (failed a write or a flush, or taken out).
    Failed,
    /// Being resynced: gets writes, no reads.
    Resyncing,
}

/// A snapshot of a mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorStatus {
    /// Legs.
    pub legs: usize,
    /// Each leg's state (`legs` first entries).
    pub state: [LegState; MAX_LEGS],
    /// Legs in sync.
    pub in_sync: usize,
    /// Regions marked dirty.
    pub dirty_regions: usize,
    /// Region size in sectors.
    pub region_sectors: u64,
    /// Writes a leg failed so far.
    pub write_errors: u64,
    /// Reads a leg failed so far.
    pub read_errors: u64,
    /// Reads retried on another leg.
    pub read_retries: u64,
}

impl MirrorStatus {
    /// Whether some leg is out of sync.
    pub fn degraded(&self) -> bool {
        self.in_sync < self.legs
    }
}

/// What [`Mirror::restore_leg`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncReport {
    /// Regions copied (a region dirtied again during the copy counts twice).
    pub regions_copied: u64,
    /// Passes over the bitmap.
    pub passes: u32,
}

/// Why a resync stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncError {
    /// No such leg.
    NoLeg,
    /// The leg is in sync already.
    InSync,
    /// No in-sync leg to copy from.
    NoSource,
    /// Reading from the source failed.
    Read(BlkError),
    /// Writing the leg failed (it is failed again).
    Write(BlkError),
    /// Writes kept dirtying regions for [`RESYNC_PASSES`] passes.
    Busy,
}

/// Kinds of call kept in the dm-io word.
const K_READ: usize = 0;
const K_WRITE: usize = 1;

fn word(kind: usize, legs: u32) -> usize {
    kind | (legs as usize) << 8
}

/// The front pad of the bios a mirror sends to its legs on the direct write path: which
/// mirror, write slot and leg.
#[derive(Clone, Copy)]
pub struct LegWrite {
    mirror: &'static Mirror,
    slot: u16,
    leg: u8,
}

/// One write on the direct path: the mirror's bio, parked until every leg answered.
struct WriteSlot {
    /// Touched only by the slot's owner: the builder, then the last leg completion (the tag
    /// and `remaining` order them), so the lock is never contended.
    parent: spin::Mutex<Option<Bio>>,
    /// Leg bios not completed yet.
    remaining: AtomicU32,
    /// Bit `i`: leg `i` failed this write.
    failed: AtomicU32,
}

impl WriteSlot {
    const fn new() -> Self {
        WriteSlot {
            parent: spin::Mutex::new(None),
            remaining: AtomicU32::new(0),
            failed: AtomicU32::new(0),
        }
    }
}

/// The mirror target's state.
pub struct Mirror {
    legs: heapless::Vec<Leg, MAX_LEGS>,
    /// Bit `i`: leg `i` is failed.
    failed: AtomicU32,
    /// Bit `i`: leg `i` is being resynced.
    resyncing: AtomicU32,
    /// First sector of the target in its mapped device.
    start: u64,
    len: u64,
    region_shift: u32,
    dirty: [AtomicU64; DIRTY_WORDS],
    rr: AtomicU32,
    io: &'static DmIo,
    /// Leg bios of the direct write path.
    set: &'static BioSet<LegWrite>,
    /// Bit `i`: leg `i` is a request queue (`is_leaf`): its bios are submitted to it directly.
    leaf: u32,
    write_tags: TagSet,
    writes: [WriteSlot; WRITE_SLOTS],
    retry_tags: TagSet,
    retry: [spin::Mutex<Option<(Bio, usize)>>; RETRY_SLOTS],
    retry_ready: AtomicU32,
    write_errors: AtomicU64,
    read_errors: AtomicU64,
    read_retries: AtomicU64,
    /// Leg failures not yet reported ([`Mirror::take_events`]).
    events: AtomicU32,
}

impl Mirror {
    /// A mirror of `legs` covering sectors `start..start + len` of its device, with dirty
    /// regions of at least `region` sectors, doing its I/O with `io` (and plain writes with
    /// every leg in sync with bios from `set`, see [`Mirror::submit`]).
    pub fn new(
        legs: heapless::Vec<Leg, MAX_LEGS>,
        start: u64,
        len: u64,
        region: u64,
        io: &'static DmIo,
        set: &'static BioSet<LegWrite>,
    ) -> Self {
        let mut shift = region.max(1).trailing_zeros();
        while (len >> shift) >= DIRTY_REGIONS as u64 {
            shift += 1;
        }
        let leaf = legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.lower.dev.is_leaf())
            .fold(0, |m, (i, _)| m | 1 << i);
        Mirror {
            legs,
            failed: AtomicU32::new(0),
            resyncing: AtomicU32::new(0),
            start,
            len,
            region_shift: shift,
            dirty: [const { AtomicU64::new(0) }; DIRTY_WORDS],
            rr: AtomicU32::new(0),
            io,
            set,
            leaf,
            write_tags: TagSet::new(WRITE_SLOTS),
            writes: [const { WriteSlot::new() }; WRITE_SLOTS],
            retry_tags: TagSet::new(RETRY_SLOTS),
            retry: [const { spin::Mutex::new(None) }; RETRY_SLOTS],
            retry_ready: AtomicU32::new(0),
            write_errors: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            read_retries: AtomicU64::new(0),
            events: AtomicU32::new(0),
        }
    }

    /// The legs.
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Leg `i`'s state.
    pub fn leg_state(&self, i: usize) -> LegState {
        let bit = 1 << i;
        if self.failed.load(Ordering::Acquire) & bit != 0 {
            LegState::Failed
        } else if self.resyncing.load(Ordering::Acquire) & bit != 0 {
            LegState::Resyncing
        } else {
            LegState::InSync
        }
    }

    fn set_state(&self, i: usize, s: LegState) {
        let bit = 1u32 << i;
        match s {
            LegState::Failed => {
                self.failed.fetch_or(bit, Ordering::AcqRel);
                self.resyncing.fetch_and(!bit, Ordering::AcqRel);
            }
            LegState::Resyncing => {
                self.resyncing.fetch_or(bit, Ordering::AcqRel);
                self.failed.fetch_and(!bit, Ordering::AcqRel);
            }
            LegState::InSync => {
                self.failed.fetch_and(!bit, Ordering::AcqRel);
                self.resyncing.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Legs serving reads and writes.
    fn in_sync_mask(&self) -> u32 {
        self.all() & !(self.failed.load(Ordering::Acquire) | self.resyncing.load(Ordering::Acquire))
    }

    /// Legs getting writes (in sync or resyncing).
    fn active_mask(&self) -> u32 {
        self.all() & !self.failed.load(Ordering::Acquire)
    }

    /// The current state.
    pub fn status(&self) -> MirrorStatus {
        let mut state = [LegState::Failed; MAX_LEGS];
        for (i, s) in state.iter_mut().enumerate().take(self.legs.len()) {
            *s = self.leg_state(i);
        }
        MirrorStatus {
            legs: self.legs.len(),
            state,
            in_sync: self.in_sync_mask().count_ones() as usize,
            dirty_regions: self
                .dirty
                .iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
                .sum(),
            region_sectors: 1 << self.region_shift,
            write_errors: self.write_errors.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            read_retries: self.read_retries.load(Ordering::Relaxed),
        }
    }

    /// Leg failures since the last call (to log from process context).
    pub fn take_events(&self) -> u32 {
        if self.events.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.events.swap(0, Ordering::Relaxed)
    }

    /// Takes leg `i` out of service (its writes are recorded in the dirty bitmap from now on).
    pub fn fail_leg(&self, i: usize) -> bool {
        if i >= self.legs.len() {
            return false;
        }
        if self.leg_state(i) != LegState::Failed {
            self.set_state(i, LegState::Failed);
            self.events.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Marks the regions of `rel..rel + sectors` dirty.
    fn mark_dirty(&self, rel: u64, sectors: u64) {
        let first = rel >> self.region_shift;
        let last = (rel + sectors.max(1) - 1) >> self.region_shift;
        for r in first..=last.min(DIRTY_REGIONS as u64 - 1) {
            self.dirty[(r / 64) as usize].fetch_or(1 << (r % 64), Ordering::AcqRel);
        }
    }

    fn region(&self, leg: usize, rel: u64, count: u64) -> Region {
        let l = &self.legs[leg];
        Region {
            dev: l.lower.dev,
            sector: l.offset + rel,
            count,
            limits: l.lower.limits,
        }
    }

    /// Maps a bio at `rel` sectors into the target (already inside it).
    ///
    /// A write with every leg in sync takes the direct path: one bio per leg from the
    /// mirror's own set (the same segments, allocated without waiting), handed to each leg
    /// that is a request queue straight after its `check` (others through `ctx`), the
    /// mirror's bio parked in a write slot until the last leg answers. Anything else (a leg
    /// out of service, no slot or no bio free at once, other ops) goes through dm-io, whose
    /// reserve guarantees progress.
    pub fn submit(&'static self, rel: u64, bio: Bio, ctx: &CpuCtx, wait: Wait) {
        let bio = if bio.op() == Op::Write {
            match self.write_direct(rel, bio, ctx) {
                Ok(()) => return,
                Err(b) => b,
            }
        } else {
            bio
        };
        match bio.op() {
            Op::Read => {
                let Some(leg) = self.pick_read_leg(0) else {
                    bio_io_error(bio, BlkError::Io);
                    return;
                };
                self.read_from(leg, 1 << leg, rel, bio, ctx, wait);
            }
            op => {
                let legs = self.active_mask();
                if legs == 0 {
                    bio_io_error(bio, BlkError::Io);
                    return;
                }
                let sectors = bio.sectors();
                let out = legs != self.in_sync_mask() || legs != self.all();
                if op != Op::Flush && out {
                    self.mark_dirty(rel, sectors);
                }
                let mut regions = heapless::Vec::<Region, MAX_LEGS>::new();
                for i in 0..self.legs.len() {
                    if legs & (1 << i) != 0 {
                        let _ = regions.push(self.region(i, rel, sectors));
                    }
                }
                let req = IoRequest {
                    op,
                    flags: bio.flags() & (BioFlags::FUA | BioFlags::PREFLUSH | BioFlags::SYNC),
                    regions: &regions,
                };
                let mem = if op.has_data() {
                    Mem::Parked
                } else {
                    Mem::None
                };
                if let Err((e, b)) =
                    self.io
                        .run_async(ctx, &req, mem, Some(bio), self, word(K_WRITE, legs), wait)
                    && let Some(b) = b
                {
                    bio_io_error(b, e);
                }
            }
        }
    }

    /// The direct write path (see [`Mirror::submit`]); hands `bio` back if it cannot be taken.
    fn write_direct(&'static self, rel: u64, bio: Bio, ctx: &CpuCtx) -> Result<(), Bio> {
        if self.failed.load(Ordering::Acquire) | self.resyncing.load(Ordering::Acquire) != 0 {
            return Err(bio);
        }
        let Some(slot) = self.write_tags.alloc() else {
            return Err(bio);
        };
        let n = self.legs.len();
        let nvecs = bio.segments().count();
        let flags = bio.flags() & (BioFlags::FUA | BioFlags::PREFLUSH | BioFlags::SYNC);
        let mut out = heapless::Vec::<Bio, MAX_LEGS>::new();
        for (i, l) in self.legs.iter().enumerate() {
            let front = LegWrite {
                mirror: self,
                slot,
                leg: i as u8,
            };
            let Ok(mut c) = self.set.alloc(front, Op::Write, nvecs, Wait::Never) else {
                drop(out);
                self.write_tags.free(slot);
                return Err(bio);
            };
            for v in bio.segments() {
                // Room for `nvecs` segments was allocated, so this cannot fail.
                let _ = c.add_vec(v);
            }
            c.set_flags(flags);
            c.set_sector(l.offset + rel);
            c.set_dev(l.lower.dev);
            c.set_end_io(leg_write_done);
            let _ = out.push(c);
        }
        let w = &self.writes[slot as usize];
        w.failed.store(0, Ordering::Relaxed);
        w.remaining.store(n as u32, Ordering::Relaxed);
        *w.parent.lock() = Some(bio);
        // The slot is not touched after the last leg bio is sent: it may end the write.
        for (i, c) in out.into_iter().enumerate() {
            if self.leaf & (1 << i) != 0 {
                submit_to_leaf(self.legs[i].lower.dev, c, ctx);
            } else {
                ctx.submit(c);
            }
        }
        Ok(())
    }

    /// Leg `leg` of direct write `slot` answered; the last one ends the write as dm-io's
    /// completion would.
    fn leg_done(&'static self, slot: u16, leg: u8, failed: bool) {
        let w = &self.writes[slot as usize];
        if failed {
            w.failed.fetch_or(1 << leg, Ordering::Relaxed);
        }
        if w.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let errors = w.failed.load(Ordering::Relaxed) as u64;
        let parent = w.parent.lock().take();
        self.write_tags.free(slot);
        self.write_done(IoDone {
            errors,
            parked: parent,
            word: word(K_WRITE, self.all()),
        });
    }

    fn all(&self) -> u32 {
        (1u32 << self.legs.len()) - 1
    }

    /// An in-sync leg not in `tried`, round robin.
    fn pick_read_leg(&self, tried: u32) -> Option<usize> {
        let ok = self.in_sync_mask() & !tried;
        if ok == 0 {
            return None;
        }
        let n = self.legs.len() as u32;
        let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| ((start + k) % n) as usize)
            .find(|&i| ok & (1 << i) != 0)
    }

    fn read_from(
        &'static self,
        leg: usize,
        tried: u32,
        rel: u64,
        bio: Bio,
        ctx: &CpuCtx,
        wait: Wait,
    ) {
        let regions = [self.region(leg, rel, bio.sectors())];
        let req = IoRequest {
            op: Op::Read,
            flags: bio.flags() & BioFlags::SYNC,
            regions: &regions,
        };
        if let Err((e, b)) = self.io.run_async(
            ctx,
            &req,
            Mem::Parked,
            Some(bio),
            self,
            word(K_READ, tried),
            wait,
        ) && let Some(b) = b
        {
            bio_io_error(b, e);
        }
    }

    /// Resubmits the reads that failed on a leg to another one. Process context (the kernel
    /// calls it from its wait hook); cheap when nothing waits.
    pub fn run_deferred(&'static self, ctx: &CpuCtx, wait: Wait) {
        if self.retry_ready.load(Ordering::Acquire) == 0 {
            return;
        }
        let ready = self.retry_ready.swap(0, Ordering::AcqRel);
        for t in 0..RETRY_SLOTS {
            if ready & (1 << t) == 0 {
                continue;
            }
            let item = self.retry[t].lock().take();
            self.retry_tags.free(t as u16);
            let Some((bio, tried)) = item else { continue };
            let rel = bio.sector() - self.start;
            match self.pick_read_leg(tried as u32) {
                Some(leg) => {
                    self.read_retries.fetch_add(1, Ordering::Relaxed);
                    self.read_from(leg, tried as u32 | 1 << leg, rel, bio, ctx, wait);
                }
                None => bio_io_error(bio, BlkError::Io),
            }
        }
    }

    /// Whether reads wait for [`Mirror::run_deferred`].
    pub fn has_deferred(&self) -> bool {
        self.retry_ready.load(Ordering::Acquire) != 0
    }

    /// Brings leg `leg` back: it gets writes at once, then every dirty region is copied to it
    /// from an in-sync leg through `buf` (any size, a multiple of the block size), pass after
    /// pass until a pass finds nothing dirty; then it serves reads again. Must run in process
    /// context, not from a device's `submit`.
    pub fn restore_leg(
        &'static self,
        leg: usize,
        ctx: &CpuCtx,
        buf: &mut DmaRegion,
        wait: fn(),
    ) -> Result<ResyncReport, ResyncError> {
        if leg >= self.legs.len() {
            return Err(ResyncError::NoLeg);
        }
        if self.leg_state(leg) == LegState::InSync {
            return Err(ResyncError::InSync);
        }
        self.set_state(leg, LegState::Resyncing);
        let mut report = ResyncReport {
            regions_copied: 0,
            passes: 0,
        };
        let region = 1u64 << self.region_shift;
        loop {
            if report.passes == RESYNC_PASSES {
                return Err(ResyncError::Busy);
            }
            report.passes += 1;
            let mut copied = 0;
            for r in 0..DIRTY_REGIONS as u64 {
                let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
                if self.dirty[w].load(Ordering::Acquire) & bit == 0 {
                    continue;
                }
                // Cleared before the copy: a write that lands during it marks it again (at
                // completion too, while a leg resyncs) and the next pass copies it again.
                self.dirty[w].fetch_and(!bit, Ordering::AcqRel);
                let start = r * region;
                if start >= self.len {
                    continue;
                }
                let count = region.min(self.len - start);
                if let Err(e) = self.copy_region(leg, start, count, ctx, buf, wait) {
                    self.mark_dirty(start, count);
                    if matches!(e, ResyncError::Write(_)) {
                        self.fail_leg(leg);
                    } else {
                        self.set_state(leg, LegState::Failed);
                    }
                    return Err(e);
                }
                copied += 1;
            }
            report.regions_copied += copied;
            if copied == 0 {
                break;
            }
        }
        self.set_state(leg, LegState::InSync);
        Ok(report)
    }

    /// Marks every region dirty (a full resync: e.g. a leg whose contents are unknown).
    pub fn mark_all_dirty(&self) {
        self.mark_dirty(0, self.len);
    }

    fn copy_region(
        &'static self,
        leg: usize,
        start: u64,
        count: u64,
        ctx: &CpuCtx,
        buf: &mut DmaRegion,
        wait: fn(),
    ) -> Result<(), ResyncError> {
        let lbs = self
            .legs
            .iter()
            .map(|l| l.lower.dev.logical_block_size() as u64)
            .max()
            .unwrap_or(512);
        let chunk = ((buf.len() as u64) / lbs * lbs) >> SECTOR_SHIFT;
        if chunk == 0 {
            return Err(ResyncError::Read(BlkError::InvalidArgument));
        }
        let span = buf.span();
        let mut done = 0;
        while done < count {
            let n = chunk.min(count - done);
            let src = self.pick_read_leg(1 << leg).ok_or(ResyncError::NoSource)?;
            let rd = [self.region(src, start + done, n)];
            let req = IoRequest {
                op: Op::Read,
                flags: BioFlags::SYNC,
                regions: &rd,
            };
            match self.io.run_sync(ctx, &req, Mem::Dma(span, 0), wait) {
                Ok(0) => {}
                Ok(_) => return Err(ResyncError::Read(BlkError::Io)),
                Err(e) => return Err(ResyncError::Read(e)),
            }
            let wr = [self.region(leg, start + done, n)];
            let req = IoRequest {
                op: Op::Write,
                flags: BioFlags::SYNC,
                regions: &wr,
            };
            match self.io.run_sync(ctx, &req, Mem::Dma(span, 0), wait) {
                Ok(0) => {}
                Ok(_) => return Err(ResyncError::Write(BlkError::Io)),
                Err(e) => return Err(ResyncError::Write(e)),
            }
            done += n;
        }
        Ok(())
    }

    fn write_done(&self, d: IoDone) {
        let legs = (d.word >> 8) as u32;
        let Some(bio) = d.parked else { return };
        let rel = bio.sector().saturating_sub(self.start);
        let mut failed = 0u32;
        for (k, i) in (0..self.legs.len())
            .filter(|&i| legs & (1 << i) != 0)
            .enumerate()
        {
            if d.errors & (1 << k) != 0 {
                failed |= 1 << i;
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                if self.leg_state(i) != LegState::Failed {
                    self.set_state(i, LegState::Failed);
                    self.events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let out = failed != 0 || self.in_sync_mask() != self.all();
        if bio.op() != Op::Flush && out {
            self.mark_dirty(rel, bio.sectors());
        }
        // Good if some leg in sync now took it.
        let took = legs & !failed & self.in_sync_mask();
        if took == 0 {
            bio_io_error(bio, BlkError::Io);
        } else {
            bio_endio(bio);
        }
    }

    fn read_done(&self, d: IoDone) {
        let Some(bio) = d.parked else { return };
        if d.errors == 0 {
            bio_endio(bio);
            return;
        }
        self.read_errors.fetch_add(1, Ordering::Relaxed);
        let tried = (d.word >> 8) as u32;
        if self.in_sync_mask() & !tried == 0 {
            bio_io_error(bio, BlkError::Io);
            return;
        }
        let Some(t) = self.retry_tags.alloc() else {
            bio_io_error(bio, BlkError::Io);
            return;
        };
        *self.retry[t as usize].lock() = Some((bio, tried as usize));
        self.retry_ready.fetch_or(1 << t, Ordering::AcqRel);
    }
}

/// End of a leg bio of the direct write path.
fn leg_write_done(bio: Bio) {
    let Some(&LegWrite { mirror, slot, leg }) = bio.front::<LegWrite>() else {
        return;
    };
    let failed = bio.status().is_err();
    drop(bio);
    mirror.leg_done(slot, leg, failed);
}

impl IoNotify for Mirror {
    fn done(&'static self, d: IoDone) {
        if d.word & 0xff == K_READ {
            self.read_done(d);
        } else {
            self.write_done(d);
        }
    }
}
