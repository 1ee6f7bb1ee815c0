//! What the tree needs from free-space management.
//!
//! The tree allocates a block for every node it copies or creates and frees the block of every
//! node it replaces or merges away. The contract that makes copy-on-write crash consistent is
//! here: a block freed in the open transaction must stay allocated until the commit that stops
//! referencing it is durable, because the durable tree may still reference it.

use crate::error::Result;
use crate::io::BlockIo;

/// Block allocation for the tree, over device `D`.
pub trait Space<D: BlockIo> {
    /// A block free in both the in-memory tree and the last durable commit.
    /// `FsError::NoSpace` when there is none.
    fn alloc(&mut self, dev: &mut D) -> Result<u64>;
    /// Gives `block` back once the next commit is durable (not before: the durable tree may
    /// reference it).
    fn free(&mut self, dev: &mut D, block: u64) -> Result<()>;
}

use super::node::{self, DATA_END, HDR};
use super::superblock::{
    GROUP_BLOCKS_MAX, GROUP_BLOCKS_MIN, MAX_BLOCKS, SELECTOR_BITS, SELECTORS, SLOTS, Superblock,
};
use super::tree::Tree;
use crate::error::{FsError, IoOp};
use crate::format::BLOCK_SIZE;
use crate::io::{Run, WriteFlags};

/// Header kind of a free-space bitmap block.
pub const KIND_BITMAP: u16 = 4;
/// Header kind of a selector block.
pub const KIND_SELECTOR: u16 = 5;
/// Where the mkfs of [`FreeSpace::mkfs`] puts the tree's first root (after the superblock
/// slots and group 0's two bitmap slots).
pub const FIRST_ROOT: u64 = 4;
/// Blocks of memory a [`FreeSpace`] caching `g` groups needs.
pub const fn space_frames(g: usize) -> usize {
    2 * g + 2 * SELECTORS
}

const O_INDEX: usize = 24;
const O_COUNT: usize = 28;
const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Ent {
    group: u64,
    /// The working version changed since it was last written.
    dirty: bool,
    used: u64,
}

const NO_ENT: Ent = Ent {
    group: EMPTY,
    dirty: false,
    used: 0,
};

#[derive(Clone, Copy, Debug, Default)]
struct Sel {
    loaded: bool,
    /// The working copy differs from what its block (if fresh) holds.
    dirty: bool,
    /// The block the working copy goes to in the open transaction (0: not copied yet).
    fresh: u64,
}

/// On-disk free space (`docs/tinyfs-v2.md`, "Free space"): one bitmap per group of
/// `group_blocks` blocks, double-buffered in the group's blocks 2 and 3. Which slot holds a
/// group's durable bitmap is one bit in a *selector* block, and selector blocks are
/// copy-on-write and pointed to by the superblock; so the durable version is found from the
/// commit record and a slot written by a transaction that never committed is never trusted.
/// The open transaction writes the other slot. A block is allocatable only if it is free in
/// both the durable and the working version, so a block freed in a transaction is reused only
/// after its commit. `G` groups are cached (two frames each) plus the selector blocks, in
/// borrowed memory ([`space_frames`]); nothing else is held, so memory and mount time do not
/// depend on the filesystem's size. Groups from `groups_ready` on have never been used and are
/// all free; the allocator brings them into use in order.
pub struct FreeSpace<'b, const G: usize> {
    mem: &'b mut [u8],
    ent: [Ent; G],
    sel: [Sel; SELECTORS],
    durable_sel: [u64; SELECTORS],
    group_blocks: u64,
    block_count: u64,
    groups_ready: u64,
    durable_ready: u64,
    free_blocks: u64,
    /// Blocks freed in the open transaction that the durable tree still uses.
    pinned: u64,
    /// In [`FreeSpace::flush`]: the blocks kept for selector copies may be used.
    in_flush: bool,
    cursor: u64,
    durable: u64,
    clock: u64,
    early_writes: u64,
    /// Block ranges `(first, count)` the fsync log references: never handed out (even once
    /// freed) until the next commit is durable, because a crash before it replays the log.
    held: [(u64, u64); HOLDS],
    nheld: usize,
    held_blocks: u64,
}

