//! Host tests of the version-2 tree: a model test against `BTreeMap` and crash-state
//! enumeration.

mod cache;
mod check;
mod crash;
mod file;
mod fs;
mod fuzz;
mod model;
mod space;
mod volume;

use std::collections::BTreeSet;
use std::vec::Vec;

use super::key::Key;
use super::space::{FreeSpace, Space, space_frames};
use super::tree::Tree;
use crate::error::{FsError, Result};
use crate::format::BLOCK_SIZE;
use crate::io::BlockIo;

/// A test allocator: a bitmap rebuilt at mount from the tree's nodes, with frees held back
/// until [`MemSpace::committed`]. It checks the copy-on-write contract: no block is freed
/// twice, and nothing freed is reused before the commit.
pub struct MemSpace {
    pub used: Vec<bool>,
    pub pending: Vec<u64>,
    cursor: usize,
}

impl MemSpace {
    /// The space of the tree just mounted: slots and every node used.
    pub fn rebuild<D: BlockIo, const N: usize>(dev: &mut D, tree: &mut Tree<'_, N>) -> Self {
        let mut used = std::vec![false; dev.block_count() as usize];
        used[0] = true;
        used[1] = true;
        tree.check(dev, &mut |b, _| {
            assert!(!used[b as usize], "node {b} referenced twice");
            used[b as usize] = true;
        })
        .expect("tree check at mount");
        MemSpace {
            used,
            pending: Vec::new(),
            cursor: 2,
        }
    }

    /// The commit is durable: freed blocks become allocatable.
    pub fn committed(&mut self) {
        let set: BTreeSet<u64> = self.pending.iter().copied().collect();
        assert_eq!(set.len(), self.pending.len(), "a block freed twice");
        for b in self.pending.drain(..) {
            self.used[b as usize] = false;
        }
    }
}

impl<D: BlockIo> Space<D> for MemSpace {
    fn alloc(&mut self, _dev: &mut D) -> Result<u64> {
        let n = self.used.len();
        for k in 0..n {
            let b = (self.cursor + k) % n;
            if !self.used[b] {
                self.used[b] = true;
                self.cursor = b + 1;
                return Ok(b as u64);
            }
        }
        Err(FsError::NoSpace)
    }
    fn free(&mut self, _dev: &mut D, block: u64) -> Result<()> {
        assert!(self.used[block as usize], "freeing free block {block}");
        self.pending.push(block);
        Ok(())
    }
}

/// Every item of the tree, in order, read with `next`.
pub fn scan<D: BlockIo, const N: usize>(
    dev: &mut D,
    tree: &mut Tree<'_, N>,
) -> Vec<(Key, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut from = Key::MIN;
    while let Some((k, n)) = tree.next(dev, &from, &mut buf).expect("scan") {
        out.push((k, buf[..n].to_vec()));
        match k.successor() {
            Some(s) => from = s,
            None => break,
        }
    }
    out
}

/// A value for `key` at `version`, `len` bytes, so a stale value is told from a new one.
pub fn value_for(key: &Key, version: u64, len: usize) -> Vec<u8> {
    let seed = key.id ^ (key.offset << 7) ^ (version << 40) ^ key.kind as u64;
    (0..len)
        .map(|i| (seed.wrapping_mul(0x9E37_79B9) >> (i % 32)) as u8 ^ i as u8)
        .collect()
}

/// Which allocator a test runs the tree with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceKind {
    /// [`MemSpace`]: a bitmap rebuilt from the tree at mount.
    Mem,
    /// [`FreeSpace`] with groups of this many blocks (on-disk bitmaps).
    Bitmaps(u32),
}

/// Groups a test's [`FreeSpace`] caches: few, so that bitmaps are written back early.
pub const TEST_GROUPS: usize = 2;

/// Either allocator.
#[allow(clippy::large_enum_variant)]
pub enum AnySpace<'m> {
    Mem(MemSpace),
    Bits(FreeSpace<'m, TEST_GROUPS>),
}

impl<D: BlockIo> Space<D> for AnySpace<'_> {
    fn alloc(&mut self, dev: &mut D) -> Result<u64> {
        match self {
            AnySpace::Mem(s) => s.alloc(dev),
            AnySpace::Bits(s) => s.alloc(dev),
        }
    }
    fn free(&mut self, dev: &mut D, block: u64) -> Result<()> {
        match self {
            AnySpace::Mem(s) => s.free(dev, block),
            AnySpace::Bits(s) => s.free(dev, block),
        }
    }
}

/// Scratch for [`AnySpace`]: the frames of a [`FreeSpace`].
pub fn space_mem() -> Vec<u8> {
    std::vec![0u8; space_frames(TEST_GROUPS) * BLOCK_SIZE]
}

/// Writes an empty filesystem of `kind`.
pub fn mkfs<D: BlockIo, const N: usize>(dev: &mut D, mem: &mut [u8], kind: SpaceKind) {
    match kind {
        SpaceKind::Mem => Tree::<N>::mkfs(dev, mem).unwrap(),
        SpaceKind::Bitmaps(gb) => {
            let sb = FreeSpace::<TEST_GROUPS>::mkfs(dev, mem, gb).unwrap();
            Tree::<N>::mkfs_with(dev, mem, &sb, 0).unwrap();
        }
    }
}

