//! Every CPU at once on one disk (`smp::on_each_cpu`): each CPU writes its own region with a
//! pattern naming the CPU and the sequence number, through the direct, plug/merge and split
//! paths with more bios in flight than the queue has tags; then every CPU reads every region
//! back; every bio must complete exactly once. And a disk whose interrupt goes to a CPU that
//! submits nothing still completes the others' I/O. Until more CPUs are online, both run on
//! the boot CPU (the host tests of `blk` drive the same paths with threads).

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use blk::{Bio, BioSet, BioSlab, BioVec, BlkError, BlockDevice, Op, Wait, submit_bio};
use hal::DmaBuf;

use crate::arch;
use crate::block::{self, DiskKind, MAX_CPUS, cpu_ctx};
use crate::ktest::{Outcome, TestResult, fail};
use crate::smp::on_each_cpu;

/// Rounds per CPU: a direct 4 KiB write, two plugged 4 KiB writes that merge, one more 4 KiB
/// write left in flight.
const ROUNDS: u32 = 16;
/// Bios per CPU: the rounds' four each and the large write that is split.
const BIOS: u32 = ROUNDS * 4 + 1;
/// Largest split write (capped so that every CPU's buffer fits the DMA region).
const SPLIT_MAX: u32 = 2 << 20;
/// Read-back piece.
const PIECE: u32 = 64 << 10;

static SLAB: BioSlab<u32, { MAX_CPUS * 80 }> = BioSlab::new();
/// Bios of these tests; the front pad is the bio's number (`cpu * BIOS + seq`).
static SET: BioSet<u32> = BioSet::new(&SLAB, 4, None);
/// Completions per bio number.
static ENDS: [AtomicU8; MAX_CPUS * BIOS as usize] =
    [const { AtomicU8::new(0) }; MAX_CPUS * BIOS as usize];
static ERRORS: AtomicU32 = AtomicU32::new(0);
/// Bios of the running CPU's phase still in flight, per CPU.
static INFLIGHT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// A CPU's failure message, reported by the test after `on_each_cpu` returns.
static FAILED: AtomicU32 = AtomicU32::new(0);
static FAIL_AT: AtomicU32 = AtomicU32::new(0);

/// The disk under test: the first of virtio-blk, NVMe, AHCI that attached.
fn disk() -> Result<(&'static dyn BlockDevice, u32), Outcome> {
    if let Some(d) = block::virtio::disk() {
        return Ok((d.queue, d.queue.limits().max_bytes()));
    }
    if let Some(d) = block::nvme::disk() {
        return Ok((d.queue, d.queue.limits().max_bytes()));
    }
    if let Some(d) = block::ahci::disk() {
        return Ok((d.queue, d.queue.limits().max_bytes()));
    }
    Err(Outcome::NoDisk(DiskKind::Virtio))
}

fn end_io(bio: Bio) {
    if bio.status().is_err() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(&n) = bio.front::<u32>() {
        if let Some(e) = ENDS.get(n as usize) {
            e.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(c) = INFLIGHT.get((n / BIOS) as usize) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The word at byte `off` of CPU `cpu`'s bio `seq`: names both, and the position.
fn stamp(cpu: usize, seq: u32, off: usize) -> u32 {
    ((cpu as u32) << 28) | (seq << 20) | ((off as u32 / 4) & 0xf_ffff)
}

fn fill(buf: &mut [u8], cpu: usize, seq: u32) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&stamp(cpu, seq, i * 4).to_le_bytes());
    }
}

/// Whether `buf`, read from byte `at` of CPU `cpu`'s bio `seq`, holds its stamps.
fn check(buf: &[u8], cpu: usize, seq: u32, at: usize) -> bool {
    buf.chunks_exact(4)
        .enumerate()
        .all(|(i, w)| w == stamp(cpu, seq, at + i * 4).to_le_bytes())
}

/// Sizes of CPU `cpu`'s writes in order, with the sector where each starts.
struct Layout {
    base: u64,
    split_bytes: u32,
}

impl Layout {
    fn of(dev: &dyn BlockDevice, max_bytes: u32, cpu: usize) -> Layout {
        // One block past the largest request: always split.
        let split_bytes = (max_bytes.min(SPLIT_MAX - 4096) & !4095) + 4096;
        let region = (ROUNDS as u64 * 4 * 4096 + split_bytes as u64) / 512;
        // Regions from the middle of the disk up (other tests use the start and the end).
        let base = (dev.capacity() / 2) & !7;
        Layout {
            base: base + cpu as u64 * region,
            split_bytes,
        }
    }
    fn bytes(&self) -> usize {
        ROUNDS as usize * 4 * 4096 + self.split_bytes as usize
    }
    /// Byte offset and length of bio `seq`.
    fn bio(&self, seq: u32) -> (usize, u32) {
        if seq < ROUNDS * 4 {
            (seq as usize * 4096, 4096)
        } else {
            (ROUNDS as usize * 4 * 4096, self.split_bytes)
        }
    }
}

