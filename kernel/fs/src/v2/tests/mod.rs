//! Host tests of the version-2 tree: a model test against `BTreeMap` and crash-state
//! enumeration.

mod crash;
mod model;

use std::collections::BTreeSet;
use std::vec::Vec;

use super::key::Key;
use super::space::Space;
use super::tree::Tree;
use crate::error::{FsError, Result};
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

    /// Blocks in use.
    pub fn used_count(&self) -> usize {
        self.used.iter().filter(|&&u| u).count()
    }
}

impl Space for MemSpace {
    fn alloc(&mut self) -> Result<u64> {
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
    fn free(&mut self, block: u64) -> Result<()> {
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
