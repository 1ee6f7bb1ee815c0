//! Mempools: allocations from a shared [`Slab`] (its free list and per-CPU magazines) backed
//! by a reserve of their own, and the owning [`PoolBox`].

use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::error::BlkError;
use crate::freelist::FreeStack;
use crate::magazine::{MAG_SLOTS, MAX_CPUS, Magazines};
use crate::reserve::Reserve;

use super::{Slab, Slot, Wait};

/// Allocation counters of one mempool (relaxed atomics; read with [`Mempool::stats`]).
#[derive(Default)]
pub struct MempoolCounters {
    allocs: AtomicU64,
    frees: AtomicU64,
    reserve_hits: AtomicU64,
    waits: AtomicU64,
    failures: AtomicU64,
    high_water: AtomicU64,
}

/// A snapshot of a mempool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MempoolStats {
    /// Successful allocations.
    pub allocs: u64,
    /// Frees.
    pub frees: u64,
    /// Allocations served by the reserve (the shared slab was empty).
    pub reserve_hits: u64,
    /// Allocations that had to wait for a free.
    pub waits: u64,
    /// Allocations that failed (`Wait::Never` with slab and reserve empty).
    pub failures: u64,
    /// Elements in use now (allocated from this pool, not yet freed).
    pub in_use: u64,
    /// The most elements ever in use at once.
    pub high_water: u64,
    /// Elements in the reserve now.
    pub reserve_len: u32,
}

/// One CPU's allocation counters of one mempool (the magazine hits and the frees into a
/// magazine), on a line of their own.
#[repr(align(64))]
struct CpuCounts {
    allocs: AtomicU64,
    frees: AtomicU64,
}

impl CpuCounts {
    const fn new() -> Self {
        CpuCounts {
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }
}

const UNINIT: u8 = 0;
const INITING: u8 = 1;
const READY: u8 = 2;

/// A mempool: allocations from a shared [`Slab`] backed by `min_nr` reserved elements of its own.
///
/// Allocation tries the shared slab, then the reserve; a may-wait allocation with both empty
/// waits for a free ([`Wait`]). A free refills the reserve first. All lock-free.
pub struct Mempool<T: 'static> {
    pub(super) slots: &'static [Slot<T>],
    links: &'static [AtomicU32],
    shared: &'static FreeStack,
    fresh: &'static AtomicU32,
    reserve: Reserve,
    state: AtomicU8,
    counters: MempoolCounters,
    /// The slab's magazines (shared with every mempool over the slab).
    mags: &'static Magazines,
    /// This pool's counters of allocations and frees served by each CPU's magazine.
    cpu_counts: [CpuCounts; MAX_CPUS],
    /// Set once an allocation of this pool missed a magazine: until then every allocation was
    /// counted on the shared side and the per-CPU counts need no summing.
    mags_used: AtomicU8,
}

/// The CPU id meaning "no CPU": allocations and frees with it use the shared stack.
pub const NO_CPU: u32 = u32::MAX;

// SAFETY: as for `Slab`: each slot has one owner at a time, handed over through the lock-free
// stacks; the counters are atomics.
unsafe impl<T: Send> Sync for Mempool<T> {}

