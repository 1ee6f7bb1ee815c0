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
use crate::tests::model::{Model, ModelFs, compare, step};
use crate::tests::{Rng, scale};
use crate::v2::volume::volume_frames;
use crate::v2::{Fs, Ino, MIN_FRAMES};

const N: usize = MIN_FRAMES;
const G: usize = 2;

fn mem() -> Vec<u8> {
    std::vec![0u8; volume_frames(N, G) * BLOCK_SIZE]
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
    fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> crate::Result<usize> {
        Fs::read(self, ino, off, out)
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

/// Version 1's model test on version 2: 80 random steps per round, compared after each;
/// a round ends by unmounting (a commit) or by dropping the instance, after which the
/// filesystem must hold exactly the model as of its last sync; bitmaps are checked against
/// the tree and every extent at each remount.
#[test]
fn v1_model_on_v2() {
    for seed in 0..(8 * scale()) {
        let mut rng = Rng::new(seed + 1);
        let mut disk = MemDisk::new(4096);
        let mut m = mem();
        Fs::<MemDisk, N, G>::mkfs(&mut disk, &mut m, 256, 1).unwrap();
        let mut model = Model::default();
        let mut synced = model.clone();
        for round in 0..6 {
            let (mut fs, info) = Fs::<&mut MemDisk, N, G>::mount(&mut disk, &mut m, false).unwrap();
            assert!(!info.rolled_back);
            verify_volume(fs.volume());
            compare(&mut fs, &model)
                .unwrap_or_else(|e| panic!("seed {seed} round {round} after remount: {e}"));
            for i in 0..80 {
                if !step(&mut rng, &mut fs, &mut model, true) {
                    synced = model.clone();
                }
                compare(&mut fs, &model)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} step {i}: {e}"));
            }
            if rng.chance(50) {
                fs.unmount().unwrap();
                synced = model.clone();
            } else {
                // The instance goes out of scope without a commit.
                model = synced.clone();
            }
        }
    }
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
}
