//! Block-device conformance suite, generic over any `BlockDevice` (a [`Target`]): read-back
//! patterns at the start, middle and end; I/O past the end; single-sector and 1 MiB I/O;
//! multi-segment I/O from scattered buffers with odd segment sizes; splits; plug merging; the
//! full queue depth in flight; flush and FUA; exact completion accounting. The virtio-blk
//! instances are at the bottom; other drivers and stacked devices add their own `Target`.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use blk::{
    Bio, BioFlags, BioVec, BlkError, BlockDevice, Op, StatsSnapshot, Wait, submit_bio,
    submit_bio_wait,
};
use hal::{DmaBuf, PhysAddr};

use crate::block::{self, DiskKind, IO_SET, cpu_ctx};
use crate::ktest::{Outcome, TestResult, fail};

/// A device under test.
pub struct Target {
    /// The device.
    pub dev: &'static dyn BlockDevice,
    /// Its request queue's counters.
    pub stats: fn() -> StatsSnapshot,
    /// Tags in use in its queue now.
    pub tags_in_use: fn() -> usize,
    /// Queue depth.
    pub depth: usize,
    /// Most bytes one request takes (bigger bios are split).
    pub max_request_bytes: u32,
    /// Interrupts taken so far (0 when polled).
    pub irq_count: fn() -> u64,
}

pub(super) fn dma(len: usize) -> Result<DmaBuf, Outcome> {
    DmaBuf::alloc(len, 4096)
        .map_err(|e| fail(format_args!("no DMA memory for {} bytes: {:?}", len, e)))
}

pub(super) fn fill(buf: &mut [u8], seed: u32) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        let v = seed.wrapping_mul(0x9e37_79b9) ^ (i as u32).wrapping_mul(0x85eb_ca6b);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// A bio over raw segments.
///
/// # Safety
/// Every `(addr, len)` in `segs` is under the segment contract of `BioVec::new`: DMA memory
/// (a `DmaBuf` of the test) that stays allocated and is not touched by the CPU until the bio
/// has completed.
unsafe fn new_bio(
    t: &Target,
    op: Op,
    sector: u64,
    segs: &[(PhysAddr, u32)],
    flags: BioFlags,
) -> Result<Bio, BlkError> {
    let mut bio = IO_SET.alloc((), op, segs.len().max(1), Wait::Hook(block::wait))?;
    bio.set_dev(t.dev);
    bio.set_sector(sector);
    bio.set_flags(flags);
    for &(a, l) in segs {
        // SAFETY: the caller's promise, the segment contract for each pair.
        bio.add_vec(unsafe { BioVec::new(a, l) })?;
    }
    Ok(bio)
}

/// Submits one bio and waits for it.
///
/// # Safety
/// As for [`new_bio`]; the call returns only once the bio has completed, so buffers that
/// outlive the call satisfy it.
pub unsafe fn io(
    t: &Target,
    op: Op,
    sector: u64,
    segs: &[(PhysAddr, u32)],
    flags: BioFlags,
) -> Result<(), BlkError> {
    // SAFETY: the caller's promise (the same contract).
    let bio = unsafe { new_bio(t, op, sector, segs, flags)? };
    submit_bio_wait(cpu_ctx(), bio, block::wait).0
}

/// [`io`], failing the test on an error.
///
/// # Safety
/// As for [`io`].
pub(super) unsafe fn io_ok(
    t: &Target,
    op: Op,
    sector: u64,
    segs: &[(PhysAddr, u32)],
    flags: BioFlags,
) -> TestResult {
    // SAFETY: the caller's promise (the same contract).
    unsafe { io(t, op, sector, segs, flags) }
        .map_err(|e| fail(format_args!("{:?} at sector {}: {:?}", op, sector, e)))
}

