//! Bad input. A seeded random-mutation fuzzer of metadata blocks (superblocks and inode-table
//! blocks: inodes, names, parents, extents), at least 10,000 images per run: for each, fsck,
//! a read-only and a read-write mount with a walk and a sequence of changes, and fsck again.
//! Nothing may panic or hang, and the verdicts must agree: a clean image stays clean after the
//! changes, a fallback past a corrupt tree is never written over. Also random bytes and
//! truncated images.
//!
//! `TINYFS_FUZZ_IMAGES=N` sets the number of images (default 10,000), `TINYFS_FUZZ_SEED=S`
//! the seed (default: from the clock; printed, and named in any failure).

use super::model::{Model, SmallFs, step};
use super::{Rng, scale};
use crate::format::{BLOCK_SIZE, Superblock, seal};
use crate::host::MemDisk;
use crate::v1::*;

/// Mounts `img` read-only and read-write and drives whatever mounts. Returns true if it mounted.
pub fn exercise(img: &[u8]) -> bool {
    let mut mounted = false;
    for ro in [true, false] {
        let mut disk = MemDisk { data: img.to_vec() };
        let mut buf = vec![0u8; 16 * 1024];
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        if fs.mount(ro).is_err() {
            continue;
        }
        mounted = true;
        let mut stack = vec![Ino::ROOT];
        let mut visits = 0;
        let mut out = vec![0u8; 64 * 1024];
        while let Some(d) = stack.pop() {
            let mut cookie = 0;
            while let Ok(Some((e, next))) = fs.readdir(d, cookie) {
                cookie = next;
                visits += 1;
                assert!(visits < 100_000, "readdir does not terminate");
                match e.kind {
                    Kind::Dir => stack.push(e.ino),
                    _ => {
                        let _ = fs.read(e.ino, 0, &mut out);
                        let _ = fs.stat(e.ino);
                    }
                }
            }
        }
        let _ = fs.statfs();
        if !ro {
            if let Ok(f) = fs.create("/fuzz-new") {
                let _ = fs.write(f, 5000, &[7u8; 9000]);
                let _ = fs.truncate(f, 100);
            }
            let _ = fs.rename("/a", "/d1/zz");
            let _ = fs.unlink("/b");
            let _ = fs.sync();
            let _ = fs.unmount();
        }
    }
    let mut disk = MemDisk { data: img.to_vec() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    let _ = fs.fsck(&mut |_| {});
    mounted
}

fn populated(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut disk = MemDisk::new(256);
    let mut buf = vec![0u8; 16 * 1024];
    let mut m = Model::default();
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 2,
    })
    .unwrap();
    fs.mount(false).unwrap();
    for _ in 0..60 {
        step(&mut rng, &mut fs, &mut m, false);
    }
    fs.unmount().unwrap();
    disk.data
}

#[test]
fn random_bytes_never_mount_wrongly() {
    let mut rng = Rng::new(7);
    for i in 0..(40 * scale()) {
        let blocks = 1 + rng.below(64) as usize;
        let img: Vec<u8> = (0..blocks * BLOCK_SIZE).map(|_| rng.next() as u8).collect();
        assert!(!exercise(&img), "random image {i} mounted");
    }
}

#[test]
fn truncated_images() {
    let img = populated(3);
    for blocks in [0usize, 1, 2, 3, 4, 5, 8, 16, 40, 100, 200, 255] {
        exercise(&img[..blocks * BLOCK_SIZE]);
    }
}

/// Blocks of a fuzzed image: small, so 10,000 images take seconds.
const FUZZ_BLOCKS: u64 = 64;

/// A base image: random files (with holes and several extents) and directories over several
/// commits, so both superblocks and their tables differ. Errors (a full disk) are fine.
fn base_image(rng: &mut Rng) -> Vec<u8> {
    let mut disk = MemDisk::new(FUZZ_BLOCKS);
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 1 + rng.below(4) as u32,
    })
    .unwrap();
    fs.mount(false).unwrap();
    const NAMES: [&str; 8] = ["/a", "/b", "/d", "/d/c", "/d/e", "/d/e/f", "/g", "/d/h"];
    for _ in 0..(20 + rng.below(30)) {
        let p = NAMES[rng.below(NAMES.len() as u64) as usize];
        match rng.below(8) {
            0 => {
                let _ = fs.mkdir(p);
            }
            1..=4 => {
                let f = match fs.create(p) {
                    Ok(f) => Some(f),
                    Err(FsError::Exists) => fs.open(p).ok(),
                    Err(_) => None,
                };
                if let Some(f) = f {
                    let off = rng.below(6) * 4096 + rng.below(2) * rng.below(4096);
                    let data = vec![rng.below(255) as u8 + 1; 1 + rng.below(9000) as usize];
                    let _ = fs.write(f, off, &data);
                }
            }
            5 => {
                if let Ok(f) = fs.open(p) {
                    let _ = fs.truncate(f, rng.below(20_000));
                }
            }
            6 => {
                let _ = fs.unlink(p);
            }
            _ => {
                let _ = fs.sync();
            }
        }
    }
    fs.unmount().unwrap();
    disk.data
}

