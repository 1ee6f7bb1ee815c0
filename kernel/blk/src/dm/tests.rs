//! Host tests of device-mapper: the table parser (good and bad input), every target, mirror
//! failure, read retry, flush to every leg and resync of dirty regions, dm-io (memory kinds,
//! sync and async, error bitmap, splitting to limits, progress with the slab empty), and the
//! stack depth of a 3-level stack.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::io::{DmIo, IoDone, IoNotify, IoRequest, Mem, RegionIo};
use super::mirror::{LegState, LegWrite, ResyncError};
use super::table::{Lower, TableErrorKind, parse};
use super::{DmDevice, DmEnv};
use crate::bio::{Bio, BioFlags, Op};
use crate::bioset::{BioSet, BioSlab};
use crate::device::{BlockDevice, CpuCtx, submit_bio};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::mem::DmaRegion;
use crate::ramdisk::{CompletionMode, RamDisk};
use crate::request::{HwQueue, Queue, QueueConfig, QueueRqError, Request};
use crate::slab::Wait;
use crate::tests::harness::{buf, bvecs, leak, pattern, split_set};
use crate::wait::submit_bio_wait;

fn mirror_set() -> &'static BioSet<LegWrite> {
    let slab: &'static BioSlab<LegWrite, 512> = leak(BioSlab::new());
    leak(BioSet::new(slab, 8, Some(bvecs())))
}

fn nop() {}

/// A RAM disk behind a request queue.
struct Disk {
    ram: &'static RamDisk,
    q: &'static Queue<64>,
}

impl Disk {
    fn new(sectors: u64, limits: QueueLimits) -> Disk {
        let ram: &'static RamDisk = leak(RamDisk::new(
            buf((sectors * 512) as usize),
            limits,
            CompletionMode::Inline,
        ));
        let q: &'static Queue<64> = leak(Queue::new(
            ram,
            limits,
            QueueConfig::new(ram.capacity()),
            split_set(),
        ));
        ram.attach(q);
        Disk { ram, q }
    }
    fn bytes(&self, sector: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        assert!(self.ram.store().read_bytes(sector * 512, &mut v));
        v
    }
    fn put(&self, sector: u64, data: &[u8]) {
        assert!(self.ram.store().write_bytes(sector * 512, data));
    }
    fn lower(&self) -> Lower {
        Lower {
            dev: self.q,
            limits: *self.q.limits(),
        }
    }
}

/// A device in front of another that fails what its switches say, and counts flushes.
struct Faulty {
    inner: &'static dyn BlockDevice,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    flushes: AtomicU64,
    reads: AtomicU64,
}

