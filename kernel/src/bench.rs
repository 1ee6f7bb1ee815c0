//! `mode=bench`: fixed workloads on the disk (virtio-blk, NVMe or AHCI; `cargo xtask bench`),
//! or on a device over it (`bench_dev=`: a registered partition, or a linear window).
//!
//! Each job runs on every online CPU at once (`smp::on_each_cpu`): each CPU keeps `qd` bios
//! of its own in flight in its own `1 / cpus` of the span, until it has issued `ios / cpus` or
//! another CPU has (then it stops issuing and drains). Its process-context loop refills its
//! queue; `end_io` (interrupt context, on whichever CPU completes) records the latency and
//! counts on the submitting CPU's counters, and wakes that CPU if it is halted elsewhere. All
//! CPUs start when the last is ready and the job ends when the last has seen all its
//! completions. One line per job, parsed by xtask:
//!
//! ```text
//! BENCH job=randread bs=4096 qd=32 ios=8192 ns=.. halted_ns=.. cycles=.. p50_ns=.. p99_ns=.. errors=0 irqs=.. notifies=.. busy_ns=.. cpus=2 cpu_ios=4096,4096
//! ```
//!
//! `ios` is the I/Os completed by all CPUs (`cpu_ios` each CPU's), `ns` the job's elapsed
//! `arch::now_ns()`, `halted_ns` the part of it during which every CPU was halted in the wait
//! hook at once (so under `-icount shift=0`, `ns - halted_ns` is the guest instructions all
//! CPUs executed), `busy_ns` the sum over the CPUs of their own elapsed minus their own halted
//! time (busy time per CPU in plain TCG), and `cycles` the elapsed `arch::cycles()`. On one CPU
//! the figures are those of the single-CPU bench before it ran on every CPU.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use blk::mem::DmaRegion;
use blk::{Bio, BioSet, BioSlab, BlkError, BlockDevice, Op, SECTOR_SIZE, Wait, submit_bio};
use hal::DmaBuf;
use spin::Mutex;

use crate::arch;
use crate::bench_profile::{profile_mark_begin, profile_mark_end, profile_request};
use crate::block::{self, MAX_CPUS, ahci, cpu_ctx, nvme, virtio};
use crate::smp;

/// One workload.
struct Job {
    name: &'static str,
    op: Op,
    bs: u32,
    qd: u32,
    ios: u32,
    random: bool,
    /// Ends with a flush, inside the timed span (durable bandwidth).
    flush: bool,
}

static JOBS: [Job; 6] = [
    Job {
        name: "randread",
        op: Op::Read,
        bs: 4096,
        qd: 1,
        ios: 4096,
        random: true,
        flush: false,
    },
    Job {
        name: "randread",
        op: Op::Read,
        bs: 4096,
        qd: 32,
        ios: 8192,
        random: true,
        flush: false,
    },
    Job {
        name: "randwrite",
        op: Op::Write,
        bs: 4096,
        qd: 32,
        ios: 8192,
        random: true,
        flush: false,
    },
    Job {
        name: "seqread",
        op: Op::Read,
        bs: 128 << 10,
        qd: 8,
        ios: 2048,
        random: false,
        flush: false,
    },
    Job {
        name: "seqwrite",
        op: Op::Write,
        bs: 128 << 10,
        qd: 8,
        ios: 2048,
        random: false,
        flush: false,
    },
    // 32 MiB, then a flush: what the filesystem's sequential write + fsync job compares with
    // when durability is counted on both sides.
    Job {
        name: "seqwrite-flush",
        op: Op::Write,
        bs: 128 << 10,
        qd: 8,
        ios: 256,
        random: false,
        flush: true,
    },
];

