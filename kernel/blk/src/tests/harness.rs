//! Test fixtures: leaked "statics", a RAM disk behind a queue, buffers, callbacks.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::bio::{Bio, BioVec, Op};
use crate::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use crate::device::CpuCtx;
use crate::limits::QueueLimits;
use crate::ramdisk::{CompletionMode, RamDisk};
use crate::request::{Queue, QueueConfig};
use crate::slab::Wait;

/// The "physical" address of a host buffer (the host translation is the identity).
pub fn phys_of(b: &[u8]) -> hal::PhysAddr {
    hal::mem::virt_to_phys(b.as_ptr() as usize)
}

/// A segment over a test buffer.
///
/// # Safety
/// `b` stays allocated and is not accessed otherwise until every bio carrying the segment has
/// completed (the segment contract of `BioVec::new`).
pub unsafe fn seg(b: &mut [u8]) -> BioVec {
    // SAFETY: the caller's promise is the segment contract; the host translation is the
    // identity, so the buffer's address is its "physical" one.
    unsafe { BioVec::new(phys_of(b), b.len() as u32) }
}

pub fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

pub fn buf(n: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; n].into_boxed_slice())
}

/// Deterministic bytes.
pub fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn bvecs() -> &'static BvecPools {
    let slabs: &'static BvecSlabs<64, 64, 64, 32, 16, 16> = leak(BvecSlabs::new());
    leak(BvecPools::new(slabs, 2))
}

/// Per-I/O state the tests put in front of their bios.
pub struct Io {
    pub done: &'static AtomicU64,
    pub errors: &'static AtomicU64,
    pub tag: u64,
}

pub fn io_end(bio: Bio) {
    if let Some(io) = bio.front::<Io>() {
        if bio.status().is_err() {
            io.errors.fetch_add(1, Ordering::SeqCst);
        }
        io.done.fetch_add(1, Ordering::SeqCst);
    }
}

pub fn counters() -> (&'static AtomicU64, &'static AtomicU64) {
    (leak(AtomicU64::new(0)), leak(AtomicU64::new(0)))
}

pub struct Env {
    pub disk: &'static RamDisk,
    pub q: &'static Queue<64>,
    pub set: &'static BioSet<Io>,
    pub split: &'static BioSet<()>,
    pub ctx: &'static CpuCtx,
    pub done: &'static AtomicU64,
    pub errors: &'static AtomicU64,
}

pub fn split_set() -> &'static BioSet<()> {
    let slab: &'static BioSlab<(), 512> = leak(BioSlab::new());
    leak(BioSet::new(slab, 8, Some(bvecs())))
}

pub fn env_with(
    sectors: u64,
    limits: QueueLimits,
    mode: CompletionMode,
    cfg: impl FnOnce(&mut QueueConfig),
) -> Env {
    let disk: &'static RamDisk = leak(RamDisk::new(buf((sectors * 512) as usize), limits, mode));
    let split = split_set();
    let mut c = QueueConfig::new(disk.capacity());
    cfg(&mut c);
    let q: &'static Queue<64> = leak(Queue::new(disk, limits, c, split));
    disk.attach(q);
    let slab: &'static BioSlab<Io, 1024> = leak(BioSlab::new());
    let set = leak(BioSet::new(slab, 8, Some(bvecs())));
    let (done, errors) = counters();
    Env {
        disk,
        q,
        set,
        split,
        ctx: leak(CpuCtx::new(0)),
        done,
        errors,
    }
}

pub fn env(sectors: u64, limits: QueueLimits) -> Env {
    env_with(sectors, limits, CompletionMode::Inline, |_| {})
}

impl Env {
    /// A bio for `op` at `sector` over `segs`, completing into the env's counters.
    pub fn bio(&self, op: Op, sector: u64, segs: &[BioVec]) -> Bio {
        let mut b = self
            .set
            .alloc(
                Io {
                    done: self.done,
                    errors: self.errors,
                    tag: sector,
                },
                op,
                segs.len(),
                Wait::Spin,
            )
            .expect("bio");
        for s in segs {
            b.add_vec(*s).expect("add_vec");
        }
        b.set_sector(sector);
        b.set_dev(self.q);
        b.set_end_io(io_end);
        b
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::SeqCst)
    }

    pub fn disk_bytes(&self, sector: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        assert!(self.disk.store().read_bytes(sector * 512, &mut v));
        v
    }
}
