//! The path API ([`crate::v2::Fs`]): version 1's model-based test run against version 2
//! (the same random steps and comparison, through the shared `ModelFs` trait), with
//! remounts that drop the open transaction, and the API's own details (stat, statfs,
//! readdir sizes, read-only refusals, path edge cases).

use std::vec::Vec;

use super::verify_volume;
use crate::FsError;
use crate::format::{BLOCK_SIZE, Kind};
use crate::host::MemDisk;
use crate::io::BlockIo;
use crate::tests::model::{History, Model, ModelFs, compare, durable_step};
use crate::tests::{Rng, scale};
use crate::v2::volume::volume_frames;
use crate::v2::{Fs, Ino, MIN_FRAMES};

const N: usize = MIN_FRAMES;
const G: usize = 2;

fn mem() -> Vec<u8> {
    mem_with(1)
}

/// Memory for a volume whose data buffer holds `buf` blocks.
fn mem_with(buf: usize) -> Vec<u8> {
    std::vec![0u8; (volume_frames(N, G) - 1 + buf) * BLOCK_SIZE]
}

impl<D: BlockIo> ModelFs for Fs<'_, D, N, G> {
    type Ino = Ino;
    fn root(&self) -> Ino {
        Ino::ROOT
    }
    fn create(&mut self, p: &str) -> crate::Result<Ino> {
        Fs::create(self, p)
    }
    fn mkdir(&mut self, p: &str) -> crate::Result<Ino> {
        Fs::mkdir(self, p)
    }
    fn open(&mut self, p: &str) -> crate::Result<Ino> {
        Fs::open(self, p)
    }
    fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> crate::Result<usize> {
        Fs::write(self, ino, off, data)
    }
    /// Version 1's zero-copy write on version 2: regions filled in place and committed,
    /// sometimes one abandoned first (twice: the free count must not change).
    fn zero_copy_write(&mut self, rng: &mut Rng, ino: Ino, off: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            if rng.chance(10) {
                let before = self.statfs().unwrap().free_blocks;
                let mut w = self.write_buffer(ino, at, data.len() - done).unwrap();
                w.buf().fill(0xee);
                drop(w);
                assert_eq!(
                    self.statfs().unwrap().free_blocks,
                    before,
                    "abandoned region kept blocks"
                );
            }
            let mut w = self.write_buffer(ino, at, data.len() - done).unwrap();
            let n = w.len();
            assert!(n > 0 && n <= data.len() - done);
            assert_eq!(w.offset(), at);
            w.buf().copy_from_slice(&data[done..done + n]);
            assert_eq!(w.commit().unwrap(), n);
            done += n;
        }
    }
    fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> crate::Result<usize> {
        // Reads into buffers of even length copy, odd ones go through the zero-copy path.
        if out.len().is_multiple_of(2) {
            return Fs::read(self, ino, off, out);
        }
        let mut done = 0;
        loop {
            let src = self.read_buffer(ino, off + done as u64, out.len() - done)?;
            if src.is_empty() {
                return Ok(done);
            }
            out[done..done + src.len()].copy_from_slice(src);
            done += src.len();
        }
    }
    fn append(&mut self, ino: Ino, data: &[u8]) -> crate::Result<u64> {
        Fs::append(self, ino, data)
    }
    fn truncate(&mut self, ino: Ino, size: u64) -> crate::Result<()> {
        Fs::truncate(self, ino, size)
    }
    fn unlink(&mut self, p: &str) -> crate::Result<()> {
        Fs::unlink(self, p)
    }
    fn rmdir(&mut self, p: &str) -> crate::Result<()> {
        Fs::rmdir(self, p)
    }
    fn rename(&mut self, from: &str, to: &str) -> crate::Result<()> {
        Fs::rename(self, from, to)
    }
    fn sync(&mut self) -> crate::Result<()> {
        Fs::sync(self)
    }
    fn fsync(&mut self, ino: Ino) -> crate::Result<()> {
        Fs::fsync(self, ino)
    }
    fn readdir(
        &mut self,
        dir: Ino,
        cookie: u64,
    ) -> crate::Result<Option<(Vec<u8>, Ino, Kind, u64)>> {
        Ok(Fs::readdir(self, dir, cookie)?
            .map(|(e, next)| (e.name().to_vec(), e.ino, e.kind, next)))
    }
}

