//! The `BlockDevice` trait, the per-CPU submission context, `submit_bio` and plugging.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::bio::{Bio, BioList, Op, SECTOR_SHIFT, bio_io_error};
use crate::error::BlkError;

/// Anything bios can be submitted to: a driver's request queue or a stacked device.
pub trait BlockDevice: Sync {
    /// Size in 512-byte sectors.
    fn capacity(&self) -> u64;
    /// Logical block size in bytes (sector and size of every bio are multiples of it).
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }
    /// Whether the device does `op` at all.
    fn supports(&self, op: Op) -> bool {
        let _ = op;
        true
    }
    /// Checks `bio` against this device: range, block alignment, read-only, supported op
    /// ([`check_bio_dev`]). Devices may override it with the same checks done without going
    /// through the other trait methods one virtual call at a time.
    fn check(&self, bio: &Bio) -> Result<(), BlkError> {
        check_bio_dev(self, bio)
    }
    /// Takes ownership of a bio already checked against `capacity`, block size, read-only and
    /// `supports`. A stacked device remaps it and hands it on with [`CpuCtx::submit`] (calling a
    /// lower device directly only when that device [`is_leaf`](Self::is_leaf), after its
    /// [`check`](Self::check)); a request queue queues it. Errors end the bio.
    fn submit(&'static self, bio: Bio, ctx: &CpuCtx);
    /// Whether [`submit`](Self::submit) never hands a bio to a submission context (a request
    /// queue: it splits and queues for its driver itself). A stacked device may then call its
    /// `submit` directly instead of going through [`CpuCtx::submit`]: one frame deeper, however
    /// deep the stack, since only the device right above a leaf does so.
    fn is_leaf(&self) -> bool {
        false
    }
    /// Takes the bios a plug collected for this device, in submission order.
    fn flush_plugged(&'static self, mut bios: BioList, ctx: &CpuCtx) {
        while let Some(b) = bios.pop_front() {
            self.submit(b, ctx);
        }
    }
}

/// Checks `bio` against its device: range, block alignment, read-only, supported op.
#[inline]
pub fn check_bio_dev<D: BlockDevice + ?Sized>(dev: &D, bio: &Bio) -> Result<(), BlkError> {
    let op = bio.op();
    if !dev.supports(op) {
        return Err(BlkError::Unsupported);
    }
    if op.is_write() && op != Op::Flush && dev.read_only() {
        return Err(BlkError::ReadOnly);
    }
    if op == Op::Flush {
        return if bio.size() == 0 {
            Ok(())
        } else {
            Err(BlkError::InvalidArgument)
        };
    }
    let lbs = dev.logical_block_size() as u64;
    if !(bio.sector() << SECTOR_SHIFT).is_multiple_of(lbs)
        || !(bio.size() as u64).is_multiple_of(lbs)
    {
        return Err(BlkError::Misaligned);
    }
    match bio.sector().checked_add(bio.sectors()) {
        Some(end) if end <= dev.capacity() => Ok(()),
        _ => Err(BlkError::OutOfRange),
    }
}

/// Adds one to a counter only its own CPU's submission path writes (a plain load and store, no
/// locked instruction); readers may see it a little late.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Per-CPU submission state: the pending list that turns stacked submission into a loop, and
/// the plug. The kernel keeps one per CPU (e.g. `static CPUS: [CpuCtx; NCPU]`) and passes the
/// current CPU's. End-io callbacks running in interrupt context must not submit through the
/// context of the CPU they interrupted (defer to process context instead).
pub struct CpuCtx {
    cpu: u32,
    active: AtomicBool,
    pending: spin::Mutex<BioList>,
    has_pending: AtomicBool,
    plug: spin::Mutex<BioList>,
    plug_depth: AtomicU32,
    submitted: AtomicU64,
    loops: AtomicU64,
}

/// Bios a plug holds before it flushes by itself.
pub const PLUG_MAX: usize = 64;

impl CpuCtx {
    /// The context of CPU `cpu`.
    pub const fn new(cpu: u32) -> Self {
        CpuCtx {
            cpu,
            active: AtomicBool::new(false),
            pending: spin::Mutex::new(BioList::new()),
            has_pending: AtomicBool::new(false),
            plug: spin::Mutex::new(BioList::new()),
            plug_depth: AtomicU32::new(0),
            submitted: AtomicU64::new(0),
            loops: AtomicU64::new(0),
        }
    }

