//! `mode=bench`: fixed workloads on the disk (virtio-blk, NVMe or AHCI; `cargo xtask bench`),
//! or on a device over it (`bench_dev=`: a registered partition, or a linear window).
//!
//! Each job keeps `qd` bios in flight until `ios` have completed: the process-context loop
//! refills the queue, `end_io` (interrupt context) records the latency and counts. One line per
//! job, parsed by xtask:
//!
//! ```text
//! BENCH job=randread bs=4096 qd=32 ios=8192 ns=.. halted_ns=.. cycles=.. p50_ns=.. p99_ns=.. errors=0
//! ```
//!
//! `ns` is the job's elapsed `arch::now_ns()`, `halted_ns` the part of it spent halted in the
//! wait hook (so under `-icount shift=0`, `ns - halted_ns` is executed guest instructions), and
//! `cycles` the elapsed `arch::cycles()`.

use core::sync::atomic::{AtomicU32, Ordering};

use blk::mem::DmaRegion;
use blk::{Bio, BioSet, BioSlab, BlkError, BlockDevice, Op, SECTOR_SIZE, Wait, submit_bio};
use hal::DmaBuf;
use spin::Mutex;

use crate::arch;
use crate::bench_profile::{profile_mark_begin, profile_mark_end, profile_request};
use crate::block::{self, ahci, cpu_ctx, nvme, virtio};

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

