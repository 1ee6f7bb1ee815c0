//! Starting the other CPUs (application processors, APs) the MADT lists.
//!
//! The boot CPU copies a real-mode trampoline to [`TRAMPOLINE`] (below 1 MiB, page aligned:
//! a start-up IPI names a page there) and starts the APs one at a time: it fills the
//! trampoline's slots (page tables, stack, attempt number, Rust entry), sends INIT, waits
//! 10 ms, sends a start-up IPI (a second one 200 us later if the AP has not answered), and waits
//! up to [`START_TIMEOUT_NS`] for the AP to report in. The trampoline goes from real mode
//! straight to long mode (PAE, the boot CPU's CR3, EFER.LME, then PE and PG together, and a far
//! jump to a 64-bit code segment of its own little GDT), takes its stack and calls
//! [`x86_64_ap_entry`].
//!
//! An AP that does not answer in time is reported with its APIC id, sent INIT again (so it
//! cannot run the trampoline later with another AP's stack), and skipped: the next AP gets the
//! next stack and the same logical index. Each attempt has its own stack and number: an AP
//! coming late finds its attempt withdrawn and parks.

use super::{apic, gdt, paging, time, trap};
use crate::arch::percpu::{self, MAX_CPUS, PERCPU};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::registers::model_specific::Msr;

/// Physical address of the trampoline: page 8, free conventional memory on PC firmware.
const TRAMPOLINE: u64 = 0x8000;
/// How long an AP may take from INIT to reporting in.
const START_TIMEOUT_NS: u64 = 1_000_000_000;
/// Each AP's stack.
const AP_STACK_SIZE: usize = 256 * 1024;
/// `IA32_GS_BASE`.
const IA32_GS_BASE: u32 = 0xC000_0101;
/// "No attempt under way" in [`STARTING`].
const NONE: usize = usize::MAX;

global_asm!(
    // Copied to TRAMPOLINE and run there: every address below is TRAMPOLINE + the distance
    // from the start, computed by the assembler (no relocation).
    ".section .rodata.x86_ap_trampoline, \"a\"",
    ".balign 16",
    ".global x86_ap_trampoline",
    "x86_ap_trampoline:",
    ".code16",
    "cli",
    "cld",
    "xorw %ax, %ax",
    "movw %ax, %ds",
    "lgdtl x86_ap_gdtr - x86_ap_trampoline + {base}",
    "movl %cr4, %eax",
    "orl $0x20, %eax", // PAE
    "movl %eax, %cr4",
    "movl x86_ap_cr3 - x86_ap_trampoline + {base}, %eax",
    "movl %eax, %cr3",
    "movl $0xC0000080, %ecx", // EFER
    "rdmsr",
    "orl $0x100, %eax", // LME
    "wrmsr",
    "movl %cr0, %eax",
    "orl $0x80000001, %eax", // PG | PE
    "movl %eax, %cr0",
    "ljmpl $0x08, $x86_ap_long - x86_ap_trampoline + {base}",
    ".code64",
    "x86_ap_long:",
    "movw $0x10, %ax",
    "movw %ax, %ds",
    "movw %ax, %es",
    "movw %ax, %ss",
    "movw %ax, %fs",
    "movw %ax, %gs",
    "movq x86_ap_stack - x86_ap_trampoline + {base}, %rsp",
    "movq x86_ap_attempt - x86_ap_trampoline + {base}, %rdi",
    "movq x86_ap_entry - x86_ap_trampoline + {base}, %rax",
    "xorl %ebp, %ebp",
    "callq *%rax",
    "2:",
    "cli",
    "hlt",
    "jmp 2b",
    ".balign 8",
    // null, 64-bit code (0x08), data (0x10): the same selectors as the kernel's GDT.
    "x86_ap_gdt:",
    ".quad 0",
    ".quad 0x00AF9A000000FFFF",
    ".quad 0x00CF92000000FFFF",
    "x86_ap_gdtr:",
    ".short 23",
    ".long x86_ap_gdt - x86_ap_trampoline + {base}",
    ".balign 8",
    ".global x86_ap_cr3",
    "x86_ap_cr3: .quad 0",
    ".global x86_ap_stack",
    "x86_ap_stack: .quad 0",
    ".global x86_ap_attempt",
    "x86_ap_attempt: .quad 0",
    ".global x86_ap_entry",
    "x86_ap_entry: .quad 0",
    ".global x86_ap_trampoline_end",
    "x86_ap_trampoline_end:",
    ".text",
    base = const TRAMPOLINE,
    options(att_syntax)
);

