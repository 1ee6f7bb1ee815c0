//! fsck (`v2::check`): each kind of corruption is reported with its block, and a sparse
//! 1 TiB volume is checked reading only its metadata.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::TEST_GROUPS;
use super::space::SparseDisk;
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::v2::check::{MIN_SCRATCH_BLOCKS, Problem, check};
use crate::v2::key::{Key, kind};
use crate::v2::node;
use crate::v2::superblock::GROUP_BLOCKS_MAX;
use crate::v2::volume::{ROOT, volume_frames};
use crate::v2::{Kind, MIN_FRAMES, Volume};

type V<'b, D> = Volume<'b, D, MIN_FRAMES, TEST_GROUPS>;

fn problems(img: &[u8]) -> Vec<Problem> {
    let mut disk = MemDisk { data: img.to_vec() };
    let mut scratch = std::vec![0u8; MIN_SCRATCH_BLOCKS * BLOCK_SIZE];
    let mut found = Vec::new();
    check(&mut disk, &mut scratch, &mut |p| found.push(*p)).unwrap();
    found
}

/// A checksummed volume: directories, files with data (several extents), enough items for
/// a tree of two levels. Returns the image and its nodes `(block, level)`.
fn image() -> (Vec<u8>, Vec<(u64, u8)>) {
    let mut disk = MemDisk::new(1024);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<MemDisk>::mkfs_with(&mut disk, &mut m, 64, 1, true).unwrap();
    let mut nodes = Vec::new();
    {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let d = v.create(ROOT, b"dir", Kind::Dir).unwrap();
        let sub = v.create(d, b"sub", Kind::Dir).unwrap();
        for i in 0..120u64 {
            let parent = [ROOT, d, sub][i as usize % 3];
            let name = std::format!("file-with-a-longer-name-{i}");
            let f = v.create(parent, name.as_bytes(), Kind::File).unwrap();
            if i % 8 == 0 {
                for b in [3u64, 0, 1] {
                    v.write(f, b * 4096, &[i as u8 + 1; 4096]).unwrap();
                }
            }
        }
        v.sync().unwrap();
        v.tree
            .check(&mut v.dev, &mut |b, l| nodes.push((b, l)))
            .unwrap();
    }
    assert!(nodes.iter().any(|&(_, l)| l > 0), "a tree of two levels");
    let img = disk.data;
    assert_eq!(problems(&img), Vec::new(), "the image checks clean");
    (img, nodes)
}

fn block_mut(img: &mut [u8], b: u64) -> &mut [u8] {
    &mut img[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE]
}

/// The leaf and index of the first item `pick` accepts.
fn find(img: &[u8], nodes: &[(u64, u8)], pick: &dyn Fn(Key, &[u8]) -> bool) -> (u64, usize, Key) {
    let mut found = BTreeMap::new();
    for &(b, l) in nodes {
        if l != 0 {
            continue;
        }
        let blk = &img[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE];
        for i in 0..node::nitems(blk) {
            let k = node::key(blk, i);
            if pick(k, node::value(blk, i)) {
                found.insert(k, (b, i));
            }
        }
    }
    let (k, (b, i)) = found.into_iter().next().expect("an item to corrupt");
    (b, i, k)
}

/// Changes the value of item `i` of leaf `b` in place and reseals the leaf.
fn edit(img: &mut [u8], b: u64, i: usize, f: &dyn Fn(&mut [u8])) {
    let blk = block_mut(img, b);
    let v = node::value(blk, i);
    let (off, len) = (v.as_ptr() as usize - blk.as_ptr() as usize, v.len());
    f(&mut blk[off..off + len]);
    node::seal(blk);
}

fn rd64(v: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(v[o..o + 8].try_into().unwrap())
}

fn assert_reported(img: &[u8], want: Problem) {
    let got = problems(img);
    assert!(got.contains(&want), "want {want:?}, got {got:?}");
}

