//! Bad input: random bytes, truncated images, bit flips in metadata blocks (with and without a
//! re-sealed CRC). Mount must fail with an error or give a consistent view; never panic or hang.

use super::model::{Model, SmallFs, step};
use super::{Rng, scale};
use crate::format::{BLOCK_SIZE, CRC_OFF, Superblock, seal};
use crate::host::MemDisk;
use crate::*;

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

fn metadata_blocks(img: &[u8]) -> Vec<u64> {
    let mut v = vec![0, 1];
    for slot in 0..2u64 {
        let b: &[u8; BLOCK_SIZE] = img[slot as usize * BLOCK_SIZE..][..BLOCK_SIZE]
            .try_into()
            .unwrap();
        if let Ok(sb) = Superblock::decode(b, slot) {
            v.extend_from_slice(&sb.table[..sb.inode_blocks as usize]);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
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

#[test]
fn bit_flips_in_metadata() {
    let mut rng = Rng::new(11);
    let mut cases = 0;
    for seed in 0..(3 * scale()) {
        let img = populated(seed + 50);
        assert!(exercise(&img));
        for b in metadata_blocks(&img) {
            for k in 0..30 {
                let mut bad = img.clone();
                let o = b as usize * BLOCK_SIZE;
                let bit = rng.below(BLOCK_SIZE as u64 * 8) as usize;
                bad[o + bit / 8] ^= 1 << (bit % 8);
                if k % 2 == 1 && bit / 8 < CRC_OFF {
                    // Re-seal so the field validators, not the CRC, must catch it.
                    let blk: &mut [u8; BLOCK_SIZE] =
                        (&mut bad[o..o + BLOCK_SIZE]).try_into().unwrap();
                    seal(blk);
                }
                exercise(&bad);
                cases += 1;
            }
            // Garbage with a valid CRC.
            let mut bad = img.clone();
            let o = b as usize * BLOCK_SIZE;
            for x in &mut bad[o + 32..o + CRC_OFF] {
                *x = if rng.chance(70) { 0 } else { rng.next() as u8 };
            }
            let blk: &mut [u8; BLOCK_SIZE] = (&mut bad[o..o + BLOCK_SIZE]).try_into().unwrap();
            seal(blk);
            exercise(&bad);
            cases += 1;
        }
    }
    assert!(cases > 300);
}
