//! The request queue of a driver: request slots indexed by tag, the tag set, the driver's
//! limits, and the path submit → split → bounce → merge → dispatch → complete.
//!
//! One file per stage: `dispatch.rs` (make requests: split, bounce, merge, hand to the
//! driver, the direct path), `requeue.rs` (requeue bitmap and `kick`), `complete.rs`
//! (completion by tag, partial completion, retries), `timeout.rs`, `passthrough.rs`,
//! `slot.rs` (the per-tag state machine) and `hctx.rs` (hardware contexts and the CPU map).

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::bio::{Bio, BioList, Op};
use crate::bioset::BioSet;
use crate::bounce::Bouncer;
use crate::device::{BlockDevice, CpuCtx, check_bio_dev};
use crate::driver::HwQueue;
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::slab::Wait;
use crate::stats::BlkStats;
use crate::tag::{MAX_DEPTH, TAG_WORDS};

mod complete;
mod dispatch;
mod hctx;
mod passthrough;
mod requeue;
mod slot;
mod timeout;

use hctx::HwCtx;
pub use hctx::{MAX_CPUS, MAX_HW_CTX, cpu_to_ctx};
pub(crate) use slot::PtKind;
use slot::{FREE, RqSlot};

/// Settings of a [`Queue`] besides the driver and the limits.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Refuse writes.
    pub read_only: bool,
    /// Time a request may be in flight (clock units, ns) before the timeout hook.
    pub timeout_ns: u64,
    /// Retries after an error or a timeout.
    pub max_retries: u8,
    /// How to wait for a free tag or memory on the submit path.
    pub wait: Wait,
    /// The kernel's monotonic clock in ns.
    pub clock: fn() -> u64,
}

fn zero_clock() -> u64 {
    0
}

impl QueueConfig {
    /// A read-write queue of `capacity` sectors: 30 s timeout, 3 retries, spin waits, and a
    /// clock that always says 0 (set `clock` for timeouts to fire).
    pub const fn new(capacity: u64) -> Self {
        QueueConfig {
            capacity,
            read_only: false,
            timeout_ns: 30_000_000_000,
            max_retries: 3,
            wait: Wait::Spin,
            clock: zero_clock,
        }
    }
}

/// Rounds of re-dispatch one `kick` does at most (a driver answering `Busy` forever must not
/// keep the submitter spinning).
pub const KICK_ROUNDS: usize = 16;

/// Most requests merged and dispatched as one batch.
pub const BATCH_MAX: usize = 32;

/// A driver's request queue: `D` request slots indexed by tag, the driver's limits, the
/// submit → split → bounce → merge → dispatch → complete path, and up to [`MAX_HW_CTX`]
/// hardware contexts (one tag set each over a range of the slots) with the CPU map
/// ([`Queue::map_hw_contexts`]; one context until then).
pub struct Queue<const D: usize> {
    hw: &'static dyn HwQueue,
    limits: QueueLimits,
    cfg: QueueConfig,
    capacity: AtomicU64,
    depth: usize,
    hctxs: [HwCtx; MAX_HW_CTX],
    nr_hctx: AtomicU8,
    /// One context with one CPU on it (set at attach): submission goes to context 0 with no
    /// map lookup and no lock.
    single: AtomicBool,
    cpu_map: [AtomicU8; MAX_CPUS],
    slots: [RqSlot; D],
    requeue: [AtomicU64; TAG_WORDS],
    split_set: &'static BioSet<()>,
    bouncer: Option<&'static Bouncer>,
    stats: BlkStats,
}

type Open = heapless::Vec<u16, BATCH_MAX>;

impl<const D: usize> Queue<D> {
    /// A queue of depth `D` (at most 1024) for driver `hw`. Split bios come from `split_set`.
    pub const fn new(
        hw: &'static dyn HwQueue,
        limits: QueueLimits,
        cfg: QueueConfig,
        split_set: &'static BioSet<()>,
    ) -> Self {
        assert!(D >= 1 && D <= MAX_DEPTH, "queue depth out of range");
        // Each request gets its tag written when its slot is taken.
        let slots = [const { RqSlot::new(0) }; D];
        Queue {
            hw,
            limits,
            cfg,
            capacity: AtomicU64::new(cfg.capacity),
            depth: D,
            hctxs: [const { HwCtx::new(D) }; MAX_HW_CTX],
            nr_hctx: AtomicU8::new(1),
            single: AtomicBool::new(true),
            cpu_map: [const { AtomicU8::new(0) }; MAX_CPUS],
            slots,
            requeue: [const { AtomicU64::new(0) }; TAG_WORDS],
            split_set,
            bouncer: None,
            stats: BlkStats::new(),
        }
    }

