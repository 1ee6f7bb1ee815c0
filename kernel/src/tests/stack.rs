//! Stacked devices on real controllers (profiles `x86_64-stack`, `riscv64-stack`; gated:
//! `ktest=gated stack`). The machine has virtio-blk `vda` (MBR by sfdisk), AHCI `sda` and
//! `sdb` (GPT by sgdisk; `sdb` sits on a QEMU blkdebug drive injecting errors) and NVMe
//! `nvme0n1` (GPT), and the command line maps:
//!
//! - `st`: striped, chunk 128 sectors, over `vda1` (virtio) and `nvme0n1p1` (NVMe);
//! - `mir`: a 2-leg mirror whose second leg is on the blkdebug drive (a persistent read error
//!   at `mir` sector [`READ_ERR`], write errors at [`WRITE_ERR`]): `sda3` and `sdb3` on x86_64;
//!   `nvme0n1p3` and `sda3` on riscv64, whose machine has one AHCI port (`sda`, on blkdebug);
//!   `nosync`; `root=mir`;
//! - `ms`: mirror of `st` and a third partition (`nvme0n1p3` on x86_64, `vda5` on riscv64),
//!   `sync` (the default: resynced at boot);
//!   `top`: a linear window of `ms` (partition on mirror on striped).
//!
//! Tests: the devices exist; striped data lands on both controllers; the mirror serves through
//! a read error (retried on the good leg) and a write error (the leg is dropped, the device is
//! degraded and says so), then brings the leg back by copying only the dirty regions; tinyfs
//! on a partition and on the mirror, remounted and fsck-clean; the 3-level stack enters its
//! bottom devices at the same stack depth as a raw device; a `sync` mirror (the default) is
//! copied from its primary at creation, a `nosync` one is not; a disk of 4 KiB logical blocks
//! (`nvme0n2`, a GPT in 4 KiB sectors) carries tinyfs on a partition, and with a 512-byte
//! partition a mirror of 4 KiB blocks (tinyfs on it too); a mixed table whose line is not in
//! whole 4 KiB blocks is refused.

use core::sync::atomic::{AtomicUsize, Ordering};

use blk::dm::DmDevice;
use blk::dm::io::{IoRequest, Mem, Region};
use blk::dm::mirror::LegState;
use blk::dm::table::{self, Lower};
use blk::mem::DmaRegion;
use blk::stack::Linear;
use blk::{Bio, BioFlags, BlkError, BlockDevice, CpuCtx, Op, Wait, submit_bio_wait};
use hal::DmaBuf;
use spin::Once;
use tinyfs::FsError;

use crate::block::registry::{self, DevKind};
use crate::block::{self, IO_SET, cpu_ctx, dm};
use crate::fs::{fill_pattern, fs_blocks, pattern_mismatch};
use crate::ktest::{Outcome, TestResult, fail};

/// `mir` sector whose read fails on the blkdebug leg, every time.
const READ_ERR: u64 = 31_000;
/// `mir` sector whose first write fails on the blkdebug leg.
const WRITE_ERR: u64 = 32_000;

fn dev(name: &str) -> Result<&'static registry::Device, Outcome> {
    registry::find(name).ok_or_else(|| fail(format_args!("{} is not registered", name)))
}

fn ok<T>(r: Result<T, FsError>, what: &str) -> Result<T, Outcome> {
    r.map_err(|e| fail(format_args!("{}: {}", what, e)))
}

/// A DMA region of `len` bytes (given up for good: tests run once per boot).
fn region(len: usize) -> Result<DmaRegion, Outcome> {
    DmaBuf::alloc(len, 4096)
        .map(DmaRegion::from_dma_buf)
        .map_err(|e| fail(format_args!("no memory for {} bytes: {:?}", len, e)))
}

/// Reads or writes all of `mem` at `sector` of `dev`, waiting.
fn rw(dev: &'static dyn BlockDevice, op: Op, sector: u64, mem: &DmaRegion) -> Result<(), BlkError> {
    let mut b = IO_SET.alloc((), op, 1, Wait::Hook(block::wait))?;
    b.set_dev(dev);
    b.set_sector(sector);
    b.add_vec(
        mem.segment(0, mem.len() as u32)
            .ok_or(BlkError::InvalidArgument)?,
    )?;
    submit_bio_wait(cpu_ctx(), b, block::wait).0
}