/// The metadata blocks of an image: both slots and every table block either names.
fn metadata_blocks(img: &[u8]) -> Vec<u64> {
    let mut v = vec![0, 1];
    for slot in 0..2u64 {
        if let Some(sb) = slot_superblock(img, slot) {
            v.extend_from_slice(&sb.table[..sb.inode_blocks as usize]);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn slot_superblock(img: &[u8], slot: u64) -> Option<Superblock> {
    let b: &[u8; BLOCK_SIZE] = img
        .get(slot as usize * BLOCK_SIZE..)?
        .get(..BLOCK_SIZE)?
        .try_into()
        .ok()?;
    Superblock::decode(b, slot).ok()
}

/// A value worth putting in a field: edges, neighbours of the old value, other block numbers.
fn interesting(rng: &mut Rng, old: u64, blocks: &[u64]) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => u64::MAX >> (rng.below(64)),
        3 => old.wrapping_add(1),
        4 => old.wrapping_sub(1),
        5 => FUZZ_BLOCKS + rng.below(3) - 1,
        6 => blocks[rng.below(blocks.len() as u64) as usize],
        7 => rng.below(FUZZ_BLOCKS),
        8 => old ^ (1 << rng.below(64)),
        _ => rng.next(),
    }
}

/// Field offsets (from the block start) and widths worth targeting in a metadata block.
fn field(rng: &mut Rng, superblock: bool) -> (usize, usize) {
    const HEADER: [(usize, usize); 5] = [(0, 4), (4, 2), (6, 2), (8, 8), (16, 8)];
    if rng.chance(15) {
        return HEADER[rng.below(HEADER.len() as u64) as usize];
    }
    if superblock {
        // block_count, inode_blocks, a table pointer.
        return match rng.below(3) {
            0 => (32, 8),
            1 => (40, 4),
            _ => (64 + 8 * rng.below(6) as usize, 8),
        };
    }
    // An inode's field: kind, name_len, nextents, parent, size, mtime, a name byte, an
    // extent's fblock, len or phys.
    let base = HDR + INODE * rng.below(15) as usize;
    let (o, w) = match rng.below(9) {
        0 => (0, 1),
        1 => (1, 1),
        2 => (2, 2),
        3 => (4, 4),
        4 => (8, 8),
        5 => (16, 8),
        6 => (24 + rng.below(56) as usize, 1),
        7 => (
            80 + 16 * rng.below(11) as usize + 4 * rng.below(2) as usize,
            4,
        ),
        _ => (88 + 16 * rng.below(11) as usize, 8),
    };
    (base + o, w)
}

const HDR: usize = 32;
const INODE: usize = 256;

/// Applies 1 to 3 random mutations to metadata blocks of `img`; returns a short description.
fn mutate(rng: &mut Rng, img: &mut [u8]) -> String {
    let meta = metadata_blocks(img);
    let mut what = String::new();
    for _ in 0..(1 + rng.below(3) * rng.below(2)) {
        let b = meta[rng.below(meta.len() as u64) as usize];
        let o = b as usize * BLOCK_SIZE;
        let kind = rng.below(6);
        let reseal = rng.chance(60);
        match kind {
            0 => {
                for _ in 0..(1 + rng.below(8)) {
                    let bit = rng.below(BLOCK_SIZE as u64 * 8) as usize;
                    img[o + bit / 8] ^= 1 << (bit % 8);
                }
            }
            1 => {
                let at = rng.below(BLOCK_SIZE as u64) as usize;
                let len = (1 + rng.below(64) as usize).min(BLOCK_SIZE - at);
                for x in &mut img[o + at..o + at + len] {
                    *x = rng.next() as u8;
                }
            }
            2 | 3 => {
                let (fo, w) = field(rng, b < 2);
                let mut bytes = [0u8; 8];
                bytes[..w].copy_from_slice(&img[o + fo..o + fo + w]);
                let old = u64::from_le_bytes(bytes);
                let new = interesting(rng, old, &meta).to_le_bytes();
                img[o + fo..o + fo + w].copy_from_slice(&new[..w]);
            }
            4 => {
                // A misdirected or lost write: another metadata block's bytes, or zeros.
                let src = meta[rng.below(meta.len() as u64) as usize] as usize * BLOCK_SIZE;
                if rng.chance(50) && src != o {
                    img.copy_within(src..src + BLOCK_SIZE, o);
                } else {
                    img[o..o + BLOCK_SIZE].fill(0);
                }
            }
            _ => {
                // A torn write: a sector prefix of the block replaced by another's.
                let src = meta[rng.below(meta.len() as u64) as usize] as usize * BLOCK_SIZE;
                let n = 512 * (1 + rng.below(7) as usize);
                if src != o {
                    img.copy_within(src..src + n, o);
                }
            }
        }
        if reseal {
            let blk: &mut [u8; BLOCK_SIZE] = (&mut img[o..o + BLOCK_SIZE]).try_into().unwrap();
            seal(blk);
        }
        what.push_str(&format!(
            "{}block {b} {}{}",
            if what.is_empty() { "" } else { ", " },
            [
                "bit flips",
                "random bytes",
                "field",
                "field",
                "overwritten",
                "torn"
            ][kind as usize],
            if reseal { " (re-sealed)" } else { "" }
        ));
    }
    what
}

fn fsck_of<D: BlockIo>(dev: D) -> (Result<FsckStats>, Vec<Problem>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(dev, &mut buf);
    let mut problems = Vec::new();
    let r = fs.fsck(&mut |p| problems.push(p));
    if let Ok(st) = &r {
        assert_eq!(
            st.problems as usize,
            problems.len(),
            "fsck counts its problems"
        );
        assert_eq!(
            st.status == FsckStatus::Clean,
            problems.is_empty(),
            "clean exactly when no problem: {problems:?}"
        );
    }
    (r, problems)
}

/// Walks the whole tree of a mounted instance (bounded), reading every file.
fn walk<D: BlockIo>(fs: &mut SmallFs<'_, D>) {
    let mut stack = vec![Ino::ROOT];
    let mut visits = 0;
    let mut out = vec![0u8; 32 * 1024];
    while let Some(d) = stack.pop() {
        let mut cookie = 0;
        while let Ok(Some((e, next))) = fs.readdir(d, cookie) {
            assert!(next > cookie, "readdir cookies advance");
            cookie = next;
            visits += 1;
            assert!(visits < 10_000, "readdir does not terminate");
            match e.kind {
                Kind::Dir => stack.push(e.ino),
                _ => {
                    let _ = fs.read(e.ino, 0, &mut out);
                    let _ = fs.stat(e.ino);
                }
            }
        }
    }
    let _ = fs.statfs();
}

/// Random changes; every error is a typed one. Returns the bytes the new file `/fz` must hold
/// when it was written and committed.
fn changes<D: BlockIo>(rng: &mut Rng, fs: &mut SmallFs<'_, D>) -> Option<Vec<u8>> {
    const PATHS: [&str; 6] = ["/a", "/b", "/d", "/d/c", "/d/e", "/g"];
    for _ in 0..(2 + rng.below(6)) {
        let p = PATHS[rng.below(PATHS.len() as u64) as usize];
        let q = PATHS[rng.below(PATHS.len() as u64) as usize];
        let _ = match rng.below(7) {
            0 => fs.mkdir(p).map(|_| ()),
            1 => fs.create(p).map(|_| ()),
            2 => fs.open(p).and_then(|f| {
                fs.write(f, rng.below(20_000), &vec![0x5a; rng.below(9000) as usize])
                    .map(|_| ())
            }),
            3 => fs.open(p).and_then(|f| fs.truncate(f, rng.below(30_000))),
            4 => fs.unlink(p),
            5 => fs.rmdir(p),
            _ => fs.rename(p, q),
        };
    }
    let data: Vec<u8> = (0..(1 + rng.below(12_000)))
        .map(|i| (i * 7 + 1) as u8)
        .collect();
    let f = fs.create("/fz").ok()?;
    fs.write(f, 0, &data).ok()?;
    fs.fsync(f).ok()?;
    Some(data)
}

fn read_back<D: BlockIo>(fs: &mut SmallFs<'_, D>, want: &[u8]) -> std::result::Result<(), String> {
    let f = fs.open("/fz").map_err(|e| format!("open /fz: {e}"))?;
    let mut out = vec![0u8; want.len() + 10];
    let n = fs
        .read(f, 0, &mut out)
        .map_err(|e| format!("read /fz: {e}"))?;
    if out[..n] != *want {
        return Err(format!(
            "/fz reads {n} bytes, not the {} written",
            want.len()
        ));
    }
    Ok(())
}

/// What one image did.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    status: [u32; 4],
    no_check: u32,
    mounted_rw: u32,
    committed: u32,
}

