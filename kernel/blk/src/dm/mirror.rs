//! The `mirror` target: N legs holding the same data.
//!
//! - A write goes to every leg in service (in sync, or being resynced), and completes when
//!   every leg answered: successfully if at least one in-sync leg took it. With every leg in
//!   sync the mirror's bio itself goes to leg 0 and a clone to each other leg
//!   ([`Mirror::submit`]); otherwise the write is one dm-io call. A leg
//!   that fails a write (or a flush) is marked failed and leaves service; the device stays up,
//!   degraded, and says so ([`Mirror::status`], [`Mirror::take_events`]).
//! - A read goes to one in-sync leg (round robin); on an error it is retried on another
//!   in-sync leg not tried yet. The retry is submitted from process context
//!   ([`Mirror::run_deferred`]), never from the completion.
//! - Flush, FUA and PREFLUSH reach every leg in service.
//! - While a leg is out of service, every write marks its regions in a dirty bitmap (static,
//!   [`DIRTY_REGIONS`] regions; the region size is doubled until the device fits).
//!   [`Mirror::restore_leg`] brings a leg back by copying only the dirty regions to it.
//! - A mirror created `sync` (the default) has not checked that its legs hold the same data:
//!   legs 1.. start resyncing with every region dirty (they get writes, no reads: reads come
//!   from leg 0, the primary) until [`Mirror::resync`] copied the primary to them. `nosync`
//!   trusts the legs to be identical and starts with every leg in sync
//!   ([`Mirror::created_nosync`]).
//!
//! The bitmap lives in memory only: what a power cut leaves is described in `docs/dm.md`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::bio::{Bio, BioFlags, EndHook, EndIo, Op, SECTOR_SHIFT, bio_endio, bio_io_error};
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
/// Write slots `0..KEEP_SLOTS` keep their leg-1 clone after a write for the next one (no
/// allocation or release per write); a mirror holds at most this many bios of its set so.
pub const KEEP_SLOTS: usize = 32;
/// Resync passes at most before [`Mirror::restore_leg`] or [`Mirror::resync`] gives up
/// (writes keep dirtying).
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

/// Where the resyncing bits start in [`Mirror`]'s `out` word.
const RESYNC_SHIFT: u32 = 16;

/// Kinds of call kept in the dm-io word.
const K_READ: usize = 0;
const K_WRITE: usize = 1;

fn word(kind: usize, legs: u32) -> usize {
    kind | (legs as usize) << 8
}

/// Where a direct write's bio keeps its leg in its private word (the write slot below it).
const LEG_SHIFT: usize = 16;

/// The front pad of the bios a mirror sends to its legs on the direct write path: which
/// mirror, write slot and leg (the completion reads slot and leg from the bio's private word).
#[derive(Clone, Copy)]
pub struct LegWrite {
    mirror: &'static Mirror,
    slot: u16,
    leg: u8,
}

/// What a direct write keeps while its legs work: the owner's completion of the mirror's bio
/// (which goes down to leg 0 with the mirror's hook instead), where the write lands, and the
/// bio itself when leg 0 answers before the others.
struct Saved {
    end_io: EndIo,
    private: usize,
    rel: u64,
    sectors: u64,
    parked: Option<Bio>,
    /// The leg-1 clone of the last write, kept for the next (slots under [`KEEP_SLOTS`]).
    spare: Option<Bio>,
}

/// One write on the direct path.
struct WriteSlot {
    /// Touched by the builder, then by the legs' completions (leg 1 keeping its clone, leg 0
    /// parking the bio, the last one ending the write; the tag orders the builder before
    /// them), each for a few stores: legs completing on two CPUs at once wait only for those.
    saved: spin::Mutex<Saved>,
    /// Legs not completed yet.
    remaining: AtomicU32,
    /// Bit `i`: leg `i` failed this write.
    failed: AtomicU32,
}

impl WriteSlot {
    const fn new() -> Self {
        WriteSlot {
            saved: spin::Mutex::new(Saved {
                end_io: EndIo::None,
                private: 0,
                rel: 0,
                sectors: 0,
                parked: None,
                spare: None,
            }),
            remaining: AtomicU32::new(0),
            failed: AtomicU32::new(0),
        }
    }
}

