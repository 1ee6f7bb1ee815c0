//! Static slabs, lock-free mempools, and the owning handles into their slots.
//!
//! This is one of the two modules of the crate allowed to use `unsafe` (the other is `mem`).
//! Every slot is handed to exactly one owner at a time by a [`FreeStack`] pop; the handles here
//! (`PoolBox`, `Node`, `VecBuf`, `ChainRef`, `WaitRef`) are the only ways to reach a slot's
//! value and they keep that single-owner rule.

use core::any::TypeId;
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use core::task::Waker;

use crate::error::BlkError;
pub use crate::freelist::{FreeStack, NIL};
use crate::magazine::{MAG_SLOTS, MAX_CPUS, Magazine};

/// How a may-wait allocation waits when both the shared slab and the reserve are empty.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    /// Do not wait: fail with `NoMemory`.
    Never,
    /// Spin (with a CPU relax hint) until an element is freed.
    Spin,
    /// Call the kernel's hook (e.g. halt until the next interrupt) between attempts.
    Hook(fn()),
}

impl Wait {
    /// Waits once.
    #[inline]
    pub fn wait_once(self) {
        match self {
            Wait::Never => {}
            Wait::Spin => core::hint::spin_loop(),
            Wait::Hook(f) => f(),
        }
    }
}

/// One slot of a slab.
pub struct Slot<T>(UnsafeCell<MaybeUninit<T>>);

impl<T> Slot<T> {
    const fn empty() -> Self {
        Slot(UnsafeCell::new(MaybeUninit::uninit()))
    }
}

/// `N` slots of `T` in static storage plus their lock-free free list.
///
/// Slots never used yet are handed out by a bump counter, so `new` is `const` and there is no
/// initialisation pass. Mempools ([`Mempool`]) share a slab and keep their own reserves.
pub struct Slab<T, const N: usize> {
    slots: [Slot<T>; N],
    links: [AtomicU32; N],
    free: FreeStack,
    fresh: AtomicU32,
}

// SAFETY: a slot's value is only reached through the owning handles of this module, and a slot
// has one owner at a time (it is popped from a free list or bumped from `fresh` exactly once
// before it is pushed back). Values move between threads with their owner, so `T: Send` suffices.
unsafe impl<T: Send, const N: usize> Sync for Slab<T, N> {}

impl<T, const N: usize> Default for Slab<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Slab<T, N> {
    /// An empty slab (all slots free).
    pub const fn new() -> Self {
        assert!(N < NIL as usize, "slab too large");
        Slab {
            slots: [const { Slot::empty() }; N],
            links: [const { AtomicU32::new(NIL) }; N],
            free: FreeStack::new(),
            fresh: AtomicU32::new(0),
        }
    }

    /// Number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }
}

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

const UNINIT: u8 = 0;
const INITING: u8 = 1;
const READY: u8 = 2;

/// A mempool: allocations from a shared [`Slab`] backed by `min_nr` reserved elements of its own.
///
/// Allocation tries the shared slab, then the reserve; a may-wait allocation with both empty
/// waits for a free ([`Wait`]). A free refills the reserve first. All lock-free.
pub struct Mempool<T: 'static> {
    slots: &'static [Slot<T>],
    links: &'static [AtomicU32],
    shared: &'static FreeStack,
    fresh: &'static AtomicU32,
    reserve: FreeStack,
    reserve_len: AtomicU32,
    min_nr: u32,
    state: AtomicU8,
    counters: MempoolCounters,
    mags: [Magazine; MAX_CPUS],
    mags_used: AtomicU8,
}