#[test]
fn each_corruption_is_reported_with_its_block() {
    let (img0, nodes) = image();
    let leaf = nodes.iter().find(|&&(_, l)| l == 0).unwrap().0;
    let interior = nodes.iter().find(|&&(_, l)| l > 0).unwrap().0;
    let is = |kd: u8| move |k: Key, _: &[u8]| k.kind == kd;

    // A flipped byte in a node: its checksum.
    let mut img = img0.clone();
    block_mut(&mut img, leaf)[100] ^= 1;
    let got = problems(&img);
    assert!(
        got.iter()
            .any(|p| matches!(p, Problem::Node { block, .. } if *block == leaf)),
        "{got:?}"
    );

    // Both superblocks gone.
    let mut img = img0.clone();
    block_mut(&mut img, 0).fill(0);
    block_mut(&mut img, 1).fill(0);
    assert!(matches!(problems(&img)[..], [Problem::Superblock { .. }]));

    // A selector block that does not validate.
    let sel = (0..2u64)
        .filter_map(|s| {
            crate::v2::Superblock::decode(&img0[s as usize * BLOCK_SIZE..][..BLOCK_SIZE], s).ok()
        })
        .max_by_key(|s| s.generation)
        .unwrap()
        .selectors[0];
    assert_ne!(sel, 0, "a selector block in use");
    let mut img = img0.clone();
    block_mut(&mut img, sel)[200] ^= 1;
    let got = problems(&img);
    assert!(
        got.iter()
            .any(|p| matches!(p, Problem::FreeSpace { block, .. } if *block == sel)),
        "{got:?}"
    );

    // An interior node whose two children are the same node: reachable twice.
    let mut img = img0.clone();
    let blk = block_mut(&mut img, interior);
    assert!(node::nitems(blk) >= 2);
    let c1 = node::child(blk, 1);
    node::set_child(blk, 0, c1);
    node::seal(blk);
    assert_reported(&img, Problem::Shared { block: c1 });

    // A name that does not match its hash.
    let mut img = img0.clone();
    let (b, i, k) = find(&img, &nodes, &is(kind::DIRENT));
    edit(&mut img, b, i, &|v| v[12] ^= 1);
    assert_reported(
        &img,
        Problem::Item {
            block: b,
            key: k,
            what: "name does not match its hash",
        },
    );

    // A wrong link count.
    let mut img = img0.clone();
    let (b, i, k) = find(&img, &nodes, &|k, v| k.kind == kind::INODE && v[0] == 2);
    edit(&mut img, b, i, &|v| v[4] += 1);
    assert_reported(
        &img,
        Problem::Inode {
            ino: k.id,
            block: b,
            what: "wrong link count",
        },
    );

    // A back reference removed: the entry misses it and the inode is an orphan.
    let mut img = img0.clone();
    let (b, i, k) = find(&img, &nodes, &|k, _| {
        k.kind == kind::PARENT && k.id > ROOT + 2
    });
    let blk = block_mut(&mut img, b);
    node::remove_at(blk, i);
    node::seal(blk);
    let got = problems(&img);
    assert!(
        got.iter()
            .any(|p| matches!(p, Problem::Inode { ino, what, .. }
            if *ino == k.id && what.starts_with("orphan"))),
        "{got:?}"
    );
    assert!(
        got.iter().any(|p| matches!(p, Problem::Item { what, .. }
            if *what == "entry without its back reference")),
        "{got:?}"
    );

    // An extent pointing at a tree node: shared with metadata, its own blocks leaked.
    let mut img = img0.clone();
    let (b, i, _) = find(&img, &nodes, &|k, v| {
        k.kind == kind::EXTENT && k.offset - rd64(v, 0) == 1
    });
    let old = rd64(node::value(block_mut(&mut img, b), i), 8);
    edit(&mut img, b, i, &|v| {
        v[8..16].copy_from_slice(&leaf.to_le_bytes())
    });
    let got = problems(&img);
    assert!(got.contains(&Problem::Shared { block: leaf }), "{got:?}");
    assert!(got.contains(&Problem::Leaked { block: old }), "{got:?}");

    // An extent past the end of the filesystem.
    let mut img = img0.clone();
    let (b, i, k) = find(&img, &nodes, &is(kind::EXTENT));
    edit(&mut img, b, i, &|v| {
        v[8..16].copy_from_slice(&5000u64.to_le_bytes())
    });
    assert_reported(
        &img,
        Problem::Item {
            block: b,
            key: k,
            what: "extent outside the filesystem",
        },
    );

    // Two extents of a file overlapping in the file.
    let mut img = img0.clone();
    let (b, i, k) = find(&img, &nodes, &|k, v| {
        k.kind == kind::EXTENT && rd64(v, 0) > 0
    });
    edit(&mut img, b, i, &|v| {
        v[..8].copy_from_slice(&0u64.to_le_bytes())
    });
    assert_reported(
        &img,
        Problem::Item {
            block: b,
            key: k,
            what: "extent overlaps the file's previous one",
        },
    );

    // A data checksum missing.
    let mut img = img0.clone();
    let (cb, ci, ck) = find(&img, &nodes, &is(kind::CSUM));
    edit(&mut img, cb, ci, &|v| v.fill(0));
    let got = problems(&img);
    assert!(
        got.iter()
            .any(|p| matches!(p, Problem::Item { key, what, .. }
            if key.id == ck.id && *what == "mapped block without a data checksum")),
        "{got:?}"
    );

    // Bitmaps: a data block marked free, and a free block marked used (group 0's durable
    // bitmap is the slot the check reads; flip the bit in both slots).
    let (b, i, _) = find(&img0, &nodes, &is(kind::EXTENT));
    let data = rd64(node::value(&img0[b as usize * BLOCK_SIZE..], i), 8);
    let flip = |blk: u64| {
        let mut img = img0.clone();
        let g = blk / 64;
        for slot in [2, 3] {
            let bm = block_mut(&mut img, g * 64 + slot);
            let bit = (blk % 64) as usize;
            bm[node::HDR + bit / 8] ^= 1 << (bit % 8);
            node::seal(bm);
        }
        problems(&img)
    };
    let got = flip(data);
    assert!(
        got.contains(&Problem::MarkedFree { block: data }),
        "{got:?}"
    );
    // The last block of that group that nothing uses: marked used, it is leaked.
    let free = (data / 64 * 64..data / 64 * 64 + 64)
        .rev()
        .find(|&x| !flip(x).contains(&Problem::MarkedFree { block: x }))
        .expect("a free block in the group");
    let got = flip(free);
    assert!(got.contains(&Problem::Leaked { block: free }), "{got:?}");
}