/// Bios completed through the asynchronous path, and the first error seen.
static ASYNC_DONE: AtomicU32 = AtomicU32::new(0);
static ASYNC_ERR: AtomicU32 = AtomicU32::new(0);
static ASYNC_TWICE: AtomicU64 = AtomicU64::new(0);
/// One bit per outstanding async bio (by `private`), to catch double completion.
static ASYNC_PENDING: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn async_end_io(bio: Bio) {
    let i = bio.private();
    let bit = 1u64 << (i % 64);
    if ASYNC_PENDING[(i / 64) % 4].fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
        ASYNC_TWICE.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = bio.status() {
        let _ = ASYNC_ERR.compare_exchange(0, e.code(), Ordering::AcqRel, Ordering::Relaxed);
    }
    ASYNC_DONE.fetch_add(1, Ordering::Release);
}

pub(super) fn async_reset() {
    ASYNC_DONE.store(0, Ordering::Relaxed);
    ASYNC_ERR.store(0, Ordering::Relaxed);
    ASYNC_TWICE.store(0, Ordering::Relaxed);
}

/// Submits a bio whose completion is counted by [`async_end_io`]; `i` < 256 names it.
///
/// # Safety
/// As for [`new_bio`]: the caller keeps the buffers alive and untouched until
/// [`async_wait`] has seen this bio complete.
pub(super) unsafe fn submit_async(
    t: &Target,
    i: usize,
    op: Op,
    sector: u64,
    segs: &[(PhysAddr, u32)],
) -> TestResult {
    // SAFETY: the caller's promise (the same contract).
    let mut bio = unsafe { new_bio(t, op, sector, segs, BioFlags::empty()) }
        .map_err(|e| fail(format_args!("bio: {:?}", e)))?;
    bio.set_end_io(async_end_io);
    bio.set_private(i);
    ASYNC_PENDING[(i / 64) % 4].fetch_or(1 << (i % 64), Ordering::AcqRel);
    submit_bio(cpu_ctx(), bio).map_err(|(e, _)| fail(format_args!("submit {}: {:?}", i, e)))
}

pub(super) fn async_wait(n: u32) -> TestResult {
    let start = block::clock();
    while ASYNC_DONE.load(Ordering::Acquire) < n {
        check!(
            block::clock() - start < 10_000_000_000,
            "only {} of {} bios completed in 10 s",
            ASYNC_DONE.load(Ordering::Acquire),
            n
        );
        block::wait();
    }
    check_eq!(ASYNC_DONE.load(Ordering::Acquire), n);
    check_eq!(ASYNC_TWICE.load(Ordering::Relaxed), 0);
    let e = ASYNC_ERR.load(Ordering::Relaxed);
    check!(e == 0, "async bio failed: {:?}", BlkError::from_code(e));
    Ok(())
}

/// Write a pattern and read it back at the first, middle and last 4 KiB.
pub fn readback_start_middle_end(t: &Target) -> TestResult {
    let cap = t.dev.capacity();
    check!(cap >= 64, "capacity {} too small", cap);
    let mut w = dma(4096)?;
    let r = dma(4096)?;
    for (k, sector) in [0, (cap / 2) & !7, cap - 8].into_iter().enumerate() {
        fill(w.as_mut_slice(), 0x100 + k as u32);
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(t, Op::Write, sector, &[(w.phys(), 4096)], BioFlags::empty()) }?;
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(t, Op::Read, sector, &[(r.phys(), 4096)], BioFlags::empty()) }?;
        check!(
            r.as_slice() == w.as_slice(),
            "read-back mismatch at sector {}",
            sector
        );
    }
    Ok(())
}

