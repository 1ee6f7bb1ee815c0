//! Falling back to the previous generation is never silent: a torn newest superblock, a corrupt
//! block of the newest tree, a damaged older superblock; and a device that refuses writes.

use super::model::SmallFs;
use crate::format::{BLOCK_SIZE, Superblock, seal};
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
use crate::v1::*;

const A: &[u8] = b"written in generation 2";
const B: &[u8] = b"written in generation 3, the newest";

/// Generations 2 (`/a`) and 3 (`/b`): the newest commit adds `/b` and rewrites the inode-table
/// block that holds it. Returns the image and that block of generation 3 (referenced by the
/// newest superblock only).
fn two_generations() -> (Vec<u8>, u64) {
    let mut disk = MemDisk::new(128);
    let mut buf = vec![0u8; 16 * 1024];
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 2,
        })
        .unwrap();
        fs.mount(false).unwrap();
        let a = fs.create("/a").unwrap();
        fs.write(a, 0, A).unwrap();
        fs.sync().unwrap();
        assert_eq!(fs.generation(), 2);
        let b = fs.create("/b").unwrap();
        fs.write(b, 0, B).unwrap();
        fs.sync().unwrap();
        assert_eq!(fs.generation(), 3);
        fs.unmount().unwrap();
    }
    let img = disk.data;
    let (old, new) = (sb(&img, 0), sb(&img, 1));
    assert_eq!((old.generation, new.generation), (2, 3));
    let only_new = new.table[..2]
        .iter()
        .copied()
        .find(|b| !old.table[..2].contains(b))
        .expect("the newest commit rewrote a table block");
    (img, only_new)
}

fn sb(img: &[u8], slot: u64) -> Superblock {
    let b: &[u8; BLOCK_SIZE] = img[slot as usize * BLOCK_SIZE..][..BLOCK_SIZE]
        .try_into()
        .unwrap();
    Superblock::decode(b, slot).unwrap()
}

