//! Starting the other harts the device tree lists, through the SBI HSM extension.
//!
//! OpenSBI picks the boot hart (not always hart 0); the others wait, stopped, in the firmware.
//! The boot hart starts them one at a time with `hart_start(hart, entry, opaque)`: the hart
//! enters [`riscv64_secondary_start`] in S-mode with the MMU off, `a0` = its hart id and `a1` =
//! `opaque`, the physical address of its attempt's [`StartBlock`] (the boot hart's `satp`, a
//! stack of its own, the Rust entry, the attempt number). The code turns paging on (the boot
//! page table maps itself by identity and the kernel in the higher half), takes its stack and
//! jumps to [`riscv64_ap_entry`] in the higher half.
//!
//! A hart that does not report in within [`START_TIMEOUT_NS`] (or that the firmware refuses
//! to start) is reported with its hart id and skipped; its attempt is withdrawn, so if it comes
//! late it finds that and parks, on its own stack.

use super::entry::KERNEL_OFFSET;
use super::{plic, trap};
use crate::arch::percpu::{self, MAX_CPUS, PERCPU};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicUsize, Ordering};

/// How long a hart may take from `hart_start` to reporting in.
const START_TIMEOUT_NS: u64 = 1_000_000_000;
/// Each hart's stack.
const AP_STACK_SIZE: usize = 256 * 1024;
/// "No attempt under way" in [`STARTING`].
const NONE: usize = usize::MAX;
const CLAIMED: usize = usize::MAX - 1;
const SIE_SSIE: usize = 1 << 1;
const SIE_STIE: usize = 1 << 5;
const SIE_SEIE: usize = 1 << 9;

global_asm!(
    r#"
    .option push
    .option arch, +f, +d
    .section .text, "ax"
    .balign 4
    .globl riscv64_secondary_start
riscv64_secondary_start:
    /* Physical addresses, MMU off: a0 = hart id, a1 = the start block. */
    csrw    sie, zero
    csrci   sstatus, 2
    ld      t0, 0(a1)
    sfence.vma
    csrw    satp, t0
    sfence.vma
    /* The boot page table maps this code and the block by identity too. */
    ld      sp, 8(a1)
    ld      t1, 16(a1)
    ld      a1, 24(a1)
    li      t0, 1 << 13
    csrs    sstatus, t0
    fscsr   zero
    mv      gp, zero
    mv      tp, zero
    jr      t1
    .option pop
"#
);

// The entry above; only its address is taken.
unsafe extern "C" {
    fn riscv64_secondary_start();
}

/// What a starting hart reads, at the physical address passed as `opaque`.
#[repr(C)]
struct StartBlock {
    satp: AtomicUsize,
    stack_top: AtomicUsize,
    entry: AtomicUsize,
    attempt: AtomicUsize,
}

static BLOCKS: [StartBlock; MAX_CPUS - 1] = [const {
    StartBlock {
        satp: AtomicUsize::new(0),
        stack_top: AtomicUsize::new(0),
        entry: AtomicUsize::new(0),
        attempt: AtomicUsize::new(0),
    }
}; MAX_CPUS - 1];

#[repr(C, align(16))]
struct Stack([u8; AP_STACK_SIZE]);

/// One stack per start attempt.
static mut AP_STACKS: [Stack; MAX_CPUS - 1] = [const { Stack([0; AP_STACK_SIZE]) }; MAX_CPUS - 1];

/// The attempt under way ([`NONE`] when none): the hart claims it by swapping in [`CLAIMED`].
static STARTING: AtomicUsize = AtomicUsize::new(NONE);
/// The logical index the hart of the current attempt gets.
static STARTING_INDEX: AtomicUsize = AtomicUsize::new(0);
/// Attempt number + 1 of the last hart that finished its setup.
static REPORTED: AtomicUsize = AtomicUsize::new(0);

/// Hart ids that did not start.
static FAILED: spin::Mutex<heapless::Vec<u32, MAX_CPUS>> = spin::Mutex::new(heapless::Vec::new());

/// The hart ids of the harts that did not start.
pub fn cpus_failed() -> heapless::Vec<u32, MAX_CPUS> {
    FAILED.lock().clone()
}

/// Points `tp` at logical CPU `cpu`'s block.
pub fn set_tp(cpu: usize) {
    let block = (&raw const PERCPU[cpu]) as usize;
    // SAFETY: `tp` is reserved (the compiler never allocates it; no thread-local storage), and
    // the kernel's only `tp`-relative access is `cpu_id`, which expects exactly this block
    // (static, lives forever). No `nomem`: `cpu_id`'s read-only asm must not move before this.
    unsafe { asm!("mv tp, {}", in(reg) block, options(nostack, preserves_flags)) };
}