/// Most I/Os of one job (size of the latency array; on N CPUs each gets a 1/N part of it).
const MAX_IOS: usize = 8192;
/// Most bios in flight on one CPU.
const MAX_QD: usize = 32;
/// Data buffer: `MAX_QD` blocks of the largest size would be 4 MiB; in-flight I/Os share it by
/// slot (`issued % qd`), and jobs with big blocks have a small depth. The CPUs share it too:
/// the data are never looked at.
const BUF_BYTES: usize = 1 << 20;
/// The workloads touch at most the first GiB of the disk.
const SPAN_BYTES: u64 = 1 << 30;
/// Bios in the slab: every CPU's depth in flight, as many again in the CPUs' magazines, and
/// the set's reserve.
const SLAB_BIOS: usize = 2 * MAX_QD * MAX_CPUS + MAX_QD;

/// The front pad of a bench bio: its submit time (`arch::now_ns()`) and the CPU that
/// submitted it (whose counters its completion credits).
#[derive(Clone, Copy)]
struct Front {
    t0: u64,
    cpu: u32,
}

/// Bios of the bench.
static SLAB: BioSlab<Front, SLAB_BIOS> = BioSlab::new();
static SET: BioSet<Front> = BioSet::new(&SLAB, MAX_QD as u32, None);

/// One CPU's counters for the running job, alone on its cache lines: its completions are
/// counted here by whichever CPU completes them (the CPU owning the queue's interrupt), and
/// nothing else is written per I/O.
#[repr(align(128))]
struct CpuCounters {
    /// Completions of this CPU's bios (interrupt context writes, the CPU's loop reads).
    done: AtomicU32,
    errors: AtomicU32,
    /// Set while the CPU halts waiting for its completions: a completion taken on another
    /// CPU then wakes it with an inter-processor interrupt.
    sleeping: AtomicBool,
    /// This CPU's part of [`LAT`]: first index and length.
    lat_base: AtomicU32,
    lat_len: AtomicU32,
    /// The CPU's offset generator between jobs.
    rng: AtomicU64,
}

