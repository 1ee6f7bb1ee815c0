//! Crash-state enumeration: a recording device keeps every write and every durability
//! barrier of a workload that grows the tree past three levels and shrinks it again (leaf and
//! interior splits and merges, root growth and collapse in flight). For every commit, crash
//! images are built from the previous durable image plus every prefix of the commit's writes,
//! random subsets of them (some torn at a sector), and the complete set with a torn commit
//! record. Each must mount to exactly the tree of the previous commit, or (all writes plus
//! the whole commit record) the new one; the whole tree must check clean, and a sample of
//! states must take new changes, commit and mount again.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::{AnySpace, SpaceKind, mkfs, scan, space_mem, value_for};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, Run, WriteFlags};
use crate::tests::{Rng, scale};
use crate::v2::{Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

enum Event {
    Write { block: u64, data: Vec<u8> },
    Barrier,
}

struct Recorder {
    disk: MemDisk,
    log: Vec<Event>,
}

impl BlockIo for Recorder {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.disk.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        if flags.preflush {
            self.log.push(Event::Barrier);
        }
        self.disk.write(runs, flags)?;
        for r in runs {
            for (i, c) in r.data.chunks(BLOCK_SIZE).enumerate() {
                self.log.push(Event::Write {
                    block: r.block + i as u64,
                    data: c.to_vec(),
                });
            }
        }
        if flags.fua {
            self.log.push(Event::Barrier);
        }
        Ok(())
    }
}

type Items = Vec<(Key, Vec<u8>)>;

/// One write of a crash state: block, bytes, and how many leading 512-byte sectors of it
/// reached the disk (8 = all).
struct Piece<'a> {
    block: u64,
    data: &'a [u8],
    sectors: usize,
}

struct Checker {
    kind: SpaceKind,
    img: Vec<u8>,
    mem: Vec<u8>,
    smem: Vec<u8>,
    states: u64,
    follow_ups: u64,
}

