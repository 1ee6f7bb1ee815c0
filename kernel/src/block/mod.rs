//! The kernel's block glue: the per-CPU submission contexts, the wait hook and clock the block
//! layer takes, the deferred-work loop (kick requeued requests, poll polled devices, check
//! timeouts), driver probing, and the attach report: every storage controller found is logged
//! with what became of it, and the disk kinds the command line expects (`expect=nvme,...`) are
//! checked ([`missing_expected`]).

pub mod ahci;
mod attach;
pub mod bounce;
pub mod demo;
pub mod dm;
pub mod nvme;
pub mod registry;
pub mod setup_errors;
pub mod virtio;

use attach::report_controllers;
pub use attach::{DiskKind, attach_failed, is_expected, missing_expected, why_missing};
use blk::{BioSet, BioSlab, BvecPools, BvecSlabs, CpuCtx, Queue};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hal::IrqLine;

use crate::arch;
use crate::config::{
    BLOCK_BIO_SLAB, BLOCK_BVEC_1, BLOCK_BVEC_4, BLOCK_BVEC_16, BLOCK_BVEC_64, BLOCK_BVEC_128,
    BLOCK_BVEC_256, BLOCK_BVEC_RESERVE, BLOCK_IO_RESERVE, BLOCK_SPLIT_RESERVE, TIMEOUT_SCAN_NS,
};

/// How a disk's completions arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum Attach {
    /// A PCI function's MSI-X vector.
    Msix,
    /// A PCI function's MSI.
    Msi,
    /// A PCI function's INTx line.
    Intx,
    /// A memory-mapped device's interrupt-controller line (virtio-mmio).
    MmioLine,
    /// Polled, no interrupt line.
    Polled,
}

/// A driver's own share of the deferred work (recovery, polled completions).
pub trait DriverDeferred: Sync {
    /// Process context, from the wait hook.
    fn deferred(&self);
}

/// A probed disk: its driver, the block layer's queue on top, its completion interrupt.
pub struct Disk<H: 'static, const DEPTH: usize> {
    /// The driver.
    pub hw: &'static H,
    /// The block layer's queue (the `BlockDevice` to submit bios to).
    pub queue: &'static Queue<DEPTH>,
    /// The completion interrupt (none when polled).
    pub irq: Option<IrqLine>,
    /// How completions arrive.
    pub attach: Attach,
}

impl<H: DriverDeferred, const DEPTH: usize> Disk<H, DEPTH> {
    /// Deferred work for this disk; `now` when timeouts are due for a scan.
    pub fn deferred(&self, now: Option<u64>) {
        self.hw.deferred();
        self.queue.kick();
        if let Some(now) = now {
            self.queue.check_timeouts(now);
        }
    }

    /// Interrupts taken on the completion line so far.
    pub fn irq_count(&self) -> u64 {
        self.irq.map_or(0, |l| l.count())
    }
}

/// Most CPUs the block layer keeps a submission context, magazines and a hardware-context
/// map entry for (the magazines' and the queues' limit); a CPU past it shares the last one's
/// context.
pub const MAX_CPUS: usize = blk::queue::MAX_CPUS;

/// One submission context (pending list, plug) per CPU.
static CPUS: [CpuCtx; MAX_CPUS] = [
    CpuCtx::new(0),
    CpuCtx::new(1),
    CpuCtx::new(2),
    CpuCtx::new(3),
    CpuCtx::new(4),
    CpuCtx::new(5),
    CpuCtx::new(6),
    CpuCtx::new(7),
];
const _: () = assert!(MAX_CPUS == 8 && blk::magazine::MAX_CPUS == MAX_CPUS);

/// The running CPU's submission context.
#[inline]
pub fn cpu_ctx() -> &'static CpuCtx {
    &CPUS[arch::cpu_id().min(MAX_CPUS - 1)]
}

/// The running CPU's id as the block layer uses it: its submission context, its magazines
/// (`BioSet::alloc_on(this_cpu(), ..)`) and its hardware contexts.
#[inline]
pub fn this_cpu() -> u32 {
    cpu_ctx().cpu()
}

/// CPUs the queues map onto hardware contexts (online CPUs, at most [`MAX_CPUS`]).
pub fn cpus_for_queues() -> usize {
    arch::cpus_online().clamp(1, MAX_CPUS)
}

/// Maps the online CPUs onto the `granted` hardware queues of a new `queue` (at attach,
/// nothing in flight); returns the number of hardware contexts.
pub fn map_queue<const D: usize>(queue: &Queue<D>, granted: usize) -> usize {
    queue
        .map_hw_contexts(granted, cpus_for_queues())
        .unwrap_or_else(|_| queue.nr_hw_contexts())
}

/// Counts by hardware queue and by the CPU that counted them, for the tests that check where
/// a queue's interrupts and completions run. A row is one queue's 64 bytes, written by the
/// CPUs its interrupt reaches (its owner).
#[repr(align(64))]
pub struct PerCpuCounts<const Q: usize>([[AtomicU64; MAX_CPUS]; Q]);

impl<const Q: usize> PerCpuCounts<Q> {
    /// All zero.
    pub const fn new() -> Self {
        PerCpuCounts([const { [const { AtomicU64::new(0) }; MAX_CPUS] }; Q])
    }

