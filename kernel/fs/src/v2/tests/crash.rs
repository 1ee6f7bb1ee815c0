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

use super::{AnySpace, SpaceKind, TEST_GROUPS, mkfs, scan, space_mem, value_for};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, Run, WriteFlags};
use crate::tests::{Rng, scale};
use crate::v2::Kind;
use crate::v2::volume::{ROOT, volume_frames};
use crate::v2::{Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

enum Event {
    Write { block: u64, data: Vec<u8> },
    Barrier,
}

/// A durable point's events split at its first barrier: the writes before it, the writes
/// after it (the record that makes the point durable: a commit record or an fsync log block),
/// and the number of barriers.
type Split<'a> = (Vec<(u64, &'a [u8])>, Vec<(u64, &'a [u8])>, usize);

fn split_at_barrier(events: &[Event]) -> Split<'_> {
    let (mut before, mut after, mut barriers) = (Vec::new(), Vec::new(), 0);
    for e in events {
        match e {
            Event::Barrier => barriers += 1,
            Event::Write { block, data } if barriers == 0 => before.push((*block, &data[..])),
            Event::Write { block, data } => after.push((*block, &data[..])),
        }
    }
    (before, after, barriers)
}

/// Records writes and barriers. A write started by `write_behind` is at its laziest: it
/// completes (reaches the disk and the log) only when `wait_for` names its memory or `drain`
/// is called, and the recorder panics on what would be wrong with it in flight: a barrier, a
/// read or a waited write of one of its blocks, its memory changed before it completed.
struct Recorder {
    disk: MemDisk,
    log: Vec<Event>,
    /// Writes in flight: (memory address, bytes, first block, the bytes at submission).
    pending: Vec<(usize, usize, u64, Vec<u8>)>,
    /// Writes started behind.
    behind: u64,
}

impl Recorder {
    fn new(blocks: u64) -> Self {
        Recorder {
            disk: MemDisk::new(blocks),
            log: Vec::new(),
            pending: Vec::new(),
            behind: 0,
        }
    }

    fn in_flight(&self, block: u64, n: u64) -> bool {
        self.pending.iter().any(|&(_, len, b, _)| {
            let e = b + (len / BLOCK_SIZE) as u64;
            b < block + n && block < e
        })
    }

    fn complete(&mut self, i: usize) {
        let (_, _, block, data) = self.pending.remove(i);
        self.disk
            .write(&[Run { block, data: &data }], WriteFlags::NONE)
            .unwrap();
        for (j, c) in data.chunks(BLOCK_SIZE).enumerate() {
            self.log.push(Event::Write {
                block: block + j as u64,
                data: c.to_vec(),
            });
        }
    }
}

