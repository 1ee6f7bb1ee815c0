//! Forward progress without a rescuer: a submission whose earlier bios are held by the
//! submitter itself (on a plug, then in the queue's open batch of requests) while it needs one
//! more bio from a pool that only those held bios would refill (docs/blk.md, "Forward
//! progress").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::harness::*;
use crate::bio::{BioVec, Op};
use crate::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use crate::device::{CpuCtx, submit_bio};
use crate::limits::QueueLimits;
use crate::ramdisk::{CompletionMode, RamDisk};
use crate::request::{Queue, QueueConfig};
use crate::slab::Wait;

/// Waits the queue's may-wait allocations made in [`split_waiting_on_its_own_batch`].
static WAITS: AtomicU64 = AtomicU64::new(0);

/// The queue's wait hook: yields to the completion thread, and fails the test when an
/// allocation has waited for seconds (nothing in flight would free a bio: a deadlock).
fn wait_hook() {
    let n = WAITS.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(
        n < 5_000,
        "a split allocation waited 5 s for bios that only its own unsent batch holds"
    );
    std::thread::sleep(std::time::Duration::from_millis(1));
}

/// The split set has no free bio but its reserve of 2 (another set on the same slab holds the
/// rest). Two 64 KiB writes sit on a plug; at unplug the queue splits each into 16 requests of
/// 4 KiB (`max_sectors = 8`), which are built into one open batch before dispatch. The third
/// split finds the set empty while the batch holds both reserve bios: a may-wait allocation
/// there would wait for ever (completions come only for dispatched requests). The queue must
/// dispatch its batch first, then wait for those completions. Fails (the hook panics) if
/// `Queue::split_front` waits without dispatching.
#[test]
fn split_waiting_on_its_own_batch() {
    let sectors = 1024u64;
    let mut limits = QueueLimits::new();
    limits.max_sectors = 8;
    let disk: &'static RamDisk = leak(RamDisk::new(
        buf((sectors * 512) as usize),
        limits,
        CompletionMode::Deferred,
    ));
    // The split set: a slab of 6 shared with a hog, a reserve of 2.
    let slab: &'static BioSlab<(), 6> = leak(BioSlab::new());
    let bslabs: &'static BvecSlabs<1, 1, 1, 1, 1, 1> = leak(BvecSlabs::new());
    let split: &'static BioSet<()> =
        leak(BioSet::new(slab, 2, Some(leak(BvecPools::new(bslabs, 1)))));
    split.init().unwrap();
    let hog: &'static BioSet<()> = leak(BioSet::new(slab, 0, None));
    let mut held = Vec::new();
    while let Ok(b) = hog.alloc((), Op::Read, 1, Wait::Never) {
        held.push(b);
    }
    assert_eq!(held.len(), 4, "only the split set's reserve is left");

    let mut cfg = QueueConfig::new(disk.capacity());
    cfg.wait = Wait::Hook(wait_hook);
    let q: &'static Queue<64> = leak(Queue::new(disk, limits, cfg, split));
    disk.attach(q);
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let ioslab: &'static BioSlab<Io, 8> = leak(BioSlab::new());
    let set: &'static BioSet<Io> = leak(BioSet::new(ioslab, 1, None));
    let (done, errors) = counters();

    // The completion "interrupt": completes whatever the driver was given.
    let stop: &'static AtomicBool = leak(AtomicBool::new(false));
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            disk.process_completions();
            std::thread::yield_now();
        }
    });

    let data = [pattern(1, 65536), pattern(2, 65536)];
    let mems: Vec<&'static mut [u8]> = data
        .iter()
        .map(|d| {
            let m = buf(d.len());
            m.copy_from_slice(d);
            m
        })
        .collect();
    {
        let _plug = ctx.plug();
        for (i, mem) in mems.into_iter().enumerate() {
            let mut b = set
                .alloc(
                    Io {
                        done,
                        errors,
                        tag: i as u64,
                    },
                    Op::Write,
                    1,
                    Wait::Never,
                )
                .unwrap();
            // SAFETY: the buffer is leaked (lives for ever) and the test leaves it alone.
            let v: BioVec = unsafe { seg(mem) };
            b.add_vec(v).unwrap();
            b.set_sector(i as u64 * 128);
            b.set_dev(q);
            b.set_end_io(io_end);
            submit_bio(ctx, b).map_err(|(e, _)| e).unwrap();
        }
        assert_eq!(
            q.stats().snapshot().requests_dispatched,
            0,
            "held on the plug"
        );
    }
    while done.load(Ordering::SeqCst) < 2 {
        wait_hook();
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();

    assert_eq!(errors.load(Ordering::SeqCst), 0);
    let st = q.stats().snapshot();
    assert_eq!(st.splits, 30, "each write became 16 requests");
    assert_eq!(st.requests_dispatched, 32);
    let ss = split.stats();
    assert!(ss.failures > 0, "the split set ran dry: {ss:?}");
    assert!(ss.high_water <= 2, "only the reserve was used: {ss:?}");
    assert_eq!(ss.in_use, 0);
    for (i, d) in data.iter().enumerate() {
        let mut back = vec![0u8; d.len()];
        assert!(disk.store().read_bytes(i as u64 * 65536, &mut back));
        assert!(back == *d, "write {i} reached the disk intact");
    }
    drop(held);
}

