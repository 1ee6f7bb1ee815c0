//! The copy-on-write B+tree (`docs/tinyfs-v2.md`, "The B+tree"): one tree of items keyed by
//! [`Key`], its node cache, and its commit record.
//!
//! Invariant of every interior node `p` (checked by [`Tree::check`]): entry keys ascend, and
//! every key in the subtree of entry `i` lies in `[key(i), key(i + 1))` (the last entry's range
//! is bounded by `p`'s own). Inserting below entry 0 lowers entry 0's key, so the invariant
//! holds after every operation and lookups never miss.
//!
//! Changes go to fresh nodes (generation = the open transaction, `durable + 1`); any other
//! node is copied top-down first, its old block freed through [`Space::free`] (kept until the
//! commit is durable). [`Tree::commit`] writes the dirty nodes and then the superblock with
//! `PREFLUSH | FUA`. An operation never commits in its middle, so each is atomic across a
//! crash.

use super::cache::NodeCache;
use super::key::Key;
use super::node::{self, CAPACITY, CHILD_SIZE, MAX_HEIGHT, VALUE_MAX};
use super::space::Space;
use super::superblock::{FsidSeed, MAX_BLOCKS, SLOTS, Superblock};
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, WriteFlags};

/// Where mkfs puts the first root node.
const FIRST_ROOT: u64 = SLOTS;

/// What mount found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// The generation mounted.
    pub generation: u64,
    /// The newest valid superblock's tree did not load, or the other slot failed validation
    /// while it may have held a newer commit (a torn commit record): the older slot is used.
    pub fell_back: bool,
    /// The newest valid superblock's root did not validate and the older tree was mounted:
    /// the mount is read-only whatever was asked, because writing would reuse the newer
    /// tree's blocks and make the loss permanent (as in version 1).
    pub rolled_back: bool,
    /// Fsync log blocks replayed (and committed) by a read-write volume mount; 0 when there
    /// was no log or the mount is read-only (then the data of fsyncs since the last commit
    /// is not visible until a read-write mount replays it).
    pub replayed: u32,
}

/// The tree and its commit state.
pub struct Tree<'b, const N: usize> {
    cache: NodeCache<'b, N>,
    sb: Superblock,
    durable: u64,
    failed: bool,
    read_only: bool,
    /// The leaves the last descents reached and the key ranges their parents give them: a
    /// lookup or an insertion of a key in one of those ranges goes straight to the leaf.
    /// An operation works in a few places of the key space at once (a create: the new
    /// inode's leaf, the directory entry's, the directory inode's), so one finger per place.
    fingers: [Option<Finger>; FINGERS],
    /// The finger [`Tree::set_finger`] replaces next when none names its leaf.
    next_finger: usize,
    /// Bumped by every change of a leaf's key range (a node created or freed, a separator
    /// lowered, a commit): a finger of an older shape is not used. A copy-on-write copy
    /// keeps the ranges (a finger on the copied node moves to the copy; the copied block is
    /// freed at commit, so no node takes its number before the next shape).
    shape: u64,
}

/// Fingers a tree keeps.
const FINGERS: usize = 4;

/// A leaf and the keys `[lo, hi)` that a descent from the root sends to it (a subset of
/// its parents' ranges), valid while the tree's shape is `shape`.
#[derive(Clone, Copy, Debug)]
struct Finger {
    block: u64,
    lo: Key,
    hi: Option<Key>,
    shape: u64,
}

/// The key range a descent has narrowed to so far.
#[derive(Clone, Copy)]
struct Range {
    lo: Key,
    hi: Option<Key>,
}

impl Range {
    const ALL: Range = Range {
        lo: Key::MIN,
        hi: None,
    };

    /// Narrows to entry `i` of interior node `b`.
    fn enter(&mut self, b: &[u8], i: usize) {
        self.lo = self.lo.max(node::key(b, i));
        if i + 1 < node::nitems(b) {
            let k = node::key(b, i + 1);
            self.hi = Some(self.hi.map_or(k, |h| h.min(k)));
        }
    }
}

impl<const N: usize> core::fmt::Debug for Tree<'_, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tree")
            .field("sb", &self.sb)
            .field("durable", &self.durable)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Where a key is in a leaf: `Ok(i)` item `i` has it, `Err(i)` it goes in at `i`.
type LeafAt = core::result::Result<usize, usize>;

