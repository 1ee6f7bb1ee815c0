//! Per-CPU magazines: a few free element indices a CPU keeps in front of a slab's shared
//! Treiber stack, on 128-byte blocks of their own (pairs of cache lines: the adjacent-line
//! prefetcher fetches lines in pairs). They belong to the slab ([`Magazines`]), so every
//! mempool over the slab takes from and steals from the same ones: an element parked by one
//! pool is never out of reach of another.
//!
//! Every operation on a magazine slot is one atomic instruction (a swap to take, a compare-and-
//! swap of an empty slot to put), so a magazine stays consistent whoever uses it at the same
//! time: an interrupt handler on the same CPU, a thread that migrated, or another CPU stealing
//! from it when the shared stack is empty. There is no `next` link to go stale, so no ABA.

use crate::freelist::NIL;
use crate::loom::{AtomicU8, AtomicU32, Ordering};

/// Free indices a magazine holds: a queue depth of 32 completing in one interrupt fits, so a
/// CPU refilling that depth allocates from its magazine, not from the shared stack (with 8,
/// the batches of a QD32 job spilled to the stack and back on most I/Os).
pub const MAG_SLOTS: usize = 32;

/// Most CPUs a mempool keeps magazines for; other CPU ids use the shared stack directly.
pub const MAX_CPUS: usize = 8;

/// One CPU's magazine.
#[repr(align(128))]
pub struct Magazine {
    slots: [AtomicU32; MAG_SLOTS],
    /// A hint, never trusted for correctness: slots below it are probably full, the rest
    /// probably empty. Whoever takes or puts stores the new position (a plain store, no
    /// read-modify-write), so the owner's take and put go straight to one slot and an empty
    /// or full magazine is seen without a scan. A stale hint only sends an operation to the
    /// scan (which corrects it); elements parked beyond it are reached by the next scan or a
    /// thief ([`Magazine::take_any`]).
    top: AtomicU32,
}

impl Default for Magazine {
    fn default() -> Self {
        Self::new()
    }
}

impl Magazine {
    /// An empty magazine.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Magazine {
            slots: [const { AtomicU32::new(NIL) }; MAG_SLOTS],
            top: AtomicU32::new(0),
        }
    }

    /// An empty magazine.
    #[cfg(loom)]
    pub fn new() -> Self {
        Magazine {
            slots: core::array::from_fn(|_| AtomicU32::new(NIL)),
            top: AtomicU32::new(0),
        }
    }

    /// Takes a free index, if the magazine holds one by its hint; the caller then owns it.
    /// `None` may leave elements parked beyond a stale hint (see [`Magazine::take_any`]).
    #[inline]
    pub fn take(&self) -> Option<u32> {
        let t = self.top.load(Ordering::Relaxed) as usize;
        if t == 0 {
            return None;
        }
        if let Some(s) = self.slots.get(t - 1) {
            // Acquire: the last owner's writes to the element (and its drop) happen before.
            let v = s.swap(NIL, Ordering::Acquire);
            if v != NIL {
                self.top.store(t as u32 - 1, Ordering::Relaxed);
                return Some(v);
            }
        }
        self.take_any()
    }

    /// Takes a free index from any slot (a scan, whatever the hint says): what a thief and
    /// the owner's fallback use.
    #[inline(never)]
    pub fn take_any(&self) -> Option<u32> {
        for (i, s) in self.slots.iter().enumerate() {
            if s.load(Ordering::Relaxed) != NIL {
                // Acquire: as in `take`.
                let v = s.swap(NIL, Ordering::Acquire);
                if v != NIL {
                    self.top.store(i as u32, Ordering::Relaxed);
                    return Some(v);
                }
            }
        }
        self.top.store(0, Ordering::Relaxed);
        None
    }

    /// Puts free index `idx` (owned by the caller) in an empty slot; false if the magazine is
    /// full by its hint (the caller keeps `idx`).
    #[inline]
    pub fn put(&self, idx: u32) -> bool {
        let t = self.top.load(Ordering::Relaxed) as usize;
        let Some(s) = self.slots.get(t) else {
            return false;
        };
        if s.compare_exchange(NIL, idx, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            self.top.store(t as u32 + 1, Ordering::Relaxed);
            return true;
        }
        self.put_any(idx)
    }

    /// Puts `idx` in any empty slot (the hint was stale).
    #[inline(never)]
    fn put_any(&self, idx: u32) -> bool {
        for (i, s) in self.slots.iter().enumerate() {
            if s.load(Ordering::Relaxed) == NIL
                && s.compare_exchange(NIL, idx, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            {
                self.top.store(i as u32 + 1, Ordering::Relaxed);
                return true;
            }
        }
        self.top.store(MAG_SLOTS as u32, Ordering::Relaxed);
        false
    }

    /// Indices held now (a racy count).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != NIL)
            .count()
    }

    /// Whether the magazine looked empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The magazines of one slab, one per CPU, shared by every mempool over it.
pub struct Magazines {
    mags: [Magazine; MAX_CPUS],
    /// Set once an index may have been put in a magazine (a CPU's first magazine miss, or a
    /// free redirected to a CPU): until then a steal has nothing to scan.
    used: AtomicU8,
}

impl Default for Magazines {
    fn default() -> Self {
        Self::new()
    }
}