/// Bios reaching past the end are refused up front, with the bio handed back.
pub fn past_end_refused(t: &Target) -> TestResult {
    let cap = t.dev.capacity();
    let b = dma(4096)?;
    for sector in [cap - 4, cap, cap + 1000, u64::MAX - 4] {
        // SAFETY: `b` is this test's DMA buffer, alive until after the bio is waited for
        // below, and not touched meanwhile.
        let bio = unsafe { new_bio(t, Op::Write, sector, &[(b.phys(), 4096)], BioFlags::empty()) }
            .map_err(|e| fail(format_args!("bio: {:?}", e)))?;
        match submit_bio(cpu_ctx(), bio) {
            Err((BlkError::OutOfRange, _bio)) => {}
            Err((e, _)) => {
                return Err(fail(format_args!(
                    "sector {}: {:?}, not OutOfRange",
                    sector, e
                )));
            }
            Ok(()) => {
                return Err(fail(format_args!(
                    "write at sector {} past the end accepted",
                    sector
                )));
            }
        }
    }
    Ok(())
}

/// One 512-byte sector, and 1 MiB in one bio.
pub fn single_sector_and_1mib(t: &Target) -> TestResult {
    let mut w = dma(512)?;
    let r = dma(512)?;
    fill(w.as_mut_slice(), 7);
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Write, 3, &[(w.phys(), 512)], BioFlags::empty()) }?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Read, 3, &[(r.phys(), 512)], BioFlags::empty()) }?;
    check!(
        r.as_slice() == w.as_slice(),
        "single-sector read-back mismatch"
    );
    let mut w = dma(1 << 20)?;
    let r = dma(1 << 20)?;
    fill(w.as_mut_slice(), 8);
    // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
    unsafe {
        io_ok(
            t,
            Op::Write,
            8192,
            &[(w.phys(), 1 << 20)],
            BioFlags::empty(),
        )
    }?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Read, 8192, &[(r.phys(), 1 << 20)], BioFlags::empty()) }?;
    check!(r.as_slice() == w.as_slice(), "1 MiB read-back mismatch");
    Ok(())
}

/// Segments of odd sizes from scattered (non-contiguous) memory, written and read back both
/// scattered and contiguous.
pub fn multi_segment_scattered(t: &Target) -> TestResult {
    // (offset in the arena, length): gaps between all of them, none page-sized.
    const SEGS: [(u64, u32); 6] = [
        (0, 512),
        (8192, 1536),
        (20480 + 512, 3072),
        (40960, 512),
        (49152 + 1024, 2560),
        (65536 + 4, 1024),
    ];
    let total: u32 = SEGS.iter().map(|s| s.1).sum();
    check_eq!(total % 512, 0);
    let mut arena = dma(96 * 1024)?;
    let base = arena.phys();
    fill(arena.as_mut_slice(), 21);
    let segs: heapless::Vec<(PhysAddr, u32), 8> =
        SEGS.iter().map(|&(o, l)| (base.add(o), l)).collect();
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Write, 1000, &segs, BioFlags::empty()) }?;
    let flat = dma(total as usize)?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
    unsafe {
        io_ok(
            t,
            Op::Read,
            1000,
            &[(flat.phys(), total)],
            BioFlags::empty(),
        )
    }?;
    let mut off = 0usize;
    for &(o, l) in &SEGS {
        let want = &arena.as_slice()[o as usize..o as usize + l as usize];
        check!(
            &flat.as_slice()[off..off + l as usize] == want,
            "segment at {:#x}+{} read back wrong",
            o,
            l
        );
        off += l as usize;
    }
    arena.as_mut_slice().fill(0);
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Read, 1000, &segs, BioFlags::empty()) }?;
    let mut off = 0usize;
    for &(o, l) in &SEGS {
        let got = &arena.as_slice()[o as usize..o as usize + l as usize];
        check!(
            got == &flat.as_slice()[off..off + l as usize],
            "scattered read of segment {:#x}+{} wrong",
            o,
            l
        );
        off += l as usize;
    }
    Ok(())
}

