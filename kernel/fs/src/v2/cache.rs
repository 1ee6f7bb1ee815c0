//! The node cache: `N` frames of one block each, in memory the caller lends (over `blk`, part
//! of the DMA region, so nodes are read and written in place).
//!
//! Frames touched since [`NodeCache::begin_op`] are pinned: a miss never evicts them, so an
//! operation may hold frame indices until it ends. A miss takes the least recently used
//! unpinned frame; if it is dirty it is written back first. Only fresh nodes (allocated in the
//! open transaction, not referenced by any durable superblock) are ever dirty, so writing one
//! back early is always safe: the cache is the dirty-node budget and hitting it costs a write,
//! not a commit.

use super::node;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, Run, WriteFlags};

/// The fewest frames a cache needs: an operation pins at most two nodes per level, plus the
/// old and new root and one node being copied.
pub const MIN_FRAMES: usize = 2 * node::MAX_HEIGHT + 4;

const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Frame {
    block: u64,
    dirty: bool,
    used: u64,
}

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
pub struct NodeCache<'b, const N: usize> {
    mem: &'b mut [u8],
    meta: [Frame; N],
    clock: u64,
    op_start: u64,
    stats: CacheStats,
    /// A guess of the frame holding a block, by the block's low bits (checked against the
    /// frame's block before use): most lookups find their frame without scanning.
    hint: [u16; HINTS],
}

/// Entries of [`NodeCache`]'s frame hint.
const HINTS: usize = 64;

fn hint_slot(block: u64) -> usize {
    (block % HINTS as u64) as usize
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
    /// A cache over `mem`, which must be at least `N` blocks; `N >= MIN_FRAMES`.
    pub fn new(mem: &'b mut [u8]) -> Result<Self> {
        if N < MIN_FRAMES || mem.len() < N * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        Ok(NodeCache {
            mem,
            meta: [Frame {
                block: EMPTY,
                dirty: false,
                used: 0,
            }; N],
            clock: 0,
            op_start: 1,
            stats: CacheStats::default(),
            hint: [0; HINTS],
        })
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

    /// The frame holding `block`, if cached (and marks it used).
    pub fn find(&mut self, block: u64) -> Option<usize> {
        let h = self.hint[hint_slot(block)] as usize;
        let f = if self.meta.get(h).is_some_and(|m| m.block == block) {
            h
        } else {
            let f = self.meta.iter().position(|m| m.block == block)?;
            self.hint[hint_slot(block)] = f as u16;
            f
        };
        self.touch(f);
        Some(f)
    }

    /// A frame for `block`, which must not be cached: an unused one, else the least recently
    /// used unpinned one (written back first if dirty).
    fn victim<D: BlockIo>(&mut self, dev: &mut D) -> Result<usize> {
        let mut best: Option<usize> = None;
        // Clean frames first, then the least recently used: the order of `(dirty, used)`,
        // kept for the best frame so far instead of reading its entry again per frame.
        let mut best_rank = (true, u64::MAX);
        for (i, m) in self.meta.iter().enumerate() {
            if m.block == EMPTY {
                best = Some(i);
                break;
            }
            if m.used >= self.op_start {
                continue;
            }
            let rank = (m.dirty, m.used);
            if best.is_none() || rank < best_rank {
                best = Some(i);
                best_rank = rank;
            }
        }
        let f = best.ok_or(FsError::Unsupported("node cache too small for the tree"))?;
        if self.meta[f].block != EMPTY && self.meta[f].dirty {
            self.write_back(dev, f)?;
            self.stats.early_writes += 1;
        }
        self.meta[f] = Frame {
            block: EMPTY,
            dirty: false,
            used: 0,
        };
        Ok(f)
    }

    fn write_back<D: BlockIo>(&mut self, dev: &mut D, f: usize) -> Result<()> {
        let block = self.meta[f].block;
        let b = &mut self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE];
        node::seal(b);
        dev.write(&[Run { block, data: b }], WriteFlags::NONE)
            .map_err(|e| FsError::io(IoOp::WriteNode, e))?;
        self.meta[f].dirty = false;
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
        r.map_err(|e| FsError::io(IoOp::ReadNode, e))?;
        check(self.frame(f)).map_err(|what| FsError::Corrupt { block, what })?;
        self.meta[f].block = block;
        self.hint[hint_slot(block)] = f as u16;
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
            used: 0,
        };
        self.hint[hint_slot(block)] = f as u16;
        self.touch(f);
        Ok(f)
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
        r.map_err(|e| FsError::io(op, e))?;
        Ok(f(self.frame(fr)))
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
        dev.write(&[Run { block, data: b }], flags)
            .map_err(|e| FsError::io(op, e))
    }

    /// Forgets `block` (a node that was freed): it is neither kept nor written.
    pub fn discard(&mut self, block: u64) {
        for m in self.meta.iter_mut().filter(|m| m.block == block) {
            *m = Frame {
                block: EMPTY,
                dirty: false,
                used: 0,
            };
        }
    }

    /// Forgets every frame (after a failed commit, or at unmount).
    pub fn clear(&mut self) {
        for f in 0..N {
            self.meta[f] = Frame {
                block: EMPTY,
                dirty: false,
                used: 0,
            };
        }
    }

    /// Seals and writes every dirty frame (one plugged batch of up to 16 at a time).
    pub fn flush<D: BlockIo>(&mut self, dev: &mut D) -> Result<()> {
        const BATCH: usize = 16;
        let mut start = 0;
        while start < N {
            let mut idx = [0usize; BATCH];
            let mut k = 0;
            let mut f = start;
            while f < N && k < BATCH {
                if self.meta[f].block != EMPTY && self.meta[f].dirty {
                    node::seal(&mut self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]);
                    idx[k] = f;
                    k += 1;
                }
                f += 1;
            }
            start = f;
            if k == 0 {
                continue;
            }
            let mut runs = [Run {
                block: 0,
                data: &[],
            }; BATCH];
            for (r, &fi) in runs.iter_mut().zip(&idx[..k]) {
                *r = Run {
                    block: self.meta[fi].block,
                    data: &self.mem[fi * BLOCK_SIZE..(fi + 1) * BLOCK_SIZE],
                };
            }
            dev.write(&runs[..k], WriteFlags::NONE)
                .map_err(|e| FsError::io(IoOp::WriteNode, e))?;
            for &fi in &idx[..k] {
                self.meta[fi].dirty = false;
            }
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