    /// Uses only the first `depth` tags (clamped to `1..=D`): for a driver that learns at
    /// bring-up that its device takes fewer requests at once than the `D` it was built for.
    pub const fn with_depth(mut self, depth: usize) -> Self {
        let depth = if depth == 0 {
            1
        } else if depth < D {
            depth
        } else {
            D
        };
        self.depth = depth;
        self.hctxs = [const { HwCtx::new(D) }; MAX_HW_CTX];
        self.hctxs[0] = HwCtx::new(depth);
        self
    }

    /// Bounce buffers for segments above `limits.dma_limit`.
    pub const fn with_bounce(mut self, b: &'static Bouncer) -> Self {
        self.bouncer = Some(b);
        self
    }

    /// The limits.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Tags in use now (all hardware contexts).
    pub fn tags_in_use(&self) -> usize {
        self.hctxs.iter().map(|c| c.tags.in_use()).sum()
    }

    /// Tags the queue uses (`D`, or less after [`Queue::with_depth`]).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Changes the capacity (e.g. after the driver identified the device).
    pub fn set_capacity(&self, sectors: u64) {
        self.capacity.store(sectors, Ordering::Relaxed);
    }

    fn slot(&self, tag: u16) -> Option<&RqSlot> {
        self.slots.get(tag as usize)
    }

    /// A tag of context `h`, waiting (kick, poll that context, the wait hook) as the queue's
    /// `wait` says while none is free.
    fn get_tag(&self, h: usize) -> Option<u16> {
        loop {
            if let Some(t) = self.alloc_tag(h) {
                return Some(t);
            }
            if matches!(self.cfg.wait, Wait::Never) {
                return None;
            }
            self.kick();
            self.hw.poll_hctx(h);
            self.cfg.wait.wait_once();
        }
    }

    fn release(&self, slot: &RqSlot, tag: u16) {
        slot.deadline.store(u64::MAX, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
        if self.single.load(Ordering::Relaxed) {
            // Context 0 holds every tag, from 0.
            self.hctxs[0].tags.free(tag);
        } else {
            self.free_tag(slot.hctx.load(Ordering::Relaxed), tag);
        }
    }
}

impl<const D: usize> BlockDevice for Queue<D> {
    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }
    fn logical_block_size(&self) -> u32 {
        self.limits.logical_block_size
    }
    fn read_only(&self) -> bool {
        self.cfg.read_only
    }
    fn supports(&self, op: Op) -> bool {
        match op {
            Op::Read | Op::Write | Op::Flush => true,
            Op::Discard => self.limits.max_discard_sectors > 0,
            Op::WriteZeroes => self.limits.max_write_zeroes_sectors > 0,
        }
    }
    fn check(&self, bio: &Bio) -> Result<(), BlkError> {
        check_bio_dev(self, bio)
    }
    fn is_leaf(&self) -> bool {
        true
    }
    fn submit(&'static self, bio: Bio, ctx: &CpuCtx) {
        if ctx.plugged() && bio.op().has_data() {
            ctx.add_to_plug(bio);
            return;
        }
        // No plug: a bio that needs no split or bounce goes straight to the driver. One
        // context of one CPU: context 0, known here (no map lookup, no lock).
        let bio = match self.direct_segments(&bio) {
            None => bio,
            Some(segs) => {
                let r = if self.single.load(Ordering::Relaxed) {
                    self.submit_direct::<true>(bio, segs, 0)
                } else {
                    self.submit_direct::<false>(bio, segs, self.hw_context_of(ctx.cpu()))
                };
                let Err(bio) = r else { return };
                bio
            }
        };
        let mut l = BioList::new();
        l.push_back(bio);
        self.make_requests(l, ctx.cpu());
    }
    fn flush_plugged(&'static self, bios: BioList, ctx: &CpuCtx) {
        self.make_requests(bios, ctx.cpu());
    }
}
