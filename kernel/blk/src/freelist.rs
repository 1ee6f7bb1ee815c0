//! The index-based Treiber stack every slab and mempool reserve is built on.
//!
//! The head is one `AtomicU64`: the high 32 bits are an ABA tag bumped by every successful CAS,
//! the low 32 bits the index of the top element (`NIL` when empty). Each element has an
//! `AtomicU32` link in a links array shared by every stack that may hold it (a slab's free list
//! and the reserves of the mempools built on that slab). A pop that read a stale `next` fails its
//! CAS because the tag moved. Only 64-bit CAS is needed: lock-free on x86_64 and riscv64.

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// The "no element" index.
pub const NIL: u32 = u32::MAX;

#[inline]
const fn pack(tag: u32, idx: u32) -> u64 {
    ((tag as u64) << 32) | idx as u64
}

#[inline]
const fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

/// A lock-free LIFO of element indices, linked through an external links array.
pub struct FreeStack {
    head: AtomicU64,
}

impl Default for FreeStack {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeStack {
    /// An empty stack.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        FreeStack {
            head: AtomicU64::new(pack(0, NIL)),
        }
    }

    /// An empty stack.
    #[cfg(loom)]
    pub fn new() -> Self {
        FreeStack {
            head: AtomicU64::new(pack(0, NIL)),
        }
    }

    /// Pushes `idx`, which the caller owns (it is in no stack). `idx < links.len()`.
    #[inline]
    pub fn push(&self, links: &[AtomicU32], idx: u32) {
        let Some(link) = links.get(idx as usize) else {
            return;
        };
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            let (tag, top) = unpack(cur);
            link.store(top, Ordering::Relaxed);
            // Release: the element's link (and the owner's last writes to it) become visible
            // to whoever pops it.
            match self.head.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), idx),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Pops the top element, if any; the caller then owns it.
    #[inline]
    pub fn pop(&self, links: &[AtomicU32]) -> Option<u32> {
        let mut cur = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(cur);
            if top == NIL {
                return None;
            }
            // May be stale if `top` was popped and pushed again meanwhile: the tag has then
            // moved and the CAS below fails.
            let next = links.get(top as usize)?.load(Ordering::Relaxed);
            match self.head.compare_exchange_weak(
                cur,
                pack(tag.wrapping_add(1), next),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(top),
                Err(now) => cur = now,
            }
        }
    }

    /// Whether the stack was empty when looked at.
    pub fn is_empty(&self) -> bool {
        unpack(self.head.load(Ordering::Relaxed)).1 == NIL
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    fn links(n: u32) -> Arc<Vec<AtomicU32>> {
        Arc::new((0..n).map(|_| AtomicU32::new(NIL)).collect())
    }

    /// Two threads each pop an element and push it back while the main thread pops one:
    /// no element is ever held by two owners and none is lost.
    #[test]
    fn loom_freestack_pop_push() {
        loom::model(|| {
            let l = links(2);
            let s = Arc::new(FreeStack::new());
            for i in 0..2 {
                s.push(&l, i);
            }
            let owned = Arc::new((0..2).map(|_| AtomicU32::new(0)).collect::<Vec<_>>());
            let (l2, s2, o2) = (l.clone(), s.clone(), owned.clone());
            let h = loom::thread::spawn(move || {
                if let Some(i) = s2.pop(&l2) {
                    assert_eq!(o2[i as usize].fetch_add(1, Ordering::SeqCst), 0);
                    o2[i as usize].fetch_sub(1, Ordering::SeqCst);
                    s2.push(&l2, i);
                }
            });
            let a = s.pop(&l);
            if let Some(i) = a {
                assert_eq!(owned[i as usize].fetch_add(1, Ordering::SeqCst), 0);
                owned[i as usize].fetch_sub(1, Ordering::SeqCst);
            }
            h.join().unwrap();
            if let Some(i) = a {
                s.push(&l, i);
            }
            let mut seen = [false; 2];
            while let Some(i) = s.pop(&l) {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true; 2], "lost element");
        });
    }

    /// The ABA case: thread A reads top=x, next=y; B pops x, pops y, pushes x. A's CAS must
    /// fail (tag moved), otherwise y would be handed out twice.
    #[test]
    fn loom_freestack_aba() {
        loom::model(|| {
            let l = links(2);
            let s = Arc::new(FreeStack::new());
            s.push(&l, 1);
            s.push(&l, 0);
            let (l2, s2) = (l.clone(), s.clone());
            let t = loom::thread::spawn(move || {
                let a = s2.pop(&l2);
                let b = s2.pop(&l2);
                if let Some(a) = a {
                    s2.push(&l2, a);
                }
                b
            });
            let mine = s.pop(&l);
            let theirs = t.join().unwrap();
            if let (Some(m), Some(t)) = (mine, theirs) {
                assert_ne!(m, t, "element handed out twice");
            }
            let mut count = mine.is_some() as u32 + theirs.is_some() as u32;
            while s.pop(&l).is_some() {
                count += 1;
            }
            assert_eq!(count, 2);
        });
    }

    /// A mempool's shared slab and its reserve are two stacks over one links array: elements
    /// move between them concurrently and are neither lost nor duplicated.
    #[test]
    fn loom_two_stacks_share_links() {
        loom::model(|| {
            let l = links(2);
            let a = Arc::new(FreeStack::new());
            let b = Arc::new(FreeStack::new());
            a.push(&l, 0);
            b.push(&l, 1);
            let (l2, a2, b2) = (l.clone(), a.clone(), b.clone());
            let t = loom::thread::spawn(move || {
                if let Some(i) = a2.pop(&l2) {
                    b2.push(&l2, i);
                }
            });
            if let Some(i) = b.pop(&l) {
                a.push(&l, i);
            }
            t.join().unwrap();
            let mut seen = [false; 2];
            for s in [&a, &b] {
                while let Some(i) = s.pop(&l) {
                    assert!(!seen[i as usize], "duplicated element");
                    seen[i as usize] = true;
                }
            }
            assert_eq!(seen, [true; 2], "lost element");
        });
    }
}