/// Disjoint block ranges [`FreeSpace::hold`] keeps at once (ranges that touch are merged).
pub const HOLDS: usize = 256;

/// Blocks the allocator keeps back for a commit's selector copies, so that a full filesystem
/// can still commit (and so free space).
pub const COMMIT_RESERVE: u64 = SELECTORS as u64;

impl<const G: usize> core::fmt::Debug for FreeSpace<'_, G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FreeSpace")
            .field("groups_ready", &self.groups_ready)
            .field("free_blocks", &self.free_blocks)
            .finish()
    }
}

fn bit(b: &[u8], i: u64) -> bool {
    b[HDR + (i / 8) as usize] & (1 << (i % 8)) != 0
}

fn set_bit(b: &mut [u8], i: u64, on: bool) {
    let byte = &mut b[HDR + (i / 8) as usize];
    if on {
        *byte |= 1 << (i % 8);
    } else {
        *byte &= !(1 << (i % 8));
    }
}

/// Marks bits `[from, to)` used in the working bitmap `w` as long as each is free in both
/// `d` and `w`, a 64-bit word at a time; returns how many it marked (it stops at the first
/// used bit). Bit `k` is bit `k % 64` of the little-endian word at `HDR + k / 64 * 8`.
fn take_free(d: &[u8], w: &mut [u8], from: u64, to: u64) -> u64 {
    let word = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0xff; 8]));
    let mut k = from;
    while k < to {
        let o = HDR + (k / 64 * 8) as usize;
        let sh = k % 64;
        let ww = word(w, o);
        let n = (u64::from(((word(d, o) | ww) >> sh).trailing_zeros()))
            .min(64 - sh)
            .min(to - k);
        if n == 0 {
            break;
        }
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1 << n) - 1) << sh
        };
        w[o..o + 8].copy_from_slice(&(ww | mask).to_le_bytes());
        k += n;
        if n < 64 - sh {
            break;
        }
    }
    k - from
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn count(b: &[u8]) -> u32 {
    rd32(b, O_COUNT)
}

fn set_count(b: &mut [u8], c: u32) {
    b[O_COUNT..O_COUNT + 4].copy_from_slice(&c.to_le_bytes());
}

fn write_err(e: crate::io::IoError) -> FsError {
    FsError::io(IoOp::WriteNode, e)
}

impl<'b, const G: usize> FreeSpace<'b, G> {
    /// Lays out a new filesystem on the whole device (at most 2^32 blocks, cut so that the
    /// last group has room for its bitmap slots) with groups of `group_blocks` blocks, writes
    /// group 0's bitmap, and returns the superblock for [`Tree::mkfs_with`] (root at
    /// [`FIRST_ROOT`]). `mem` is one block of scratch.
    pub fn mkfs<D: BlockIo>(dev: &mut D, mem: &mut [u8], group_blocks: u32) -> Result<Superblock> {
        if !(GROUP_BLOCKS_MIN..=GROUP_BLOCKS_MAX).contains(&group_blocks) {
            return Err(FsError::InvalidArgument);
        }
        if mem.len() < BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        let gb = group_blocks as u64;
        let mut blocks = dev.block_count().min(MAX_BLOCKS);
        blocks = blocks.min(SELECTORS as u64 * SELECTOR_BITS * gb);
        if !blocks.is_multiple_of(gb) && blocks % gb < 4 {
            blocks -= blocks % gb;
        }
        if blocks <= FIRST_ROOT {
            return Err(FsError::NoSpace);
        }
        let groups = blocks.div_ceil(gb);
        let b = &mut mem[..BLOCK_SIZE];
        Self::init_bitmap(b, 0, gb, blocks, 1, 2);
        set_bit(b, FIRST_ROOT, true);
        set_count(b, count(b) - 1);
        node::seal(b);
        let used_in_0 = gb.min(blocks) - count(b) as u64;
        dev.write(&[Run { block: 2, data: b }], WriteFlags::NONE)
            .map_err(|e| FsError::io(IoOp::Format, e))?;
        b.fill(0);
        dev.write(&[Run { block: 3, data: b }], WriteFlags::NONE)
            .map_err(|e| FsError::io(IoOp::Format, e))?;
        Ok(Superblock {
            generation: 1,
            block_count: blocks,
            root: FIRST_ROOT,
            height: 1,
            next_ino: 0,
            flags: 0,
            // Group 0's used blocks, and the two slots of every other group.
            free_blocks: blocks - used_in_0 - 2 * (groups - 1),
            log_root: 0,
            group_blocks,
            groups_ready: 1,
            selectors: [0; SELECTORS],
            // Chosen by `Tree::mkfs_with`, which writes the superblock.
            fsid: 0,
        })
    }

