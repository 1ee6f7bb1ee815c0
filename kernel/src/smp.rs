//! Running work on every CPU.
//!
//! The boot CPU starts the others ([`start_others`], from `kmain` before devices are probed).
//! Each other CPU then sits in [`ap_main`]: with interrupts on, it halts until an interrupt
//! arrives (its timer, a device interrupt routed to it, or an inter-processor interrupt) and
//! looks at its mailbox each time it wakes. [`on_each_cpu`] puts the work in every mailbox,
//! wakes each CPU with an inter-processor interrupt, runs the work on its own CPU, and waits
//! until every CPU has marked its mailbox done.

use crate::arch;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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
