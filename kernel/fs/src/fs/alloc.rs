//! Block allocation: next-fit runs for data, first-fit exact runs for compaction, and the
//! blocks kept free for the next commit. A block is free when neither the running bitmap nor the
//! last commit's (`pinned`) has it.

use super::Fs;
use crate::bitmap::Bitmap;
use crate::error::{FsError, Result};
use crate::format::SUPER_BLOCKS;
use crate::io::BlockIo;

impl<D: BlockIo, const IB: usize, const BW: usize> Fs<'_, D, IB, BW> {
    pub(super) fn free_blocks(&self) -> u64 {
        let n = self.sb.block_count;
        n - Bitmap::count_union(&self.used, &self.pinned, n).min(n)
    }

    fn is_free(&self, b: u64) -> bool {
        b < self.sb.block_count && Bitmap::free_in_both(&self.used, &self.pinned, b)
    }

    /// Allocates up to `want` contiguous blocks (next fit), keeping `reserve` blocks free.
    pub(super) fn alloc_run(&mut self, want: u64, reserve: u64) -> Result<(u64, u64)> {
        // Exact when fewer than `want + reserve` blocks are free; otherwise enough.
        let free = Bitmap::free_at_least(
            &self.used,
            &self.pinned,
            self.sb.block_count,
            self.cursor,
            want.saturating_add(reserve),
        );
        if free <= reserve || want == 0 {
            return Err(FsError::NoSpace);
        }
        let want = want.min(free - reserve);
        let n = self.sb.block_count;
        let mut start = self.cursor.clamp(SUPER_BLOCKS, n.saturating_sub(1));
        let mut scanned = 0;
        while scanned < n && !self.is_free(start) {
            start = if start + 1 >= n {
                SUPER_BLOCKS
            } else {
                start + 1
            };
            scanned += 1;
        }
        if !self.is_free(start) {
            return Err(FsError::NoSpace);
        }
        // Within the filesystem's blocks (`start < n`: `is_free` checked it).
        let len = Bitmap::free_run(&self.used, &self.pinned, start, want.min(n - start));
        self.used.set_range(start, len);
        self.cursor = start + len;
        Ok((start, len))
    }

    /// Allocates exactly `want` contiguous blocks, first fit.
    pub(super) fn alloc_exact(&mut self, want: u64, reserve: u64) -> Result<u64> {
        if want == 0 || self.free_blocks() < want + reserve {
            return Err(FsError::NoSpace);
        }
        let mut run = 0;
        for b in SUPER_BLOCKS..self.sb.block_count {
            if self.is_free(b) {
                run += 1;
                if run == want {
                    let s = b + 1 - want;
                    for x in s..=b {
                        self.used.set(x);
                    }
                    return Ok(s);
                }
            } else {
                run = 0;
            }
        }
        Err(FsError::NoSpace)
    }

    pub(super) fn free_range(used: &mut Bitmap<BW>, phys: u64, len: u64) {
        for b in phys..phys + len {
            used.clear(b);
        }
    }

    /// Blocks kept free for the next commit's inode-table blocks.
    pub(super) fn reserve(&self) -> u64 {
        self.sb.inode_blocks as u64
    }
}