    /// The free space of a mounted filesystem: no I/O (groups and selectors are read when
    /// first used). `mem` holds [`space_frames`]`(G)` blocks.
    pub fn open(mem: &'b mut [u8], sb: &Superblock) -> Result<Self> {
        if G == 0 || mem.len() < space_frames(G) * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        Ok(FreeSpace {
            mem,
            ent: [NO_ENT; G],
            sel: [Sel::default(); SELECTORS],
            durable_sel: sb.selectors,
            group_blocks: sb.group_blocks as u64,
            block_count: sb.block_count,
            groups_ready: sb.groups_ready,
            durable_ready: sb.groups_ready,
            free_blocks: sb.free_blocks,
            pinned: 0,
            in_flush: false,
            cursor: 0,
            durable: sb.generation,
            clock: 0,
            early_writes: 0,
            held: [(0, 0); HOLDS],
            nheld: 0,
            held_blocks: 0,
        })
    }

    /// Free blocks (blocks freed in the open transaction count as free).
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Blocks ordinary allocations can still get in the open transaction (freed blocks the
    /// durable tree uses and the commit reserve excluded).
    pub fn allocatable(&self) -> u64 {
        self.free_blocks
            .saturating_sub(self.pinned)
            .saturating_sub(self.held_blocks)
            .saturating_sub(COMMIT_RESERVE)
    }

    /// Keeps blocks `[first, first + count)` from being handed out until the next commit is
    /// durable, even after they are freed (the fsync log references them). The held ranges
    /// are kept sorted and merged (a range touching or overlapping others joins them), so
    /// the consecutive blocks successive fsyncs hold (data, next log block) take one entry
    /// and a check is a binary search. `false` (nothing held) when the range needs an entry
    /// of its own and [`HOLDS`] are in use.
    pub fn hold(&mut self, first: u64, count: u64) -> bool {
        if count == 0 {
            return true;
        }
        let end = first.saturating_add(count);
        // The usual case: the range starts in or right after the last one, or past it.
        if let Some(last) = self.nheld.checked_sub(1) {
            let (f, c) = self.held[last];
            if first >= f && first <= f + c {
                let e = end.max(f + c);
                self.held_blocks += e - (f + c);
                self.held[last].1 = e - f;
                return true;
            }
            if first > f + c && self.nheld < HOLDS {
                self.held[self.nheld] = (first, count);
                self.nheld += 1;
                self.held_blocks += count;
                return true;
            }
        }
        let held = &self.held[..self.nheld];
        // Entries `lo..hi` touch or overlap `[first, end)`: entries before `lo` end before
        // `first`, entries from `hi` on start after `end`.
        let lo = held.partition_point(|&(f, c)| f + c < first);
        let hi = lo + held[lo..].partition_point(|&(f, _)| f <= end);
        if lo == hi {
            if self.nheld == HOLDS {
                return false;
            }
            self.held.copy_within(lo..self.nheld, lo + 1);
            self.held[lo] = (first, count);
            self.nheld += 1;
            self.held_blocks += count;
            return true;
        }
        let f = first.min(self.held[lo].0);
        let (lf, lc) = self.held[hi - 1];
        let e = end.max(lf + lc);
        let before: u64 = self.held[lo..hi].iter().map(|&(_, c)| c).sum();
        self.held[lo] = (f, e - f);
        self.held.copy_within(hi..self.nheld, lo + 1);
        self.nheld -= hi - lo - 1;
        self.held_blocks = self.held_blocks - before + (e - f);
        true
    }

    /// Ranges that [`FreeSpace::hold`] can still take.
    pub fn holds_left(&self) -> usize {
        HOLDS - self.nheld
    }

    /// Blocks held by [`FreeSpace::hold`] now.
    pub fn held_blocks(&self) -> u64 {
        self.held_blocks
    }

    /// Whether [`FreeSpace::hold`] holds `block`: a binary search of the sorted ranges.
    pub fn is_held(&self, block: u64) -> bool {
        self.held_end(block).is_some()
    }

    /// The end (exclusive) of the held range holding `block`, if one does.
    fn held_end(&self, block: u64) -> Option<u64> {
        let held = &self.held[..self.nheld];
        // Past every held range (the allocation cursor usually is): no search.
        let (lf, lc) = *held.last()?;
        if block >= lf + lc {
            return None;
        }
        let i = held.partition_point(|&(f, _)| f <= block);
        let (f, c) = *held.get(i.checked_sub(1)?)?;
        (block < f + c).then_some(f + c)
    }

    /// Marks `block` used in the working bitmap if it is free in the durable one (a block the
    /// fsync log names, found at mount before anything is allocated); `false` when the durable
    /// bitmap already has it (it is part of the durable state). Groups up to the block's are
    /// brought into use.
    pub fn claim<D: BlockIo>(&mut self, dev: &mut D, block: u64) -> Result<bool> {
        let g = block / self.group_blocks;
        let k = block - g * self.group_blocks;
        if block < SLOTS || block >= self.block_count || k == 2 || k == 3 {
            return Err(FsError::Corrupt {
                block,
                what: "log names a block outside the data area",
            });
        }
        while self.groups_ready <= g {
            self.load(dev, self.groups_ready)?;
        }
        let i = self.load(dev, g)?;
        if bit(self.frame(2 * i), k) {
            return Ok(false);
        }
        let wb = self.frame_mut(2 * i + 1);
        if !bit(wb, k) {
            set_bit(wb, k, true);
            set_count(wb, count(wb) - 1);
            self.ent[i].dirty = true;
            self.free_blocks = self.free_blocks.saturating_sub(1);
        }
        Ok(true)
    }

    /// Takes up to `max` blocks from `block + 1` on, as long as each is free in both
    /// versions, not held, and in the same group as `block` (which the caller just
    /// allocated): how a data run grows, contiguous on disk. Returns how many were taken
    /// (0 when `block + 1` is not free, or only the commit reserve is left). One group
    /// lookup for the whole run.
    pub fn extend_run<D: BlockIo>(&mut self, dev: &mut D, block: u64, max: u64) -> Result<u64> {
        let g = block / self.group_blocks;
        if max == 0 || g >= self.groups_ready {
            return Ok(0);
        }
        let base = g * self.group_blocks;
        // Blocks past the commit reserve: each taken one lowers the free count.
        let avail = self
            .free_blocks
            .saturating_sub(self.pinned)
            .saturating_sub(COMMIT_RESERVE);
        let mut limit = (block + 1)
            .saturating_add(max.min(avail))
            .min(self.block_count)
            .min(base + self.group_blocks);
        // A held block ends the run.
        for &(f, c) in &self.held[..self.nheld] {
            if f < limit && f + c > block + 1 {
                limit = limit.min(f.max(block + 1));
            }
        }
        let i = self.load(dev, g)?;
        let (d, w) = self.frames(i);
        let got = take_free(d, w, block + 1 - base, limit.max(block + 1) - base);
        let next = block + 1 + got;
        if got > 0 {
            self.free_blocks -= got;
            let wb = self.frame_mut(2 * i + 1);
            set_count(wb, count(wb) - got as u32);
            self.ent[i].dirty = true;
            self.cursor = next;
        }
        Ok(got)
    }

    /// Groups with bitmaps.
    pub fn groups_ready(&self) -> u64 {
        self.groups_ready
    }

    /// Working bitmaps written before a commit because the group cache was full.
    pub fn early_writes(&self) -> u64 {
        self.early_writes
    }

    fn groups(&self) -> u64 {
        self.block_count.div_ceil(self.group_blocks)
    }

    fn slot_block(&self, g: u64, slot: u8) -> u64 {
        g * self.group_blocks + SLOTS + slot as u64
    }

    /// Blocks in group `g`.
    fn group_len(&self, g: u64) -> u64 {
        (self.block_count - g * self.group_blocks).min(self.group_blocks)
    }

    fn frame(&self, f: usize) -> &[u8] {
        &self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]
    }

