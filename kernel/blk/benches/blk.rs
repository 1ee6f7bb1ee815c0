//! Host benchmarks of the block layer's hot paths, each beside a baseline measured in the
//! same run. Figures are recorded in docs/bench.md.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use blk::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use blk::mem::DmaRegion;
use blk::ramdisk::{CompletionMode, RamDisk};
use blk::{
    Bio, BioList, BioVec, CpuCtx, Mempool, Op, Queue, QueueConfig, QueueLimits, Request, SgEntry,
    Slab, Wait,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

type Elem = [u64; 4];

fn mempool() -> &'static Mempool<Elem> {
    let slab: &'static Slab<Elem, 1024> = leak(Slab::new());
    let pool = leak(Mempool::new(slab, 16));
    pool.init().expect("init");
    pool
}

fn two_threads(iters: u64, op: impl Fn() + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            barrier.wait();
            for _ in 0..iters {
                op();
            }
        });
        barrier.wait();
        let t = Instant::now();
        for _ in 0..iters {
            op();
        }
        let d = t.elapsed();
        h.join().expect("thread");
        d
    })
}

/// As `two_threads`, each thread passing its own CPU id (0 timed, 1 beside it).
fn two_threads_cpu(iters: u64, op: impl Fn(u32) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            barrier.wait();
            for _ in 0..iters {
                op(1);
            }
        });
        barrier.wait();
        let t = Instant::now();
        for _ in 0..iters {
            op(0);
        }
        let d = t.elapsed();
        h.join().expect("thread");
        d
    })
}

fn bench_mempool(c: &mut Criterion) {
    let pool = mempool();
    let mut g = c.benchmark_group("alloc_free");
    g.bench_function("mempool_1thread", |b| {
        b.iter(|| drop(black_box(pool.try_alloc(black_box([1, 2, 3, 4])))))
    });
    g.bench_function("box_1thread", |b| {
        b.iter(|| drop(black_box(Box::new(black_box([1u64, 2, 3, 4])))))
    });
    g.bench_function("mempool_2threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                drop(black_box(pool.try_alloc(black_box([1, 2, 3, 4]))))
            })
        })
    });
    let percpu = mempool();
    g.bench_function("mempool_percpu_1thread", |b| {
        b.iter(|| drop(black_box(percpu.try_alloc_on(0, black_box([1, 2, 3, 4])))))
    });
    g.bench_function("mempool_percpu_2threads", |b| {
        b.iter_custom(|iters| {
            two_threads_cpu(iters, |cpu| {
                drop(black_box(percpu.try_alloc_on(cpu, black_box([1, 2, 3, 4]))))
            })
        })
    });
    g.bench_function("box_2threads", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                drop(black_box(Box::new(black_box([1u64, 2, 3, 4]))))
            })
        })
    });
    g.finish();
}

fn bvecs() -> &'static BvecPools {
    let slabs: &'static BvecSlabs<16, 16, 16, 16, 16, 16> = leak(BvecSlabs::new());
    leak(BvecPools::new(slabs, 2))
}

struct Fs {
    #[allow(dead_code)]
    inode: u64,
}

