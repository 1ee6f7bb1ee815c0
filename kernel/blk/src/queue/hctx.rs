//! Hardware contexts of a [`Queue`]: one per hardware submission/completion queue the device
//! grants, each with its own tag set (a contiguous range of the queue's request slots), and the
//! map from CPU to hardware context computed at attach time.
//!
//! A CPU submits through the context its map entry names, so with one context per CPU no tag
//! bitmap word and no request slot is written by two CPUs. Where the device grants fewer
//! queues than there are CPUs, several CPUs share a context; only then is the context's lock
//! taken around the driver calls (`queue_rq` .. `commit`).

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::Queue;
use crate::error::BlkError;
use crate::tag::TagSet;

/// Most hardware contexts a queue has (one per CPU the magazines know).
pub const MAX_HW_CTX: usize = crate::magazine::MAX_CPUS;

/// CPU ids the map covers; a larger id uses the entry of `cpu % MAX_CPUS`.
pub const MAX_CPUS: usize = crate::magazine::MAX_CPUS;

/// One hardware context: its tags (local numbers; the queue's tag is `base + local`), whether
/// several CPUs submit to it, and the lock they take then. Aligned so that two contexts never
/// share a cache line (pair), and laid out in order (`repr(C)`) so that what a submission
/// reads (base, shared, the lock, the tag set's depth, hint and first bitmap word) is on the
/// context's first cache line.
#[repr(C, align(128))]
pub(super) struct HwCtx {
    pub(super) base: AtomicU32,
    pub(super) shared: AtomicBool,
    pub(super) lock: spin::Mutex<()>,
    pub(super) tags: TagSet,
}

impl HwCtx {
    pub(super) const fn new(depth: usize) -> Self {
        HwCtx {
            tags: TagSet::new(depth),
            base: AtomicU32::new(0),
            shared: AtomicBool::new(false),
            lock: spin::Mutex::new(()),
        }
    }
}

/// The CPU -> context map for `nr_cpus` CPUs over `nr_ctx` contexts: CPUs are spread in
/// contiguous groups (CPU `c` of `n` goes to `c * nr_ctx / n`), so that neighbours share when
/// they must. Entries past `nr_cpus` wrap (`c % nr_ctx`).
pub fn cpu_to_ctx(cpu: usize, nr_cpus: usize, nr_ctx: usize) -> usize {
    let nr_ctx = nr_ctx.max(1);
    let nr_cpus = nr_cpus.max(1);
    if cpu < nr_cpus {
        cpu * nr_ctx / nr_cpus
    } else {
        cpu % nr_ctx
    }
}

const _: () = assert!(MAX_CPUS.is_power_of_two() && MAX_HW_CTX.is_power_of_two());
// The hot fields (up to the tag set's first bitmap word, 8 bytes past its depth and hint) fit
// in the first 64 bytes of a context.
#[cfg(not(loom))]
const _: () = assert!(core::mem::offset_of!(HwCtx, tags) + 16 <= 64);

impl<const D: usize> Queue<D> {
    /// Splits the queue into `granted` hardware contexts (what the device granted, clamped to
    /// `1..=min(nr_cpus, MAX_HW_CTX, depth)`) and maps the `nr_cpus` online CPUs onto them.
    /// Each context gets `depth / contexts` tags, a contiguous range of the queue's tags
    /// (context `h` owns tags `h * per ..`); a request's context is [`Request::hctx`](crate::request::Request::hctx)
    /// (crate::Request::hctx). Returns the number of contexts. Call it at attach time, with
    /// nothing in flight: `Busy` if a tag is in use.
    pub fn map_hw_contexts(&self, granted: usize, nr_cpus: usize) -> Result<usize, BlkError> {
        if self.tags_in_use() != 0 {
            return Err(BlkError::Busy);
        }
        let depth = self.depth;
        let n = granted
            .min(nr_cpus.max(1))
            .min(MAX_HW_CTX)
            .min(depth)
            .max(1);
        let per = depth / n;
        for (h, c) in self.hctxs.iter().enumerate() {
            let (base, d) = if h < n { (h * per, per) } else { (0, 1) };
            c.tags.set_depth(d);
            c.base.store(base as u32, Ordering::Relaxed);
            let sharers = (0..nr_cpus.max(1))
                .filter(|&cpu| cpu_to_ctx(cpu, nr_cpus, n) == h)
                .count();
            c.shared.store(sharers > 1, Ordering::Relaxed);
        }
        for (t, s) in self.slots.iter().enumerate() {
            // Slots past `n * per` (the remainder) are never handed out.
            let h = (t / per).min(n - 1) as u8;
            s.hctx.store(h, Ordering::Relaxed);
            s.rq.lock().hctx = h as u16;
        }
        for (cpu, m) in self.cpu_map.iter().enumerate() {
            m.store(cpu_to_ctx(cpu, nr_cpus, n) as u8, Ordering::Relaxed);
        }
        let single = n == 1 && !self.hctxs[0].shared.load(Ordering::Relaxed);
        self.single.store(single, Ordering::Relaxed);
        self.nr_hctx.store(n as u8, Ordering::Release);
        Ok(n)
    }

    /// Hardware contexts in use.
    pub fn nr_hw_contexts(&self) -> usize {
        self.nr_hctx.load(Ordering::Relaxed) as usize
    }

    /// The context CPU `cpu` submits through.
    #[inline]
    pub fn hw_context_of(&self, cpu: u32) -> usize {
        // Ids past MAX_CPUS wrap onto the map (a power of two: a mask, no branch).
        let h = self.cpu_map[cpu as usize & (MAX_CPUS - 1)].load(Ordering::Relaxed) as usize;
        h & (MAX_HW_CTX - 1)
    }

    /// Whether submission takes the one-context, one-CPU fast path (no CPU map, no lock):
    /// true until [`Queue::map_hw_contexts`] maps more than one CPU.
    pub fn single_cpu_fast_path(&self) -> bool {
        self.single.load(Ordering::Relaxed)
    }

    /// Whether several CPUs share context `h` (and so lock it).
    pub fn hw_context_shared(&self, h: usize) -> bool {
        self.hctxs
            .get(h)
            .is_some_and(|c| c.shared.load(Ordering::Relaxed))
    }

    /// Tags of context `h` in use now.
    pub fn hw_context_tags_in_use(&self, h: usize) -> usize {
        self.hctxs.get(h).map_or(0, |c| c.tags.in_use())
    }

    #[inline]
    pub(super) fn hctx(&self, h: usize) -> &HwCtx {
        &self.hctxs[h & (MAX_HW_CTX - 1)]
    }

    /// Takes a free tag of context `h` (the queue's tag number), without waiting.
    #[inline]
    pub(crate) fn alloc_tag(&self, h: usize) -> Option<u16> {
        let c = self.hctx(h);
        let t = c.tags.alloc()?;
        Some(t + c.base.load(Ordering::Relaxed) as u16)
    }

    /// Returns tag `tag` (its slot says which context owns it).
    #[inline]
    pub(crate) fn free_tag(&self, h: u8, tag: u16) {
        let c = self.hctx(h as usize);
        c.tags
            .free(tag.wrapping_sub(c.base.load(Ordering::Relaxed) as u16));
    }
}