static COUNTERS: [CpuCounters; MAX_CPUS] = [const {
    CpuCounters {
        done: AtomicU32::new(0),
        errors: AtomicU32::new(0),
        sleeping: AtomicBool::new(false),
        lat_base: AtomicU32::new(0),
        lat_len: AtomicU32::new(0),
        rng: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Latency of each completion, ns, in completion order within each CPU's part.
static LAT: [AtomicU32; MAX_IOS] = [const { AtomicU32::new(0) }; MAX_IOS];
/// Sorted copy for the percentiles.
static SORTED: Mutex<[u32; MAX_IOS]> = Mutex::new([0; MAX_IOS]);

fn end_io(bio: Bio) {
    let now = arch::now_ns();
    let front = bio
        .front::<Front>()
        .copied()
        .unwrap_or(Front { t0: now, cpu: 0 });
    let c = &COUNTERS[(front.cpu as usize).min(MAX_CPUS - 1)];
    if bio.status().is_err() {
        c.errors.fetch_add(1, Ordering::Relaxed);
    }
    drop(bio);
    // An interrupt can complete bios while a process-context reap is in its end_io calls:
    // take the index atomically. The process context reads the latencies only after the last
    // end_io has returned. SeqCst: against the submitter's `sleeping` (see `run_part`).
    // `i` stays below the CPU's share (`lat_len`): it issues no more than that.
    let i = c.done.fetch_add(1, Ordering::SeqCst);
    if let Some(slot) = LAT.get((c.lat_base.load(Ordering::Relaxed) + i) as usize) {
        slot.store(
            now.saturating_sub(front.t0).min(u64::from(u32::MAX)) as u32,
            Ordering::Relaxed,
        );
    }
    if front.cpu as usize != arch::cpu_id()
        && c.sleeping.load(Ordering::SeqCst)
        && c.sleeping.swap(false, Ordering::SeqCst)
    {
        arch::send_ipi(front.cpu as usize);
    }
}

/// xorshift64*: deterministic offsets, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The seed of CPU 0 (the single-CPU bench's sequence); CPU `c` starts from a different one.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Flushes the device's volatile cache and waits for it.
fn flush(dev: &'static dyn BlockDevice) -> Result<(), BlkError> {
    // From the kernel's own set, not the bench's: one call site keeps the bench's allocation
    // inlined in its loop.
    let mut b = block::IO_SET.alloc((), Op::Flush, 0, Wait::Hook(block::wait))?;
    b.set_dev(dev);
    blk::submit_bio_wait(cpu_ctx(), b, block::wait).0
}

/// One job on every CPU: what each CPU runs ([`job_on_cpu`]).
#[derive(Clone, Copy)]
struct Round {
    dev: &'static dyn BlockDevice,
    job: &'static Job,
    /// I/Os of the whole job; each CPU does at most `ios / cpus`.
    ios: u32,
    cpus: usize,
    buf: &'static DmaRegion,
}

static ROUND: Mutex<Option<Round>> = Mutex::new(None);

/// The data buffer, given up for good (one bench per boot): segments of it can never dangle,
/// even if a job stops with bios in flight.
static BUF: spin::Once<DmaRegion> = spin::Once::new();

/// The start and end of a round: every CPU starts when the last one is ready, stops issuing
/// once one CPU has issued its share, and the round ends when the last one has seen all its
/// completions.
struct Gate {
    arrived: AtomicUsize,
    go: AtomicBool,
    stop: AtomicBool,
    finished: AtomicUsize,
    all_done: AtomicBool,
    flush_failed: AtomicBool,
    /// `arch::now_ns()`, `arch::cycles()` and `smp::all_halted_ns()` at the start (taken by
    /// the last CPU to arrive) and at the end (by the last to finish).
    start: [AtomicU64; 3],
    end: [AtomicU64; 3],
}

static GATE: Gate = Gate {
    arrived: AtomicUsize::new(0),
    go: AtomicBool::new(false),
    stop: AtomicBool::new(false),
    finished: AtomicUsize::new(0),
    all_done: AtomicBool::new(false),
    flush_failed: AtomicBool::new(false),
    start: [const { AtomicU64::new(0) }; 3],
    end: [const { AtomicU64::new(0) }; 3],
};

impl Gate {
    fn reset(&self) {
        self.arrived.store(0, Ordering::Relaxed);
        self.go.store(false, Ordering::Relaxed);
        self.stop.store(false, Ordering::Relaxed);
        self.finished.store(0, Ordering::Relaxed);
        self.all_done.store(false, Ordering::Relaxed);
        self.flush_failed.store(false, Ordering::Relaxed);
    }

    fn mark(at: &[AtomicU64; 3]) {
        at[0].store(arch::now_ns(), Ordering::Relaxed);
        at[1].store(arch::cycles(), Ordering::Relaxed);
        at[2].store(smp::all_halted_ns(), Ordering::Relaxed);
    }

    fn span(&self, i: usize) -> u64 {
        self.end[i]
            .load(Ordering::Relaxed)
            .saturating_sub(self.start[i].load(Ordering::Relaxed))
    }
}

/// What one CPU did in one job: its I/Os, its own elapsed and halted time over the round.
#[derive(Clone, Copy, Default)]
struct Part {
    done: u32,
    errors: u32,
    ns: u64,
    halted_ns: u64,
}

/// Each CPU's part of the running round (`None`: it did not run).
static PARTS: [Mutex<Option<Result<Part, BlkError>>>; MAX_CPUS] =
    [const { Mutex::new(None) }; MAX_CPUS];

/// One CPU's share of a job: `quota` I/Os (fewer once another CPU has issued its share) in
/// its own `1 / cpus` of the span, keeping `job.qd` in flight.
fn run_part(cpu: usize, r: &Round, quota: u32) -> Result<Part, BlkError> {
    let (dev, job, buf) = (r.dev, r.job, r.buf);
    let span = (dev.capacity() * SECTOR_SIZE as u64).min(SPAN_BYTES);
    let blocks = (span / u64::from(job.bs) / r.cpus as u64).max(1);
    let first = blocks * cpu as u64;
    let slots = (BUF_BYTES as u32 / job.bs).min(job.qd).max(1);
    let c = &COUNTERS[cpu];
    let mut rng = Rng(c.rng.load(Ordering::Relaxed));
    let mut issued = 0u32;
    let mut limit = quota;
    loop {
        if GATE.stop.load(Ordering::Relaxed) {
            limit = limit.min(issued);
        }
        let mut done = c.done.load(Ordering::Acquire);
        while issued < limit && issued - done < job.qd {
            let block = first
                + if job.random {
                    rng.next() % blocks
                } else {
                    u64::from(issued) % blocks
                };
            let v = buf
                .segment(((issued % slots) * job.bs) as usize, job.bs)
                .ok_or(BlkError::InvalidArgument)?;
            // The front pad holds the submit time.
            let mut b = SET.alloc_on(
                block::this_cpu(),
                Front {
                    t0: arch::now_ns(),
                    cpu: cpu as u32,
                },
                job.op,
                1,
                Wait::Hook(block::wait),
            )?;
            b.set_dev(dev);
            b.set_sector(block * u64::from(job.bs) / SECTOR_SIZE as u64);
            b.add_vec(v)?;
            b.set_end_io(end_io);
            submit_bio(cpu_ctx(), b).map_err(|(e, _)| e)?;
            issued += 1;
            done = c.done.load(Ordering::Acquire);
        }
        if issued >= limit {
            // Every CPU stops issuing once one has issued its share: they all run over the
            // same interval, and an unfair split shows in the per-CPU counts.
            GATE.stop.store(true, Ordering::Relaxed);
            if done >= issued {
                break;
            }
        }
        // Check and halt with interrupts off: a completion between the check and the halt
        // would otherwise leave the CPU asleep until the next timer tick. A completion on
        // another CPU that sees `sleeping` sends an interrupt; one that does not was counted
        // before the check (both sides SeqCst).
        arch::interrupts_disable();
        c.sleeping.store(true, Ordering::SeqCst);
        if c.done.load(Ordering::SeqCst) == done {
            block::wait();
        }
        c.sleeping.store(false, Ordering::Relaxed);
        arch::interrupts_enable();
    }
    c.rng.store(rng.0, Ordering::Relaxed);
    Ok(Part {
        done: c.done.load(Ordering::Acquire),
        errors: c.errors.load(Ordering::Relaxed),
        ns: 0,
        halted_ns: 0,
    })
}

/// The work of every CPU in a round (`smp::on_each_cpu`): wait for all at the start gate, run
/// its share, wait for all at the end gate (halted), and leave its part in [`PARTS`].
fn job_on_cpu(cpu: usize) {
    let Some(r) = *ROUND.lock() else { return };
    if cpu >= r.cpus {
        return;
    }
    let quota = (r.ios / r.cpus as u32).max(1);
    let c = &COUNTERS[cpu];
    c.done.store(0, Ordering::Relaxed);
    c.errors.store(0, Ordering::Relaxed);
    c.lat_base.store(quota * cpu as u32, Ordering::Relaxed);
    c.lat_len.store(quota, Ordering::Relaxed);

    if GATE.arrived.fetch_add(1, Ordering::AcqRel) + 1 == r.cpus {
        Gate::mark(&GATE.start);
        GATE.go.store(true, Ordering::Release);
    } else {
        while !GATE.go.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    }
    let (t0, h0) = (arch::now_ns(), smp::halted_ns());
    let res = run_part(cpu, &r, quota);
    if GATE.finished.fetch_add(1, Ordering::AcqRel) + 1 == r.cpus {
        // A job ending with a flush: once, by the last CPU, inside the timed span.
        if r.job.flush && flush(r.dev).is_err() {
            GATE.flush_failed.store(true, Ordering::Relaxed);
        }
        Gate::mark(&GATE.end);
        GATE.all_done.store(true, Ordering::Release);
        for other in (0..r.cpus).filter(|&o| o != cpu) {
            arch::send_ipi(other);
        }
    } else {
        // Halted (counted as such) until the last CPU is done.
        loop {
            arch::interrupts_disable();
            if GATE.all_done.load(Ordering::Acquire) {
                arch::interrupts_enable();
                break;
            }
            block::wait();
            arch::interrupts_enable();
        }
    }
    let (t1, h1) = (arch::now_ns(), smp::halted_ns());
    *PARTS[cpu].lock() = Some(res.map(|p| Part {
        ns: t1 - t0,
        halted_ns: h1 - h0,
        ..p
    }));
}

/// Result of one job on every CPU.
struct Outcome {
    /// Completed I/Os, all CPUs.
    ios: u32,
    /// Elapsed time of the round (from the last CPU's start to the last one's end).
    ns: u64,
    /// Time every CPU was halted at once within it.
    halted_ns: u64,
    /// Sum over the CPUs of their own elapsed time minus their own halted time.
    busy_ns: u64,
    cycles: u64,
    p50_ns: u32,
    p99_ns: u32,
    errors: u32,
    /// Completed I/Os of each CPU.
    cpu_ios: [u32; MAX_CPUS],
}

/// Runs `job` with `ios` I/Os in all on every online CPU at once; a CPU's error fails it with
/// that CPU's number.
fn run_job(
    dev: &'static dyn BlockDevice,
    job: &'static Job,
    ios: u32,
    buf: &'static DmaRegion,
) -> Result<Outcome, (usize, BlkError)> {
    let cpus = arch::cpus_online().clamp(1, MAX_CPUS);
    // A job ending with a flush starts from a flushed device: its flush then covers only what
    // the job wrote, not what earlier jobs left in the device's cache.
    if job.flush {
        flush(dev).map_err(|e| (arch::cpu_id(), e))?;
    }
    GATE.reset();
    for part in &PARTS {
        *part.lock() = None;
    }
    *ROUND.lock() = Some(Round {
        dev,
        job,
        ios,
        cpus,
        buf,
    });
    smp::on_each_cpu(job_on_cpu);
    *ROUND.lock() = None;

    let mut out = Outcome {
        ios: 0,
        ns: GATE.span(0),
        halted_ns: GATE.span(2),
        busy_ns: 0,
        cycles: GATE.span(1),
        p50_ns: 0,
        p99_ns: 0,
        errors: u32::from(GATE.flush_failed.load(Ordering::Relaxed)),
        cpu_ios: [0; MAX_CPUS],
    };
    let mut sorted = SORTED.lock();
    let mut n = 0usize;
    for cpu in 0..cpus {
        let part = PARTS[cpu]
            .lock()
            .take()
            .ok_or((cpu, BlkError::InvalidArgument))?
            .map_err(|e| (cpu, e))?;
        out.ios += part.done;
        out.errors += part.errors;
        out.busy_ns += part.ns.saturating_sub(part.halted_ns);
        out.cpu_ios[cpu] = part.done;
        let c = &COUNTERS[cpu];
        let base = c.lat_base.load(Ordering::Relaxed) as usize;
        let len = part.done.min(c.lat_len.load(Ordering::Relaxed)) as usize;
        for s in LAT.iter().skip(base).take(len) {
            if let Some(d) = sorted.get_mut(n) {
                *d = s.load(Ordering::Relaxed);
                n += 1;
            }
        }
    }
    let lat = &mut sorted[..n];
    lat.sort_unstable();
    let pct = |p: usize| lat.get((n * p / 100).min(n.saturating_sub(1))).copied();
    out.p50_ns = pct(50).unwrap_or(0);
    out.p99_ns = pct(99).unwrap_or(0);
    Ok(out)
}

/// `a,b,c`: each CPU's I/Os, for the `cpu_ios=` word.
fn cpu_list(o: &Outcome, cpus: usize) -> heapless::String<96> {
    use core::fmt::Write as _;
    let mut s = heapless::String::new();
    for (i, n) in o.cpu_ios.iter().take(cpus).enumerate() {
        let _ = write!(s, "{}{n}", if i == 0 { "" } else { "," });
    }
    s
}

/// The disk under test: the first of virtio-blk, NVMe, AHCI that was found.
#[derive(Clone, Copy)]
enum Disk {
    Virtio(&'static virtio::VirtioDisk),
    Nvme(&'static nvme::NvmeDisk),
    Ahci(&'static ahci::AhciDisk),
}

impl Disk {
    fn find() -> Option<Self> {
        virtio::disk()
            .map(Disk::Virtio)
            .or_else(|| nvme::disk().map(Disk::Nvme))
            .or_else(|| ahci::disk().map(Disk::Ahci))
    }

    fn dev(self) -> &'static dyn BlockDevice {
        match self {
            Disk::Virtio(d) => d.queue,
            Disk::Nvme(d) => d.queue,
            Disk::Ahci(d) => d.queue,
        }
    }

    fn irq_count(self) -> u64 {
        match self {
            Disk::Virtio(d) => d.irq_count(),
            Disk::Nvme(d) => d.irq_count(),
            Disk::Ahci(d) => d.irq_count(),
        }
    }

    /// Device notifications: virtio queue notifies, NVMe submission doorbells, AHCI commands
    /// issued (NCQ and one-at-a-time).
    fn notifies(self) -> u64 {
        match self {
            Disk::Virtio(d) => d.hw.stats().notifies.load(Ordering::Relaxed),
            Disk::Nvme(d) => d.hw.stats().doorbells.load(Ordering::Relaxed),
            Disk::Ahci(d) => {
                let s = d.hw.stats();
                s.ncq_commands.load(Ordering::Relaxed)
                    + s.exclusive_commands.load(Ordering::Relaxed)
            }
        }
    }
}

/// `kind-interrupts`, e.g. `nvme-Msix`: one word for the BENCH start line's `attach=`.
impl defmt::Format for Disk {
    fn format(&self, f: defmt::Formatter<'_>) {
        match self {
            Disk::Virtio(d) => defmt::write!(f, "virtio-{}", d.attach),
            Disk::Nvme(d) => defmt::write!(f, "nvme-{}", d.attach),
            Disk::Ahci(d) => defmt::write!(f, "ahci-{}", d.attach),
        }
    }
}

/// First sector of the `bench_dev=linear` window: 1 MiB, where the Linux tools start a disk's
/// first partition.
const LINEAR_START: u64 = 2048;

/// The `bench_dev=linear` window of the disk.
static LINEAR: spin::Once<blk::stack::Linear> = spin::Once::new();

/// The device the jobs run on, and its name for the `BENCH start` line: the raw disk, or with
/// `bench_dev=NAME` on the command line a registered device (a partition, a device-mapper
/// device), or with `bench_dev=linear` a `blk::stack::Linear` window of the disk from sector
/// [`LINEAR_START`] to its end (what a partition is: the cost a partition or linear device adds
/// per I/O, on a disk without a table such as a null backend). `None` (logged) when the name
/// is unknown.
fn bench_target(raw: &'static dyn BlockDevice) -> Option<(&'static dyn BlockDevice, &'static str)> {
    match crate::boot::cmdline_arg(crate::boot_info().cmdline, "bench_dev") {
        None => Some((raw, "raw")),
        Some("linear") => {
            let len = raw.capacity().saturating_sub(LINEAR_START);
            match blk::stack::Linear::new(raw, LINEAR_START, len) {
                Ok(l) => {
                    let dev: &'static dyn BlockDevice = LINEAR.call_once(|| l);
                    Some((dev, "linear"))
                }
                Err(e) => {
                    defmt::error!("bench: linear window: {}", defmt::Debug2Format(&e));
                    None
                }
            }
        }
        Some(name) => match block::registry::find(name) {
            Some(d) => Some((d.dev, name)),
            None => {
                defmt::error!(
                    "bench: bench_dev={=str}: no such device in the registry",
                    name
                );
                None
            }
        },
    }
}

/// The `benchprof` job number of the filesystem's sequential write (one past the raw jobs);
/// the next one is its random overwrite + `fsync`, the one after its small files.
pub(crate) const FS_PROFILE_JOB: usize = JOBS.len();

/// Runs every job; `false` if there is no disk or an I/O failed.
pub fn run() -> bool {
    let Some(d) = Disk::find() else {
        defmt::error!("bench: no disk (virtio-blk, NVMe or AHCI)");
        return false;
    };
    let Some((dev, dev_name)) = bench_target(d.dev()) else {
        return false;
    };
    // Given up for good (one bench per boot): segments of it can never dangle, even if a job
    // stops with bios in flight.
    let Ok(region) = DmaBuf::alloc(BUF_BYTES, 4096).map(DmaRegion::from_dma_buf) else {
        defmt::error!("bench: no DMA memory for the buffers");
        return false;
    };
    let buf: &'static DmaRegion = BUF.call_once(|| region);
    if let Err(e) = SET.init() {
        defmt::error!("bench: bio pool: {}", defmt::Debug2Format(&e));
        return false;
    }
    defmt::println!(
        "BENCH start arch={=str} attach={} dev={=str} capacity_sectors={=u64} cpus={=usize}",
        arch::NAME,
        d,
        dev_name,
        dev.capacity(),
        arch::cpus_online()
    );
    let cpus = arch::cpus_online().clamp(1, MAX_CPUS);
    for (cpu, c) in COUNTERS.iter().enumerate() {
        // CPU 0 draws the single-CPU sequence; the others their own.
        c.rng.store(
            SEED ^ (cpu as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            Ordering::Relaxed,
        );
    }
    // Warm-up (not reported): first touch of the rings, the slab, every CPU's magazines and
    // the code paths.
    if let Err((cpu, e)) = run_job(dev, &JOBS[0], 256, buf) {
        defmt::error!(
            "bench: warm-up failed on CPU {=usize}: {}",
            cpu,
            defmt::Debug2Format(&e)
        );
        return false;
    }
    let (irq0, notify0) = (d.irq_count(), d.notifies());
    let prof = profile_request();
    let mut ok = true;
    for (j, job) in JOBS.iter().enumerate() {
        let ios = match prof {
            Some((pj, n)) if pj == j => n.min(job.ios),
            Some(_) => continue,
            None => job.ios,
        };
        let irq = d.irq_count();
        let notify = d.notifies();
        if prof.is_some() {
            profile_mark_begin();
        }
        let res = run_job(dev, job, ios, buf);
        if prof.is_some() {
            profile_mark_end();
        }
        match res {
            Ok(o) => {
                defmt::println!(
                    "BENCH job={=str} bs={=u32} qd={=u32} ios={=u32} ns={=u64} halted_ns={=u64} cycles={=u64} p50_ns={=u32} p99_ns={=u32} errors={=u32} irqs={=u64} notifies={=u64} busy_ns={=u64} cpus={=usize} cpu_ios={=str}",
                    job.name,
                    job.bs,
                    job.qd,
                    o.ios,
                    o.ns,
                    o.halted_ns,
                    o.cycles,
                    o.p50_ns,
                    o.p99_ns,
                    o.errors,
                    d.irq_count() - irq,
                    d.notifies() - notify,
                    o.busy_ns,
                    cpus,
                    cpu_list(&o, cpus).as_str()
                );
                ok &= o.errors == 0;
            }
            Err((cpu, e)) => {
                defmt::error!(
                    "bench: {=str} failed on CPU {=usize}: {}",
                    job.name,
                    cpu,
                    defmt::Debug2Format(&e)
                );
                ok = false;
            }
        }
    }
    if prof.is_none_or(|(j, _)| j >= FS_PROFILE_JOB) {
        ok &= crate::bench_fs::run();
    }
    defmt::println!(
        "BENCH done irqs={=u64} notifies={=u64}",
        d.irq_count() - irq0,
        d.notifies() - notify0
    );
    ok
}