#[test]
fn sparse_tebibyte_checks_reading_only_metadata() {
    let blocks = 1u64 << 28;
    let mut disk = SparseDisk {
        blocks,
        data: BTreeMap::new(),
        reads: 0,
    };
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<SparseDisk>::mkfs_with(&mut disk, &mut m, GROUP_BLOCKS_MAX, 1, true).unwrap();
    {
        let (mut v, _) = V::<&mut SparseDisk>::mount(&mut disk, &mut m, false).unwrap();
        let d = v.create(ROOT, b"d", Kind::Dir).unwrap();
        for i in 0..300u64 {
            let f = v
                .create(d, std::format!("f{i}").as_bytes(), Kind::File)
                .unwrap();
            v.write(f, i * 4096, &[7; 5000]).unwrap();
        }
        v.sync().unwrap();
    }
    disk.reads = 0;
    let r = super::fsck_clean(&mut disk);
    assert_eq!(r.inodes, 302);
    assert!(r.walks <= 3, "{} walks", r.walks);
    assert!(disk.reads < 20_000, "{} reads", disk.reads);
    std::println!("fsck of 1 TiB: {} reads, {:?}", disk.reads, r);
}

#[test]
fn a_loop_of_directories_and_a_bad_newest_root_are_reported() {
    // Directories a (in the root) and b (in a); then a's entry moves from the root into b,
    // link counts adjusted: every item is consistent, but a and b only reach each other.
    let mut disk = MemDisk::new(256);
    let mut m = std::vec![0u8; volume_frames(MIN_FRAMES, TEST_GROUPS) * BLOCK_SIZE];
    V::<MemDisk>::mkfs(&mut disk, &mut m, 64, 1).unwrap();
    let (a, b) = {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let a = v.create(ROOT, b"a", Kind::Dir).unwrap();
        let b = v.create(a, b"b", Kind::Dir).unwrap();
        v.sync().unwrap();
        (a, b)
    };
    let clean = disk.data.clone();
    assert_eq!(problems(&clean), Vec::new());
    {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let off = u64::from(crate::crc::crc32c(b"a")) << 16;
        let mut entry = [0u8; 10];
        v.tree
            .get(&mut v.dev, &Key::new(ROOT, kind::DIRENT, off), &mut entry)
            .unwrap()
            .unwrap();
        v.del(Key::new(ROOT, kind::DIRENT, off)).unwrap();
        v.del(Key::new(a, kind::PARENT, ROOT)).unwrap();
        v.put(Key::new(b, kind::DIRENT, off), &entry).unwrap();
        v.put(Key::new(a, kind::PARENT, b), &off.to_le_bytes())
            .unwrap();
        for (ino, delta) in [(ROOT, -1i32), (b, 1)] {
            let mut i = v.stat(ino).unwrap();
            i.nlink = i.nlink.wrapping_add_signed(delta);
            v.put_inode(ino, &i).unwrap();
        }
        v.sync().unwrap();
    }
    let got = problems(&disk.data);
    assert!(
        got.iter().any(|p| matches!(p, Problem::Inode { what, .. }
            if what.contains("loop"))),
        "{got:?}"
    );
    assert!(
        got.iter().all(|p| matches!(p, Problem::Inode { .. })),
        "{got:?}"
    );

    // The newest superblock's root overwritten: the older tree is checked, the newest slot
    // reported.
    let mut img = clean.clone();
    let mut sb = [None, None];
    for s in 0..2u64 {
        sb[s as usize] = crate::v2::Superblock::decode(block_mut(&mut img, s), s).ok();
    }
    let newest = sb.iter().flatten().max_by_key(|s| s.generation).unwrap();
    let slot = crate::v2::Superblock::slot_of(newest.generation);
    block_mut(&mut img, newest.root).fill(0xA5);
    let got = problems(&img);
    assert!(
        got.iter()
            .any(|p| matches!(p, Problem::Superblock { block, .. } if *block == slot)),
        "{got:?}"
    );
}