/// The CPU id of a [`PoolBox`] allocated without one.
const NO_CPU: u32 = u32::MAX;

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
            reserve: FreeStack::new(),
            reserve_len: AtomicU32::new(0),
            min_nr,
            state: AtomicU8::new(UNINIT),
            counters: MempoolCounters {
                allocs: AtomicU64::new(0),
                frees: AtomicU64::new(0),
                reserve_hits: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                high_water: AtomicU64::new(0),
            },
            mags: [const { Magazine::new() }; MAX_CPUS],
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
        for _ in 0..self.min_nr {
            match self.take_shared() {
                Some(i) => {
                    self.reserve_len.fetch_add(1, Ordering::Relaxed);
                    self.reserve.push(self.links, i);
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
                let i = self.reserve.pop(self.links)?;
                self.reserve_len.fetch_sub(1, Ordering::Relaxed);
                self.counters.reserve_hits.fetch_add(1, Ordering::Relaxed);
                i
            }
        };
        let allocs = self.counters.allocs.fetch_add(1, Ordering::Relaxed) + 1;
        let mut in_use = allocs.saturating_sub(self.counters.frees.load(Ordering::Relaxed));
        if self.mags_used.load(Ordering::Relaxed) != 0 {
            let (a, f) = self.mag_counts();
            in_use = (allocs + a).saturating_sub(self.counters.frees.load(Ordering::Relaxed) + f);
        }
        if in_use > self.counters.high_water.load(Ordering::Relaxed) {
            self.counters
                .high_water
                .fetch_max(in_use, Ordering::Relaxed);
        }
        Some(idx)
    }

    /// Allocations and frees counted in the magazines.
    fn mag_counts(&self) -> (u64, u64) {
        self.mags.iter().fold((0, 0), |(a, f), m| {
            let (ma, mf) = m.counts();
            (a + ma, f + mf)
        })
    }

    /// Takes an element from any CPU's magazine (the shared stack and the reserve are empty).
    fn steal(&self) -> Option<u32> {
        if self.mags_used.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let i = self.mags.iter().find_map(|m| m.take())?;
        self.counters.allocs.fetch_add(1, Ordering::Relaxed);
        Some(i)
    }

    /// As `take`, CPU `cpu`'s magazine first.
    #[inline]
    fn take_on(&self, cpu: u32) -> Option<u32> {
        if let Some(m) = self.mags.get(cpu as usize) {
            if let Some(i) = m.take() {
                m.count_alloc();
                return Some(i);
            }
            if self.mags_used.load(Ordering::Relaxed) == 0 {
                self.mags_used.store(1, Ordering::Relaxed);
            }
        }
        self.take()
    }

    /// Returns slot `idx` freed on CPU `cpu`: the reserve if it is short, else that CPU's
    /// magazine, else the shared stack.
    #[inline]
    fn put_on(&self, cpu: u32, idx: u32) {
        if let Some(m) = self.mags.get(cpu as usize)
            && self.reserve_len.load(Ordering::Relaxed) >= self.min_nr
            && m.put(idx)
        {
            m.count_free();
            return;
        }
        self.put(idx);
    }

    /// Returns slot `idx` (whose value has been dropped or moved out): reserve first.
    #[inline]
    fn put(&self, idx: u32) {
        self.counters.frees.fetch_add(1, Ordering::Relaxed);
        let mut n = self.reserve_len.load(Ordering::Relaxed);
        while n < self.min_nr {
            match self.reserve_len.compare_exchange_weak(
                n,
                n + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.reserve.push(self.links, idx);
                    return;
                }
                Err(now) => n = now,
            }
        }
        self.shared.push(self.links, idx);
    }

    #[inline]
    fn slot_ptr(&self, idx: u32) -> *mut T {
        // `idx` always comes from this pool's stacks, so it is in bounds.
        self.slots[idx as usize].0.get().cast::<T>()
    }

    #[inline]
    fn take_waiting(&self, wait: Wait) -> Option<u32> {
        self.take_waiting_on(NO_CPU, wait)
    }

    #[inline]
    fn take_waiting_on(&self, cpu: u32, wait: Wait) -> Option<u32> {
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

    /// Free elements cached in the per-CPU magazines now (at most `MAG_SLOTS * MAX_CPUS`).
    pub fn cached(&self) -> usize {
        self.mags.iter().map(|m| m.len()).sum()
    }

    /// Most free elements the per-CPU magazines of one mempool can hold.
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
            reserve_len: self.reserve_len.load(Ordering::Relaxed),
        }
    }

    /// The reserve size this pool keeps.
    pub fn min_nr(&self) -> u32 {
        self.min_nr
    }
}

/// An owned element of a [`Mempool`], returned to its pool on drop (a `Box` without a heap).
pub struct PoolBox<T: 'static> {
    pool: &'static Mempool<T>,
    idx: u32,
    cpu: u32,
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

// ---------------------------------------------------------------------------------------------
// Type-erased handles: bios and bio vectors come from pools of several element types.

/// What a type-erased handle needs from the pool its slot came from.
pub trait SlotHome: Sync {
    /// Drops the value in slot `idx` and frees the slot.
    ///
    /// # Safety
    /// Slot `idx` must be allocated and initialised, and no handle to it may be used afterwards.
    unsafe fn release(&self, idx: u32);
    /// A pointer to the front-pad value of slot `idx` if it has type `ty`.
    fn front_ptr(&self, idx: u32, ty: TypeId) -> Option<NonNull<()>>;
}