impl<'m> AnySpace<'m> {
    /// The allocator of the tree just mounted (checked exactly against the tree).
    pub fn mount<D: BlockIo, const N: usize>(
        kind: SpaceKind,
        dev: &mut D,
        tree: &mut Tree<'_, N>,
        smem: &'m mut [u8],
    ) -> Self {
        let mut s = match kind {
            SpaceKind::Mem => AnySpace::Mem(MemSpace::rebuild(dev, tree)),
            SpaceKind::Bitmaps(_) => {
                AnySpace::Bits(FreeSpace::open(smem, tree.superblock()).unwrap())
            }
        };
        s.verify(dev, tree);
        s
    }

    /// Commits the tree (and the bitmaps) and releases what the transaction freed.
    pub fn commit<D: BlockIo, const N: usize>(
        &mut self,
        dev: &mut D,
        tree: &mut Tree<'_, N>,
    ) -> u64 {
        match self {
            AnySpace::Mem(s) => {
                let g = tree.commit(dev).unwrap();
                s.committed();
                g
            }
            AnySpace::Bits(s) => s.commit(dev, tree).unwrap(),
        }
    }

    /// At a commit boundary: the blocks the allocator holds used are exactly the superblock
    /// slots, the bitmap slots of groups in use, and the tree's nodes; the free count agrees.
    pub fn verify<D: BlockIo, const N: usize>(&mut self, dev: &mut D, tree: &mut Tree<'_, N>) {
        match self {
            AnySpace::Mem(s) => {
                let fresh = MemSpace::rebuild(dev, tree);
                assert_eq!(fresh.used, s.used, "leak or reuse");
            }
            AnySpace::Bits(s) => {
                let sb = *tree.superblock();
                let gb = sb.group_blocks as u64;
                let mut want = BTreeSet::from([0u64, 1]);
                for g in 0..s.groups_ready() {
                    want.insert(g * gb + 2);
                    want.insert(g * gb + 3);
                }
                for p in s.selector_blocks() {
                    if p != 0 {
                        assert!(want.insert(p), "selector block {p} used twice");
                    }
                }
                assert_eq!(s.selector_blocks(), sb.selectors);
                tree.check(dev, &mut |b, _| {
                    assert!(
                        want.insert(b),
                        "node {b} referenced twice or on a bitmap slot"
                    );
                })
                .expect("tree check");
                let mut got = BTreeSet::new();
                s.for_each_used(dev, &mut |b| {
                    got.insert(b);
                })
                .expect("bitmaps");
                assert_eq!(got, want, "bitmaps differ from the tree");
                let groups = sb.block_count.div_ceil(gb);
                assert_eq!(
                    s.free_blocks(),
                    sb.block_count - got.len() as u64 - 2 * (groups - s.groups_ready()),
                    "free count"
                );
            }
        }
    }
}

/// At a commit boundary: the blocks the volume's bitmaps mark used are exactly the superblock
/// slots, the bitmap slots of groups in use, the selectors, the tree's nodes and every block
/// of every extent, each once. Returns the number of data blocks.
pub fn verify_volume<D: BlockIo, const N: usize, const G: usize>(
    v: &mut super::Volume<'_, D, N, G>,
) -> u64 {
    let sb = *v.tree.superblock();
    let gb = sb.group_blocks as u64;
    let mut want = BTreeSet::from([0u64, 1]);
    for g in 0..v.space.groups_ready() {
        want.insert(g * gb + 2);
        want.insert(g * gb + 3);
    }
    for p in v.space.selector_blocks() {
        if p != 0 {
            assert!(want.insert(p), "selector block {p} used twice");
        }
    }
    if sb.log_root != 0 {
        assert!(
            want.insert(sb.log_root),
            "log root {} used twice",
            sb.log_root
        );
    }
    v.tree
        .check(&mut v.dev, &mut |b, _| {
            assert!(want.insert(b), "node {b} used twice");
        })
        .expect("tree check");
    let mut data = 0;
    let mut from = Key::MIN;
    let mut buf = [0u8; 1024];
    while let Some((k, n)) = v.tree.next(&mut v.dev, &from, &mut buf).unwrap() {
        if k.kind == super::key::kind::EXTENT {
            assert_eq!(n, 16);
            let start = u64::from_le_bytes(buf[..8].try_into().unwrap());
            let phys = u64::from_le_bytes(buf[8..16].try_into().unwrap());
            for i in 0..k.offset - start {
                assert!(want.insert(phys + i), "data block {} used twice", phys + i);
                data += 1;
            }
        }
        from = k.successor().unwrap();
    }
    let mut got = BTreeSet::new();
    v.space
        .for_each_used(&mut v.dev, &mut |b| {
            got.insert(b);
        })
        .unwrap();
    assert_eq!(got, want, "bitmaps differ from the tree and the extents");
    let r = fsck_clean(&mut v.dev);
    assert_eq!(r.used_blocks, want.len() as u64);
    data
}

/// Runs [`super::check::check`] with the least scratch and asserts it finds nothing.
pub fn fsck_clean<D: BlockIo>(dev: &mut D) -> super::check::Report {
    let mut scratch = std::vec![0u8; super::check::MIN_SCRATCH_BLOCKS * BLOCK_SIZE];
    let mut found = Vec::new();
    let r = super::check::check(dev, &mut scratch, &mut |p| found.push(*p)).expect("fsck");
    assert!(found.is_empty(), "fsck of a clean volume: {found:?}");
    assert_eq!(r.problems, 0);
    r
}
