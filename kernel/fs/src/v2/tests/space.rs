//! On-disk free space: a 1 TiB sparse filesystem (mount reads two blocks, allocation brings
//! groups into use one by one), the 2^32-block limit, and a full filesystem whose frees
//! become allocatable only after the commit.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::{AnySpace, SpaceKind, TEST_GROUPS, scan, space_mem, value_for};
use crate::FsError;
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
use crate::v2::space::{COMMIT_RESERVE, FIRST_ROOT, FreeSpace, HOLDS, Space};
use crate::v2::superblock::{GROUP_BLOCKS_MAX, MAX_BLOCKS};
use crate::v2::{Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

/// A device of any size that stores only the blocks written; counts reads.
pub(super) struct SparseDisk {
    pub(super) blocks: u64,
    pub(super) data: BTreeMap<u64, Vec<u8>>,
    pub(super) reads: u64,
}

impl BlockIo for SparseDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        for (i, c) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            let b = block + i as u64;
            if b >= self.blocks {
                return Err(IoError::new(b, IoErrorKind::OutOfRange));
            }
            match self.data.get(&b) {
                Some(d) => c.copy_from_slice(d),
                None => c.fill(0),
            }
            self.reads += 1;
        }
        Ok(())
    }
    fn write(&mut self, runs: &[Run<'_>], _flags: WriteFlags) -> Result<(), IoError> {
        for r in runs {
            for (i, c) in r.data.chunks(BLOCK_SIZE).enumerate() {
                let b = r.block + i as u64;
                if b >= self.blocks {
                    return Err(IoError::new(b, IoErrorKind::OutOfRange));
                }
                self.data.insert(b, c.to_vec());
            }
        }
        Ok(())
    }
}

