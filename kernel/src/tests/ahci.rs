//! AHCI: the block-device conformance suite on the SATA disk, a request that fills the PRDT,
//! IDENTIFY DEVICE through passthrough, and injected read and write errors (QEMU blkdebug, named
//! on the command line by `ahci_eio_read=SECTOR` / `ahci_eio_write=SECTOR`) in a QD32 workload.
//! With `ahci=poll` on the command line the same tests run with completions polled, and one more
//! checks that nothing came through an interrupt. With `ahci_disks=2` on the command line (the
//! profile has two disks on two ports), each is checked to be its own disk on its own port and
//! queue. Every CPU submits to the one command list at once; with MSI every completion runs
//! on the interrupt's CPU.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use blk::{Bio, BioFlags, BioVec, BlkError, Op, Wait, submit_bio};
use hal::{DmaBuf, PhysAddr};

use super::blockdev::{
    Target, completion_accounting, flush_and_fua, full_depth_in_flight, multi_segment_scattered,
    past_end_refused, plug_merges, readback_start_middle_end, single_sector_and_1mib,
    split_by_limits,
};
use crate::block::{self, IO_SET, MAX_CPUS, ahci::AhciDisk, cpu_ctx};
use crate::ktest::{Outcome, TestResult, fail};

fn disk() -> Result<&'static AhciDisk, Outcome> {
    block::ahci::disk().ok_or(Outcome::NoDisk(block::DiskKind::Ahci))
}

fn target() -> Result<Target, Outcome> {
    let d = disk()?;
    Ok(Target {
        dev: d.queue,
        stats: || {
            block::ahci::disk()
                .map(|d| d.queue.stats().snapshot())
                .unwrap_or_default()
        },
        tags_in_use: || block::ahci::disk().map_or(0, |d| d.queue.tags_in_use()),
        depth: ahci::QUEUE_DEPTH,
        max_request_bytes: d.queue.limits().max_bytes(),
        irq_count: || block::ahci::disk().map_or(0, |d| d.irq_count()),
    })
}

fn dma(len: usize) -> Result<DmaBuf, Outcome> {
    DmaBuf::alloc(len, 4096).map_err(|e| fail(format_args!("no DMA memory: {:?}", e)))
}

fn pattern(buf: &mut [u8], seed: u32) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        let v = seed.wrapping_mul(0x2545_f491) ^ (i as u32).wrapping_mul(0x9e37_79b9);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// [`super::blockdev::io`] without flags, failing the test on an error.
///
/// # Safety
/// As for [`super::blockdev::io`].
unsafe fn io_ok(t: &Target, op: Op, sector: u64, segs: &[(PhysAddr, u32)]) -> TestResult {
    // SAFETY: the caller's promise (the same contract).
    unsafe { super::blockdev::io(t, op, sector, segs, BioFlags::empty()) }
        .map_err(|e| fail(format_args!("{:?} at sector {}: {:?}", op, sector, e)))
}

ktest! { fn ahci_readback_start_middle_end() -> TestResult { readback_start_middle_end(&target()?) } }
ktest! { fn ahci_past_end_refused() -> TestResult { past_end_refused(&target()?) } }
ktest! { fn ahci_single_sector_and_1mib() -> TestResult { single_sector_and_1mib(&target()?) } }
ktest! { fn ahci_multi_segment_scattered() -> TestResult { multi_segment_scattered(&target()?) } }
ktest! { fn ahci_split_by_limits() -> TestResult { split_by_limits(&target()?) } }
ktest! { fn ahci_plug_merges() -> TestResult { plug_merges(&target()?) } }
ktest! { fn ahci_full_depth_in_flight() -> TestResult { full_depth_in_flight(&target()?) } }