/// The mirror target's state.
pub struct Mirror {
    legs: heapless::Vec<Leg, MAX_LEGS>,
    /// Legs out of sync, in one word so that a write reads one load: bit `i`, leg `i` is
    /// failed; bit `RESYNC_SHIFT + i`, leg `i` is being resynced. 0: every leg in sync.
    out: AtomicU32,
    /// First sector of the target in its mapped device.
    start: u64,
    len: u64,
    region_shift: u32,
    dirty: [AtomicU64; DIRTY_WORDS],
    rr: AtomicU32,
    io: &'static DmIo,
    /// Clones of the direct write path (legs 1..).
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
    /// Created `nosync`: the legs were trusted, not resynced.
    nosync: bool,
}

impl Mirror {
    /// A mirror of `legs` covering sectors `start..start + len` of its device, with dirty
    /// regions of at least `region` sectors, doing its I/O with `io` (and plain writes with
    /// every leg in sync with clones from `set`, see [`Mirror::submit`]). Unless `nosync`,
    /// legs 1.. start resyncing with every region dirty: [`Mirror::resync`] brings them in.
    pub fn new(
        legs: heapless::Vec<Leg, MAX_LEGS>,
        start: u64,
        len: u64,
        region: u64,
        io: &'static DmIo,
        set: &'static BioSet<LegWrite>,
        nosync: bool,
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
        let all = (1u32 << legs.len()) - 1;
        let out = if nosync {
            0
        } else {
            (all & !1) << RESYNC_SHIFT
        };
        let m = Mirror {
            legs,
            out: AtomicU32::new(out),
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
            nosync,
        };
        if out != 0 {
            m.mark_all_dirty();
        }
        m
    }

    /// Whether the mirror was created `nosync` (legs trusted to be identical, not copied).
    pub fn created_nosync(&self) -> bool {
        self.nosync
    }

    /// Legs being resynced (bit per leg).
    pub fn resyncing_mask(&self) -> u32 {
        (self.out.load(Ordering::Acquire) >> RESYNC_SHIFT) & self.all()
    }

    /// The legs.
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Leg `i`'s state.
    pub fn leg_state(&self, i: usize) -> LegState {
        let out = self.out.load(Ordering::Acquire);
        if out & 1 << i != 0 {
            LegState::Failed
        } else if out & 1 << (RESYNC_SHIFT + i as u32) != 0 {
            LegState::Resyncing
        } else {
            LegState::InSync
        }
    }

