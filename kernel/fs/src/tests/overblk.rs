//! The filesystem over the real block layer: a RAM disk behind a request queue.

use blk::mem::DmaRegion;
use blk::ramdisk::{CompletionMode, RamDisk};
use blk::{BioSet, BioSlab, BvecPools, BvecSlabs, CpuCtx, Queue, QueueConfig, QueueLimits};

use super::Rng;
use super::model::{Model, SmallFs, compare, step};
use crate::blkdev::{BlkDisk, FsIo};
use crate::v1::*;

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// The filesystem's I/O buffer: leaked memory, so the block layer may name it in segments.
fn io_region(len: usize) -> DmaRegion {
    DmaRegion::from_static(Box::leak(vec![0u8; len].into_boxed_slice()))
}

fn spin() {
    std::hint::spin_loop();
}

struct Env {
    disk: &'static RamDisk,
    q: &'static Queue<64>,
    ctx: &'static CpuCtx,
    set: &'static BioSet<FsIo>,
}

fn env(blocks: u64) -> Env {
    env_over(vec![0u8; blocks as usize * BLOCK_SIZE], false)
}

/// A RAM disk holding `image` behind a queue (read-only when `read_only`).
fn env_over(image: Vec<u8>, read_only: bool) -> Env {
    let mem: &'static mut [u8] = Box::leak(image.into_boxed_slice());
    let limits = QueueLimits::new();
    let disk: &'static RamDisk = leak(RamDisk::new(mem, limits, CompletionMode::Inline));
    let bslabs: &'static BvecSlabs<64, 64, 64, 32, 32, 64> = leak(BvecSlabs::new());
    let bvecs: &'static BvecPools = leak(BvecPools::new(bslabs, 2));
    let split_slab: &'static BioSlab<(), 256> = leak(BioSlab::new());
    let split = leak(BioSet::new(split_slab, 4, Some(bvecs)));
    let q: &'static Queue<64> = leak(Queue::new(
        disk,
        limits,
        {
            let mut c = QueueConfig::new(disk.capacity());
            c.read_only = read_only;
            c
        },
        split,
    ));
    disk.attach(q);
    let slab: &'static BioSlab<FsIo, 128> = leak(BioSlab::new());
    let set = leak(BioSet::new(slab, 8, Some(bvecs)));
    Env {
        disk,
        q,
        ctx: leak(CpuCtx::new(0)),
        set,
    }
}

#[test]
fn model_over_blk_ramdisk() {
    let e = env(2048);
    let mut buf = io_region(256 * 1024);
    let mut m = Model::default();
    let mut rng = Rng::new(99);
    {
        let dev = BlkDisk::new(e.q, e.ctx, e.set, spin, buf.span()).unwrap();
        let mut fs = SmallFs::new(dev, buf.as_mut_slice());
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 4,
        })
        .unwrap();
        fs.mount(false).unwrap();
        for _ in 0..300 {
            step(&mut rng, &mut fs, &mut m, true);
        }
        compare(&mut fs, &m).unwrap();
        fs.unmount().unwrap();
    }
    let dev = BlkDisk::new(e.q, e.ctx, e.set, spin, buf.span()).unwrap();
    let mut fs = SmallFs::new(dev, buf.as_mut_slice());
    fs.mount(true).unwrap();
    compare(&mut fs, &m).unwrap();
    assert_eq!(
        e.disk.violations.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        e.disk.flushes.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "commits must flush"
    );
}

#[test]
fn large_write_is_few_large_bios() {
    let e = env(4096);
    let mut buf = io_region(1 << 20);
    let dev = BlkDisk::new(e.q, e.ctx, e.set, spin, buf.span()).unwrap();
    let mut fs = SmallFs::new(dev, buf.as_mut_slice());
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 1,
    })
    .unwrap();
    fs.mount(false).unwrap();
    let f = fs.create("/big").unwrap();
    let data: Vec<u8> = (0..(4 << 20)).map(|i: u32| (i * 7 % 253) as u8).collect();
    let before = e.disk.requests.load(std::sync::atomic::Ordering::Relaxed);
    fs.write(f, 0, &data).unwrap();
    let reqs = e.disk.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    // 4 MiB through a 1 MiB buffer: four 256-segment bios.
    assert!(reqs <= 8, "{reqs} requests for a 4 MiB write");
    let before = e.disk.requests.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = vec![0u8; data.len()];
    assert_eq!(fs.read(f, 0, &mut out).unwrap(), data.len());
    let reqs = e.disk.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(reqs <= 8, "{reqs} requests for a 4 MiB read");
    assert!(out == data);
    fs.unmount().unwrap();
}