/// Starts every hart in `harts` (hart id, PLIC S-mode context) but `boot_hart`, up to
/// [`MAX_CPUS`] online. `skip`: hart ids to pretend do not answer (a test of the failure path).
/// Boot hart, once.
pub fn start_cpus(boot_hart: usize, harts: &[(usize, Option<usize>)], skip: &[u32]) {
    let satp: usize;
    // SAFETY: reading `satp` has no side effects.
    unsafe { asm!("csrr {}, satp", out(reg) satp, options(nomem, nostack)) };
    let entry_phys = riscv64_secondary_start as *const () as usize - KERNEL_OFFSET;
    let mut attempt = 0;
    for &(hart, context) in harts.iter().filter(|h| h.0 != boot_hart) {
        let index = percpu::cpus_online();
        if index >= MAX_CPUS || attempt >= MAX_CPUS - 1 {
            defmt::warn!(
                "hart {=usize} not started: at most {=usize} CPUs",
                hart,
                MAX_CPUS
            );
            continue;
        }
        let block = &BLOCKS[attempt];
        // Only the address of the stacks is taken, no reference.
        let stack_top = (&raw const AP_STACKS) as usize + (attempt + 1) * AP_STACK_SIZE;
        block.satp.store(satp, Ordering::Relaxed);
        block.stack_top.store(stack_top, Ordering::Relaxed);
        block
            .entry
            .store(riscv64_ap_entry as *const () as usize, Ordering::Relaxed);
        block.attempt.store(attempt, Ordering::Relaxed);
        plic::set_context(index, context);
        STARTING_INDEX.store(index, Ordering::Relaxed);
        STARTING.store(attempt, Ordering::Release);
        let block_phys = block as *const StartBlock as usize - KERNEL_OFFSET;
        let started = if skip.contains(&(hart as u32)) {
            wait_for(attempt)
        } else {
            let ret = sbi_rt::hart_start(hart, entry_phys, block_phys);
            if ret.is_ok() {
                wait_for(attempt)
            } else {
                defmt::warn!(
                    "hart {=usize}: SBI hart_start refused (error {=isize})",
                    hart,
                    ret.error as isize
                );
                STARTING.store(NONE, Ordering::Release);
                false
            }
        };
        if started {
            percpu::set_online(index);
            defmt::info!("cpu {=usize} online: hart {=usize}", index, hart);
        } else {
            defmt::warn!(
                "hart {=usize} did not start within {=u64} ms: left out",
                hart,
                START_TIMEOUT_NS / 1_000_000
            );
            plic::set_context(index, None);
            let _ = FAILED.lock().push(hart as u32);
        }
        attempt += 1;
    }
}

/// Waits for attempt `attempt` to report in; withdraws it after the timeout.
///
/// Waits halted (`wfi`), woken by the hart's IPI when it reports in or by this hart's timer
/// every 10 ms: under single-threaded TCG (`-icount`) a spinning boot hart would take the
/// time slices the starting hart needs.
fn wait_for(attempt: usize) -> bool {
    let start = super::now_ns();
    let step = super::TIMEBASE.load(Ordering::Relaxed) / 100;
    loop {
        if REPORTED.load(Ordering::Acquire) == attempt + 1 {
            super::sbi::set_timer(u64::MAX);
            return true;
        }
        if super::now_ns().wrapping_sub(start) > START_TIMEOUT_NS
            && STARTING
                .compare_exchange(attempt, NONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            super::sbi::set_timer(u64::MAX);
            return false;
        }
        // The periodic timer is not running yet (the tick handler stops the timer when no
        // period is set): this deadline only wakes the wait below.
        super::sbi::set_timer(super::timer_now() + step);
        super::wait_for_interrupt();
    }
}

/// Rust entry of a started hart: paging on, in the higher half on its attempt's stack,
/// interrupts off.
extern "C" fn riscv64_ap_entry(hart: usize, attempt: usize) -> ! {
    if STARTING
        .compare_exchange(attempt, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // The boot hart gave up on this attempt: stay out of the way.
        loop {
            // SAFETY: `wfi` only idles the hart; `sie` is zero, so it stays here.
            unsafe { asm!("wfi", options(nomem, nostack)) };
        }
    }
    let index = STARTING_INDEX.load(Ordering::Relaxed);
    set_tp(index);
    PERCPU[index].hw_id.store(hart as u32, Ordering::Relaxed);
    trap::init();
    plic::init_hart(index);
    // SAFETY: enabling the software, timer and external interrupt sources in `sie` only lets
    // them be taken once `sstatus.SIE` is set; the trap vector is installed.
    unsafe {
        asm!("csrs sie, {}", in(reg) SIE_SSIE | SIE_STIE | SIE_SEIE, options(nomem, nostack))
    };
    REPORTED.store(attempt + 1, Ordering::Release);
    // Wake the boot hart, which waits halted for this report.
    super::send_ipi(0);
    super::apply_timer();
    crate::smp::ap_main(index)
}
