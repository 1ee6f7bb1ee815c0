//! Type-erased handles into slots: bios ([`Node`], [`ChainRef`], [`WaitRef`]) and bio
//! vectors ([`VecBuf`]) come from pools of several element types.

use core::any::TypeId;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::Waker;

use super::{AtomicWaker, Mempool, NO_CPU, PoolBox, Wait};
use crate::handoff::{ChainCount, WaitPoll, WaitState};

// ---------------------------------------------------------------------------------------------
// Type-erased handles: bios and bio vectors come from pools of several element types.

/// What a type-erased handle needs from the pool its slot came from.
pub trait SlotHome: Sync {
    /// Drops the value in slot `idx` and frees the slot, into CPU `cpu`'s magazine if it has
    /// room (`NO_CPU`: the shared stack; any id is sound, see [`Mempool::alloc_on`]).
    ///
    /// # Safety
    /// Slot `idx` must be allocated and initialised, and no handle to it may be used afterwards.
    unsafe fn release(&self, idx: u32, cpu: u32);
    /// A pointer to the front-pad value of slot `idx` if it has type `ty`.
    fn front_ptr(&self, idx: u32, ty: TypeId) -> Option<NonNull<()>>;
    /// Whether an allocation from this home would have to wait now ([`Mempool::exhausted`]).
    fn exhausted(&self) -> bool {
        false
    }
}

impl<E: Send + 'static, const N: usize> SlotHome for Mempool<[E; N]> {
    unsafe fn release(&self, idx: u32, cpu: u32) {
        // SAFETY: the caller guarantees slot `idx` is allocated, initialised and not used again.
        unsafe { core::ptr::drop_in_place(self.slot_ptr(idx)) };
        self.put_on(cpu, idx);
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
    cpu: u32,
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
            cpu: this.cpu,
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
        unsafe { self.home.release(self.idx, self.cpu) };
    }
}

/// The part of a node that may be touched by several parties at once: the chain count, the
/// first error, the waiter handshake and a waker. Only atomics and a try-locked waker.
pub struct NodeHdr {
    remaining: ChainCount,
    status: AtomicU32,
    wait: WaitState,
    waker: AtomicWaker,
    /// The CPU whose magazine the slot goes back to (set at allocation, read-only after): kept
    /// here, not in every handle, so a bio handle stays as small as on one CPU.
    cpu: u32,
}

impl NodeHdr {
    const fn new(cpu: u32) -> Self {
        NodeHdr {
            remaining: ChainCount::new(),
            status: AtomicU32::new(0),
            wait: WaitState::new(),
            waker: AtomicWaker::new(),
            cpu,
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
        self.remaining.get()
    }
}

/// A slot holding a shared header, a body and a front pad: the slot type of every `BioSet`.
pub struct Padded<B, F> {
    hdr: NodeHdr,
    body: B,
    front: F,
}

impl<B: Send + 'static, F: Send + Sync + 'static> SlotHome for Mempool<Padded<B, F>> {
    unsafe fn release(&self, idx: u32, cpu: u32) {
        // SAFETY: the caller guarantees slot `idx` is allocated, initialised and not used again.
        unsafe { core::ptr::drop_in_place(self.slot_ptr(idx)) };
        self.put_on(cpu, idx);
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
    fn exhausted(&self) -> bool {
        Mempool::exhausted(self)
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
        Self::alloc_on(pool, NO_CPU, body, front, wait)
    }

    /// As [`Node::alloc`], from CPU `cpu`'s magazine (see [`Mempool::alloc_on`]); the node
    /// goes back there when it is freed, whichever CPU frees it.
    #[inline]
    pub fn alloc_on<F: Send + Sync + 'static>(
        pool: &'static Mempool<Padded<B, F>>,
        cpu: u32,
        body: B,
        front: F,
        wait: Wait,
    ) -> Result<Node<B>, (B, F)> {
        let Some(idx) = pool.take_waiting_on(cpu, wait) else {
            return Err((body, front));
        };
        let p = pool.slot_ptr(idx);
        // SAFETY: slot `idx` was just taken from the pool, so it is owned exclusively and
        // uninitialised; writing the whole value initialises it. The field addresses are taken
        // without creating references, so the three handles' regions stay disjoint.
        let (bp, hp) = unsafe {
            p.write(Padded {
                hdr: NodeHdr::new(cpu),
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

    /// Whether the pool this node came from is exhausted ([`Mempool::exhausted`]).
    pub fn pool_exhausted(&self) -> bool {
        self.home.exhausted()
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
        self.hdr().remaining.add_ref();
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
        // `ChainCount::owner_put` (checked by loom in `handoff`).
        if self.hdr().remaining.owner_put() {
            Some(self)
        } else {
            core::mem::forget(self);
            None
        }
    }

    /// Registers the one waiter of this node. `None` if a waiter exists already.
    pub fn waiter(&self) -> Option<WaitRef<B>> {
        if !self.hdr().wait.register() {
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
    // `WaitState::hand_over` (checked by loom in `handoff`).
    if h.wait.hand_over(|| h.waker.wake()) {
        // SAFETY: the waiter is gone and the node was handed over: nothing else refers to the
        // allocated, initialised slot.
        unsafe { home.release(idx, h.cpu) };
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
        if h.wait.has_waiter() {
            // SAFETY: this handle is the owner and is not used after drop; a waiter exists.
            unsafe { hand_to_waiter(self.hdr, self.home, self.idx) };
            return;
        }
        // A count of 1 seen by the owner: no chain reference is left (see `put`).
        if h.remaining.owner_drop() {
            // SAFETY: no chain reference is left and this handle is not used after drop.
            unsafe { self.home.release(self.idx, h.cpu) };
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
        if this.hdr().remaining.child_put() {
            // The owner parked the node (its `put` saw a count above one) and every other
            // reference is gone: this side is now the unique owner.
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
        if h.remaining.child_drop() {
            // Last reference dropped without completing: free the parent (no end_io).
            // SAFETY: as in `put`, this side is the unique owner of the parked slot.
            unsafe { self.home.release(self.idx, h.cpu) };
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
        self.h().wait.poll() == WaitPoll::Released
    }

    /// Takes the node back if it completed.
    pub fn try_take(self) -> Result<Node<B>, Self> {
        if !self.is_done() {
            return Err(self);
        }
        let this = ManuallyDrop::new(self);
        // The handshake is over: the node is an ordinary owned node again.
        this.h().wait.reset();
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
        match h.wait.poll() {
            WaitPoll::Released => true,
            WaitPoll::Completing => {
                // The completer is between DONE and RELEASED: come back very soon.
                waker.wake_by_ref();
                false
            }
            WaitPoll::Pending => false,
        }
    }
}

impl<B: 'static> Drop for WaitRef<B> {
    fn drop(&mut self) {
        // SAFETY: see `h`.
        let h = unsafe { self.hdr.as_ref() };
        if h.wait.abandon() {
            // SAFETY: completion handed the node to this waiter, which owns it uniquely.
            unsafe { self.home.release(self.idx, h.cpu) };
        }
    }
}