const JOBS: [Job; 6] = [
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

/// Most I/Os of one job (size of the latency array).
const MAX_IOS: usize = 8192;
/// Most bios in flight.
const MAX_QD: usize = 32;
/// Data buffer: `MAX_QD` blocks of the largest size would be 4 MiB; in-flight I/Os share it by
/// slot (`issued % qd`), and jobs with big blocks have a small depth.
const BUF_BYTES: usize = 1 << 20;
/// The workloads touch at most the first GiB of the disk.
const SPAN_BYTES: u64 = 1 << 30;

/// Bios of the bench: the front pad holds the submit time (`arch::now_ns()`).
static SLAB: BioSlab<u64, 64> = BioSlab::new();
static SET: BioSet<u64> = BioSet::new(&SLAB, MAX_QD as u32, None);

/// Completions of the running job (interrupt context writes, process context reads).
static DONE: AtomicU32 = AtomicU32::new(0);
static ERRORS: AtomicU32 = AtomicU32::new(0);
/// Latency of each completion, ns, in completion order.
static LAT: [AtomicU32; MAX_IOS] = [const { AtomicU32::new(0) }; MAX_IOS];
/// Sorted copy for the percentiles.
static SORTED: Mutex<[u32; MAX_IOS]> = Mutex::new([0; MAX_IOS]);

fn end_io(bio: Bio) {
    let now = arch::now_ns();
    let t0 = bio.front::<u64>().copied().unwrap_or(now);
    if bio.status().is_err() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    drop(bio);
    // An interrupt can complete bios while a process-context reap is in its end_io calls:
    // take the index atomically. The process context reads the latencies only after the last
    // end_io has returned.
    let i = DONE.fetch_add(1, Ordering::AcqRel) as usize;
    if let Some(slot) = LAT.get(i) {
        slot.store(
            now.saturating_sub(t0).min(u64::from(u32::MAX)) as u32,
            Ordering::Relaxed,
        );
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

/// Flushes the device's volatile cache and waits for it.
fn flush(dev: &'static dyn BlockDevice) -> Result<(), BlkError> {
    // From the kernel's own set, not the bench's: one call site keeps the bench's allocation
    // inlined in its loop.
    let mut b = block::IO_SET.alloc((), Op::Flush, 0, Wait::Hook(block::wait))?;
    b.set_dev(dev);
    blk::submit_bio_wait(cpu_ctx(), b, block::wait).0
}

/// Result of one job.
struct Outcome {
    ns: u64,
    halted_ns: u64,
    cycles: u64,
    p50_ns: u32,
    p99_ns: u32,
    errors: u32,
}

fn run_job(
    dev: &'static dyn BlockDevice,
    job: &Job,
    ios: u32,
    buf: &DmaRegion,
    rng: &mut Rng,
) -> Result<Outcome, BlkError> {
    let span = (dev.capacity() * SECTOR_SIZE as u64).min(SPAN_BYTES);
    let blocks = span / u64::from(job.bs);
    let slots = (BUF_BYTES as u32 / job.bs).min(job.qd).max(1);
    // A job ending with a flush starts from a flushed device: its flush then covers only what
    // the job wrote, not what earlier jobs left in the device's cache.
    if job.flush {
        flush(dev)?;
    }
    DONE.store(0, Ordering::Relaxed);
    ERRORS.store(0, Ordering::Relaxed);

    let (t0, h0, c0) = (arch::now_ns(), block::halted_ns(), arch::cycles());
    let mut issued = 0u32;
    loop {
        let mut done = DONE.load(Ordering::Acquire);
        while issued < ios && issued - done < job.qd {
            let block = if job.random {
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
                arch::now_ns(),
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
            done = DONE.load(Ordering::Acquire);
        }
        if done >= ios {
            break;
        }
        // Check and halt with interrupts off: a completion between the check and the halt
        // would otherwise leave the CPU asleep until the next timer tick.
        arch::interrupts_disable();
        if DONE.load(Ordering::Acquire) == done {
            block::wait();
        }
        arch::interrupts_enable();
    }
    if job.flush && flush(dev).is_err() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    let (ns, halted_ns, cycles) = (
        arch::now_ns() - t0,
        block::halted_ns() - h0,
        arch::cycles() - c0,
    );

    let n = (ios as usize).min(MAX_IOS);
    let mut sorted = SORTED.lock();
    let lat = &mut sorted[..n];
    for (d, s) in lat.iter_mut().zip(&LAT) {
        *d = s.load(Ordering::Relaxed);
    }
    lat.sort_unstable();
    let pct = |p: usize| lat[(n * p / 100).min(n - 1)];
    Ok(Outcome {
        ns,
        halted_ns,
        cycles,
        p50_ns: pct(50),
        p99_ns: pct(99),
        errors: ERRORS.load(Ordering::Relaxed),
    })
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

/// The `benchprof` job number of the filesystem's sequential write (one past the raw jobs).
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
    let Ok(buf) = DmaBuf::alloc(BUF_BYTES, 4096).map(DmaRegion::from_dma_buf) else {
        defmt::error!("bench: no DMA memory for the buffers");
        return false;
    };
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
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Warm-up (not reported): first touch of the rings, the slab and the code paths.
    if let Err(e) = run_job(dev, &JOBS[0], 256, &buf, &mut rng) {
        defmt::error!("bench: warm-up failed: {}", defmt::Debug2Format(&e));
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
        let res = run_job(dev, job, ios, &buf, &mut rng);
        if prof.is_some() {
            profile_mark_end();
        }
        match res {
            Ok(o) => {
                defmt::println!(
                    "BENCH job={=str} bs={=u32} qd={=u32} ios={=u32} ns={=u64} halted_ns={=u64} cycles={=u64} p50_ns={=u32} p99_ns={=u32} errors={=u32} irqs={=u64} notifies={=u64}",
                    job.name,
                    job.bs,
                    job.qd,
                    ios,
                    o.ns,
                    o.halted_ns,
                    o.cycles,
                    o.p50_ns,
                    o.p99_ns,
                    o.errors,
                    d.irq_count() - irq,
                    d.notifies() - notify
                );
                ok &= o.errors == 0;
            }
            Err(e) => {
                defmt::error!(
                    "bench: {=str} failed: {}",
                    job.name,
                    defmt::Debug2Format(&e)
                );
                ok = false;
            }
        }
    }
    if prof.is_none_or(|(j, _)| j == FS_PROFILE_JOB) {
        ok &= crate::bench_fs::run();
    }
    defmt::println!(
        "BENCH done irqs={=u64} notifies={=u64}",
        d.irq_count() - irq0,
        d.notifies() - notify0
    );
    ok
}
