//! Fuzzed version-2 images: a base image (tree of three levels, bitmaps, selectors, several
//! commits) gets 1 to 3 mutations of its metadata blocks (bit flips, random bytes, a field-sized
//! edge value, a block zeroed or overwritten by another metadata block, a torn sector),
//! re-sealed or not. Each image is mounted and walked, changed and committed: no panic, no
//! hang, errors only as `FsError`, and an image whose tree and bitmaps check clean after the
//! mount keeps its contents through the changes.

use std::collections::BTreeSet;
use std::vec::Vec;

use super::{AnySpace, SpaceKind, TEST_GROUPS, mkfs, space_mem, value_for};
use crate::crc::crc32c;
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::tests::{Rng, scale};
use crate::v2::node::DATA_END;
use crate::v2::space::FreeSpace;
use crate::v2::superblock::Superblock;
use crate::v2::{Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

/// The base image and its metadata blocks.
fn base(rng: &mut Rng) -> (Vec<u8>, Vec<u64>) {
    let mut disk = MemDisk::new(600);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    mkfs::<_, MIN_FRAMES>(&mut disk, &mut mem, SpaceKind::Bitmaps(64));
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = AnySpace::mount(SpaceKind::Bitmaps(64), &mut disk, &mut tree, &mut smem);
    for round in 0..8u64 {
        for _ in 0..60 {
            let k = Key::new(rng.below(300), rng.below(3) as u8, 0);
            if rng.chance(80) {
                let v = value_for(&k, round, rng.below(700) as usize);
                tree.insert(&mut disk, &mut space, &k, &v).unwrap();
            } else {
                tree.remove(&mut disk, &mut space, &k).unwrap();
            }
        }
        space.commit(&mut disk, &mut tree);
    }
    assert!(tree.height() >= 2);
    let mut meta = BTreeSet::from([0u64, 1]);
    tree.check(&mut disk, &mut |b, _| {
        meta.insert(b);
    })
    .unwrap();
    let AnySpace::Bits(s) = &mut space else {
        unreachable!()
    };
    for g in 0..s.groups_ready() {
        meta.insert(g * 64 + 2);
        meta.insert(g * 64 + 3);
    }
    meta.extend(s.selector_blocks().iter().filter(|&&p| p != 0));
    (disk.data, meta.into_iter().collect())
}

fn mutate(rng: &mut Rng, img: &mut [u8], meta: &[u64]) {
    let b = meta[rng.below(meta.len() as u64) as usize] as usize;
    let blk = &mut img[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE];
    match rng.below(7) {
        0 => {
            let i = rng.below(BLOCK_SIZE as u64 * 8);
            blk[(i / 8) as usize] ^= 1 << (i % 8);
        }
        1 => {
            // Header and item-header area: where the fields are.
            let i = rng.below(320) as usize;
            blk[i] = rng.next() as u8;
        }
        2 => {
            let i = rng.below(300) as usize;
            let edge = [0u64, 1, 2, 255, 256, 4091, 4092, u32::MAX as u64, u64::MAX]
                [rng.below(9) as usize];
            let w = [1usize, 2, 4, 8][rng.below(4) as usize];
            blk[i..i + w].copy_from_slice(&edge.to_le_bytes()[..w]);
        }
        3 => blk.fill(0),
        4 => {
            let o = meta[rng.below(meta.len() as u64) as usize] as usize;
            let src = img[o * BLOCK_SIZE..(o + 1) * BLOCK_SIZE].to_vec();
            img[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE].copy_from_slice(&src);
            return;
        }
        5 => {
            let s = 1 + rng.below(7) as usize;
            blk[s * 512..].fill(0xA5);
        }
        _ => {
            let i = rng.below(BLOCK_SIZE as u64 - 16) as usize;
            for x in &mut blk[i..i + 16] {
                *x = rng.next() as u8;
            }
        }
    }
    if rng.chance(60) {
        // A log block's CRC is where its records end (and the header may say so still).
        let end = u16::from_le_bytes([blk[30], blk[31]]) as usize;
        if blk[4] == crate::v2::log::KIND_LOG as u8
            && (crate::v2::log::LOG_HDR..=BLOCK_SIZE - 4).contains(&end)
        {
            let c = crc32c(&blk[..end]);
            blk[end..end + 4].copy_from_slice(&c.to_le_bytes());
        } else {
            let c = crc32c(&blk[..DATA_END]);
            blk[DATA_END..].copy_from_slice(&c.to_le_bytes());
        }
    }
}

/// Every item, or the first error; bounded.
fn walk<D: crate::io::BlockIo>(
    dev: &mut D,
    tree: &mut T<'_>,
) -> crate::Result<Vec<(Key, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut from = Key::MIN;
    while let Some((k, n)) = tree.next(dev, &from, &mut buf)? {
        assert!(k >= from, "next went backwards");
        out.push((k, buf[..n.min(1024)].to_vec()));
        assert!(out.len() < 100_000, "walk does not end");
        match k.successor() {
            Some(s) => from = s,
            None => break,
        }
    }
    Ok(out)
}

#[test]
fn fuzzed_images_never_panic() {
    let seed = std::env::var("TINYFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0002u64);
    let mut rng = Rng::new(seed);
    let (img0, meta) = base(&mut rng);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    let mut smem = space_mem();
    let (mut mounted, mut clean) = (0, 0);
    let mut scratch = std::vec![0u8; crate::v2::check::MIN_SCRATCH_BLOCKS * BLOCK_SIZE];
    for n in 0..1500 * scale() {
        let mut img = img0.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut img, &meta);
        }
        let mut disk = MemDisk { data: img };
        // fsck on a raw tree (its items are not a filesystem's): reports, never panics.
        crate::v2::check::check(&mut disk, &mut scratch, &mut |_| {}).unwrap();
        let what = std::format!("seed {seed} image {n}");
        let Ok((mut tree, _)) = T::mount(&mut disk, &mut mem, false) else {
            continue;
        };
        mounted += 1;
        let checked = tree.check(&mut disk, &mut |_, _| {}).is_ok();
        let before = walk(&mut disk, &mut tree);
        let Ok(space) = FreeSpace::<TEST_GROUPS>::open(&mut smem, tree.superblock()) else {
            continue;
        };
        let mut space = AnySpace::Bits(space);
        let mut model: std::collections::BTreeMap<Key, Vec<u8>> = match &before {
            Ok(items) => items.iter().cloned().collect(),
            Err(_) => Default::default(),
        };
        let mut ok = true;
        for i in 0..20u64 {
            let k = Key::new(rng.below(320), rng.below(3) as u8, 0);
            let r = if rng.chance(70) {
                let v = value_for(&k, 77 + i, rng.below(500) as usize);
                tree.insert(&mut disk, &mut space, &k, &v).map(|_| {
                    model.insert(k, v);
                })
            } else {
                tree.remove(&mut disk, &mut space, &k).map(|_| {
                    model.remove(&k);
                })
            };
            if r.is_err() {
                ok = false;
                break;
            }
        }
        let committed = ok && {
            let AnySpace::Bits(s) = &mut space else {
                unreachable!()
            };
            s.commit(&mut disk, &mut tree).is_ok()
        };
        if checked && before.is_ok() && committed {
            // A tree that checked clean keeps its contents through the changes.
            clean += 1;
            let (mut tree, _) = T::mount(&mut disk, &mut mem, false)
                .unwrap_or_else(|e| panic!("{what}: remount after commit: {e}"));
            let after = walk(&mut disk, &mut tree).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want: Vec<_> = model.into_iter().collect();
            assert_eq!(after, want, "{what}: contents after changes");
        }
    }
    std::println!("v2 fuzz: seed {seed}, {mounted} mounted, {clean} clean and changed");
    assert!(
        mounted > 300 && clean > 100,
        "{mounted} mounted, {clean} clean"
    );
}