    fn frame_mut(&mut self, f: usize) -> &mut [u8] {
        &mut self.mem[f * BLOCK_SIZE..(f + 1) * BLOCK_SIZE]
    }

    /// Frames of group entry `i`: durable, working.
    fn frames(&mut self, i: usize) -> (&mut [u8], &mut [u8]) {
        self.mem[2 * i * BLOCK_SIZE..(2 * i + 2) * BLOCK_SIZE].split_at_mut(BLOCK_SIZE)
    }

    /// Frames of selector `s`: durable, working.
    fn sel_frames(&mut self, s: usize) -> (&mut [u8], &mut [u8]) {
        let f = 2 * G + 2 * s;
        self.mem[f * BLOCK_SIZE..(f + 2) * BLOCK_SIZE].split_at_mut(BLOCK_SIZE)
    }

    /// An all-free bitmap of group `g` (its slots, and blocks 0 and 1 in group 0, used; bits
    /// past the group set), labelled `generation` at block `at`.
    fn init_bitmap(b: &mut [u8], g: u64, gb: u64, blocks: u64, generation: u64, at: u64) {
        b.fill(0);
        node::put_header(b, KIND_BITMAP, generation, at);
        b[O_INDEX..O_INDEX + 4].copy_from_slice(&(g as u32).to_le_bytes());
        let len = (blocks - g * gb).min(gb);
        let bits = ((DATA_END - HDR) * 8) as u64;
        let mut used = 0;
        for i in 0..bits {
            if i >= len || i == 2 || i == 3 || (g == 0 && i < 2) {
                set_bit(b, i, true);
                if i < len {
                    used += 1;
                }
            }
        }
        set_count(b, (len - used) as u32);
    }