#[test]
fn fsync_log_is_followed_and_its_bad_records_reported() {
    // A volume left with two fsync log blocks (never committed): fsck counts them and finds
    // nothing; a record naming a missing inode, a range over a bitmap slot and a range past
    // the end (each re-sealed, so the block still belongs to the chain) are reported with the
    // log block's number; a torn log block just ends the chain.
    let mut disk = MemDisk::new(1024);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<MemDisk>::mkfs_with(&mut disk, &mut m, 64, 1, false).unwrap();
    {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let f = v.create(ROOT, b"f", Kind::File).unwrap();
        v.write(f, 0, &[1; 9000]).unwrap();
        v.sync().unwrap();
        v.write(f, 4096, &[2; 100]).unwrap();
        v.fsync(f).unwrap();
        v.write(f, 20_000, &[3; 100]).unwrap();
        v.fsync(f).unwrap();
        assert_eq!(v.fsync_stats(), (2, 0));
    }
    let img = disk.data;
    let mut disk = MemDisk { data: img.clone() };
    let r = super::fsck_clean(&mut disk);
    assert_eq!((r.log_blocks, r.log_records), (2, 4));
    let sb = crate::v2::superblock::Superblock::decode(&img[..BLOCK_SIZE], 0)
        .or_else(|_| crate::v2::superblock::Superblock::decode(&img[BLOCK_SIZE..2 * BLOCK_SIZE], 1))
        .unwrap();
    let head = sb.log_root;
    let reseal = |b: &mut [u8]| {
        let end = u16::from_le_bytes([b[30], b[31]]) as usize;
        let c = crate::crc::crc32c(&b[..end]);
        b[end..end + 4].copy_from_slice(&c.to_le_bytes());
    };
    // The head's first record (at LOG_HDR, 56) is a range (tag 2): ino at 57, first block at
    // 65, count at 73, device block at 77.
    assert_eq!(img[head as usize * BLOCK_SIZE + crate::v2::log::LOG_HDR], 2);
    for (o, v, what) in [
        (57usize, 999u64, "log record of an inode that is not a file"),
        (77, 66, "log range over a superblock or bitmap slot"),
        (77, 1023, "log range outside the filesystem"),
    ] {
        let mut bad = img.clone();
        let blk = block_mut(&mut bad, head);
        blk[o..o + 8].copy_from_slice(&v.to_le_bytes());
        if o == 77 {
            blk[73..77].copy_from_slice(&2u32.to_le_bytes());
        }
        reseal(blk);
        let found = problems(&bad);
        assert!(
            found.contains(&Problem::Log { block: head, what }),
            "{what}: {found:?}"
        );
        // Mount refuses what fsck reports (no panic), or replays without harm.
        let mut d = MemDisk { data: bad };
        let _ = V::<&mut MemDisk>::mount(&mut d, &mut m, false);
    }
    let mut torn = img.clone();
    block_mut(&mut torn, head)[68] ^= 1;
    let mut d = MemDisk { data: torn };
    let r = super::fsck_clean(&mut d);
    assert_eq!(r.log_blocks, 0, "a block failing its CRC ends the chain");
}