ktest! {
    fn ahci_flush_and_fua() -> TestResult {
        let t = target()?;
        let d = disk()?;
        let f0 = d.hw.stats().flushes.load(Ordering::Relaxed);
        flush_and_fua(&t)?;
        if d.hw.info().identify.write_cache {
            // The flush, the FUA write's post-flush and the PREFLUSH write's pre-flush.
            check_eq!(d.hw.stats().flushes.load(Ordering::Relaxed) - f0, 3);
        }
        Ok(())
    }
}

ktest! {
    fn ahci_completion_accounting_ncq_and_interrupts() -> TestResult {
        let t = target()?;
        let d = disk()?;
        let s = d.hw.stats();
        let (irq0, ncq0, done0, req0) = (
            s.interrupts.load(Ordering::Relaxed),
            s.ncq_commands.load(Ordering::Relaxed),
            s.completions.load(Ordering::Relaxed),
            s.requests.load(Ordering::Relaxed),
        );
        completion_accounting(&t)?;
        check_eq!(d.hw.in_flight(), 0);
        let reqs = s.requests.load(Ordering::Relaxed) - req0;
        check_eq!(s.completions.load(Ordering::Relaxed) - done0, reqs);
        if d.hw.info().ncq {
            check!(s.ncq_commands.load(Ordering::Relaxed) - ncq0 >= 32, "reads did not use NCQ");
        }
        if d.irq.is_some() {
            check!(s.interrupts.load(Ordering::Relaxed) > irq0, "no interrupt for 32 reads");
        }
        if cfg!(target_arch = "x86_64") && d.hw.mode() == ahci::Mode::Interrupt {
            check!(d.attach == block::Attach::Msi, "ICH9 offers MSI, but {:?} is used", d.attach);
        }
        Ok(())
    }
}

ktest! {
    fn ahci_request_fills_the_prdt() -> TestResult {
        let t = target()?;
        let d = disk()?;
        // 128 scattered 512-byte segments (every other 1 KiB): one request, 128 PRDT entries.
        const N: usize = ahci::cmd::PRDT_ENTRIES;
        let mut arena = dma(N * 1024)?;
        pattern(arena.as_mut_slice(), 77);
        let segs: heapless::Vec<(PhysAddr, u32), N> =
            (0..N).map(|i| (arena.phys().add((i * 1024) as u64), 512)).collect();
        let before = (t.stats)();
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Write, 30000, &segs) }?;
        check_eq!((t.stats)().splits, before.splits);
        check_eq!(d.hw.stats().max_prdt_entries.load(Ordering::Relaxed), N as u64);
        let flat = dma(N * 512)?;
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Read, 30000, &[(flat.phys(), (N * 512) as u32)]) }?;
        for i in 0..N {
            check!(
                flat.as_slice()[i * 512..(i + 1) * 512] == arena.as_slice()[i * 1024..i * 1024 + 512],
                "segment {} read back wrong",
                i
            );
        }
        // And scattered reads into the same 128 segments.
        arena.as_mut_slice().fill(0);
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Read, 30000, &segs) }?;
        for i in 0..N {
            check!(
                arena.as_slice()[i * 1024..i * 1024 + 512] == flat.as_slice()[i * 512..(i + 1) * 512],
                "scattered segment {} read wrong",
                i
            );
        }
        Ok(())
    }
}