    fn check_bitmap(&self, b: &[u8], g: u64, at: u64) -> core::result::Result<u64, &'static str> {
        let generation = node::check_header(b, KIND_BITMAP, at)?;
        if rd32(b, O_INDEX) as u64 != g {
            return Err("bitmap of another group");
        }
        let len = self.group_len(g);
        let free = (0..len).filter(|&i| !bit(b, i)).count();
        if free != count(b) as usize {
            return Err("bitmap free count does not match its bits");
        }
        if !(bit(b, 2) && bit(b, 3)) || (g == 0 && !(bit(b, 0) && bit(b, 1))) {
            return Err("bitmap marks its own slots free");
        }
        Ok(generation)
    }

    /// Loads selector `s` (durable and working copies) if it is not yet.
    fn load_sel<D: BlockIo>(&mut self, dev: &mut D, s: usize) -> Result<()> {
        if self.sel[s].loaded {
            return Ok(());
        }
        let at = self.durable_sel[s];
        let durable = self.durable;
        let (d, w) = self.sel_frames(s);
        if at == 0 {
            d.fill(0);
            node::put_header(d, KIND_SELECTOR, 0, 0);
            d[O_INDEX..O_INDEX + 4].copy_from_slice(&(s as u32).to_le_bytes());
        } else {
            dev.read(at, d)
                .map_err(|e| FsError::io(IoOp::ReadNode, e))?;
            let g = node::check_header(d, KIND_SELECTOR, at)
                .and_then(|g| {
                    if rd32(d, O_INDEX) as usize != s {
                        Err("selector of another index")
                    } else if g > durable {
                        Err("selector newer than the superblock")
                    } else {
                        Ok(g)
                    }
                })
                .map_err(|what| FsError::Corrupt { block: at, what });
            g?;
        }
        w.copy_from_slice(d);
        self.sel[s] = Sel {
            loaded: true,
            dirty: false,
            fresh: 0,
        };
        Ok(())
    }

    /// Group `g`'s slot in the durable (`working = false`) or working selector.
    fn sel_bit<D: BlockIo>(&mut self, dev: &mut D, g: u64, working: bool) -> Result<u8> {
        let s = (g / SELECTOR_BITS) as usize;
        self.load_sel(dev, s)?;
        let f = 2 * G + 2 * s + usize::from(working);
        Ok(u8::from(bit(self.frame(f), g % SELECTOR_BITS)))
    }

    fn set_work_sel<D: BlockIo>(&mut self, dev: &mut D, g: u64, slot: u8) -> Result<()> {
        let s = (g / SELECTOR_BITS) as usize;
        self.load_sel(dev, s)?;
        let f = 2 * G + 2 * s + 1;
        let k = g % SELECTOR_BITS;
        if u8::from(bit(self.frame(f), k)) != slot {
            set_bit(self.frame_mut(f), k, slot == 1);
            self.sel[s].dirty = true;
        }
        Ok(())
    }

    /// The slot the open transaction writes group `g`'s bitmap to.
    fn work_slot<D: BlockIo>(&mut self, dev: &mut D, g: u64) -> Result<u8> {
        if g >= self.durable_ready {
            return Ok(0);
        }
        Ok(1 - self.sel_bit(dev, g, false)?)
    }

    /// The cache entry of group `g` (`g <= groups_ready`; `g == groups_ready` brings a new
    /// group into use).
    fn load<D: BlockIo>(&mut self, dev: &mut D, g: u64) -> Result<usize> {
        self.clock += 1;
        if let Some(i) = self.ent.iter().position(|e| e.group == g) {
            self.ent[i].used = self.clock;
            return Ok(i);
        }
        if g > self.groups_ready || g >= self.groups() {
            return Err(FsError::Corrupt {
                block: g * self.group_blocks,
                what: "free-space group out of range",
            });
        }
        let i = self.victim(dev)?;
        let txn = self.durable + 1;
        let (gb, blocks) = (self.group_blocks, self.block_count);
        let wslot = self.work_slot(dev, g)?;
        let work_at = self.slot_block(g, wslot);
        let mut dirty = false;
        if g >= self.durable_ready {
            // Brought into use in this transaction: the durable version is all free.
            let (d, _) = self.frames(i);
            Self::init_bitmap(d, g, gb, blocks, 0, work_at);
            if g == self.groups_ready {
                self.groups_ready += 1;
                dirty = true;
            }
        } else {
            let dslot = 1 - wslot;
            let at = self.slot_block(g, dslot);
            let fr = 2 * i;
            dev.read(at, self.frame_mut(fr))
                .map_err(|e| FsError::io(IoOp::ReadNode, e))?;
            match self.check_bitmap(self.frame(fr), g, at) {
                Ok(gen_) if gen_ <= self.durable => {}
                Ok(_) => {
                    return Err(FsError::Corrupt {
                        block: at,
                        what: "bitmap newer than the superblock",
                    });
                }
                Err(what) => return Err(FsError::Corrupt { block: at, what }),
            }
        }
        // Written earlier in this transaction: a group brought into use in it and not new
        // now (it was dirty from the start, so leaving the cache wrote it), or a group whose
        // working selector bit already names the working slot. That version is the working
        // one; else the working one starts as the durable one.
        let written = if g >= self.durable_ready {
            !dirty
        } else {
            self.sel_bit(dev, g, true)? == wslot
        };
        if written {
            let fr = 2 * i + 1;
            dev.read(work_at, self.frame_mut(fr))
                .map_err(|e| FsError::io(IoOp::ReadNode, e))?;
            match self.check_bitmap(self.frame(fr), g, work_at) {
                Ok(gen_) if gen_ == txn => {}
                Ok(_) => {
                    return Err(FsError::Corrupt {
                        block: work_at,
                        what: "working bitmap of another transaction",
                    });
                }
                Err(what) => {
                    return Err(FsError::Corrupt {
                        block: work_at,
                        what,
                    });
                }
            }
        } else {
            let (d, w) = self.frames(i);
            w.copy_from_slice(d);
            node::relabel(w, txn, work_at);
        }
        self.ent[i] = Ent {
            group: g,
            dirty,
            used: self.clock,
        };
        Ok(i)
    }

    fn victim<D: BlockIo>(&mut self, dev: &mut D) -> Result<usize> {
        let i = match self.ent.iter().position(|e| e.group == EMPTY) {
            Some(i) => i,
            None => {
                let mut best = 0;
                for (k, e) in self.ent.iter().enumerate() {
                    if e.used < self.ent[best].used {
                        best = k;
                    }
                }
                if self.ent[best].dirty {
                    self.write_back(dev, best)?;
                    self.early_writes += 1;
                }
                best
            }
        };
        self.ent[i] = NO_ENT;
        Ok(i)
    }

    /// Writes entry `i`'s working bitmap to its working slot and points the working selector
    /// at it.
    fn write_back<D: BlockIo>(&mut self, dev: &mut D, i: usize) -> Result<()> {
        let g = self.ent[i].group;
        let slot = self.work_slot(dev, g)?;
        let at = self.slot_block(g, slot);
        let (_, w) = self.frames(i);
        node::seal(w);
        dev.write(&[Run { block: at, data: w }], WriteFlags::NONE)
            .map_err(write_err)?;
        self.ent[i].dirty = false;
        self.set_work_sel(dev, g, slot)
    }

    /// Writes every changed working bitmap and selector (before the commit record): changed
    /// selectors get fresh blocks, which may change bitmaps again, until nothing changes.
    pub fn flush<D: BlockIo>(&mut self, dev: &mut D) -> Result<()> {
        self.in_flush = true;
        let r = self.flush_inner(dev);
        self.in_flush = false;
        r
    }

    fn flush_inner<D: BlockIo>(&mut self, dev: &mut D) -> Result<()> {
        for _ in 0..=SELECTORS + 1 {
            for i in 0..G {
                if self.ent[i].group != EMPTY && self.ent[i].dirty {
                    self.write_back(dev, i)?;
                }
            }
            let mut moved = false;
            for s in 0..SELECTORS {
                if self.sel[s].dirty && self.sel[s].fresh == 0 {
                    let nb = self.alloc(dev)?;
                    self.sel[s].fresh = nb;
                    if self.durable_sel[s] != 0 {
                        self.free(dev, self.durable_sel[s])?;
                    }
                    moved = true;
                }
            }
            if !moved && self.ent.iter().all(|e| e.group == EMPTY || !e.dirty) {
                let txn = self.durable + 1;
                for s in 0..SELECTORS {
                    if self.sel[s].dirty {
                        let at = self.sel[s].fresh;
                        let (_, w) = self.sel_frames(s);
                        node::relabel(w, txn, at);
                        node::seal(w);
                        dev.write(&[Run { block: at, data: w }], WriteFlags::NONE)
                            .map_err(write_err)?;
                        self.sel[s].dirty = false;
                    }
                }
                return Ok(());
            }
        }
        Err(FsError::Corrupt {
            block: 0,
            what: "free-space flush did not settle (internal error)",
        })
    }

    /// Stores the free-space fields in the superblock the next commit writes.
    pub fn fill_superblock(&self, sb: &mut Superblock) {
        sb.free_blocks = self.free_blocks;
        sb.groups_ready = self.groups_ready;
        for s in 0..SELECTORS {
            sb.selectors[s] = if self.sel[s].fresh != 0 {
                self.sel[s].fresh
            } else {
                self.durable_sel[s]
            };
        }
    }

    /// The commit of `generation` (which [`FreeSpace::flush`] preceded) is durable: working
    /// versions become durable.
    pub fn committed(&mut self, generation: u64) {
        self.durable = generation;
        self.pinned = 0;
        self.nheld = 0;
        self.held_blocks = 0;
        for s in 0..SELECTORS {
            if self.sel[s].fresh != 0 {
                self.durable_sel[s] = self.sel[s].fresh;
                self.sel[s].fresh = 0;
            }
            if self.sel[s].loaded {
                let (d, w) = self.sel_frames(s);
                d.copy_from_slice(w);
            }
        }
        self.durable_ready = self.groups_ready;
        let txn = generation + 1;
        for i in 0..G {
            let g = self.ent[i].group;
            if g == EMPTY {
                continue;
            }
            // Selectors are loaded for every cached group; the new working slot is the one
            // the durable selector does not name.
            let s = (g / SELECTOR_BITS) as usize;
            let dslot = u8::from(bit(self.frame(2 * G + 2 * s), g % SELECTOR_BITS));
            let at = self.slot_block(g, 1 - dslot);
            let (d, w) = self.frames(i);
            d.copy_from_slice(w);
            node::relabel(w, txn, at);
        }
    }

    /// Flushes the bitmaps, stores the free-space fields in the superblock, commits the tree,
    /// and makes the new versions durable. Returns the new generation.
    pub fn commit<D: BlockIo, const N: usize>(
        &mut self,
        dev: &mut D,
        tree: &mut Tree<'_, N>,
    ) -> Result<u64> {
        self.flush(dev)?;
        self.fill_superblock(tree.superblock_mut());
        let generation = tree.commit(dev)?;
        self.committed(generation);
        Ok(generation)
    }

    /// Calls `visit` with every block the working bitmaps mark used (fsck and tests; at a
    /// commit boundary these are the durable bitmaps), and with every selector block in use.
    pub fn for_each_used<D: BlockIo>(
        &mut self,
        dev: &mut D,
        visit: &mut dyn FnMut(u64),
    ) -> Result<()> {
        for g in 0..self.groups_ready {
            let i = self.load(dev, g)?;
            let len = self.group_len(g);
            let base = g * self.group_blocks;
            let w = self.frame(2 * i + 1);
            for k in 0..len {
                if bit(w, k) {
                    visit(base + k);
                }
            }
        }
        Ok(())
    }

    /// Selector blocks the next commit will point to.
    pub fn selector_blocks(&self) -> [u64; SELECTORS] {
        core::array::from_fn(|s| {
            if self.sel[s].fresh != 0 {
                self.sel[s].fresh
            } else {
                self.durable_sel[s]
            }
        })
    }

    /// The first block at or after `from` in group `g` (cached as entry `i`) free in both
    /// versions.
    fn find_free(&self, i: usize, g: u64, from: u64) -> Option<u64> {
        let d = self.frame(2 * i);
        let w = self.frame(2 * i + 1);
        let len = self.group_len(g);
        let mut k = from;
        while k < len {
            let byte = HDR + (k / 8) as usize;
            if k.is_multiple_of(8) && (d[byte] | w[byte]) == 0xff {
                k += 8;
                continue;
            }
            if !bit(d, k) && !bit(w, k) {
                let Some(end) = self.held_end(g * self.group_blocks + k) else {
                    return Some(k);
                };
                // Past the held range at once.
                k = end - g * self.group_blocks;
                continue;
            }
            k += 1;
        }
        None
    }
}

