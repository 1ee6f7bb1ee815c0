//! `mode=run`: what the stack does on each attached disk, without writing to it.
//!
//! For every disk (virtio-blk, AHCI, NVMe) it prints the queue's limits, reads the first MiB as
//! 256 plugged 4 KiB bios (which merge) and again as one bio into scattered pages (split by the
//! queue limits), checks that both reads agree, times QD1 4 KiB reads and prints what the block
//! layer did. None of that writes.
//!
//! The only writes of run mode are the filesystem demo's ([`crate::fs::demo`], through tinyfs,
//! into files), and [`filesystem`] runs it only on a disk that already holds a tinyfs
//! filesystem, after saying what it will write. A disk the kernel does not recognise as this
//! project's is never written.

use core::sync::atomic::{AtomicU32, Ordering};

use blk::mem::DmaRegion;
use blk::{Bio, BioVec, BlkError, BlockDevice, Op, Queue, Wait, submit_bio, submit_bio_wait};
use hal::DmaBuf;

use super::{Attach, IO_SET, ahci, cpu_ctx, nvme, virtio};

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

/// Memory given up for good (the demo runs once per boot): safe code can build segments of it,
/// and an early return with a bio in flight leaves nothing dangling.
fn region(len: usize) -> Result<DmaRegion, BlkError> {
    DmaBuf::alloc(len, 4096)
        .map(DmaRegion::from_dma_buf)
        .map_err(|_| BlkError::NoMemory)
}

fn seg(r: &DmaRegion, off: usize, len: usize) -> Result<BioVec, BlkError> {
    r.segment(off, len as u32).ok_or(BlkError::InvalidArgument)
}

/// One attached disk, as the demo sees it.
struct Shown<const D: usize> {
    name: &'static str,
    queue: &'static Queue<D>,
    attach: Attach,
    irq_count: fn() -> u64,
}

/// Runs the read-only demo on every attached disk; `false` if anything failed.
pub fn run() -> bool {
    let mut ok = true;
    let mut any = false;
    if let Some(d) = virtio::disk() {
        any = true;
        ok &= report(show(&Shown {
            name: "virtio-blk",
            queue: d.queue,
            attach: d.attach,
            irq_count: || virtio::disk().map_or(0, |d| d.irq_count()),
        }));
    }
    if let Some(d) = ahci::disk() {
        any = true;
        ok &= report(show(&Shown {
            name: "ahci",
            queue: d.queue,
            attach: d.attach,
            irq_count: || ahci::disk().map_or(0, |d| d.irq_count()),
        }));
    }
    if let Some(d) = nvme::disk() {
        any = true;
        ok &= report(show(&Shown {
            name: "nvme",
            queue: d.queue,
            attach: d.attach,
            irq_count: || nvme::disk().map_or(0, |d| d.irq_count()),
        }));
    }
    if !any {
        defmt::println!(
            "run: no disk attached (boot a profile with one: `cargo xtask run --disk virtio|ahci|nvme`)"
        );
    }
    ok
}

fn report(r: Result<(), BlkError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            defmt::error!("run: I/O failed: {}", defmt::Debug2Format(&e));
            false
        }
    }
}

