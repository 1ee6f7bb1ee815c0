//! A fixed number of 4 KiB RAM-disk round trips (and flushes), for instruction counting under
//! `valgrind --tool=callgrind`: `cargo build --release -p blk --example roundtrip`.

use std::hint::black_box;

use blk::bioset::{BioSet, BioSlab};
use blk::mem::DmaRegion;
use blk::ramdisk::{CompletionMode, RamDisk};
use blk::{Bio, CpuCtx, Op, Queue, QueueConfig, QueueLimits, Wait};

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

struct Fs {
    #[allow(dead_code)]
    inode: u64,
}

fn end(bio: Bio) {
    black_box(bio.front::<Fs>());
}

fn main() {
    let iters: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let disk: &'static RamDisk = leak(RamDisk::new(
        Box::leak(vec![0u8; 1 << 20].into_boxed_slice()),
        QueueLimits::new(),
        CompletionMode::Inline,
    ));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split: &'static BioSet<()> = leak(BioSet::new(split_slab, 4, None));
    let q: &'static Queue<32> = leak(Queue::new(
        disk,
        QueueLimits::new(),
        QueueConfig::new(disk.capacity()),
        split,
    ));
    disk.attach(q);
    let slab: &'static BioSlab<Fs, 256> = leak(BioSlab::new());
    let set: &'static BioSet<Fs> = leak(BioSet::new(slab, 16, None));
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let seg = DmaRegion::from_static(Box::leak(vec![0u8; 4096].into_boxed_slice()))
        .segment(0, 4096)
        .expect("segment");
    for i in 0..iters {
        let op = if i % 2 == 0 { Op::Write } else { Op::Read };
        let mut bio = set.alloc(Fs { inode: i }, op, 1, Wait::Spin).expect("bio");
        let _ = bio.add_vec(seg);
        bio.set_sector((i % 128) * 8);
        bio.set_dev(q);
        bio.set_end_io(end);
        let _ = blk::submit_bio(ctx, bio);
    }
    for i in 0..iters {
        let mut bio = set
            .alloc(Fs { inode: i }, Op::Flush, 0, Wait::Spin)
            .expect("bio");
        bio.set_dev(q);
        bio.set_end_io(end);
        let _ = blk::submit_bio(ctx, bio);
    }
    assert_eq!(
        disk.violations.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(q.stats().snapshot().requests_completed, 2 * iters);
}