/// Version 1's model test on version 2 (odd seeds with an 8-block data buffer, so writes go
/// out in runs, even seeds with one block; seeds 2 and 3 modulo 4 with data checksums): 80
/// random steps per round (`fsync`s among them), compared after each; a round ends by
/// unmounting (a commit) or by a crash (the instance dropped: what the device holds is the
/// last commit and the fsync log), after which fsck must find the image clean and the
/// mounted filesystem must be a state the [`History`] allows (an `fsync`ed file keeps its
/// bytes as of the `fsync`); bitmaps are checked against the tree and every extent at each
/// remount.
#[test]
fn v1_model_on_v2() {
    let (mut crashes, mut mattered) = (0, 0);
    for seed in 0..(8 * scale()) {
        let mut rng = Rng::new(seed + 1);
        let mut disk = MemDisk::new(4096);
        let mut m = mem_with(if seed % 2 == 1 { 8 } else { 1 });
        let csum = seed % 4 >= 2;
        Fs::<MemDisk, N, G>::mkfs_with(&mut disk, &mut m, 256, 1, csum).unwrap();
        let mut model = Model::default();
        let mut crashed: Option<History> = None;
        for round in 0..8 {
            if crashed.is_some() {
                super::fsck_clean(&mut disk);
            }
            let (mut fs, info) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
            assert!(!info.rolled_back);
            if let Some(mut h) = crashed.take() {
                model = h
                    .after_crash(&mut fs)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
                crashes += h.crashes;
                mattered += h.fsync_mattered;
            }
            verify_volume(fs.volume());
            compare(&mut fs, &model)
                .unwrap_or_else(|e| panic!("seed {seed} round {round} after remount: {e}"));
            let mut h = History::new(&model);
            for i in 0..80 {
                durable_step(&mut rng, &mut fs, &mut model, &mut h);
                compare(&mut fs, &model)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} step {i}: {e}"));
            }
            if rng.chance(50) {
                fs.unmount().unwrap();
            } else {
                // The instance goes out of scope without a commit.
                crashed = Some(h);
            }
        }
    }
    // Some crashes kept fsynced bytes that no commit had: the log was exercised.
    assert!(
        mattered > 0 && crashes > mattered,
        "{mattered} of {crashes}"
    );
}