#[test]
fn failed_flush_fails_the_filesystem_until_remount() {
    use std::sync::atomic::Ordering;
    let e = env(2048);
    let mut buf = io_region(64 * 1024);
    let a: Vec<u8> = (0..10_000u32).map(|i| (i * 3 % 251) as u8).collect();
    let b: Vec<u8> = (0..10_000u32).map(|i| (i * 5 % 241) as u8).collect();
    let durable;
    {
        let dev = BlkDisk::new(e.q, e.ctx, e.set, spin, buf.span()).unwrap();
        let mut fs = SmallFs::new(dev, buf.as_mut_slice());
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 2,
        })
        .unwrap();
        fs.mount(false).unwrap();
        let f = fs.create("/a").unwrap();
        fs.write(f, 0, &a).unwrap();
        fs.fsync(f).unwrap();
        durable = fs.generation();
        assert_eq!(fs.lost_generation(), None);
        // The next cache flush (the commit record's pre-flush) fails once; the device works
        // again afterwards.
        e.disk.fail_flushes(0, 1);
        let g = fs.create("/b").unwrap();
        fs.write(g, 0, &b).unwrap();
        assert_eq!(
            fs.fsync(g),
            Err(FsError::Io {
                op: IoOp::WriteSuperblock,
                block: (durable + 1) % 2,
                error: IoErrorKind::Blk(blk::BlkError::Io)
            }),
            "the failed flush reaches fsync, with the operation and block"
        );
        assert_eq!(
            e.q.stats().snapshot().retries,
            0,
            "the flush was not retried"
        );
        let failed = Err(FsError::Failed { durable });
        assert_eq!(fs.generation(), durable);
        assert_eq!(fs.lost_generation(), Some(durable + 1));
        // The device works now, but nothing commits until a remount.
        assert_eq!(fs.fsync(g), failed);
        assert_eq!(fs.sync(), failed);
        assert_eq!(fs.write(f, 0, b"x").map(|_| ()), failed);
        assert_eq!(fs.create("/c").map(|_| ()), failed);
        // Reads go on.
        let mut out = vec![0u8; a.len()];
        assert_eq!(fs.read(f, 0, &mut out).unwrap(), a.len());
        assert!(out == a);
        // Unmounting does not pretend the lost changes were written.
        assert_eq!(fs.unmount(), failed);
    }
    let flushes = e.disk.flushes.load(Ordering::Relaxed);
    let dev = BlkDisk::new(e.q, e.ctx, e.set, spin, buf.span()).unwrap();
    let mut fs = SmallFs::new(dev, buf.as_mut_slice());
    let mut problems = Vec::new();
    fs.fsck(&mut |p| problems.push(p)).unwrap();
    assert!(problems.is_empty(), "fsck: {problems:?}");
    fs.mount(false).unwrap();
    assert_eq!(fs.generation(), durable, "the last acknowledged commit");
    assert_eq!(fs.lost_generation(), None);
    let f = fs.open("/a").unwrap();
    let mut out = vec![0u8; a.len()];
    assert_eq!(fs.read(f, 0, &mut out).unwrap(), a.len());
    assert!(out == a);
    assert_eq!(fs.open("/b"), Err(FsError::NotFound), "the lost commit");
    // Remounted, the filesystem commits again.
    let g = fs.create("/b").unwrap();
    fs.write(g, 0, &b).unwrap();
    fs.fsync(g).unwrap();
    assert!(e.disk.flushes.load(Ordering::Relaxed) > flushes);
    assert_eq!(fs.generation(), durable + 1);
    fs.unmount().unwrap();
}

#[test]
fn read_only_queue_mounts_read_only_with_typed_errors() {
    use crate::host::MemDisk;
    use crate::io::{BlockIo, Run, WriteFlags};
    let mut disk = MemDisk::new(512);
    let mut buf = vec![0u8; 16 * 1024];
    {
        let mut fs = SmallFs::new(&mut disk, &mut buf);
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 2,
        })
        .unwrap();
        fs.mount(false).unwrap();
        let f = fs.create("/kept").unwrap();
        fs.write(f, 0, b"read-only").unwrap();
        fs.unmount().unwrap();
    }
    let e = env_over(disk.data, true);
    let mut io = io_region(64 * 1024);
    let mut dev = BlkDisk::new(e.q, e.ctx, e.set, spin, io.span()).unwrap();
    assert!(
        dev.read_only(),
        "the queue's read-only flag reaches the filesystem"
    );
    // A write reaching the block layer fails at once with a typed error naming its block.
    let (region, _) = io.as_mut_slice().split_at_mut(BLOCK_SIZE);
    let err = dev
        .write(
            &[Run {
                block: 7,
                data: region,
            }],
            WriteFlags::NONE,
        )
        .unwrap_err();
    assert_eq!(err, IoError::new(7, IoErrorKind::ReadOnly));
    assert_eq!(e.q.stats().snapshot().retries, 0);
    assert_eq!(
        e.disk.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let mut fs = SmallFs::new(dev, io.as_mut_slice());
    assert_eq!(fs.mount(false), Err(FsError::DeviceReadOnly));
    let r = fs.mount(true).unwrap();
    assert_eq!(r.mode, Mode::ReadOnly);
    let f = fs.open("/kept").unwrap();
    let mut out = [0u8; 16];
    assert_eq!(fs.read(f, 0, &mut out).unwrap(), 9);
    assert_eq!(&out[..9], b"read-only");
    assert_eq!(fs.create("/x"), Err(FsError::ReadOnly));
    fs.unmount().unwrap();
    let mut problems = Vec::new();
    let st = fs.fsck(&mut |p| problems.push(p)).unwrap();
    assert_eq!(st.status, FsckStatus::Clean, "{problems:?}");
}