    fn set_state(&self, i: usize, s: LegState) {
        let (failed, resync) = (1u32 << i, 1u32 << (RESYNC_SHIFT + i as u32));
        let _ = self
            .out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(match s {
                    LegState::Failed => (o | failed) & !resync,
                    LegState::Resyncing => (o | resync) & !failed,
                    LegState::InSync => o & !(failed | resync),
                })
            });
    }

    /// Legs serving reads and writes.
    fn in_sync_mask(&self) -> u32 {
        let out = self.out.load(Ordering::Acquire);
        self.all() & !(out | out >> RESYNC_SHIFT)
    }

    /// Legs getting writes (in sync or resyncing).
    fn active_mask(&self) -> u32 {
        self.all() & !self.out.load(Ordering::Acquire)
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
    /// A write with every leg in sync takes the direct path: the mirror's bio itself goes to
    /// leg 0 (its completion turned to the mirror's [`EndHook`] until every leg answered) and
    /// a clone from the mirror's own set (the same segments, allocated without waiting) to
    /// each other leg, handed to each leg that is a request queue straight after its `check`
    /// (others through `ctx`); one write slot holds the owner's completion and one atomic
    /// counts the legs. Anything else (a leg out of service, no slot or no clone free at once,
    /// a bio with chain children outstanding, other ops) goes through dm-io, whose reserve
    /// guarantees progress.
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
    ///
    /// `bio` itself goes to leg 0, its completion turned to the mirror's hook (the owner's
    /// `end_io` and private word are kept in the write slot and put back before it ends); the
    /// other legs get a clone each. Only a bio with no chain child outstanding and no error
    /// yet is sent down so: its status at the hook is then leg 0's alone.
    fn write_direct(&'static self, rel: u64, mut bio: Bio, ctx: &CpuCtx) -> Result<(), Bio> {
        if self.out.load(Ordering::Acquire) != 0 || bio.remaining() != 1 || bio.status().is_err() {
            return Err(bio);
        }
        let Some(slot) = self.write_tags.alloc() else {
            return Err(bio);
        };
        let n = self.legs.len();
        let w = &self.writes[slot as usize];
        // The slot is this write's alone now: its lock is not contended.
        let mut s = w.saved.lock();
        let mut spare = s.spare.take();
        // Legs 1.. get a clone each: the first one kept apart (the common 2-leg case moves no
        // list), the others in a list.
        let mut first = None;
        let mut more = heapless::Vec::<Bio, MAX_LEGS>::new();
        for i in 1..n {
            let Some(c) = self.clone_for(i, slot, rel, &bio, &mut spare) else {
                s.spare = spare;
                drop(s);
                drop(first);
                drop(more);
                self.write_tags.free(slot);
                return Err(bio);
            };
            if i == 1 {
                first = Some(c);
            } else {
                let _ = more.push(c);
            }
        }
        s.end_io = bio.end_io();
        s.private = bio.private();
        s.rel = rel;
        s.sectors = bio.sectors();
        drop(s);
        w.failed.store(0, Ordering::Relaxed);
        w.remaining.store(n as u32, Ordering::Release);
        let l0 = &self.legs[0];
        bio.set_end_hook(self);
        bio.set_private(slot as usize);
        bio.set_sector(l0.offset + rel);
        bio.set_dev(l0.lower.dev);
        // The slot is not touched after the last bio is sent: it may end the write. The clones
        // go first, so that leg 0 usually answers last and its hook ends the write without
        // parking the bio.
        if let Some(c) = first {
            self.send(1, c, ctx);
        }
        // Popped in place (moving the list into an iterator would copy all of it).
        while let Some(c) = more.pop() {
            self.send(2 + more.len(), c, ctx);
        }
        self.send(0, bio, ctx);
        Ok(())
    }

    /// Leg `leg`'s clone of `bio` for direct write `slot` (leg 1 reuses the slot's kept clone
    /// `spare` when it is big enough), or `None` if the set has none free at once.
    #[inline]
    fn clone_for(
        &'static self,
        leg: usize,
        slot: u16,
        rel: u64,
        bio: &Bio,
        spare: &mut Option<Bio>,
    ) -> Option<Bio> {
        let nvecs = bio.vecs().len();
        // Slot and leg are the kept clone's front pad already.
        let kept = if leg == 1 {
            spare.take().filter(|c| c.max_vecs() >= nvecs)
        } else {
            None
        };
        let mut c = match kept.and_then(|mut c| c.reuse(Op::Write).then_some(c)) {
            Some(c) => c,
            None => {
                let front = LegWrite {
                    mirror: self,
                    slot,
                    leg: leg as u8,
                };
                self.set.alloc(front, Op::Write, nvecs, Wait::Never).ok()?
            }
        };
        // Room for every vector of `bio` was allocated and both are writes.
        c.copy_data_from(bio).ok()?;
        c.set_flags(bio.flags() & (BioFlags::FUA | BioFlags::PREFLUSH | BioFlags::SYNC));
        let l = &self.legs[leg];
        c.set_sector(l.offset + rel);
        c.set_dev(l.lower.dev);
        // The clone ends through the mirror's hook too: slot and leg in its private word (read
        // there without the front pad's type check).
        c.set_end_hook(self);
        c.set_private(slot as usize | leg << LEG_SHIFT);
        Some(c)
    }

    // Always inline: called once per leg of each direct write (a call frame per leg otherwise).
    #[inline(always)]
    fn send(&self, leg: usize, bio: Bio, ctx: &CpuCtx) {
        if self.leaf & (1 << leg) != 0 {
            submit_to_leaf(self.legs[leg].lower.dev, bio, ctx);
        } else {
            ctx.submit(bio);
        }
    }

    /// Leg `leg` (not 0) of direct write `slot` answered; the last leg ends the write.
    fn leg_done(&'static self, slot: u16, leg: u8, failed: bool, clone: Bio) {
        let w = &self.writes[slot as usize];
        if failed {
            w.failed.fetch_or(1 << leg, Ordering::Relaxed);
        }
        // Kept before the count drops: the slot is not reused before that.
        if leg == 1 && (slot as usize) < KEEP_SLOTS {
            w.saved.lock().spare = Some(clone);
        } else {
            drop(clone);
        }
        if w.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // Leg 0 answered before: its hook parked the bio.
        let Some(bio) = w.saved.lock().parked.take() else {
            return;
        };
        self.end_direct(slot, bio);
    }

    /// Ends direct write `slot` (every leg answered), `bio` back in its owner's hands.
    fn end_direct(&'static self, slot: u16, bio: Bio) {
        let w = &self.writes[slot as usize];
        let errors = w.failed.load(Ordering::Relaxed);
        if errors == 0 && self.out.load(Ordering::Acquire) == 0 {
            self.write_tags.free(slot);
            // What `bio_endio` would do for a bio with no chain parent or child and a callback,
            // without its second pass.
            if let EndIo::Callback(f) = bio.end_io()
                && !bio.has_parent()
                && bio.remaining() == 1
            {
                let mut bio = bio;
                bio.clear_end_io();
                f(bio);
            } else {
                bio_endio(bio);
            }
            return;
        }
        let (rel, sectors) = {
            let s = w.saved.lock();
            (s.rel, s.sectors)
        };
        self.write_tags.free(slot);
        self.end_write(bio, self.all(), errors, rel, sectors, true);
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
        self.copy_dirty(1 << leg, ctx, buf, wait)
    }

    /// Finishes the resync of every leg being resynced (a `sync` mirror's legs 1.. after
    /// creation): copies every dirty region to all of them at once, from an in-sync leg, as
    /// [`Mirror::restore_leg`] does for one. Nothing to do (no leg resyncing) is a report of
    /// zero regions. Process context only.
    pub fn resync(
        &'static self,
        ctx: &CpuCtx,
        buf: &mut DmaRegion,
        wait: fn(),
    ) -> Result<ResyncReport, ResyncError> {
        let mask = self.resyncing_mask();
        if mask == 0 {
            return Ok(ResyncReport {
                regions_copied: 0,
                passes: 0,
            });
        }
        self.copy_dirty(mask, ctx, buf, wait)
    }

    /// Copies every dirty region to the legs of `mask` (resyncing), pass after pass, then puts
    /// them in sync. A read error fails them all; a write error fails the legs that had it.
    /// Either way the region stays dirty and the call stops.
    fn copy_dirty(
        &'static self,
        mask: u32,
        ctx: &CpuCtx,
        buf: &mut DmaRegion,
        wait: fn(),
    ) -> Result<ResyncReport, ResyncError> {
        let mut report = ResyncReport {
            regions_copied: 0,
            passes: 0,
        };
        let region = 1u64 << self.region_shift;
        let legs = || (0..self.legs.len()).filter(move |&i| mask & (1 << i) != 0);
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
                if let Err((e, failed)) = self.copy_region(mask, start, count, ctx, buf, wait) {
                    self.mark_dirty(start, count);
                    for i in legs() {
                        if failed & (1 << i) != 0 {
                            self.fail_leg(i);
                        } else if matches!(e, ResyncError::Read(_) | ResyncError::NoSource) {
                            self.set_state(i, LegState::Failed);
                        }
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
        for i in legs() {
            self.set_state(i, LegState::InSync);
        }
        Ok(report)
    }

    /// Marks every region dirty (a full resync: e.g. a leg whose contents are unknown).
    pub fn mark_all_dirty(&self) {
        self.mark_dirty(0, self.len);
    }

    /// Copies `start..start + count` from an in-sync leg to the legs of `mask`; on a write
    /// error, also the legs that failed it (bit per leg).
    fn copy_region(
        &'static self,
        mask: u32,
        start: u64,
        count: u64,
        ctx: &CpuCtx,
        buf: &mut DmaRegion,
        wait: fn(),
    ) -> Result<(), (ResyncError, u32)> {
        let lbs = self
            .legs
            .iter()
            .map(|l| l.lower.dev.logical_block_size() as u64)
            .max()
            .unwrap_or(512);
        let chunk = ((buf.len() as u64) / lbs * lbs) >> SECTOR_SHIFT;
        if chunk == 0 {
            return Err((ResyncError::Read(BlkError::InvalidArgument), 0));
        }
        let span = buf.span();
        let mut done = 0;
        while done < count {
            let n = chunk.min(count - done);
            let src = self.pick_read_leg(mask).ok_or((ResyncError::NoSource, 0))?;
            let rd = [self.region(src, start + done, n)];
            let req = IoRequest {
                op: Op::Read,
                flags: BioFlags::SYNC,
                regions: &rd,
            };
            match self.io.run_sync(ctx, &req, Mem::Dma(span, 0), wait) {
                Ok(0) => {}
                Ok(_) => return Err((ResyncError::Read(BlkError::Io), 0)),
                Err(e) => return Err((ResyncError::Read(e), 0)),
            }
            let mut wr = heapless::Vec::<Region, MAX_LEGS>::new();
            let mut which = heapless::Vec::<usize, MAX_LEGS>::new();
            for i in (0..self.legs.len()).filter(|&i| mask & (1 << i) != 0) {
                let _ = wr.push(self.region(i, start + done, n));
                let _ = which.push(i);
            }
            let req = IoRequest {
                op: Op::Write,
                flags: BioFlags::SYNC,
                regions: &wr,
            };
            match self.io.run_sync(ctx, &req, Mem::Dma(span, 0), wait) {
                Ok(0) => {}
                Ok(bits) => {
                    let failed = which
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| bits & (1 << k) != 0)
                        .fold(0u32, |m, (_, &i)| m | 1 << i);
                    return Err((ResyncError::Write(BlkError::Io), failed));
                }
                Err(e) => return Err((ResyncError::Write(e), mask)),
            }
            done += n;
        }
        Ok(())
    }

    fn write_done(&self, d: IoDone) {
        let legs = (d.word >> 8) as u32;
        let Some(bio) = d.parked else { return };
        // dm-io's bit `k` is the `k`-th leg of `legs`.
        let mut failed = 0u32;
        for (k, i) in (0..self.legs.len())
            .filter(|&i| legs & (1 << i) != 0)
            .enumerate()
        {
            if d.errors & (1 << k) != 0 {
                failed |= 1 << i;
            }
        }
        let rel = bio.sector().saturating_sub(self.start);
        let sectors = bio.sectors();
        self.end_write(bio, legs, failed, rel, sectors, false);
    }

    /// Ends a write sent to `legs`, of which `failed` (leg bits) failed: fails those legs,
    /// dirties the region while a leg is out, and ends `bio` well if an in-sync leg took it.
    /// `direct`: `bio` went to leg 0 itself, so its status is leg 0's alone (and is cleared
    /// when another leg took the write); otherwise it is left as chain children set it.
    fn end_write(&self, bio: Bio, legs: u32, failed: u32, rel: u64, sectors: u64, direct: bool) {
        for i in (0..self.legs.len()).filter(|&i| failed & (1 << i) != 0) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            if self.leg_state(i) != LegState::Failed {
                self.set_state(i, LegState::Failed);
                self.events.fetch_add(1, Ordering::Relaxed);
            }
        }
        let out = failed != 0 || self.in_sync_mask() != self.all();
        if bio.op() != Op::Flush && out {
            self.mark_dirty(rel, sectors);
        }
        // Good if some leg in sync now took it.
        let took = legs & !failed & self.in_sync_mask();
        if took == 0 {
            bio_io_error(bio, BlkError::Io);
        } else {
            if direct {
                bio.set_status(Ok(()));
            }
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

impl EndHook for Mirror {
    /// A bio of a direct write answered: the mirror's own bio from leg 0, or a clone (its leg,
    /// not 0, above `LEG_SHIFT` in the private word).
    fn bio_end(&'static self, mut bio: Bio) {
        let slot = bio.private() as u16;
        let leg = (bio.private() >> LEG_SHIFT) as u8;
        if leg != 0 {
            debug_assert!(
                bio.front::<LegWrite>()
                    .is_some_and(|f| core::ptr::eq(f.mirror, self)
                        && f.slot == slot
                        && f.leg == leg)
            );
            let failed = bio.status().is_err();
            self.leg_done(slot, leg, failed, bio);
            return;
        }
        let w = &self.writes[slot as usize];
        if bio.status().is_err() {
            w.failed.fetch_or(1, Ordering::Relaxed);
        }
        let mut s = w.saved.lock();
        bio.restore_end_io(s.end_io);
        bio.set_private(s.private);
        // Only the legs decrement: seeing 1, every other leg has answered and none will
        // touch the slot again.
        if w.remaining.load(Ordering::Acquire) == 1 {
            drop(s);
            self.end_direct(slot, bio);
            return;
        }
        s.parked = Some(bio);
        drop(s);
        if w.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The other legs answered meanwhile, before seeing leg 0's share gone.
            if let Some(bio) = w.saved.lock().parked.take() {
                self.end_direct(slot, bio);
            }
        }
    }
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