#[test]
fn api_details() {
    let mut disk = MemDisk::new(2048);
    let mut m = mem();
    Fs::<MemDisk, N, G>::mkfs(&mut disk, &mut m, 256, 5).unwrap();
    {
        let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
        fs.set_clock(7);
        let free0 = fs.statfs().unwrap().free_blocks;
        let d = fs.mkdir("/d").unwrap();
        let f = fs.create("d//f").unwrap();
        assert_eq!(fs.open("/d/f/"), Ok(f));
        assert_eq!(fs.open("/"), Ok(Ino::ROOT));
        assert_eq!(fs.create("/d/f/x"), Err(FsError::NotDir));
        assert_eq!(fs.create("/nope/x"), Err(FsError::NotFound));
        assert_eq!(fs.unlink("/"), Err(FsError::InvalidName));
        assert_eq!(fs.rmdir("/d"), Err(FsError::NotEmpty));
        assert_eq!(fs.unlink("/d"), Err(FsError::IsDir));
        assert_eq!(fs.rmdir("/d/f"), Err(FsError::NotDir));
        assert_eq!(fs.rename("/d", "/d/e"), Err(FsError::InvalidArgument));
        assert_eq!(fs.fsync(d), Err(FsError::IsDir));
        let name = "n".repeat(255);
        assert!(fs.create(&format!("/{name}")).is_ok());
        assert_eq!(fs.create(&format!("/{name}x")), Err(FsError::NameTooLong));
        // Three blocks and a hole: blocks counts the allocated ones.
        fs.write(f, 0, &[1u8; 8192]).unwrap();
        assert_eq!(fs.append(f, &[2u8; 100]), Ok(8192));
        fs.write(f, 5 * 4096, &[3u8; 10]).unwrap();
        let st = fs.stat_path("/d/f").unwrap();
        assert_eq!(
            (st.ino, st.kind, st.size, st.blocks),
            (f, Kind::File, 5 * 4096 + 10, 4)
        );
        assert_eq!((st.mtime, st.nlink), (7, 1));
        assert_eq!(fs.stat(d).unwrap().kind, Kind::Dir);
        let (e, _) = fs.readdir(d, 0).unwrap().unwrap();
        assert_eq!((e.name(), e.ino, e.size), (&b"f"[..], f, 5 * 4096 + 10));
        assert_eq!(fs.readdir(f, 0).map(|r| r.is_some()), Err(FsError::NotDir));
        let sf = fs.statfs().unwrap();
        assert_eq!(sf.blocks, 2048);
        assert_eq!(sf.inodes_used, 4);
        assert!(sf.free_blocks + 4 <= free0, "{} {free0}", sf.free_blocks);
        fs.fsync(f).unwrap();
        let g = fs.generation();
        assert_eq!(fs.statfs().unwrap().generation, g);
        // Frees count once committed.
        fs.unlink("/d/f").unwrap();
        fs.sync().unwrap();
        assert_eq!(fs.generation(), g + 1);
        assert_eq!(fs.stat(f), Err(FsError::NotFound));
        fs.unmount().unwrap();
    }
    let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, true).unwrap();
    assert_eq!(fs.stat_path("/d").unwrap().nlink, 2);
    assert_eq!(fs.create("/x"), Err(FsError::ReadOnly));
    assert_eq!(fs.rename("/d", "/e"), Err(FsError::ReadOnly));
    assert_eq!(fs.sync(), Err(FsError::ReadOnly));
    let d = fs.open("/d").unwrap();
    assert!(fs.readdir(d, 0).unwrap().is_none());
    // The volume underneath refuses too, before writing anything.
    let f = fs.open(&format!("/{}", "n".repeat(255))).unwrap();
    let img = fs.device().data.clone();
    assert_eq!(
        fs.volume().write(f.0, 0, &[1; 9000]),
        Err(FsError::ReadOnly)
    );
    assert_eq!(fs.volume().truncate(f.0, 0), Err(FsError::ReadOnly));
    assert!(fs.volume().write_buffer(f.0, 0, 10).is_err());
    assert!(fs.device().data == img, "a read-only volume wrote");
}

/// A device that counts data-sized I/Os.
struct Counting {
    disk: MemDisk,
    /// Blocks of each write call.
    writes: Vec<usize>,
    reads: usize,
}

impl BlockIo for Counting {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), crate::io::IoError> {
        self.reads += 1;
        self.disk.read(block, buf)
    }
    fn write(
        &mut self,
        runs: &[crate::io::Run<'_>],
        flags: crate::io::WriteFlags,
    ) -> Result<(), crate::io::IoError> {
        self.writes
            .push(runs.iter().map(|r| r.data.len() / BLOCK_SIZE).sum());
        self.disk.write(runs, flags)
    }
}

/// Extent items of `ino`: `(start, end, device block)`.
fn extents<D: BlockIo>(fs: &mut Fs<'_, D, N, G>, ino: Ino) -> Vec<(u64, u64, u64)> {
    use crate::v2::key::{Key, kind};
    let v = fs.volume();
    let mut out = Vec::new();
    let mut from = Key::new(ino.0, kind::EXTENT, 0);
    let mut b = [0u8; 16];
    while let Some((k, _)) = v.tree.next(&mut v.dev, &from, &mut b).unwrap() {
        if k.id != ino.0 || k.kind != kind::EXTENT {
            break;
        }
        let s = u64::from_le_bytes(b[..8].try_into().unwrap());
        let p = u64::from_le_bytes(b[8..].try_into().unwrap());
        out.push((s, k.offset, p));
        from = k.successor().unwrap();
    }
    out
}