impl Faulty {
    fn over(inner: &'static dyn BlockDevice) -> &'static Faulty {
        leak(Faulty {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }
    fn lower(&'static self) -> Lower {
        Lower {
            dev: self,
            limits: QueueLimits::new(),
        }
    }
}

impl BlockDevice for Faulty {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
        let fail = match bio.op() {
            Op::Read => {
                self.reads.fetch_add(1, Ordering::SeqCst);
                self.fail_reads.load(Ordering::SeqCst)
            }
            Op::Flush => {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                false
            }
            _ => self.fail_writes.load(Ordering::SeqCst),
        };
        if fail {
            crate::bio::bio_io_error(bio, BlkError::Io);
            return;
        }
        bio.set_dev(self.inner);
        ctx.submit(bio);
    }
}

type IoSlab = BioSlab<RegionIo, 256>;

/// A dm-io client over its own set (reserve `reserve`) on `slab`.
fn dm_io(slab: &'static IoSlab, reserve: u32) -> &'static DmIo {
    let set: &'static BioSet<RegionIo> = leak(BioSet::new(slab, reserve, Some(bvecs())));
    leak(DmIo::new(set))
}

fn env() -> DmEnv {
    DmEnv {
        split_set: split_set(),
        mirror_set: mirror_set(),
        io: dm_io(leak(BioSlab::new()), 16),
        wait: Wait::Spin,
    }
}

/// A resolver over named lowers.
fn resolver(names: Vec<(&'static str, Lower)>) -> impl FnMut(&str) -> Option<Lower> {
    move |n: &str| names.iter().find(|(k, _)| *k == n).map(|(_, l)| *l)
}

/// A region of test memory the tests build segments from.
fn region(n: usize) -> DmaRegion {
    DmaRegion::from_static(buf(n))
}

/// Writes or reads `mem` (all of it) at `sector` of `dev`, waiting.
fn rw(
    ctx: &CpuCtx,
    dev: &'static dyn BlockDevice,
    op: Op,
    sector: u64,
    mem: &DmaRegion,
) -> Result<(), BlkError> {
    let set = split_set();
    let mut b = set.alloc((), op, 1, Wait::Spin).expect("bio");
    b.set_dev(dev);
    b.set_sector(sector);
    b.add_vec(mem.segment(0, mem.len() as u32).expect("seg"))
        .expect("vec");
    submit_bio_wait(ctx, b, nop).0
}

fn flush(ctx: &CpuCtx, dev: &'static dyn BlockDevice) -> Result<(), BlkError> {
    let set = split_set();
    let mut b = set.alloc((), Op::Flush, 0, Wait::Spin).expect("bio");
    b.set_dev(dev);
    submit_bio_wait(ctx, b, nop).0
}

fn make(text: &str, names: Vec<(&'static str, Lower)>) -> &'static DmDevice {
    let t = parse(text, &mut resolver(names)).expect("table");
    leak(DmDevice::new(t, env()))
}

// ---- parser ----

fn parse_err(text: &str, names: Vec<(&'static str, Lower)>) -> (usize, TableErrorKind) {
    let e = parse(text, &mut resolver(names)).expect_err("refused");
    (e.line, e.kind)
}

#[test]
fn parser_accepts_every_target_and_separator() {
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    let names = vec![("a", a.lower()), ("b", b.lower())];
    let t = parse(
        "0 1024 linear a 0;1024 1024 striped 2 64 a 1024 b 0, 2048 512 mirror core 2 64 nosync 2 a 2048 b 2048 1 handle_errors\n2560 8 error\n2568 8 zero",
        &mut resolver(names),
    )
    .expect("table");
    assert_eq!(t.targets.len(), 5);
    assert_eq!(t.len(), 2576);
    assert!(matches!(t.targets[0].kind, super::table::TargetKind::Linear(l) if l.offset == 0));
    assert!(
        matches!(&t.targets[1].kind, super::table::TargetKind::Striped { chunk: 64, legs } if legs.len() == 2 && legs[0].offset == 1024)
    );
    assert!(
        matches!(&t.targets[2].kind, super::table::TargetKind::Mirror { region: 64, nosync: true, legs } if legs.len() == 2)
    );
    assert!(matches!(t.targets[3].kind, super::table::TargetKind::Error));
    assert!(matches!(t.targets[4].kind, super::table::TargetKind::Zero));
}

#[test]
fn parser_refuses_bad_tables_with_typed_errors() {
    let a = Disk::new(4096, QueueLimits::new());
    let n = || vec![("a", a.lower())];
    use TableErrorKind::*;
    assert_eq!(parse_err("", n()), (0, Empty));
    assert_eq!(parse_err(" ; ,", n()), (0, Empty));
    assert_eq!(parse_err("0 1x linear a 0", n()), (1, BadNumber));
    assert_eq!(parse_err("0 -8 linear a 0", n()), (1, BadNumber));
    assert_eq!(parse_err("0 8 linear a zero", n()), (1, BadNumber));
    assert_eq!(
        parse_err("0 99999999999999999999 zero", n()),
        (1, BadNumber)
    );
    assert_eq!(parse_err("0 8 raid5 a 0", n()), (1, UnknownTarget));
    assert_eq!(parse_err("0 8 linear a", n()), (1, MissingArgs));
    assert_eq!(parse_err("0 8 linear a 0 7", n()), (1, ExtraArgs));
    assert_eq!(parse_err("0 8 zero 1", n()), (1, ExtraArgs));
    assert_eq!(parse_err("8 8 zero", n()), (1, Gap(0)));
    assert_eq!(parse_err("0 8 zero;16 8 zero", n()), (2, Gap(8)));
    assert_eq!(parse_err("0 8 zero;4 8 zero", n()), (2, Overlap(8)));
    assert_eq!(parse_err("0 0 zero", n()), (1, ZeroLength));
    assert_eq!(parse_err("0 8 linear nosuch 0", n()), (1, DeviceNotFound));
    assert_eq!(parse_err("0 8 linear a 4090", n()), (1, DeviceTooSmall));
    assert_eq!(
        parse_err("0 8 linear a 18446744073709551615", n()),
        (1, DeviceTooSmall)
    );
    assert_eq!(
        parse_err("0 96 striped 2 64 a 0 a 2048", n()),
        (1, LengthMismatch)
    );
    assert_eq!(
        parse_err("0 128 striped 2 48 a 0 a 2048", n()),
        (1, BadArgument)
    );
    assert_eq!(
        parse_err("0 640 striped 5 64 a 0 a 0 a 0 a 0 a 0", n()),
        (1, TooManyLegs)
    );
    assert_eq!(
        parse_err("0 8 mirror core 1 64 5 a 0 a 0 a 0 a 0 a 0", n()),
        (1, TooManyLegs)
    );
    assert_eq!(parse_err("0 8 mirror core 1 64 0", n()), (1, TooManyLegs));
    assert_eq!(
        parse_err("0 8 mirror disk 1 64 1 a 0", n()),
        (1, BadArgument)
    );
    assert_eq!(
        parse_err("0 8 mirror core 2 64 maybe 1 a 0", n()),
        (1, BadArgument)
    );
    assert_eq!(
        parse_err("0 8 mirror core 1 60 1 a 0", n()),
        (1, BadArgument)
    );
    assert_eq!(
        parse_err("0 8 mirror core 1 64 1 a 0 2 x", n()),
        (1, ExtraArgs)
    );
    let many = "0 1 zero;1 1 zero;2 1 zero;3 1 zero;4 1 zero;5 1 zero;6 1 zero;7 1 zero;8 1 zero";
    assert_eq!(parse_err(many, n()), (9, TooManyTargets));
    let e = parse("0 8 linear nosuch 0", &mut resolver(n())).expect_err("refused");
    assert_eq!(e.token.as_str(), "nosuch");
    assert_eq!(e.to_string(), "line 1: DeviceNotFound at \"nosuch\"");
}

#[test]
fn parser_refuses_misaligned_lines_on_4k_devices() {
    let mut l = QueueLimits::new();
    l.logical_block_size = 4096;
    let a = Disk::new(4096, l);
    let n = || vec![("a", a.lower())];
    assert_eq!(
        parse_err("0 8 linear a 4", n()),
        (1, TableErrorKind::Misaligned)
    );
    assert_eq!(
        parse_err("0 12 linear a 0", n()),
        (1, TableErrorKind::Misaligned)
    );
    assert!(parse("0 16 linear a 8", &mut resolver(n())).is_ok());
}

#[test]
fn mixed_block_sizes_make_a_device_of_the_largest() {
    // A 512-byte and a 4 KiB device in one table: the mapped device has 4 KiB blocks, so
    // every line must be in whole 4 KiB blocks, the 512-byte lines too.
    let mut l = QueueLimits::new();
    l.logical_block_size = 4096;
    let big = Disk::new(4096, l);
    let small = Disk::new(4096, QueueLimits::new());
    let n = || vec![("big", big.lower()), ("small", small.lower())];
    // The 512-byte line first, 4 sectors: refused at the line that makes it unaligned.
    let e = parse("0 4 linear small 0;4 8 linear big 0", &mut resolver(n())).expect_err("4k");
    assert_eq!((e.line, e.kind), (2, TableErrorKind::Misaligned));
    // The 512-byte line last, 4 sectors: alone it is fine, against the device's block not.
    let e = parse("0 8 linear big 0;8 4 linear small 1", &mut resolver(n())).expect_err("4k");
    assert_eq!((e.line, e.kind), (2, TableErrorKind::Misaligned));
    assert_eq!(e.to_string(), "line 2: Misaligned at \"4\"");
    // A mirror over both: 4 KiB, with a 512-byte leg at any sector offset.
    let dm = make(
        "0 8 linear big 0;8 16 linear small 3;24 16 mirror core 2 8 nosync 2 small 100 big 16",
        n(),
    );
    assert_eq!(dm.logical_block_size(), 4096);
    assert_eq!(dm.limits().logical_block_size, 4096);
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let mut m = region(8192);
    let data = pattern(60, 8192);
    m.as_mut_slice().copy_from_slice(&data);
    rw(ctx, dm, Op::Write, 24, &m).expect("4 KiB-aligned write");
    assert_eq!(small.bytes(100, 8192), data);
    assert_eq!(big.bytes(16, 8192), data);
    let one = region(512);
    assert_eq!(rw(ctx, dm, Op::Write, 8, &one), Err(BlkError::Misaligned));
}

// ---- linear, error, zero ----

#[test]
fn linear_error_zero_targets() {
    let a = Disk::new(4096, QueueLimits::new());
    let dm = make(
        "0 1024 linear a 2048; 1024 64 error; 1088 64 zero",
        vec![("a", a.lower())],
    );
    assert_eq!(dm.capacity(), 1152);
    let ctx = leak(CpuCtx::new(0));
    let mut m = region(8192);
    let data = pattern(1, 8192);
    m.as_mut_slice().copy_from_slice(&data);
    rw(ctx, dm, Op::Write, 16, &m).expect("write");
    assert!(
        a.bytes(2048 + 16, 8192) == data,
        "landed at offset + sector"
    );
    // A bio over the linear/error boundary: the part on the error line fails the whole bio.
    assert_eq!(rw(ctx, dm, Op::Write, 1016, &m), Err(BlkError::Io));
    assert_eq!(rw(ctx, dm, Op::Read, 1024, &m), Err(BlkError::Io));
    // Zero: reads fill zeroes, writes are dropped.
    m.as_mut_slice().fill(0xee);
    rw(ctx, dm, Op::Read, 1088, &m).expect("read zero");
    assert!(m.as_slice().iter().all(|&b| b == 0));
    m.as_mut_slice().fill(0xee);
    rw(ctx, dm, Op::Write, 1088, &m).expect("write zero");
    // Past the end: refused up front.
    assert_eq!(rw(ctx, dm, Op::Read, 1150, &m), Err(BlkError::OutOfRange));
    // A read spanning linear and zero lines.
    let dm2 = make("0 24 linear a 2048; 24 8 zero", vec![("a", a.lower())]);
    rw(ctx, dm2, Op::Read, 16, &m).expect("read across");
    assert!(m.as_slice()[..4096] == data[..4096], "linear part");
    assert!(m.as_slice()[4096..].iter().all(|&b| b == 0), "zero part");
}

// ---- striped ----

#[test]
fn striped_over_two_devices() {
    let a = Disk::new(8192, QueueLimits::new());
    let b = Disk::new(8192, QueueLimits::new());
    let dm = make(
        "0 4096 striped 2 16 a 100 b 200",
        vec![("a", a.lower()), ("b", b.lower())],
    );
    let ctx = leak(CpuCtx::new(0));
    let mut m = region(64 * 512);
    let data = pattern(2, 64 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    // Sectors 8..72: chunks 0 (part), 1, 2, 3, 4 (part).
    rw(ctx, dm, Op::Write, 8, &m).expect("write");
    let at = |k: usize| &data[k * 512..];
    // Chunk 0 (sectors 0..16) on a at 100; sector 8 -> a 108, 8 sectors.
    assert_eq!(a.bytes(108, 8 * 512), at(0)[..8 * 512]);
    // Chunk 1 (16..32) on b at 200.
    assert_eq!(b.bytes(200, 16 * 512), at(8)[..16 * 512]);
    // Chunk 2 (32..48) on a at 100 + 16.
    assert_eq!(a.bytes(116, 16 * 512), at(24)[..16 * 512]);
    // Chunk 3 (48..64) on b at 216; chunk 4 (64..72) on a at 132.
    assert_eq!(b.bytes(216, 16 * 512), at(40)[..16 * 512]);
    assert_eq!(a.bytes(132, 8 * 512), at(56)[..8 * 512]);
    let mut r = region(64 * 512);
    rw(ctx, dm, Op::Read, 8, &r).expect("read");
    assert_eq!(r.as_mut_slice(), &data[..]);
    assert!(dm.stats().snapshot().splits >= 4);
}

#[test]
fn striped_over_three_devices() {
    let d: Vec<Disk> = (0..3)
        .map(|_| Disk::new(4096, QueueLimits::new()))
        .collect();
    let dm = make(
        "0 3072 striped 3 8 a 0 b 8 c 16",
        vec![
            ("a", d[0].lower()),
            ("b", d[1].lower()),
            ("c", d[2].lower()),
        ],
    );
    let ctx = leak(CpuCtx::new(0));
    let mut m = region(48 * 512);
    let data = pattern(12, 48 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    rw(ctx, dm, Op::Write, 0, &m).expect("write");
    // Chunks 0..6 of 8 sectors: legs a, b, c, a, b, c at leg chunks 0, 0, 0, 1, 1, 1.
    for c in 0..6usize {
        let (leg, off) = (c % 3, [0u64, 8, 16][c % 3]);
        let at = off + (c / 3) as u64 * 8;
        assert!(
            d[leg].bytes(at, 4096) == data[c * 4096..(c + 1) * 4096],
            "chunk {c} on leg {leg} at {at}"
        );
    }
}

#[test]
fn striped_flush_reaches_every_leg_once() {
    let a = Disk::new(8192, QueueLimits::new());
    let b = Disk::new(8192, QueueLimits::new());
    let (fa, fb) = (Faulty::over(a.q), Faulty::over(b.q));
    let dm = make(
        "0 2048 striped 2 16 a 0 b 0; 2048 1024 linear a 4096",
        vec![("a", fa.lower()), ("b", fb.lower())],
    );
    flush(leak(CpuCtx::new(0)), dm).expect("flush");
    assert_eq!(fa.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(fb.flushes.load(Ordering::SeqCst), 1);
}

// ---- mirror ----

struct Mirror2 {
    a: Disk,
    b: Disk,
    fa: &'static Faulty,
    fb: &'static Faulty,
    dm: &'static DmDevice,
    ctx: &'static CpuCtx,
}

fn mirror2(region_sectors: u64) -> Mirror2 {
    let a = Disk::new(8192, QueueLimits::new());
    let b = Disk::new(8192, QueueLimits::new());
    let (fa, fb) = (Faulty::over(a.q), Faulty::over(b.q));
    let dm = make(
        &format!("0 4096 mirror core 2 {region_sectors} nosync 2 a 64 b 128"),
        vec![("a", fa.lower()), ("b", fb.lower())],
    );
    Mirror2 {
        a,
        b,
        fa,
        fb,
        dm,
        ctx: leak(CpuCtx::new(0)),
    }
}

#[test]
fn mirror_writes_every_leg_and_reads_spread() {
    let t = mirror2(64);
    let mut m = region(16 * 512);
    let data = pattern(3, 16 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    rw(t.ctx, t.dm, Op::Write, 40, &m).expect("write");
    assert_eq!(t.a.bytes(64 + 40, 16 * 512), data);
    assert_eq!(t.b.bytes(128 + 40, 16 * 512), data);
    for _ in 0..4 {
        let mut r = region(16 * 512);
        rw(t.ctx, t.dm, Op::Read, 40, &r).expect("read");
        assert_eq!(r.as_mut_slice(), &data[..]);
    }
    assert_eq!(t.fa.reads.load(Ordering::SeqCst), 2, "reads spread");
    assert_eq!(t.fb.reads.load(Ordering::SeqCst), 2, "reads spread");
    let m0 = t.dm.mirrors().next().expect("mirror");
    assert!(!m0.status().degraded());
    assert_eq!(m0.status().dirty_regions, 0);
    // Flush and FUA reach both legs.
    flush(t.ctx, t.dm).expect("flush");
    assert_eq!(t.fa.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(t.fb.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn mirror_fua_write_reaches_every_leg_with_fua() {
    // A lower device that records the flags of the writes it sees.
    struct Flags {
        inner: &'static dyn BlockDevice,
        fua: AtomicU64,
    }
    impl BlockDevice for Flags {
        fn capacity(&self) -> u64 {
            self.inner.capacity()
        }
        fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
            if bio.flags().contains(BioFlags::FUA) {
                self.fua.fetch_add(1, Ordering::SeqCst);
            }
            bio.set_dev(self.inner);
            ctx.submit(bio);
        }
    }
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    let fa: &'static Flags = leak(Flags {
        inner: a.q,
        fua: AtomicU64::new(0),
    });
    let fb: &'static Flags = leak(Flags {
        inner: b.q,
        fua: AtomicU64::new(0),
    });
    let l = |d: &'static Flags| Lower {
        dev: d,
        limits: QueueLimits::new(),
    };
    let dm = make(
        "0 2048 mirror core 2 64 nosync 2 a 0 b 0",
        vec![("a", l(fa)), ("b", l(fb))],
    );
    let ctx = leak(CpuCtx::new(0));
    let m = region(4096);
    let set = split_set();
    let mut bio = set.alloc((), Op::Write, 1, Wait::Spin).expect("bio");
    bio.set_dev(dm);
    bio.set_flags(BioFlags::FUA);
    bio.add_vec(m.segment(0, 4096).expect("seg")).expect("vec");
    submit_bio_wait(ctx, bio, nop).0.expect("fua write");
    assert_eq!(fa.fua.load(Ordering::SeqCst), 1);
    assert_eq!(fb.fua.load(Ordering::SeqCst), 1);
}

/// A mirror of `legs` (2 or 3) legs straight over request queues, its leg bios from
/// `mirror_set`: the first two disks are returned (legs at sectors 64 and 128).
fn mirror_on_queues(
    mirror_set: &'static BioSet<LegWrite>,
    legs: usize,
) -> (Disk, Disk, &'static DmDevice) {
    let a = Disk::new(8192, QueueLimits::new());
    let b = Disk::new(8192, QueueLimits::new());
    let c = Disk::new(8192, QueueLimits::new());
    let text = if legs == 3 {
        "0 4096 mirror core 2 64 nosync 3 a 64 b 128 c 0"
    } else {
        "0 4096 mirror core 2 64 nosync 2 a 64 b 128"
    };
    let t = parse(
        text,
        &mut resolver(vec![("a", a.lower()), ("b", b.lower()), ("c", c.lower())]),
    )
    .expect("table");
    let env = DmEnv {
        mirror_set,
        ..env()
    };
    let dm = leak(DmDevice::new(t, env));
    (a, b, dm)
}

#[test]
fn mirror_write_with_legs_in_sync_goes_straight_to_the_leg_queues() {
    let set = mirror_set();
    let (a, b, dm) = mirror_on_queues(set, 2);
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let io = dm.env.io;
    for k in 0..8u64 {
        let mut m = region(8 * 512);
        let data = pattern(20 + k, 8 * 512);
        m.as_mut_slice().copy_from_slice(&data);
        rw(ctx, dm, Op::Write, 8 * k, &m).expect("write");
        assert_eq!(a.bytes(64 + 8 * k, 8 * 512), data);
        assert_eq!(b.bytes(128 + 8 * k, 8 * 512), data);
    }
    assert_eq!(
        io.counts().0,
        0,
        "no dm-io call for writes with every leg in sync"
    );
    // One write at a time: one write slot, whose leg-1 clone is kept and reused.
    let st = set.stats();
    assert_eq!((st.allocs, st.in_use), (1, 1), "one clone, kept: {st:?}");
    let m0 = dm.mirrors().next().expect("mirror");
    assert!(!m0.status().degraded());
    assert_eq!(m0.status().dirty_regions, 0);
}

#[test]
fn mirror_write_goes_through_dm_io_when_its_set_is_empty() {
    // Room for two leg bios of three legs: the first clone is taken and given back, and
    // every write falls back to dm-io (its own reserve).
    let slab: &'static BioSlab<LegWrite, 1> = leak(BioSlab::new());
    let set: &'static BioSet<LegWrite> = leak(BioSet::new(slab, 0, Some(bvecs())));
    let (a, b, dm) = mirror_on_queues(set, 3);
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    for k in 0..20u64 {
        let mut m = region(4 * 512);
        let data = pattern(40 + k, 4 * 512);
        m.as_mut_slice().copy_from_slice(&data);
        rw(ctx, dm, Op::Write, 4 * k, &m).expect("write");
        assert_eq!(a.bytes(64 + 4 * k, 4 * 512), data);
        assert_eq!(b.bytes(128 + 4 * k, 4 * 512), data);
    }
    assert_eq!(dm.env.io.counts().0, 20, "every write went through dm-io");
    assert_eq!(set.stats().in_use, 0, "the leg bio taken was given back");
}

#[test]
fn mirror_leg_failing_a_write_is_dropped_and_data_stays_intact() {
    let t = mirror2(64);
    let mut m = region(8 * 512);
    let data = pattern(4, 8 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    t.fb.fail_writes.store(true, Ordering::SeqCst);
    rw(t.ctx, t.dm, Op::Write, 0, &m).expect("write succeeds on the other leg");
    let mir = t.dm.mirrors().next().expect("mirror");
    let st = mir.status();
    assert!(st.degraded());
    assert_eq!(st.state[1], LegState::Failed);
    assert_eq!(st.state[0], LegState::InSync);
    assert_eq!(st.write_errors, 1);
    assert_eq!(mir.take_events(), 1);
    assert_eq!(mir.take_events(), 0);
    assert_eq!(st.dirty_regions, 1, "the failed write's region is dirty");
    // Reads come from the good leg only, and see the data.
    for _ in 0..3 {
        let mut r = region(8 * 512);
        rw(t.ctx, t.dm, Op::Read, 0, &r).expect("read");
        assert_eq!(r.as_mut_slice(), &data[..]);
    }
    assert_eq!(t.fb.reads.load(Ordering::SeqCst), 0);
    // Writes go on (to one leg) and dirty their regions.
    rw(t.ctx, t.dm, Op::Write, 1000, &m).expect("degraded write");
    assert_eq!(mir.status().dirty_regions, 2);
    // Both legs failing: the write fails.
    t.fa.fail_writes.store(true, Ordering::SeqCst);
    assert_eq!(rw(t.ctx, t.dm, Op::Write, 0, &m), Err(BlkError::Io));
    assert_eq!(mir.status().in_sync, 0);
    assert_eq!(rw(t.ctx, t.dm, Op::Read, 0, &m), Err(BlkError::Io));
}

#[test]
fn mirror_direct_write_leg0_failing_ends_well_with_the_owners_completion() {
    // Leg 0 gets the mirror's bio itself on the direct path: when it fails, the write still
    // succeeds on leg 1, leg 0 is dropped, and the owner's callback and private word are the
    // ones it set.
    static ENDED: AtomicUsize = AtomicUsize::new(0);
    static PRIVATE: AtomicUsize = AtomicUsize::new(0);
    static OK: AtomicBool = AtomicBool::new(false);
    fn owner_end(bio: Bio) {
        PRIVATE.store(bio.private(), Ordering::SeqCst);
        OK.store(bio.status().is_ok(), Ordering::SeqCst);
        ENDED.fetch_add(1, Ordering::SeqCst);
    }
    let t = mirror2(64);
    let mir = t.dm.mirrors().next().expect("mirror");
    let mut m = region(8 * 512);
    let data = pattern(8, 8 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    t.fa.fail_writes.store(true, Ordering::SeqCst);
    let set = split_set();
    let mut bio = set.alloc((), Op::Write, 1, Wait::Spin).expect("bio");
    bio.set_dev(t.dm);
    bio.set_sector(16);
    bio.set_private(0xabcd);
    bio.set_end_io(owner_end);
    bio.add_vec(m.segment(0, 8 * 512).expect("seg"))
        .expect("vec");
    submit_bio(t.ctx, bio).expect("submitted");
    assert_eq!(ENDED.load(Ordering::SeqCst), 1, "ended once");
    assert_eq!(
        PRIVATE.load(Ordering::SeqCst),
        0xabcd,
        "owner's private word"
    );
    assert!(OK.load(Ordering::SeqCst), "leg 1 took the write");
    assert_eq!(t.b.bytes(128 + 16, 8 * 512), data);
    let st = mir.status();
    assert_eq!(st.state[0], LegState::Failed);
    assert_eq!(st.state[1], LegState::InSync);
    assert_eq!(st.dirty_regions, 1);
    assert_eq!(t.dm.env.io.counts().0, 0, "the direct path, not dm-io");
}

#[test]
fn mirror_direct_write_of_a_split_part_ends_its_parent_after_every_leg() {
    // A split front is a chain child: the direct path sends it to leg 0 as it is, and its
    // parent must see neither leg 0's error (leg 1 took the write) nor an early end.
    static PARENT_ENDED: AtomicUsize = AtomicUsize::new(0);
    static PARENT_OK: AtomicBool = AtomicBool::new(false);
    fn parent_end(bio: Bio) {
        PARENT_OK.store(bio.status().is_ok(), Ordering::SeqCst);
        PARENT_ENDED.fetch_add(1, Ordering::SeqCst);
    }
    let t = mirror2(64);
    let mut m = region(16 * 512);
    let data = pattern(9, 16 * 512);
    m.as_mut_slice().copy_from_slice(&data);
    t.fa.fail_writes.store(true, Ordering::SeqCst);
    let set = split_set();
    let mut rest = set.alloc((), Op::Write, 1, Wait::Spin).expect("bio");
    rest.set_dev(t.dm);
    rest.set_sector(200);
    rest.set_end_io(parent_end);
    rest.add_vec(m.segment(0, 16 * 512).expect("seg"))
        .expect("vec");
    let front = crate::split::bio_split(&mut rest, 8 * 512, set, Wait::Spin).expect("split");
    submit_bio(t.ctx, front).expect("front");
    assert_eq!(
        PARENT_ENDED.load(Ordering::SeqCst),
        0,
        "the parent waits for its rest"
    );
    submit_bio(t.ctx, rest).expect("rest");
    assert_eq!(PARENT_ENDED.load(Ordering::SeqCst), 1, "ended once");
    assert!(PARENT_OK.load(Ordering::SeqCst), "leg 1 took both parts");
    assert_eq!(t.b.bytes(128 + 200, 16 * 512), data);
    let mir = t.dm.mirrors().next().expect("mirror");
    assert_eq!(mir.status().state[0], LegState::Failed);
}

#[test]
fn mirror_read_error_is_retried_on_the_other_leg() {
    let t = mirror2(64);
    let data = pattern(5, 4096);
    t.a.put(64 + 8, &data);
    t.b.put(128 + 8, &data);
    t.fa.fail_reads.store(true, Ordering::SeqCst);
    let mir = t.dm.mirrors().next().expect("mirror");
    // Two reads: round robin sends one of them to the failing leg first.
    for _ in 0..2 {
        let r = region(4096);
        let set = split_set();
        let mut bio = set.alloc((), Op::Read, 1, Wait::Spin).expect("bio");
        bio.set_dev(t.dm);
        bio.set_sector(8);
        bio.add_vec(r.segment(0, 4096).expect("seg")).expect("vec");
        // The retry waits for process context: the wait hook of a kernel runs it; here the
        // wait function does.
        static DEV: std::sync::OnceLock<&'static DmDevice> = std::sync::OnceLock::new();
        static CTX: std::sync::OnceLock<&'static CpuCtx> = std::sync::OnceLock::new();
        let _ = DEV.set(t.dm);
        let _ = CTX.set(t.ctx);
        fn deferred() {
            if let (Some(d), Some(c)) = (DEV.get(), CTX.get()) {
                d.run_deferred(c);
            }
        }
        let (st, _b) = submit_bio_wait(t.ctx, bio, deferred);
        st.expect("read retried");
        assert_eq!(r.as_slice(), &data[..]);
    }
    let st = mir.status();
    // Round robin sent both reads to leg 0 first (the retries took turns 2 and 4).
    assert_eq!(st.read_errors, 2);
    assert_eq!(st.read_retries, 2);
    assert!(!st.degraded(), "a read error does not fail the leg");
    // Both legs failing reads: the read fails after both were tried.
    t.fb.fail_reads.store(true, Ordering::SeqCst);
    let r = region(4096);
    let set = split_set();
    let mut bio = set.alloc((), Op::Read, 1, Wait::Spin).expect("bio");
    bio.set_dev(t.dm);
    bio.set_sector(8);
    bio.add_vec(r.segment(0, 4096).expect("seg")).expect("vec");
    static DEV2: std::sync::OnceLock<&'static DmDevice> = std::sync::OnceLock::new();
    static CTX2: std::sync::OnceLock<&'static CpuCtx> = std::sync::OnceLock::new();
    let _ = DEV2.set(t.dm);
    let _ = CTX2.set(t.ctx);
    fn deferred2() {
        if let (Some(d), Some(c)) = (DEV2.get(), CTX2.get()) {
            d.run_deferred(c);
        }
    }
    assert_eq!(submit_bio_wait(t.ctx, bio, deferred2).0, Err(BlkError::Io));
}

#[test]
fn mirror_resync_copies_only_dirty_regions() {
    let t = mirror2(64);
    let mir = t.dm.mirrors().next().expect("mirror");
    // Both legs hold the old contents.
    let old = pattern(6, 4096 * 512);
    t.a.put(64, &old);
    t.b.put(128, &old);
    assert!(mir.fail_leg(1));
    assert!(t.dm.mirrors().next().expect("m").status().degraded());
    // Writes while leg 1 is out: regions 0, 5 (two writes), 63.
    let mut m = region(4096);
    let new = pattern(7, 4096);
    m.as_mut_slice().copy_from_slice(&new);
    for s in [0u64, 5 * 64 + 8, 5 * 64 + 40, 63 * 64] {
        rw(t.ctx, t.dm, Op::Write, s, &m).expect("write");
    }
    assert_eq!(mir.status().dirty_regions, 3);
    // Leg 1 still holds the old data there.
    assert_eq!(
        t.b.bytes(128 + 5 * 64 + 8, 4096),
        &old[(5 * 64 + 8) * 512..][..4096]
    );
    // A change on leg 1 outside the dirty regions shows the copy leaves it alone.
    t.b.put(128 + 10 * 64, &[0xab; 512]);
    let mut scratch = region(16 * 512);
    let rep = mir
        .restore_leg(1, t.ctx, &mut scratch, nop)
        .expect("resync");
    assert_eq!(rep.regions_copied, 3);
    assert_eq!(rep.passes, 2);
    let st = mir.status();
    assert!(!st.degraded());
    assert_eq!(st.dirty_regions, 0);
    assert_eq!(
        t.a.bytes(64, 64 * 64 * 512)[..10 * 64 * 512],
        t.b.bytes(128, 10 * 64 * 512)[..]
    );
    assert_eq!(
        t.b.bytes(128 + 5 * 64 + 8, 4096),
        new,
        "dirty region copied"
    );
    assert_eq!(
        t.b.bytes(128 + 10 * 64, 512),
        vec![0xab; 512],
        "clean region untouched"
    );
    assert_eq!(
        mir.restore_leg(1, t.ctx, &mut scratch, nop),
        Err(ResyncError::InSync)
    );
    assert_eq!(
        mir.restore_leg(7, t.ctx, &mut scratch, nop),
        Err(ResyncError::NoLeg)
    );
}

#[test]
fn mirror_resync_fails_the_leg_again_on_write_error() {
    let t = mirror2(64);
    let mir = t.dm.mirrors().next().expect("mirror");
    mir.fail_leg(0);
    let m = region(4096);
    rw(t.ctx, t.dm, Op::Write, 0, &m).expect("write");
    t.fa.fail_writes.store(true, Ordering::SeqCst);
    let mut scratch = region(4096);
    assert!(matches!(
        mir.restore_leg(0, t.ctx, &mut scratch, nop),
        Err(ResyncError::Write(_))
    ));
    assert_eq!(mir.leg_state(0), LegState::Failed);
    assert_eq!(mir.status().dirty_regions, 1, "still dirty");
}

#[test]
fn mirror_sync_by_default_resyncs_legs_from_the_primary() {
    // Three legs with different contents, no sync/nosync word: legs 1 and 2 start resyncing
    // with every region dirty; reads come from leg 0 only; writes reach every leg; one
    // resync copies the primary to both; then every leg serves reads.
    let disks: Vec<Disk> = (0..3)
        .map(|_| Disk::new(4096, QueueLimits::new()))
        .collect();
    for (k, d) in disks.iter().enumerate() {
        d.put(0, &pattern(30 + k as u64, 2048 * 512));
    }
    let f: Vec<&'static Faulty> = disks.iter().map(|d| Faulty::over(d.q)).collect();
    let dm = make(
        "0 2048 mirror core 1 64 3 a 0 b 0 c 0",
        vec![
            ("a", f[0].lower()),
            ("b", f[1].lower()),
            ("c", f[2].lower()),
        ],
    );
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let mir = dm.mirrors().next().expect("mirror");
    assert!(!mir.created_nosync());
    let st = mir.status();
    assert_eq!(st.in_sync, 1);
    assert_eq!(st.state[1], LegState::Resyncing);
    assert_eq!(st.state[2], LegState::Resyncing);
    assert_eq!(st.dirty_regions, 2048 / 64, "every region dirty");
    for _ in 0..6 {
        let r = region(4096);
        rw(ctx, dm, Op::Read, 16, &r).expect("read");
        assert_eq!(r.as_slice(), &disks[0].bytes(16, 4096)[..]);
    }
    assert_eq!(
        f[1].reads.load(Ordering::SeqCst),
        0,
        "no read from a resyncing leg"
    );
    assert_eq!(
        f[2].reads.load(Ordering::SeqCst),
        0,
        "no read from a resyncing leg"
    );
    // A write during the resync reaches every leg.
    let mut m = region(4096);
    let new = pattern(40, 4096);
    m.as_mut_slice().copy_from_slice(&new);
    rw(ctx, dm, Op::Write, 100, &m).expect("write");
    for d in &disks {
        assert_eq!(d.bytes(100, 4096), new);
    }
    let mut scratch = region(32 * 512);
    let rep = mir.resync(ctx, &mut scratch, nop).expect("resync");
    assert_eq!(rep.regions_copied, 2048 / 64);
    let st = mir.status();
    assert_eq!(st.in_sync, 3);
    assert_eq!(st.dirty_regions, 0);
    let primary = disks[0].bytes(0, 2048 * 512);
    assert_eq!(disks[1].bytes(0, 2048 * 512), primary);
    assert_eq!(disks[2].bytes(0, 2048 * 512), primary);
    for _ in 0..6 {
        let r = region(4096);
        rw(ctx, dm, Op::Read, 16, &r).expect("read");
    }
    assert!(f[1].reads.load(Ordering::SeqCst) > 0, "reads spread again");
    // Nothing left: a second resync copies nothing.
    assert_eq!(
        mir.resync(ctx, &mut scratch, nop)
            .expect("again")
            .regions_copied,
        0
    );
}

#[test]
fn mirror_nosync_trusts_the_legs() {
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    b.put(0, &pattern(50, 4096));
    let dm = make(
        "0 2048 mirror core 2 64 nosync 2 a 0 b 0",
        vec![("a", a.lower()), ("b", b.lower())],
    );
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let mir = dm.mirrors().next().expect("mirror");
    assert!(mir.created_nosync());
    let st = mir.status();
    assert_eq!((st.in_sync, st.dirty_regions), (2, 0));
    let mut scratch = region(4096);
    assert_eq!(
        mir.resync(ctx, &mut scratch, nop)
            .expect("nothing")
            .regions_copied,
        0
    );
    assert_eq!(b.bytes(0, 4096), pattern(50, 4096), "leg 1 left as it was");
    // The explicit `sync` word is the default.
    let dm = make(
        "0 2048 mirror core 2 64 sync 2 a 0 b 0",
        vec![("a", a.lower()), ("b", b.lower())],
    );
    let st = dm.mirrors().next().expect("mirror").status();
    assert_eq!((st.in_sync, st.state[1]), (1, LegState::Resyncing));
}

#[test]
fn mirror_sync_resync_write_error_fails_only_that_leg() {
    let disks: Vec<Disk> = (0..3)
        .map(|_| Disk::new(4096, QueueLimits::new()))
        .collect();
    let f: Vec<&'static Faulty> = disks.iter().map(|d| Faulty::over(d.q)).collect();
    let dm = make(
        "0 2048 mirror core 1 64 3 a 0 b 0 c 0",
        vec![
            ("a", f[0].lower()),
            ("b", f[1].lower()),
            ("c", f[2].lower()),
        ],
    );
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let mir = dm.mirrors().next().expect("mirror");
    f[2].fail_writes.store(true, Ordering::SeqCst);
    let mut scratch = region(64 * 512);
    assert!(matches!(
        mir.resync(ctx, &mut scratch, nop),
        Err(ResyncError::Write(_))
    ));
    assert_eq!(mir.leg_state(2), LegState::Failed);
    assert_eq!(mir.leg_state(1), LegState::Resyncing, "still to finish");
    // Leg 1 alone now: the next call finishes it.
    mir.resync(ctx, &mut scratch, nop).expect("leg 1");
    assert_eq!(mir.leg_state(1), LegState::InSync);
    assert_eq!(disks[1].bytes(0, 2048 * 512), disks[0].bytes(0, 2048 * 512));
}

// ---- dm-io ----

struct Count {
    calls: AtomicUsize,
    errors: AtomicU64,
}

impl IoNotify for Count {
    fn done(&'static self, d: IoDone) {
        self.errors.store(d.errors, Ordering::SeqCst);
        assert_eq!(d.word, 77);
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn dm_io_writes_n_regions_from_every_memory_kind() {
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    let io = dm_io(leak(BioSlab::new()), 16);
    let ctx = leak(CpuCtx::new(0));
    let regions = |s: u64| {
        [
            super::io::Region {
                dev: a.q,
                sector: s,
                count: 16,
                limits: *a.q.limits(),
            },
            super::io::Region {
                dev: b.q,
                sector: s + 100,
                count: 16,
                limits: *b.q.limits(),
            },
        ]
    };
    let data = pattern(8, 8192);
    // Bio vectors (two segments).
    let mut m = region(8192);
    m.as_mut_slice().copy_from_slice(&data);
    let v = [
        m.segment(0, 1024).expect("s"),
        m.segment(1024, 7168).expect("s"),
    ];
    let r = regions(0);
    let req = IoRequest {
        op: Op::Write,
        flags: BioFlags::empty(),
        regions: &r,
    };
    assert_eq!(io.run_sync(ctx, &req, Mem::Bvecs(&v), nop), Ok(0));
    assert_eq!(a.bytes(0, 8192), data);
    assert_eq!(b.bytes(100, 8192), data);
    // A page list, starting 512 bytes into the first page.
    let mut pm = region(3 * 4096);
    pm.as_mut_slice()[512..512 + 8192].copy_from_slice(&data);
    let pages = [
        pm.segment(0, 4096).expect("p"),
        pm.segment(4096, 4096).expect("p"),
        pm.segment(8192, 4096).expect("p"),
    ];
    let r = regions(200);
    let req = IoRequest { regions: &r, ..req };
    assert_eq!(
        io.run_sync(
            ctx,
            &req,
            Mem::Pages {
                pages: &pages,
                offset: 512
            },
            nop
        ),
        Ok(0)
    );
    assert_eq!(a.bytes(200, 8192), data);
    assert_eq!(b.bytes(300, 8192), data);
    // A kernel buffer (here: a heap buffer), sync.
    let kbuf = data.clone();
    let r = regions(400);
    let req = IoRequest { regions: &r, ..req };
    assert_eq!(io.run_sync(ctx, &req, Mem::Kernel(&kbuf), nop), Ok(0));
    assert_eq!(b.bytes(500, 8192), data);
    // Read back into a kernel buffer.
    let mut back = vec![0u8; 8192];
    let r1 = [regions(400)[1]];
    let rreq = IoRequest {
        op: Op::Read,
        flags: BioFlags::empty(),
        regions: &r1,
    };
    assert_eq!(
        io.run_sync(ctx, &rreq, Mem::KernelMut(&mut back), nop),
        Ok(0)
    );
    assert_eq!(back, data);
    // A DMA region's span, async, with the callback.
    let cnt: &'static Count = leak(Count {
        calls: AtomicUsize::new(0),
        errors: AtomicU64::new(99),
    });
    let r = regions(600);
    let req = IoRequest { regions: &r, ..req };
    io.run_async(ctx, &req, Mem::Dma(m.span(), 0), None, cnt, 77, Wait::Spin)
        .expect("async");
    assert_eq!(cnt.calls.load(Ordering::SeqCst), 1);
    assert_eq!(cnt.errors.load(Ordering::SeqCst), 0);
    assert_eq!(a.bytes(600, 8192), data);
    assert_eq!(io.in_flight(), 0, "every slot given back");
    // Refused: kernel memory async, a read of two regions, too little memory.
    let kb: &'static [u8] = Box::leak(vec![0u8; 8192].into_boxed_slice());
    assert!(
        io.run_async(ctx, &req, Mem::Kernel(kb), None, cnt, 77, Wait::Spin)
            .is_err()
    );
    let rreq2 = IoRequest {
        op: Op::Read,
        regions: &r,
        ..rreq
    };
    assert_eq!(
        io.run_sync(ctx, &rreq2, Mem::Dma(m.span(), 0), nop),
        Err(BlkError::InvalidArgument)
    );
    assert_eq!(
        io.run_sync(ctx, &req, Mem::Dma(m.span(), 4096), nop),
        Err(BlkError::InvalidArgument)
    );
}

#[test]
fn dm_io_reports_errors_per_region() {
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    let c = Disk::new(4096, QueueLimits::new());
    let fb = Faulty::over(b.q);
    fb.fail_writes.store(true, Ordering::SeqCst);
    let io = dm_io(leak(BioSlab::new()), 16);
    let ctx = leak(CpuCtx::new(0));
    let reg = |dev: &'static dyn BlockDevice| super::io::Region {
        dev,
        sector: 8,
        count: 8,
        limits: QueueLimits::new(),
    };
    let r = [reg(a.q), reg(fb), reg(c.q)];
    let req = IoRequest {
        op: Op::Write,
        flags: BioFlags::empty(),
        regions: &r,
    };
    let m = region(4096);
    assert_eq!(
        io.run_sync(ctx, &req, Mem::Dma(m.span(), 0), nop),
        Ok(0b010)
    );
    let cnt: &'static Count = leak(Count {
        calls: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
    });
    io.run_async(ctx, &req, Mem::Dma(m.span(), 0), None, cnt, 77, Wait::Spin)
        .expect("async");
    assert_eq!(cnt.errors.load(Ordering::SeqCst), 0b010);
}

#[test]
fn dm_io_splits_to_each_devices_limits() {
    let mut small = QueueLimits::new();
    small.max_sectors = 8;
    small.max_segments = 2;
    small.max_segment_size = 2048;
    let a = Disk::new(4096, small);
    let b = Disk::new(4096, QueueLimits::new());
    let io = dm_io(leak(BioSlab::new()), 16);
    let ctx = leak(CpuCtx::new(0));
    let mut m = region(32 * 1024);
    let data = pattern(9, 32 * 1024);
    m.as_mut_slice().copy_from_slice(&data);
    let r = [
        super::io::Region {
            dev: a.q,
            sector: 0,
            count: 64,
            limits: small,
        },
        super::io::Region {
            dev: b.q,
            sector: 0,
            count: 64,
            limits: QueueLimits::new(),
        },
    ];
    let req = IoRequest {
        op: Op::Write,
        flags: BioFlags::empty(),
        regions: &r,
    };
    let before = a.q.stats().snapshot().splits;
    assert_eq!(io.run_sync(ctx, &req, Mem::Dma(m.span(), 0), nop), Ok(0));
    // Region a: 32 KiB in bios of 2 x 2 KiB = 8 bios; region b: one bio.
    assert_eq!(io.counts(), (1, 9));
    assert_eq!(
        a.q.stats().snapshot().splits,
        before,
        "the queue never split"
    );
    assert_eq!(a.bytes(0, 32 * 1024), data);
    assert_eq!(b.bytes(0, 32 * 1024), data);
}

#[test]
fn dm_io_makes_progress_with_the_slab_empty() {
    let a = Disk::new(4096, QueueLimits::new());
    let b = Disk::new(4096, QueueLimits::new());
    let slab: &'static IoSlab = leak(BioSlab::new());
    let io = dm_io(slab, 4);
    io.set().init().expect("reserve");
    // Another set on the same slab takes every free bio.
    let other: &'static BioSet<RegionIo> = leak(BioSet::new(slab, 0, None));
    let mut held = Vec::new();
    while let Ok(b) = other.alloc(RegionIo::for_test(io), Op::Read, 0, Wait::Never) {
        held.push(b);
    }
    assert!(held.len() >= 250, "slab drained ({})", held.len());
    let hits = io.set().stats().reserve_hits;
    let ctx = leak(CpuCtx::new(0));
    let m = region(8192);
    let r = [
        super::io::Region {
            dev: a.q,
            sector: 0,
            count: 16,
            limits: QueueLimits::new(),
        },
        super::io::Region {
            dev: b.q,
            sector: 0,
            count: 16,
            limits: QueueLimits::new(),
        },
    ];
    let req = IoRequest {
        op: Op::Write,
        flags: BioFlags::empty(),
        regions: &r,
    };
    for _ in 0..100 {
        assert_eq!(io.run_sync(ctx, &req, Mem::Dma(m.span(), 0), nop), Ok(0));
    }
    assert!(
        io.set().stats().reserve_hits >= hits + 200,
        "served by the reserve"
    );
    assert!(
        other
            .alloc(RegionIo::for_test(io), Op::Read, 0, Wait::Never)
            .is_err(),
        "still drained"
    );
    drop(held);
}

// ---- stack depth ----

/// A RAM disk that records the deepest stack address seen in `queue_rq`.
struct Probe {
    inner: &'static RamDisk,
    low: AtomicUsize,
}

impl HwQueue for Probe {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let marker = 0u8;
        let sp = std::hint::black_box(&marker) as *const u8 as usize;
        self.low.fetch_min(sp, Ordering::SeqCst);
        self.inner.queue_rq(rq, last)
    }
}

fn probed_disk() -> (&'static Probe, &'static Queue<8>) {
    let ram: &'static RamDisk = leak(RamDisk::new(
        buf(1 << 20),
        QueueLimits::new(),
        CompletionMode::Inline,
    ));
    let probe: &'static Probe = leak(Probe {
        inner: ram,
        low: AtomicUsize::new(usize::MAX),
    });
    let q: &'static Queue<8> = leak(Queue::new(
        probe,
        QueueLimits::new(),
        QueueConfig::new(ram.capacity()),
        split_set(),
    ));
    ram.attach(q);
    (probe, q)
}