// Labels of the trampoline above: only their addresses are taken (to copy the code and find
// the slots in the copy).
unsafe extern "C" {
    static x86_ap_trampoline: u8;
    static x86_ap_trampoline_end: u8;
    static x86_ap_cr3: u8;
    static x86_ap_stack: u8;
    static x86_ap_attempt: u8;
    static x86_ap_entry: u8;
}

/// Each AP stack sits above a guard page that is left unmapped (an overflow faults, and the
/// double fault is reported from the CPU's IST stack, instead of overwriting the next stack).
const GUARD: usize = 4096;
/// One guard page and one stack.
const GUARDED_STACK: usize = GUARD + AP_STACK_SIZE;

// The linker script reserves the AP stacks after the boot stack, outside `.bss` (nothing
// clears them): `MAX_CPUS - 1` guarded stacks from `__ap_stacks`, 2 MiB aligned. Only their
// addresses are taken.
unsafe extern "C" {
    static __ap_stacks: u8;
    static __ap_stacks_end: u8;
}

/// The address of attempt `n`'s guard page (for `n = MAX_CPUS - 1`: the end of the stacks).
fn guard_page(n: usize) -> u64 {
    (&raw const __ap_stacks) as u64 + (n * GUARDED_STACK) as u64
}

/// Whether the linker script reserved room for every AP stack.
fn stacks_reserved() -> bool {
    guard_page(MAX_CPUS - 1) <= (&raw const __ap_stacks_end) as u64
}

/// The attempt under way ([`NONE`] when none): the AP claims it by swapping in `CLAIMED`.
static STARTING: AtomicUsize = AtomicUsize::new(NONE);
/// The logical index the AP of the current attempt gets.
static STARTING_INDEX: AtomicUsize = AtomicUsize::new(0);
/// Set to the attempt number + 1 by an AP that finished its setup.
static REPORTED: AtomicUsize = AtomicUsize::new(0);
const CLAIMED: usize = usize::MAX - 1;

/// APIC ids of the CPUs that did not start (reported by [`start_cpus`]).
static FAILED: spin::Mutex<heapless::Vec<u32, MAX_CPUS>> = spin::Mutex::new(heapless::Vec::new());

/// The hardware ids of the CPUs that did not start.
pub fn cpus_failed() -> heapless::Vec<u32, MAX_CPUS> {
    FAILED.lock().clone()
}

/// Points GS base at logical CPU `cpu`'s block.
pub fn set_gs_base(cpu: usize) {
    let block = &raw const PERCPU[cpu];
    // SAFETY: writing IA32_GS_BASE only changes where GS-relative loads go; the kernel's only
    // GS-relative access is `cpu_id`, which expects exactly this block (static, lives forever).
    unsafe { Msr::new(IA32_GS_BASE).write(block as u64) };
}

/// Byte offset of trampoline label `label` from its start.
fn offset_of(label: *const u8) -> usize {
    label as usize - (&raw const x86_ap_trampoline) as usize
}