    /// The CPU id.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Bios accepted by `submit_bio`/`submit` on this context.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Bios the submission loop handed to a device.
    pub fn loop_iterations(&self) -> u64 {
        self.loops.load(Ordering::Relaxed)
    }

    /// Submits a bio whose errors go to its `end_io` (what stacked devices and completion
    /// paths use). Inside the submission loop this only queues it.
    pub fn submit(&self, bio: Bio) {
        self.enter(bio, false);
    }

    /// Runs `bio` (already checked against its device if `checked`), or queues it if this
    /// context is inside its submission loop already.
    #[inline]
    fn enter(&self, bio: Bio, checked: bool) {
        bump(&self.submitted);
        if !self.active.swap(true, Ordering::Acquire) {
            if checked
                && !self.has_pending.load(Ordering::Acquire)
                && let Some(dev) = bio.dev()
            {
                // The common case, outside any loop with nothing queued: straight to the
                // device, then the loop only if the device queued bios meanwhile.
                bump(&self.loops);
                dev.submit(bio, self);
                if !self.has_pending.load(Ordering::Acquire) {
                    self.active.store(false, Ordering::SeqCst);
                    // As at the end of `run`: a bio queued by another thread before `active`
                    // was cleared is seen here, or its submitter runs it.
                    if !self.has_pending.load(Ordering::SeqCst)
                        || self.active.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                }
                let next = self.order_pending(dev, BioList::new());
                self.run(next, false);
                return;
            }
            self.run(Some(bio), checked);
            return;
        }
        {
            let mut p = self.pending.lock();
            p.push_back(bio);
            self.has_pending.store(true, Ordering::SeqCst);
        }
        // The loop may have ended between our look at `active` and the push: then it did not
        // see the bio (it looked at `has_pending` before we set it) and we run it here.
        if !self.active.swap(true, Ordering::SeqCst) {
            self.run(None, false);
        }
    }

    /// Takes the first pending bio (lock only when there is one).
    #[inline]
    fn pop_pending(&self) -> Option<Bio> {
        if !self.has_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut p = self.pending.lock();
        let b = p.pop_front();
        self.has_pending.store(!p.is_empty(), Ordering::Release);
        b
    }

    fn run(&self, first: Option<Bio>, first_checked: bool) {
        let mut next = first;
        let mut checked = first_checked;
        if next.is_none() {
            next = self.pop_pending();
        }
        loop {
            while let Some(bio) = next.take() {
                bump(&self.loops);
                let Some(dev) = bio.dev() else {
                    bio_io_error(bio, BlkError::InvalidArgument);
                    next = self.pop_pending();
                    continue;
                };
                if !checked && let Err(e) = dev.check(&bio) {
                    bio_io_error(bio, e);
                    next = self.pop_pending();
                    continue;
                }
                checked = false;
                let older = if self.has_pending.load(Ordering::Acquire) {
                    let mut p = self.pending.lock();
                    self.has_pending.store(false, Ordering::Release);
                    core::mem::take(&mut *p)
                } else {
                    BioList::new()
                };
                dev.submit(bio, self);
                if older.is_empty() && !self.has_pending.load(Ordering::Acquire) {
                    // Nothing older, nothing new (the common case at the bottom of a stack).
                    continue;
                }
                next = self.order_pending(dev, older);
            }
            self.active.store(false, Ordering::SeqCst);
            // A bio queued by another thread between the last look and clearing `active`:
            // either we see it here or its submitter sees `active` clear and runs it.
            if !self.has_pending.load(Ordering::SeqCst) || self.active.swap(true, Ordering::SeqCst)
            {
                return;
            }
            next = self.pop_pending();
        }
    }

    /// After `dev.submit` queued bios: orders the pending list as bios for lower devices first,
    /// then more for `dev`, then `older` (pending before that submit), and takes the first.
    fn order_pending(&self, dev: &dyn BlockDevice, mut older: BioList) -> Option<Bio> {
        let mut p = self.pending.lock();
        if p.is_empty() {
            *p = older;
        } else {
            let mut new = core::mem::take(&mut *p);
            let (mut lower, mut same) = (BioList::new(), BioList::new());
            while let Some(b) = new.pop_front() {
                if b.is_for(dev) {
                    same.push_back(b);
                } else {
                    lower.push_back(b);
                }
            }
            lower.append(&mut same);
            lower.append(&mut older);
            *p = lower;
        }
        let next = p.pop_front();
        self.has_pending.store(!p.is_empty(), Ordering::Release);
        next
    }

