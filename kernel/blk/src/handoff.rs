//! The two protocols that hand a bio from one owner to the next across CPUs, as atomic state
//! of the bio's header (`slab::NodeHdr`), checked by loom:
//!
//! - [`ChainCount`]: a chain parent and its split children. The parent's owner and every
//!   child hold a count; the last one to let go gets the parent back to complete it, whichever
//!   CPU completes which part.
//! - [`WaitState`]: a waiter (`submit_bio_wait`, a `BioFuture`) and the completer, which may
//!   run on another CPU. The completer marks DONE, wakes, then RELEASED as its last touch of
//!   the header; a waiter that gives up marks ABANDONED. Whoever sees the other's mark frees.

use crate::loom::{AtomicU32, Ordering};

/// The chain count of a bio: 1 for its owner plus one per outstanding child.
pub struct ChainCount(AtomicU32);

impl ChainCount {
    /// Only the owner's count.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        ChainCount(AtomicU32::new(1))
    }

    /// Only the owner's count.
    #[cfg(loom)]
    pub fn new() -> Self {
        ChainCount(AtomicU32::new(1))
    }

    /// The count now.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// A child takes a count (only the owner makes children).
    pub fn add_ref(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// The owner lets go of its count to complete the bio: `true` if it is the last (the owner
    /// goes on to complete it, with its own count restored), `false` if children are left (the
    /// last of them gets the bio).
    #[inline]
    pub fn owner_put(&self) -> bool {
        // Only the owner makes children, so a count of 1 seen by the owner means none is
        // outstanding and none can appear: no read-modify-write needed.
        if self.0.load(Ordering::Acquire) == 1 {
            return true;
        }
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.store(1, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// The owner drops the bio without completing it: `true` if nothing else holds a count
    /// (free it now).
    #[inline]
    pub fn owner_drop(&self) -> bool {
        self.0.load(Ordering::Acquire) == 1 || self.0.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// A child completes: `true` if it was the last count (the parent was parked by its
    /// owner; this side now owns it, with the owner's count restored).
    #[inline]
    pub fn child_put(&self) -> bool {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.store(1, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// A child is dropped without completing: `true` if it was the last count (free the
    /// parent).
    #[inline]
    pub fn child_drop(&self) -> bool {
        self.0.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

impl Default for ChainCount {
    fn default() -> Self {
        Self::new()
    }
}

const W_WAITER: u32 = 1;
const W_DONE: u32 = 2;
const W_ABANDONED: u32 = 4;
const W_RELEASED: u32 = 8;

/// Where a waited-for bio is, as its waiter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPoll {
    /// Handed over: the waiter may take it.
    Released,
    /// The completer is between DONE and RELEASED: look again very soon.
    Completing,
    /// Not completed.
    Pending,
}

/// The waiter handshake of a bio.
pub struct WaitState(AtomicU32);

impl WaitState {
    /// No waiter.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        WaitState(AtomicU32::new(0))
    }

    /// No waiter.
    #[cfg(loom)]
    pub fn new() -> Self {
        WaitState(AtomicU32::new(0))
    }

    /// Registers the one waiter: `false` if there is one already.
    pub fn register(&self) -> bool {
        self.0.fetch_or(W_WAITER, Ordering::AcqRel) & W_WAITER == 0
    }

    /// Whether a waiter is registered (the completer then hands the bio over).
    #[inline]
    pub fn has_waiter(&self) -> bool {
        self.0.load(Ordering::Acquire) & W_WAITER != 0
    }

    /// The completer hands the bio over: DONE, `wake`, then RELEASED as its last touch.
    /// `true` if the waiter had abandoned it: the completer frees it.
    pub fn hand_over(&self, wake: impl FnOnce()) -> bool {
        self.0.fetch_or(W_DONE, Ordering::SeqCst);
        wake();
        self.0.fetch_or(W_RELEASED, Ordering::SeqCst) & W_ABANDONED != 0
    }

    /// What the waiter sees now.
    pub fn poll(&self) -> WaitPoll {
        let s = self.0.load(Ordering::SeqCst);
        if s & W_RELEASED != 0 {
            WaitPoll::Released
        } else if s & W_DONE != 0 {
            WaitPoll::Completing
        } else {
            WaitPoll::Pending
        }
    }

    /// The waiter took the released bio: it is an ordinary owned bio again.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// The waiter gives up: `true` if the bio was already released to it (the waiter frees
    /// it); otherwise the completer will.
    pub fn abandon(&self) -> bool {
        self.0.fetch_or(W_ABANDONED, Ordering::SeqCst) & W_RELEASED != 0
    }
}

impl Default for WaitState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    /// A parent split in two: the children complete on two CPUs while the owner completes its
    /// own part: exactly one of the three gets the parent.
    #[test]
    fn loom_chain_parent_completes_once() {
        loom::model(|| {
            let c = Arc::new(ChainCount::new());
            c.add_ref();
            c.add_ref();
            let got = Arc::new(AtomicUsize::new(0));
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (c, got) = (c.clone(), got.clone());
                    loom::thread::spawn(move || {
                        if c.child_put() {
                            got.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            if c.owner_put() {
                got.fetch_add(1, Ordering::SeqCst);
            }
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(got.load(Ordering::SeqCst), 1);
            assert_eq!(c.get(), 1, "the owner's count is restored");
        });
    }

    /// A child dropped on another CPU while the owner drops the parent: freed exactly once.
    #[test]
    fn loom_chain_dropped_freed_once() {
        loom::model(|| {
            let c = Arc::new(ChainCount::new());
            c.add_ref();
            let c2 = c.clone();
            let h = loom::thread::spawn(move || c2.child_drop());
            let mine = c.owner_drop();
            let theirs = h.join().unwrap();
            assert!(mine ^ theirs, "freed {} times", mine as u8 + theirs as u8);
        });
    }

    /// The completer on one CPU hands the bio over while the waiter on another polls a few
    /// times and then gives up: the bio has exactly one owner at the end (taken by the waiter,
    /// or freed by whoever saw the other's mark), and the waiter never takes it before
    /// RELEASED.
    #[test]
    fn loom_waiter_handshake() {
        loom::model(|| {
            let w = Arc::new(WaitState::new());
            assert!(w.register());
            assert!(!w.register());
            let woken = Arc::new(AtomicUsize::new(0));
            let (w2, k2) = (w.clone(), woken.clone());
            let completer = loom::thread::spawn(move || {
                assert!(w2.has_waiter());
                w2.hand_over(|| {
                    k2.fetch_add(1, Ordering::SeqCst);
                })
            });
            // The waiter: two looks, then it gives up.
            let mut taken = false;
            for _ in 0..2 {
                if w.poll() == WaitPoll::Released {
                    assert_eq!(woken.load(Ordering::SeqCst), 1, "released before the wake");
                    w.reset();
                    taken = true;
                    break;
                }
                loom::thread::yield_now();
            }
            let waiter_frees = !taken && w.abandon();
            let completer_frees = completer.join().unwrap();
            let owners = taken as u8 + waiter_frees as u8 + completer_frees as u8;
            assert_eq!(
                owners, 1,
                "taken {taken}, waiter frees {waiter_frees}, completer frees {completer_frees}"
            );
        });
    }
}