#[inline(never)]
fn depth_of(dev: &'static dyn BlockDevice, probes: &[&'static Probe]) -> usize {
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let m = region(4096);
    let set = split_set();
    let mut b = set.alloc((), Op::Write, 1, Wait::Spin).expect("bio");
    b.set_dev(dev);
    b.set_sector(0);
    b.add_vec(m.segment(0, 4096).expect("seg")).expect("vec");
    let marker = 0u8;
    let top = std::hint::black_box(&marker) as *const u8 as usize;
    submit_bio(ctx, b).expect("submit");
    let low = probes
        .iter()
        .map(|p| p.low.load(Ordering::SeqCst))
        .min()
        .expect("probe");
    assert!(low != usize::MAX, "reached the disk");
    top - low
}

#[test]
fn three_level_stack_runs_at_raw_device_depth() {
    let (p0, q0) = probed_disk();
    let raw = depth_of(q0, &[p0]);
    let (p1, q1) = probed_disk();
    let (p2, q2) = probed_disk();
    let (p3, q3) = probed_disk();
    let (p4, q4) = probed_disk();
    let l = |q: &'static Queue<8>| Lower {
        dev: q,
        limits: QueueLimits::new(),
    };
    let s1 = make(
        "0 2048 striped 2 16 a 0 b 0",
        vec![("a", l(q1)), ("b", l(q2))],
    );
    let s2 = make(
        "0 2048 striped 2 16 a 0 b 0",
        vec![("a", l(q3)), ("b", l(q4))],
    );
    let ls = |d: &'static DmDevice| Lower {
        dev: d,
        limits: QueueLimits::new(),
    };
    let mir = make(
        "0 2048 mirror core 2 64 nosync 2 s1 0 s2 0",
        vec![("s1", ls(s1)), ("s2", ls(s2))],
    );
    let part = make("0 1024 linear m 1024", vec![("m", ls(mir))]);
    let stacked = depth_of(part, &[p1, p2, p3, p4]);
    // The same frames run the queue in both cases; the stacked path adds no frame per level.
    assert!(
        stacked <= raw + 512,
        "3-level stack {stacked} bytes deep, raw device {raw}"
    );
    println!(
        "stack depth at queue_rq: raw {raw} bytes, partition on mirror on striped {stacked} bytes"
    );
}