ktest! {
    fn ahci_identify_through_passthrough() -> TestResult {
        let d = disk()?;
        let buf = dma(512)?;
        let res = d
            .queue
            // SAFETY: `buf` is this test's DMA buffer, alive until after `passthrough_wait`
            // returns (the command has completed) and not touched meanwhile.
            .passthrough_wait(ahci::pt::identify(unsafe { BioVec::new(buf.phys(), 512) }), block::wait)
            .map_err(|(e, _)| fail(format_args!("passthrough refused: {:?}", e)))?;
        check!(res.status.is_ok(), "IDENTIFY failed: {:?}", res.status);
        let mut bytes = [0u8; 512];
        bytes.copy_from_slice(buf.as_slice());
        let id = ahci::IdentifyInfo::parse(&ahci::spec::words(&bytes))
            .map_err(|e| fail(format_args!("IDENTIFY data: {:?}", e)))?;
        check_eq!(id, d.hw.info().identify);
        check_eq!(id.sectors(), blk::BlockDevice::capacity(d.queue));
        // A flush through passthrough too, then normal I/O still works.
        let res = d
            .queue
            .passthrough_wait(ahci::pt::flush(), block::wait)
            .map_err(|(e, _)| fail(format_args!("passthrough refused: {:?}", e)))?;
        check!(res.status.is_ok(), "FLUSH CACHE EXT failed: {:?}", res.status);
        readback_start_middle_end(&target()?)
    }
}

