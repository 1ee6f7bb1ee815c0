//! Zero-copy writes ([`Fs::write_buffer`]) against a device that keeps written-behind data in
//! flight until the filesystem waits for it: the memory of a write in flight must not change
//! (the lent region must never overlap it), reads and waited writes come only after everything
//! in flight, and what is read back is what was put in the lent regions.

use super::Rng;
use crate::format::BLOCK_SIZE;
use crate::host::MemDisk;
use crate::io::{BlockIo, IoError, Run, WriteFlags};
use crate::v1::*;

type ZcFs<'b, D> = Fs<'b, D, 2, 64>;

/// A write-behind device at its laziest: a write started by `write_behind` completes only when
/// `wait_for` names its memory or `drain` is called.
struct LazyDisk {
    disk: MemDisk,
    /// (memory address, bytes, first block, the bytes at submission).
    pending: Vec<(usize, usize, u64, Vec<u8>)>,
    /// Memory of a write in flight found changed when the write completed.
    changed: usize,
    /// Written-behind memory of a write still in flight.
    reused: usize,
    /// Reads or waited writes issued while writes were in flight.
    unordered: usize,
    behind: usize,
}

impl LazyDisk {
    fn complete(&mut self, i: usize) {
        let (_, _, block, data) = self.pending.swap_remove(i);
        self.disk
            .write(&[Run { block, data: &data }], WriteFlags::NONE)
            .unwrap();
    }
}