#[test]
fn mapped_device_checks_use_its_lowers_properties() {
    /// A read-only device that does no discard.
    struct Ro(&'static dyn BlockDevice);
    impl BlockDevice for Ro {
        fn capacity(&self) -> u64 {
            self.0.capacity()
        }
        fn read_only(&self) -> bool {
            true
        }
        fn supports(&self, op: Op) -> bool {
            op != Op::Discard
        }
        fn submit(&'static self, mut bio: Bio, ctx: &CpuCtx) {
            bio.set_dev(self.0);
            ctx.submit(bio);
        }
    }
    let a = Disk::new(4096, QueueLimits::new());
    let ro: &'static Ro = leak(Ro(a.q));
    let l = Lower {
        dev: ro,
        limits: QueueLimits::new(),
    };
    let dm = make("0 1024 linear a 0; 1024 64 zero", vec![("a", l)]);
    assert!(dm.read_only());
    assert!(!dm.supports(Op::Discard));
    assert!(dm.supports(Op::Read));
    let ctx = leak(CpuCtx::new(0));
    let m = region(4096);
    assert_eq!(rw(ctx, dm, Op::Write, 0, &m), Err(BlkError::ReadOnly));
    rw(ctx, dm, Op::Read, 0, &m).expect("read");
    let set = split_set();
    let mut b = set.alloc((), Op::Read, 1, Wait::Spin).expect("bio");
    b.set_dev(dm);
    b.set_sector(3);
    b.add_vec(m.segment(0, 1000).expect("seg")).expect("vec");
    assert_eq!(
        submit_bio(ctx, b).err().map(|(e, _)| e),
        Some(BlkError::Misaligned)
    );
    let dm4k = {
        let mut lim = QueueLimits::new();
        lim.logical_block_size = 4096;
        let d = Disk::new(4096, lim);
        make("0 1024 linear d 0", vec![("d", d.lower())])
    };
    assert_eq!(dm4k.logical_block_size(), 4096);
    let mut b = set.alloc((), Op::Read, 1, Wait::Spin).expect("bio");
    b.set_dev(dm4k);
    b.set_sector(4);
    b.add_vec(m.segment(0, 4096).expect("seg")).expect("vec");
    assert_eq!(
        submit_bio(ctx, b).err().map(|(e, _)| e),
        Some(BlkError::Misaligned),
        "4 KiB device: sector 4 is inside a block"
    );
}

#[test]
fn mirror_clone_copy_keeps_an_advanced_position() {
    // The mirror's clones copy the vectors and iterator as they stand: a bio advanced into
    // its second vector gives a clone with the same segments left.
    let m = region(3 * 4096);
    let set = split_set();
    let mut src = set.alloc((), Op::Write, 3, Wait::Spin).expect("bio");
    for k in 0..3usize {
        src.add_vec(m.segment(k * 4096, 4096).expect("seg"))
            .expect("vec");
    }
    src.advance(4096 + 1024);
    let mut c = set.alloc((), Op::Write, 3, Wait::Spin).expect("clone");
    c.copy_data_from(&src).expect("copy");
    assert_eq!(c.size(), src.size());
    assert_eq!(c.size(), 2 * 4096 - 1024);
    let a: Vec<_> = src.segments().map(|v| (v.addr(), v.len())).collect();
    let b: Vec<_> = c.segments().map(|v| (v.addr(), v.len())).collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    // No room, or a clone that has vectors already: refused.
    let mut small = set.alloc((), Op::Write, 1, Wait::Spin).expect("small");
    assert_eq!(
        small.copy_data_from(&src).is_ok(),
        src.vecs().len() <= small.max_vecs()
    );
    assert!(c.copy_data_from(&src).is_err(), "vectors added already");
}