#[test]
fn fsync_log_creations_are_checked() {
    // A file created since the last commit and fsynced twice: the first log block carries its
    // creation (the second only its range and inode), and fsck counts the records and finds
    // nothing. A creation record changed (re-sealed) so that replay would refuse it is
    // reported with the log block, and the mount refuses it too.
    let mut disk = MemDisk::new(1024);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<MemDisk>::mkfs_with(&mut disk, &mut m, 64, 1, false).unwrap();
    let (d, f) = {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let d = v.create(ROOT, b"d", Kind::Dir).unwrap();
        let f = v.create(ROOT, b"f", Kind::File).unwrap();
        v.sync().unwrap();
        let g = v.create(ROOT, b"g", Kind::File).unwrap();
        v.write(g, 0, &[1; 5000]).unwrap();
        v.fsync(g).unwrap();
        v.write(g, 9000, &[2; 100]).unwrap();
        v.fsync(g).unwrap();
        assert_eq!(v.fsync_stats(), (2, 0));
        (d, f)
    };
    let img = disk.data;
    let mut disk = MemDisk { data: img.clone() };
    let r = super::fsck_clean(&mut disk);
    assert_eq!((r.log_blocks, r.log_records), (2, 5));
    let sb = crate::v2::superblock::Superblock::decode(&img[..BLOCK_SIZE], 0)
        .or_else(|_| crate::v2::superblock::Superblock::decode(&img[BLOCK_SIZE..2 * BLOCK_SIZE], 1))
        .unwrap();
    let head = sb.log_root;
    let reseal = |b: &mut [u8]| {
        let end = u16::from_le_bytes([b[30], b[31]]) as usize;
        let c = crate::crc::crc32c(&b[..end]);
        b[end..end + 4].copy_from_slice(&c.to_le_bytes());
    };
    // The head's first record (at LOG_HDR, 56) is the creation (tag 3): inode at 57,
    // directory at 65, entry offset at 73, the file's inode item at 81, the directory's at
    // 121, the name's length at 161 and the name at 162.
    let h = &img[head as usize * BLOCK_SIZE..];
    assert_eq!(crate::v2::log::LOG_HDR, 56);
    assert_eq!((h[56], h[161], h[162]), (3, 1, b'g'));
    let f_slot = (crate::crc::crc32c(b"f") as u64) << 16;
    let in_f_slot = move |b: &mut [u8]| {
        b[162] = b'f';
        b[73..81].copy_from_slice(&f_slot.to_le_bytes());
    };
    let after_f_slot = move |b: &mut [u8]| {
        b[162] = b'f';
        b[73..81].copy_from_slice(&(f_slot | 1).to_le_bytes());
    };
    type Case<'a> = (&'a dyn Fn(&mut [u8]), &'static str);
    let cases: [Case<'_>; 7] = [
        (
            &|b| b[162] = b'h',
            "log creation with a name not matching its entry",
        ),
        (&in_f_slot, "log creation in an entry slot in use"),
        (&after_f_slot, "log creation of a name in use"),
        (
            &move |b: &mut [u8]| b[57..65].copy_from_slice(&f.to_le_bytes()),
            "log creation of an inode number in use",
        ),
        (
            &move |b: &mut [u8]| b[65..73].copy_from_slice(&d.to_le_bytes()),
            "log creation in a directory that changed",
        ),
        (&|b| b[125] += 1, "log creation in a directory that changed"),
        (&|b| b[81] = 2, "log creation with inodes of the wrong kind"),
    ];
    for (change, what) in cases {
        let mut bad = img.clone();
        let blk = block_mut(&mut bad, head);
        change(blk);
        reseal(blk);
        let found = problems(&bad);
        assert!(
            found.contains(&Problem::Log { block: head, what }),
            "{what}: {found:?}"
        );
        let mut dd = MemDisk { data: bad };
        let mounted = V::<&mut MemDisk>::mount(&mut dd, &mut m, false);
        assert!(
            matches!(mounted, Err(crate::FsError::Corrupt { .. })),
            "{what}: {:?}",
            mounted.map(|_| ())
        );
    }
}

