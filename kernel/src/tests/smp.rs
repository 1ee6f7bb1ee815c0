//! Several CPUs: every CPU the firmware reports is online (or reported as failed), each runs
//! work through `on_each_cpu` with its own `cpu_id`, all at once; each CPU's timer ticks; an
//! interrupt delivered to CPU k (an MSI with k's APIC id on x86_64, a PLIC source enabled in
//! k's context on riscv64) is handled on CPU k, idle or not; a mempool and a bio set hammered
//! from every CPU at once, driven empty, lose and duplicate nothing (the bio set's reserve
//! serving a waiter, its bios stamped by their holder and handed between CPUs).
//!
//! The number of CPUs the machine has comes from `cpus=N` on the command line (xtask adds it
//! for profiles with `smp = N`; 1 without it); `smp_skip=ID,...` names CPUs the kernel was told
//! to leave stopped.

use crate::ktest::{Outcome, fail};
use crate::{arch, boot, boot_info, pci, smp};
use blk::{Mempool, PoolBox, Slab, Wait};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use hal::irq::IrqHandler;
use hal::{IrqLine, Mmio};
use spin::Once;

const NONE: usize = usize::MAX;

/// How long one CPU may wait for the others in a test.
const WAIT_NS: u64 = 10_000_000_000;

/// CPUs the machine has, from `cpus=N` (1 without it).
fn machine_cpus() -> usize {
    boot::cmdline_arg(boot_info().cmdline, "cpus")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Hardware ids the command line told the kernel to leave stopped.
fn skipped() -> heapless::Vec<u32, 8> {
    let mut v = heapless::Vec::new();
    if let Some(list) = boot::cmdline_arg(boot_info().cmdline, "smp_skip") {
        for id in list.split(',').filter_map(|w| w.parse().ok()) {
            let _ = v.push(id);
        }
    }
    v
}

/// `cpu_id()` each CPU saw in the last round, by the index it was given.
static SEEN: [AtomicUsize; arch::MAX_CPUS] = [const { AtomicUsize::new(NONE) }; arch::MAX_CPUS];
/// CPUs that have entered the current round's work.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// Set by a CPU that gave up waiting for the others.
static TIMED_OUT: AtomicBool = AtomicBool::new(false);
/// Interrupts were off in some CPU's work.
static IRQS_OFF: AtomicBool = AtomicBool::new(false);

/// CPUs that have reached the second meeting point of the current round's work.
static ARRIVED2: AtomicUsize = AtomicUsize::new(0);

/// Waits (with interrupts on) until every online CPU has arrived: all run at once.
fn barrier() {
    meet(&ARRIVED);
}

/// Counts this CPU in at `arrived` and waits for every online CPU to be there.
fn meet(arrived: &AtomicUsize) {
    arrived.fetch_add(1, Ordering::AcqRel);
    let start = arch::now_ns();
    while arrived.load(Ordering::Acquire) < arch::cpus_online() {
        if arch::now_ns().wrapping_sub(start) > WAIT_NS {
            TIMED_OUT.store(true, Ordering::Relaxed);
            return;
        }
        core::hint::spin_loop();
    }
}

fn record_cpu(cpu: usize) {
    SEEN[cpu].store(arch::cpu_id(), Ordering::Relaxed);
    if !arch::interrupts_enabled() {
        IRQS_OFF.store(true, Ordering::Relaxed);
    }
    barrier();
}

ktest! {
    fn every_cpu_is_online_and_runs_work_with_its_own_id() -> TestResult {
        let online = arch::cpus_online();
        let failed = arch::cpus_failed();
        check_eq!(online + failed.len(), machine_cpus().min(arch::MAX_CPUS));
        for id in skipped() {
            if id != arch::hw_id(0).unwrap_or(u32::MAX) {
                check!(failed.contains(&id), "CPU {} was held back but not reported", id);
            }
        }
        // Distinct hardware ids, none of them a failed one.
        for a in 0..online {
            let id = arch::hw_id(a).unwrap_or(u32::MAX);
            check!(!failed.contains(&id), "failed CPU {} counted online", id);
            for b in 0..a {
                check!(arch::hw_id(b) != Some(id), "CPUs {} and {} share id {}", a, b, id);
            }
        }
        for s in &SEEN {
            s.store(NONE, Ordering::Relaxed);
        }
        ARRIVED.store(0, Ordering::Relaxed);
        TIMED_OUT.store(false, Ordering::Relaxed);
        IRQS_OFF.store(false, Ordering::Relaxed);
        smp::on_each_cpu(record_cpu);
        check!(!TIMED_OUT.load(Ordering::Relaxed), "the CPUs did not all run the work at once");
        check!(!IRQS_OFF.load(Ordering::Relaxed), "work ran with interrupts off");
        check_eq!(ARRIVED.load(Ordering::Relaxed), online);
        for (cpu, seen) in SEEN.iter().enumerate().take(online) {
            check_eq!(seen.load(Ordering::Relaxed), cpu);
        }
        check_eq!(arch::cpu_id(), 0);
        Ok(())
    }
}

/// Ticks each CPU saw in its own work (0: it timed out).
static TICKED: [AtomicU64; arch::MAX_CPUS] = [const { AtomicU64::new(0) }; arch::MAX_CPUS];

fn wait_for_own_ticks(cpu: usize) {
    let start_ticks = arch::timer_ticks();
    let start = arch::now_ns();
    while arch::timer_ticks() < start_ticks + 5 {
        if arch::now_ns().wrapping_sub(start) > WAIT_NS {
            return;
        }
        arch::wait_for_interrupt();
    }
    TICKED[cpu].store(arch::timer_ticks() - start_ticks, Ordering::Relaxed);
}

ktest! {
    fn every_cpu_takes_its_own_timer_interrupts() -> TestResult {
        let online = arch::cpus_online();
        let before: heapless::Vec<u64, { arch::MAX_CPUS }> =
            (0..online).map(arch::timer_ticks_on).collect();
        for t in &TICKED {
            t.store(0, Ordering::Relaxed);
        }
        smp::on_each_cpu(wait_for_own_ticks);
        for cpu in 0..online {
            check!(TICKED[cpu].load(Ordering::Relaxed) >= 5, "CPU {} saw no 5 ticks of its own in 10 s", cpu);
            check!(arch::timer_ticks_on(cpu) >= before[cpu] + 5, "CPU {} tick counter did not move", cpu);
        }
        Ok(())
    }
}

// ---- The mempool under contention.

/// Elements in the test pool: fewer than the CPUs can hold at once, so it runs empty.
const POOL_ELEMS: usize = 24;
/// Elements in the pool's reserve.
const POOL_RESERVE: u32 = 4;
/// Most elements one CPU holds at once.
const HOLD: usize = 10;
/// Operations per CPU.
const ROUNDS: u32 = 4000;

struct Item {
    cpu: u32,
    serial: u32,
}

static SLAB: Slab<Item, POOL_ELEMS> = Slab::new();
static POOL: Mempool<Item> = Mempool::new(&SLAB, POOL_RESERVE);
/// Who holds each element: 0 free, CPU + 1 held.
static HOLDER: [AtomicU32; POOL_ELEMS] = [const { AtomicU32::new(0) }; POOL_ELEMS];
/// Problems found (duplicates, lost or changed values), and allocations that found the pool
/// empty.
static ERRORS: AtomicU32 = AtomicU32::new(0);
static FIRST_ERROR: AtomicU32 = AtomicU32::new(0);
static EMPTY_SEEN: AtomicU32 = AtomicU32::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);

