//! The node cache: `N` frames of one block each, in memory the caller lends (over `blk`, part
//! of the DMA region, so nodes are read and written in place).
//!
//! Frames touched since [`NodeCache::begin_op`] are pinned: a miss never evicts them, so an
//! operation may hold frame indices until it ends. A miss takes an empty frame if there is one,
//! else the next unpinned frame a clock hand finds not touched since its last pass (second
//! chance: a frame touched since the hand passed it is passed again, and marked passed), so a
//! miss costs a few steps of the hand, not a scan of every frame. If that frame is dirty it is
//! written back first, together with the next dirty frames the hand would take (up to
//! [`WRITE_BATCH`], in one plugged write sorted by block), so the misses after it find clean
//! frames. Only fresh nodes (allocated in the open transaction, not referenced by any durable
//! superblock) are ever dirty, so writing one back early is always safe: the cache is the
//! dirty-node budget and hitting it costs a write, not a commit.
//!
//! Lookups go through an index of `2 * N` slots (open addressing, linear probing, at least
//! half of it empty), so finding a block costs about one probe at any `N`.

use super::node;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, Run, WriteFlags};

/// The fewest frames a cache needs: an operation pins at most two nodes per level, plus the
/// old and new root and one node being copied.
pub const MIN_FRAMES: usize = 2 * node::MAX_HEIGHT + 4;

/// The most dirty frames a miss writes back in its one write (and [`NodeCache::flush`] per
/// write).
pub const WRITE_BATCH: usize = 16;

const EMPTY: u64 = u64::MAX;

/// An index slot that holds no frame.
const NO_FRAME: u16 = u16::MAX;

#[derive(Clone, Copy, Debug)]
struct Frame {
    block: u64,
    /// The clock value of the last touch: pinned while `>= op_start`.
    used: u64,
    /// The clock value when the clock hand last passed the frame: it was touched since (is
    /// referenced) while `used > passed`. (Kept so that a touch stores only `used`.)
    passed: u64,
    dirty: bool,
}

const UNUSED: Frame = Frame {
    block: EMPTY,
    used: 0,
    passed: 0,
    dirty: false,
};

/// Cache statistics (for tests and reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Blocks read from the device.
    pub reads: u64,
    /// Dirty frames written back before a commit because the cache was full.
    pub early_writes: u64,
    /// Frames written by [`NodeCache::flush`].
    pub flushed: u64,
}

/// `N` block frames over borrowed memory.
///
/// Invariants: a frame holds a block (`block != EMPTY`) exactly when one slot of `index`
/// names it, and is empty exactly when it is on the `free` stack, except for the frame a
/// miss is filling.
pub struct NodeCache<'b, const N: usize> {
    mem: &'b mut [u8],
    meta: [Frame; N],
    clock: u64,
    op_start: u64,
    stats: CacheStats,
    /// The frame holding each cached block: `2 * N` slots, a block's search starting at
    /// [`NodeCache::home`] and ending at an empty slot.
    index: [[u16; 2]; N],
    /// Empty frames: `free[..nfree]`.
    free: [u16; N],
    nfree: usize,
    /// The next frame the clock looks at.
    hand: usize,
}

