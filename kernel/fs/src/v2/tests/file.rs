//! Sequential appends grow the file's last extent in place: [`Tree::rekey`] against a model
//! (it moves a key only where no item or separator lies in between), and the extents a
//! sequential write leaves (one item for a contiguous file, written zero-copy or copying,
//! across a remount, and a new item where the run is not contiguous).

use std::collections::BTreeMap;
use std::vec::Vec;

use super::{MemSpace, verify_volume};
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::tests::Rng;
use crate::v2::volume::volume_frames;
use crate::v2::{Fs, Ino, Key, MIN_FRAMES, Tree};

type T<'b> = Tree<'b, MIN_FRAMES>;

/// Random `rekey`s on a three-level tree whose separators went stale through removals: a
/// move succeeds only when no key lies in `(old, new]` and `keep` agrees, and afterwards
/// the item is found at its new key (never behind a separator that sends lookups elsewhere)
/// and not at its old one; a refused move changes nothing.
#[test]
fn rekey_moves_a_key_only_where_nothing_lies_between() {
    let mut disk = MemDisk::new(4096);
    let mut mem = std::vec![0u8; MIN_FRAMES * BLOCK_SIZE];
    T::mkfs(&mut disk, &mut mem).unwrap();
    let (mut tree, _) = T::mount(&mut disk, &mut mem, false).unwrap();
    let mut space = MemSpace::rebuild(&mut disk, &mut tree);
    let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng::new(15);
    for i in 0..7000u64 {
        let k = Key::new(1, 1, i * 16);
        let v: Vec<u8> = (0..100).map(|j| (i as u8) ^ j).collect();
        tree.insert(&mut disk, &mut space, &k, &v).unwrap();
        model.insert(k, v);
    }
    // Stale separators: remove a third of the items, the first of many leaves among them.
    for i in 0..7000u64 {
        if rng.chance(33) {
            let k = Key::new(1, 1, i * 16);
            assert!(tree.remove(&mut disk, &mut space, &k).unwrap());
            model.remove(&k);
        }
    }
    assert_eq!(tree.height(), 3);
    let (mut moved, mut between, mut refused, mut declined) = (0, 0, 0, 0);
    let mut out = [0u8; 128];
    for step in 0..4000 {
        let keys: Vec<Key> = model.keys().copied().collect();
        let old = keys[rng.below(keys.len() as u64) as usize];
        let new = Key::new(1, 1, old.offset + 1 + rng.below(40));
        let agree = !rng.chance(10);
        let want = model[&old].clone();
        let mut seen = None;
        let done = tree
            .rekey(&mut disk, &mut space, &old, &new, |v| {
                seen = Some(v.to_vec());
                agree
            })
            .unwrap();
        assert_eq!(seen.as_deref(), Some(&want[..]), "keep sees the value");
        let clear = model.range(old.successor().unwrap()..=new).next().is_none();
        if done {
            assert!(
                clear && agree,
                "moved {old:?} over a key or without consent"
            );
            model.remove(&old);
            model.insert(new, want.clone());
            moved += 1;
        } else if !agree {
            declined += 1;
        } else if !clear {
            between += 1;
        } else {
            refused += 1;
        }
        assert_eq!(
            tree.get(&mut disk, &new, &mut out).unwrap(),
            model.get(&new).map(Vec::len)
        );
        if let Some(v) = model.get(&new) {
            assert_eq!(&out[..v.len()], &v[..]);
        }
        assert_eq!(
            tree.get(&mut disk, &old, &mut out).unwrap(),
            model.get(&old).map(Vec::len)
        );
        if step % 500 == 499 {
            tree.commit(&mut disk).unwrap();
            space.committed();
        }
    }
    // A missing key is never moved and `keep` is not asked.
    let gap = Key::new(1, 1, 3);
    assert!(!model.contains_key(&gap));
    assert!(
        !tree
            .rekey(&mut disk, &mut space, &gap, &Key::new(1, 1, 4), |_| panic!(
                "asked"
            ))
            .unwrap()
    );
    assert!(
        moved > 1000 && between > 100 && declined > 100,
        "{moved} {between} {declined}"
    );
    // Separator refusals happen only at a leaf's end: few.
    assert!(refused < moved / 4, "{refused} refused of {moved}");
    assert_eq!(
        super::scan(&mut disk, &mut tree),
        model.into_iter().collect::<Vec<_>>()
    );
    tree.commit(&mut disk).unwrap();
    space.committed();
    let fresh = MemSpace::rebuild(&mut disk, &mut tree);
    assert_eq!(fresh.used, space.used, "leak or reuse");
}