impl<E: Send + 'static, const N: usize> SlotHome for Mempool<[E; N]> {
    unsafe fn release(&self, idx: u32) {
        // SAFETY: the caller guarantees slot `idx` is allocated, initialised and not used again.
        unsafe { core::ptr::drop_in_place(self.slot_ptr(idx)) };
        self.put(idx);
    }
    fn front_ptr(&self, _idx: u32, _ty: TypeId) -> Option<NonNull<()>> {
        None
    }
}

/// An owned, type-erased slice from a pool of `[E; N]` arrays (bio vector pools).
pub struct VecBuf<E: 'static> {
    ptr: NonNull<E>,
    len: u32,
    home: &'static dyn SlotHome,
    idx: u32,
}

// SAFETY: unique owner of its slice, like `Box<[E]>`.
unsafe impl<E: Send> Send for VecBuf<E> {}
// SAFETY: shared access only gives `&[E]`.
unsafe impl<E: Sync> Sync for VecBuf<E> {}

impl<E: Send + 'static, const N: usize> PoolBox<[E; N]> {
    /// Erases the array length (and the pool type): an owned `[E]`.
    pub fn into_vecbuf(self) -> VecBuf<E> {
        let this = ManuallyDrop::new(self);
        let ptr = this.pool.slot_ptr(this.idx).cast::<E>();
        VecBuf {
            // The slot pointer comes from a reference into a static array: never null.
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            len: N as u32,
            home: this.pool,
            idx: this.idx,
        }
    }
}

impl<E> Deref for VecBuf<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        // SAFETY: `ptr` points at `len` initialised elements of a slot this handle owns.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }
}

impl<E> DerefMut for VecBuf<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        // SAFETY: as in `deref`, and the borrow of the unique owner is unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }
}

impl<E> Drop for VecBuf<E> {
    fn drop(&mut self) {
        // SAFETY: this handle owns the initialised slot and is never used after drop.
        unsafe { self.home.release(self.idx) };
    }
}

/// The part of a node that may be touched by several parties at once: the chain count, the
/// first error, the waiter handshake and a waker. Only atomics and a try-locked waker.
pub struct NodeHdr {
    remaining: AtomicU32,
    status: AtomicU32,
    wait_state: AtomicU32,
    waker: AtomicWaker,
}

const W_WAITER: u32 = 1;
const W_DONE: u32 = 2;
const W_ABANDONED: u32 = 4;
const W_RELEASED: u32 = 8;

impl NodeHdr {
    const fn new() -> Self {
        NodeHdr {
            remaining: AtomicU32::new(1),
            status: AtomicU32::new(0),
            wait_state: AtomicU32::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// Records `code` (non-zero) unless an error is already recorded: the first error wins.
    pub fn set_status_once(&self, code: u32) {
        let _ = self
            .status
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Overwrites the status code (0 = success).
    pub fn set_status(&self, code: u32) {
        self.status.store(code, Ordering::Release);
    }

    /// The status code (0 = success).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The chain count (1 + outstanding children).
    pub fn remaining(&self) -> u32 {
        self.remaining.load(Ordering::Acquire)
    }
}

/// A slot holding a shared header, a body and a front pad: the slot type of every `BioSet`.
pub struct Padded<B, F> {
    hdr: NodeHdr,
    body: B,
    front: F,
}

impl<B: Send + 'static, F: Send + Sync + 'static> SlotHome for Mempool<Padded<B, F>> {
    unsafe fn release(&self, idx: u32) {
        // SAFETY: the caller guarantees slot `idx` is allocated, initialised and not used again.
        unsafe { core::ptr::drop_in_place(self.slot_ptr(idx)) };
        self.put(idx);
    }
    fn front_ptr(&self, idx: u32, ty: TypeId) -> Option<NonNull<()>> {
        if ty != TypeId::of::<F>() || idx as usize >= self.slots.len() {
            return None;
        }
        let p = self.slot_ptr(idx);
        // SAFETY: `p` points into the static slot array; taking a field address creates no
        // reference.
        let f = unsafe { core::ptr::addr_of_mut!((*p).front) };
        NonNull::new(f.cast::<()>())
    }
}

/// The owned, type-erased handle of a node (a bio): the body `B`, its header and front pad.
///
/// Like a `Box<B>` whose slot may also be referred to by [`ChainRef`]s (children crediting
/// the node when they complete) and one [`WaitRef`] (a waiter); those only touch the header.
pub struct Node<B: 'static> {
    body: NonNull<B>,
    hdr: NonNull<NodeHdr>,
    home: &'static dyn SlotHome,
    idx: u32,
}

// SAFETY: unique owner of the body; the header is only atomics and a spin-locked waker.
unsafe impl<B: Send> Send for Node<B> {}
// SAFETY: `&Node` gives `&B` and `&NodeHdr` (which is Sync).
unsafe impl<B: Sync> Sync for Node<B> {}

impl<B: Send + 'static> Node<B> {
    /// Allocates a node with body `body` and front pad `front` from `pool`.
    pub fn alloc<F: Send + Sync + 'static>(
        pool: &'static Mempool<Padded<B, F>>,
        body: B,
        front: F,
        wait: Wait,
    ) -> Result<Node<B>, (B, F)> {
        let Some(idx) = pool.take_waiting(wait) else {
            return Err((body, front));
        };
        let p = pool.slot_ptr(idx);
        // SAFETY: slot `idx` was just taken from the pool, so it is owned exclusively and
        // uninitialised; writing the whole value initialises it. The field addresses are taken
        // without creating references, so the three handles' regions stay disjoint.
        let (bp, hp) = unsafe {
            p.write(Padded {
                hdr: NodeHdr::new(),
                body,
                front,
            });
            (
                core::ptr::addr_of_mut!((*p).body),
                core::ptr::addr_of_mut!((*p).hdr),
            )
        };
        Ok(Node {
            body: NonNull::new(bp).unwrap_or(NonNull::dangling()),
            hdr: NonNull::new(hp).unwrap_or(NonNull::dangling()),
            home: pool,
            idx,
        })
    }

