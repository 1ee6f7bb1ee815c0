//! Static slabs, lock-free mempools, and the owning handles into their slots.
//!
//! This is one of the two modules of the crate allowed to use `unsafe` (the other is `mem`).
//! Every slot is handed to exactly one owner at a time by a [`FreeStack`] pop; the handles here
//! (`PoolBox`, `Node`, `VecBuf`, `ChainRef`, `WaitRef`) are the only ways to reach a slot's
//! value and they keep that single-owner rule.
//!
//! One file per concept: this one holds the [`Slab`] (static slots and the use of their free
//! list) and [`Wait`]; `mempool.rs` the [`Mempool`] (shared slab plus reserve, per-CPU
//! magazines) and its [`PoolBox`]; `handle.rs` the type-erased slot handles of bios and bio
//! vectors ([`Node`], [`VecBuf`], [`ChainRef`], [`WaitRef`]); `waker.rs` the [`AtomicWaker`].

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::AtomicU32;

pub use crate::freelist::{FreeStack, NIL};
use crate::magazine::Magazines;

mod handle;
mod mempool;
mod waker;

pub use handle::{ChainRef, Node, NodeHdr, Padded, SlotHome, VecBuf, WaitRef};
pub use mempool::{Mempool, MempoolCounters, MempoolStats, NO_CPU, PoolBox};
pub use waker::AtomicWaker;

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
/// initialisation pass. Mempools ([`Mempool`]) share a slab and keep their own reserves; the
/// per-CPU magazines in front of the free list are the slab's, shared by all its mempools.
pub struct Slab<T, const N: usize> {
    slots: [Slot<T>; N],
    links: [AtomicU32; N],
    free: FreeStack,
    fresh: AtomicU32,
    mags: Magazines,
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
            mags: Magazines::new(),
        }
    }

    /// Number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }
}