impl BlockIo for LazyDisk {
    fn block_count(&self) -> u64 {
        self.disk.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> std::result::Result<(), IoError> {
        self.unordered += usize::from(!self.pending.is_empty());
        self.disk.read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> std::result::Result<(), IoError> {
        self.unordered += usize::from(!self.pending.is_empty());
        self.disk.write(runs, flags)
    }
    fn write_behind(&mut self, runs: &[Run<'_>]) -> std::result::Result<(), IoError> {
        for r in runs {
            crate::io::check_range(self.block_count(), r.block, r.data.len())?;
            // Memory of a write still in flight given out again (filled, now written).
            let (lo, hi) = (
                r.data.as_ptr() as usize,
                r.data.as_ptr() as usize + r.data.len(),
            );
            self.reused += self
                .pending
                .iter()
                .filter(|&&(a, n, _, _)| a < hi && lo < a + n)
                .count();
            self.pending.push((
                r.data.as_ptr() as usize,
                r.data.len(),
                r.block,
                r.data.to_vec(),
            ));
            self.behind += 1;
        }
        Ok(())
    }
    fn wait_for(&mut self, mem: &[u8]) -> std::result::Result<(), IoError> {
        let lo = mem.as_ptr() as usize;
        let hi = lo + mem.len();
        while let Some(i) = self
            .pending
            .iter()
            .position(|&(a, n, _, _)| a < hi && lo < a + n)
        {
            // The part of the write's memory inside `mem` must still hold what was submitted.
            let (a, n, _, ref data) = self.pending[i];
            let (s, e) = (a.max(lo), (a + n).min(hi));
            if mem[s - lo..e - lo] != data[s - a..e - a] {
                self.changed += 1;
            }
            self.complete(i);
        }
        Ok(())
    }
    fn drain(&mut self) -> std::result::Result<(), IoError> {
        while !self.pending.is_empty() {
            self.complete(0);
        }
        Ok(())
    }
}

/// Writes `data` at `off` through lent regions, each filled in place.
fn put(fs: &mut ZcFs<'_, &mut LazyDisk>, ino: Ino, off: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let mut w = fs
            .write_buffer(ino, off + done as u64, data.len() - done)
            .unwrap();
        let n = w.len();
        w.buf().copy_from_slice(&data[done..done + n]);
        w.commit().unwrap();
        done += n;
    }
}

#[test]
fn lent_regions_never_overlap_writes_in_flight() {
    let mut dev = LazyDisk {
        disk: MemDisk::new(4096),
        pending: Vec::new(),
        changed: 0,
        reused: 0,
        unordered: 0,
        behind: 0,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let files = {
        let mut fs: ZcFs<'_, &mut LazyDisk> = Fs::new(&mut dev, &mut buf);
        workload(&mut fs)
    };
    assert_eq!(dev.changed, 0, "memory of a write in flight was changed");
    assert_eq!(dev.reused, 0, "memory of a write in flight was lent again");
    assert_eq!(
        dev.unordered, 0,
        "I/O issued before writes in flight completed"
    );
    assert!(dev.behind > 100, "only {} writes behind", dev.behind);
    // Remounted from the device alone.
    let mut fs: ZcFs<'_, &mut LazyDisk> = Fs::new(&mut dev, &mut buf);
    fs.mount(true).unwrap();
    for (ino, model) in &files {
        assert_eq!(fs.stat(*ino).unwrap().size, model.len() as u64);
        let mut out = vec![0u8; model.len()];
        fs.read(*ino, 0, &mut out).unwrap();
        assert!(out == *model, "contents differ after remount");
    }
}

/// Random zero-copy and copying writes on three files; returns each file's expected contents.
fn workload(fs: &mut ZcFs<'_, &mut LazyDisk>) -> Vec<(Ino, Vec<u8>)> {
    let mut rng = Rng::new(7);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 2,
    })
    .unwrap();
    fs.mount(false).unwrap();
    let mut files: Vec<(Ino, Vec<u8>)> = Vec::new();
    for i in 0..3 {
        files.push((fs.create(&format!("/f{i}")).unwrap(), Vec::new()));
    }
    for step in 0..400u32 {
        let f = rng.below(files.len() as u64) as usize;
        let (ino, ref mut model) = files[f];
        // Mostly streaming appends of whole blocks (written behind, the ring wraps every few
        // calls), sometimes unaligned sizes, overwrites, copying writes and syncs.
        let len = match rng.below(10) {
            0 => rng.below(9000) as usize + 1,
            _ => (rng.below(24) as usize + 1) * BLOCK_SIZE,
        };
        let off = if rng.chance(85) || model.is_empty() {
            model.len() as u64
        } else {
            rng.below(model.len() as u64)
        };
        let data: Vec<u8> = (0..len)
            .map(|j| (step as usize * 31 + j * 7 + f) as u8)
            .collect();
        if rng.chance(20) {
            fs.write(ino, off, &data).unwrap();
        } else {
            put(fs, ino, off, &data);
        }
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        if rng.chance(3) {
            fs.sync().unwrap();
        }
        if rng.chance(5) || model.len() > 3 << 20 {
            fs.truncate(ino, 0).unwrap();
            model.clear();
        }
    }
    for (ino, model) in &files {
        let mut out = vec![0u8; model.len()];
        assert_eq!(fs.read(*ino, 0, &mut out).unwrap(), model.len());
        assert!(out == *model, "contents differ");
    }
    fs.unmount().unwrap();
    files
}

#[test]
fn write_buffer_errors_and_abandon() {
    let mut disk = MemDisk::new(256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut fs: ZcFs<'_, &mut MemDisk> = Fs::new(&mut disk, &mut buf);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 1,
    })
    .unwrap();
    fs.mount(false).unwrap();
    let f = fs.create("/f").unwrap();
    let d = fs.mkdir("/d").unwrap();
    assert_eq!(fs.write_buffer(d, 0, 10).err(), Some(FsError::IsDir));
    assert_eq!(
        fs.write_buffer(f, 0, 0).err(),
        Some(FsError::InvalidArgument)
    );
    // At most the buffer's 16 blocks per region.
    assert_eq!(fs.write_buffer(f, 0, 1 << 20).unwrap().len(), 64 * 1024);
    let free = fs.statfs().unwrap().free_blocks;
    let mut w = fs.write_buffer(f, 100, 5000).unwrap();
    w.buf().fill(1);
    drop(w);
    assert_eq!(fs.statfs().unwrap().free_blocks, free);
    assert_eq!(fs.stat(f).unwrap().size, 0);
    // A region past the end of the file: the bytes before it read as zeros.
    let mut w = fs.write_buffer(f, 100, 5000).unwrap();
    assert_eq!((w.offset(), w.len()), (100, 5000));
    w.buf().fill(9);
    assert_eq!(w.commit().unwrap(), 5000);
    let mut out = vec![0xffu8; 6000];
    assert_eq!(fs.read(f, 0, &mut out).unwrap(), 5100);
    assert!(out[..100].iter().all(|&b| b == 0) && out[100..5100].iter().all(|&b| b == 9));
    fs.unmount().unwrap();
    assert_eq!(fs.write_buffer(f, 0, 1).err(), Some(FsError::NotMounted));
    let st = fs.fsck(&mut |p| panic!("fsck: {p:?}")).unwrap();
    assert_eq!(st.problems, 0);
    fs.mount(true).unwrap();
    assert_eq!(fs.write_buffer(f, 0, 1).err(), Some(FsError::ReadOnly));
}