    /// The shared header.
    #[inline]
    pub fn hdr(&self) -> &NodeHdr {
        // SAFETY: the header lives as long as the slot is allocated, which this handle ensures;
        // it is only ever accessed through shared references.
        unsafe { self.hdr.as_ref() }
    }

    /// The front pad, if it has type `F`.
    pub fn front<F: 'static>(&self) -> Option<&F> {
        let p = self.home.front_ptr(self.idx, TypeId::of::<F>())?;
        // SAFETY: `front_ptr` checked that the pad has type `F`; it is initialised while the
        // slot is allocated; this handle owns the slot, and the shared borrow of the handle
        // bounds the shared borrow of the pad.
        Some(unsafe { p.cast::<F>().as_ref() })
    }

    /// The front pad, mutably, if it has type `F`.
    pub fn front_mut<F: 'static>(&mut self) -> Option<&mut F> {
        let p = self.home.front_ptr(self.idx, TypeId::of::<F>())?;
        // SAFETY: as in `front`; the unique borrow of the unique owner makes this unique, and
        // the pad does not overlap the body or header.
        Some(unsafe { p.cast::<F>().as_mut() })
    }

    /// Takes one more chain reference: the node will not complete (see [`Node::put`]) until
    /// the returned `ChainRef` is put.
    pub fn chain_ref(&self) -> ChainRef<B> {
        self.hdr().remaining.fetch_add(1, Ordering::AcqRel);
        ChainRef {
            body: self.body,
            hdr: self.hdr,
            home: self.home,
            idx: self.idx,
            _p: PhantomData,
        }
    }

    /// Drops the owner's chain reference. If it was the last one, the node is handed back to
    /// complete; otherwise it is parked and the last [`ChainRef::put`] gets it.
    pub fn put(self) -> Option<Node<B>> {
        // Only the owner makes chain references, so a count of 1 seen by the owner means no
        // child is outstanding and none can appear: no read-modify-write needed.
        if self.hdr().remaining.load(Ordering::Acquire) == 1 {
            return Some(self);
        }
        if self.hdr().remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Unique again: restore the owner's own reference.
            self.hdr().remaining.store(1, Ordering::Release);
            Some(self)
        } else {
            core::mem::forget(self);
            None
        }
    }

    /// Registers the one waiter of this node. `None` if a waiter exists already.
    pub fn waiter(&self) -> Option<WaitRef<B>> {
        let prev = self.hdr().wait_state.fetch_or(W_WAITER, Ordering::AcqRel);
        if prev & W_WAITER != 0 {
            return None;
        }
        Some(WaitRef {
            body: self.body,
            hdr: self.hdr,
            home: self.home,
            idx: self.idx,
            _p: PhantomData,
        })
    }

    /// Hands the completed node to its waiter (and wakes it). Without a waiter the node is
    /// dropped; if the waiter went away meanwhile, the node is freed here.
    pub fn finish_to_waiter(self) {
        drop(self);
    }
}