#[test]
fn a_log_block_of_another_filesystem_ends_the_chain() {
    // Three log blocks; one whose identity is another filesystem's (re-sealed, so nothing
    // else is wrong with it) ends the chain for fsck and mount alike: the blocks before it
    // count and are replayed, it and the ones after are not.
    let mut disk = MemDisk::new(1024);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<MemDisk>::mkfs_with(&mut disk, &mut m, 64, 1, false).unwrap();
    let f = {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        let f = v.create(ROOT, b"f", Kind::File).unwrap();
        v.write(f, 0, &[1; 3 * BLOCK_SIZE]).unwrap();
        v.sync().unwrap();
        for i in 0..3u8 {
            v.write(f, i as u64 * BLOCK_SIZE as u64, &[i + 2; 100])
                .unwrap();
            v.fsync(f).unwrap();
        }
        assert_eq!(v.fsync_stats(), (3, 0));
        f
    };
    let img = disk.data;
    let sb = crate::v2::superblock::Superblock::decode(&img[..BLOCK_SIZE], 0)
        .or_else(|_| crate::v2::superblock::Superblock::decode(&img[BLOCK_SIZE..2 * BLOCK_SIZE], 1))
        .unwrap();
    // The chain: the head, then each block's `next` (bytes 40..48); the identity at 48..56.
    let mut chain = std::vec![sb.log_root];
    for _ in 0..2 {
        let b = &img[*chain.last().unwrap() as usize * BLOCK_SIZE..];
        chain.push(u64::from_le_bytes(b[40..48].try_into().unwrap()));
    }
    for &at in &chain {
        let b = &img[at as usize * BLOCK_SIZE..];
        assert_eq!(u64::from_le_bytes(b[48..56].try_into().unwrap()), sb.fsid);
    }
    let mut d = MemDisk { data: img.clone() };
    assert_eq!(super::fsck_clean(&mut d).log_blocks, 3);
    for (k, &at) in chain.iter().enumerate() {
        let mut bad = img.clone();
        let blk = block_mut(&mut bad, at);
        blk[48..56].copy_from_slice(&(sb.fsid ^ 1 << 40).to_le_bytes());
        let end = u16::from_le_bytes([blk[30], blk[31]]) as usize;
        let c = crate::crc::crc32c(&blk[..end]);
        blk[end..end + 4].copy_from_slice(&c.to_le_bytes());
        let mut d = MemDisk { data: bad };
        assert_eq!(super::fsck_clean(&mut d).log_blocks, k as u64, "block {k}");
        let (mut v, info) = V::<&mut MemDisk>::mount(&mut d, &mut m, false).unwrap();
        assert_eq!(info.replayed, k as u32, "block {k}");
        let mut b = [0u8; 3 * BLOCK_SIZE];
        assert_eq!(v.read(f, 0, &mut b).unwrap(), 3 * BLOCK_SIZE);
        for (i, blk) in b.chunks(BLOCK_SIZE).enumerate() {
            let want = if i < k { i as u8 + 2 } else { 1 };
            assert_eq!(blk[0], want, "block {k}: file block {i}");
        }
        v.sync().unwrap();
        super::fsck_clean(&mut d);
    }
}