fn record_failure(line: u32) {
    FAIL_AT.store(line, Ordering::Relaxed);
    FAILED.fetch_add(1, Ordering::Relaxed);
}

/// A bio of CPU `cpu` over `len` bytes at `phys`.
///
/// # Safety
/// `phys..phys + len` is DMA memory of a `DmaBuf` that stays allocated and untouched by the
/// CPU until the bio has completed (the segment contract of `BioVec::new`).
unsafe fn bio(
    dev: &'static dyn BlockDevice,
    cpu: usize,
    n: u32,
    op: Op,
    sector: u64,
    phys: hal::PhysAddr,
    len: u32,
) -> Result<Bio, BlkError> {
    let mut b = SET.alloc_on(cpu as u32, n, op, 1, Wait::Hook(block::wait))?;
    // SAFETY: the caller's promise.
    b.add_vec(unsafe { BioVec::new(phys, len) })?;
    b.set_dev(dev);
    b.set_sector(sector);
    b.set_end_io(end_io);
    Ok(b)
}

fn wait_idle(cpu: usize) {
    while INFLIGHT[cpu].load(Ordering::Acquire) != 0 {
        arch::interrupts_disable();
        if INFLIGHT[cpu].load(Ordering::Acquire) != 0 {
            block::wait();
        }
        arch::interrupts_enable();
    }
}

/// One CPU's writes: all submitted before any is waited for.
fn write_region(cpu: usize) {
    let Ok((dev, max)) = disk() else { return };
    let l = Layout::of(dev, max, cpu);
    let Ok(mut buf) = DmaBuf::alloc(l.bytes(), 4096) else {
        return record_failure(line!());
    };
    for seq in 0..BIOS {
        let (off, len) = l.bio(seq);
        fill(&mut buf.as_mut_slice()[off..off + len as usize], cpu, seq);
    }
    let ctx = cpu_ctx();
    let phys = buf.phys();
    let submit = |seq: u32| -> Result<(), BlkError> {
        let (off, len) = l.bio(seq);
        let n = cpu as u32 * BIOS + seq;
        INFLIGHT[cpu].fetch_add(1, Ordering::AcqRel);
        // SAFETY: `buf` is freed only after `wait_idle` saw every bio of this CPU complete,
        // and the CPU does not touch it meanwhile.
        let b = unsafe {
            bio(
                dev,
                cpu,
                n,
                Op::Write,
                l.base + off as u64 / 512,
                hal::PhysAddr(phys.0 + off as u64),
                len,
            )
        };
        match b {
            Ok(b) => submit_bio(ctx, b).map_err(|(e, _)| e),
            Err(e) => {
                INFLIGHT[cpu].fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    };
    let mut ok = true;
    for r in 0..ROUNDS {
        ok &= submit(r * 4).is_ok();
        {
            let _plug = ctx.plug();
            ok &= submit(r * 4 + 1).is_ok();
            ok &= submit(r * 4 + 2).is_ok();
        }
        ok &= submit(r * 4 + 3).is_ok();
    }
    ok &= submit(ROUNDS * 4).is_ok();
    wait_idle(cpu);
    drop(buf);
    if !ok {
        record_failure(line!());
    }
}

/// One CPU reads every CPU's region back.
fn read_all(cpu: usize) {
    let Ok((dev, max)) = disk() else { return };
    let Ok(buf) = DmaBuf::alloc(PIECE as usize, 4096) else {
        return record_failure(line!());
    };
    for owner in 0..arch::cpus_online().min(MAX_CPUS) {
        let l = Layout::of(dev, max, owner);
        for seq in 0..BIOS {
            let (off, len) = l.bio(seq);
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PIECE);
                let w = Wait::Hook(block::wait);
                let Ok(mut b) = SET.alloc_on(cpu as u32, u32::MAX, Op::Read, 1, w) else {
                    return record_failure(line!());
                };
                // SAFETY: `buf` outlives the wait below, and the CPU reads it only after it.
                let v = unsafe { BioVec::new(buf.phys(), n) };
                if b.add_vec(v).is_err() {
                    return record_failure(line!());
                }
                b.set_dev(dev);
                b.set_sector(l.base + (off as u64 + at as u64) / 512);
                let (st, _b) = blk::submit_bio_wait(cpu_ctx(), b, block::wait);
                let got = &buf.as_slice()[..n as usize];
                if st.is_err() || !check(got, owner, seq, at as usize) {
                    return record_failure(line!());
                }
                at += n;
            }
        }
    }
}

