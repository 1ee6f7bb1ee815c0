//! A mempool's reserve: up to `min_nr` free elements of its own, kept on a Treiber stack over
//! the same links as the shared slab's free list. Frees refill it before anything else, and
//! allocations reach it only when the shared slab is empty, so a pool keeps `min_nr` elements
//! for itself whatever other pools on the slab do. Lock-free; loom checks it with the shared
//! stack beside it (`cargo xtask test` runs the models with the other host tests).

use crate::freelist::FreeStack;
use crate::loom::{AtomicU32, Ordering};

/// The reserve of one mempool.
pub struct Reserve {
    stack: FreeStack,
    len: AtomicU32,
    min_nr: u32,
}

impl Reserve {
    /// An empty reserve that keeps up to `min_nr` elements.
    #[cfg(not(loom))]
    pub const fn new(min_nr: u32) -> Self {
        Reserve {
            stack: FreeStack::new(),
            len: AtomicU32::new(0),
            min_nr,
        }
    }

    /// An empty reserve that keeps up to `min_nr` elements.
    #[cfg(loom)]
    pub fn new(min_nr: u32) -> Self {
        Reserve {
            stack: FreeStack::new(),
            len: AtomicU32::new(0),
            min_nr,
        }
    }

    /// The size it keeps.
    pub fn min_nr(&self) -> u32 {
        self.min_nr
    }

    /// Elements in it now (a count that may run a little ahead of the stack while a refill
    /// is between its count and its push).
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether its stack is empty.
    pub fn is_empty(&self) -> bool {
        self.stack.is_empty()
    }

    /// Whether it holds fewer than `min_nr` (a free should come here).
    #[inline]
    pub fn is_short(&self) -> bool {
        self.len() < self.min_nr
    }

    /// Takes an element (the shared slab is empty).
    #[inline]
    pub fn take(&self, links: &[AtomicU32]) -> Option<u32> {
        let i = self.stack.pop(links)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(i)
    }

    /// Keeps free element `idx` if the reserve is short (`true`); otherwise the caller keeps
    /// it (`false`). The count is claimed first, so concurrent frees never overfill it.
    #[inline]
    pub fn refill(&self, links: &[AtomicU32], idx: u32) -> bool {
        let mut n = self.len.load(Ordering::Relaxed);
        while n < self.min_nr {
            match self
                .len
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.stack.push(links, idx);
                    return true;
                }
                Err(now) => n = now,
            }
        }
        false
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::freelist::NIL;
    use loom::sync::Arc;

    /// A pool with a reserve of 1 beside a shared stack over the same links, three elements:
    /// two CPUs allocate (shared first, then the reserve) and free (reserve first) at once,
    /// with the shared stack driven empty. Nothing is lost or handed out twice, and the
    /// reserve ends full.
    #[test]
    fn loom_reserve_alloc_free_two_cpus() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let links = Arc::new((0..3).map(|_| AtomicU32::new(NIL)).collect::<Vec<_>>());
            let shared = Arc::new(FreeStack::new());
            let r = Arc::new(Reserve::new(1));
            assert!(r.refill(&links, 0));
            assert!(!r.refill(&links, 1), "a full reserve refuses");
            shared.push(&links, 1);
            shared.push(&links, 2);
            let alloc =
                |l: &[AtomicU32], s: &FreeStack, r: &Reserve| s.pop(l).or_else(|| r.take(l));
            let free = |l: &[AtomicU32], s: &FreeStack, r: &Reserve, i: u32| {
                if !r.refill(l, i) {
                    s.push(l, i);
                }
            };
            let (l2, s2, r2) = (links.clone(), shared.clone(), r.clone());
            let t = loom::thread::spawn(move || {
                let a = alloc(&l2, &s2, &r2);
                let b = alloc(&l2, &s2, &r2);
                for i in [a, b].into_iter().flatten() {
                    free(&l2, &s2, &r2, i);
                }
                (a, b)
            });
            let mine = alloc(&links, &shared, &r);
            let (a, b) = t.join().unwrap();
            let mut held = [false; 3];
            for i in [mine, a, b].into_iter().flatten() {
                held[i as usize] = true;
            }
            if let Some(i) = mine {
                free(&links, &shared, &r, i);
            }
            let mut seen = [false; 3];
            while let Some(i) = shared.pop(&links).or_else(|| r.take(&links)) {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true; 3], "lost element (held {held:?})");
            assert_eq!(r.len(), 0, "count follows the stack");
        });
    }
}