/// Fuzzes one mutated image; panics (with the reason) when a property fails.
fn fuzz_one(rng: &mut Rng, img: Vec<u8>, out: &mut Outcome) {
    let mut disk = MemDisk { data: img };
    let before = fsck_of(&mut disk);
    let status = match &before.0 {
        Ok(st) => Some(st.status),
        Err(_) => None,
    };
    match status {
        Some(s) => out.status[s.code() as usize] += 1,
        None => out.no_check += 1,
    }
    let mut buf = vec![0u8; 16 * 1024];
    // Read-only: never writes, and agrees with fsck.
    let ro_report = {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        let r = fs.mount(true);
        if let Ok(rep) = &r {
            walk(&mut fs);
            assert_eq!(fs.create("/x"), Err(FsError::ReadOnly));
            fs.unmount().unwrap();
            if let Ok(st) = &before.0 {
                assert_eq!(
                    rep.generation, st.generation,
                    "mount and fsck use one generation"
                );
                assert_eq!(
                    rep.fell_back_from, st.fell_back_from,
                    "mount and fsck agree"
                );
            }
        }
        r.ok()
    };
    if matches!(
        status,
        Some(FsckStatus::Clean | FsckStatus::RolledBackTorn | FsckStatus::RolledBackCorrupt)
    ) {
        assert!(
            ro_report.is_some(),
            "fsck passes the tree but mount refuses it"
        );
    }
    let snapshot = disk.data.clone();
    // Read-write, changes, unmount.
    let (mode, written) = {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        match fs.mount(false) {
            Ok(rep) => {
                out.mounted_rw += 1;
                walk(&mut fs);
                let written = changes(rng, &mut fs);
                if let Some(w) = &written {
                    out.committed += 1;
                    read_back(&mut fs, w).unwrap();
                }
                let _ = fs.unmount();
                (Some(rep.mode), written)
            }
            Err(_) => (None, None),
        }
    };
    if status == Some(FsckStatus::RolledBackCorrupt) {
        assert_eq!(
            mode,
            Some(Mode::ReadOnly),
            "a corrupt newer tree mounts read-only"
        );
        assert!(
            disk.data == snapshot,
            "the newer generation's blocks were written over"
        );
        return;
    }
    if mode == Some(Mode::ReadOnly) {
        assert!(disk.data == snapshot, "a read-only mount wrote");
    }
    let after = fsck_of(&mut disk);
    match status {
        Some(FsckStatus::Clean) => {
            let st = after.0.as_ref().expect("fsck after changes runs");
            assert_eq!(
                st.status,
                FsckStatus::Clean,
                "a clean image is no longer clean after changes: {:?}",
                after.1
            );
        }
        Some(FsckStatus::RolledBackTorn) if written.is_some() => {
            let st = after.0.as_ref().expect("fsck after changes runs");
            assert_eq!(
                st.status,
                FsckStatus::Clean,
                "a commit after a torn superblock leaves a clean image: {:?}",
                after.1
            );
        }
        _ => {}
    }
    if let Some(w) = written
        && matches!(status, Some(FsckStatus::Clean | FsckStatus::RolledBackTorn))
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        fs.mount(true).expect("remount after changes");
        read_back(&mut fs, &w).unwrap();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn mutated_metadata_never_panics_and_verdicts_agree() {
    let images = env_u64("TINYFS_FUZZ_IMAGES").unwrap_or(10_000 * scale());
    let seed = env_u64("TINYFS_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("tinyfs fuzz: seed {seed:#x}, {images} images (TINYFS_FUZZ_SEED, TINYFS_FUZZ_IMAGES)");
    let started = std::time::Instant::now();
    let mut rng = Rng::new(seed);
    let bases: Vec<Vec<u8>> = (0..8).map(|_| base_image(&mut rng)).collect();
    for b in &bases {
        let (r, problems) = fsck_of(MemDisk { data: b.clone() });
        assert_eq!(r.unwrap().status, FsckStatus::Clean, "{problems:?}");
    }
    let mut out = Outcome::default();
    for i in 0..images {
        let mut rng = Rng::new(seed ^ (i + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let mut img = bases[rng.below(bases.len() as u64) as usize].clone();
        let what = mutate(&mut rng, &mut img);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fuzz_one(&mut rng, img, &mut out)
        }));
        if r.is_err() {
            panic!("tinyfs fuzz: seed {seed:#x} image {i} ({what}) failed (see the panic above)");
        }
    }
    println!(
        "tinyfs fuzz: {images} images in {:.1}s: fsck clean {}, corrupt {}, rolled back past a \
         torn superblock {}, past a corrupt tree {}, no check possible {}; {} mounted \
         read-write, {} committed a new file",
        started.elapsed().as_secs_f64(),
        out.status[0],
        out.status[1],
        out.status[2],
        out.status[3],
        out.no_check,
        out.mounted_rw,
        out.committed
    );
    // The mutations reach every verdict.
    assert!(
        images < 1000 || out.status.iter().all(|&n| n > 0),
        "{out:?}"
    );
}