fn reset() {
    for e in &ENDS {
        e.store(0, Ordering::Relaxed);
    }
    ERRORS.store(0, Ordering::Relaxed);
    FAILED.store(0, Ordering::Relaxed);
}

fn failures() -> TestResult {
    if FAILED.load(Ordering::Relaxed) != 0 {
        return Err(fail(format_args!(
            "{} CPU(s) failed (first at kernel/src/tests/mq.rs:{})",
            FAILED.load(Ordering::Relaxed),
            FAIL_AT.load(Ordering::Relaxed)
        )));
    }
    Ok(())
}

ktest! {
    fn all_cpus_write_own_region_read_every_region() -> TestResult {
        let (dev, max_bytes) = disk()?;
        let cpus = arch::cpus_online().min(MAX_CPUS);
        SET.init().map_err(|e| fail(format_args!("bio set: {:?}", e)))?;
        reset();
        let s0 = dev_stats();
        on_each_cpu(write_region);
        failures()?;
        on_each_cpu(read_all);
        failures()?;
        check_eq!(ERRORS.load(Ordering::Relaxed), 0);
        for cpu in 0..cpus {
            for seq in 0..BIOS {
                let n = ENDS[cpu * BIOS as usize + seq as usize].load(Ordering::Relaxed);
                check!(n == 1, "CPU {}'s bio {} ended {} times", cpu, seq, n);
            }
        }
        let s = dev_stats();
        // The large write exceeds a request unless the disk takes requests of 2 MiB or more.
        if max_bytes < SPLIT_MAX - 4096 {
            check!(s.0 > s0.0, "no split ({} before, {} after)", s0.0, s.0);
        }
        check!(s.1 > s0.1, "no merge ({} before, {} after)", s0.1, s.1);
        check_eq!(blk_tags_in_use(), 0);
        let _ = dev;
        Ok(())
    }
}

/// Splits and back merges of the disk's queue so far.
fn dev_stats() -> (u64, u64) {
    let s = if let Some(d) = block::virtio::disk() {
        d.queue.stats().snapshot()
    } else if let Some(d) = block::nvme::disk() {
        d.queue.stats().snapshot()
    } else if let Some(d) = block::ahci::disk() {
        d.queue.stats().snapshot()
    } else {
        Default::default()
    };
    (s.splits, s.merges_back)
}

/// Tags in use in the disk's queue.
fn blk_tags_in_use() -> usize {
    if let Some(d) = block::virtio::disk() {
        d.queue.tags_in_use()
    } else if let Some(d) = block::nvme::disk() {
        d.queue.tags_in_use()
    } else if let Some(d) = block::ahci::disk() {
        d.queue.tags_in_use()
    } else {
        0
    }
}

/// Set once the submitting CPUs are done: the idle CPU stops waiting.
static SUBMITTERS_DONE: AtomicBool = AtomicBool::new(false);
static IDLE_DONE: AtomicU32 = AtomicU32::new(0);

/// CPU 0 (where the disks' single interrupt vector goes until drivers spread them) only
/// waits; every other CPU submits and waits for its own bios. On one CPU, CPU 0 submits.
fn idle_owner(cpu: usize) {
    let cpus = arch::cpus_online().min(MAX_CPUS);
    if cpu == 0 && cpus > 1 {
        while !SUBMITTERS_DONE.load(Ordering::Acquire) {
            block::wait();
        }
        return;
    }
    write_region(cpu);
    if IDLE_DONE.fetch_add(1, Ordering::AcqRel) + 1 == (cpus.max(2) - 1) as u32 {
        SUBMITTERS_DONE.store(true, Ordering::Release);
    }
}

ktest! {
    fn queue_owned_by_an_idle_cpu_completes() -> TestResult {
        disk()?;
        SET.init().map_err(|e| fail(format_args!("bio set: {:?}", e)))?;
        reset();
        SUBMITTERS_DONE.store(false, Ordering::Relaxed);
        IDLE_DONE.store(0, Ordering::Relaxed);
        on_each_cpu(idle_owner);
        failures()?;
        check_eq!(ERRORS.load(Ordering::Relaxed), 0);
        let cpus = arch::cpus_online().min(MAX_CPUS);
        let first = if cpus > 1 { 1 } else { 0 };
        for cpu in first..cpus {
            for seq in 0..BIOS {
                let n = ENDS[cpu * BIOS as usize + seq as usize].load(Ordering::Relaxed);
                check!(n == 1, "CPU {}'s bio {} ended {} times", cpu, seq, n);
            }
        }
        check_eq!(blk_tags_in_use(), 0);
        Ok(())
    }
}