fn bench_roundtrip(c: &mut Criterion) {
    let disk: &'static RamDisk = leak(RamDisk::new(
        Box::leak(vec![0u8; 1 << 20].into_boxed_slice()),
        QueueLimits::new(),
        CompletionMode::Inline,
    ));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split: &'static BioSet<()> = leak(BioSet::new(split_slab, 4, Some(bvecs())));
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
    let mem = Box::leak(vec![0u8; 4096].into_boxed_slice());
    let seg = DmaRegion::from_static(mem)
        .segment(0, 4096)
        .expect("segment");
    fn end(bio: Bio) {
        black_box(bio.front::<Fs>());
    }
    let mut g = c.benchmark_group("bio_roundtrip");
    let mut i = 0u64;
    g.bench_function("ramdisk_4k_write", |b| {
        b.iter(|| {
            let mut bio = set
                .alloc(Fs { inode: i }, Op::Write, 1, Wait::Spin)
                .expect("bio");
            let _ = bio.add_vec(seg);
            bio.set_sector((i % 128) * 8);
            bio.set_dev(q);
            bio.set_end_io(end);
            i += 1;
            let _ = blk::submit_bio(ctx, bio);
        })
    });
    g.bench_function("ramdisk_4k_read", |b| {
        b.iter(|| {
            let mut bio = set
                .alloc(Fs { inode: i }, Op::Read, 1, Wait::Spin)
                .expect("bio");
            let _ = bio.add_vec(seg);
            bio.set_sector((i % 128) * 8);
            bio.set_dev(q);
            bio.set_end_io(end);
            i += 1;
            let _ = blk::submit_bio(ctx, bio);
        })
    });
    g.bench_function("ramdisk_flush_no_data", |b| {
        b.iter(|| {
            let mut bio = set
                .alloc(Fs { inode: i }, Op::Flush, 0, Wait::Spin)
                .expect("bio");
            bio.set_dev(q);
            bio.set_end_io(end);
            i += 1;
            let _ = blk::submit_bio(ctx, bio);
        })
    });
    g.bench_function("baseline_copy_4k", |b| {
        let src = vec![1u8; 4096];
        let mut dst = vec![0u8; 4096];
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.bench_function("box_baseline_alloc_4k_copy", |b| {
        let src = vec![0u8; 4096];
        b.iter(|| {
            let mut v = Box::new([0u8; 4096]);
            v.copy_from_slice(black_box(&src));
            black_box(v);
        })
    });
    g.finish();
    assert_eq!(
        disk.violations.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

fn big_bio(set: &'static BioSet<()>, segs: &[BioVec]) -> Bio {
    let mut bio = set
        .alloc((), Op::Write, segs.len(), Wait::Spin)
        .expect("bio");
    for s in segs {
        let _ = bio.add_vec(*s);
    }
    bio
}

fn bench_split_map_sg(c: &mut Criterion) {
    let slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let set: &'static BioSet<()> = leak(BioSet::new(slab, 4, Some(bvecs())));
    // 256 segments of 4 KiB; every other pair physically contiguous.
    let region = DmaRegion::from_static(Box::leak(vec![0u8; 512 * 4096].into_boxed_slice()));
    let segs: Vec<BioVec> = (0..256usize)
        .map(|i| region.segment((i + i / 2) * 4096, 4096).expect("segment"))
        .collect();
    let limits = QueueLimits {
        max_segments: 128,
        max_sectors: 4096,
        ..QueueLimits::new()
    };
    let mut g = c.benchmark_group("segments_256");
    g.bench_function("split_at_limits", |b| {
        b.iter_batched(
            || big_bio(set, &segs),
            |mut bio| {
                let n = blk::limits::split_point(&limits, &bio, None)
                    .ok()
                    .flatten()
                    .expect("needs split");
                let front = blk::bio_split(&mut bio, n, set, Wait::Spin).expect("split");
                (front, bio)
            },
            BatchSize::PerIteration,
        )
    });
    let mut list = BioList::new();
    list.push_back(big_bio(set, &segs));
    let rq = Request::standalone(list);
    let wide = QueueLimits {
        max_segments: 256,
        ..QueueLimits::new()
    };
    let mut out = [SgEntry::default(); 256];
    g.bench_function("map_sg", |b| {
        b.iter(|| black_box(black_box(&rq).map_sg(&wide, &mut out)))
    });
    g.bench_function("baseline_copy_256_segments_to_vec", |b| {
        b.iter(|| {
            black_box(
                rq.segments()
                    .map(|v| (v.addr(), v.len()))
                    .collect::<Vec<_>>(),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = bench_mempool, bench_roundtrip, bench_split_map_sg
}
criterion_main!(benches);