ktest! {
    #[only_with = "stack"]
    fn mapped_devices_from_the_command_line() -> TestResult {
        for (name, sectors) in [("st", 32_768u64), ("mir", 32_768), ("ms", 16_384), ("top", 8192)] {
            let d = dev(name)?;
            check!(matches!(d.kind, DevKind::Mapped(_)), "{} is {:?}", name, d.kind);
            check_eq!((name, d.sectors, d.dev.capacity(), d.block_size), (name, sectors, sectors, 512));
            check!(d.limits.max_sectors > 0 && d.limits.max_segments > 0, "{}: limits {:?}", name, d.limits);
        }
        // The API refuses bad tables with their typed error, and names devices `dm-N`.
        let e = dm::create("bad", "0 8 linear nosuch 0").err();
        check!(
            matches!(&e, Some(dm::CreateError::Table(t)) if t.kind == table::TableErrorKind::DeviceNotFound),
            "{:?}",
            e
        );
        check_eq!(dm::create("st", "0 8 zero").err(), Some(dm::CreateError::NameTaken));
        let z = dm::create("", "0 64 zero;64 64 linear sda2 0").map_err(|e| fail(format_args!("{}", e)))?;
        check!(z.name.starts_with("dm-"), "named {}", z.name.as_str());
        check_eq!(z.sectors, 128);
        // `root=mir`: the filesystem's device is the mirror.
        let root = crate::fs::root_device().ok_or_else(|| fail(format_args!("no root device")))?;
        check!(core::ptr::addr_eq(root as *const dyn BlockDevice, dev("mir")?.dev as *const dyn BlockDevice), "root is not mir");
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn striped_over_two_controllers() -> TestResult {
        let st = dev("st")?.dev;
        let (vda1, nvme) = (dev("vda1")?.dev, dev("nvme0n1p1")?.dev);
        let mut m = region(512 << 10)?;
        fill_pattern(m.as_mut_slice(), 11, 0);
        // 512 KiB from sector 64: chunks of 128 sectors alternate vda1, nvme0n1p1.
        rw(st, Op::Write, 64, &m).map_err(|e| fail(format_args!("write: {:?}", e)))?;
        let mut back = region(512 << 10)?;
        rw(st, Op::Read, 64, &back).map_err(|e| fail(format_args!("read: {:?}", e)))?;
        check!(pattern_mismatch(back.as_mut_slice(), 11, 0).is_none(), "read back differs");
        // Every chunk is where the striping puts it on its controller's disk.
        let mut one = region(64 << 10)?;
        for k in 0..8u64 {
            let s = 64 + k * 128; // first sector of each piece read below (inside one chunk)
            let chunk = s / 128;
            let (leg, leg_sector) = (chunk % 2, (chunk / 2) * 128 + s % 128);
            let lower = if leg == 0 { vda1 } else { nvme };
            rw(lower, Op::Read, leg_sector, &one).map_err(|e| fail(format_args!("leg read: {:?}", e)))?;
            check!(
                pattern_mismatch(&one.as_mut_slice()[..32 << 10], 11, (s - 64) * 512).is_none(),
                "chunk {} not at leg {} sector {}",
                chunk,
                leg,
                leg_sector
            );
        }
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn mirror_survives_blkdebug_errors_and_resyncs_dirty_regions() -> TestResult {
        let mir = dev("mir")?.dev;
        let m = dm::mirror("mir").ok_or_else(|| fail(format_args!("mir has no mirror")))?;
        check!(!m.status().degraded(), "degraded at boot: {:?}", m.status());
        // Data on both legs around the read-error sector; four reads, spread over the legs:
        // those sent to the blkdebug leg fail there and are retried on the other.
        let mut m8 = region(4096)?;
        fill_pattern(m8.as_mut_slice(), 21, 0);
        rw(mir, Op::Write, READ_ERR, &m8).map_err(|e| fail(format_args!("write: {:?}", e)))?;
        for _ in 0..4 {
            let mut r = region(4096)?;
            rw(mir, Op::Read, READ_ERR, &r).map_err(|e| fail(format_args!("read through the error: {:?}", e)))?;
            check!(pattern_mismatch(r.as_mut_slice(), 21, 0).is_none(), "read data differs");
        }
        let st = m.status();
        check!(st.read_errors >= 1 && st.read_retries == st.read_errors, "read errors {} retries {}", st.read_errors, st.read_retries);
        check!(!st.degraded(), "a read error failed a leg");
        // A write the blkdebug leg fails: the write succeeds, the leg leaves service.
        let mut w = region(4096)?;
        fill_pattern(w.as_mut_slice(), 22, 0);
        rw(mir, Op::Write, WRITE_ERR, &w).map_err(|e| fail(format_args!("write through the error: {:?}", e)))?;
        let st = m.status();
        check!(st.degraded(), "not degraded after the write error: {:?}", st);
        check_eq!(st.state[1], LegState::Failed);
        check_eq!(st.state[0], LegState::InSync);
        check!(st.write_errors >= 1, "no write error counted");
        dm::run_deferred(); // logs the failure
        let mut r = region(4096)?;
        rw(mir, Op::Read, WRITE_ERR, &r).map_err(|e| fail(format_args!("degraded read: {:?}", e)))?;
        check!(pattern_mismatch(r.as_mut_slice(), 22, 0).is_none(), "degraded read differs");
        // Flush reaches the leg in service.
        let mut f = IO_SET.alloc((), Op::Flush, 0, Wait::Hook(block::wait)).map_err(|e| fail(format_args!("{:?}", e)))?;
        f.set_dev(mir);
        submit_bio_wait(cpu_ctx(), f, block::wait).0.map_err(|e| fail(format_args!("flush: {:?}", e)))?;
        // Writes while degraded: regions 0 and 4 (1024 sectors each) become dirty, with 31.
        let mut d = region(8192)?;
        fill_pattern(d.as_mut_slice(), 23, 0);
        rw(mir, Op::Write, 100, &d).map_err(|e| fail(format_args!("{:?}", e)))?;
        rw(mir, Op::Write, 4 * 1024 + 8, &d).map_err(|e| fail(format_args!("{:?}", e)))?;
        check_eq!(m.status().dirty_regions, 3);
        // Bring the leg back: three regions copied, then in sync.
        let mut buf = region(64 << 10)?;
        let rep = m
            .restore_leg(1, cpu_ctx(), &mut buf, block::wait)
            .map_err(|e| fail(format_args!("resync: {:?}", e)))?;
        check_eq!(rep.regions_copied, 3);
        let st = m.status();
        check!(!st.degraded() && st.dirty_regions == 0, "after resync: {:?}", st);
        // The leg holds what was written while it was out.
        let sdb3 = m.legs()[1].lower.dev;
        let mut back = region(8192)?;
        rw(sdb3, Op::Read, 4 * 1024 + 8, &back).map_err(|e| fail(format_args!("{:?}", e)))?;
        check!(pattern_mismatch(back.as_mut_slice(), 23, 0).is_none(), "resynced leg differs");
        rw(sdb3, Op::Read, WRITE_ERR, &back).map_err(|e| fail(format_args!("{:?}", e)))?;
        check!(pattern_mismatch(&back.as_mut_slice()[..4096], 22, 0).is_none(), "failed write not resynced");
        dm::run_deferred();
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn mirror_sync_copies_the_primary_and_nosync_trusts_the_legs() -> TestResult {
        // From the command line: `mir` is nosync (its blkdebug leg's injected write errors are
        // for the test above, not for a resync), `ms` is sync (the default), resynced at boot.
        let mir = dm::mirror("mir").ok_or_else(|| fail(format_args!("mir has no mirror")))?;
        check!(mir.created_nosync(), "mir is not nosync");
        let ms = dm::mirror("ms").ok_or_else(|| fail(format_args!("ms has no mirror")))?;
        check!(!ms.created_nosync(), "ms is nosync");
        let st = ms.status();
        check!(st.in_sync == 2 && st.dirty_regions == 0, "ms after its boot resync: {:?}", st);
        // Two areas with different contents; a sync mirror over them copies leg 0 to leg 1 at
        // creation; a nosync one leaves them as they are.
        let (a, b) = (dev("vda6")?.dev, dev("nvme0n1p2")?.dev);
        let mut m = region(512 << 10)?;
        fill_pattern(m.as_mut_slice(), 51, 0);
        rw(a, Op::Write, 4096, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
        fill_pattern(m.as_mut_slice(), 52, 0);
        rw(b, Op::Write, 4096, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
        dm::create("nsy", "0 1024 mirror core 2 256 nosync 2 vda6 4096 nvme0n1p2 4096")
            .map_err(|e| fail(format_args!("{}", e)))?;
        let nsy = dm::mirror("nsy").ok_or_else(|| fail(format_args!("nsy has no mirror")))?;
        check_eq!((nsy.status().in_sync, nsy.status().dirty_regions), (2, 0));
        rw(b, Op::Read, 4096, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
        check!(pattern_mismatch(m.as_mut_slice(), 52, 0).is_none(), "nosync copied leg 0");
        dm::create("syn", "0 1024 mirror core 1 256 2 vda6 4096 nvme0n1p2 4096")
            .map_err(|e| fail(format_args!("{}", e)))?;
        let syn = dm::mirror("syn").ok_or_else(|| fail(format_args!("syn has no mirror")))?;
        let st = syn.status();
        check!(!syn.created_nosync() && st.in_sync == 2 && st.dirty_regions == 0, "syn: {:?}", st);
        rw(b, Op::Read, 4096, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
        check!(pattern_mismatch(m.as_mut_slice(), 51, 0).is_none(), "sync did not copy leg 0 to leg 1");
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn four_k_disk_partitioned_under_tinyfs_and_a_mirror() -> TestResult {
        // nvme0n2: 4 KiB logical blocks, a GPT in 4 KiB sectors, both partitions found.
        let d = dev("nvme0n2")?;
        check_eq!((d.block_size, d.dev.logical_block_size()), (4096, 4096));
        for p in ["nvme0n2p1", "nvme0n2p2"] {
            let x = dev(p)?;
            check!(matches!(x.kind, DevKind::Partition(_)), "{} is {:?}", p, x.kind);
            check_eq!((p, x.block_size), (p, 4096));
        }
        tinyfs_on("nvme0n2p1", 33)?;
        // A mirror of a 4 KiB partition and a 512-byte one is a 4 KiB device.
        let m4k = dm::create("m4k", "0 16384 mirror core 2 1024 nosync 2 nvme0n2p2 0 vda6 16384")
            .map_err(|e| fail(format_args!("{}", e)))?;
        check_eq!((m4k.block_size, m4k.dev.logical_block_size(), m4k.limits.logical_block_size), (4096, 4096, 4096));
        let mut w = region(64 << 10)?;
        fill_pattern(w.as_mut_slice(), 34, 0);
        rw(m4k.dev, Op::Write, 64, &w).map_err(|e| fail(format_args!("write: {:?}", e)))?;
        for (leg, at) in [("nvme0n2p2", 64u64), ("vda6", 16384 + 64)] {
            let mut back = region(64 << 10)?;
            rw(dev(leg)?.dev, Op::Read, at, &back).map_err(|e| fail(format_args!("{}: {:?}", leg, e)))?;
            check!(pattern_mismatch(back.as_mut_slice(), 34, 0).is_none(), "{} differs", leg);
        }
        // Whole 512-byte sectors but not whole 4 KiB blocks: refused before any disk.
        let one = region(4096)?;
        check_eq!(rw(m4k.dev, Op::Write, 65, &one), Err(BlkError::Misaligned));
        tinyfs_on("m4k", 35)?;
        // A table mixing them with a line not in whole 4 KiB blocks: refused, at that line.
        let e = dm::create("bad4k", "0 8 linear nvme0n2p2 0;8 4 linear vda6 0").err();
        check!(
            matches!(&e, Some(dm::CreateError::Table(t)) if t.kind == table::TableErrorKind::Misaligned && t.line == 2),
            "{:?}",
            e
        );
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn partitions_on_mapped_devices() -> TestResult {
        // The image has an sfdisk MBR in vda1's first sector (layout mbr-nested): `st`
        // (striped, vda1 first) and `ms` (a sync mirror of `st`) start with it, and both were
        // scanned when created.
        let ms = registry::index_of("ms").ok_or_else(|| fail(format_args!("no ms")))?;
        for (name, start, sectors) in [("msp1", 2048u64, 4096u64), ("msp2", 6144, 8192)] {
            let d = dev(name)?;
            check!(
                matches!(d.kind, DevKind::Partition(p) if p.disk == ms && p.start == start && p.entry.kind == blk::partition::PartKind::Mbr(0x83)),
                "{}: {:?}",
                name,
                d.kind
            );
            check_eq!((name, d.sectors), (name, sectors));
        }
        check_eq!(registry::partitions_of("ms").count(), 2);
        check_eq!(registry::partitions_of("st").count(), 2);
        check!(registry::find("topp1").is_none(), "top has no table");
        // I/O through msp1 lands at ms sector 2048 + x, on both legs of the mirror.
        let msp1 = dev("msp1")?.dev;
        let mut w = region(8192)?;
        fill_pattern(w.as_mut_slice(), 37, 0);
        rw(msp1, Op::Write, 8, &w).map_err(|e| fail(format_args!("write: {:?}", e)))?;
        let m = dm::mirror("ms").ok_or_else(|| fail(format_args!("ms has no mirror")))?;
        for (what, d) in [("ms", dev("ms")?.dev), ("leg 0", m.legs()[0].lower.dev), ("leg 1", m.legs()[1].lower.dev)] {
            let mut back = region(8192)?;
            rw(d, Op::Read, 2048 + 8, &back).map_err(|e| fail(format_args!("{}: {:?}", what, e)))?;
            check!(pattern_mismatch(back.as_mut_slice(), 37, 0).is_none(), "{} differs", what);
        }
        // Past the partition's end: refused, typed.
        check_eq!(rw(msp1, Op::Write, 4096 - 8, &w), Err(BlkError::OutOfRange));
        tinyfs_on("msp2", 36)
    }
}

/// mkfs, a file, remount, read back, fsck, on device `name` (a filesystem instance of
/// [`crate::fs::with_fs_named`]).
fn tinyfs_on(name: &str, seed: u64) -> TestResult {
    let d = dev(name)?;
    crate::fs::with_fs_named(name, |inst| tinyfs_on_instance(inst, name, d.sectors, seed))
        .map_err(|e| fail(format_args!("{}: no filesystem instance: {:?}", name, e)))?
}

fn tinyfs_on_instance(
    inst: &mut crate::fs::Instance<'_>,
    name: &str,
    sectors: u64,
    seed: u64,
) -> TestResult {
    ok(inst.mkfs(), "mkfs")?;
    let (mut fs, _) = ok(inst.mount(false), "mount")?;
    check_eq!(ok(fs.statfs(), "statfs")?.blocks, fs_blocks(sectors / 8));
    let f = ok(fs.create("/data"), "create")?;
    let mut chunk = [0u8; 4096];
    for k in 0..64u64 {
        fill_pattern(&mut chunk, seed, k * 4096);
        check_eq!(ok(fs.write(f, k * 4096, &chunk), "write")?, 4096);
    }
    ok(fs.fsync(f), "fsync")?;
    ok(fs.unmount().map(|_| ()), "unmount")?;
    let (mut fs, _) = ok(inst.mount(false), "remount")?;
    let f = ok(fs.open("/data"), "open")?;
    for k in 0..64u64 {
        check_eq!(ok(fs.read(f, k * 4096, &mut chunk), "read")?, 4096);
        check!(
            pattern_mismatch(&chunk, seed, k * 4096).is_none(),
            "{}: block {} differs after remount",
            name,
            k
        );
    }
    ok(fs.unmount().map(|_| ()), "unmount")?;
    let mut first = None;
    let r = ok(
        inst.check(&mut |p| {
            first.get_or_insert(*p);
        }),
        "fsck",
    )?;
    check!(
        r.problems == 0,
        "{}: fsck {} problems, first {:?}",
        name,
        r.problems,
        first
    );
    Ok(())
}

ktest! {
    #[only_with = "stack"]
    fn tinyfs_on_a_partition_and_on_a_mirror() -> TestResult {
        tinyfs_on("sda1", 31)?;
        tinyfs_on("mir", 32)?;
        // The mirror's legs agree on the superblocks after all that.
        let m = dm::mirror("mir").ok_or_else(|| fail(format_args!("mir has no mirror")))?;
        let (a, b) = (m.legs()[0].lower.dev, m.legs()[1].lower.dev);
        let (mut x, mut y) = (region(8192)?, region(8192)?);
        rw(a, Op::Read, 0, &x).map_err(|e| fail(format_args!("{:?}", e)))?;
        rw(b, Op::Read, 0, &y).map_err(|e| fail(format_args!("{:?}", e)))?;
        check!(x.as_mut_slice() == y.as_mut_slice(), "mirror legs differ");
        Ok(())
    }
}

/// A device in front of another that records the deepest stack address its `submit` ran at.
struct Probe {
    inner: &'static dyn BlockDevice,
    low: AtomicUsize,
}

impl BlockDevice for Probe {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
        let marker = 0u8;
        let sp = core::hint::black_box(&marker) as *const u8 as usize;
        self.low.fetch_min(sp, Ordering::Relaxed);
        bio.set_dev(self.inner);
        ctx.submit(bio);
    }
}

// The boot stack's lowest address (linker scripts).
unsafe extern "C" {
    static __stack_bottom: u8;
    static __stack_top: u8;
}

/// The byte painted into the unused stack.
const PAINT: u64 = 0x5c5c_5c5c_5c5c_5c5c;
/// Bytes left unpainted under the painter's own frame.
const PAINT_MARGIN: usize = 1024;

/// Paints the unused part of the boot stack (from its bottom to `PAINT_MARGIN` under this
/// frame) and returns the painted range (empty when this code does not run on the boot stack).
#[inline(never)]
fn paint_stack() -> (usize, usize) {
    let bottom = (&raw const __stack_bottom) as usize;
    let stack_top = (&raw const __stack_top) as usize;
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    if sp <= bottom + PAINT_MARGIN || sp > stack_top {
        // Not on the boot stack: paint nothing (the mark then reads as "whole range used").
        return (bottom, bottom);
    }
    let top = (sp - PAINT_MARGIN) & !7;
    let mut a = (bottom + 7) & !7;
    while a < top {
        // SAFETY: the hardware stack between its bottom (linker symbol) and below this frame
        // (checked above to lie inside the boot stack) is memory no Rust object owns: the stack pointer is above it (no red zone on these
        // kernel targets), so only frames pushed later (calls, interrupts) use it, and they
        // overwrite the paint, which is what is measured. Aligned, inside the `.stack`
        // section.
        unsafe { (a as *mut u64).write_volatile(PAINT) };
        a += 8;
    }
    (bottom, top)
}

/// The lowest stack address written since [`paint_stack`] painted `range`.
fn stack_high_water(range: (usize, usize)) -> usize {
    let mut a = (range.0 + 7) & !7;
    // SAFETY: as in `paint_stack`: reads of the unused stack's bytes under the current frame.
    while a < range.1 && unsafe { (a as *const u64).read_volatile() } == PAINT {
        a += 8;
    }
    a
}

/// Deepest stack use of one 4 KiB write to `dev` and its wait (submission, the driver,
/// completion interrupts), in bytes under this function's frame.
#[inline(never)]
fn high_water(dev: &'static dyn BlockDevice) -> Result<usize, Outcome> {
    let m = region(4096)?;
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    let painted = paint_stack();
    rw(dev, Op::Write, 0, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
    check!(painted.1 > painted.0, "not running on the boot stack");
    let low = stack_high_water(painted);
    check!(low > painted.0, "the whole stack was used");
    Ok(sp - low)
}

static PROBES: [Once<Probe>; 4] = [const { Once::new() }; 4];
static LEVELS: [Once<DmDevice>; 4] = [const { Once::new() }; 4];
static PART: Once<Linear> = Once::new();

fn probe(i: usize, name: &str) -> Result<&'static Probe, Outcome> {
    let inner = dev(name)?.dev;
    Ok(PROBES[i].call_once(|| Probe {
        inner,
        low: AtomicUsize::new(usize::MAX),
    }))
}

/// Stack bytes between the submitter and the deepest probe `submit`, for one 4 KiB write.
#[inline(never)]
fn depth(top: &'static dyn BlockDevice, probes: &[&'static Probe]) -> Result<usize, Outcome> {
    for p in probes {
        p.low.store(usize::MAX, Ordering::Relaxed);
    }
    let m = region(4096)?;
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    rw(top, Op::Write, 0, &m).map_err(|e| fail(format_args!("{:?}", e)))?;
    let low = probes
        .iter()
        .map(|p| p.low.load(Ordering::Relaxed))
        .min()
        .unwrap_or(usize::MAX);
    check!(low != usize::MAX, "no probe was reached");
    Ok(sp - low)
}

ktest! {
    #[only_with = "stack"]
    fn three_level_stack_runs_at_raw_device_depth() -> TestResult {
        let raw = probe(0, "nvme0n1")?;
        let (a, b, c) = (probe(1, "vda2")?, probe(2, "nvme0n1p2")?, probe(3, "sda2")?);
        let lower = |d: &'static dyn BlockDevice| Lower { dev: d, limits: blk::QueueLimits::new() };
        let env = dm::env();
        let mut names = |n: &str| -> Option<Lower> {
            match n {
                "a" => Some(lower(a)),
                "b" => Some(lower(b)),
                "c" => Some(lower(c)),
                "st" => LEVELS[0].get().map(|d| lower(d)),
                "mir" => LEVELS[1].get().map(|d| lower(d)),
                _ => None,
            }
        };
        let t = table::parse("0 8192 striped 2 128 a 0 b 0", &mut names).map_err(|e| fail(format_args!("{}", e)))?;
        LEVELS[0].call_once(|| DmDevice::new(t, env));
        let t = table::parse("0 8192 mirror core 1 1024 2 st 0 c 0", &mut names).map_err(|e| fail(format_args!("{}", e)))?;
        LEVELS[1].call_once(|| DmDevice::new(t, env));
        let t = table::parse("0 4096 linear mir 2048", &mut names).map_err(|e| fail(format_args!("{}", e)))?;
        let top = LEVELS[2].call_once(|| DmDevice::new(t, env));
        let t = table::parse("0 4096 linear c 0", &mut names).map_err(|e| fail(format_args!("{}", e)))?;
        let one = LEVELS[3].call_once(|| DmDevice::new(t, env));
        // A partition as the registry makes them (a `stack::Linear` window) on the mirror.
        let mir = LEVELS[1].get().ok_or_else(|| fail(format_args!("no mirror level")))?;
        let lin = Linear::new(mir, 2048, 4096).map_err(|e| fail(format_args!("{:?}", e)))?;
        let part = PART.call_once(|| lin);
        let d_one = depth(one, &[c])?;
        let d_raw = depth(raw, &[raw])?;
        let loops0 = cpu_ctx().loop_iterations();
        let d_top = depth(top, &[a, b, c])?;
        let loops = cpu_ctx().loop_iterations() - loops0;
        let d_part = depth(part, &[a, b, c])?;
        defmt::println!(
            "stack depth at the bottom device: raw nvme0n1 {=usize} bytes, one linear level {=usize} bytes, dm linear on mirror on striped {=usize} bytes ({=u64} submission-loop turns), partition on mirror on striped {=usize} bytes",
            d_raw,
            d_one,
            d_top,
            loops,
            d_part
        );
        // The whole I/O (driver, interrupts, completions) through painted stack: the same
        // stacks over the real devices (no probes).
        let hw_raw = high_water(dev("nvme0n1")?.dev)?;
        let hw_one = high_water(dev("nvme0n1p2")?.dev)?;
        let hw_ms = high_water(dev("ms")?.dev)?;
        let hw_top = high_water(dev("top")?.dev)?;
        let hw_part = high_water(dev("msp1")?.dev)?;
        defmt::println!(
            "stack high-water mark of a 4 KiB write and its wait: raw nvme0n1 {=usize} bytes, partition nvme0n1p2 {=usize} bytes, ms (mirror on striped) {=usize} bytes, top (linear on ms) {=usize} bytes, msp1 (partition on ms) {=usize} bytes",
            hw_raw,
            hw_one,
            hw_ms,
            hw_top,
            hw_part
        );
        // The mark includes whatever interrupt arrived at the deepest point (timing: it varies
        // from run to run by up to an interrupt frame), so it is bounded loosely here; the
        // probes above are the exact, deterministic measure.
        check!(hw_top <= hw_raw + 4096, "3-level stack high water {} bytes, raw {}", hw_top, hw_raw);
        check!(hw_part <= hw_raw + 4096, "msp1 high water {} bytes, raw {}", hw_part, hw_raw);
        // A raw device is entered straight from `submit_bio`; a stacked one from the submission
        // loop, one frame further. Every further level adds nothing: the bottom devices of three
        // levels run at the depth of one.
        check!(d_top == d_one, "3-level stack {} bytes deep, 1 level {}", d_top, d_one);
        check!(d_part == d_one, "partition on mirror on striped {} bytes deep, 1 level {}", d_part, d_one);
        check!(d_one <= d_raw + 1024, "1 level {} bytes deep, raw device {}", d_one, d_raw);
        Ok(())
    }
}

ktest! {
    #[only_with = "stack"]
    fn dm_io_regions_on_three_controllers() -> TestResult {
        // One call writes the same 64 KiB to a partition on each controller; a read of each
        // into a kernel buffer sees it; the error bitmap is clear.
        let names = ["vda6", "sda2", "nvme0n1p2"];
        let mut regions = heapless::Vec::<Region, 3>::new();
        for n in names {
            let d = dev(n)?;
            let _ = regions.push(Region { dev: d.dev, sector: 1024, count: 128, limits: d.limits });
        }
        let mut m = region(64 << 10)?;
        fill_pattern(m.as_mut_slice(), 41, 0);
        let req = IoRequest { op: Op::Write, flags: BioFlags::FUA, regions: &regions };
        check_eq!(dm::DM_IO.run_sync(cpu_ctx(), &req, Mem::Dma(m.span(), 0), block::wait), Ok(0));
        let mut back = [0u8; 8192];
        for r in &regions {
            let one = [Region { count: 16, ..*r }];
            let req = IoRequest { op: Op::Read, flags: BioFlags::empty(), regions: &one };
            back.fill(0);
            check_eq!(dm::DM_IO.run_sync(cpu_ctx(), &req, Mem::KernelMut(&mut back), block::wait), Ok(0));
            check!(pattern_mismatch(&back, 41, 0).is_none(), "a region differs");
        }
        // A DMA buffer (sync): read the first region back into it.
        let dbuf = DmaBuf::alloc(8192, 4096).map_err(|e| fail(format_args!("{:?}", e)))?;
        let one = [Region { count: 16, ..regions[2] }];
        let req = IoRequest { op: Op::Read, flags: BioFlags::empty(), regions: &one };
        check_eq!(dm::DM_IO.run_sync(cpu_ctx(), &req, Mem::DmaBuf(&dbuf), block::wait), Ok(0));
        check!(pattern_mismatch(dbuf.as_slice(), 41, 0).is_none(), "DMA buffer read differs");
        // A region past its device's end reports its own bit.
        let d = dev("sda2")?;
        let bad = [regions[0], Region { dev: d.dev, sector: d.sectors - 8, count: 16, limits: d.limits }];
        let req = IoRequest { op: Op::Write, flags: BioFlags::empty(), regions: &bad };
        check_eq!(dm::DM_IO.run_sync(cpu_ctx(), &req, Mem::Dma(m.span(), 0), block::wait), Ok(0b10));
        check_eq!(dm::DM_IO.in_flight(), 0);
        Ok(())
    }
}