fn error(code: u32) {
    ERRORS.fetch_add(1, Ordering::Relaxed);
    let _ = FIRST_ERROR.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
}

/// Takes ownership of an element just allocated: nobody else may hold it.
fn take(cpu: usize, b: &PoolBox<Item>) {
    match HOLDER.get(b.index() as usize) {
        Some(h) => {
            if h.swap(cpu as u32 + 1, Ordering::AcqRel) != 0 {
                error(1); // handed to two holders at once
            }
        }
        None => error(2),
    }
}

/// Gives an element up: this CPU must be its holder and its value unchanged.
fn give(cpu: usize, b: &PoolBox<Item>, serial: u32) {
    if b.cpu != cpu as u32 || b.serial != serial {
        error(3); // someone else wrote it
    }
    match HOLDER.get(b.index() as usize) {
        Some(h) => {
            if h.swap(0, Ordering::AcqRel) != cpu as u32 + 1 {
                error(4);
            }
        }
        None => error(2),
    }
}

fn hammer(cpu: usize) {
    barrier();
    let mut held: heapless::Vec<(PoolBox<Item>, u32), HOLD> = heapless::Vec::new();
    // First every CPU grabs what it can, up to HOLD, and keeps it until all have grabbed: with
    // more CPUs x HOLD than elements the pool (reserve included) runs dry for someone.
    while !held.is_full() {
        match POOL.try_alloc_on(
            cpu as u32,
            Item {
                cpu: cpu as u32,
                serial: u32::MAX,
            },
        ) {
            Ok(b) => {
                take(cpu, &b);
                let _ = held.push((b, u32::MAX));
            }
            Err(_) => {
                EMPTY_SEEN.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    meet(&ARRIVED2);
    // Then a random mix of allocations and frees, every way the pool offers.
    let mut x = 0x9E37_79B9u32.wrapping_mul(cpu as u32 + 1) | 1;
    let online = arch::cpus_online();
    for round in 0..ROUNDS {
        // xorshift: a different sequence on every CPU.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let want_alloc = held.is_empty() || (held.len() < HOLD && x % 8 < 5);
        if want_alloc {
            let item = Item {
                cpu: cpu as u32,
                serial: round,
            };
            // Waiting only with empty hands, so a CPU never waits for itself, and someone
            // holding elements always frees them.
            let result = match x % 4 {
                0 if held.is_empty() => POOL.alloc_on(cpu as u32, item, Wait::Spin),
                1 => POOL.alloc(item, Wait::Never),
                _ => POOL.try_alloc_on(cpu as u32, item),
            };
            match result {
                Ok(b) => {
                    take(cpu, &b);
                    if held.push((b, round)).is_err() {
                        error(5);
                    }
                }
                Err(_) => {
                    EMPTY_SEEN.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let i = (x as usize / 8) % held.len();
            let (b, serial) = held.swap_remove(i);
            give(cpu, &b, serial);
            match x % 3 {
                // Freed into another CPU's magazine.
                0 => b.free_on(((cpu + 1) % online) as u32),
                _ => drop(b),
            }
        }
        OPS.fetch_add(1, Ordering::Relaxed);
    }
    while let Some((b, serial)) = held.pop() {
        give(cpu, &b, serial);
        drop(b);
    }
}

ktest! {
    fn mempool_under_contention_from_every_cpu_loses_and_duplicates_nothing() -> TestResult {
        if POOL.init().is_err() {
            return Err(fail(format_args!("the test pool's reserve could not be filled")));
        }
        ARRIVED.store(0, Ordering::Relaxed);
        ARRIVED2.store(0, Ordering::Relaxed);
        TIMED_OUT.store(false, Ordering::Relaxed);
        ERRORS.store(0, Ordering::Relaxed);
        EMPTY_SEEN.store(0, Ordering::Relaxed);
        OPS.store(0, Ordering::Relaxed);
        let before = POOL.stats();
        smp::on_each_cpu(hammer);
        check!(!TIMED_OUT.load(Ordering::Relaxed), "the CPUs did not all start at once");
        check_eq!(ERRORS.load(Ordering::Relaxed), 0);
        let online = arch::cpus_online();
        check_eq!(OPS.load(Ordering::Relaxed), u64::from(ROUNDS) * online as u64);
        let after = POOL.stats();
        check_eq!(after.in_use, 0);
        check_eq!(after.allocs - before.allocs, after.frees - before.frees);
        check!(after.allocs > before.allocs, "nothing was allocated");
        if online * HOLD > POOL_ELEMS {
            // More demand than elements: the pool ran dry and dipped into its reserve.
            check!(EMPTY_SEEN.load(Ordering::Relaxed) > 0, "the pool never ran empty");
            check!(after.reserve_hits > before.reserve_hits, "the reserve was never used");
        }
        check_eq!(after.reserve_len, POOL_RESERVE);
        // Every element is still there, once: drain the pool from here and count.
        let mut all: heapless::Vec<PoolBox<Item>, POOL_ELEMS> = heapless::Vec::new();
        while let Ok(b) = POOL.try_alloc(Item { cpu: 0, serial: 0 }) {
            if all.push(b).is_err() {
                return Err(fail(format_args!("more than {} elements came out", POOL_ELEMS)));
            }
        }
        check_eq!(all.len(), POOL_ELEMS);
        for (i, a) in all.iter().enumerate() {
            for b in &all[..i] {
                check!(a.index() != b.index(), "element {} came out twice", a.index());
            }
        }
        for h in &HOLDER {
            check_eq!(h.load(Ordering::Relaxed), 0);
        }
        drop(all);
        check_eq!(POOL.stats().in_use, 0);
        Ok(())
    }
}

// ---- An interrupt delivered to a chosen CPU.

const EDU_IRQ_STATUS: usize = 0x24;
const EDU_IRQ_RAISE: usize = 0x60;
const EDU_IRQ_ACK: usize = 0x64;

/// Records which CPU handled the edu device's interrupt while the test is armed. Unarmed it
/// does nothing (the line may be shared with another test's handler).
struct WhereIrq {
    regs: Once<Mmio>,
    armed: AtomicBool,
    cpu: AtomicUsize,
    fired: AtomicU32,
}

impl IrqHandler for WhereIrq {
    fn handle(&self) {
        if !self.armed.load(Ordering::Acquire) {
            return;
        }
        let Some(regs) = self.regs.get() else { return };
        let status = regs.read32(EDU_IRQ_STATUS);
        if status != 0 {
            regs.write32(EDU_IRQ_ACK, status);
        }
        self.cpu.store(arch::cpu_id(), Ordering::Relaxed);
        self.fired.fetch_add(1, Ordering::Release);
    }
}

static WHERE: WhereIrq = WhereIrq {
    regs: Once::new(),
    armed: AtomicBool::new(false),
    cpu: AtomicUsize::new(NONE),
    fired: AtomicU32::new(0),
};

/// Raises the edu interrupt and waits for [`WHERE`] to see it; the CPU that handled it.
fn raise_and_wait(regs: &Mmio) -> Result<usize, Outcome> {
    let before = WHERE.fired.load(Ordering::Acquire);
    WHERE.cpu.store(NONE, Ordering::Relaxed);
    regs.write32(EDU_IRQ_RAISE, 1);
    let start = arch::now_ns();
    while WHERE.fired.load(Ordering::Acquire) == before {
        if arch::now_ns().wrapping_sub(start) > 2_000_000_000 {
            return Err(fail(format_args!("no interrupt within 2 s")));
        }
        core::hint::spin_loop();
    }
    Ok(WHERE.cpu.load(Ordering::Relaxed))
}

ktest! {
    fn an_interrupt_for_cpu_k_is_handled_on_cpu_k() -> TestResult {
        let Some(f) = pci::find(0x1234, 0x11e8) else {
            return Err(Outcome::Skip("no edu device (-device edu)"));
        };
        let Some(regs) = f.map_bar(0, arch::mmio_mapper()) else {
            return Err(fail(format_args!("cannot map edu BAR0")));
        };
        let regs = WHERE.regs.call_once(|| regs);
        let online = arch::cpus_online();
        WHERE.armed.store(true, Ordering::Release);
        let result = (|| -> Result<(), Outcome> {
            // x86_64: a new MSI per CPU, its message naming that CPU. riscv64 (no MSI): the
            // edu INTx line, routed to one CPU after the other.
            let intx = if hal::irq::alloc_msi_on(0).is_some() {
                None
            } else {
                let Some(line) = pci::intx_line(f) else {
                    return Err(fail(format_args!("no INTx route for edu")));
                };
                f.enable_intx();
                check!(line.register(&WHERE).is_ok(), "cannot register on line {}", line.number());
                check!(line.enable().is_ok(), "cannot enable line {}", line.number());
                Some(line)
            };
            for cpu in (0..online).rev() {
                let line: IrqLine = match intx {
                    Some(line) => {
                        check!(line.route_to(cpu).is_ok(), "cannot route line {}", line.number());
                        line
                    }
                    None => {
                        let Some((line, msg)) = hal::irq::alloc_msi_on(cpu) else {
                            return Err(fail(format_args!("no MSI vector for CPU {}", cpu)));
                        };
                        check!(line.register(&WHERE).is_ok(), "cannot register on line {}", line.number());
                        f.enable_bus_master();
                        f.enable_msi(msg).map_err(|e| fail(format_args!("enable_msi: {:?}", e)))?;
                        check!(line.enable().is_ok(), "cannot enable line {}", line.number());
                        line
                    }
                };
                let count = line.count();
                let got = raise_and_wait(regs)?;
                check!(got == cpu, "the interrupt for CPU {} was handled on CPU {}", cpu, got);
                check!(line.count() > count, "line {} count did not move", line.number());
            }
            if let Some(line) = intx {
                check!(line.route_to(0).is_ok(), "cannot route line {} back", line.number());
            }
            Ok(())
        })();
        WHERE.armed.store(false, Ordering::Release);
        check_eq!(regs.read32(EDU_IRQ_STATUS), 0);
        result
    }
}

ktest! {
    fn the_kernel_bio_set_serves_every_cpu_at_once() -> TestResult {
        // Every CPU allocates bios (with vectors from the vector pools) of the kernel's I/O set
        // and frees them, all at once: afterwards nothing is left allocated.
        let set = &crate::block::IO_SET;
        let before = set.stats();
        ARRIVED.store(0, Ordering::Relaxed);
        TIMED_OUT.store(false, Ordering::Relaxed);
        OPS.store(0, Ordering::Relaxed);
        smp::on_each_cpu(bio_churn);
        check!(!TIMED_OUT.load(Ordering::Relaxed), "the CPUs did not all start at once");
        let after = set.stats();
        check!(OPS.load(Ordering::Relaxed) > 0, "no bio was allocated");
        check_eq!(after.in_use, before.in_use);
        check_eq!(after.allocs - before.allocs, after.frees - before.frees);
        check_eq!(after.allocs - before.allocs, OPS.load(Ordering::Relaxed));
        Ok(())
    }
}

/// Allocates and frees bios of the kernel's I/O set, holding up to four at a time.
fn bio_churn(cpu: usize) {
    barrier();
    let mut held: heapless::Vec<blk::Bio, 4> = heapless::Vec::new();
    for round in 0..2000usize {
        if held.is_full() || (round + cpu) % 3 == 2 {
            held.clear();
            continue;
        }
        let vecs = [1, 4, 16][round % 3];
        if let Ok(bio) = crate::block::IO_SET.alloc((), blk::Op::Read, vecs, Wait::Never) {
            OPS.fetch_add(1, Ordering::Relaxed);
            let _ = held.push(bio);
        }
    }
}

// ---- A bio mempool under contention, its bios stamped by their holder.

/// Bios in the test's slab: fewer than the CPUs try to hold at once, so the set runs dry.
const BIO_ELEMS: usize = 24;
/// Bios in the set's reserve.
const BIO_RESERVE: u32 = 4;
/// Most bios one CPU holds at once (two CPUs already want more than there are).
const BIO_HOLD: usize = 16;
/// Operations per CPU in the mixed phase.
const BIO_ROUNDS: u32 = 4000;

/// The front pad of every test bio: who holds it and a serial of the holder's choosing. The
/// holder writes it when it takes the bio and checks it before letting go: a bio handed to two
/// CPUs at once would carry the other's stamp.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cpu: u32,
    serial: u32,
}

static BIO_SLAB: blk::BioSlab<Stamp, BIO_ELEMS> = blk::BioSlab::new();
static BIO_SET: blk::BioSet<Stamp> = blk::BioSet::new(&BIO_SLAB, BIO_RESERVE, None);
/// Every element's identity (its front pad's address), in the order first seen.
static BIO_ADDRS: [AtomicUsize; BIO_ELEMS] = [const { AtomicUsize::new(0) }; BIO_ELEMS];
/// Holder of each element (same index as [`BIO_ADDRS`]): 0 free, CPU + 1 held.
static BIO_HOLDER: [AtomicU32; BIO_ELEMS] = [const { AtomicU32::new(0) }; BIO_ELEMS];
/// Bios handed to each CPU by the previous one: the receiver checks and frees them, so they go
/// back to the allocating CPU's magazine from another CPU (what a completion on another CPU
/// does).
static HANDOFF: [spin::Mutex<heapless::Vec<(blk::Bio, u32), BIO_HOLD>>; arch::MAX_CPUS] =
    [const { spin::Mutex::new(heapless::Vec::new()) }; arch::MAX_CPUS];
/// Allocations that found the set empty.
static BIO_FAILS: AtomicU32 = AtomicU32::new(0);
/// Meeting points of the bio test's phases.
static BIO_MET: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
/// The waiter phase: armed by CPU 0 before it waits on the dry set; whether the set was dry
/// then (every bio held, reserve empty); whether the waiter got a bio; whether a bio was
/// freed to it; and the set's wait and reserve-hit counts the waiter saw move.
static WAITER_ARMED: AtomicBool = AtomicBool::new(false);
static WAITER_SAW_DRY: AtomicBool = AtomicBool::new(false);
static WAITER_SERVED: AtomicBool = AtomicBool::new(false);
static WAITER_FREER: AtomicBool = AtomicBool::new(false);
static WAITS_BEFORE: AtomicU64 = AtomicU64::new(0);
static WAITER_WAITS: AtomicU64 = AtomicU64::new(0);
static WAITER_RESERVE_HITS: AtomicU64 = AtomicU64::new(0);

/// The identity of `bio`: its index in [`BIO_ADDRS`], registering its address on first sight
/// (`None`, counted as an error, if more distinct bios than the slab has come out).
fn bio_id(bio: &blk::Bio) -> Option<usize> {
    let addr = bio.front::<Stamp>().map(|s| s as *const Stamp as usize)?;
    for (i, a) in BIO_ADDRS.iter().enumerate() {
        match a.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(i),
            Err(seen) if seen == addr => return Some(i),
            Err(_) => {}
        }
    }
    error(12);
    None
}

/// Takes a bio just allocated with `stamp` on `cpu`: nobody else may hold it, and it must
/// still carry that stamp.
fn bio_take(cpu: usize, bio: &blk::Bio, stamp: Stamp) {
    let Some(id) = bio_id(bio) else { return };
    if BIO_HOLDER[id].swap(cpu as u32 + 1, Ordering::AcqRel) != 0 {
        error(11); // handed to two holders at once
    }
    if bio.front::<Stamp>() != Some(&stamp) {
        error(13);
    }
}

/// Lets a bio go: `cpu` must hold it and its stamp must be the one it was held with.
fn bio_give(cpu: usize, bio: &blk::Bio, serial: u32) {
    let stamp = Stamp {
        cpu: cpu as u32,
        serial,
    };
    if bio.front::<Stamp>() != Some(&stamp) {
        error(14); // someone else wrote it
    }
    let Some(id) = bio_id(bio) else { return };
    if BIO_HOLDER[id].swap(0, Ordering::AcqRel) != cpu as u32 + 1 {
        error(15);
    }
}

/// Hands `bio` (held by `cpu` with `serial`) to CPU `to`, restamped; `Err` gives it back if
/// `to`'s queue is full.
fn bio_hand(cpu: usize, to: usize, mut bio: blk::Bio, serial: u32) -> Result<(), blk::Bio> {
    let mut queue = HANDOFF[to].lock();
    if queue.is_full() {
        return Err(bio);
    }
    if bio.front::<Stamp>()
        != Some(&Stamp {
            cpu: cpu as u32,
            serial,
        })
    {
        error(14);
    }
    if let Some(id) = bio_id(&bio)
        && BIO_HOLDER[id]
            .compare_exchange(
                cpu as u32 + 1,
                to as u32 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
    {
        error(16);
    }
    if let Some(s) = bio.front_mut::<Stamp>() {
        *s = Stamp {
            cpu: to as u32,
            serial,
        };
    }
    let _ = queue.push((bio, serial));
    Ok(())
}

/// Checks and frees the bios handed to the running CPU. Also the hook of its waiting
/// allocations: a CPU waiting for a bio frees what was handed to it meanwhile.
fn bio_drain() {
    let cpu = arch::cpu_id();
    loop {
        // One at a time: the lock is not held while a bio is freed.
        let Some((bio, serial)) = HANDOFF[cpu].lock().pop() else {
            return;
        };
        bio_give(cpu, &bio, serial);
        drop(bio);
    }
}

/// Waits at meeting point `i` for every online CPU, freeing what is handed over meanwhile.
fn bio_meet(i: usize) {
    BIO_MET[i].fetch_add(1, Ordering::AcqRel);
    let start = arch::now_ns();
    while BIO_MET[i].load(Ordering::Acquire) < arch::cpus_online() {
        bio_drain();
        if arch::now_ns().wrapping_sub(start) > WAIT_NS {
            TIMED_OUT.store(true, Ordering::Relaxed);
            return;
        }
        core::hint::spin_loop();
    }
}

fn bio_alloc(cpu: usize, stamp: Stamp, how: u32) -> Result<blk::Bio, blk::BlkError> {
    match how {
        0 => BIO_SET.alloc_on(cpu as u32, stamp, blk::Op::Read, 1, Wait::Hook(bio_drain)),
        1 => BIO_SET.alloc(stamp, blk::Op::Write, 1, Wait::Never),
        _ => BIO_SET.alloc_on(cpu as u32, stamp, blk::Op::Read, 1, Wait::Never),
    }
}

fn bio_hammer(cpu: usize) {
    bio_meet(0);
    let online = arch::cpus_online();
    let mut held: heapless::Vec<(blk::Bio, u32), BIO_HOLD> = heapless::Vec::new();
    // Every CPU grabs what it can, up to BIO_HOLD, and keeps it: with two CPUs or more the set
    // (reserve included) runs dry.
    while !held.is_full() {
        let stamp = Stamp {
            cpu: cpu as u32,
            serial: u32::MAX,
        };
        match bio_alloc(cpu, stamp, 2) {
            Ok(b) => {
                bio_take(cpu, &b, stamp);
                let _ = held.push((b, u32::MAX));
            }
            Err(_) => {
                BIO_FAILS.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    bio_meet(1);
    // The reserve serves a waiter: CPU 0 waits on the dry set; one other CPU frees one bio
    // once the set has counted the wait. The free refills the reserve first, and the waiter
    // takes it from there.
    if online > 1 {
        if cpu == 0 {
            let before = BIO_SET.stats();
            WAITER_SAW_DRY.store(
                before.in_use == BIO_ELEMS as u64 && before.reserve_len == 0,
                Ordering::Relaxed,
            );
            WAITS_BEFORE.store(before.waits, Ordering::Relaxed);
            WAITER_ARMED.store(true, Ordering::Release);
            let stamp = Stamp {
                cpu: 0,
                serial: u32::MAX - 1,
            };
            if let Ok(b) = bio_alloc(0, stamp, 0) {
                let after = BIO_SET.stats();
                WAITER_WAITS.store(after.waits - before.waits, Ordering::Relaxed);
                WAITER_RESERVE_HITS
                    .store(after.reserve_hits - before.reserve_hits, Ordering::Relaxed);
                WAITER_SERVED.store(true, Ordering::Relaxed);
                bio_take(0, &b, stamp);
                if let Err((b, _)) = held.push((b, stamp.serial)) {
                    bio_give(0, &b, stamp.serial);
                }
            }
        } else if !held.is_empty()
            && WAITER_FREER
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let start = arch::now_ns();
            while !(WAITER_ARMED.load(Ordering::Acquire)
                && BIO_SET.stats().waits > WAITS_BEFORE.load(Ordering::Relaxed))
            {
                if arch::now_ns().wrapping_sub(start) > WAIT_NS {
                    TIMED_OUT.store(true, Ordering::Relaxed);
                    break;
                }
                core::hint::spin_loop();
            }
            if let Some((b, serial)) = held.pop() {
                bio_give(cpu, &b, serial);
            }
        }
        bio_meet(2);
    }
    // A random mix: allocations every way the set offers (failing ones expected), frees, and
    // bios handed to the next CPU to free.
    let mut x = 0x85EB_CA6Bu32.wrapping_mul(cpu as u32 + 1) | 1;
    for round in 0..BIO_ROUNDS {
        bio_drain();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let want_alloc = held.is_empty() || (held.len() < BIO_HOLD && x % 8 < 5);
        if want_alloc {
            let stamp = Stamp {
                cpu: cpu as u32,
                serial: round,
            };
            // Waiting only with empty hands: whoever holds bios lets them go.
            let how = if held.is_empty() { x % 4 } else { 1 + x % 2 };
            match bio_alloc(cpu, stamp, how) {
                Ok(b) => {
                    bio_take(cpu, &b, stamp);
                    if held.push((b, round)).is_err() {
                        error(17);
                    }
                }
                Err(_) => {
                    BIO_FAILS.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let i = (x as usize / 8) % held.len();
            let (b, serial) = held.swap_remove(i);
            let next = (cpu + 1) % online;
            if x.is_multiple_of(3) && next != cpu {
                if let Err(b) = bio_hand(cpu, next, b, serial) {
                    bio_give(cpu, &b, serial);
                }
            } else {
                bio_give(cpu, &b, serial);
            }
        }
        OPS.fetch_add(1, Ordering::Relaxed);
    }
    while let Some((b, serial)) = held.pop() {
        bio_give(cpu, &b, serial);
    }
    // Nobody hands anything over after this meeting point: what is left queued is freed.
    bio_meet(3);
    bio_drain();
}

ktest! {
    fn a_bio_set_hammered_by_every_cpu_loses_and_duplicates_nothing() -> TestResult {
        if BIO_SET.init().is_err() {
            return Err(fail(format_args!("the test set's reserve could not be filled")));
        }
        for m in &BIO_MET {
            m.store(0, Ordering::Relaxed);
        }
        for f in [&WAITER_ARMED, &WAITER_SAW_DRY, &WAITER_SERVED, &WAITER_FREER, &TIMED_OUT] {
            f.store(false, Ordering::Relaxed);
        }
        ERRORS.store(0, Ordering::Relaxed);
        FIRST_ERROR.store(0, Ordering::Relaxed);
        BIO_FAILS.store(0, Ordering::Relaxed);
        OPS.store(0, Ordering::Relaxed);
        let before = BIO_SET.stats();
        smp::on_each_cpu(bio_hammer);
        check!(!TIMED_OUT.load(Ordering::Relaxed), "the CPUs did not all meet in time");
        check!(
            ERRORS.load(Ordering::Relaxed) == 0,
            "{} errors, the first with code {}",
            ERRORS.load(Ordering::Relaxed),
            FIRST_ERROR.load(Ordering::Relaxed)
        );
        let online = arch::cpus_online();
        check_eq!(OPS.load(Ordering::Relaxed), u64::from(BIO_ROUNDS) * online as u64);
        let after = BIO_SET.stats();
        check_eq!(after.in_use, 0);
        check_eq!(after.allocs - before.allocs, after.frees - before.frees);
        check!(after.allocs > before.allocs, "nothing was allocated");
        if online > 1 {
            // Driven empty: allocations failed, counted by the test and by the set.
            check!(BIO_FAILS.load(Ordering::Relaxed) > 0, "no allocation found the set empty");
            check!(after.failures > before.failures, "the set counted no failure");
            check!(WAITER_SAW_DRY.load(Ordering::Relaxed), "the set was not dry when CPU 0 waited");
            check!(WAITER_SERVED.load(Ordering::Relaxed), "the waiter got no bio");
            check!(WAITER_WAITS.load(Ordering::Relaxed) >= 1, "the waiter never waited");
            check!(WAITER_RESERVE_HITS.load(Ordering::Relaxed) >= 1, "the reserve did not serve the waiter");
        }
        check_eq!(after.reserve_len, BIO_RESERVE);
        for h in &BIO_HOLDER {
            check_eq!(h.load(Ordering::Relaxed), 0);
        }
        for q in &HANDOFF {
            check!(q.lock().is_empty(), "a handed-over bio was left behind");
        }
        // Every bio is still there, once: drain the set from here and count.
        let mut all: heapless::Vec<blk::Bio, BIO_ELEMS> = heapless::Vec::new();
        while let Ok(b) = BIO_SET.alloc(Stamp { cpu: 0, serial: 0 }, blk::Op::Read, 1, Wait::Never) {
            if all.push(b).is_err() {
                return Err(fail(format_args!("more than {} bios came out", BIO_ELEMS)));
            }
        }
        check_eq!(all.len(), BIO_ELEMS);
        let mut seen = [false; BIO_ELEMS];
        for b in &all {
            let id = bio_id(b);
            check!(id.is_some(), "a bio never seen before came out");
            if let Some(id) = id {
                check!(!seen[id], "bio {} came out twice", id);
                seen[id] = true;
            }
        }
        check!(ERRORS.load(Ordering::Relaxed) == 0, "more distinct bios than the slab holds");
        drop(all);
        check_eq!(BIO_SET.stats().in_use, 0);
        Ok(())
    }
}