/// Hands a parked node to its waiter: DONE, wake, then RELEASED as the last touch of the header.
/// Frees the slot if the waiter was abandoned.
///
/// # Safety
/// The caller must own the node (no other owner) and never use it again; a waiter exists.
unsafe fn hand_to_waiter(hdr: NonNull<NodeHdr>, home: &'static dyn SlotHome, idx: u32) {
    // SAFETY: the caller owns the allocated node; the slot is released only after W_RELEASED
    // is set below (by the waiter, or here if it was abandoned).
    let h = unsafe { hdr.as_ref() };
    h.wait_state.fetch_or(W_DONE, Ordering::SeqCst);
    h.waker.wake();
    let prev = h.wait_state.fetch_or(W_RELEASED, Ordering::SeqCst);
    if prev & W_ABANDONED != 0 {
        // SAFETY: the waiter is gone and the node was handed over: nothing else refers to the
        // allocated, initialised slot.
        unsafe { home.release(idx) };
    }
}

impl<B> Deref for Node<B> {
    type Target = B;
    #[inline]
    fn deref(&self) -> &B {
        // SAFETY: the body is initialised while the slot is allocated; this handle owns it.
        unsafe { self.body.as_ref() }
    }
}

impl<B> DerefMut for Node<B> {
    #[inline]
    fn deref_mut(&mut self) -> &mut B {
        // SAFETY: as in `deref`; the unique borrow of the unique owner. Chain and wait
        // references never touch the body.
        unsafe { self.body.as_mut() }
    }
}

impl<B: 'static> Drop for Node<B> {
    fn drop(&mut self) {
        // SAFETY: the header is valid while this handle owns the slot.
        let h = unsafe { self.hdr.as_ref() };
        if h.wait_state.load(Ordering::Acquire) & W_WAITER != 0 {
            // SAFETY: this handle is the owner and is not used after drop; a waiter exists.
            unsafe { hand_to_waiter(self.hdr, self.home, self.idx) };
            return;
        }
        // A count of 1 seen by the owner: no chain reference is left (see `put`).
        if h.remaining.load(Ordering::Acquire) == 1
            || h.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            // SAFETY: no chain reference is left and this handle is not used after drop.
            unsafe { self.home.release(self.idx) };
        }
        // Otherwise children still hold chain references; the last one frees the slot.
    }
}

/// A child's reference to its chain parent. Only touches the parent's header.
pub struct ChainRef<B: 'static> {
    body: NonNull<B>,
    hdr: NonNull<NodeHdr>,
    home: &'static dyn SlotHome,
    idx: u32,
    _p: PhantomData<B>,
}

// SAFETY: only the atomic header is accessed through it; the body is reconstituted into a
// `Node` (unique owner) only by the last reference.
unsafe impl<B: Send> Send for ChainRef<B> {}
// SAFETY: `&ChainRef` only gives `&NodeHdr`, which is Sync.
unsafe impl<B: Send> Sync for ChainRef<B> {}

impl<B: Send + 'static> ChainRef<B> {
    /// The parent's header (to record an error).
    pub fn hdr(&self) -> &NodeHdr {
        // SAFETY: the parent cannot be released while this reference holds a count.
        unsafe { self.hdr.as_ref() }
    }

    /// Drops this reference; the last one gets the parent node back to complete it.
    pub fn put(self) -> Option<Node<B>> {
        let this = ManuallyDrop::new(self);
        if this.hdr().remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The owner parked the node (its `put` saw a count above one) and every other
            // reference is gone: this side is now the unique owner.
            this.hdr().remaining.store(1, Ordering::Release);
            Some(Node {
                body: this.body,
                hdr: this.hdr,
                home: this.home,
                idx: this.idx,
            })
        } else {
            None
        }
    }
}

impl<B: 'static> Drop for ChainRef<B> {
    fn drop(&mut self) {
        // SAFETY: the count held by this reference keeps the header valid.
        let h = unsafe { self.hdr.as_ref() };
        if h.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Last reference dropped without completing: free the parent (no end_io).
            // SAFETY: as in `put`, this side is the unique owner of the parked slot.
            unsafe { self.home.release(self.idx) };
        }
    }
}

/// The waiter's handle on a node: becomes the `Node` again once it completed.
pub struct WaitRef<B: 'static> {
    body: NonNull<B>,
    hdr: NonNull<NodeHdr>,
    home: &'static dyn SlotHome,
    idx: u32,
    _p: PhantomData<B>,
}