impl Checker {
    /// Builds the state (base image + pieces), checks it mounts to `want` generation with
    /// exactly `snap`, then restores the base image.
    fn check(
        &mut self,
        pieces: &[Piece<'_>],
        want: u64,
        snap: &Items,
        follow_up: bool,
        what: &str,
    ) {
        let mut saved = Vec::new();
        for p in pieces {
            let o = p.block as usize * BLOCK_SIZE;
            saved.push((o, self.img[o..o + BLOCK_SIZE].to_vec()));
            let n = p.sectors * 512;
            self.img[o..o + n].copy_from_slice(&p.data[..n]);
        }
        let mut disk = MemDisk {
            data: std::mem::take(&mut self.img),
        };
        {
            let (mut tree, info) = T::mount(&mut disk, &mut self.mem, false)
                .unwrap_or_else(|e| panic!("{what}: mount failed: {e}"));
            assert_eq!(
                info.generation, want,
                "{what}: mounted the wrong generation"
            );
            AnySpace::mount(self.kind, &mut disk, &mut tree, &mut self.smem);
            assert_eq!(&scan(&mut disk, &mut tree), snap, "{what}: contents differ");
            if follow_up {
                // The state takes new work: the allocator must not hand out a block the
                // mounted tree uses.
                let mut copy = MemDisk {
                    data: disk.data.clone(),
                };
                let (mut tree, _) = T::mount(&mut copy, &mut self.mem, false).unwrap();
                let mut space = AnySpace::mount(self.kind, &mut copy, &mut tree, &mut self.smem);
                let mut model: BTreeMap<Key, Vec<u8>> = snap.iter().cloned().collect();
                for i in 0..30u64 {
                    let k = Key::new(1_000_000 + i, 0, 0);
                    let v = value_for(&k, 9, 900);
                    tree.insert(&mut copy, &mut space, &k, &v).unwrap();
                    model.insert(k, v);
                }
                space.commit(&mut copy, &mut tree);
                let (mut tree, info) = T::mount(&mut copy, &mut self.mem, false).unwrap();
                assert_eq!(info.generation, want + 1);
                let want_items: Items = model.into_iter().collect();
                assert_eq!(scan(&mut copy, &mut tree), want_items, "{what}: follow-up");
                AnySpace::mount(self.kind, &mut copy, &mut tree, &mut self.smem);
                self.follow_ups += 1;
            }
        }
        self.img = disk.data;
        for (o, b) in saved.into_iter().rev() {
            self.img[o..o + BLOCK_SIZE].copy_from_slice(&b);
        }
        self.states += 1;
    }
}

#[test]
fn every_commit_prefix_and_subset_mounts_old_or_new() {
    // The tree alone, over an allocator rebuilt from the tree at mount. The run over on-disk
    // bitmaps below covers the tree as well; this one is for long runs.
    if scale() > 1 {
        crash_run(SpaceKind::Mem);
    }
}

#[test]
fn on_disk_bitmaps_every_commit_prefix_and_subset() {
    // Groups of 64 blocks, two cached: bitmaps and selectors are written early and in every
    // commit, so crash states hold stale bitmap slots of the lost transaction.
    crash_run(SpaceKind::Bitmaps(64));
}

fn crash_run(kind: SpaceKind) {
    let blocks = 1024;
    let mut dev = Recorder {
        disk: MemDisk::new(blocks),
        log: Vec::new(),
    };
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    mkfs::<_, MIN_FRAMES>(&mut dev, &mut mem, kind);
    let mut checker = Checker {
        kind,
        img: dev.disk.data.clone(),
        mem: std::vec![0u8; MIN_FRAMES * BLOCK_SIZE],
        smem: space_mem(),
        states: 0,
        follow_ups: 0,
    };
    dev.log.clear();
    let (mut tree, _) = T::mount(&mut dev, &mut mem, false).unwrap();
    let mut space = AnySpace::mount(kind, &mut dev, &mut tree, &mut smem);
    let mut remounts = 0;
    let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    let mut old: Items = Vec::new();
    let mut rng = Rng::new(0xC0FFEE);
    let rounds = 48 * scale();
    let (mut max_height, mut min_height_after_max) = (1, u8::MAX);
    let mut version = 0;
    for round in 0..rounds {
        // Grow for the first half, shrink for the second.
        let growing = round < rounds / 2;
        let ops = 1 + rng.below(if growing { 90 } else { 60 });
        for _ in 0..ops {
            version += 1;
            let k = Key::new(rng.below(2000), 0, 0);
            let insert = if growing {
                rng.chance(90)
            } else {
                rng.chance(5)
            };
            if insert {
                let v = value_for(&k, version, 560 + rng.below(400) as usize);
                tree.insert(&mut dev, &mut space, &k, &v).unwrap();
                model.insert(k, v);
            } else {
                let k = model.range(k..).next().map_or(k, |(k, _)| *k);
                let had = tree.remove(&mut dev, &mut space, &k).unwrap();
                assert_eq!(had, model.remove(&k).is_some());
            }
        }
        max_height = max_height.max(tree.height());
        if max_height >= 3 {
            min_height_after_max = min_height_after_max.min(tree.height());
        }
        let old_gen = tree.generation();
        let new_gen = space.commit(&mut dev, &mut tree);
        let new: Items = model.iter().map(|(k, v)| (*k, v.clone())).collect();

        // The commit's writes: everything before the commit record's PREFLUSH barrier, then
        // the record itself.
        let log = std::mem::take(&mut dev.log);
        let mut writes = Vec::new();
        let mut record = None;
        let mut barriers = 0;
        for e in &log {
            match e {
                Event::Barrier => barriers += 1,
                Event::Write { block, data } if barriers == 0 => writes.push((*block, &data[..])),
                Event::Write { block, data } => {
                    assert!(record.is_none(), "one commit record per commit");
                    assert!(*block < 2);
                    record = Some((*block, &data[..]));
                }
            }
        }
        assert_eq!(barriers, 2);
        let record = record.expect("commit record");
        let tag = |s: &str| std::format!("round {round} gen {new_gen}: {s}");

        // Every prefix of the writes, the record not reached.
        let all: Vec<Piece<'_>> = writes.iter().map(|&w| piece(w, 8)).collect();
        for k in 0..=all.len() {
            let follow = k % 7 == 3;
            checker.check(
                &all[..k],
                old_gen,
                &old,
                follow,
                &tag(&std::format!("prefix {k}")),
            );
        }
        // Everything, with the record whole (new), or torn either way (old).
        let mut with_record: Vec<Piece<'_>> = writes.iter().map(|&w| piece(w, 8)).collect();
        with_record.push(piece(record, 8));
        checker.check(
            &with_record,
            new_gen,
            &new,
            round % 5 == 0,
            &tag("complete"),
        );
        for sectors in [1, 4, 7] {
            with_record.last_mut().unwrap().sectors = sectors;
            checker.check(&with_record, old_gen, &old, false, &tag("torn record"));
        }
        // Random subsets in issue order (writes to one block keep their order), some torn.
        for s in 0..16 {
            let mut subset: Vec<Piece<'_>> = Vec::new();
            for &w in &writes {
                if rng.chance(50) {
                    let sectors = if rng.chance(20) {
                        1 + rng.below(7) as usize
                    } else {
                        8
                    };
                    subset.push(piece(w, sectors));
                }
            }
            checker.check(&subset, old_gen, &old, s == 0, &tag("subset"));
        }
        // The next round starts from this commit's durable image: the base plus every write.
        for p in &with_record[..with_record.len() - 1] {
            let o = p.block as usize * BLOCK_SIZE;
            checker.img[o..o + BLOCK_SIZE].copy_from_slice(p.data);
        }
        let o = record.0 as usize * BLOCK_SIZE;
        checker.img[o..o + BLOCK_SIZE].copy_from_slice(record.1);
        assert!(checker.img == dev.disk.data, "the log misses a write");
        old = new;
        if round % 3 == 2 {
            // Remount now and then: allocation starts over from the front of the disk, where
            // blocks freed by the transaction lie ahead of it.
            tree = T::mount(&mut dev, &mut mem, false).unwrap().0;
            space = AnySpace::mount(kind, &mut dev, &mut tree, &mut smem);
            assert!(dev.log.is_empty(), "mount wrote");
            remounts += 1;
        }
    }
    assert!(remounts > 10);
    assert!(max_height >= 3, "the workload never reached three levels");
    assert!(
        min_height_after_max < max_height,
        "the workload never shrank the tree"
    );
    assert!(
        checker.states >= 2_000 * scale(),
        "only {} crash states",
        checker.states
    );
    assert!(checker.follow_ups > 50);
    std::println!(
        "v2 crash ({kind:?}): {} states, {} follow-ups, max height {max_height}",
        checker.states,
        checker.follow_ups
    );
}

fn piece((block, data): (u64, &[u8]), sectors: usize) -> Piece<'_> {
    Piece {
        block,
        data,
        sectors,
    }
}