impl Magazines {
    /// Empty magazines.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Magazines {
            mags: [const { Magazine::new() }; MAX_CPUS],
            used: AtomicU8::new(0),
        }
    }

    /// Empty magazines.
    #[cfg(loom)]
    pub fn new() -> Self {
        Magazines {
            mags: core::array::from_fn(|_| Magazine::new()),
            used: AtomicU8::new(0),
        }
    }

    /// CPU `cpu`'s magazine (`None` for ids `>= MAX_CPUS`).
    #[inline]
    pub fn get(&self, cpu: u32) -> Option<&Magazine> {
        self.mags.get(cpu as usize)
    }

    /// Records that a magazine may hold indices from now on.
    #[inline]
    pub fn mark_used(&self) {
        if self.used.load(Ordering::Relaxed) == 0 {
            self.used.store(1, Ordering::Relaxed);
        }
    }

    /// Takes a free index from any CPU's magazine (a scan of every slot): what an allocation
    /// does once the shared stack and its pool's reserve are empty, so that nothing parked in
    /// a cache is out of reach.
    pub fn steal(&self) -> Option<u32> {
        if self.used.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.mags.iter().find_map(Magazine::take_any)
    }

    /// Whether every magazine looked empty.
    pub fn all_empty(&self) -> bool {
        self.used.load(Ordering::Relaxed) == 0 || self.mags.iter().all(Magazine::is_empty)
    }

    /// Indices held in all of them now (a racy count).
    pub fn len(&self) -> usize {
        self.mags.iter().map(Magazine::len).sum()
    }

    /// Whether they hold nothing now (a racy look).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::freelist::FreeStack;
    use loom::sync::Arc;

    /// The owner CPU takes and puts back through its magazine while an "interrupt" on the same
    /// CPU (another loom thread using the same magazine) does the same and a third party steals:
    /// every index has one owner at a time and none is lost.
    #[test]
    fn loom_magazine_owner_interrupt_steal() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let m = Arc::new(Magazine::new());
            assert!(m.put(0));
            assert!(m.put(1));
            let owned = Arc::new((0..2).map(|_| AtomicU32::new(0)).collect::<Vec<_>>());
            let (m2, o2) = (m.clone(), owned.clone());
            let irq = loom::thread::spawn(move || {
                if let Some(i) = m2.take() {
                    assert_eq!(o2[i as usize].fetch_add(1, Ordering::SeqCst), 0);
                    o2[i as usize].fetch_sub(1, Ordering::SeqCst);
                    assert!(m2.put(i));
                }
            });
            let (m3, o3) = (m.clone(), owned.clone());
            let thief = loom::thread::spawn(move || {
                let i = m3.take_any();
                if let Some(i) = i {
                    assert_eq!(o3[i as usize].fetch_add(1, Ordering::SeqCst), 0);
                    o3[i as usize].fetch_sub(1, Ordering::SeqCst);
                }
                i
            });
            let mine = m.take();
            if let Some(i) = mine {
                assert_eq!(owned[i as usize].fetch_add(1, Ordering::SeqCst), 0);
                owned[i as usize].fetch_sub(1, Ordering::SeqCst);
            }
            irq.join().unwrap();
            let stolen = thief.join().unwrap();
            let mut seen = [false; 2];
            for i in [mine, stolen].into_iter().flatten() {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            while let Some(i) = m.take_any() {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true; 2], "lost element");
        });
    }

    /// A bio allocated on one CPU and completed on another: the completing CPU frees into the
    /// owner's magazine while the owner takes and puts through its hint. Nothing is lost or
    /// handed out twice, whatever the hint says at the end.
    #[test]
    fn loom_magazine_remote_free() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let m = Arc::new(Magazine::new());
            assert!(m.put(0));
            let m2 = m.clone();
            let remote = loom::thread::spawn(move || m2.put(1));
            let mine = m.take();
            let back = mine.map(|i| m.put(i));
            let remote_put = remote.join().unwrap();
            assert!(remote_put, "room for the remote free");
            assert_eq!(back, mine.map(|_| true), "room to put back");
            let mut seen = [false; 2];
            while let Some(i) = m.take_any() {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true; 2], "lost element");
        });
    }

    /// A full magazine spills to the shared stack while another CPU allocates from the
    /// stack and frees into the same magazine.
    #[test]
    fn loom_magazine_spill_to_stack() {
        let mut b = loom::model::Builder::new();
        // Filling a magazine of `MAG_SLOTS` and scanning it are each one atomic operation per
        // slot, more than loom's default branch budget.
        b.max_branches = 20_000;
        b.check(|| {
            let links = Arc::new((0..3).map(|_| AtomicU32::new(NIL)).collect::<Vec<_>>());
            let stack = Arc::new(FreeStack::new());
            let m = Arc::new(Magazine::new());
            for i in 0..MAG_SLOTS as u32 - 1 {
                assert!(m.put(100 + i));
            }
            stack.push(&links, 2);
            let (l2, s2, m2) = (links.clone(), stack.clone(), m.clone());
            let t = loom::thread::spawn(move || {
                if let Some(i) = s2.pop(&l2)
                    && !m2.put(i)
                {
                    s2.push(&l2, i);
                }
            });
            for i in 0..2 {
                if !m.put(i) {
                    stack.push(&links, i);
                }
            }
            t.join().unwrap();
            let mut seen = [false; 3];
            while let Some(i) = m.take_any() {
                if i < 3 {
                    assert!(!seen[i as usize], "duplicated element");
                    seen[i as usize] = true;
                }
            }
            while let Some(i) = stack.pop(&links) {
                assert!(!seen[i as usize], "duplicated element");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true; 3], "lost element");
        });
    }
}
