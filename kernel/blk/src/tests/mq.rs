//! Hardware contexts on the host with real threads: one thread per "CPU" submitting through
//! its own `CpuCtx` and magazines, one "interrupt" thread per hardware context completing
//! what that context's hardware queue finished. Every bio must complete exactly once, each
//! request must reach the context of the CPU that built it, and each completion must run on
//! the thread that owns the context.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::harness::{buf, leak, seg, split_set};
use crate::bio::{Bio, Op};
use crate::bioset::{BioSet, BioSlab};
use crate::device::{CpuCtx, submit_bio};
use crate::driver::{HwQueue, QueueRqError, TagComplete, TimeoutAction};
use crate::error::BlkStatus;
use crate::limits::QueueLimits;
use crate::queue::{MAX_HW_CTX, cpu_to_ctx};
use crate::ramdisk::{CompletionMode, RamDisk};
use crate::request::{Queue, QueueConfig, Request};
use crate::slab::Wait;
use crate::wait::submit_bio_wait;

const DEPTH: usize = 128;
const CPUS: usize = 4;
/// Sectors each CPU writes.
const REGION: u64 = 2048;
/// Rounds of writes each CPU submits: a direct 4 KiB write, two plugged 4 KiB writes that
/// merge, and a 16 KiB write split at the 16-sector limit.
const ROUNDS: u64 = 24;

thread_local! {
    /// The "CPU" this thread is (`u32::MAX` for threads that are none).
    static CPU: Cell<u32> = const { Cell::new(u32::MAX) };
}

fn this_cpu() -> u32 {
    CPU.with(|c| c.get())
}

/// A completion waiting for its context's interrupt: tag, status, bytes.
type Done = (u16, BlkStatus, Option<u32>);

/// A multi-queue device built on a RAM disk: the RAM disk does the I/O at once, the
/// completion goes to the pending list of the request's hardware context, and that
/// context's interrupt thread completes it.
struct MqDisk {
    ram: &'static RamDisk,
    queue: spin::Once<&'static Queue<DEPTH>>,
    /// The context of each tag's request in flight (set in `queue_rq`).
    hctx_of_tag: [AtomicU32; DEPTH],
    pending: [Mutex<Vec<Done>>; MAX_HW_CTX],
    /// Requests that reached a context their submitting CPU does not map to.
    wrong_ctx: AtomicU64,
    /// Completions delivered by a thread that does not own the context.
    wrong_cpu: AtomicU64,
    commits: [AtomicU64; MAX_HW_CTX],
    requests: [AtomicU64; MAX_HW_CTX],
    nr_ctx: usize,
}

/// The RAM disk's completions land here and go to the context's pending list.
struct Shim(&'static MqDisk);

impl TagComplete for Shim {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        let h = self.0.hctx_of_tag[tag as usize].load(Ordering::Acquire) as usize;
        self.0.pending[h]
            .lock()
            .unwrap()
            .push((tag, status, done_bytes));
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, _result: u64) {
        self.complete(tag, status, None);
    }
    fn kick(&self) {}
}

impl HwQueue for MqDisk {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let h = rq.hctx();
        let cpu = this_cpu() as usize;
        if h >= self.nr_ctx || (cpu < CPUS && cpu_to_ctx(cpu, CPUS, self.nr_ctx) != h) {
            self.wrong_ctx.fetch_add(1, Ordering::SeqCst);
        }
        self.requests[h].fetch_add(1, Ordering::Relaxed);
        self.hctx_of_tag[rq.tag() as usize].store(h as u32, Ordering::Release);
        self.ram.queue_rq(rq, last)
    }
    fn commit_hctx(&self, hctx: usize) {
        self.commits[hctx].fetch_add(1, Ordering::Relaxed);
    }
    fn timeout(&self, _rq: &Request) -> TimeoutAction {
        TimeoutAction::Retry
    }
}