impl<const N: usize> core::fmt::Debug for NodeCache<'_, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeCache")
            .field("frames", &N)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<'b, const N: usize> NodeCache<'b, N> {
    /// A cache over `mem`, which must be at least `N` blocks; `N >= MIN_FRAMES` (and below
    /// 65,535: frame numbers are 16 bits).
    pub fn new(mem: &'b mut [u8]) -> Result<Self> {
        const { assert!(N < NO_FRAME as usize, "node cache of 65,535 frames or more") };
        if N < MIN_FRAMES || mem.len() < N * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        let mut c = NodeCache {
            mem,
            meta: [UNUSED; N],
            clock: 0,
            op_start: 1,
            stats: CacheStats::default(),
            index: [[NO_FRAME; 2]; N],
            free: [0; N],
            nfree: 0,
            hand: 0,
        };
        c.clear();
        Ok(c)
    }

    /// Statistics since the cache was made.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Starts an operation: frames touched from now on are pinned until the next call.
    pub fn begin_op(&mut self) {
        self.clock += 1;
        self.op_start = self.clock;
    }

    fn touch(&mut self, f: usize) {
        self.clock += 1;
        self.meta[f].used = self.clock;
    }

    /// The bytes of frame `f`.
    pub fn frame(&self, f: usize) -> &[u8] {
        &self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]
    }

    /// The bytes of frame `f`, to change: the frame becomes dirty.
    pub fn frame_mut(&mut self, f: usize) -> &mut [u8] {
        self.meta[f].dirty = true;
        &mut self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]
    }

    /// Two distinct frames, both to change (both become dirty).
    pub fn pair_mut(&mut self, a: usize, b: usize) -> (&mut [u8], &mut [u8]) {
        assert_ne!(a, b, "pair_mut of one frame");
        self.meta[a].dirty = true;
        self.meta[b].dirty = true;
        let (lo, hi, swap) = if a < b { (a, b, false) } else { (b, a, true) };
        let (x, y) = self.mem.split_at_mut(hi * BLOCK_SIZE);
        let x = &mut x[lo * BLOCK_SIZE..(lo + 1) * BLOCK_SIZE];
        let y = &mut y[..BLOCK_SIZE];
        if swap { (y, x) } else { (x, y) }
    }

    /// The index slot where the search for `block` starts (a multiplicative hash scaled to
    /// the `2 * N` slots).
    fn home(block: u64) -> usize {
        let h = block.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(h) * (2 * N) as u128) >> 64) as usize
    }

    /// The slot after `i`.
    fn next_slot(i: usize) -> usize {
        if i + 1 == 2 * N { 0 } else { i + 1 }
    }

    /// The frame that holds `block`.
    fn lookup(&self, block: u64) -> Option<usize> {
        let t = self.index.as_flattened();
        let mut i = Self::home(block);
        // At most `N` of the `2 * N` slots are used: the search reaches an empty one
        // (`NO_FRAME`, no frame of `meta`).
        loop {
            let f = t[i] as usize;
            if self.meta.get(f)?.block == block {
                return Some(f);
            }
            i = Self::next_slot(i);
        }
    }

    /// The index slot naming the frame that holds `block`.
    fn slot_of(&self, block: u64) -> Option<usize> {
        let t = self.index.as_flattened();
        let mut i = Self::home(block);
        loop {
            if self.meta.get(t[i] as usize)?.block == block {
                return Some(i);
            }
            i = Self::next_slot(i);
        }
    }

    /// Enters frame `f` (just given its block, which no other frame holds) in the index.
    fn index_add(&mut self, f: usize) {
        let t = self.index.as_flattened_mut();
        let mut i = Self::home(self.meta[f].block);
        while t[i] != NO_FRAME {
            i = Self::next_slot(i);
        }
        t[i] = f as u16;
    }

    /// Takes `block`'s frame out of the index (the frame still names it) and returns it.
    fn index_remove(&mut self, block: u64) -> Option<usize> {
        let mut hole = self.slot_of(block)?;
        let meta = &self.meta;
        let t = self.index.as_flattened_mut();
        let f = t[hole] as usize;
        // Close the hole: each following entry of the run whose search would start past the
        // hole (cyclically) moves into it, leaving its own slot as the hole.
        let mut j = hole;
        loop {
            j = Self::next_slot(j);
            let g = t[j];
            if g == NO_FRAME {
                break;
            }
            let k = Self::home(meta[g as usize].block);
            let stays = if hole <= j {
                hole < k && k <= j
            } else {
                hole < k || k <= j
            };
            if !stays {
                t[hole] = g;
                hole = j;
            }
        }
        t[hole] = NO_FRAME;
        Some(f)
    }

    /// Makes frame `f` (on neither the index nor the free stack) empty and free.
    fn release(&mut self, f: usize) {
        self.meta[f] = UNUSED;
        self.free[self.nfree] = f as u16;
        self.nfree += 1;
    }

    /// The frame holding `block`, if cached (and marks it used).
    pub fn find(&mut self, block: u64) -> Option<usize> {
        let f = self.lookup(block)?;
        self.touch(f);
        Some(f)
    }

    /// A frame for a block that is not cached: an empty one, else the clock's choice
    /// (written back first if dirty). The frame returned is empty and on neither the index
    /// nor the free stack: the caller gives it a block or releases it.
    fn victim<D: BlockIo>(&mut self, dev: &mut D) -> Result<usize> {
        if self.nfree > 0 {
            self.nfree -= 1;
            return Ok(self.free[self.nfree] as usize);
        }
        let f = self
            .sweep()
            .ok_or(FsError::Unsupported("node cache too small for the tree"))?;
        if self.meta[f].dirty {
            self.write_back_from(dev, f)?;
        }
        self.index_remove(self.meta[f].block);
        self.meta[f] = UNUSED;
        Ok(f)
    }

    /// Moves the clock hand to the next unpinned frame not touched since the hand last
    /// passed it, marking each unpinned frame it passes as passed. Two turns
    /// find one whenever an unpinned frame exists.
    fn sweep(&mut self) -> Option<usize> {
        for _ in 0..2 * N {
            let f = self.hand;
            self.hand = if f + 1 == N { 0 } else { f + 1 };
            let m = &mut self.meta[f];
            if m.used >= self.op_start {
                continue;
            }
            if m.used > m.passed {
                m.passed = self.clock;
                continue;
            }
            return Some(f);
        }
        None
    }

    /// Writes back dirty frame `f` (unpinned) and, in the same plugged write, the next dirty
    /// unpinned frames the hand would take (not touched since it passed them) within half a
    /// turn, up to [`WRITE_BATCH`] in all and a quarter of the frames, sorted by block so
    /// that neighbours merge. On an error every frame stays dirty.
    fn write_back_from<D: BlockIo>(&mut self, dev: &mut D, f: usize) -> Result<()> {
        let most = (N / 4).min(WRITE_BATCH);
        let mut idx = [0usize; WRITE_BATCH];
        idx[0] = f;
        let mut k = 1;
        let mut g = f;
        for _ in 1..N / 2 {
            if k == most {
                break;
            }
            g = if g + 1 == N { 0 } else { g + 1 };
            let m = &self.meta[g];
            if m.dirty && m.used <= m.passed && m.used < self.op_start && m.block != EMPTY {
                idx[k] = g;
                k += 1;
            }
        }
        let idx = &mut idx[..k];
        idx.sort_unstable_by_key(|&g| self.meta[g].block);
        self.write_frames(dev, idx)?;
        self.stats.early_writes += k as u64;
        Ok(())
    }

    /// Seals frames `idx` (at most [`WRITE_BATCH`], dirty, sorted by block) and writes them
    /// in one call, frames that are neighbours in memory and on the device as one run; they
    /// are clean if it succeeds.
    fn write_frames<D: BlockIo>(&mut self, dev: &mut D, idx: &[usize]) -> Result<()> {
        for &fi in idx {
            node::seal(&mut self.mem[fi * BLOCK_SIZE..(fi + 1) * BLOCK_SIZE]);
        }
        let mut runs = [Run {
            block: 0,
            data: &[],
        }; WRITE_BATCH];
        let (mut n, mut k) = (0, 0);
        while k < idx.len() {
            let (f, block) = (idx[k], self.meta[idx[k]].block);
            let mut len = 1;
            while k + len < idx.len()
                && idx[k + len] == f + len
                && self.meta[f + len].block == block + len as u64
            {
                len += 1;
            }
            runs[n] = Run {
                block,
                data: &self.mem[f * BLOCK_SIZE..(f + len) * BLOCK_SIZE],
            };
            n += 1;
            k += len;
        }
        dev.write(&runs[..n], WriteFlags::NONE)
            .map_err(|e| FsError::io(IoOp::WriteNode, e))?;
        for &fi in idx {
            self.meta[fi].dirty = false;
        }
        Ok(())
    }

    /// The frame holding `block`, read from the device on a miss and checked by `check`
    /// (a frame that fails is dropped).
    pub fn get<D: BlockIo>(
        &mut self,
        dev: &mut D,
        block: u64,
        check: impl FnOnce(&[u8]) -> core::result::Result<(), &'static str>,
    ) -> Result<usize> {
        if let Some(f) = self.find(block) {
            return Ok(f);
        }
        let f = self.victim(dev)?;
        let r = dev.read(block, &mut self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]);
        self.stats.reads += 1;
        let r = r
            .map_err(|e| FsError::io(IoOp::ReadNode, e))
            .and_then(|()| check(self.frame(f)).map_err(|what| FsError::Corrupt { block, what }));
        if let Err(e) = r {
            self.release(f);
            return Err(e);
        }
        self.meta[f].block = block;
        self.index_add(f);
        self.touch(f);
        Ok(f)
    }

    /// A frame for a new node at `block` (its bytes are the caller's to fill; dirty).
    pub fn create<D: BlockIo>(&mut self, dev: &mut D, block: u64) -> Result<usize> {
        self.discard(block);
        let f = self.victim(dev)?;
        self.meta[f] = Frame {
            block,
            dirty: true,
            ..UNUSED
        };
        self.index_add(f);
        self.touch(f);
        Ok(f)
    }

    /// Moves frame `f`'s node to `block` (not cached), in place: the frame forgets its old
    /// block and is dirty (a copy-on-write copy without a copy; the old block is still on
    /// the device for whoever reads it again).
    pub fn relocate(&mut self, f: usize, block: u64) {
        self.discard(block);
        let old = self.meta[f].block;
        let taken = self.index_remove(old);
        debug_assert_eq!(taken, Some(f), "relocate of a frame not cached");
        self.meta[f].block = block;
        self.meta[f].dirty = true;
        self.index_add(f);
        self.touch(f);
    }

    /// The block frame `f` holds.
    pub fn block_of(&self, f: usize) -> u64 {
        self.meta[f].block
    }

    /// Reads `block` into a spare frame, passes its bytes to `f`, and gives the frame back
    /// (superblocks: read once, not cached).
    pub fn read_with<D: BlockIo, T>(
        &mut self,
        dev: &mut D,
        block: u64,
        op: IoOp,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let fr = self.victim(dev)?;
        let r = dev.read(block, &mut self.mem[fr * BLOCK_SIZE..(fr + 1) * BLOCK_SIZE]);
        self.stats.reads += 1;
        let r = r
            .map_err(|e| FsError::io(op, e))
            .map(|()| f(self.frame(fr)));
        self.release(fr);
        r
    }

    /// Fills a spare frame with `fill`, writes it to `block` with `flags` and waits, and gives
    /// the frame back (the commit record, mkfs).
    pub fn write_with<D: BlockIo>(
        &mut self,
        dev: &mut D,
        block: u64,
        flags: WriteFlags,
        op: IoOp,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        self.discard(block);
        let fr = self.victim(dev)?;
        let b = &mut self.mem[fr * BLOCK_SIZE..(fr + 1) * BLOCK_SIZE];
        fill(b);
        let r = dev
            .write(&[Run { block, data: b }], flags)
            .map_err(|e| FsError::io(op, e));
        self.release(fr);
        r
    }

    /// Forgets `block` (a node that was freed): it is neither kept nor written.
    pub fn discard(&mut self, block: u64) {
        if let Some(f) = self.index_remove(block) {
            self.release(f);
        }
    }

    /// Forgets every frame (after a failed commit, or at unmount).
    pub fn clear(&mut self) {
        self.meta = [UNUSED; N];
        self.index = [[NO_FRAME; 2]; N];
        // Frame 0 is taken first.
        for (i, s) in self.free.iter_mut().enumerate() {
            *s = (N - 1 - i) as u16;
        }
        self.nfree = N;
        self.hand = 0;
    }

    /// Seals and writes every dirty frame (one plugged batch of up to [`WRITE_BATCH`] at a
    /// time, sorted by block, neighbours as one run).
    pub fn flush<D: BlockIo>(&mut self, dev: &mut D) -> Result<()> {
        let mut f = 0;
        while f < N {
            let mut idx = [0usize; WRITE_BATCH];
            let mut k = 0;
            while f < N && k < WRITE_BATCH {
                if self.meta[f].block != EMPTY && self.meta[f].dirty {
                    idx[k] = f;
                    k += 1;
                }
                f += 1;
            }
            if k == 0 {
                continue;
            }
            let idx = &mut idx[..k];
            idx.sort_unstable_by_key(|&g| self.meta[g].block);
            self.write_frames(dev, idx)?;
            self.stats.flushed += k as u64;
        }
        Ok(())
    }

    /// Dirty frames now.
    pub fn dirty(&self) -> usize {
        self.meta
            .iter()
            .filter(|m| m.block != EMPTY && m.dirty)
            .count()
    }
}