    /// Starts plugging: request queues collect bios until the returned guard is dropped (or
    /// [`Plug::finish`]ed), then merge them and dispatch them in batches. Plugs nest; the
    /// outermost flushes.
    pub fn plug(&self) -> Plug<'_> {
        let outer = self.plug_depth.fetch_add(1, Ordering::AcqRel) == 0;
        Plug { ctx: self, outer }
    }

    /// Whether a plug is active.
    pub fn plugged(&self) -> bool {
        self.plug_depth.load(Ordering::Acquire) > 0
    }

    /// Adds a bio to the plug (request queues call this when [`CpuCtx::plugged`]).
    ///
    /// The plug flushes at once when it holds [`PLUG_MAX`] bios, or when `bio`'s set has no
    /// bio left: the submitter's next may-wait allocation from that set would wait for a bio
    /// that only the plugged ones, once dispatched and completed, could give back (the wait
    /// is then only for bios in flight; docs/blk.md, "Forward progress").
    pub fn add_to_plug(&self, bio: Bio) {
        let dry = bio.pool_exhausted();
        let full = {
            let mut p = self.plug.lock();
            p.push_back(bio);
            dry || p.len() >= PLUG_MAX
        };
        if full {
            self.flush_plug();
        }
    }

    /// Hands every plugged bio to its device, grouped by device, in submission order.
    pub fn flush_plug(&self) {
        loop {
            let mut all = core::mem::take(&mut *self.plug.lock());
            if all.is_empty() {
                return;
            }
            while let Some(first) = all.pop_front() {
                let Some(dev) = first.dev() else {
                    bio_io_error(first, BlkError::InvalidArgument);
                    continue;
                };
                let (mut group, mut rest) = (BioList::new(), BioList::new());
                group.push_back(first);
                while let Some(b) = all.pop_front() {
                    if b.is_for(dev) {
                        group.push_back(b);
                    } else {
                        rest.push_back(b);
                    }
                }
                all = rest;
                dev.flush_plugged(group, self);
            }
        }
    }
}

/// An active plug (see [`CpuCtx::plug`]).
pub struct Plug<'a> {
    ctx: &'a CpuCtx,
    outer: bool,
}

impl Plug<'_> {
    /// Ends the plug now (same as dropping it).
    pub fn finish(self) {}
}

impl Drop for Plug<'_> {
    fn drop(&mut self) {
        if self.outer {
            self.ctx.flush_plug();
        }
        self.ctx.plug_depth.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands a remapped bio straight to `leaf`, a request queue below a stacked device
/// ([`BlockDevice::is_leaf`]), after the queue's own check: what the submission loop would do
/// next, without the round trip through `ctx`'s pending list. A queue never submits through
/// `ctx` itself, so this adds one frame at the bottom of a stack and the depth stays bounded.
/// A failed check ends the bio with the error.
#[inline]
pub fn submit_to_leaf(leaf: &'static dyn BlockDevice, bio: Bio, ctx: &CpuCtx) {
    debug_assert!(leaf.is_leaf());
    match leaf.check(&bio) {
        Ok(()) => leaf.submit(bio, ctx),
        Err(e) => bio_io_error(bio, e),
    }
}

/// Submits `bio` to its device. Up-front refusals (no device, out of range, misaligned,
/// read-only, unsupported op) hand the bio back with the error; later errors reach `end_io`.
///
/// Never recurses: a device submitting to lower devices only queues bios on `ctx`, and the
/// outermost `submit_bio` on this CPU runs them in a loop, lower devices first.
pub fn submit_bio(ctx: &CpuCtx, bio: Bio) -> Result<(), (BlkError, Bio)> {
    let Some(dev) = bio.dev() else {
        return Err((BlkError::InvalidArgument, bio));
    };
    if let Err(e) = dev.check(&bio) {
        return Err((e, bio));
    }
    ctx.enter(bio, true);
    Ok(())
}