impl MqDisk {
    /// The interrupt handler of context `h`, run by the thread that owns it.
    fn interrupt(&self, h: usize) -> usize {
        let batch: Vec<_> = core::mem::take(&mut *self.pending[h].lock().unwrap());
        let Some(q) = self.queue.get() else { return 0 };
        for &(tag, st, bytes) in &batch {
            if this_cpu() as usize != h {
                self.wrong_cpu.fetch_add(1, Ordering::SeqCst);
            }
            q.complete(tag, st, bytes);
        }
        batch.len()
    }
}

/// Per-I/O state: which bio this is, so that a second completion shows.
struct Id(u32);

struct Counts {
    ends: Vec<AtomicU32>,
    errors: AtomicU64,
}

static COUNTS: Mutex<Option<&'static Counts>> = Mutex::new(None);

fn counts() -> &'static Counts {
    COUNTS.lock().unwrap().expect("counts")
}

fn end(bio: Bio) {
    let c = counts();
    if bio.status().is_err() {
        c.errors.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(id) = bio.front::<Id>() {
        c.ends[id.0 as usize].fetch_add(1, Ordering::SeqCst);
    }
}

fn spin_wait() {
    std::thread::yield_now();
}

/// Bytes naming CPU `cpu` and sequence `seq`, repeated over `n` bytes.
fn stamp(cpu: u64, seq: u64, n: usize) -> Vec<u8> {
    let word = (cpu << 56 | seq).to_le_bytes();
    (0..n).map(|i| word[i % 8] ^ (i / 8) as u8).collect()
}

fn run(nr_granted: usize) {
    // One test at a time uses COUNTS.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());

    let limits = QueueLimits {
        max_sectors: 16,
        ..QueueLimits::new()
    };
    let sectors = REGION * CPUS as u64;
    let ram: &'static RamDisk = leak(RamDisk::new(
        buf((sectors * 512) as usize),
        limits,
        CompletionMode::Inline,
    ));
    let n = nr_granted.min(CPUS);
    let disk: &'static MqDisk = leak(MqDisk {
        ram,
        queue: spin::Once::new(),
        hctx_of_tag: [const { AtomicU32::new(0) }; DEPTH],
        pending: [const { Mutex::new(Vec::new()) }; MAX_HW_CTX],
        wrong_ctx: AtomicU64::new(0),
        wrong_cpu: AtomicU64::new(0),
        commits: [const { AtomicU64::new(0) }; MAX_HW_CTX],
        requests: [const { AtomicU64::new(0) }; MAX_HW_CTX],
        nr_ctx: n,
    });
    ram.attach(leak(Shim(disk)));
    let q: &'static Queue<DEPTH> = leak(Queue::new(
        disk,
        limits,
        QueueConfig::new(sectors),
        split_set(),
    ));
    disk.queue.call_once(|| q);
    assert_eq!(q.map_hw_contexts(nr_granted, CPUS), Ok(n));
    assert_eq!(q.nr_hw_contexts(), n);
    for h in 0..n {
        assert_eq!(q.hw_context_shared(h), CPUS / n > 1, "context {h}");
    }
    for cpu in 0..CPUS as u32 {
        assert_eq!(q.hw_context_of(cpu), cpu_to_ctx(cpu as usize, CPUS, n));
    }

    let ids_per_cpu = ROUNDS * 4;
    let c: &'static Counts = leak(Counts {
        ends: (0..ids_per_cpu * CPUS as u64)
            .map(|_| AtomicU32::new(0))
            .collect(),
        errors: AtomicU64::new(0),
    });
    *COUNTS.lock().unwrap() = Some(c);
    let set: &'static BioSet<Id> = leak(BioSet::new(
        leak(BioSlab::<Id, 2048>::new()),
        8,
        Some(super::harness::bvecs()),
    ));

    let stop: &'static AtomicBool = leak(AtomicBool::new(false));
    let irqs: Vec<_> = (0..n)
        .map(|h| {
            std::thread::spawn(move || {
                CPU.with(|c| c.set(h as u32));
                while !stop.load(Ordering::SeqCst) {
                    if disk.interrupt(h) == 0 {
                        std::thread::yield_now();
                    }
                }
                while disk.interrupt(h) > 0 {}
            })
        })
        .collect();

    let new_bio = |cpu: u32, id: u64, op: Op, sector: u64, mem: &'static mut [u8]| {
        let mut b = set
            .alloc_on(cpu, Id(id as u32), op, 1, Wait::Spin)
            .expect("bio");
        // SAFETY: each buffer is leaked and left alone until its bio completed.
        b.add_vec(unsafe { seg(mem) }).expect("add_vec");
        b.set_sector(sector);
        b.set_dev(q);
        b.set_end_io(end);
        b
    };

    // Phase 1: every CPU writes its region, through the direct, plug/merge and split paths,
    // with the depth filled (nothing waits between submissions).
    let writers: Vec<_> = (0..CPUS as u64)
        .map(|cpu| {
            std::thread::spawn(move || {
                CPU.with(|c| c.set(cpu as u32));
                let ctx: &'static CpuCtx = leak(CpuCtx::new(cpu as u32));
                let base = cpu * REGION;
                let mut id = cpu * ids_per_cpu;
                let mut sector = base;
                for r in 0..ROUNDS {
                    // A 4 KiB write on the direct path.
                    let m = buf(4096);
                    m.copy_from_slice(&stamp(cpu, r * 4, 4096));
                    submit_bio(ctx, new_bio(cpu as u32, id, Op::Write, sector, m)).unwrap();
                    id += 1;
                    sector += 8;
                    // Two plugged 4 KiB writes that merge into one request.
                    {
                        let _plug = ctx.plug();
                        for k in 0..2 {
                            let m = buf(4096);
                            m.copy_from_slice(&stamp(cpu, r * 4 + 1 + k, 4096));
                            submit_bio(ctx, new_bio(cpu as u32, id, Op::Write, sector, m)).unwrap();
                            id += 1;
                            sector += 8;
                        }
                    }
                    // A 16 KiB write, split at the 16-sector limit.
                    let m = buf(16384);
                    m.copy_from_slice(&stamp(cpu, r * 4 + 3, 16384));
                    submit_bio(ctx, new_bio(cpu as u32, id, Op::Write, sector, m)).unwrap();
                    id += 1;
                    sector += 32;
                }
                assert!(sector <= base + REGION);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Wait for the interrupt threads to drain every write.
    while q.tags_in_use() != 0 {
        std::thread::yield_now();
    }

    // Phase 2: every CPU reads every region back, 4 KiB at a time, and checks the stamps.
    let readers: Vec<_> = (0..CPUS as u64)
        .map(|cpu| {
            std::thread::spawn(move || {
                CPU.with(|c| c.set(cpu as u32));
                let ctx: &'static CpuCtx = leak(CpuCtx::new(cpu as u32));
                for owner in 0..CPUS as u64 {
                    let base = owner * REGION;
                    let mut sector = base;
                    for r in 0..ROUNDS {
                        for (k, len) in [(0u64, 4096usize), (1, 4096), (2, 4096), (3, 16384)] {
                            let m = buf(len);
                            let ptr = m.as_ptr();
                            let b = new_bio(cpu as u32, 0, Op::Read, sector, m);
                            let (st, b) = submit_bio_wait(ctx, b, spin_wait);
                            assert!(st.is_ok());
                            drop(b);
                            // SAFETY: the read completed; the leaked buffer is ours again.
                            let got = unsafe { std::slice::from_raw_parts(ptr, len) };
                            assert!(
                                got == stamp(owner, r * 4 + k, len).as_slice(),
                                "cpu {cpu} reading cpu {owner}'s sector {sector}"
                            );
                            sector += len as u64 / 512;
                        }
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for t in irqs {
        t.join().unwrap();
    }

    for cpu in 0..CPUS as u64 {
        for i in 0..ROUNDS * 4 {
            let id = cpu * ids_per_cpu + i;
            assert_eq!(
                c.ends[id as usize].load(Ordering::SeqCst),
                1,
                "bio {i} of cpu {cpu} ended once"
            );
        }
    }
    assert_eq!(c.errors.load(Ordering::SeqCst), 0);
    assert_eq!(disk.wrong_ctx.load(Ordering::SeqCst), 0);
    assert_eq!(disk.wrong_cpu.load(Ordering::SeqCst), 0);
    assert_eq!(ram.violations.load(Ordering::SeqCst), 0);
    assert_eq!(q.tags_in_use(), 0);
    for h in 0..n {
        assert!(
            disk.requests[h].load(Ordering::Relaxed) > 0,
            "context {h} used"
        );
        assert!(
            disk.commits[h].load(Ordering::Relaxed) > 0,
            "context {h} committed"
        );
    }
    let s = q.stats().snapshot();
    assert!(s.splits >= ROUNDS * CPUS as u64, "{s:?}");
    assert!(s.merges_back >= ROUNDS * CPUS as u64, "{s:?}");
}

#[test]
fn one_context_per_cpu() {
    run(4);
}

#[test]
fn two_cpus_per_context_lock_it() {
    run(2);
}

#[test]
fn device_granting_more_queues_than_cpus_uses_one_per_cpu() {
    run(64);
}

#[test]
fn cpu_map_spreads_in_contiguous_groups() {
    assert_eq!(
        (0..4).map(|c| cpu_to_ctx(c, 4, 2)).collect::<Vec<_>>(),
        [0, 0, 1, 1]
    );
    assert_eq!(
        (0..3).map(|c| cpu_to_ctx(c, 3, 2)).collect::<Vec<_>>(),
        [0, 0, 1]
    );
    assert_eq!(
        (0..4).map(|c| cpu_to_ctx(c, 4, 4)).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    // Ids past the online CPUs wrap.
    assert_eq!(cpu_to_ctx(5, 4, 2), 1);
    assert_eq!(cpu_to_ctx(0, 0, 0), 0);
}

/// A 64-tag queue over a deferred-completion RAM disk, never waiting for a tag.
fn ram_queue() -> &'static Queue<64> {
    let ram: &'static RamDisk = leak(RamDisk::new(
        buf(64 * 512),
        QueueLimits::new(),
        CompletionMode::Deferred,
    ));
    let q: &'static Queue<64> = leak(Queue::new(
        ram,
        QueueLimits::new(),
        QueueConfig {
            wait: Wait::Never,
            ..QueueConfig::new(64)
        },
        split_set(),
    ));
    ram.attach(q);
    q
}

#[test]
fn contexts_own_disjoint_tag_ranges() {
    let q = ram_queue();
    assert_eq!(q.map_hw_contexts(3, 3), Ok(3));
    // 64 / 3 = 21 tags each; context h owns 21h..21h+21.
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    for (h, g) in got.iter_mut().enumerate() {
        while let Some(t) = q.alloc_tag(h) {
            g.push(t);
        }
        assert_eq!(g.len(), 21);
        assert!(g.iter().all(|&t| (t as usize) / 21 == h), "{g:?}");
    }
    // Remapping with tags in use is refused.
    assert!(q.map_hw_contexts(1, 1).is_err());
    for (h, g) in got.iter().enumerate() {
        for &t in g {
            q.free_tag(h as u8, t);
        }
    }
    assert_eq!(q.tags_in_use(), 0);
    assert_eq!(q.map_hw_contexts(1, 8), Ok(1));
    assert_eq!(q.hw_context_of(7), 0);
    assert!(q.hw_context_shared(0));
}

#[test]
fn fast_path_only_for_one_context_of_one_cpu() {
    let q = ram_queue();
    // (granted queues, CPUs) -> contexts, fast path.
    for (granted, cpus, n, fast) in [
        (1, 1, 1, true),
        (8, 1, 1, true),
        (1, 2, 1, false),
        (1, 8, 1, false),
        (2, 2, 2, false),
        (4, 4, 4, false),
        (8, 4, 4, false),
        (1, 1, 1, true),
    ] {
        assert_eq!(q.map_hw_contexts(granted, cpus), Ok(n), "{granted} {cpus}");
        assert_eq!(
            q.single_cpu_fast_path(),
            fast,
            "granted {granted}, {cpus} CPUs"
        );
        assert_eq!(
            q.hw_context_shared(0),
            cpus > n,
            "granted {granted}, {cpus} CPUs"
        );
    }
}