/// Waits of the submitter's allocations in [`plug_holding_the_last_bios_of_its_set`].
static PLUG_WAITS: AtomicU64 = AtomicU64::new(0);

/// The submitter's wait hook there: as [`wait_hook`].
fn plug_wait_hook() {
    let n = PLUG_WAITS.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(
        n < 5_000,
        "an allocation waited 5 s for bios that only its own plug holds"
    );
    std::thread::sleep(std::time::Duration::from_millis(1));
}

/// The submitter's bio set is down to its reserve of 2 (a hog on the same slab holds the
/// rest). Under one plug it allocates (may-wait) and submits 8 writes: the third allocation
/// finds the set empty while the plug holds both reserve bios, which only an unplug would send
/// to the driver. The plug must flush by itself once the set runs dry, so the allocation waits
/// only for bios in flight. Fails (the hook panics) if `CpuCtx::add_to_plug` holds the bios.
#[test]
fn plug_holding_the_last_bios_of_its_set() {
    let e = env_with(1024, QueueLimits::new(), CompletionMode::Deferred, |_| {});
    let slab: &'static BioSlab<Io, 6> = leak(BioSlab::new());
    let set: &'static BioSet<Io> = leak(BioSet::new(slab, 2, None));
    set.init().unwrap();
    let hog: &'static BioSet<Io> = leak(BioSet::new(slab, 0, None));
    let io = || Io {
        done: e.done,
        errors: e.errors,
        tag: 0,
    };
    let mut held = Vec::new();
    while let Ok(b) = hog.alloc(io(), Op::Read, 1, Wait::Never) {
        held.push(b);
    }
    assert_eq!(held.len(), 4, "only the set's reserve is left");

    let stop: &'static AtomicBool = leak(AtomicBool::new(false));
    let (disk, q) = (e.disk, e.q);
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            disk.process_completions();
            q.kick();
            std::thread::yield_now();
        }
    });

    const N: usize = 8;
    let data = pattern(3, N * 4096);
    let mem = buf(N * 4096);
    mem.copy_from_slice(&data);
    {
        let _plug = e.ctx.plug();
        for (i, part) in mem.chunks_mut(4096).enumerate() {
            let mut b = set
                .alloc(io(), Op::Write, 1, Wait::Hook(plug_wait_hook))
                .expect("may-wait alloc never fails");
            // SAFETY: the buffer is leaked (lives for ever) and the test leaves it alone.
            b.add_vec(unsafe { seg(part) }).unwrap();
            b.set_sector(i as u64 * 8);
            b.set_dev(e.q);
            b.set_end_io(io_end);
            submit_bio(e.ctx, b).map_err(|(e, _)| e).unwrap();
        }
    }
    while e.done() < N as u64 {
        plug_wait_hook();
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();

    assert_eq!(e.errors(), 0);
    let st = set.stats();
    assert_eq!(st.allocs, N as u64);
    assert_eq!(st.reserve_hits, N as u64, "every bio came from the reserve");
    assert!(st.waits > 0, "allocations waited for completions: {st:?}");
    assert_eq!(st.in_use, 0);
    assert_eq!(e.disk_bytes(0, N * 4096), data);
    drop(held);
}