/// Sequential writes go out in runs: with a 16-block buffer, a 1 MiB write (256 blocks) on an
/// empty filesystem is 16 data I/Os of 16 contiguous blocks, each mapped by one extent (or
/// merged into the one before); a zero-copy read lends 16 blocks read in one I/O per extent
/// piece; a copying read of the whole file reads no more than one I/O per extent per buffer.
#[test]
fn sequential_writes_use_runs() {
    let mut dev = Counting {
        disk: MemDisk::new(8192),
        writes: Vec::new(),
        reads: 0,
    };
    let mut m = mem_with(16);
    Fs::<Counting, N, G>::mkfs(&mut dev, &mut m, 4096, 1).unwrap();
    let (mut fs, _) = Fs::<&mut Counting, N, G>::mount(&mut dev, &mut m, false).unwrap();
    let f = fs.create("/big").unwrap();
    let data: Vec<u8> = (0..256 * BLOCK_SIZE).map(|i| (i / 7) as u8).collect();
    fs.device().writes.clear();
    assert_eq!(fs.write(f, 0, &data), Ok(data.len()));
    let data_writes: Vec<usize> = fs
        .device()
        .writes
        .iter()
        .copied()
        .filter(|&n| n > 1)
        .collect();
    assert_eq!(
        data_writes,
        std::vec![16; 16],
        "data I/Os: {:?}",
        fs.device().writes
    );
    let ext = extents(&mut fs, f);
    assert!(ext.len() <= 16, "{} extents", ext.len());
    assert!(ext.iter().all(|&(s, e, _)| e - s >= 16), "{ext:?}");
    assert_eq!(fs.stat(f).unwrap().blocks, 256);
    // Zero-copy read: the buffer is lent, at most 16 blocks, right bytes.
    fs.sync().unwrap();
    fs.device().reads = 0;
    let src = fs.read_buffer(f, 100, usize::MAX).unwrap();
    assert_eq!(src.len(), 16 * BLOCK_SIZE - 100);
    assert_eq!(src, &data[100..16 * BLOCK_SIZE]);
    let r = fs.device().reads;
    assert!(r <= 2 + 3, "{r} reads for one extent");
    let mut out = std::vec![0u8; data.len()];
    fs.device().reads = 0;
    assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
    assert_eq!(out, data);
    let r = fs.device().reads;
    assert!(r <= 16 * 2 + 3 * 32, "{r} reads");
    // An unaligned zero-copy overwrite across blocks keeps the bytes around it.
    let mut w = fs.write_buffer(f, 4000, 10_000).unwrap();
    assert_eq!(w.len(), 10_000);
    w.buf().fill(0xab);
    w.commit().unwrap();
    let mut want = data.clone();
    want[4000..14_000].fill(0xab);
    assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
    assert!(out == want, "zero-copy overwrite");
    // Abandoned: nothing changes, the blocks come back.
    let free = fs.statfs().unwrap().free_blocks;
    let mut w = fs.write_buffer(f, 0, 40_000).unwrap();
    w.buf().fill(0xcd);
    drop(w);
    assert_eq!(fs.statfs().unwrap().free_blocks, free);
    assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
    assert!(out == want, "abandoned region changed the file");
    fs.unmount().unwrap();
    let (mut fs, _) = Fs::<&mut Counting, N, G>::mount(&mut dev, &mut m, false).unwrap();
    assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
    assert!(out == want, "after remount");
    super::verify_volume(fs.volume());
}