const N: usize = MIN_FRAMES;
const G: usize = 2;

/// The extent items of `ino`: `(start, end, device block of start)`.
fn extents(fs: &mut Fs<'_, &mut MemDisk, N, G>, ino: Ino) -> Vec<(u64, u64, u64)> {
    let v = fs.volume();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(e) = v.extent_from(ino.0, at).unwrap() {
        out.push(e);
        at = e.1;
    }
    out
}

/// No extent continues the one before it on disk (it would have been grown instead).
fn unmergeable(e: &[(u64, u64, u64)]) {
    for w in e.windows(2) {
        assert!(
            w[0].1 != w[1].0 || w[0].2 + (w[0].1 - w[0].0) != w[1].2,
            "contiguous extents left apart: {e:?}"
        );
    }
}

/// A 1 MiB file written in 128 KiB pieces (a 32-block data buffer) is one extent item,
/// written zero-copy or copying (2 MiB in all); appends after a remount (the leaf committed,
/// so copied first) grow the last item whenever their run continues it; an append whose run
/// does not (another file took the blocks after it) starts a new item. The data reads back, and the bitmaps match the
/// extents.
#[test]
fn appends_grow_the_last_extent_in_place() {
    let mut disk = MemDisk::new(8192);
    let mut m = std::vec![0u8; (volume_frames(N, G) - 1 + 32) * BLOCK_SIZE];
    Fs::<MemDisk, N, G>::mkfs(&mut disk, &mut m, 4096, 1).unwrap();
    let piece = 128 << 10;
    let data: Vec<u8> = (0..(3 << 20) + 2 * piece).map(|i| (i / 13) as u8).collect();
    let (a, b);
    {
        let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
        a = fs.create("/a").unwrap();
        b = fs.create("/b").unwrap();
        for (i, p) in data[..1 << 20].chunks(piece).enumerate() {
            let mut w = fs.write_buffer(a, (i * piece) as u64, piece).unwrap();
            assert_eq!(w.len(), piece);
            w.buf().copy_from_slice(p);
            w.commit().unwrap();
        }
        let e = extents(&mut fs, a);
        assert_eq!(e.len(), 1, "zero-copy: {e:?}");
        assert_eq!((e[0].0, e[0].1), (0, 256));
        for (i, p) in data[1 << 20..2 << 20].chunks(piece).enumerate() {
            assert_eq!(fs.write(a, ((1 << 20) + i * piece) as u64, p), Ok(piece));
        }
        assert_eq!(extents(&mut fs, a).len(), 1, "copying");
        fs.unmount().unwrap();
    }
    let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
    for (i, p) in data[2 << 20..3 << 20].chunks(piece).enumerate() {
        assert_eq!(fs.write(a, ((2 << 20) + i * piece) as u64, p), Ok(piece));
    }
    // (The allocator starts over at a mount, so the first run may land elsewhere.)
    let e = extents(&mut fs, a);
    assert!(
        e.len() <= 4 && e[0] == (0, 512, e[0].2),
        "after a remount: {e:?}"
    );
    unmergeable(&e);
    let last = *e.last().unwrap();
    // Another file takes the blocks right after the run: the next append starts an item.
    assert_eq!(fs.write(b, 0, &data[..BLOCK_SIZE]), Ok(BLOCK_SIZE));
    for (i, p) in data[3 << 20..].chunks(piece).enumerate() {
        assert_eq!(fs.write(a, ((3 << 20) + i * piece) as u64, p), Ok(piece));
    }
    let f = extents(&mut fs, a);
    assert_eq!(f.len(), e.len() + 1, "{f:?}");
    assert_eq!(f[e.len() - 1], last);
    assert_eq!((f[e.len()].0, f[e.len()].1), (768, 832));
    unmergeable(&f);
    let mut back = std::vec![0u8; data.len()];
    assert_eq!(fs.read(a, 0, &mut back), Ok(data.len()));
    assert!(back == data, "file reads back different");
    fs.sync().unwrap();
    verify_volume(fs.volume());
}