impl<T: 'static> Mempool<T> {
    /// A mempool over `slab` keeping `min_nr` elements in reserve. The reserve is filled from
    /// the slab by [`Mempool::init`] (or lazily by the first allocation).
    pub const fn new<const N: usize>(slab: &'static Slab<T, N>, min_nr: u32) -> Self {
        Mempool {
            slots: &slab.slots,
            links: &slab.links,
            shared: &slab.free,
            fresh: &slab.fresh,
            reserve: Reserve::new(min_nr),
            state: AtomicU8::new(UNINIT),
            counters: MempoolCounters {
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                reserve_hits: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                high_water: AtomicU64::new(0),
            },
            mags: &slab.mags,
            cpu_counts: [const { CpuCounts::new() }; MAX_CPUS],
            mags_used: AtomicU8::new(0),
        }
    }

    /// Fills the reserve with `min_nr` elements taken from the shared slab. Idempotent.
    /// `Err(NoMemory)` if the slab could not supply them all (frees top the reserve up later).
    pub fn init(&self) -> Result<(), BlkError> {
        match self
            .state
            .compare_exchange(UNINIT, INITING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(_) => {
                while self.state.load(Ordering::Acquire) != READY {
                    core::hint::spin_loop();
                }
                return Ok(());
            }
        }
        let mut ok = true;
        for _ in 0..self.reserve.min_nr() {
            match self.take_shared() {
                Some(i) => {
                    if !self.reserve.refill(self.links, i) {
                        self.shared.push(self.links, i);
                    }
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        self.state.store(READY, Ordering::Release);
        if ok { Ok(()) } else { Err(BlkError::NoMemory) }
    }

    #[inline]
    fn ensure_init(&self) {
        if self.state.load(Ordering::Acquire) != READY {
            let _ = self.init();
        }
    }

    #[inline]
    fn take_shared(&self) -> Option<u32> {
        if let Some(i) = self.shared.pop(self.links) {
            return Some(i);
        }
        let cap = self.slots.len() as u32;
        if self.fresh.load(Ordering::Relaxed) >= cap {
            return None;
        }
        self.fresh
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f < cap).then_some(f + 1)
            })
            .ok()
    }

    #[inline]
    fn take(&self) -> Option<u32> {
        self.ensure_init();
        let idx = match self.take_shared() {
            Some(i) => i,
            None => {
                let i = self.reserve.take(self.links)?;
                self.counters.reserve_hits.fetch_add(1, Ordering::Relaxed);
                i
            }
        };
        let allocs = self.counters.allocs.fetch_add(1, Ordering::Relaxed) + 1;
        // Counted on the shared side only, elements parked in magazines look in use: an upper
        // bound. Only when it passes the mark are the magazines' counts summed for the exact
        // figure (a magazine miss on a pool below its mark costs no walk over every CPU).
        let in_use = allocs.saturating_sub(self.counters.frees.load(Ordering::Relaxed));
        if in_use > self.counters.high_water.load(Ordering::Relaxed) {
            self.raise_high_water(allocs);
        }
        Some(idx)
    }

    /// Raises the high-water mark to the elements in use now (shared and magazine counts),
    /// `allocs` being the shared side's allocations including the one just made.
    #[inline(never)]
    fn raise_high_water(&self, allocs: u64) {
        let mut in_use = allocs.saturating_sub(self.counters.frees.load(Ordering::Relaxed));
        if self.mags_used.load(Ordering::Relaxed) != 0 {
            let (a, f) = self.mag_counts();
            in_use = (allocs + a).saturating_sub(self.counters.frees.load(Ordering::Relaxed) + f);
        }
        self.counters
            .high_water
            .fetch_max(in_use, Ordering::Relaxed);
    }

    /// Allocations and frees of this pool counted per CPU (magazine hits and frees into a
    /// magazine).
    fn mag_counts(&self) -> (u64, u64) {
        self.cpu_counts.iter().fold((0, 0), |(a, f), c| {
            (
                a + c.allocs.load(Ordering::Relaxed),
                f + c.frees.load(Ordering::Relaxed),
            )
        })
    }

    /// Takes an element from any CPU's magazine of the slab, whichever pool parked it there
    /// (the shared stack and this pool's reserve are empty).
    fn steal(&self) -> Option<u32> {
        let i = self.mags.steal()?;
        self.counters.allocs.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// As `take`, CPU `cpu`'s magazine first.
    #[inline]
    fn take_on(&self, cpu: u32) -> Option<u32> {
        if let (Some(m), Some(c)) = (self.mags.get(cpu), self.cpu_counts.get(cpu as usize)) {
            if let Some(i) = m.take() {
                c.allocs.fetch_add(1, Ordering::Relaxed);
                return Some(i);
            }
            if self.mags_used.load(Ordering::Relaxed) == 0 {
                self.mags_used.store(1, Ordering::Relaxed);
                self.mags.mark_used();
            }
        }
        self.take()
    }

    /// Returns slot `idx` freed on CPU `cpu`: the reserve if it is short, else that CPU's
    /// magazine, else the shared stack.
    #[inline]
    pub(super) fn put_on(&self, cpu: u32, idx: u32) {
        if let (Some(m), Some(c)) = (self.mags.get(cpu), self.cpu_counts.get(cpu as usize))
            && !self.reserve.is_short()
            && m.put(idx)
        {
            c.frees.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.put(idx);
    }

    /// Returns slot `idx` (whose value has been dropped or moved out): reserve first.
    #[inline]
    pub(super) fn put(&self, idx: u32) {
        self.counters.frees.fetch_add(1, Ordering::Relaxed);
        if self.reserve.refill(self.links, idx) {
            return;
        }
        self.shared.push(self.links, idx);
    }

    #[inline]
    pub(super) fn slot_ptr(&self, idx: u32) -> *mut T {
        // `idx` always comes from this pool's stacks, so it is in bounds.
        self.slots[idx as usize].0.get().cast::<T>()
    }

    #[inline]
    pub(super) fn take_waiting_on(&self, cpu: u32, wait: Wait) -> Option<u32> {
        if let Some(i) = self.take_on(cpu) {
            return Some(i);
        }
        if let Some(i) = self.steal() {
            return Some(i);
        }
        if matches!(wait, Wait::Never) {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            wait.wait_once();
            if let Some(i) = self.take_on(cpu).or_else(|| self.steal()) {
                return Some(i);
            }
        }
    }

    /// Allocates an element holding `value` without waiting; gives `value` back on failure.
    #[inline]
    pub fn try_alloc(&'static self, value: T) -> Result<PoolBox<T>, T> {
        self.alloc(value, Wait::Never)
    }

    /// Allocates an element holding `value`, waiting as `wait` says when the slab and the
    /// reserve are empty. Only `Wait::Never` can fail.
    #[inline]
    pub fn alloc(&'static self, value: T, wait: Wait) -> Result<PoolBox<T>, T> {
        self.alloc_on(NO_CPU, value, wait)
    }

    /// As [`Mempool::alloc`] on CPU `cpu`: served from that CPU's magazine (a few free elements
    /// kept in front of the shared stack, on a cache line of its own) when it has one, and the
    /// returned box goes back there when dropped. Any `cpu` is safe (a wrong or shared id only
    /// costs speed); ids `>= MAX_CPUS` use the shared stack. Usable from interrupt context.
    #[inline]
    pub fn alloc_on(&'static self, cpu: u32, value: T, wait: Wait) -> Result<PoolBox<T>, T> {
        match self.take_waiting_on(cpu, wait) {
            Some(idx) => {
                // SAFETY: `idx` was just taken from a magazine, popped or bumped, so this pool
                // owns the slot exclusively and it holds no live value; writing initialises it.
                unsafe { self.slot_ptr(idx).write(value) };
                Ok(PoolBox {
                    pool: self,
                    idx,
                    cpu,
                })
            }
            None => Err(value),
        }
    }

    /// As [`Mempool::try_alloc`] on CPU `cpu` (see [`Mempool::alloc_on`]).
    #[inline]
    pub fn try_alloc_on(&'static self, cpu: u32, value: T) -> Result<PoolBox<T>, T> {
        self.alloc_on(cpu, value, Wait::Never)
    }

    /// Whether an allocation would have to wait now: the shared slab (free list, never-used
    /// slots and every magazine) and the reserve are empty. A plug uses it to stop holding
    /// bios of a pool that only their completion would refill (`CpuCtx::add_to_plug`).
    pub fn exhausted(&self) -> bool {
        self.shared.is_empty()
            && self.fresh.load(Ordering::Relaxed) as usize >= self.slots.len()
            && self.reserve.is_empty()
            && self.mags.all_empty()
    }

    /// Free elements cached in the slab's per-CPU magazines now (at most
    /// `MAG_SLOTS * MAX_CPUS`; shared by every mempool over the slab).
    pub fn cached(&self) -> usize {
        self.mags.len()
    }

    /// Most free elements the per-CPU magazines of one slab can hold.
    pub const MAX_CACHED: usize = MAG_SLOTS * MAX_CPUS;

    /// A snapshot of the counters.
    pub fn stats(&self) -> MempoolStats {
        let (ma, mf) = self.mag_counts();
        let allocs = self.counters.allocs.load(Ordering::Relaxed) + ma;
        let frees = self.counters.frees.load(Ordering::Relaxed) + mf;
        MempoolStats {
            allocs,
            frees,
            reserve_hits: self.counters.reserve_hits.load(Ordering::Relaxed),
            waits: self.counters.waits.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            in_use: allocs.saturating_sub(frees),
            high_water: self.counters.high_water.load(Ordering::Relaxed),
            reserve_len: self.reserve.len(),
        }
    }

    /// The reserve size this pool keeps.
    pub fn min_nr(&self) -> u32 {
        self.reserve.min_nr()
    }
}

/// An owned element of a [`Mempool`], returned to its pool on drop (a `Box` without a heap).
pub struct PoolBox<T: 'static> {
    pub(super) pool: &'static Mempool<T>,
    pub(super) idx: u32,
    pub(super) cpu: u32,
}