/// Starts every CPU in `apic_ids` but this one, at most up to [`MAX_CPUS`] online. `skip`:
/// APIC ids to pretend do not answer (a test of the failure path). Boot CPU, once, in thread
/// context (interrupts may be on or off).
pub fn start_cpus(apic_ids: &[u32], skip: &[u32]) {
    let me = apic::local_apic_id();
    if apic_ids.iter().all(|&id| id == me) {
        return; // one CPU: low memory and the page tables stay as they are
    }
    if !stacks_reserved() {
        defmt::error!("no room reserved for the other CPUs' stacks: they stay stopped");
        return;
    }
    let (start, end) = (
        &raw const x86_ap_trampoline as usize,
        &raw const x86_ap_trampoline_end as usize,
    );
    let len = end - start;
    // SAFETY: 1. the source is the trampoline's bytes in the kernel image (rodata, `len` long);
    // 2. TRAMPOLINE..+len (under 4 KiB) is conventional memory below 1 MiB that the firmware
    // leaves free and nothing in the kernel uses (the hand-over and ACPI were read already and
    // are copied or live elsewhere); it is identity-mapped.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE as *mut u8, len) };
    let slot = |label: *const u8| (TRAMPOLINE as usize + offset_of(label)) as *mut u64;
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    // SAFETY: the slots lie inside the copy just made (labels of the trampoline), 8-byte
    // aligned; no AP runs the trampoline yet.
    unsafe {
        slot(&raw const x86_ap_cr3).write_volatile(cr3);
        slot(&raw const x86_ap_entry).write_volatile(x86_64_ap_entry as *const () as u64);
    }
    let guards: [u64; MAX_CPUS - 1] = core::array::from_fn(guard_page);
    // SAFETY: boot CPU, no other CPU started yet, nothing else changes the page tables; the
    // region is the kernel image's own (the AP stacks the linker script reserves, 2 MiB
    // aligned), and the guard pages are never used.
    if !unsafe { paging::unmap_guard_pages(guard_page(0), &guards) } {
        defmt::warn!("the other CPUs' stacks run without guard pages");
    }
    let mut attempt = 0;
    for &id in apic_ids.iter().filter(|&&id| id != me) {
        let index = percpu::cpus_online();
        if index >= MAX_CPUS || attempt >= MAX_CPUS - 1 {
            defmt::warn!(
                "cpu with APIC id {=u32} not started: at most {=usize} CPUs",
                id,
                MAX_CPUS
            );
            continue;
        }
        // The top of attempt n's stack is where the next guard page starts.
        let stack_top = guard_page(attempt + 1);
        // SAFETY: as above; the previous AP has claimed its attempt and left the trampoline.
        unsafe {
            slot(&raw const x86_ap_stack).write_volatile(stack_top);
            slot(&raw const x86_ap_attempt).write_volatile(attempt as u64);
        }
        STARTING_INDEX.store(index, Ordering::Relaxed);
        STARTING.store(attempt, Ordering::Release);
        if start_one(id, attempt, skip.contains(&id)) {
            percpu::set_online(index);
            defmt::info!("cpu {=usize} online: APIC id {=u32}", index, id);
        } else {
            defmt::warn!(
                "cpu with APIC id {=u32} did not start within {=u64} ms: left out",
                id,
                START_TIMEOUT_NS / 1_000_000
            );
            let _ = FAILED.lock().push(id);
        }
        attempt += 1;
    }
}

/// INIT, start-up IPIs, then waits for attempt `attempt` to report in. `skip`: send nothing
/// (the CPU stays stopped and times out).
fn start_one(apic_id: u32, attempt: usize, skip: bool) -> bool {
    let page = (TRAMPOLINE >> 12) as u8;
    if !skip {
        apic::send_init(apic_id);
        delay_ns(10_000_000);
        apic::send_startup(apic_id, page);
    }
    let start = time::now_ns();
    let mut second_sent = skip;
    loop {
        if REPORTED.load(Ordering::Acquire) == attempt + 1 {
            return true;
        }
        let waited = time::now_ns().wrapping_sub(start);
        if !second_sent && waited > 200_000 {
            second_sent = true;
            if STARTING.load(Ordering::Acquire) == attempt {
                apic::send_startup(apic_id, page);
            }
        }
        if waited > START_TIMEOUT_NS
            && STARTING
                .compare_exchange(attempt, NONE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Withdrawn before the AP claimed it: hold the CPU in INIT so it cannot run the
            // trampoline later.
            if !skip {
                apic::send_init(apic_id);
            }
            return false;
        }
        core::hint::spin_loop();
    }
}

fn delay_ns(ns: u64) {
    let start = time::now_ns();
    while time::now_ns().wrapping_sub(start) < ns {
        core::hint::spin_loop();
    }
}

/// Rust entry of an AP, from the trampoline: long mode, the boot CPU's page tables, the stack
/// of attempt `attempt`, interrupts off.
extern "C" fn x86_64_ap_entry(attempt: usize) -> ! {
    if STARTING
        .compare_exchange(attempt, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // The boot CPU gave up on this attempt: stay out of the way.
        loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        }
    }
    let index = STARTING_INDEX.load(Ordering::Relaxed);
    set_gs_base(index);
    PERCPU[index]
        .hw_id
        .store(apic::local_apic_id(), Ordering::Relaxed);
    // SAFETY: this is CPU `index` (< MAX_CPUS, checked by the boot CPU), running its setup
    // once with interrupts off; the IDT was filled by the boot CPU before any AP started.
    unsafe { gdt::init(index) };
    trap::load();
    apic::init_ap();
    REPORTED.store(attempt + 1, Ordering::Release);
    super::apply_timer();
    crate::smp::ap_main(index)
}