/// Where a descent goes when it leaves a node: the frame, and the entry it followed.
#[derive(Clone, Copy, Default)]
struct Step {
    frame: usize,
    index: usize,
}

fn internal(block: u64) -> FsError {
    FsError::Corrupt {
        block,
        what: "node overflow (internal error)",
    }
}

impl<'b, const N: usize> Tree<'b, N> {
    /// Writes an empty tree on `dev` with its root leaf at block 2 (generation 1 in slot 1,
    /// slot 0 zeroed), using `mem` (`N` blocks) as the cache; no free-space bitmaps (for a
    /// caller that tracks space itself). The filesystem is the whole device.
    pub fn mkfs<D: BlockIo>(dev: &mut D, mem: &'b mut [u8]) -> Result<()> {
        let blocks = dev.block_count();
        if blocks <= FIRST_ROOT {
            return Err(FsError::NoSpace);
        }
        if blocks > MAX_BLOCKS {
            return Err(FsError::Unsupported("more than 2^32 blocks"));
        }
        let sb = Superblock {
            generation: 1,
            block_count: blocks,
            root: FIRST_ROOT,
            height: 1,
            next_ino: 0,
            flags: 0,
            free_blocks: blocks - FIRST_ROOT - 1,
            log_root: 0,
            group_blocks: super::superblock::GROUP_BLOCKS_MAX,
            groups_ready: 0,
            selectors: [0; super::superblock::SELECTORS],
            fsid: 0,
        };
        Self::mkfs_with(dev, mem, &sb, 0)
    }

    /// Writes an empty tree whose root leaf is at `sb.root`, then `sb` (generation 1) to slot 1
    /// with `PREFLUSH | FUA`; slot 0 is zeroed. Whatever else the filesystem needs (bitmaps)
    /// must be written before.
    ///
    /// The filesystem's identity (`sb.fsid` is ignored) is chosen here ([`FsidSeed`]): from
    /// `now` (the caller's clock), the geometry, and what the superblock slots held before,
    /// read first, so that it differs from the identity of a filesystem they held.
    pub fn mkfs_with<D: BlockIo>(
        dev: &mut D,
        mem: &'b mut [u8],
        sb: &Superblock,
        now: u64,
    ) -> Result<()> {
        if sb.generation != 1 || sb.height != 1 || sb.block_count > dev.block_count() {
            return Err(FsError::InvalidArgument);
        }
        if mem.len() < BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        let mut seed = FsidSeed::new(now, sb);
        for at in 0..SLOTS {
            dev.read(at, &mut mem[..BLOCK_SIZE])
                .map_err(|e| FsError::io(IoOp::Format, e))?;
            seed.slot(at, &mem[..BLOCK_SIZE]);
        }
        let sb = &Superblock {
            fsid: seed.fsid(),
            ..*sb
        };
        let mut cache = NodeCache::<N>::new(mem)?;
        let root = sb.root;
        cache.write_with(dev, root, WriteFlags::NONE, IoOp::Format, |b| {
            node::init(b, 0, 1, root);
            node::seal(b);
        })?;
        cache.write_with(dev, 0, WriteFlags::NONE, IoOp::Format, |b| b.fill(0))?;
        cache.write_with(dev, 1, WriteFlags::COMMIT, IoOp::Format, |b| sb.encode(b))
    }