    /// Adds `n` to queue `q`'s count on the running CPU (nothing for a queue out of range).
    #[inline]
    pub fn add(&self, q: usize, n: u64) {
        let cpu = arch::cpu_id().min(MAX_CPUS - 1);
        if let Some(row) = self.0.get(q) {
            row[cpu].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Queue `q`'s count on CPU `cpu` (0 out of range).
    pub fn get(&self, q: usize, cpu: usize) -> u64 {
        self.0
            .get(q)
            .and_then(|row| row.get(cpu))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The block layer's clock: monotonic nanoseconds.
pub fn clock() -> u64 {
    arch::now_ns()
}

/// Whether some device is polled (then waiting spins instead of halting).
static POLLED: AtomicBool = AtomicBool::new(false);
/// When the next timeout scan is due.
static NEXT_TIMEOUT_SCAN: AtomicU64 = AtomicU64::new(TIMEOUT_SCAN_NS);

/// Deferred work, in process context: requeued requests, polled completions, timeouts.
#[inline]
pub fn run_deferred() {
    let now = clock();
    if now >= NEXT_TIMEOUT_SCAN.load(Ordering::Relaxed) {
        deferred_with_scan(now);
        return;
    }
    // The common case, on every wait: no timeout scan, so the drivers' `deferred` stay small
    // (a mode check and an empty requeue check each).
    if let Some(d) = virtio::disk() {
        d.deferred(None);
    }
    for d in ahci::disks() {
        d.deferred(None);
    }
    if let Some(d) = nvme::disk() {
        d.deferred(None);
    }
}

/// [`run_deferred`] with a timeout scan: out of line, it runs at most every
/// [`TIMEOUT_SCAN_NS`].
#[cold]
#[inline(never)]
fn deferred_with_scan(now: u64) {
    NEXT_TIMEOUT_SCAN.store(now.saturating_add(TIMEOUT_SCAN_NS), Ordering::Relaxed);
    if let Some(d) = virtio::disk() {
        d.deferred(Some(now));
    }
    for d in ahci::disks() {
        d.deferred(Some(now));
    }
    if let Some(d) = nvme::disk() {
        d.deferred(Some(now));
    }
}

/// The wait hook: do the deferred work, then halt until an interrupt (or spin when a device is
/// polled). Time spent halted is counted in [`halted_ns`].
pub fn wait() {
    run_deferred();
    dm::run_deferred();
    if POLLED.load(Ordering::Relaxed) {
        core::hint::spin_loop();
    } else {
        crate::smp::idle_begin();
        arch::wait_for_interrupt();
        woke();
    }
}

/// Ends an idle interval. The arch trap handlers call it on every interrupt, before the
/// handler runs: the interrupt that wakes a halted CPU is taken inside `wait_for_interrupt`,
/// and its handler is work, not idle time.
#[inline]
pub fn woke() {
    crate::smp::idle_end();
}

/// Nanoseconds the running CPU has spent halted waiting for interrupts in [`wait`] since boot
/// ([`crate::smp::halted_ns`]). On one CPU under `-icount shift=0` everything else is executed
/// instructions.
pub fn halted_ns() -> u64 {
    crate::smp::halted_ns()
}

/// Bios for stacking splits and for the kernel's own I/O (tests, demo): one slab, two sets.
/// Sizes: [`crate::config`].
static BIO_SLAB: BioSlab<(), BLOCK_BIO_SLAB> = BioSlab::new();
static BVEC_SLABS: BvecSlabs<
    BLOCK_BVEC_1,
    BLOCK_BVEC_4,
    BLOCK_BVEC_16,
    BLOCK_BVEC_64,
    BLOCK_BVEC_128,
    BLOCK_BVEC_256,
> = BvecSlabs::new();
static BVECS: BvecPools = BvecPools::new(&BVEC_SLABS, BLOCK_BVEC_RESERVE);
/// Split bios of every queue.
pub static SPLIT_SET: BioSet<()> = BioSet::new(&BIO_SLAB, BLOCK_SPLIT_RESERVE, Some(&BVECS));
/// Bios of the kernel's own I/O.
pub static IO_SET: BioSet<()> = BioSet::new(&BIO_SLAB, BLOCK_IO_RESERVE, Some(&BVECS));

/// Probes block devices (after PCI enumeration, before interrupts are needed), then logs every
/// storage controller found with what became of it.
pub fn init(info: &crate::boot::BootInfo) {
    if let Err(e) = SPLIT_SET.init().and_then(|_| IO_SET.init()) {
        setup_errors::record(format_args!("block: bio pools: {:?}", e));
    }
    if let Err(e) = bounce::init() {
        setup_errors::record(format_args!("block: bounce pools: {:?}", e));
    }
    let polled = crate::boot::cmdline_arg(info.cmdline, "vblk") == Some("poll");
    POLLED.store(polled, Ordering::Relaxed);
    virtio::probe(info, polled);
    let ahci_polled = crate::boot::cmdline_arg(info.cmdline, "ahci") == Some("poll");
    POLLED.fetch_or(ahci_polled, Ordering::Relaxed);
    // Every port's outcome (attached, or why not) is logged by the probe; the first error is
    // recorded for the attach report (other ports' disks stay attached).
    // `ahci=off`: the controller holds the boot medium (firmware booted from it); leave it alone.
    if crate::boot::cmdline_arg(info.cmdline, "ahci") == Some("off") {
        defmt::println!("block: ahci=off: AHCI controller left alone (boot medium)");
    } else if let Err(e) = ahci::probe(polled || ahci_polled) {
        attach_failed(DiskKind::Ahci, format_args!("ahci: {:?}", e));
    }
    let nvme_arg = crate::boot::cmdline_arg(info.cmdline, "nvme");
    nvme::probe(polled || nvme_arg == Some("poll"), nvme_arg == Some("sgl"));
    report_controllers(info);
}
