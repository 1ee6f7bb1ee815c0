//! A fixed-depth tag set: a lock-free bitmap of in-flight request tags.

use crate::loom::{AtomicU32, AtomicU64, Ordering};

/// Words in the bitmap: up to 1024 tags.
pub const TAG_WORDS: usize = 16;
/// The largest supported queue depth.
pub const MAX_DEPTH: usize = TAG_WORDS * 64;

/// A set of `depth` tags. `alloc` and `free` are lock-free (one `fetch_or` / `fetch_and` per
/// success) and may be called from interrupt context. Laid out in order (`repr(C)`): the depth
/// and the hint, which every `alloc` reads, share a cache line with the first bitmap word.
#[repr(C)]
pub struct TagSet {
    /// Tags `0..depth` are in use; changed only by [`TagSet::set_depth`] (at attach time).
    depth: AtomicU32,
    hint: AtomicU32,
    words: [AtomicU64; TAG_WORDS],
}

impl TagSet {
    /// A tag set of `depth` tags (clamped to `1..=MAX_DEPTH`).
    #[cfg(not(loom))]
    pub const fn new(depth: usize) -> Self {
        let depth = if depth == 0 {
            1
        } else if depth > MAX_DEPTH {
            MAX_DEPTH
        } else {
            depth
        };
        TagSet {
            words: [const { AtomicU64::new(0) }; TAG_WORDS],
            depth: AtomicU32::new(depth as u32),
            hint: AtomicU32::new(0),
        }
    }

    /// A tag set of `depth` tags (clamped to `1..=MAX_DEPTH`).
    #[cfg(loom)]
    pub fn new(depth: usize) -> Self {
        let depth = depth.clamp(1, MAX_DEPTH);
        TagSet {
            words: core::array::from_fn(|_| AtomicU64::new(0)),
            depth: AtomicU32::new(depth as u32),
            hint: AtomicU32::new(0),
        }
    }

    /// The depth.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed) as usize
    }

    /// Uses tags `0..depth` from now on (clamped to `1..=MAX_DEPTH`). Meant for attach time,
    /// before any tag is taken: a tag at or above the new depth that is in use stays in use
    /// until freed (its `free` is refused, so it is lost to the set) and is never handed out
    /// again. Sound either way; only the tag count is at stake.
    pub fn set_depth(&self, depth: usize) {
        let depth = depth.clamp(1, MAX_DEPTH);
        self.depth.store(depth as u32, Ordering::Relaxed);
        self.hint.store(0, Ordering::Relaxed);
    }

    fn word_mask(depth: u32, w: usize) -> u64 {
        let base = w as u32 * 64;
        if depth >= base + 64 {
            u64::MAX
        } else if depth <= base {
            0
        } else {
            (1u64 << (depth - base)) - 1
        }
    }

    /// Takes a free tag, or `None` when all `depth` tags are in use.
    #[inline]
    pub fn alloc(&self) -> Option<u16> {
        let depth = self.depth.load(Ordering::Relaxed);
        let nwords = (depth as usize).div_ceil(64);
        let start = self.hint.load(Ordering::Relaxed) as usize;
        let start = if start < nwords { start } else { 0 };
        for k in 0..nwords {
            let w = if start + k < nwords {
                start + k
            } else {
                start + k - nwords
            };
            let mask = Self::word_mask(depth, w);
            let mut cur = self.words[w].load(Ordering::Relaxed);
            loop {
                let free = !cur & mask;
                if free == 0 {
                    break;
                }
                let bit = free.trailing_zeros();
                let prev = self.words[w].fetch_or(1u64 << bit, Ordering::Acquire);
                if prev & (1u64 << bit) == 0 {
                    if w != start {
                        self.hint.store(w as u32, Ordering::Relaxed);
                    }
                    return Some((w * 64) as u16 + bit as u16);
                }
                cur = prev | (1u64 << bit);
            }
        }
        None
    }

    /// Returns `tag`. Returns false (and changes nothing) if it was not allocated.
    pub fn free(&self, tag: u16) -> bool {
        let (w, bit) = (tag as usize / 64, tag as u32 % 64);
        if tag as u32 >= self.depth.load(Ordering::Relaxed) || w >= TAG_WORDS {
            return false;
        }
        let prev = self.words[w].fetch_and(!(1u64 << bit), Ordering::Release);
        prev & (1u64 << bit) != 0
    }

    /// Whether `tag` is allocated now.
    pub fn is_set(&self, tag: u16) -> bool {
        let w = tag as usize / 64;
        w < TAG_WORDS && self.words[w].load(Ordering::Acquire) & (1u64 << (tag % 64)) != 0
    }

    /// Tags in use now.
    pub fn in_use(&self) -> usize {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn tags_unique_until_full() {
        for depth in [1usize, 3, 64, 65, 130] {
            let t = TagSet::new(depth);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..depth {
                let tag = t.alloc().expect("tag");
                assert!((tag as usize) < depth);
                assert!(seen.insert(tag));
            }
            assert_eq!(t.alloc(), None);
            assert!(t.free(0));
            assert!(!t.free(0));
            assert_eq!(t.alloc(), Some(0));
            assert_eq!(t.in_use(), depth);
        }
    }

    #[test]
    fn tags_two_threads() {
        let t = std::sync::Arc::new(TagSet::new(8));
        let owners: std::sync::Arc<Vec<std::sync::atomic::AtomicU32>> = std::sync::Arc::new(
            (0..8)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        );
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (t, o) = (t.clone(), owners.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(tag) = t.alloc() {
                            assert_eq!(o[tag as usize].fetch_add(1, Ordering::SeqCst), 0);
                            o[tag as usize].fetch_sub(1, Ordering::SeqCst);
                            assert!(t.free(tag));
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(t.in_use(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two threads race for the last tags of a depth-2 set; each tag has one owner at a time.
    #[test]
    fn loom_tagset_alloc_free() {
        loom::model(|| {
            let t = Arc::new(TagSet::new(2));
            let first = t.alloc();
            assert!(first.is_some());
            let t2 = t.clone();
            let h = loom::thread::spawn(move || {
                let a = t2.alloc();
                if let Some(a) = a {
                    assert!(t2.free(a));
                }
                a
            });
            let b = t.alloc();
            let a = h.join().unwrap();
            if let Some(b) = b {
                assert_ne!(Some(b), first);
                assert!(t.free(b));
            }
            assert!(a.is_some() || b.is_some());
            assert_eq!(t.in_use(), 1);
        });
    }
}