    /// Mounts the newest superblock whose root node validates. `read_only` refuses changes.
    pub fn mount<D: BlockIo>(
        dev: &mut D,
        mem: &'b mut [u8],
        read_only: bool,
    ) -> Result<(Self, MountInfo)> {
        let mut cache = NodeCache::<N>::new(mem)?;
        let mut slots = [None, None];
        let mut first_err = None;
        let mut claims_newer = [0u64; 2];
        for at in 0..SLOTS {
            let r = cache.read_with(dev, at, IoOp::ReadSuperblock, |b| {
                (Superblock::decode(b, at), node::generation(b))
            })?;
            match r {
                (Ok(sb), _) if sb.block_count <= dev.block_count() => slots[at as usize] = Some(sb),
                (Ok(_), _) => {
                    first_err.get_or_insert(FsError::Corrupt {
                        block: at,
                        what: "filesystem larger than the device",
                    });
                }
                (Err(what), claimed) => {
                    claims_newer[at as usize] = claimed;
                    first_err.get_or_insert(FsError::Corrupt { block: at, what });
                }
            }
        }
        let mut order = [0usize, 1];
        let g = |s: &Option<Superblock>| s.map_or(0, |s| s.generation);
        if g(&slots[1]) > g(&slots[0]) {
            order = [1, 0];
        }
        let newest_claim = claims_newer[0].max(claims_newer[1]);
        let mut tree = Tree {
            cache,
            sb: Superblock {
                generation: 0,
                block_count: 0,
                root: 0,
                height: 1,
                next_ino: 0,
                flags: 0,
                free_blocks: 0,
                log_root: 0,
                group_blocks: 0,
                groups_ready: 0,
                selectors: [0; super::superblock::SELECTORS],
                fsid: 0,
            },
            durable: 0,
            failed: false,
            read_only,
            fingers: [None; FINGERS],
            next_finger: 0,
            shape: 0,
        };
        for (rank, &s) in order.iter().enumerate() {
            let Some(sb) = slots[s] else { continue };
            tree.sb = sb;
            tree.durable = sb.generation;
            tree.cache.begin_op();
            match tree.load(dev, sb.root, sb.height - 1, sb.generation) {
                Ok(_) => {
                    let other_torn = slots[1 - s].is_none()
                        && newest_claim > sb.generation
                        && newest_claim < super::superblock::GENERATION_LIMIT;
                    let info = MountInfo {
                        generation: sb.generation,
                        fell_back: rank > 0 || other_torn,
                        rolled_back: rank > 0,
                        replayed: 0,
                    };
                    tree.read_only |= rank > 0;
                    return Ok((tree, info));
                }
                Err(e) => {
                    tree.cache.clear();
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(FsError::Corrupt {
            block: 0,
            what: "no superblock",
        }))
    }

    /// The superblock as the next commit will write it (fields the filesystem layer keeps
    /// there: `next_ino`, `flags`, `free_blocks`).
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Changes the filesystem layer's superblock fields (the tree's own fields, `root`,
    /// `height`, `generation` and `block_count`, are restored by the next commit from the
    /// tree).
    pub fn superblock_mut(&mut self) -> &mut Superblock {
        &mut self.sb
    }

    /// The generation of the last durable commit.
    pub fn generation(&self) -> u64 {
        self.durable
    }

    /// Levels of the tree.
    pub fn height(&self) -> u8 {
        self.sb.height
    }

    /// Node cache statistics.
    pub fn cache_stats(&self) -> super::cache::CacheStats {
        self.cache.stats()
    }

    fn txn(&self) -> u64 {
        self.durable + 1
    }

    /// `ReadOnly` on a read-only mount, `Failed` after a failed write; otherwise nothing.
    pub(super) fn writable(&self) -> Result<()> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.durable,
            });
        }
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// The frame of node `block`, which its parent says is at `level` and not newer than
    /// `max_gen`.
    fn load<D: BlockIo>(
        &mut self,
        dev: &mut D,
        block: u64,
        level: u8,
        max_gen: u64,
    ) -> Result<usize> {
        if block < SLOTS || block >= self.sb.block_count {
            return Err(FsError::Corrupt {
                block,
                what: "node pointer outside the filesystem",
            });
        }
        let f = self
            .cache
            .get(dev, block, |b| node::check(b, block).map(|_| ()))?;
        let b = self.cache.frame(f);
        if node::level(b) != level {
            return Err(FsError::Corrupt {
                block,
                what: "node level does not match its parent",
            });
        }
        if node::generation(b) > max_gen {
            return Err(FsError::Corrupt {
                block,
                what: "node newer than its parent",
            });
        }
        Ok(f)
    }

    /// Makes frame `f` fresh: returns it if it is, else a copy at a new block (the old block
    /// freed at commit). The caller repoints the parent.
    fn cow<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        f: usize,
    ) -> Result<usize> {
        let txn = self.txn();
        if node::generation(self.cache.frame(f)) == txn {
            return Ok(f);
        }
        let old = self.cache.block_of(f);
        let nb = space.alloc(dev)?;
        // The frame becomes the copy: the old node stays on the device (the durable tree's),
        // so no memory copy and no second frame.
        self.cache.relocate(f, nb);
        node::relabel(self.cache.frame_mut(f), txn, nb);
        // The copy covers the old node's keys: a finger on it moves along.
        for fg in self.fingers.iter_mut().flatten() {
            if fg.block == old {
                fg.block = nb;
            }
        }
        space.free(dev, old)?;
        Ok(f)
    }

    /// Frees a node's block and forgets its frame.
    fn drop_node<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        block: u64,
    ) -> Result<()> {
        self.shape += 1;
        self.cache.discard(block);
        space.free(dev, block)
    }

    /// A new empty node at `level` in a fresh block.
    fn new_node<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        level: u8,
    ) -> Result<usize> {
        self.shape += 1;
        let nb = space.alloc(dev)?;
        let nf = self.cache.create(dev, nb)?;
        let txn = self.txn();
        node::init(self.cache.frame_mut(nf), level, txn, nb);
        Ok(nf)
    }

    fn root_frame<D: BlockIo>(&mut self, dev: &mut D) -> Result<usize> {
        let txn = self.txn();
        self.load(dev, self.sb.root, self.sb.height - 1, txn)
    }

    /// The frame of a finger's leaf if `key` is in its range, the shape unchanged since and
    /// the leaf still cached.
    fn finger_leaf(&mut self, key: &Key) -> Option<usize> {
        let shape = self.shape;
        let fg = self
            .fingers
            .iter()
            .flatten()
            .find(|fg| fg.shape == shape && *key >= fg.lo && fg.hi.is_none_or(|h| *key < h))?;
        let f = self.cache.find(fg.block)?;
        (node::level(self.cache.frame(f)) == 0).then_some(f)
    }

    /// Notes that a descent for a key in `r` reached leaf frame `f`: replaces the finger of
    /// that leaf, else one of an older shape, else the next in turn.
    fn set_finger(&mut self, f: usize, r: Range) {
        let block = self.cache.block_of(f);
        let shape = self.shape;
        let slot = self
            .fingers
            .iter()
            .position(|fg| fg.is_some_and(|fg| fg.block == block))
            .or_else(|| {
                self.fingers
                    .iter()
                    .position(|fg| fg.is_none_or(|fg| fg.shape != shape))
            })
            .unwrap_or_else(|| {
                let i = self.next_finger;
                self.next_finger = (i + 1) % FINGERS;
                i
            });
        self.fingers[slot] = Some(Finger {
            block,
            lo: r.lo,
            hi: r.hi,
            shape,
        });
    }

    /// Looks `key` up; copies its value into `out` (as much as fits) and returns its length.
    pub fn get<D: BlockIo>(
        &mut self,
        dev: &mut D,
        key: &Key,
        out: &mut [u8],
    ) -> Result<Option<usize>> {
        self.cache.begin_op();
        let (f, at) = self.leaf_of(dev, key)?;
        let b = self.cache.frame(f);
        Ok(at.ok().map(|i| {
            let v = node::value(b, i);
            let n = v.len().min(out.len());
            out[..n].copy_from_slice(&v[..n]);
            v.len()
        }))
    }

    /// The leaf frame `key` belongs in (by a finger, else a descent that leaves a finger)
    /// and `key`'s search result in it. The caller began the operation.
    fn leaf_of<D: BlockIo>(
        &mut self,
        dev: &mut D,
        key: &Key,
    ) -> Result<(usize, core::result::Result<usize, usize>)> {
        let (mut f, mut r) = match self.finger_leaf(key) {
            Some(f) => (f, None),
            None => (self.root_frame(dev)?, Some(Range::ALL)),
        };
        loop {
            let b = self.cache.frame(f);
            let lvl = node::level(b);
            if lvl == 0 {
                if let Some(r) = r {
                    self.set_finger(f, r);
                }
                return Ok((f, node::search(self.cache.frame(f), key)));
            }
            let i = node::child_index(b, key);
            if let Some(r) = r.as_mut() {
                r.enter(b, i);
            }
            let (c, g) = (node::child(b, i), node::generation(b));
            f = self.load(dev, c, lvl - 1, g)?;
        }
    }

    /// The first item with a key `>= from`: its key and value length, the value copied into
    /// `out` (as much as fits). Iterate with `from = key.successor()`.
    pub fn next<D: BlockIo>(
        &mut self,
        dev: &mut D,
        from: &Key,
        out: &mut [u8],
    ) -> Result<Option<(Key, usize)>> {
        let mut from = *from;
        self.cache.begin_op();
        if let Some(f) = self.finger_leaf(&from) {
            // The item is in the finger's leaf unless `from` is past its last key (then
            // the descent below finds the next leaf).
            let b = self.cache.frame(f);
            if let Ok(i) | Err(i) = node::search(b, &from)
                && i < node::nitems(b)
            {
                let v = node::value(b, i);
                let n = v.len().min(out.len());
                out[..n].copy_from_slice(&v[..n]);
                return Ok(Some((node::key(b, i), v.len())));
            }
        }
        loop {
            self.cache.begin_op();
            let mut bound = None;
            let mut r = Range::ALL;
            let mut f = self.root_frame(dev)?;
            loop {
                let b = self.cache.frame(f);
                let lvl = node::level(b);
                if lvl == 0 {
                    break;
                }
                let i = node::child_index(b, &from);
                r.enter(b, i);
                if i + 1 < node::nitems(b) {
                    bound = Some(node::key(b, i + 1));
                }
                let (c, g) = (node::child(b, i), node::generation(b));
                f = self.load(dev, c, lvl - 1, g)?;
            }
            self.set_finger(f, r);
            let b = self.cache.frame(f);
            let i = match node::search(b, &from) {
                Ok(i) | Err(i) => i,
            };
            if i < node::nitems(b) {
                let v = node::value(b, i);
                let n = v.len().min(out.len());
                out[..n].copy_from_slice(&v[..n]);
                return Ok(Some((node::key(b, i), v.len())));
            }
            match bound {
                Some(k) if k > from => from = k,
                Some(_) => {
                    return Err(FsError::Corrupt {
                        block: self.cache.block_of(f),
                        what: "separator keys out of order",
                    });
                }
                None => return Ok(None),
            }
        }
    }

    /// Inserts `key` with `value` (at most [`VALUE_MAX`] bytes), replacing an existing value.
    /// Returns whether it replaced one. On `NoSpace` the tree is unchanged; any other error
    /// fails the instance (see [`FsError::Failed`]).
    pub fn insert<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        key: &Key,
        value: &[u8],
    ) -> Result<bool> {
        self.writable()?;
        if value.len() > VALUE_MAX {
            return Err(FsError::InvalidArgument);
        }
        self.cache.begin_op();
        let r = self.insert_inner(dev, space, key, value);
        self.settle(r)
    }

    fn settle<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && *e != FsError::NoSpace
        {
            self.failed = true;
        }
        r
    }

    /// Whether `key` with `value` fits in leaf `b` at `at` (its search result: a
    /// replacement of item `i`, or a new item).
    fn leaf_fits(b: &[u8], at: core::result::Result<usize, usize>, value: &[u8]) -> bool {
        match at {
            Ok(i) => {
                let old = node::value(b, i).len();
                value.len() <= old || node::free(b) >= value.len() - old
            }
            Err(_) => node::free(b) >= node::item_size(value.len()),
        }
    }

    /// Whether node `f` cannot take `key` with `value` (a leaf) or one more entry (an
    /// interior node); for a leaf also where `key` is in it, so that the put after the
    /// descent does not search the leaf again.
    fn is_full(&self, f: usize, key: &Key, value: &[u8]) -> (bool, Option<LeafAt>) {
        let b = self.cache.frame(f);
        if node::level(b) == 0 {
            let at = node::search(b, key);
            (!Self::leaf_fits(b, at, value), Some(at))
        } else {
            (node::free(b) < node::item_size(CHILD_SIZE), None)
        }
    }

    /// Puts `key` with `value` in leaf `f`, at `at` if that is its search result there.
    fn leaf_put(&mut self, f: usize, at: Option<LeafAt>, key: &Key, value: &[u8]) -> Result<bool> {
        let block = self.cache.block_of(f);
        let b = self.cache.frame_mut(f);
        match at.unwrap_or_else(|| node::search(b, key)) {
            Ok(i) => {
                if node::set_value(b, i, value) {
                    Ok(true)
                } else {
                    Err(internal(block))
                }
            }
            Err(i) => {
                if node::insert_at(b, i, key, value) {
                    Ok(false)
                } else {
                    Err(internal(block))
                }
            }
        }
    }

    fn insert_inner<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        key: &Key,
        value: &[u8],
    ) -> Result<bool> {
        // A key in the finger's leaf, fresh (so is its whole path) and with room: only the
        // leaf changes, the descent would copy and split nothing.
        if let Some(f) = self.finger_leaf(key)
            && node::generation(self.cache.frame(f)) == self.txn()
        {
            let (full, at) = self.is_full(f, key, value);
            if !full {
                return self.leaf_put(f, at, key, value);
            }
        }
        let f = self.root_frame(dev)?;
        let mut f = self.cow(dev, space, f)?;
        self.sb.root = self.cache.block_of(f);
        let mut r = Range::ALL;
        // Where `key` is in `f` when `f` is a leaf that has room (its search result).
        let (full, mut at) = self.is_full(f, key, value);
        if full {
            // Grow: a new root with the old one as its only child, split below.
            if self.sb.height as usize >= MAX_HEIGHT {
                return Err(FsError::Unsupported("tree height limit"));
            }
            let nf = self.new_node(dev, space, self.sb.height)?;
            let old = self.sb.root;
            if !node::insert_at(self.cache.frame_mut(nf), 0, &Key::MIN, &old.to_le_bytes()) {
                return Err(internal(old));
            }
            self.sb.root = self.cache.block_of(nf);
            self.sb.height += 1;
            f = nf;
            at = None;
        }
        loop {
            let lvl = node::level(self.cache.frame(f));
            if lvl == 0 {
                self.set_finger(f, r);
                return self.leaf_put(f, at, key, value);
            }
            let b = self.cache.frame(f);
            let i = node::child_index(b, key);
            if i == 0 && *key < node::key(b, 0) {
                self.shape += 1;
                node::lower_first_key(self.cache.frame_mut(f), key);
            }
            let b = self.cache.frame(f);
            r.enter(b, i);
            let (cb, g) = (node::child(b, i), node::generation(b));
            let c = self.load(dev, cb, lvl - 1, g)?;
            let mut c = self.cow(dev, space, c)?;
            let cblock = self.cache.block_of(c);
            node::set_child(self.cache.frame_mut(f), i, cblock);
            let (full, cat) = self.is_full(c, key, value);
            at = cat;
            if full {
                // Split the child; its parent has room (checked one level up).
                at = None;
                let d = self.new_node(dev, space, lvl - 1)?;
                let cb = self.cache.frame(c);
                let at = if lvl == 1 {
                    node::split_point(cb)
                } else {
                    node::nitems(cb) / 2
                };
                let (cs, ds) = self.cache.pair_mut(c, d);
                node::split_into(cs, at, ds);
                let sep = node::key(self.cache.frame(d), 0);
                let dblock = self.cache.block_of(d);
                if !node::insert_at(self.cache.frame_mut(f), i + 1, &sep, &dblock.to_le_bytes()) {
                    return Err(internal(self.cache.block_of(f)));
                }
                if *key >= sep {
                    c = d;
                    r.lo = r.lo.max(sep);
                } else {
                    r.hi = Some(r.hi.map_or(sep, |h| h.min(sep)));
                }
            }
            f = c;
        }
    }

    /// Gives the item at `old` the larger key `new` in place (same value, same place in its
    /// leaf) when `keep(value)` agrees and no key or separator lies in `(old, new]`: a file's
    /// last extent, keyed by its end, grows by one descent instead of a removal and an
    /// insertion. `keep` is called whenever `old` is there. Returns whether the key changed;
    /// `false` leaves every item as it was (the leaf's path may have been copied, as an
    /// insertion near `old` would copy it). Errors as for [`Tree::insert`].
    pub fn rekey<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        old: &Key,
        new: &Key,
        keep: impl FnOnce(&[u8]) -> bool,
    ) -> Result<bool> {
        self.writable()?;
        if *new <= *old {
            return Ok(false);
        }
        self.cache.begin_op();
        let r = (|| {
            let f = self.root_frame(dev)?;
            let mut f = self.cow(dev, space, f)?;
            self.sb.root = self.cache.block_of(f);
            // The smallest separator right of the path: the leaf's keys stay below it.
            let mut bound: Option<Key> = None;
            loop {
                let b = self.cache.frame(f);
                let lvl = node::level(b);
                if lvl == 0 {
                    break;
                }
                let i = node::child_index(b, old);
                if i + 1 < node::nitems(b) {
                    let k = node::key(b, i + 1);
                    bound = Some(bound.map_or(k, |x| x.min(k)));
                }
                let (cb, g) = (node::child(b, i), node::generation(b));
                let c = self.load(dev, cb, lvl - 1, g)?;
                let c = self.cow(dev, space, c)?;
                let cblock = self.cache.block_of(c);
                node::set_child(self.cache.frame_mut(f), i, cblock);
                f = c;
            }
            let b = self.cache.frame(f);
            let Ok(i) = node::search(b, old) else {
                return Ok(false);
            };
            // `keep` first: it sees the value whenever `old` is there.
            if !keep(node::value(b, i))
                || bound.is_some_and(|k| *new >= k)
                || (i + 1 < node::nitems(b) && *new >= node::key(b, i + 1))
            {
                return Ok(false);
            }
            node::set_key(self.cache.frame_mut(f), i, new);
            Ok(true)
        })();
        self.settle(r)
    }

    /// Removes `key`; returns whether it was there. Errors as for [`Tree::insert`] (running
    /// out of space while merging nodes only skips the merge).
    pub fn remove<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        key: &Key,
    ) -> Result<bool> {
        self.writable()?;
        self.cache.begin_op();
        let (f, at) = self.leaf_of(dev, key)?;
        let Ok(i) = at else {
            return Ok(false);
        };
        // The leaf the lookup reached, when it is fresh (so is its path) and stays at least a
        // quarter full (no merge): the item goes in place and nothing else changes. A
        // removal changes no node's key range; a merge changes the shape when it frees a node.
        if node::generation(self.cache.frame(f)) == self.txn() {
            let b = self.cache.frame(f);
            let left = node::used(b) - node::item_size(node::value(b, i).len());
            if self.sb.height == 1 || left >= CAPACITY / 4 {
                node::remove_at(self.cache.frame_mut(f), i);
                return Ok(true);
            }
        }
        self.cache.begin_op();
        let r = self.remove_inner(dev, space, key);
        self.settle(r)
    }

    fn remove_inner<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        key: &Key,
    ) -> Result<bool> {
        let mut path = [Step::default(); MAX_HEIGHT];
        let f = self.root_frame(dev)?;
        let mut f = self.cow(dev, space, f)?;
        self.sb.root = self.cache.block_of(f);
        let mut depth = 0;
        loop {
            let b = self.cache.frame(f);
            let lvl = node::level(b);
            path[depth].frame = f;
            if lvl == 0 {
                break;
            }
            let i = node::child_index(b, key);
            path[depth].index = i;
            let (cb, g) = (node::child(b, i), node::generation(b));
            let c = self.load(dev, cb, lvl - 1, g)?;
            let c = self.cow(dev, space, c)?;
            let cblock = self.cache.block_of(c);
            node::set_child(self.cache.frame_mut(f), i, cblock);
            f = c;
            depth += 1;
        }
        match node::search(self.cache.frame(f), key) {
            Ok(i) => node::remove_at(self.cache.frame_mut(f), i),
            Err(_) => return Ok(false),
        }
        // Merge underfull nodes upwards.
        while depth > 0 {
            let x = path[depth].frame;
            if node::used(self.cache.frame(x)) >= CAPACITY / 4 {
                break;
            }
            let p = path[depth - 1];
            match self.merge(dev, space, p.frame, p.index, x) {
                Ok(true) => depth -= 1,
                Ok(false) | Err(FsError::NoSpace) => break,
                Err(e) => return Err(e),
            }
        }
        // An interior root with one child gives way to it.
        loop {
            let r = self.cache.find(self.sb.root);
            let Some(r) = r else { break };
            let b = self.cache.frame(r);
            if node::level(b) == 0 || node::nitems(b) != 1 {
                break;
            }
            let child = node::child(b, 0);
            let old = self.sb.root;
            self.sb.root = child;
            self.sb.height -= 1;
            self.drop_node(dev, space, old)?;
        }
        Ok(true)
    }

    /// Merges node `x` (entry `i` of `p`) with a sibling if both fit in one node. Returns
    /// whether it did.
    fn merge<D: BlockIo, S: Space<D>>(
        &mut self,
        dev: &mut D,
        space: &mut S,
        p: usize,
        i: usize,
        x: usize,
    ) -> Result<bool> {
        let pb = self.cache.frame(p);
        let (n, g) = (node::nitems(pb), node::generation(pb));
        let lvl = node::level(self.cache.frame(x));
        if i + 1 < n {
            let sb = node::child(pb, i + 1);
            if sb == self.cache.block_of(x) {
                return Err(FsError::Corrupt {
                    block: sb,
                    what: "node referenced twice",
                });
            }
            let s = self.load(dev, sb, lvl, g)?;
            if node::used(self.cache.frame(x)) + node::used(self.cache.frame(s)) > CAPACITY {
                return Ok(false);
            }
            let (xs, ss) = self.cache.pair_mut(x, s);
            node::append_from(xs, ss);
            node::remove_at(self.cache.frame_mut(p), i + 1);
            self.drop_node(dev, space, sb)?;
        } else if i > 0 {
            let sb = node::child(pb, i - 1);
            if sb == self.cache.block_of(x) {
                return Err(FsError::Corrupt {
                    block: sb,
                    what: "node referenced twice",
                });
            }
            let s = self.load(dev, sb, lvl, g)?;
            if node::used(self.cache.frame(x)) + node::used(self.cache.frame(s)) > CAPACITY {
                return Ok(false);
            }
            let s = self.cow(dev, space, s)?;
            let sblock = self.cache.block_of(s);
            node::set_child(self.cache.frame_mut(p), i - 1, sblock);
            let (ss, xs) = self.cache.pair_mut(s, x);
            node::append_from(ss, xs);
            node::remove_at(self.cache.frame_mut(p), i);
            let xb = self.cache.block_of(x);
            self.drop_node(dev, space, xb)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Commits: writes every changed node, then the superblock of the next generation with
    /// `PREFLUSH | FUA`. Returns the new durable generation. The caller then releases the
    /// blocks freed during the transaction (they were referenced by the old tree only). A
    /// failure fails the instance.
    pub fn commit<D: BlockIo>(&mut self, dev: &mut D) -> Result<u64> {
        self.writable()?;
        let txn = self.txn();
        if txn >= super::superblock::GENERATION_LIMIT {
            return Err(FsError::Unsupported("generation limit reached"));
        }
        self.cache.begin_op();
        self.shape += 1;
        let r = self.commit_inner(dev, txn);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn commit_inner<D: BlockIo>(&mut self, dev: &mut D, txn: u64) -> Result<u64> {
        self.cache.flush(dev)?;
        let mut sb = self.sb;
        sb.generation = txn;
        self.cache.write_with(
            dev,
            Superblock::slot_of(txn),
            WriteFlags::COMMIT,
            IoOp::WriteSuperblock,
            |b| sb.encode(b),
        )?;
        self.sb = sb;
        self.durable = txn;
        Ok(txn)
    }

    /// Visits every node (block and level), validating each and the key ranges of the whole
    /// tree: every key of a child lies in the range its parent's entry gives it. Returns the
    /// number of items in leaves.
    pub fn check<D: BlockIo>(
        &mut self,
        dev: &mut D,
        visit: &mut dyn FnMut(u64, u8),
    ) -> Result<u64> {
        let root = self.sb.root;
        let (lvl, g) = (self.sb.height - 1, self.txn());
        self.check_node(dev, root, lvl, g, Key::MIN, None, visit)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_node<D: BlockIo>(
        &mut self,
        dev: &mut D,
        block: u64,
        level: u8,
        max_gen: u64,
        lo: Key,
        hi: Option<Key>,
        visit: &mut dyn FnMut(u64, u8),
    ) -> Result<u64> {
        self.cache.begin_op();
        let f = self.load(dev, block, level, max_gen)?;
        visit(block, level);
        let b = self.cache.frame(f);
        let n = node::nitems(b);
        let bad = |what| Err(FsError::Corrupt { block, what });
        if n > 0 && (node::key(b, 0) < lo || hi.is_some_and(|h| node::key(b, n - 1) >= h)) {
            return bad("key outside the range its parent gives");
        }
        if level == 0 {
            return Ok(n as u64);
        }
        let mut items = 0;
        for i in 0..n {
            self.cache.begin_op();
            let f = self.load(dev, block, level, max_gen)?;
            let b = self.cache.frame(f);
            if node::nitems(b) != n {
                return bad("node changed during check");
            }
            let (c, g) = (node::child(b, i), node::generation(b));
            let clo = node::key(b, i);
            let chi = if i + 1 < n {
                Some(node::key(b, i + 1))
            } else {
                hi
            };
            items += self.check_node(dev, c, level - 1, g, clo, chi, visit)?;
        }
        Ok(items)
    }

    /// Changed nodes held in the cache now (not yet written).
    pub fn dirty_nodes(&self) -> usize {
        self.cache.dirty()
    }
}