#[test]
fn fuzzed_volumes_never_panic() {
    // A volume with nested directories and fragmented files; each mutated image is mounted,
    // listed and read everywhere, changed (creates, writes, renames, removals) and synced
    // (with data checksums, through a four-block data buffer):
    // errors are fine, panics and endless loops are not.
    use crate::v2::Kind;
    use crate::v2::Volume;
    use crate::v2::volume::{ROOT, volume_frames};
    const VG: usize = TEST_GROUPS;
    let mut rng = Rng::new(0x5EED_0003);
    let mut disk = MemDisk::new(700);
    // Data checksums and a four-block data buffer (runs), so checksum items are among the
    // mutated metadata and reads and writes go through the run paths.
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, VG) + 3) * BLOCK_SIZE];
    Volume::<MemDisk, MIN_FRAMES, VG>::mkfs_with(&mut disk, &mut m, 64, 1, true).unwrap();
    {
        let (mut v, _) =
            Volume::<&mut MemDisk, MIN_FRAMES, VG>::mount(&mut disk, &mut m, false).unwrap();
        let d = v.create(ROOT, b"dir", Kind::Dir).unwrap();
        for i in 0..40u64 {
            let parent = if i % 3 == 0 { d } else { ROOT };
            let f = v
                .create(parent, std::format!("f{i}").as_bytes(), Kind::File)
                .unwrap();
            for b in (0..1 + i % 5).rev() {
                v.write(f, b * 4096 + i, &[i as u8; 3000]).unwrap();
            }
            if i % 10 == 9 {
                v.sync().unwrap();
            }
        }
        v.sync().unwrap();
        // Then fsyncs by log blocks, never committed: every mount below replays a chain of
        // them (whose blocks the mutations hit too, CRC re-sealed where their records end).
        // A third of them of files created since the commit: their log blocks carry the
        // creation records (inode, entry, back reference, the directory's inode).
        for i in 0..12u64 {
            let f = if i % 3 == 1 {
                let parent = if i % 2 == 0 { d } else { ROOT };
                let f = v
                    .create(parent, std::format!("new{i}").as_bytes(), Kind::File)
                    .unwrap();
                v.write(f, 0, &[0xA0 | i as u8; 5000]).unwrap();
                f
            } else {
                v.lookup(ROOT, std::format!("f{}", 1 + i % 6 * 3).as_bytes())
                    .unwrap()
                    .0
            };
            v.write(f, i * 1000, &[0xC0 | i as u8; 6000]).unwrap();
            if i % 4 == 3 {
                v.truncate(f, 2000 + i).unwrap();
            }
            v.fsync(f).unwrap();
        }
        assert_eq!(v.fsync_stats(), (12, 0));
    }
    super::fsck_clean(&mut disk);
    {
        // The new files exist only in the log: a replay finds them.
        let mut copy = MemDisk {
            data: disk.data.clone(),
        };
        let (mut v, info) =
            Volume::<&mut MemDisk, MIN_FRAMES, VG>::mount(&mut copy, &mut m, false).unwrap();
        assert_eq!(info.replayed, 12);
        let d = v.lookup(ROOT, b"dir").unwrap().0;
        for i in [1u64, 4, 7, 10] {
            let parent = if i % 2 == 0 { d } else { ROOT };
            v.lookup(parent, std::format!("new{i}").as_bytes()).unwrap();
        }
    }
    let log_root = Superblock::decode(&disk.data[..BLOCK_SIZE], 0)
        .or_else(|_| Superblock::decode(&disk.data[BLOCK_SIZE..2 * BLOCK_SIZE], 1))
        .unwrap()
        .log_root;
    assert!(log_root < 300, "the log must be among the mutated blocks");
    let img0 = disk.data.clone();
    // Metadata: the first blocks hold every node, bitmap and selector of this small image;
    // log blocks (found by their header) weigh more.
    let mut meta: Vec<u64> = (0..300).collect();
    let mut logs = 0;
    for b in 0..disk.data.len() / BLOCK_SIZE {
        let h = &disk.data[b * BLOCK_SIZE..b * BLOCK_SIZE + 8];
        if h[..4] == crate::v2::node::MAGIC.to_le_bytes() && h[4] == crate::v2::log::KIND_LOG as u8
        {
            meta.extend([b as u64; 20]);
            logs += 1;
        }
    }
    assert!(logs >= 12, "only {logs} log blocks");
    let mut mounted = 0;
    let mut scratch = std::vec![0u8; crate::v2::check::MIN_SCRATCH_BLOCKS * BLOCK_SIZE];
    let (mut fsck_clean, mut fsck_found) = (0, 0);
    for _ in 0..400 * scale() {
        let mut img = img0.clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut img, &meta);
        }
        let mut disk = MemDisk { data: img };
        // fsck never panics on a mutated image, and one it finds clean mounts.
        let r = crate::v2::check::check(&mut disk, &mut scratch, &mut |_| {}).unwrap();
        if r.problems == 0 {
            fsck_clean += 1;
        } else {
            fsck_found += 1;
        }
        let mounts = Volume::<&mut MemDisk, MIN_FRAMES, VG>::mount(&mut disk, &mut m, false);
        assert!(r.problems > 0 || mounts.is_ok(), "fsck clean, mount fails");
        let Ok((mut v, _)) = mounts else {
            continue;
        };
        mounted += 1;
        let mut todo = std::vec![ROOT];
        let mut seen = 0;
        while let Some(dir) = todo.pop() {
            let mut cookie = 0;
            while let Ok(Some((e, next))) = v.readdir(dir, cookie) {
                seen += 1;
                assert!(seen < 10_000, "listing does not end");
                if e.kind == Kind::Dir && todo.len() < 100 {
                    todo.push(e.ino);
                } else {
                    let mut buf = [0u8; 30_000];
                    let _ = v.read(e.ino, 0, &mut buf);
                    let _ = v.write(e.ino, rng.below(30_000), &[1; 5000]);
                }
                cookie = next;
            }
        }
        let _ = v.create(ROOT, b"new", Kind::File);
        let _ = v.rename(ROOT, b"dir", ROOT, b"moved");
        let _ = v.rename(ROOT, b"f1", ROOT, b"moved");
        let _ = v.remove(ROOT, b"f2");
        let _ = v.sync();
    }
    assert!(mounted > 100, "{mounted} mounted");
    assert!(
        fsck_found > 20,
        "fsck found problems in only {fsck_found} images"
    );
    std::println!("v2 volume fuzz: fsck clean {fsck_clean}, problems in {fsck_found}");
}