// SAFETY: a `PoolBox` is the unique owner of its value, like `Box<T>`.
unsafe impl<T: Send> Send for PoolBox<T> {}
// SAFETY: shared access to a `PoolBox` only gives `&T`.
unsafe impl<T: Sync> Sync for PoolBox<T> {}

impl<T> PoolBox<T> {
    /// The slot index (stable while allocated).
    pub fn index(&self) -> u32 {
        self.idx
    }

    /// Moves the value out and frees the slot.
    pub fn into_inner(self) -> T {
        let this = ManuallyDrop::new(self);
        // SAFETY: the slot holds an initialised value owned by this box; `this` is never
        // dropped, so the value is read out exactly once before the slot is freed.
        let v = unsafe { this.pool.slot_ptr(this.idx).read() };
        this.pool.put_on(this.cpu, this.idx);
        v
    }

    /// Frees on CPU `cpu` (into its magazine) instead of the CPU given at allocation.
    pub fn free_on(mut self, cpu: u32) {
        // The slot may land in a magazine no allocation of this pool has missed yet.
        self.pool.mags.mark_used();
        self.cpu = cpu;
    }

    /// The address of the value (its "physical" address in an identity-mapped kernel).
    pub fn addr(&self) -> usize {
        self.pool.slot_ptr(self.idx) as usize
    }
}

impl<T> Deref for PoolBox<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the slot is initialised and owned by this box; shared borrow of the box.
        unsafe { &*self.pool.slot_ptr(self.idx) }
    }
}

impl<T> DerefMut for PoolBox<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the slot is initialised and uniquely owned by this box; unique borrow.
        unsafe { &mut *self.pool.slot_ptr(self.idx) }
    }
}

impl<T> Drop for PoolBox<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the slot holds an initialised value owned by this box, dropped once here.
        unsafe { core::ptr::drop_in_place(self.pool.slot_ptr(self.idx)) };
        self.pool.put_on(self.cpu, self.idx);
    }
}
