//! Running work on every CPU.
//!
//! The boot CPU starts the others ([`start_others`], from `kmain` before devices are probed).
//! Each other CPU then sits in [`ap_main`]: with interrupts on, it halts until an interrupt
//! arrives (its timer, a device interrupt routed to it, or an inter-processor interrupt) and
//! looks at its mailbox each time it wakes. [`on_each_cpu`] puts the work in every mailbox,
//! wakes each CPU with an inter-processor interrupt, runs the work on its own CPU, and waits
//! until every CPU has marked its mailbox done.
//!
//! It also keeps each CPU's halt clock: the time each CPU has spent halted in the block layer's
//! wait hook ([`halted_ns`]), and the time every online CPU was halted there at once
//! ([`all_halted_ns`]). `cargo xtask bench` counts busy time with them (`docs/bench.md`).

use crate::arch;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One CPU's halt clock, alone on its cache lines: written only by its own CPU, on each halt
/// in the wait hook and on the interrupt that ends it.
#[repr(align(128))]
struct HaltClock {
    /// When the CPU last halted (0: not halted).
    start: AtomicU64,
    /// Nanoseconds spent halted so far.
    halted: AtomicU64,
}

static HALT_CLOCKS: [HaltClock; arch::MAX_CPUS] = [const {
    HaltClock {
        start: AtomicU64::new(0),
        halted: AtomicU64::new(0),
    }
}; arch::MAX_CPUS];

/// How many CPUs are halted in the wait hook (top [`COUNT_SHIFT`] bits up) and, while all
/// online CPUs are, since when (the low bits, ns). One word, so that the CPU that halts last
/// and one that wakes cannot see the count and the start time of different moments.
static ALL_HALTED: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds every online CPU has spent halted in the wait hook at once.
static ALL_HALTED_NS: AtomicU64 = AtomicU64::new(0);
const COUNT_SHIFT: u32 = 56;
const TIME_MASK: u64 = (1 << COUNT_SHIFT) - 1;

/// The running CPU's halt clock.
#[inline]
fn halt_clock() -> &'static HaltClock {
    &HALT_CLOCKS[arch::cpu_id().min(arch::MAX_CPUS - 1)]
}

/// Starts a halt of the running CPU in the block layer's wait hook (just before it halts).
/// Interrupts should be off: an interrupt between this and the halt ends the halt early (its
/// time is then counted as busy).
#[inline]
pub fn idle_begin() {
    // The clock is read first: under `-icount` what follows counts as halted, not as work.
    let now = arch::now_ns().max(1);
    // Counted before `start` is set: an interrupt in between finds no halt to end, so the
    // count never goes below the CPUs that set one.
    all_halted_enter(now);
    halt_clock().start.store(now, Ordering::Relaxed);
}

/// Ends the running CPU's halt, if it is in one (every interrupt calls this through
/// `block::woke`, before its handler).
#[inline]
pub fn idle_end() {
    let clock = halt_clock();
    if clock.start.load(Ordering::Relaxed) != 0 {
        let start = clock.start.swap(0, Ordering::Relaxed);
        if start != 0 {
            // The clock is read after the bookkeeping: under `-icount` it counts as halted.
            let all_since = all_halted_leave();
            let now = arch::now_ns();
            clock
                .halted
                .fetch_add(now.saturating_sub(start), Ordering::Relaxed);
            if let Some(since) = all_since {
                ALL_HALTED_NS.fetch_add((now & TIME_MASK).saturating_sub(since), Ordering::Relaxed);
            }
        }
    }
}

/// Counts the running CPU in with the halted ones, noting `now` if it is the last.
#[inline(never)]
fn all_halted_enter(now: u64) {
    let online = arch::cpus_online() as u64;
    let mut old = ALL_HALTED.load(Ordering::Relaxed);
    loop {
        let count = (old >> COUNT_SHIFT) + 1;
        let since = if count == online {
            now & TIME_MASK
        } else {
            old & TIME_MASK
        };
        match ALL_HALTED.compare_exchange_weak(
            old,
            (count << COUNT_SHIFT) | since,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(seen) => old = seen,
        }
    }
}

/// Counts the running CPU out of the halted ones; when every online CPU was halted, since
/// when.
#[inline(never)]
fn all_halted_leave() -> Option<u64> {
    let online = arch::cpus_online() as u64;
    let mut old = ALL_HALTED.load(Ordering::Relaxed);
    loop {
        let count = old >> COUNT_SHIFT;
        let new = (count.saturating_sub(1) << COUNT_SHIFT) | (old & TIME_MASK);
        match ALL_HALTED.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return (count >= online).then_some(old & TIME_MASK),
            Err(seen) => old = seen,
        }
    }
}