fn show<const D: usize>(d: &Shown<D>) -> Result<(), BlkError> {
    let dev: &'static dyn BlockDevice = d.queue;
    let cap = dev.capacity();
    let l = d.queue.limits();
    defmt::println!(
        "run: {=str} disk ({}): {=u64} sectors ({=u64} MiB), logical block {=u32}, max {=u32} sectors x {=u16} segments of {=u32} bytes, read-only {=bool}",
        d.name,
        d.attach,
        cap,
        cap >> 11,
        l.logical_block_size,
        l.max_sectors,
        l.max_segments,
        l.max_segment_size,
        dev.read_only()
    );
    defmt::println!(
        "run: {=str}: reading the first MiB (this demo writes nothing to the disk)",
        d.name
    );
    if cap < (REGION as u64 >> 9) {
        defmt::println!("run: {=str}: smaller than 1 MiB, nothing read", d.name);
        return Ok(());
    }
    let plugged = region(REGION)?;
    // Every other page: the second read lands in scattered memory.
    let scattered = region(2 * REGION)?;
    let s0 = d.queue.stats().snapshot();
    let (irq0, m0) = ((d.irq_count)(), IO_SET.stats());
    let t0 = super::clock();

    // 1. The first MiB as 256 plugged 4 KiB reads, which the queue merges.
    DONE.store(0, Ordering::Relaxed);
    FAILED.store(0, Ordering::Relaxed);
    {
        let _plug = cpu_ctx().plug();
        for i in 0..PAGES {
            let v = seg(&plugged, i * 4096, 4096)?;
            let mut b = bio(dev, Op::Read, (i as u64) * 8, &mut core::iter::once(v), 1)?;
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
    // 2. The same MiB as one bio into scattered pages (more segments than one request takes:
    // split).
    let mut segs = (0..PAGES).filter_map(|i| scattered.segment(i * 8192, 4096));
    wait_bio(bio(dev, Op::Read, 0, &mut segs, PAGES)?)?;
    let agree = (0..PAGES).all(|i| {
        scattered.as_slice()[i * 8192..i * 8192 + 4096]
            == plugged.as_slice()[i * 4096..(i + 1) * 4096]
    });
    let ns = super::clock() - t0;

    // 3. QD1 4 KiB reads: cost of the submit path (bio to doorbell) and the whole round trip,
    // in `arch::cycles()` units (guest instructions under `-icount shift=0` on x86_64).
    const QD1: u64 = 256;
    let (mut submit, mut total) = (0u64, 0u64);
    for i in 0..QD1 {
        let v = seg(&scattered, 0, 4096)?;
        let mut b = bio(dev, Op::Read, (i % 256) * 8, &mut core::iter::once(v), 1)?;
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
    if FAILED.load(Ordering::Relaxed) != 0 {
        return Err(BlkError::Io);
    }
    defmt::println!(
        "run: {=str}: 2 MiB read in {=u64} us, plugged and scattered reads {=str}; qd1 4 KiB read: submit path {=u64} cycles, round trip {=u64} cycles (mean of {=u64})",
        d.name,
        ns / 1000,
        if agree { "agree" } else { "DIFFER" },
        submit / QD1,
        total / QD1,
        QD1
    );

    let s = d.queue.stats().snapshot();
    let m = IO_SET.stats();
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
        "  merges (back/front)   {=u64}/{=u64}",
        s.merges_back - s0.merges_back,
        s.merges_front - s0.merges_front
    );
    defmt::println!("  splits                {=u64}", s.splits - s0.splits);
    defmt::println!("  requeues              {=u64}", s.requeues - s0.requeues);
    defmt::println!("  interrupts            {=u64}", (d.irq_count)() - irq0);
    defmt::println!("  bio allocs            {=u64}", m.allocs - m0.allocs);
    defmt::println!(
        "  mempool reserve hits  {=u64}",
        m.reserve_hits - m0.reserve_hits
    );
    defmt::println!("  mempool high water    {=u64}", m.high_water);
    if agree { Ok(()) } else { Err(BlkError::Io) }
}

/// What the first two blocks of the filesystem device (tinyfs's superblock slots) say.
enum Found {
    /// A superblock slot holds a valid tinyfs (format version 2) superblock of this generation.
    Tinyfs(u64),
    /// Neither slot does (a version-1 filesystem counts as none: it is not mountable).
    Other,
}

/// Reads the superblock slots of `dev`.
fn superblocks(dev: &'static dyn BlockDevice) -> Result<Found, BlkError> {
    const BLOCK: usize = tinyfs::BLOCK_SIZE;
    let buf = region(2 * BLOCK)?;
    let v = seg(&buf, 0, 2 * BLOCK)?;
    wait_bio(bio(dev, Op::Read, 0, &mut core::iter::once(v), 1)?)?;
    let mut newest = None;
    for (at, b) in buf.as_slice().chunks_exact(BLOCK).enumerate() {
        if let Ok(sb) = tinyfs::v2::Superblock::decode(b, at as u64) {
            newest = newest.max(Some(sb.generation));
        }
    }
    Ok(newest.map_or(Found::Other, Found::Tinyfs))
}

/// The filesystem demo ([`crate::fs::demo`]): only on a root device (the virtio disk, or
/// `root=<name>`) that already holds a tinyfs filesystem, and only after saying what it will
/// write. `false` if anything failed; `root=` naming no registered device is a failure.
pub fn filesystem() -> bool {
    let Some(dev) = crate::fs::root_device() else {
        if let Some(name) = crate::fs::root_name() {
            defmt::error!("run: root={=str}: no such device in the registry", name);
            return false;
        }
        return true;
    };
    let name = crate::fs::root_name().unwrap_or("vda");
    match superblocks(dev) {
        Ok(Found::Tinyfs(generation)) => {
            defmt::println!(
                "run: {=str} holds a tinyfs filesystem (generation {=u64}): the filesystem demo will create /demo and write /demo/hello.txt, /demo/big.bin and /demo/runs.txt in it, through tinyfs; nothing else on the disk is written",
                name,
                generation
            );
            crate::fs::demo()
        }
        Ok(Found::Other) => {
            defmt::println!(
                "run: {=str} holds no tinyfs filesystem: run mode writes nothing to it (make one on the host with `cargo xtask mkfs IMAGE --size N`)",
                name
            );
            true
        }
        Err(e) => {
            defmt::error!(
                "run: reading the superblocks of {=str} failed: {}",
                name,
                defmt::Debug2Format(&e)
            );
            false
        }
    }
}