#[test]
fn fsync_log_creating_one_name_twice_is_reported() {
    // Two files created since the last commit, each fsynced (a creation record heads each log
    // block). The second record changed to create the first one's name in the next slot of
    // its hash: replay refuses it (the name is in use by then), and fsck says so.
    let mut disk = MemDisk::new(1024);
    let mut m = std::vec![0u8; (volume_frames(MIN_FRAMES, TEST_GROUPS) + 3) * BLOCK_SIZE];
    V::<MemDisk>::mkfs_with(&mut disk, &mut m, 64, 1, false).unwrap();
    {
        let (mut v, _) = V::<&mut MemDisk>::mount(&mut disk, &mut m, false).unwrap();
        v.create(ROOT, b"d", Kind::Dir).unwrap();
        v.sync().unwrap();
        for name in [b"g", b"h"] {
            let f = v.create(ROOT, name, Kind::File).unwrap();
            v.write(f, 0, &[7; 100]).unwrap();
            v.fsync(f).unwrap();
        }
        assert_eq!(v.fsync_stats(), (2, 0));
    }
    let img = disk.data;
    let mut clean = MemDisk { data: img.clone() };
    assert_eq!(super::fsck_clean(&mut clean).log_blocks, 2);
    // The newest commit record names the chain.
    let sb = [0usize, 1]
        .iter()
        .filter_map(|&i| {
            crate::v2::superblock::Superblock::decode(
                &img[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
                i as u64,
            )
            .ok()
        })
        .max_by_key(|sb| sb.generation)
        .unwrap();
    let head = sb.log_root;
    let first = crate::v2::log::validate(
        &img[head as usize * BLOCK_SIZE..(head as usize + 1) * BLOCK_SIZE],
        head,
        &sb,
        1,
    )
    .unwrap();
    let second = first.next;
    let b = &img[second as usize * BLOCK_SIZE..];
    // The creation record (tag 3) first, its name's length at 161 and the name at 162, the
    // entry offset at 73 (as in `fsync_log_creations_are_checked`).
    assert_eq!((b[56], b[161], b[162]), (3, 1, b'h'));
    let g_next_slot = ((crate::crc::crc32c(b"g") as u64) << 16) | 1;
    let mut bad = img.clone();
    let blk = block_mut(&mut bad, second);
    blk[162] = b'g';
    blk[73..81].copy_from_slice(&g_next_slot.to_le_bytes());
    let end = u16::from_le_bytes([blk[30], blk[31]]) as usize;
    let c = crate::crc::crc32c(&blk[..end]);
    blk[end..end + 4].copy_from_slice(&c.to_le_bytes());
    let what = "log creates one name in two entry slots";
    let found = problems(&bad);
    assert!(
        found.contains(&Problem::Log {
            block: second,
            what
        }),
        "{found:?}"
    );
    let mut dd = MemDisk { data: bad };
    let mounted = V::<&mut MemDisk>::mount(&mut dd, &mut m, false);
    assert!(
        matches!(mounted, Err(crate::FsError::Corrupt { .. })),
        "{:?}",
        mounted.map(|_| ())
    );
}