/// Nanoseconds the running CPU has spent halted in the block layer's wait hook since boot.
pub fn halted_ns() -> u64 {
    halt_clock().halted.load(Ordering::Relaxed)
}

/// Nanoseconds during which every online CPU was halted in the block layer's wait hook at
/// once, since boot. Under `-icount shift=0` the guest clock advances by the instructions any
/// CPU executes, and by real time only while all are halted: elapsed time minus this is the
/// instructions all CPUs executed together. On one CPU it is [`halted_ns`].
pub fn all_halted_ns() -> u64 {
    ALL_HALTED_NS.load(Ordering::Relaxed)
}

/// One CPU's mailbox: the round of work it should run and the last round it finished.
struct Mailbox {
    /// Round number of the work posted (0: none yet).
    posted: AtomicU64,
    /// Round number of the last work finished.
    done: AtomicU64,
}

static MAILBOXES: [Mailbox; arch::MAX_CPUS] = [const {
    Mailbox {
        posted: AtomicU64::new(0),
        done: AtomicU64::new(0),
    }
}; arch::MAX_CPUS];

/// The number of the last round; held by [`on_each_cpu`] for the whole round, so rounds never
/// overlap. Never taken in interrupt context.
static ROUND: spin::Mutex<u64> = spin::Mutex::new(0);
/// The CPU that posted the current round (it is woken when a CPU finishes).
static REQUESTER: AtomicUsize = AtomicUsize::new(0);
/// The work of the current round, readable without the round lock (the lock stays with the
/// requester). Set before any mailbox is posted.
static WORK: spin::Mutex<Option<fn(usize)>> = spin::Mutex::new(None);

/// Starts the CPUs the firmware reports besides the boot CPU; those that do not answer are
/// logged and left out. Boot CPU, once.
pub fn start_others() {
    arch::start_cpus();
}

/// Runs `work(cpu)` on every online CPU (`cpu` in `0..arch::cpus_online()`, each call on the
/// CPU it names), all at once, and returns when every call has returned. Thread context only,
/// and not from inside `work` (rounds are serialised: a nested call would wait for itself).
/// `work` runs with interrupts on; the CPUs keep handling their interrupts while it runs.
pub fn on_each_cpu(work: fn(usize)) {
    let mut round = ROUND.lock();
    *round += 1;
    let number = *round;
    let me = arch::cpu_id();
    let online = arch::cpus_online();
    *WORK.lock() = Some(work);
    REQUESTER.store(me, Ordering::Relaxed);
    for cpu in (0..online).filter(|&c| c != me) {
        // Release: the work pointer above is visible to the CPU that sees the new round.
        MAILBOXES[cpu].posted.store(number, Ordering::Release);
        arch::send_ipi(cpu);
    }
    work(me);
    for cpu in (0..online).filter(|&c| c != me) {
        loop {
            arch::interrupts_disable();
            if MAILBOXES[cpu].done.load(Ordering::Acquire) == number {
                arch::interrupts_enable();
                break;
            }
            // Woken by the finishing CPU's IPI (or the timer); `wait_for_interrupt` cannot
            // miss one that arrives after the check above.
            arch::wait_for_interrupt();
            arch::interrupts_enable();
        }
    }
    drop(round);
}

/// The idle loop of every CPU but the boot CPU: halts with interrupts on (so the interrupts
/// routed here are handled), runs posted work, and reports it done.
pub fn ap_main(cpu: usize) -> ! {
    let mailbox = &MAILBOXES[cpu];
    arch::interrupts_enable();
    loop {
        arch::interrupts_disable();
        let posted = mailbox.posted.load(Ordering::Acquire);
        if posted == mailbox.done.load(Ordering::Relaxed) {
            // Nothing to do: sleep until an interrupt (the IPI of the next round, the timer,
            // a device); the check above and the halt cannot lose the wake-up.
            arch::wait_for_interrupt();
            continue;
        }
        arch::interrupts_enable();
        let work = *WORK.lock();
        if let Some(work) = work {
            work(cpu);
        }
        mailbox.done.store(posted, Ordering::Release);
        arch::send_ipi(REQUESTER.load(Ordering::Relaxed));
    }
}