/// Data checksums: a flipped byte in a data block is `DataChecksum` naming that block, on a
/// copying read, a zero-copy read and a partial overwrite (which must not re-checksum the bad
/// block); the other blocks read fine; a whole-block overwrite replaces it. Without checksums
/// the same flip reads back silently. Checksum items go with the file (truncate, unlink,
/// rename over it).
#[test]
fn data_checksums_catch_a_flipped_byte() {
    for csum in [true, false] {
        let mut disk = MemDisk::new(2048);
        let mut m = mem_with(4);
        Fs::<MemDisk, N, G>::mkfs_with(&mut disk, &mut m, 256, 1, csum).unwrap();
        let data: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        let (f, bad) = {
            let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
            assert_eq!(fs.volume().data_checksums(), csum);
            let f = fs.create("/f").unwrap();
            fs.write(f, 0, &data).unwrap();
            let ext = extents(&mut fs, f);
            assert_eq!(ext.len(), 1);
            fs.unmount().unwrap();
            (f, ext[0].2 + 1)
        };
        disk.data[bad as usize * BLOCK_SIZE + 17] ^= 0x40;
        let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
        let mut out = std::vec![0u8; data.len()];
        if !csum {
            assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
            assert_ne!(out, data);
            continue;
        }
        let err = Err(FsError::DataChecksum { block: bad });
        assert_eq!(fs.read(f, 0, &mut out), err);
        assert_eq!(
            fs.read_buffer(f, BLOCK_SIZE as u64, 10).map(|b| b.len()),
            err
        );
        assert_eq!(fs.read(f, 0, &mut out[..BLOCK_SIZE]), Ok(BLOCK_SIZE));
        assert_eq!(out[..BLOCK_SIZE], data[..BLOCK_SIZE]);
        assert_eq!(fs.read(f, 2 * BLOCK_SIZE as u64, &mut out[..10]), Ok(10));
        assert_eq!(fs.write(f, BLOCK_SIZE as u64 + 5, &[1, 2, 3]), err);
        assert_eq!(fs.read(f, 0, &mut out), err);
        fs.write(f, BLOCK_SIZE as u64, &data[BLOCK_SIZE..2 * BLOCK_SIZE])
            .unwrap();
        assert_eq!(fs.read(f, 0, &mut out), Ok(data.len()));
        assert!(out == data);
        // Checksum items leave with the file's blocks.
        let csums = |fs: &mut Fs<'_, &mut MemDisk, N, G>, ino: Ino| {
            use crate::v2::key::{Key, kind};
            let v = fs.volume();
            let at = Key::new(ino.0, kind::CSUM, 0);
            matches!(v.tree.next(&mut v.dev, &at, &mut []).unwrap(),
                Some((k, _)) if k.id == ino.0 && k.kind == kind::CSUM)
        };
        assert!(csums(&mut fs, f));
        let g = fs.create("/g").unwrap();
        fs.write(g, 300 * BLOCK_SIZE as u64, &[9]).unwrap();
        fs.truncate(g, 10).unwrap();
        assert!(!csums(&mut fs, g), "truncate kept checksum items");
        fs.write(g, 0, &[7; 5000]).unwrap();
        fs.rename("/g", "/f").unwrap();
        assert!(
            !csums(&mut fs, f),
            "rename over a file kept its checksum items"
        );
        assert!(
            extents(&mut fs, f).is_empty(),
            "rename over a file kept its extents"
        );
        fs.unlink("/f").unwrap();
        assert!(!csums(&mut fs, g) && extents(&mut fs, g).is_empty());
        fs.unmount().unwrap();
        let (mut fs, _) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
        super::verify_volume(fs.volume());
    }
}

/// `readdir` streams: listing a directory of 20,000 entries through the path API with the
/// fewest node frames returns every entry once, in increasing cookie order, and resuming at
/// a cookie costs a bounded number of block reads (one descent for the entry, one for its
/// inode), not a scan from the start; the listing's state is the cookie alone.
#[test]
fn readdir_streams_a_large_directory() {
    let files = 20_000u64;
    let mut dev = Counting {
        disk: MemDisk::new(4096),
        writes: Vec::new(),
        reads: 0,
    };
    let mut m = mem();
    Fs::<Counting, N, G>::mkfs(&mut dev, &mut m, 4096, 1).unwrap();
    let (mut fs, _) = Fs::<&mut Counting, N, G>::mount(&mut dev, &mut m, false).unwrap();
    let d = fs.mkdir("/d").unwrap();
    for i in 0..files {
        fs.create(&format!("/d/f{i}")).unwrap();
    }
    fs.unmount().unwrap();
    let (mut fs, _) = Fs::<&mut Counting, N, G>::mount(&mut dev, &mut m, false).unwrap();
    fs.device().reads = 0;
    let mut seen = std::vec![false; files as usize];
    let (mut cookie, mut n, mut worst) = (0u64, 0u64, 0usize);
    loop {
        let before = fs.device().reads;
        let Some((e, next)) = fs.readdir(d, cookie).unwrap() else {
            break;
        };
        worst = worst.max(fs.device().reads - before);
        assert!(next > cookie, "cookie went back");
        cookie = next;
        let name = core::str::from_utf8(e.name()).unwrap();
        let i: usize = name.strip_prefix('f').unwrap().parse().unwrap();
        assert!(!seen[i], "{name} listed twice");
        seen[i] = true;
        n += 1;
    }
    assert_eq!(n, files);
    let reads = fs.device().reads;
    // Two descents per entry at most (the entry, its inode), each reading at most the tree's
    // height in blocks; in practice the path stays cached and most entries read one leaf.
    let height = fs.volume().tree.height() as usize;
    assert!(worst <= 2 * height, "{worst} reads for one entry");
    assert!(
        reads <= 2 * files as usize,
        "{reads} reads to list {files} entries"
    );
}