// SAFETY: only the header is accessed until completion hands the node over.
unsafe impl<B: Send> Send for WaitRef<B> {}
// SAFETY: `&WaitRef` only reads the header's atomics.
unsafe impl<B: Send> Sync for WaitRef<B> {}

impl<B: Send + 'static> WaitRef<B> {
    fn h(&self) -> &NodeHdr {
        // SAFETY: the slot is not released while a waiter exists (the completer frees it only
        // if W_ABANDONED was set by dropping this handle).
        unsafe { self.hdr.as_ref() }
    }

    /// Whether the node completed and was handed over.
    pub fn is_done(&self) -> bool {
        self.h().wait_state.load(Ordering::SeqCst) & W_RELEASED != 0
    }

    /// Takes the node back if it completed.
    pub fn try_take(self) -> Result<Node<B>, Self> {
        if !self.is_done() {
            return Err(self);
        }
        let this = ManuallyDrop::new(self);
        // The handshake is over: the node is an ordinary owned node again.
        this.h().wait_state.store(0, Ordering::Release);
        Ok(Node {
            body: this.body,
            hdr: this.hdr,
            home: this.home,
            idx: this.idx,
        })
    }

    /// Registers `waker` to be woken on completion; true if already done.
    pub fn poll_done(&self, waker: &Waker) -> bool {
        let h = self.h();
        h.waker.register(waker);
        let s = h.wait_state.load(Ordering::SeqCst);
        if s & W_RELEASED != 0 {
            return true;
        }
        if s & W_DONE != 0 {
            // The completer is between DONE and RELEASED: come back very soon.
            waker.wake_by_ref();
        }
        false
    }
}

impl<B: 'static> Drop for WaitRef<B> {
    fn drop(&mut self) {
        // SAFETY: see `h`.
        let h = unsafe { self.hdr.as_ref() };
        let prev = h.wait_state.fetch_or(W_ABANDONED, Ordering::SeqCst);
        if prev & W_RELEASED != 0 {
            // SAFETY: completion handed the node to this waiter, which owns it uniquely.
            unsafe { self.home.release(self.idx) };
        }
    }
}

const AW_IDLE: u8 = 0;
const AW_REGISTERING: u8 = 1;
const AW_WAKING: u8 = 2;

/// A one-waker cell that a completion path (interrupt context) can wake without ever waiting.
pub struct AtomicWaker {
    state: AtomicU8,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cell is only accessed by the party that moved `state` out of AW_IDLE (the
// registrar in AW_REGISTERING, the waker in AW_WAKING from AW_IDLE), so accesses never overlap.
unsafe impl Sync for AtomicWaker {}
// SAFETY: `Waker` is Send.
unsafe impl Send for AtomicWaker {}

impl AtomicWaker {
    /// An empty cell.
    pub const fn new() -> Self {
        AtomicWaker {
            state: AtomicU8::new(AW_IDLE),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `w` (one registrar at a time).
    pub fn register(&self, w: &Waker) {
        match self.state.compare_exchange(
            AW_IDLE,
            AW_REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: AW_REGISTERING gives this side exclusive access to the cell.
                unsafe {
                    let slot = &mut *self.waker.get();
                    match slot {
                        Some(old) if old.will_wake(w) => {}
                        _ => *slot = Some(w.clone()),
                    }
                }
                if self
                    .state
                    .compare_exchange(AW_REGISTERING, AW_IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // A wake came in meanwhile (state is REGISTERING|WAKING): deliver it.
                    // SAFETY: the waker side saw REGISTERING and left the cell to this side.
                    let taken = unsafe { (*self.waker.get()).take() };
                    self.state.swap(AW_IDLE, Ordering::AcqRel);
                    if let Some(t) = taken {
                        t.wake();
                    }
                }
            }
            Err(_) => w.wake_by_ref(),
        }
    }

    /// Wakes the registered waker, if any. Never waits.
    pub fn wake(&self) {
        if self.state.fetch_or(AW_WAKING, Ordering::AcqRel) == AW_IDLE {
            // SAFETY: the state went from AW_IDLE to AW_WAKING: exclusive access to the cell.
            let taken = unsafe { (*self.waker.get()).take() };
            self.state.fetch_and(!AW_WAKING, Ordering::Release);
            if let Some(t) = taken {
                t.wake();
            }
        }
    }
}

impl Default for AtomicWaker {
    fn default() -> Self {
        Self::new()
    }
}