fn fsck(img: &[u8]) -> (FsckStats, Vec<Problem>) {
    let mut disk = MemDisk { data: img.to_vec() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    let mut problems = Vec::new();
    let st = fs.fsck(&mut |p| problems.push(p)).unwrap();
    assert_eq!(st.problems as usize, problems.len());
    (st, problems)
}

fn read_all<D: BlockIo>(fs: &mut SmallFs<'_, D>, path: &str) -> Vec<u8> {
    let f = fs.open(path).unwrap();
    let mut out = vec![0u8; 256];
    let n = fs.read(f, 0, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
fn corrupt_newest_tree_mounts_read_only_and_fsck_says_rolled_back() {
    let (mut img, block) = two_generations();
    img[block as usize * BLOCK_SIZE + 300] ^= 0x40; // an inode of the newest table block
    let mut disk = MemDisk { data: img.clone() };
    let mut buf = vec![0u8; 16 * 1024];
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        let r = fs.mount(false).unwrap();
        assert_eq!(r.generation, 2, "the previous generation is used");
        assert_eq!(r.mode, Mode::ReadOnly, "not read-write without accepting");
        assert_eq!(fs.mode(), Mode::ReadOnly);
        assert!(r.rollback_refused(MountOptions::default()));
        match r.fell_back_from {
            Some(Fallback::CorruptTree {
                generation: 3,
                block: b,
                ..
            }) if b == block => {}
            other => panic!("{other:?}"),
        }
        assert!(r.to_string().contains("FELL BACK"), "{r}");
        assert_eq!(read_all(&mut fs, "/a"), A);
        assert_eq!(fs.create("/c"), Err(FsError::ReadOnly));
        assert_eq!(fs.unmount(), Ok(()));
    }
    assert!(disk.data == img, "nothing was written");
    let (st, problems) = fsck(&img);
    assert_eq!(st.status, FsckStatus::RolledBackCorrupt);
    assert_eq!(st.status.code(), 3);
    assert_eq!(st.generation, 2);
    assert!(problems.iter().any(|p| p.block == block), "{problems:?}");
    // Accepted: read-write at generation 2, and the rollback is permanent after a commit.
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        let r = fs
            .mount_with(MountOptions {
                read_only: false,
                accept_rollback: true,
            })
            .unwrap();
        assert_eq!((r.generation, r.mode), (2, Mode::ReadWrite));
        assert!(!r.rollback_refused(MountOptions::default()));
        fs.create("/c").unwrap();
        fs.unmount().unwrap();
    }
    let (st, problems) = fsck(&disk.data);
    assert_eq!(st.status, FsckStatus::Clean, "{problems:?}");
    assert_eq!(st.generation, 3);
}

#[test]
fn torn_newest_superblock_falls_back_read_write_and_says_so() {
    let (img, _) = two_generations();
    // The commit record of generation 3 cut after its first sector: the header is new, the
    // rest is whatever was there.
    let mut torn = img.clone();
    for x in &mut torn[BLOCK_SIZE + 512..2 * BLOCK_SIZE] {
        *x = 0;
    }
    let mut disk = MemDisk { data: torn.clone() };
    let mut buf = vec![0u8; 16 * 1024];
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        let r = fs.mount(false).unwrap();
        assert_eq!((r.generation, r.mode), (2, Mode::ReadWrite));
        match r.fell_back_from {
            Some(Fallback::TornSuperblock(BadSlot {
                slot: 1,
                claimed: Some(3),
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(r.damaged_older, None);
        assert!(r.to_string().contains("torn"), "{r}");
        assert_eq!(fs.open("/b"), Err(FsError::NotFound));
        assert_eq!(read_all(&mut fs, "/a"), A);
        fs.unmount().unwrap();
    }
    let (st, problems) = fsck(&torn);
    assert_eq!(st.status, FsckStatus::RolledBackTorn);
    assert_eq!(st.status.code(), 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].block, 1);
    // An unreadable header counts as torn too (it cannot be shown to be older).
    let mut garbage = img.clone();
    for x in &mut garbage[BLOCK_SIZE..2 * BLOCK_SIZE] {
        *x = 0xa5;
    }
    let (st, _) = fsck(&garbage);
    assert_eq!(st.status, FsckStatus::RolledBackTorn);
    assert!(matches!(
        st.fell_back_from,
        Some(Fallback::TornSuperblock(BadSlot { claimed: None, .. }))
    ));
    // The next commit rewrites the slot: clean again.
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        fs.mount(false).unwrap();
        fs.create("/c").unwrap();
        fs.unmount().unwrap();
    }
    let (st, problems) = fsck(&disk.data);
    assert_eq!(st.status, FsckStatus::Clean, "{problems:?}");
}

#[test]
fn damaged_older_superblock_is_a_problem_but_mounts() {
    let (mut img, _) = two_generations();
    img[100] ^= 1; // slot 0: generation 2, the older one
    let (st, problems) = fsck(&img);
    assert_eq!(st.status, FsckStatus::Corrupt);
    assert_eq!(st.status.code(), 1);
    assert_eq!(st.generation, 3);
    assert_eq!(st.fell_back_from, None);
    assert!(matches!(
        st.damaged_older,
        Some(BadSlot {
            slot: 0,
            claimed: Some(2),
            ..
        })
    ));
    assert_eq!(problems.len(), 1);
    let mut disk = MemDisk { data: img };
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    let r = fs.mount(false).unwrap();
    assert_eq!((r.generation, r.mode), (3, Mode::ReadWrite));
    assert_eq!(r.fell_back_from, None);
    assert!(r.damaged_older.is_some());
    assert_eq!(read_all(&mut fs, "/b"), B);
}

#[test]
fn re_sealed_garbage_in_the_newest_superblock_is_a_fallback_too() {
    // A newest superblock whose checksum is right but whose fields are not.
    let (mut img, _) = two_generations();
    let o = BLOCK_SIZE;
    img[o + 40] = 0; // inode_blocks = 0
    let blk: &mut [u8; BLOCK_SIZE] = (&mut img[o..o + BLOCK_SIZE]).try_into().unwrap();
    seal(blk);
    let (st, _) = fsck(&img);
    assert_eq!(st.status, FsckStatus::RolledBackTorn);
    assert_eq!(st.generation, 2);
}

#[test]
fn neither_generation_mounts_when_both_trees_are_bad() {
    let (mut img, _) = two_generations();
    let (old, new) = (sb(&img, 0), sb(&img, 1));
    for t in [old.table[0], new.table[0]] {
        img[t as usize * BLOCK_SIZE + 40] ^= 0xff;
    }
    let mut disk = MemDisk { data: img.clone() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut disk, &mut buf);
    assert!(matches!(fs.mount(true), Err(FsError::Corrupt { .. })));
    let (st, _) = fsck(&img);
    assert_eq!(st.status, FsckStatus::Corrupt);
    assert_eq!(st.generation, 3, "reported against the newest");
}

/// A device that says it is writable but refuses every write as read-only.
struct RefusesWrites(MemDisk);

impl BlockIo for RefusesWrites {
    fn block_count(&self) -> u64 {
        self.0.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.0.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], _: WriteFlags) -> std::result::Result<(), IoError> {
        Err(IoError::new(runs[0].block, IoErrorKind::ReadOnly))
    }
}

/// A device that says it is read-only.
struct ReadOnlyDisk(MemDisk);

impl BlockIo for ReadOnlyDisk {
    fn block_count(&self) -> u64 {
        self.0.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.0.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], _: WriteFlags) -> std::result::Result<(), IoError> {
        Err(IoError::new(runs[0].block, IoErrorKind::ReadOnly))
    }
    fn read_only(&self) -> bool {
        true
    }
}