impl BlockIo for Recorder {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let n = (buf.len() / BLOCK_SIZE) as u64;
        assert!(!self.in_flight(block, n), "read of block {block} in flight");
        self.disk.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        assert!(
            !flags.preflush || self.pending.is_empty(),
            "a barrier with data writes in flight"
        );
        for r in runs {
            let n = (r.data.len() / BLOCK_SIZE) as u64;
            assert!(
                !self.in_flight(r.block, n),
                "block {} written twice",
                r.block
            );
        }
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
    fn write_behind(&mut self, runs: &[Run<'_>]) -> Result<(), IoError> {
        for r in runs {
            crate::io::check_range(self.block_count(), r.block, r.data.len())?;
            let (lo, n) = (r.data.as_ptr() as usize, r.data.len());
            assert!(
                !self
                    .pending
                    .iter()
                    .any(|&(a, l, _, _)| a < lo + n && lo < a + l),
                "memory of a write in flight written again"
            );
            assert!(
                !self.in_flight(r.block, (n / BLOCK_SIZE) as u64),
                "block {} written twice",
                r.block
            );
            self.pending.push((lo, n, r.block, r.data.to_vec()));
            self.behind += 1;
        }
        Ok(())
    }
    fn wait_for(&mut self, mem: &[u8]) -> Result<(), IoError> {
        let lo = mem.as_ptr() as usize;
        let hi = lo + mem.len();
        while let Some(i) = self
            .pending
            .iter()
            .position(|&(a, n, _, _)| a < hi && lo < a + n)
        {
            let (a, n, _, ref data) = self.pending[i];
            let (s, e) = (a.max(lo), (a + n).min(hi));
            assert!(
                mem[s - lo..e - lo] == data[s - a..e - a],
                "memory of a write in flight changed"
            );
            self.complete(i);
        }
        Ok(())
    }
    fn drain(&mut self) -> Result<(), IoError> {
        while !self.pending.is_empty() {
            self.complete(0);
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
    let mut dev = Recorder::new(blocks);
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
        let (writes, after, barriers) = split_at_barrier(&log);
        assert_eq!(after.len(), 1, "one commit record per commit");
        assert!(after[0].0 < 2);
        assert_eq!(barriers, 2);
        let record = after[0];
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

/// Every directory reachable from the root: its entries, sorted.
fn namespace<D: BlockIo>(v: &mut crate::v2::Volume<'_, D, MIN_FRAMES, TEST_GROUPS>) -> Names {
    let mut out = BTreeMap::new();
    let mut todo = std::vec![ROOT];
    while let Some(d) = todo.pop() {
        let mut entries = Vec::new();
        let mut cookie = 0;
        while let Some((e, next)) = v.readdir(d, cookie).unwrap() {
            let mut sum = 0;
            if e.kind == Kind::Dir {
                todo.push(e.ino);
            } else {
                let size = v.stat(e.ino).unwrap().size as usize;
                let mut bytes = std::vec![0u8; size];
                assert_eq!(v.read(e.ino, 0, &mut bytes).unwrap(), size);
                sum = (size as u64) << 32 | crate::crc::crc32c(&bytes) as u64;
            }
            entries.push((e.name().to_vec(), e.ino, e.kind, sum));
            cookie = next;
        }
        entries.sort();
        out.insert(d, entries);
    }
    out
}

/// Directory -> its entries (name, inode, kind, file size << 32 | CRC32C of the contents).
type Names = BTreeMap<u64, Vec<(Vec<u8>, u64, Kind, u64)>>;

#[test]
fn namespace_operations_are_atomic() {
    // Creates, removals, renames across directories (with replacement), writes and truncates,
    // a few per commit;
    // every crash state of every commit shows exactly the namespace before or after it.
    let mut dev = Recorder::new(512);
    // A four-block data buffer: writes of several blocks go out as runs.
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    // With data checksums: every state's contents are read back verified, so checksum items
    // must commit with their extents.
    crate::v2::Volume::<Recorder, MIN_FRAMES, TEST_GROUPS>::mkfs_with(
        &mut dev, &mut m, 64, 0, true,
    )
    .unwrap();
    let mut img = dev.disk.data.clone();
    dev.log.clear();
    let mut m2 = m.clone();
    let (mut v, _) =
        crate::v2::Volume::<&mut Recorder, MIN_FRAMES, TEST_GROUPS>::mount(&mut dev, &mut m, false)
            .unwrap();
    // Unlinked files of more than two extents stay orphans, freed one extent per commit:
    // states with orphans half freed, finished by the mount.
    v.reap_step = 1;
    let mut rng = Rng::new(0xA70);
    let mut old = namespace(&mut v);
    let (mut states, mut renames, mut writes_done) = (0u64, 0u64, 0u64);
    let mut orphan_commits = 0u64;
    for round in 0..90 * scale() {
        // A file of eight extents every ten rounds, unlinked in the next: an orphan freed
        // over the following commits.
        if round % 10 == 0 {
            if let Ok(f) = v.create(ROOT, b"big", Kind::File) {
                for b in 0..8u64 {
                    v.write(f, b * 8192, &[b as u8 + 1; 4096]).unwrap();
                }
            }
        } else if round % 10 == 1 {
            v.remove(ROOT, b"big").unwrap();
        }
        let dirs: Vec<u64> = old.keys().copied().collect();
        for _ in 0..1 + rng.below(6) {
            let d = dirs[rng.below(dirs.len() as u64) as usize];
            let mut n = std::format!("e{}", rng.below(12)).into_bytes();
            let present = &old[&d];
            if !present.is_empty() && rng.chance(70) {
                n = present[rng.below(present.len() as u64) as usize].0.clone();
            }
            let _ = match rng.below(16) {
                10..16 => match present.iter().find(|e| e.0 == n && e.2 == Kind::File) {
                    Some(e) if rng.chance(25) => v.truncate(e.1, rng.below(12_000)),
                    Some(e) if rng.chance(40) => {
                        // Every other block: files of many extents (orphans when unlinked).
                        writes_done += 1;
                        let at = rng.below(10) * 8192;
                        v.write(e.1, at, &[rng.next() as u8; 4096]).map(|_| ())
                    }
                    Some(e) => {
                        let data = std::vec![rng.next() as u8; 1 + rng.below(9000) as usize];
                        writes_done += 1;
                        v.write(e.1, rng.below(20_000), &data).map(|_| ())
                    }
                    None => Ok(()),
                },
                0..4 => v.create(d, &n, Kind::File).map(|_| ()),
                4..6 => v.create(d, &n, Kind::Dir).map(|_| ()),
                6..7 => v.remove(d, &n),
                _ => {
                    let to = dirs[rng.below(dirs.len() as u64) as usize];
                    let tn = std::format!("e{}", rng.below(12)).into_bytes();
                    let r = v.rename(d, &n, to, &tn);
                    renames += u64::from(r.is_ok());
                    r
                }
            };
        }
        let old_gen = v.superblock().generation;
        v.sync().unwrap();
        orphan_commits += u64::from(v.orphans().unwrap() > 0);
        let new_gen = v.superblock().generation;
        let new = namespace(&mut v);
        let log = std::mem::take(&mut v.device().log);
        if log.is_empty() {
            // Every step refused: nothing changed, so the sync wrote nothing.
            assert_eq!((new_gen, &new), (old_gen, &old), "round {round}");
            continue;
        }
        let (writes, after, _) = split_at_barrier(&log);
        let record = *after.last().expect("commit record");
        let mut check =
            |pieces: &[(u64, &[u8], usize)], want_gen: u64, want: &Names, what: &str| {
                let mut data = img.clone();
                for &(b, d, sectors) in pieces {
                    let o = b as usize * BLOCK_SIZE;
                    data[o..o + sectors * 512].copy_from_slice(&d[..sectors * 512]);
                }
                let mut disk = MemDisk { data };
                super::fsck_clean(&mut disk);
                let (mut cv, info) =
                    crate::v2::Volume::<&mut MemDisk, MIN_FRAMES, TEST_GROUPS>::mount(
                        &mut disk, &mut m2, false,
                    )
                    .unwrap_or_else(|e| panic!("round {round} {what}: {e}"));
                assert_eq!(info.generation, want_gen, "round {round} {what}");
                assert_eq!(&namespace(&mut cv), want, "round {round} {what}");
                assert_eq!(
                    cv.orphans().unwrap(),
                    0,
                    "round {round} {what}: mount finishes orphans"
                );
            };
        let all: Vec<(u64, &[u8], usize)> = writes.iter().map(|&(b, d)| (b, d, 8)).collect();
        for k in 0..=all.len() {
            check(&all[..k], old_gen, &old, "prefix");
            states += 1;
        }
        let mut full = all.clone();
        full.push((record.0, record.1, 8));
        check(&full, new_gen, &new, "complete");
        full.last_mut().unwrap().2 = 3;
        check(&full, old_gen, &old, "torn record");
        for _ in 0..12 {
            let mut subset = Vec::new();
            for &(b, d, _) in &all {
                if rng.chance(50) {
                    subset.push((b, d, if rng.chance(20) { 1 } else { 8 }));
                }
            }
            check(&subset, old_gen, &old, "subset");
        }
        states += 14;
        img = v.device().disk.data.clone();
        old = new;
    }
    assert!(
        orphan_commits > 10,
        "only {orphan_commits} commits with orphans"
    );
    assert!(renames > 20, "only {renames} renames");
    assert!(writes_done > 20, "only {writes_done} writes");
    assert!(states > 800, "only {states} states");
    std::println!(
        "v2 namespace crash: {states} states, {renames} renames, {writes_done} writes, {orphan_commits} commits with orphans"
    );
}

/// Expected contents after a crash: the namespace of the last commit plus the files created
/// since and fsynced by a log block (`created`: inode -> directory and name), with the files
/// fsynced since (by a log block) showing their contents as of their last fsync.
fn expected(
    committed: &Names,
    created: &BTreeMap<u64, (u64, Vec<u8>)>,
    fsynced: &BTreeMap<u64, u64>,
) -> Names {
    let mut want = committed.clone();
    for (&ino, (dir, name)) in created {
        let entries = want
            .get_mut(dir)
            .expect("a logged file's directory is durable");
        entries.push((name.clone(), ino, Kind::File, 0));
        entries.sort();
    }
    for entries in want.values_mut() {
        for e in entries.iter_mut() {
            if let Some(&sum) = fsynced.get(&e.1) {
                e.3 = sum;
            }
        }
    }
    want
}

/// A file's size << 32 | CRC32C of its contents, read through the volume.
fn file_sum<D: BlockIo>(
    v: &mut crate::v2::Volume<'_, D, MIN_FRAMES, TEST_GROUPS>,
    ino: u64,
) -> u64 {
    let size = v.stat(ino).unwrap().size as usize;
    let mut bytes = std::vec![0u8; size];
    assert_eq!(v.read(ino, 0, &mut bytes).unwrap(), size);
    (size as u64) << 32 | crate::crc::crc32c(&bytes) as u64
}

type Vol<'b, D> = crate::v2::Volume<'b, D, MIN_FRAMES, TEST_GROUPS>;

/// Mounts `data` (fsck first: it must find nothing, log or not) and compares with `want`;
/// after a replay, the inode counter must be past every inode `want` names (a file created
/// then gets a new number), and fsck must be clean again.
fn mount_expect(data: Vec<u8>, mem: &mut [u8], want: &Names, what: &str) -> (MemDisk, u32) {
    let mut disk = MemDisk { data };
    super::fsck_clean(&mut disk);
    let replayed = {
        let (mut cv, info) = Vol::<&mut MemDisk>::mount(&mut disk, mem, false)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(&namespace(&mut cv), want, "{what}");
        if info.replayed > 0 {
            let top = want.values().flatten().map(|e| e.1).max().unwrap_or(ROOT);
            let ino = cv.create(ROOT, b"after-replay", Kind::File).unwrap();
            assert!(ino > top, "{what}: inode {ino} handed out again");
        }
        info.replayed
    };
    if replayed > 0 {
        super::fsck_clean(&mut disk);
    }
    (disk, replayed)
}

#[test]
fn fsynced_files_survive_every_crash_state() {
    // Writes, truncates and namespace changes on a few files, each round ending with an
    // fsync of one file (a log block, or a commit when the file is new) or a sync. For every
    // durable point: every prefix of the writes before its record, random subsets, the
    // record torn (its last used sector missing, or only that sector written) and whole.
    // A state must mount to the last commit's namespace with every file fsynced since
    // showing its contents as of its last fsync, check clean first, and (one complete
    // state in three) survive a crash at every point of its own replay.
    let mut dev = Recorder::new(400);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    Vol::<Recorder>::mkfs_with(&mut dev, &mut m, 64, 0, true).unwrap();
    let mut m2 = m.clone();
    let mut m3 = m.clone();
    let (mut v, _) = Vol::<&mut Recorder>::mount(&mut dev, &mut m, false).unwrap();
    let mut rng = Rng::new(0xF5C);
    let mut behind_rng = Rng::new(0xBE4);
    let d = v.create(ROOT, b"d", Kind::Dir).unwrap();
    for i in 0..5u8 {
        let dir = if i < 3 { ROOT } else { d };
        let f = v.create(dir, &[b'f', b'0' + i], Kind::File).unwrap();
        v.write(f, 0, &std::vec![i; 20_000]).unwrap();
    }
    v.sync().unwrap();
    v.device().log.clear();
    let mut img = v.device().disk.data.clone();
    let mut committed = namespace(&mut v);
    let mut fsynced: BTreeMap<u64, u64> = BTreeMap::new();
    // Files created since the last commit and fsynced by a log block: inode -> (directory,
    // name); with how many such fsyncs, and of those later removed, renamed or recreated
    // before the next commit.
    let mut created: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
    let (mut logged_new, mut undone) = (0u64, 0u64);
    let (mut states, mut logged, mut replays, mut torn) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..100 * scale() {
        let files: Vec<u64> = namespace(&mut v)
            .values()
            .flatten()
            .filter(|e| e.2 == Kind::File)
            .map(|e| e.1)
            .collect();
        for _ in 0..1 + rng.below(3) {
            let f = files[rng.below(files.len() as u64) as usize];
            let _ = match rng.below(13) {
                0 => v.truncate(f, rng.below(30_000)),
                1 => v
                    .create(
                        ROOT,
                        std::format!("n{}", rng.below(4)).as_bytes(),
                        Kind::File,
                    )
                    .map(|_| ()),
                2 => v.remove(ROOT, std::format!("n{}", rng.below(4)).as_bytes()),
                3 => v
                    .rename(d, b"f3", ROOT, b"f3")
                    .and_then(|_| v.rename(ROOT, b"f3", d, b"f3")),
                4 => {
                    // A file created in an earlier round (perhaps logged since the last
                    // commit): removed, renamed, or removed and created again.
                    let mut made: Vec<(u64, Vec<u8>, u64)> = namespace(&mut v)
                        .iter()
                        .filter(|&(&dir, _)| dir == ROOT || dir == d)
                        .flat_map(|(&dir, es)| es.iter().map(move |e| (dir, e.0.clone(), e.1)))
                        .filter(|(_, n, _)| n[0] == b'c')
                        .collect();
                    if rng.chance(70) && made.iter().any(|m| created.contains_key(&m.2)) {
                        made.retain(|m| created.contains_key(&m.2));
                    }
                    if made.is_empty() {
                        Ok(())
                    } else {
                        let (dir, n, ino) = made[rng.below(made.len() as u64) as usize].clone();
                        undone += u64::from(created.contains_key(&ino));
                        match rng.below(3) {
                            0 => v.remove(dir, &n),
                            1 => {
                                let mut to = n.clone();
                                to.push(b'r');
                                v.rename(dir, &n, dir, &to)
                            }
                            _ => v.remove(dir, &n).and_then(|_| {
                                let f = v.create(dir, &n, Kind::File)?;
                                v.write(f, 0, &[rng.next() as u8 | 1; 3000]).map(|_| ())
                            }),
                        }
                    }
                }
                _ => {
                    let max = if rng.chance(30) { 20_000 } else { 4096 };
                    let len = 1 + rng.below(max);
                    let data = std::vec![rng.next() as u8 | 1; len as usize];
                    v.write(f, rng.below(40_000), &data).map(|_| ())
                }
            };
        }
        let before = v.fsync_stats();
        let files: Vec<u64> = namespace(&mut v)
            .values()
            .flatten()
            .filter(|e| e.2 == Kind::File)
            .map(|e| e.1)
            .collect();
        let mut target = files[rng.below(files.len() as u64) as usize];
        if rng.chance(35) {
            // A file created now, written and fsynced: its creation goes in the log block.
            let dir = if rng.chance(50) { ROOT } else { d };
            let name = std::format!("c{round}");
            if let Ok(f) = v.create(dir, name.as_bytes(), Kind::File) {
                let len = 1 + rng.below(3 * BLOCK_SIZE as u64);
                let _ = v.write(f, 0, &std::vec![rng.next() as u8 | 1; len as usize]);
                target = f;
            }
        }
        if rng.chance(25) {
            // Scattered one-block writes: a log block of many ranges (several sectors).
            for _ in 0..12 + rng.below(12) {
                let data = std::vec![rng.next() as u8 | 1; BLOCK_SIZE];
                let _ = v.write(target, rng.below(48) * BLOCK_SIZE as u64, &data);
            }
        }
        if behind_rng.chance(30) {
            // An append from a block boundary past the end, written behind and in flight at
            // the fsync or sync (an rng of its own: the rest of the workload stays the same).
            let at = v
                .stat(target)
                .map_or(0, |i| i.size.div_ceil(BLOCK_SIZE as u64));
            let len = 1 + behind_rng.below(3 * BLOCK_SIZE as u64);
            let data = std::vec![behind_rng.next() as u8 | 1; len as usize];
            let _ = v.write(target, at * BLOCK_SIZE as u64, &data);
        }
        let sync = rng.chance(6);
        if sync {
            v.sync().unwrap();
        } else {
            v.fsync(target).unwrap();
        }
        let after = v.fsync_stats();
        let old_want = expected(&committed, &created, &fsynced);
        let by_log = !sync && after.0 > before.0;
        if sync || after.1 > before.1 {
            committed = namespace(&mut v);
            fsynced.clear();
            created.clear();
        } else if by_log {
            let sum = file_sum(&mut v, target);
            fsynced.insert(target, sum);
            logged += 1;
            if !committed.values().flatten().any(|e| e.1 == target) {
                // Created since the commit: no rename since either (that commits), so its
                // name is the one it was created with.
                let (dir, name) = namespace(&mut v)
                    .iter()
                    .find_map(|(&dir, es)| {
                        es.iter()
                            .find(|e| e.1 == target)
                            .map(|e| (dir, e.0.clone()))
                    })
                    .expect("a logged new file has a name");
                created.insert(target, (dir, name));
                logged_new += 1;
            }
        }
        let new_want = expected(&committed, &created, &fsynced);
        if !v.device().log.iter().any(|e| matches!(e, Event::Barrier)) {
            // Nothing made durable (an fsync of a file without changes): the writes so far
            // stay pending for the next durable point.
            assert_eq!(
                old_want, new_want,
                "round {round}: an fsync without I/O changed something"
            );
            continue;
        }
        let events = std::mem::take(&mut v.device().log);
        let (writes, after, barriers) = split_at_barrier(&events);
        let record = after.last().copied();
        assert_eq!(
            barriers, 2,
            "round {round}: one PREFLUSH | FUA write per durable point"
        );
        let record = record.expect("a durable record");
        let build = |pieces: &[(u64, &[u8], u64)]| {
            // (block, bytes, mask of the 512-byte sectors that reached the disk)
            let mut data = img.clone();
            for &(b, bytes, mask) in pieces {
                let o = b as usize * BLOCK_SIZE;
                for s in 0..8 {
                    if mask & (1 << s) != 0 {
                        data[o + s * 512..o + (s + 1) * 512]
                            .copy_from_slice(&bytes[s * 512..(s + 1) * 512]);
                    }
                }
            }
            data
        };
        let all: Vec<(u64, &[u8], u64)> = writes.iter().map(|&(b, x)| (b, x, 0xff)).collect();
        let step = (all.len() / 12).max(1);
        for k in (0..=all.len()).step_by(step) {
            mount_expect(
                build(&all[..k]),
                &mut m2,
                &old_want,
                &std::format!("round {round} prefix {k}"),
            );
            states += 1;
        }
        for _ in 0..4 {
            let mut subset: Vec<(u64, &[u8], u64)> = Vec::new();
            for &(b, x, _) in &all {
                if rng.chance(50) {
                    let mask = if rng.chance(20) { rng.below(256) } else { 0xff };
                    subset.push((b, x, mask));
                }
            }
            mount_expect(
                build(&subset),
                &mut m2,
                &old_want,
                &std::format!("round {round} subset"),
            );
            states += 1;
        }
        // The record torn: the sector holding the end of its used bytes missing, or only it
        // written. A log block covering one sector has no torn state but "not written".
        let used = if by_log {
            u16::from_le_bytes([record.1[30], record.1[31]]) as usize + 4
        } else {
            BLOCK_SIZE
        };
        let last = (used - 1) / 512;
        let mut full = all.clone();
        full.push((record.0, record.1, 0xff & !(1 << last)));
        mount_expect(
            build(&full),
            &mut m2,
            &old_want,
            &std::format!("round {round} torn record"),
        );
        if last > 0 {
            full.last_mut().unwrap().2 = 1 << last;
            mount_expect(
                build(&full),
                &mut m2,
                &old_want,
                &std::format!("round {round} torn record 2"),
            );
            torn += 1;
            states += 1;
        }
        full.last_mut().unwrap().2 = 0xff;
        let complete = build(&full);
        let (_, replayed) = mount_expect(
            complete.clone(),
            &mut m2,
            &new_want,
            &std::format!("round {round} complete"),
        );
        assert_eq!(
            replayed > 0,
            !fsynced.is_empty(),
            "round {round}: replayed {replayed}"
        );
        states += 2;
        if !fsynced.is_empty() && rng.chance(33) {
            // A crash at every point of the replay (and of its commit) must leave a state
            // that replays to the same contents.
            let mut rec = Recorder {
                disk: MemDisk {
                    data: complete.clone(),
                },
                log: Vec::new(),
                pending: Vec::new(),
                behind: 0,
            };
            {
                let (_, info) = Vol::<&mut Recorder>::mount(&mut rec, &mut m3, false).unwrap();
                assert!(info.replayed > 0);
            }
            let rw: Vec<(u64, &[u8])> = rec
                .log
                .iter()
                .filter_map(|e| match e {
                    Event::Write { block, data } => Some((*block, &data[..])),
                    Event::Barrier => None,
                })
                .collect();
            for k in (0..rw.len()).step_by((rw.len() / 10).max(1)) {
                let mut data = complete.clone();
                for &(b, x) in &rw[..k] {
                    data[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE].copy_from_slice(x);
                }
                let (_, again) = mount_expect(
                    data,
                    &mut m2,
                    &new_want,
                    &std::format!("round {round} replay prefix {k}"),
                );
                assert!(
                    again > 0,
                    "round {round}: a crash during replay lost the log"
                );
                states += 1;
            }
            replays += 1;
        }
        img = v.device().disk.data.clone();
    }
    let behind = v.device().behind;
    std::println!(
        "v2 fsync crash: {states} states, {logged} logged fsyncs ({logged_new} of new files, {undone} of them undone before a commit), {replays} replays crashed, {torn} torn, {behind} writes behind"
    );
    assert!(logged > 40, "only {logged} fsyncs by log");
    assert!(
        logged_new > 15,
        "only {logged_new} new files fsynced by log"
    );
    assert!(
        undone > 4,
        "only {undone} logged new files removed or renamed"
    );
    assert!(replays > 8, "only {replays} replays crashed");
    assert!(states >= 900, "only {states} states");
    assert!(torn > 10, "only {torn} multi-sector records torn");
    assert!(behind > 40, "only {behind} writes behind");
}
