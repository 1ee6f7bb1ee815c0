//! Model test: random inserts, replacements, removals, lookups and range scans checked step by
//! step against a `BTreeMap`, with commits, remounts after a commit, and remounts that drop
//! the open transaction (the tree must come back as of the last commit). The cache has the
//! fewest frames allowed, so changed nodes are written back early all the time.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::{AnySpace, MemSpace, SpaceKind, mkfs, scan, space_mem, value_for};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::tests::{Rng, scale};
use crate::v2::node::VALUE_MAX;
use crate::v2::superblock::GROUP_BLOCKS_MAX;
use crate::v2::{Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

struct Shape {
    ids: u64,
    kinds: u64,
    offsets: u64,
    max_len: usize,
    /// Percent of operations that insert (the rest of the mutations remove).
    insert_pct: u64,
}

struct Outcome {
    max_height: u8,
    max_items: usize,
    early_writes: u64,
    commits: u64,
}

fn items(m: &BTreeMap<Key, Vec<u8>>) -> Vec<(Key, Vec<u8>)> {
    m.iter().map(|(k, v)| (*k, v.clone())).collect()
}

fn run(seed: u64, ops: u64, blocks: u64, shape: &Shape, kind: SpaceKind) -> Outcome {
    let mut disk = MemDisk::new(blocks);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, kind);
    let mut rng = Rng::new(seed);
    let mut committed: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    let mut done = 0;
    let mut version = 0u64;
    let mut out = Outcome {
        max_height: 1,
        max_items: 0,
        early_writes: 0,
        commits: 0,
    };
    let mut buf = std::vec![0u8; VALUE_MAX];
    'mount: loop {
        let (mut tree, info) = T::mount(&mut disk, &mut mem, false).unwrap();
        assert!(!info.fell_back, "seed {seed}: clean remount fell back");
        let mut space = AnySpace::mount(kind, &mut disk, &mut tree, &mut smem);
        assert_eq!(
            scan(&mut disk, &mut tree),
            items(&committed),
            "seed {seed}: after mount"
        );
        let mut model = committed.clone();
        loop {
            if done == ops {
                // Empty the tree: merges must bring it back to one leaf and no leaked block.
                let keys: Vec<Key> = model.keys().copied().collect();
                for k in keys {
                    assert!(tree.remove(&mut disk, &mut space, &k).unwrap());
                }
                space.commit(&mut disk, &mut tree);
                assert_eq!(tree.height(), 1, "seed {seed}: empty tree not collapsed");
                let mut nodes = 0;
                tree.check(&mut disk, &mut |_, _| nodes += 1).unwrap();
                assert_eq!(nodes, 1, "seed {seed}: empty tree of several nodes");
                space.verify(&mut disk, &mut tree);
                assert!(scan(&mut disk, &mut tree).is_empty());
                out.early_writes += tree.cache_stats().early_writes;
                return out;
            }
            done += 1;
            version += 1;
            let k = Key::new(
                rng.below(shape.ids),
                rng.below(shape.kinds) as u8,
                rng.below(shape.offsets),
            );
            let roll = rng.below(100);
            if roll < shape.insert_pct {
                let len = rng.below(shape.max_len as u64 + 1) as usize;
                let v = value_for(&k, version, len);
                let replaced = tree.insert(&mut disk, &mut space, &k, &v).unwrap();
                assert_eq!(
                    replaced,
                    model.insert(k, v).is_some(),
                    "seed {seed} op {done}"
                );
            } else if roll < 80 {
                // Mostly remove a key that exists (the next one at or after k).
                let k = if rng.chance(80) {
                    model.range(k..).next().map_or(k, |(k, _)| *k)
                } else {
                    k
                };
                let had = tree.remove(&mut disk, &mut space, &k).unwrap();
                assert_eq!(
                    had,
                    model.remove(&k).is_some(),
                    "seed {seed} op {done}: remove"
                );
            } else if roll < 88 {
                let got = tree.get(&mut disk, &k, &mut buf).unwrap();
                let want = model.get(&k);
                assert_eq!(
                    got.map(|n| buf[..n].to_vec()).as_ref(),
                    want,
                    "seed {seed} op {done}"
                );
            } else if roll < 95 {
                let mut from = k;
                for (mk, mv) in model.range(k..).take(12) {
                    let (tk, n) = tree.next(&mut disk, &from, &mut buf).unwrap().unwrap();
                    assert_eq!(
                        (tk, &buf[..n]),
                        (*mk, &mv[..]),
                        "seed {seed} op {done}: next"
                    );
                    from = tk.successor().unwrap();
                }
                if model.range(k..).nth(12).is_none() {
                    assert!(tree.next(&mut disk, &from, &mut buf).unwrap().is_none());
                }
            } else if roll < 99 {
                space.commit(&mut disk, &mut tree);
                out.commits += 1;
                committed = model.clone();
                // The allocator's view and the tree agree exactly: nothing leaked.
                space.verify(&mut disk, &mut tree);
                if rng.chance(20) {
                    out.early_writes += tree.cache_stats().early_writes;
                    continue 'mount;
                }
            } else {
                // Remount without committing: the open transaction is lost.
                out.early_writes += tree.cache_stats().early_writes;
                continue 'mount;
            }
            out.max_height = out.max_height.max(tree.height());
            out.max_items = out.max_items.max(model.len());
        }
    }
}

#[test]
fn many_small_items() {
    let shape = Shape {
        ids: 6000,
        kinds: 3,
        offsets: 4,
        max_len: 120,
        insert_pct: 62,
    };
    let o = run(1, 20_000 * scale(), 8192, &shape, SpaceKind::Mem);
    assert!(o.max_items > 5_000, "only {} items", o.max_items);
    assert!(o.max_height >= 3, "height {}", o.max_height);
    assert!(o.early_writes > 0);
    assert!(o.commits > 100);
}