/// A bio bigger than one request (and with more segments than one takes) is split, and reads
/// back whole.
pub fn split_by_limits(t: &Target) -> TestResult {
    // 160 scattered 4 KiB pages (every other page of the arena): 640 KiB, 160 segments.
    const N: usize = 160;
    let mut arena = dma(N * 2 * 4096)?;
    fill(arena.as_mut_slice(), 33);
    let segs: heapless::Vec<(PhysAddr, u32), N> = (0..N)
        .map(|i| (arena.phys().add((i * 8192) as u64), 4096))
        .collect();
    let before = (t.stats)();
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Write, 20000, &segs, BioFlags::empty()) }?;
    let mid = (t.stats)();
    check!(
        mid.splits > before.splits,
        "a {}-segment bio was not split (max request {} bytes)",
        N,
        t.max_request_bytes
    );
    let flat = dma(N * 4096)?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
    unsafe {
        io_ok(
            t,
            Op::Read,
            20000,
            &[(flat.phys(), (N * 4096) as u32)],
            BioFlags::empty(),
        )
    }?;
    for i in 0..N {
        check!(
            flat.as_slice()[i * 4096..(i + 1) * 4096]
                == arena.as_slice()[i * 8192..i * 8192 + 4096],
            "page {} of the split write read back wrong",
            i
        );
    }
    Ok(())
}

/// 64 contiguous 4 KiB writes under a plug become fewer requests.
pub fn plug_merges(t: &Target) -> TestResult {
    const N: usize = 64;
    let mut buf = dma(N * 4096)?;
    fill(buf.as_mut_slice(), 44);
    async_reset();
    let before = (t.stats)();
    {
        let _plug = cpu_ctx().plug();
        for i in 0..N {
            // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
            unsafe {
                submit_async(
                    t,
                    i,
                    Op::Write,
                    40000 + (i as u64) * 8,
                    &[(buf.phys().add((i * 4096) as u64), 4096)],
                )
            }?;
        }
    }
    async_wait(N as u32)?;
    let after = (t.stats)();
    let rqs = after.requests_dispatched - before.requests_dispatched;
    let merges =
        (after.merges_back + after.merges_front) - (before.merges_back + before.merges_front);
    defmt::println!(
        "plug: {=usize} bios -> {=u64} requests, {=u64} merges",
        N,
        rqs,
        merges
    );
    check!(
        rqs < N as u64,
        "{} plugged contiguous bios became {} requests",
        N,
        rqs
    );
    check!(merges > 0, "no merges counted");
    let r = dma(N * 4096)?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
    unsafe {
        io_ok(
            t,
            Op::Read,
            40000,
            &[(r.phys(), (N * 4096) as u32)],
            BioFlags::empty(),
        )
    }?;
    check!(
        r.as_slice() == buf.as_slice(),
        "merged write read back wrong"
    );
    Ok(())
}

/// The whole queue depth in flight at once (submitted with interrupts held off), then all
/// completed, each once.
pub fn full_depth_in_flight(t: &Target) -> TestResult {
    // At most what the kernel's I/O set can hold at once (less than the depth only with the
    // `min-pools` feature).
    let n = t.depth.min(256).min(crate::config::IO_SET_BIOS);
    let buf = dma(n * 4096)?;
    async_reset();
    let irq_before = (t.irq_count)();
    let mut peak = 0;
    let res = crate::arch::without_interrupts(|| -> TestResult {
        for i in 0..n {
            // Every other 4 KiB block: nothing merges.
            // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
            unsafe {
                submit_async(
                    t,
                    i,
                    Op::Read,
                    60000 + (i as u64) * 16,
                    &[(buf.phys().add((i * 4096) as u64), 4096)],
                )
            }?;
            peak = peak.max((t.tags_in_use)());
        }
        Ok(())
    });
    res?;
    async_wait(n as u32)?;
    defmt::println!(
        "depth: {=usize} submitted, {=usize} tags in use at peak",
        n,
        peak
    );
    check_eq!(peak, n);
    if irq_before != 0 || (t.irq_count)() != 0 {
        check!(
            (t.irq_count)() > irq_before,
            "no interrupt for {} completions",
            n
        );
    }
    Ok(())
}

