//! `mode=run`: real I/O on the disk. Saves the last MiB of the disk, writes a pattern there
//! (plugged 4 KiB bios that merge), reads it back through scattered pages (split by the queue
//! limits), checks it, puts the old contents back, flushes, and prints what the stack did.

use core::sync::atomic::{AtomicU32, Ordering};

use blk::mem::DmaRegion;
use blk::{Bio, BioFlags, BioVec, BlkError, BlockDevice, Op, Wait, submit_bio, submit_bio_wait};
use hal::DmaBuf;

use super::{IO_SET, cpu_ctx, virtio};

const REGION: usize = 1 << 20;
const PAGES: usize = REGION / 4096;

static DONE: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

fn end_io(bio: Bio) {
    if bio.status().is_err() {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    DONE.fetch_add(1, Ordering::Release);
}

fn bio(
    dev: &'static dyn BlockDevice,
    op: Op,
    sector: u64,
    segs: &mut dyn Iterator<Item = BioVec>,
    n: usize,
) -> Result<Bio, BlkError> {
    let mut b = IO_SET.alloc((), op, n.max(1), Wait::Hook(super::wait))?;
    b.set_dev(dev);
    b.set_sector(sector);
    for v in segs {
        b.add_vec(v)?;
    }
    Ok(b)
}

fn wait_bio(b: Bio) -> Result<(), BlkError> {
    submit_bio_wait(cpu_ctx(), b, super::wait).0
}

/// Runs the demo; `false` if anything failed.
pub fn run() -> bool {
    let Some(d) = virtio::disk() else {
        defmt::println!("run: no virtio-blk disk (add one with `cargo xtask run --disk virtio`)");
        return true;
    };
    match demo(d) {
        Ok(()) => true,
        Err(e) => {
            defmt::error!("run: I/O failed: {}", defmt::Debug2Format(&e));
            false
        }
    }
}

fn demo(d: &'static virtio::VirtioDisk) -> Result<(), BlkError> {
    let dev: &'static dyn BlockDevice = d.queue;
    let cap = dev.capacity();
    if cap < (REGION as u64 >> 9) * 2 {
        return Err(BlkError::OutOfRange);
    }
    let start = cap - (REGION as u64 >> 9);
    // Regions given up for good (the demo runs once per boot): safe code can build segments
    // of them, and an early return with a bio in flight leaves nothing dangling.
    let region = |len| {
        DmaBuf::alloc(len, 4096)
            .map(DmaRegion::from_dma_buf)
            .map_err(|_| BlkError::NoMemory)
    };
    let saved = region(REGION)?;
    let mut pattern = region(REGION)?;
    // Every other page: the read-back lands in scattered memory.
    let scattered = region(2 * REGION)?;
    let seg = |r: &DmaRegion, off: usize, len: usize| {
        r.segment(off, len as u32).ok_or(BlkError::InvalidArgument)
    };
    let s0 = d.queue.stats().snapshot();
    let (irq0, m0, hw0) = (
        d.irq_count(),
        IO_SET.stats(),
        d.hw.stats().requests.load(Ordering::Relaxed),
    );
    let t0 = super::clock();

    // 1. Save what is there.
    wait_bio(bio(
        dev,
        Op::Read,
        start,
        &mut core::iter::once(seg(&saved, 0, REGION)?),
        1,
    )?)?;
    // 2. Pattern, as 256 plugged 4 KiB writes.
    for (i, w) in pattern.as_mut_slice().chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&(0x5a5a_0000u32 ^ i as u32).to_le_bytes());
    }
    DONE.store(0, Ordering::Relaxed);
    FAILED.store(0, Ordering::Relaxed);
    {
        let _plug = cpu_ctx().plug();
        for i in 0..PAGES {
            let v = seg(&pattern, i * 4096, 4096)?;
            let mut b = bio(
                dev,
                Op::Write,
                start + (i as u64) * 8,
                &mut core::iter::once(v),
                1,
            )?;
            b.set_end_io(end_io);
            submit_bio(cpu_ctx(), b).map_err(|(e, _)| e)?;
        }
    }
    while DONE.load(Ordering::Acquire) < PAGES as u32 {
        super::wait();
    }
    if FAILED.load(Ordering::Relaxed) != 0 {
        return Err(BlkError::Io);
    }
    // 3. Read back into scattered pages (more segments than one request takes: split).
    let mut segs = (0..PAGES).filter_map(|i| scattered.segment(i * 8192, 4096));
    wait_bio(bio(dev, Op::Read, start, &mut segs, PAGES)?)?;
    let ok = (0..PAGES).all(|i| {
        scattered.as_slice()[i * 8192..i * 8192 + 4096]
            == pattern.as_slice()[i * 4096..(i + 1) * 4096]
    });
    // 4. Put the old contents back, durably.
    let mut one = core::iter::once(seg(&saved, 0, REGION)?);
    let mut restore = bio(dev, Op::Write, start, &mut one, 1)?;
    restore.set_flags(BioFlags::FUA);
    wait_bio(restore)?;
    wait_bio(bio(dev, Op::Flush, 0, &mut core::iter::empty(), 0)?)?;
    let ns = super::clock() - t0;

    // 5. QD1 4 KiB reads: cost of the submit path (bio to doorbell) and the whole round trip,
    // in `arch::cycles()` units (guest instructions under `-icount shift=0` on x86_64).
    const QD1: u64 = 256;
    let (mut submit, mut total) = (0u64, 0u64);
    for i in 0..QD1 {
        let v = seg(&scattered, 0, 4096)?;
        let mut b = bio(
            dev,
            Op::Read,
            start + (i % 256) * 8,
            &mut core::iter::once(v),
            1,
        )?;
        b.set_end_io(end_io);
        DONE.store(0, Ordering::Relaxed);
        let t0 = crate::arch::cycles();
        submit_bio(cpu_ctx(), b).map_err(|(e, _)| e)?;
        let t1 = crate::arch::cycles();
        while DONE.load(Ordering::Acquire) == 0 {
            super::wait();
        }
        submit += t1 - t0;
        total += crate::arch::cycles() - t0;
    }
    defmt::println!(
        "qd1 4 KiB read: submit path {=u64} cycles, round trip {=u64} cycles (mean of {=u64})",
        submit / QD1,
        total / QD1,
        QD1
    );

    let s = d.queue.stats().snapshot();
    let m = IO_SET.stats();
    defmt::println!(
        "run: virtio-blk ({}): {=u64} KiB written and read back at sector {=u64}: {=str} ({=u64} us)",
        d.attach,
        (2 * REGION as u64) / 1024,
        start,
        if ok { "pattern matches" } else { "MISMATCH" },
        ns / 1000
    );
    defmt::println!("  what                      count");
    defmt::println!(
        "  bios submitted        {=u64}",
        s.bios_submitted - s0.bios_submitted
    );
    defmt::println!(
        "  requests dispatched   {=u64}",
        s.requests_dispatched - s0.requests_dispatched
    );
    defmt::println!(
        "  descriptor chains     {=u64}",
        d.hw.stats().requests.load(Ordering::Relaxed) - hw0
    );
    defmt::println!(
        "  merges (back/front)   {=u64}/{=u64}",
        s.merges_back - s0.merges_back,
        s.merges_front - s0.merges_front
    );
    defmt::println!("  splits                {=u64}", s.splits - s0.splits);
    defmt::println!("  requeues              {=u64}", s.requeues - s0.requeues);
    defmt::println!("  interrupts            {=u64}", d.irq_count() - irq0);
    defmt::println!(
        "  doorbells (skipped)   {=u64} ({=u64})",
        d.hw.stats().notifies.load(Ordering::Relaxed),
        d.hw.stats().notifies_suppressed.load(Ordering::Relaxed)
    );
    defmt::println!("  bio allocs            {=u64}", m.allocs - m0.allocs);
    defmt::println!(
        "  mempool reserve hits  {=u64}",
        m.reserve_hits - m0.reserve_hits
    );
    defmt::println!("  mempool high water    {=u64}", m.high_water);
    if ok { Ok(()) } else { Err(BlkError::Io) }
}