ktest! {
    #[only_with = "ahci=poll"]
    fn ahci_polling_mode_completes_without_interrupts() -> TestResult {
        let t = target()?;
        let d = disk()?;
        check_eq!(d.hw.mode(), ahci::Mode::Polling);
        check_eq!(d.attach, block::Attach::Polled);
        check!(d.irq.is_none(), "an interrupt line is attached in polling mode");
        let s = d.hw.stats();
        let (irq0, done0, req0, ncq0) = (
            s.interrupts.load(Ordering::Relaxed),
            s.completions.load(Ordering::Relaxed),
            s.requests.load(Ordering::Relaxed),
            s.ncq_commands.load(Ordering::Relaxed),
        );
        // 32 reads at once (NCQ when the disk does it), then a read-back of written data.
        full_depth_in_flight(&t)?;
        readback_start_middle_end(&t)?;
        let reqs = s.requests.load(Ordering::Relaxed) - req0;
        check!(reqs >= 32, "only {} requests", reqs);
        check_eq!(s.completions.load(Ordering::Relaxed) - done0, reqs);
        check_eq!(s.interrupts.load(Ordering::Relaxed), irq0);
        if d.hw.info().ncq {
            check!(s.ncq_commands.load(Ordering::Relaxed) - ncq0 >= 32, "reads did not use NCQ");
        }
        check_eq!(d.hw.in_flight(), 0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Injected errors

static EIO_DONE: AtomicU32 = AtomicU32::new(0);
static EIO_TWICE: AtomicU32 = AtomicU32::new(0);
/// Bit per bio (`private` < 64): completed / completed with `Io`.
static EIO_SEEN: AtomicU64 = AtomicU64::new(0);
static EIO_FAILED: AtomicU64 = AtomicU64::new(0);
static EIO_OTHER: AtomicU32 = AtomicU32::new(0);

fn eio_end_io(bio: Bio) {
    let b = 1u64 << (bio.private() % 64);
    if EIO_SEEN.fetch_or(b, Ordering::AcqRel) & b != 0 {
        EIO_TWICE.fetch_add(1, Ordering::Relaxed);
    }
    match bio.status() {
        Ok(()) => {}
        Err(BlkError::Io) => {
            EIO_FAILED.fetch_or(b, Ordering::AcqRel);
        }
        Err(e) => {
            EIO_OTHER.store(e.code(), Ordering::Relaxed);
        }
    }
    EIO_DONE.fetch_add(1, Ordering::Release);
}

fn cmdline_sector(key: &str) -> Option<u64> {
    crate::boot::cmdline_arg(crate::boot_info().cmdline, key)?
        .parse()
        .ok()
}

/// 32 bios of 4 KiB, one of them covering `bad`, all in flight at once; returns which failed.
fn qd32_with_bad_sector(t: &Target, op: Op, bad: u64, buf: &DmaBuf) -> Result<u64, Outcome> {
    EIO_DONE.store(0, Ordering::Relaxed);
    EIO_TWICE.store(0, Ordering::Relaxed);
    EIO_SEEN.store(0, Ordering::Relaxed);
    EIO_FAILED.store(0, Ordering::Relaxed);
    EIO_OTHER.store(0, Ordering::Relaxed);
    // Every other 4 KiB block from 8 blocks before the bad sector's block: nothing merges.
    let first = (bad & !7).saturating_sub(8 * 16);
    let mut expect = 0u64;
    crate::arch::without_interrupts(|| -> TestResult {
        for i in 0..32u64 {
            let sector = first + i * 16;
            if (sector..sector + 8).contains(&bad) {
                expect |= 1 << i;
            }
            let mut bio = IO_SET
                .alloc((), op, 1, Wait::Hook(block::wait))
                .map_err(|e| fail(format_args!("bio: {:?}", e)))?;
            bio.set_dev(t.dev);
            bio.set_sector(sector);
            // SAFETY: page `i` of `buf`, this test's DMA buffer, which outlives the loop that
            // waits for every bio below; each bio has its own page.
            bio.add_vec(unsafe { BioVec::new(buf.phys().add(i * 4096), 4096) })
                .map_err(|e| fail(format_args!("vec: {:?}", e)))?;
            bio.set_end_io(eio_end_io);
            bio.set_private(i as usize);
            submit_bio(cpu_ctx(), bio).map_err(|(e, _)| fail(format_args!("submit: {:?}", e)))?;
        }
        Ok(())
    })?;
    check!(
        expect.count_ones() == 1,
        "sector {} not covered by the workload",
        bad
    );
    let start = block::clock();
    while EIO_DONE.load(Ordering::Acquire) < 32 {
        check!(
            block::clock() - start < 60_000_000_000,
            "only {} of 32 bios completed",
            EIO_DONE.load(Ordering::Acquire)
        );
        block::wait();
    }
    check_eq!(EIO_DONE.load(Ordering::Acquire), 32);
    check_eq!(EIO_TWICE.load(Ordering::Relaxed), 0);
    check_eq!(EIO_SEEN.load(Ordering::Relaxed), u32::MAX as u64);
    check_eq!(EIO_OTHER.load(Ordering::Relaxed), 0);
    let failed = EIO_FAILED.load(Ordering::Relaxed);
    check!(
        failed == expect,
        "failed bios {:#x}, expected {:#x}",
        failed,
        expect
    );
    Ok(failed)
}

ktest! {
    fn ahci_injected_read_and_write_errors() -> TestResult {
        let t = target()?;
        let d = disk()?;
        let (Some(bad_read), Some(bad_write)) =
            (cmdline_sector("ahci_eio_read"), cmdline_sector("ahci_eio_write"))
        else {
            return Err(Outcome::Skip("no injected errors in this profile"));
        };
        let s = d.hw.stats();
        let (rec0, err0) = (s.recoveries.load(Ordering::Relaxed), s.errors.load(Ordering::Relaxed));
        let mut buf = dma(32 * 4096)?;
        pattern(buf.as_mut_slice(), 99);
        qd32_with_bad_sector(&t, Op::Read, bad_read, &buf)?;
        qd32_with_bad_sector(&t, Op::Write, bad_write, &buf)?;
        check!(s.recoveries.load(Ordering::Relaxed) > rec0, "no recovery ran");
        check!(s.errors.load(Ordering::Relaxed) > err0, "no error completed");
        check!(!d.hw.is_dead(), "port dead after recovery");
        check_eq!(d.hw.in_flight(), 0);
        defmt::println!(
            "ahci errors: recoveries {=u64}, resets {=u64}, log reads {=u64}, isolations {=u64}, replays {=u64}",
            s.recoveries.load(Ordering::Relaxed) - rec0,
            s.port_resets.load(Ordering::Relaxed),
            s.log_reads.load(Ordering::Relaxed),
            s.isolations.load(Ordering::Relaxed),
            s.replays.load(Ordering::Relaxed)
        );
        // The port keeps working: the rest of the suite's read-back, and QD32 elsewhere.
        readback_start_middle_end(&t)?;
        full_depth_in_flight(&t)
    }
}

// ---------------------------------------------------------------------------------------------
// Every port with a disk

/// The `N`th attached AHCI disk's queue counters, tags in use and interrupts (for [`Target`]'s
/// function pointers).
fn nth_stats<const N: usize>() -> blk::StatsSnapshot {
    block::ahci::disks()
        .nth(N)
        .map(|d| d.queue.stats().snapshot())
        .unwrap_or_default()
}
fn nth_tags<const N: usize>() -> usize {
    block::ahci::disks()
        .nth(N)
        .map_or(0, |d| d.queue.tags_in_use())
}
fn nth_irqs<const N: usize>() -> u64 {
    block::ahci::disks().nth(N).map_or(0, |d| d.irq_count())
}

/// A [`Target`] on the `n`th attached AHCI disk.
fn target_on(n: usize, d: &'static AhciDisk) -> Result<Target, Outcome> {
    macro_rules! fns {
        ($($k:literal)*) => {
            match n {
                $($k => (nth_stats::<$k> as fn() -> blk::StatsSnapshot, nth_tags::<$k> as fn() -> usize, nth_irqs::<$k> as fn() -> u64),)*
                _ => return Err(fail(format_args!("disk {} beyond the limit", n))),
            }
        };
    }
    const _: () = assert!(block::ahci::MAX_DISKS == 6);
    let (stats, tags_in_use, irq_count) = fns!(0 1 2 3 4 5);
    Ok(Target {
        dev: d.queue,
        stats,
        tags_in_use,
        depth: ahci::QUEUE_DEPTH,
        max_request_bytes: d.queue.limits().max_bytes(),
        irq_count,
    })
}

ktest! {
    #[only_with = "ahci_disks=2"]
    fn ahci_every_port_with_a_disk_is_attached_and_distinct() -> TestResult {
        let disks: heapless::Vec<&'static AhciDisk, { block::ahci::MAX_DISKS }> =
            block::ahci::disks().collect();
        // `ahci_disks=N` on the command line: the profile puts N disks on N ports.
        let expected: Option<usize> = crate::boot::cmdline_arg(crate::boot_info().cmdline, "ahci_disks")
            .and_then(|v| v.parse().ok());
        let Some(n) = expected else {
            return Err(fail(format_args!("ahci_disks=N is not a number")));
        };
        check!(disks.len() == n, "{} AHCI disks attached, the profile has {}", disks.len(), n);
        // Different ports, different drives, different queues.
        for (i, a) in disks.iter().enumerate() {
            for b in &disks[i + 1..] {
                check!(a.hw.port() != b.hw.port(), "two disks on port {}", a.hw.port());
                check!(
                    a.hw.model_serial().1 != b.hw.model_serial().1,
                    "ports {} and {} report the same serial {}",
                    a.hw.port(),
                    b.hw.port(),
                    a.hw.model_serial().1
                );
                check!(!core::ptr::eq(a.queue, b.queue), "ports {} and {} share a queue", a.hw.port(), b.hw.port());
            }
        }
        // The same sector of every disk gets its own pattern; each reads back its own, so the
        // writes went to different media.
        const SECTOR: u64 = 4096;
        let mut w = dma(4096)?;
        for (i, d) in disks.iter().enumerate() {
            pattern(w.as_mut_slice(), 0xd15c_0000 + i as u32);
            // SAFETY: `w` is this test's DMA buffer; the call waits for the bio.
            unsafe { io_ok(&target_on(i, d)?, Op::Write, SECTOR, &[(w.phys(), 4096)]) }?;
        }
        let r = dma(4096)?;
        for (i, d) in disks.iter().enumerate() {
            // SAFETY: `r` is this test's DMA buffer; the call waits for the bio.
            unsafe { io_ok(&target_on(i, d)?, Op::Read, SECTOR, &[(r.phys(), 4096)]) }?;
            pattern(w.as_mut_slice(), 0xd15c_0000 + i as u32);
            check!(
                r.as_slice() == w.as_slice(),
                "port {}: sector {} does not hold what was written to this disk",
                d.hw.port(),
                SECTOR
            );
        }
        // Every disk takes the whole read-back check and a full queue.
        for (i, d) in disks.iter().enumerate() {
            let t = target_on(i, d)?;
            readback_start_middle_end(&t)?;
            full_depth_in_flight(&t)?;
            check_eq!(d.hw.in_flight(), 0);
            check!(!d.hw.is_dead(), "port {} dead", d.hw.port());
        }
        Ok(())
    }
}

/// Reads per CPU and round in the every-CPU test (four CPUs fill the 32 NCQ slots).
const EC_BIOS: u32 = 8;
/// Rounds of the every-CPU test.
const EC_ROUNDS: u32 = 8;
static EC_SLAB: blk::BioSlab<u32, { MAX_CPUS * 8 }> = blk::BioSlab::new();
/// Bios of the every-CPU test; the front pad is `cpu * EC_BIOS + i`.
static EC_SET: blk::BioSet<u32> = blk::BioSet::new(&EC_SLAB, 4, None);
/// Times each bio of the running round ended.
static EC_ENDS: [AtomicU32; MAX_CPUS * EC_BIOS as usize] =
    [const { AtomicU32::new(0) }; MAX_CPUS * EC_BIOS as usize];
/// Bios of each submitting CPU still in flight.
static EC_INFLIGHT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Completions counted by the CPU they ran on.
static EC_ON: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static EC_ERRORS: AtomicU32 = AtomicU32::new(0);
static EC_FAILED: AtomicU32 = AtomicU32::new(0);

fn ec_end_io(bio: Bio) {
    EC_ON[crate::arch::cpu_id() & (MAX_CPUS - 1)].fetch_add(1, Ordering::Relaxed);
    if bio.status().is_err() {
        EC_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(&n) = bio.front::<u32>() {
        if let Some(e) = EC_ENDS.get(n as usize) {
            e.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(c) = EC_INFLIGHT.get((n / EC_BIOS) as usize) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One CPU's round: `EC_BIOS` 4 KiB reads of its own region, all in flight at once.
fn ec_reads(cpu: usize) {
    let Ok(d) = disk() else { return };
    let Ok(buf) = DmaBuf::alloc(EC_BIOS as usize * 4096, 4096) else {
        EC_FAILED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let base = 1024 + cpu as u64 * EC_BIOS as u64 * 8;
    for i in 0..EC_BIOS {
        let n = cpu as u32 * EC_BIOS + i;
        let w = Wait::Hook(block::wait);
        let Ok(mut b) = EC_SET.alloc_on(cpu as u32, n, Op::Read, 1, w) else {
            EC_FAILED.fetch_add(1, Ordering::Relaxed);
            break;
        };
        let at = PhysAddr(buf.phys().0 + i as u64 * 4096);
        // SAFETY: inside `buf`, freed only after every bio of this CPU ended (the wait
        // below); the CPU does not touch it meanwhile.
        if b.add_vec(unsafe { BioVec::new(at, 4096) }).is_err() {
            EC_FAILED.fetch_add(1, Ordering::Relaxed);
            break;
        }
        b.set_dev(d.queue);
        b.set_sector(base + i as u64 * 8);
        b.set_end_io(ec_end_io);
        EC_INFLIGHT[cpu].fetch_add(1, Ordering::AcqRel);
        if submit_bio(cpu_ctx(), b).is_err() {
            EC_INFLIGHT[cpu].fetch_sub(1, Ordering::AcqRel);
            EC_FAILED.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    while EC_INFLIGHT[cpu].load(Ordering::Acquire) != 0 {
        crate::arch::interrupts_disable();
        if EC_INFLIGHT[cpu].load(Ordering::Acquire) != 0 {
            block::wait();
        }
        crate::arch::interrupts_enable();
    }
    drop(buf);
}

ktest! {
    fn ahci_every_cpu_submits_completions_on_the_interrupts_cpu() -> TestResult {
        // One command list shared by every CPU; with MSI and several CPUs every completion
        // runs on the CPU that owns the interrupt, and every bio ends exactly once.
        let d = disk()?;
        let cpus = crate::arch::cpus_online().min(MAX_CPUS);
        check_eq!(d.queue.nr_hw_contexts(), 1);
        let owner = block::ahci::completion_cpu();
        if cpus > 1 && d.attach == block::Attach::Msi {
            check!(owner.is_some(), "MSI on {} CPUs, but no completion CPU", cpus);
        }
        EC_SET.init().map_err(|e| fail(format_args!("bio set: {:?}", e)))?;
        for c in &EC_ON {
            c.store(0, Ordering::Relaxed);
        }
        EC_ERRORS.store(0, Ordering::Relaxed);
        EC_FAILED.store(0, Ordering::Relaxed);
        let kicks0 = d.hw.stats().kicks.load(Ordering::Relaxed);
        let mut delivered0 = [0u64; MAX_CPUS];
        for (c, v) in delivered0.iter_mut().enumerate() {
            *v = block::ahci::delivered_on(c);
        }
        for round in 0..EC_ROUNDS {
            for e in &EC_ENDS {
                e.store(0, Ordering::Relaxed);
            }
            crate::smp::on_each_cpu(ec_reads);
            check_eq!(EC_FAILED.load(Ordering::Relaxed), 0);
            for (n, e) in EC_ENDS.iter().enumerate().take(cpus * EC_BIOS as usize) {
                let times = e.load(Ordering::Relaxed);
                check!(times == 1, "round {}: bio {} ended {} times", round, n, times);
            }
        }
        check_eq!(EC_ERRORS.load(Ordering::Relaxed), 0);
        let total: u32 = EC_ON.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        check_eq!(total, cpus as u32 * EC_BIOS * EC_ROUNDS);
        let mut delivered = [0u64; MAX_CPUS];
        for (c, v) in delivered.iter_mut().enumerate() {
            *v = block::ahci::delivered_on(c) - delivered0[c];
        }
        if let Some(o) = owner {
            // The driver completes every request on the interrupt's CPU. The block layer ends
            // a bio there too, unless its request completed while the submitter was still
            // inside `queue_rq` (then the submitter ends it: about one in a hundred).
            let all: u64 = delivered.iter().sum();
            check!(
                all == total as u64 && delivered[o] == all,
                "the driver completed {} of {} requests, {} of them off CPU {}",
                all,
                total,
                all - delivered[o],
                o
            );
            let on_owner = EC_ON[o].load(Ordering::Relaxed);
            check!(
                on_owner * 10 >= total * 9,
                "{} of {} bios ended off CPU {}",
                total - on_owner,
                total,
                o
            );
        }
        defmt::println!(
            "ahci: {=u32} reads from {=usize} CPUs; the driver completed them on CPUs {=[?]}, the bios ended on CPUs {=[?]}; {=u64} reaps kicked back to the interrupt's CPU",
            total,
            cpus,
            [delivered[0], delivered[1], delivered[2], delivered[3]],
            [
                EC_ON[0].load(Ordering::Relaxed),
                EC_ON[1].load(Ordering::Relaxed),
                EC_ON[2].load(Ordering::Relaxed),
                EC_ON[3].load(Ordering::Relaxed),
            ],
            d.hw.stats().kicks.load(Ordering::Relaxed) - kicks0
        );
        check_eq!(d.hw.in_flight(), 0);
        check_eq!(d.queue.tags_in_use(), 0);
        Ok(())
    }
}