#[test]
fn read_only_devices_give_typed_errors() {
    let (img, _) = two_generations();
    let mut buf = vec![0u8; 16 * 1024];
    let mut dev = ReadOnlyDisk(MemDisk { data: img.clone() });
    {
        let mut fs = SmallFs::new(&mut dev, &mut buf);
        assert_eq!(fs.mount(false), Err(FsError::DeviceReadOnly));
        assert_eq!(fs.mode(), Mode::Unmounted);
        let r = fs.mount(true).unwrap();
        assert_eq!(r.mode, Mode::ReadOnly);
        assert_eq!(read_all(&mut fs, "/b"), B);
    }
    let mut dev = RefusesWrites(MemDisk { data: img });
    let mut fs = SmallFs::new(&mut dev, &mut buf);
    fs.mount(false).unwrap();
    let f = fs.create("/c").unwrap();
    assert_eq!(fs.fsync(f), Err(FsError::DeviceReadOnly));
    assert_eq!(fs.sync(), Err(FsError::Failed { durable: 3 }));
    assert_eq!(fs.write(f, 0, b"x"), Err(FsError::Failed { durable: 3 }));
    assert_eq!(read_all(&mut fs, "/b"), B, "reads go on");
}

#[test]
fn io_errors_name_the_operation_and_block() {
    let (img, _) = two_generations();
    let e = FsError::io(
        IoOp::WriteInodeTable,
        IoError::new(42, IoErrorKind::Blk(blk::BlkError::Timeout)),
    );
    assert_eq!(
        e.to_string(),
        "I/O error in inode-table write at block 42: block layer error Timeout"
    );
    // A device whose read of the newest table block fails.
    let block = sb(&img, 1).table[1];
    let mut dev = FailsReading(MemDisk { data: img }, block);
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = SmallFs::new(&mut dev, &mut buf);
    let e = fs.mount(true).unwrap_err();
    assert_eq!(
        e,
        FsError::Io {
            op: IoOp::ReadInodeTable,
            block,
            error: IoErrorKind::Device
        }
    );
    assert!(
        e.to_string()
            .contains(&format!("inode-table read at block {block}: device error")),
        "{e}"
    );
}

/// A device whose reads of one block fail.
struct FailsReading(MemDisk, u64);

impl BlockIo for FailsReading {
    fn block_count(&self) -> u64 {
        self.0.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        if block == self.1 {
            return Err(IoError::new(block, IoErrorKind::Device));
        }
        self.0.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], f: WriteFlags) -> std::result::Result<(), IoError> {
        self.0.write(runs, f)
    }
}
