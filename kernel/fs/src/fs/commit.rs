//! The commit: new copies of the dirty inode-table blocks, then the other superblock slot with
//! PREFLUSH | FUA. Nothing is overwritten in place, so a crash leaves the last commit intact.

use super::{Fs, Ino, block_mut};
use crate::error::{FsError, IoOp, Result};
use crate::format::{BLOCK_SIZE, GENERATION_LIMIT, SUPER_BLOCKS, Superblock, encode_inode_block};
use crate::io::{BlockIo, Run, WriteFlags};

/// Most runs one write batch carries.
const MAX_RUNS: usize = 16;

impl<D: BlockIo, const IB: usize, const BW: usize> Fs<'_, D, IB, BW> {
    /// Makes a file durable. (A commit is whole-filesystem: this is [`Fs::sync`].)
    pub fn fsync(&mut self, ino: Ino) -> Result<()> {
        self.writable()?;
        self.file(ino)?;
        self.sync()
    }

    /// Commits every change: new inode-table blocks, then the superblock with PREFLUSH | FUA.
    pub fn sync(&mut self) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        if self.dirty == 0 {
            return Ok(());
        }
        let generation = self.sb.generation + 1;
        if generation >= GENERATION_LIMIT {
            return Err(FsError::Unsupported("generation counter exhausted"));
        }
        let mut sb = self.sb;
        sb.generation = generation;
        let ndirty = self.dirty.count_ones() as u64;
        if self.free_blocks() < ndirty {
            return Err(FsError::NoSpace);
        }
        let cap = self.cap_blocks() as usize;
        let mut idx = 0usize;
        while idx < sb.inode_blocks as usize {
            // Fill the buffer with up to `cap` dirty table blocks.
            let mut k = 0usize;
            let mut runs: [Run<'_>; MAX_RUNS] = [Run {
                block: 0,
                data: &[],
            }; MAX_RUNS];
            let mut places = [(0u64, 0usize); MAX_RUNS]; // (first block, buffer slot) of each run
            let mut lens = [0usize; MAX_RUNS];
            let mut nruns = 0usize;
            while idx < sb.inode_blocks as usize && k < cap {
                if self.dirty & (1 << idx) != 0 {
                    let (at, _) = match self.alloc_run(1, 0) {
                        Ok(r) => r,
                        Err(e) => {
                            self.failed = true;
                            return Err(e);
                        }
                    };
                    let extends = nruns > 0 && places[nruns - 1].0 + lens[nruns - 1] as u64 == at;
                    if !extends && nruns == MAX_RUNS {
                        // Out of run slots: give the block back; this table block goes in the
                        // next batch.
                        self.used.clear(at);
                        break;
                    }
                    let Some(src) = self.inodes.get(idx).copied() else {
                        self.used.clear(at);
                        break;
                    };
                    self.used.clear(sb.table[idx]);
                    sb.table[idx] = at;
                    encode_inode_block(block_mut(self.buf, k)?, &src, idx as u32, generation, at);
                    if extends {
                        lens[nruns - 1] += 1;
                    } else {
                        places[nruns] = (at, k);
                        lens[nruns] = 1;
                        nruns += 1;
                    }
                    k += 1;
                }
                idx += 1;
            }
            for r in 0..nruns {
                let (at, slot) = places[r];
                runs[r] = Run {
                    block: at,
                    data: &self.buf[slot * BLOCK_SIZE..(slot + lens[r]) * BLOCK_SIZE],
                };
            }
            if nruns > 0
                && let Err(e) = self.dev.write(&runs[..nruns], WriteFlags::NONE)
            {
                self.failed = true;
                return Err(FsError::io(IoOp::WriteInodeTable, e));
            }
        }
        let b = block_mut(self.buf, 0)?;
        sb.encode(b);
        let run = Run {
            block: Superblock::slot_of(generation),
            data: &self.buf[..BLOCK_SIZE],
        };
        if let Err(e) = self.dev.write(&[run], WriteFlags::COMMIT) {
            self.failed = true;
            return Err(FsError::io(IoOp::WriteSuperblock, e));
        }
        self.sb = sb;
        self.dirty = 0;
        self.pinned.copy_from(&self.used);
        // First fit again: blocks this commit released are reused soonest.
        self.cursor = SUPER_BLOCKS;
        Ok(())
    }
}