#[test]
fn large_values_split_and_merge() {
    let shape = Shape {
        ids: 700,
        kinds: 1,
        offsets: 2,
        max_len: VALUE_MAX,
        insert_pct: 55,
    };
    for seed in 0..3 * scale() {
        let o = run(100 + seed, 8_000, 8192, &shape, SpaceKind::Mem);
        assert!(o.max_height >= 3, "height {}", o.max_height);
    }
}

#[test]
fn dense_keys_churn() {
    // Few keys, every operation hits an existing one: replacements that grow and shrink,
    // removals that empty leaves and merge them.
    let shape = Shape {
        ids: 40,
        kinds: 2,
        offsets: 8,
        max_len: 600,
        insert_pct: 45,
    };
    for seed in 0..4 * scale() {
        run(200 + seed, 6_000, 1024, &shape, SpaceKind::Mem);
    }
}

#[test]
fn on_disk_bitmaps() {
    // The same workloads over on-disk bitmaps with small groups (many groups, a short last
    // one) and two cached groups: bitmaps are written back early and reloaded constantly.
    let small = Shape {
        ids: 3000,
        kinds: 3,
        offsets: 4,
        max_len: 120,
        insert_pct: 62,
    };
    let o = run(7, 12_000 * scale(), 6000, &small, SpaceKind::Bitmaps(64));
    assert!(o.max_height >= 2, "height {}", o.max_height);
    let large = Shape {
        ids: 700,
        kinds: 1,
        offsets: 2,
        max_len: VALUE_MAX,
        insert_pct: 55,
    };
    let o = run(8, 6_000, 4100, &large, SpaceKind::Bitmaps(100));
    assert!(o.max_height >= 3, "height {}", o.max_height);
    let dense = Shape {
        ids: 40,
        kinds: 2,
        offsets: 8,
        max_len: 600,
        insert_pct: 45,
    };
    run(9, 6_000, 1030, &dense, SpaceKind::Bitmaps(GROUP_BLOCKS_MAX));
}

#[test]
fn value_too_long_and_read_only() {
    let mut disk = MemDisk::new(64);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    T::mkfs(&mut disk, &mut mem).unwrap();
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = MemSpace::rebuild(&mut disk, &mut tree);
    let k = Key::new(1, 1, 0);
    assert_eq!(
        tree.insert(&mut disk, &mut space, &k, &[0; VALUE_MAX + 1]),
        Err(crate::FsError::InvalidArgument)
    );
    assert!(
        !tree
            .insert(&mut disk, &mut space, &k, &[7; VALUE_MAX])
            .unwrap()
    );
    tree.commit(&mut disk).unwrap();
    let (mut tree, _) = T::mount(&mut disk, &mut mem, true).unwrap();
    let mut space = MemSpace::rebuild(&mut disk, &mut tree);
    assert_eq!(
        tree.insert(&mut disk, &mut space, &k, &[1]),
        Err(crate::FsError::ReadOnly)
    );
    let mut buf = [0u8; VALUE_MAX];
    assert_eq!(tree.get(&mut disk, &k, &mut buf).unwrap(), Some(VALUE_MAX));
    assert_eq!(buf, [7; VALUE_MAX]);
}

#[test]
fn runs_out_of_space_cleanly() {
    // A small disk fills up: NoSpace leaves the tree as it was, and it still commits.
    let mut disk = MemDisk::new(40);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    T::mkfs(&mut disk, &mut mem).unwrap();
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = MemSpace::rebuild(&mut disk, &mut tree);
    let mut model = BTreeMap::new();
    let mut full = false;
    for i in 0..10_000u64 {
        let k = Key::new(i, 0, 0);
        let v = value_for(&k, 1, 700);
        match tree.insert(&mut disk, &mut space, &k, &v) {
            Ok(_) => {
                model.insert(k, v);
            }
            Err(crate::FsError::NoSpace) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
        if i % 8 == 7 {
            tree.commit(&mut disk).unwrap();
            space.committed();
        }
    }
    assert!(full);
    assert_eq!(scan(&mut disk, &mut tree), items(&model));
    tree.commit(&mut disk).unwrap();
    space.committed();
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    assert_eq!(scan(&mut disk, &mut tree), items(&model));
}

#[test]
fn corrupt_newest_tree_mounts_the_older_read_only() {
    let mut disk = MemDisk::new(256);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    T::mkfs(&mut disk, &mut mem).unwrap();
    let (k1, k2) = (Key::new(1, 1, 0), Key::new(2, 1, 0));
    let root = {
        let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
        let mut space = MemSpace::rebuild(&mut disk, &mut tree);
        tree.insert(&mut disk, &mut space, &k1, b"one").unwrap();
        tree.commit(&mut disk).unwrap();
        space.committed();
        tree.insert(&mut disk, &mut space, &k2, b"two").unwrap();
        assert_eq!(tree.commit(&mut disk).unwrap(), 3);
        tree.superblock().root
    };
    disk.data[root as usize * BLOCK_SIZE + 100] ^= 0xff;
    let (mut tree, info) = T::mount(&mut disk, &mut mem, false).unwrap();
    assert_eq!(
        (info.generation, info.fell_back, info.rolled_back),
        (2, true, true)
    );
    assert_eq!(scan(&mut disk, &mut tree), std::vec![(k1, b"one".to_vec())]);
    let mut space = MemSpace::rebuild(&mut disk, &mut tree);
    assert_eq!(
        tree.insert(&mut disk, &mut space, &k2, b"x"),
        Err(crate::FsError::ReadOnly)
    );
}