/// Flush, and a FUA write that reads back.
pub fn flush_and_fua(t: &Target) -> TestResult {
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Flush, 0, &[], BioFlags::empty()) }?;
    let mut w = dma(4096)?;
    let r = dma(4096)?;
    fill(w.as_mut_slice(), 55);
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Write, 512, &[(w.phys(), 4096)], BioFlags::FUA) }?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Write, 520, &[(w.phys(), 4096)], BioFlags::PREFLUSH) }?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
    unsafe { io_ok(t, Op::Read, 512, &[(r.phys(), 4096)], BioFlags::empty()) }?;
    check!(r.as_slice() == w.as_slice(), "FUA write read back wrong");
    Ok(())
}

/// Every request dispatched completed exactly once; none late.
pub fn completion_accounting(t: &Target) -> TestResult {
    let before = (t.stats)();
    let b = dma(8 * 4096)?;
    async_reset();
    for i in 0..32 {
        // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
        unsafe {
            submit_async(
                t,
                i,
                Op::Read,
                80000 + (i as u64) * 64,
                &[(b.phys().add(((i % 8) * 4096) as u64), 4096)],
            )
        }?;
    }
    async_wait(32)?;
    let after = (t.stats)();
    let dispatched =
        after.requests_dispatched - before.requests_dispatched - (after.requeues - before.requeues);
    check_eq!(
        after.requests_completed - before.requests_completed,
        dispatched
    );
    check_eq!(after.late_completions, before.late_completions);
    check_eq!((t.tags_in_use)(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// virtio-blk

fn virtio() -> Result<Target, Outcome> {
    let Some(d) = block::virtio::disk() else {
        return Err(Outcome::NoDisk(DiskKind::Virtio));
    };
    Ok(Target {
        dev: d.queue,
        stats: || {
            block::virtio::disk()
                .map(|d| d.queue.stats().snapshot())
                .unwrap_or_default()
        },
        tags_in_use: || block::virtio::disk().map_or(0, |d| d.queue.tags_in_use()),
        // What one CPU can fill: the tags of its hardware context (all of them with one queue).
        depth: d.hw.info().queue_depth as usize / d.queue.nr_hw_contexts().max(1),
        max_request_bytes: d.queue.limits().max_bytes(),
        irq_count: || block::virtio::disk().map_or(0, |d| d.irq_count()),
    })
}

ktest! { fn virtio_readback_start_middle_end() -> TestResult { readback_start_middle_end(&virtio()?) } }
ktest! { fn virtio_past_end_refused() -> TestResult { past_end_refused(&virtio()?) } }
ktest! { fn virtio_single_sector_and_1mib() -> TestResult { single_sector_and_1mib(&virtio()?) } }
ktest! { fn virtio_multi_segment_scattered() -> TestResult { multi_segment_scattered(&virtio()?) } }
ktest! { fn virtio_split_by_limits() -> TestResult { split_by_limits(&virtio()?) } }
ktest! { fn virtio_plug_merges() -> TestResult { plug_merges(&virtio()?) } }
ktest! { fn virtio_full_depth_in_flight() -> TestResult { full_depth_in_flight(&virtio()?) } }
ktest! {
    fn virtio_flush_and_fua() -> TestResult {
        let t = virtio()?;
        let Some(d) = block::virtio::disk() else { return Err(Outcome::NoDisk(DiskKind::Virtio)) };
        let s = d.hw.stats();
        let (fua0, pre0) = (s.fua_flushes.load(Ordering::Relaxed), s.preflushes.load(Ordering::Relaxed));
        flush_and_fua(&t)?;
        if d.hw.info().flush {
            check_eq!(d.hw.stats().fua_flushes.load(Ordering::Relaxed) - fua0, 1);
            check_eq!(d.hw.stats().preflushes.load(Ordering::Relaxed) - pre0, 1);
        }
        Ok(())
    }
}

ktest! {
    fn virtio_completion_accounting_and_interrupts() -> TestResult {
        let t = virtio()?;
        let Some(d) = block::virtio::disk() else { return Err(Outcome::NoDisk(DiskKind::Virtio)) };
        let s = d.hw.stats();
        let (req0, done0, irq0, line0) = (
            s.requests.load(Ordering::Relaxed),
            s.completions.load(Ordering::Relaxed),
            s.interrupts.load(Ordering::Relaxed),
            d.irq_count(),
        );
        completion_accounting(&t)?;
        let reqs = d.hw.stats().requests.load(Ordering::Relaxed) - req0;
        check_eq!(d.hw.stats().completions.load(Ordering::Relaxed) - done0, reqs);
        check_eq!(d.hw.in_flight(), 0);
        if d.irq.is_some() {
            let handler_runs = d.hw.stats().interrupts.load(Ordering::Relaxed) - irq0;
            check!(handler_runs > 0, "{} requests completed without an interrupt", reqs);
            check_eq!(d.irq_count() - line0, handler_runs);
            check!(handler_runs <= reqs, "{} interrupts for {} requests", handler_runs, reqs);
        }
        Ok(())
    }
}

ktest! {
    fn virtio_corrupt_used_ring_is_a_device_error() -> TestResult {
        corrupt_used_ring()
    }
}

/// Without the driver's test hooks there is nothing to inject with (`cargo xtask test` always
/// builds with them).
#[cfg(not(feature = "fault-injection"))]
fn corrupt_used_ring() -> TestResult {
    Err(Outcome::Skip(
        "kernel built without the fault-injection feature",
    ))
}

#[cfg(feature = "fault-injection")]
fn corrupt_used_ring() -> TestResult {
    let t = virtio()?;
    let Some(d) = block::virtio::disk() else {
        return Err(Outcome::NoDisk(DiskKind::Virtio));
    };
    let s = d.hw.stats();
    let (bad0, resets0) = (
        s.bad_used_ids.load(Ordering::Relaxed),
        s.resets.load(Ordering::Relaxed),
    );
    // An id outside the ring, then an id that names no chain in flight (a double completion).
    for (k, id) in [9999u32, 0].into_iter().enumerate() {
        check!(
            d.hw.inject_corrupt_used(id),
            "requests in flight at injection"
        );
        check_eq!(
            d.hw.stats().bad_used_ids.load(Ordering::Relaxed),
            bad0 + k as u64 + 1
        );
        check_eq!(
            d.hw.stats().resets.load(Ordering::Relaxed),
            resets0 + k as u64 + 1
        );
        check!(!d.hw.is_dead(), "device dead after a reset");
    }
    // A corrupt id on a real completion: the device is reset, the request it cut off ends
    // with `Aborted`, the block layer dispatches it again on the reset device (a requeue, not
    // a retry) and it succeeds.
    let before = (t.stats)();
    let mut w = dma(4096)?;
    fill(w.as_mut_slice(), 66);
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the
    // bio) and are not touched meanwhile.
    unsafe { io_ok(&t, Op::Write, 100, &[(w.phys(), 4096)], BioFlags::empty()) }?;
    d.hw.corrupt_next_used_id(77);
    let r = dma(4096)?;
    // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the
    // bio) and are not touched meanwhile.
    unsafe { io_ok(&t, Op::Read, 100, &[(r.phys(), 4096)], BioFlags::empty()) }?;
    check!(r.as_slice() == w.as_slice(), "read after reset wrong");
    check_eq!(d.hw.stats().bad_used_ids.load(Ordering::Relaxed), bad0 + 3);
    let after = (t.stats)();
    check!(
        after.requeues > before.requeues,
        "the request the reset cut off was not dispatched again"
    );
    check_eq!(after.retries, before.retries);
    check!(
        d.hw.stats().errors.load(Ordering::Relaxed) > 0,
        "no device error reported"
    );
    // Still working afterwards.
    readback_start_middle_end(&t)
}