impl<D: BlockIo, const G: usize> Space<D> for FreeSpace<'_, G> {
    fn alloc(&mut self, dev: &mut D) -> Result<u64> {
        if !self.in_flush && self.free_blocks.saturating_sub(self.pinned) <= COMMIT_RESERVE {
            return Err(FsError::NoSpace);
        }
        let groups = self.groups();
        let mut g = self.cursor / self.group_blocks;
        let mut from = self.cursor % self.group_blocks;
        for _ in 0..=groups {
            if g >= groups {
                g = 0;
                from = 0;
            }
            if g > self.groups_ready {
                g = self.groups_ready;
                from = 0;
            }
            let i = self.load(dev, g)?;
            if count(self.frame(2 * i + 1)) > 0
                && let Some(k) = self.find_free(i, g, from)
            {
                let wb = self.frame_mut(2 * i + 1);
                set_bit(wb, k, true);
                set_count(wb, count(wb) - 1);
                self.ent[i].dirty = true;
                self.free_blocks = self.free_blocks.saturating_sub(1);
                let block = g * self.group_blocks + k;
                self.cursor = block + 1;
                return Ok(block);
            }
            g += 1;
            from = 0;
        }
        Err(FsError::NoSpace)
    }

    fn free(&mut self, dev: &mut D, block: u64) -> Result<()> {
        let g = block / self.group_blocks;
        if block < SLOTS || block >= self.block_count || g >= self.groups_ready {
            return Err(FsError::Corrupt {
                block,
                what: "freeing a block outside the used groups",
            });
        }
        let i = self.load(dev, g)?;
        let k = block - g * self.group_blocks;
        let wb = self.frame_mut(2 * i + 1);
        if !bit(wb, k) || k == 2 || k == 3 {
            return Err(FsError::Corrupt {
                block,
                what: "freeing a free block",
            });
        }
        set_bit(wb, k, false);
        set_count(wb, count(wb) + 1);
        self.ent[i].dirty = true;
        self.free_blocks += 1;
        if bit(self.frame(2 * i), k) {
            self.pinned += 1;
        }
        Ok(())
    }
}