#[test]
fn one_tebibyte_sparse() {
    let blocks = 1u64 << 28; // 1 TiB of 4 KiB blocks
    let mut disk = SparseDisk {
        blocks,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    let sb = FreeSpace::<TEST_GROUPS>::mkfs(&mut disk, &mut mem, GROUP_BLOCKS_MAX).unwrap();
    assert_eq!(sb.block_count, blocks);
    T::mkfs_with(&mut disk, &mut mem, &sb, 0).unwrap();
    assert!(
        disk.data.len() <= 5,
        "mkfs wrote {} blocks",
        disk.data.len()
    );
    let mut model = BTreeMap::new();
    for round in 0..6u64 {
        disk.reads = 0;
        let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
        assert_eq!(disk.reads, 3, "mount reads both slots and the root");
        let mut space = AnySpace::Bits(FreeSpace::open(&mut smem, tree.superblock()).unwrap());
        for i in 0..3000u64 {
            let k = Key::new(16 + (i * 7919 + round) % 20_000, 1, round);
            let v = value_for(&k, round, 200);
            tree.insert(&mut disk, &mut space, &k, &v).unwrap();
            model.insert(k, v);
        }
        space.commit(&mut disk, &mut tree);
        space.verify(&mut disk, &mut tree);
        let want: Vec<_> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(scan(&mut disk, &mut tree), want);
        let st = *tree.superblock();
        assert!(st.groups_ready >= 1 && st.groups_ready < 20);
        assert!(st.free_blocks > blocks - 2 * blocks.div_ceil(GROUP_BLOCKS_MAX as u64) - 10_000);
    }
    assert!(
        disk.data.len() < 20_000,
        "{} blocks written",
        disk.data.len()
    );
}

#[test]
fn sixteen_tebibytes_is_the_limit() {
    let mut disk = SparseDisk {
        blocks: MAX_BLOCKS + 12345,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let sb = FreeSpace::<TEST_GROUPS>::mkfs(&mut disk, &mut mem, GROUP_BLOCKS_MAX).unwrap();
    assert_eq!(sb.block_count, MAX_BLOCKS);
    T::mkfs_with(&mut disk, &mut mem, &sb, 0).unwrap();
    let (tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    assert_eq!(tree.superblock().block_count, MAX_BLOCKS);
    assert_eq!(tree.superblock().root, FIRST_ROOT);
    // A last group too short for its bitmap slots is cut off.
    let mut small = SparseDisk {
        blocks: 64 * 10 + 3,
        data: BTreeMap::new(),
        reads: 0,
    };
    let sb = FreeSpace::<TEST_GROUPS>::mkfs(&mut small, &mut mem, 64).unwrap();
    assert_eq!(sb.block_count, 640);
    assert_eq!(sb.free_blocks, 640 - 5 - 2 * 9);
}

#[test]
fn frees_wait_for_the_commit() {
    // Fill a small filesystem, then free: nothing freed is handed out before the commit,
    // everything is after it.
    let mut disk = SparseDisk {
        blocks: 300,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    super::mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, SpaceKind::Bitmaps(64));
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = FreeSpace::<TEST_GROUPS>::open(&mut smem, tree.superblock()).unwrap();
    let mut got = Vec::new();
    loop {
        match space.alloc(&mut disk) {
            Ok(b) => got.push(b),
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // 300 blocks: 2 superblocks, 5 groups with 2 bitmap slots each, the root, and the
    // blocks kept for the commit's selector copies.
    assert_eq!(got.len() as u64, 300 - 2 - 10 - 1 - COMMIT_RESERVE);
    assert_eq!(space.free_blocks(), COMMIT_RESERVE);
    space.commit(&mut disk, &mut tree).unwrap();
    for &b in &got[..50] {
        space.free(&mut disk, b).unwrap();
    }
    assert_eq!(space.alloc(&mut disk), Err(FsError::NoSpace));
    assert!(matches!(
        space.free(&mut disk, got[0]),
        Err(FsError::Corrupt { .. })
    ));
    space.commit(&mut disk, &mut tree).unwrap();
    let mut again = Vec::new();
    loop {
        match space.alloc(&mut disk) {
            Ok(b) => again.push(b),
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // All but the commit reserve of the freed blocks are handed out again.
    let reused = again.iter().filter(|b| got[..50].contains(b)).count() as u64;
    assert!(
        reused >= 50 - COMMIT_RESERVE,
        "only {reused} freed blocks reused"
    );
    // Blocks allocated and freed in one transaction are free again at once (the durable tree
    // never used them), unlike the 50 above.
    space.free(&mut disk, again[3]).unwrap();
    space.free(&mut disk, again[4]).unwrap();
    assert!(space.alloc(&mut disk).is_ok());
    assert!(space.alloc(&mut disk).is_ok());
    assert_eq!(space.alloc(&mut disk), Err(FsError::NoSpace));
}

#[test]
fn extend_run_stops_at_used_held_and_group_end() {
    // Groups of 64 blocks: a run grows over free blocks (a byte of the bitmaps at a time
    // where it can) up to its limit, the group's end, a used block or a held one, and the
    // free count drops by what it took.
    let mut disk = SparseDisk {
        blocks: 300,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    super::mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, SpaceKind::Bitmaps(64));
    let (tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = FreeSpace::<TEST_GROUPS>::open(&mut smem, tree.superblock()).unwrap();
    let free = space.free_blocks();
    // Group 0: superblocks, bitmap slots, the root; the rest is free.
    let b = space.alloc(&mut disk).unwrap();
    assert_eq!(b, FIRST_ROOT + 1);
    assert_eq!(space.extend_run(&mut disk, b, 3).unwrap(), 3);
    let b = b + 3;
    assert_eq!(space.extend_run(&mut disk, b, 1000).unwrap(), 64 - b - 1);
    assert_eq!(space.free_blocks(), free - (64 - FIRST_ROOT - 1));
    // Group 1 starts with two free blocks, then its bitmap slots (used).
    let b = space.alloc(&mut disk).unwrap();
    assert_eq!(b, 64);
    assert_eq!(space.extend_run(&mut disk, b, 10).unwrap(), 1);
    // A held block ends a run.
    let b = space.alloc(&mut disk).unwrap();
    assert_eq!(b, 68);
    assert!(space.hold(80, 1));
    assert_eq!(space.extend_run(&mut disk, b, 100).unwrap(), 11);
    assert_eq!(space.extend_run(&mut disk, 80, 0).unwrap(), 0);
    // Nothing taken twice: the next allocation is past the held block.
    assert_eq!(space.alloc(&mut disk).unwrap(), 81);
}

#[test]
fn holds_merge_stay_sorted_and_refuse_only_a_new_range_when_full() {
    // Random ranges (overlapping, touching, disjoint, in any order) against a set of held
    // blocks: every block's `is_held` answer and the held count match the set after every
    // hold, the entries in use are exactly the set's maximal runs (touching ranges merge),
    // and a refused hold changes nothing and only happens when the range touches no held
    // range while every entry is in use.
    let mut disk = SparseDisk {
        blocks: 1 << 20,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    super::mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, SpaceKind::Bitmaps(4096));
    let (tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut rng = crate::tests::Rng::new(0x401d);
    let (mut refused, mut merged) = (0, 0);
    for round in 0..4 {
        let mut space = FreeSpace::<TEST_GROUPS>::open(&mut smem, tree.superblock()).unwrap();
        let mut model = std::collections::BTreeSet::new();
        let span = [3 * HOLDS as u64, 20 * HOLDS as u64, 600, 100_000][round];
        for _ in 0..4000 {
            let first = 10 + rng.below(span);
            let long = rng.below(4) == 0;
            let count = 1 + rng.below(if long { 40 } else { 3 });
            let before = space.holds_left();
            let touches = (first.saturating_sub(1)..first + count + 1).any(|b| model.contains(&b));
            if space.hold(first, count) {
                model.extend(first..first + count);
                if touches {
                    merged += 1;
                }
            } else {
                refused += 1;
                assert_eq!(before, 0, "refused with entries left");
                assert!(!touches, "refused a range that joins a held one");
                assert_eq!(space.holds_left(), 0);
            }
            let runs = model
                .iter()
                .filter(|&&b| b == 0 || !model.contains(&(b - 1)))
                .count();
            assert_eq!(HOLDS - space.holds_left(), runs);
            assert_eq!(space.held_blocks(), model.len() as u64);
            let lo = first.saturating_sub(45);
            for b in lo..first + count + 45 {
                assert_eq!(space.is_held(b), model.contains(&b), "block {b}");
            }
        }
        for &b in model.iter().step_by(7) {
            assert!(space.is_held(b));
        }
    }
    assert!(
        refused > 100 && merged > 1000,
        "{refused} refused, {merged} merged"
    );
}

#[test]
fn held_blocks_are_not_handed_out_before_the_commit() {
    // Many scattered held ranges, the blocks of most of them freed again: no allocation
    // (single blocks or runs) returns a held block until the commit; after it, the freed
    // ones are allocatable again and nothing is held.
    let mut disk = SparseDisk {
        blocks: 40_000,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    super::mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, SpaceKind::Bitmaps(4096));
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = FreeSpace::<TEST_GROUPS>::open(&mut smem, tree.superblock()).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 * HOLDS {
        got.push(space.alloc(&mut disk).unwrap());
    }
    // Every third block held, in ranges of one to three blocks, out of order.
    let mut held = std::collections::BTreeSet::new();
    let mut rng = crate::tests::Rng::new(77);
    let mut starts: Vec<usize> = (0..got.len()).step_by(4).collect();
    for i in (1..starts.len()).rev() {
        starts.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &i in &starts {
        let n = (1 + rng.below(3)).min((got.len() - i) as u64);
        if space.hold(got[i], n) {
            held.extend(got[i]..got[i] + n);
        }
    }
    assert!(space.holds_left() < HOLDS / 2, "{}", space.holds_left());
    for &b in &got {
        if b % 5 != 0 {
            space.free(&mut disk, b).unwrap();
        }
    }
    let mut again = std::collections::BTreeSet::new();
    for _ in 0..4 * HOLDS {
        let b = space.alloc(&mut disk).unwrap();
        assert!(!held.contains(&b), "held block {b} handed out");
        let n = space.extend_run(&mut disk, b, 5).unwrap();
        for x in b..=b + n {
            assert!(!held.contains(&x), "held block {x} handed out in a run");
            assert!(again.insert(x));
        }
    }
    space.commit(&mut disk, &mut tree).unwrap();
    assert_eq!(space.holds_left(), HOLDS);
    assert_eq!(space.held_blocks(), 0);
    let freed_held: Vec<u64> = held.iter().copied().filter(|b| b % 5 != 0).collect();
    assert!(!freed_held.is_empty());
    let mut reused = 0;
    for _ in 0..40_000 {
        match space.alloc(&mut disk) {
            Ok(b) => reused += u64::from(freed_held.contains(&b)),
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    // Every one comes back, but for the few the commit reserve keeps back at the end.
    assert!(
        reused + COMMIT_RESERVE >= freed_held.len() as u64 && reused > COMMIT_RESERVE,
        "{reused} of {}",
        freed_held.len()
    );
}
