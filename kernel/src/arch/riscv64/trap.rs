//! Traps: the vector (direct mode), breakpoints, the periodic timer, device interrupts, and a
//! report-and-exit for every other exception.
//!
//! The entry saves every integer register, `sepc`, `sstatus` and the caller-saved FP registers
//! with `fcsr` on the current stack (the kernel has one privilege level and one stack), calls
//! [`trap_handler`], and restores all of it before `sret`. The callee-saved FP registers are
//! kept by the Rust handler itself (calling convention).

use super::{plic, sbi, timer_now};
use crate::arch::percpu;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use riscv::register::stvec::{self, Stvec, TrapMode};

const INTERRUPT: u64 = 1 << 63;
const IRQ_S_SOFT: u64 = 1;
const IRQ_S_TIMER: u64 = 5;
const IRQ_S_EXTERNAL: u64 = 9;
const EXC_BREAKPOINT: u64 = 3;

/// `sip` bit: supervisor software interrupt pending.
const SIP_SSIP: usize = 1 << 1;

/// Saved state of the interrupted code; layout shared with the assembly below.
#[repr(C)]
pub struct TrapFrame {
    /// `x0`..`x31`; slot 0 unused, slot 2 holds `sp` before the trap.
    pub x: [u64; 32],
    pub sepc: u64,
    pub sstatus: u64,
    /// ft0-ft7, fa0-fa7, ft8-ft11.
    pub f: [u64; 20],
    pub fcsr: u64,
    _pad: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(FRAME_SIZE == 56 * 8 && FRAME_SIZE.is_multiple_of(16));

global_asm!(
    r#"
    .option push
    .option arch, +f, +d
    .section .text.trap, "ax"
    .balign 4
    .globl trap_entry
trap_entry:
    addi    sp, sp, -{frame}
    .irp    i, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    sd      x\i, (\i * 8)(sp)
    .endr
    addi    t0, sp, {frame}
    sd      t0, 16(sp)
    csrr    t0, sepc
    sd      t0, 256(sp)
    csrr    t0, sstatus
    sd      t0, 264(sp)
    .set    slot, 0
    .irp    i, 0,1,2,3,4,5,6,7,10,11,12,13,14,15,16,17,28,29,30,31
    fsd     f\i, (272 + slot * 8)(sp)
    .set    slot, slot + 1
    .endr
    frcsr   t0
    sd      t0, 432(sp)

    mv      a0, sp
    call    {handler}

    ld      t0, 432(sp)
    fscsr   t0
    .set    slot, 0
    .irp    i, 0,1,2,3,4,5,6,7,10,11,12,13,14,15,16,17,28,29,30,31
    fld     f\i, (272 + slot * 8)(sp)
    .set    slot, slot + 1
    .endr
    ld      t0, 256(sp)
    csrw    sepc, t0
    ld      t0, 264(sp)
    csrw    sstatus, t0
    .irp    i, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      x\i, (\i * 8)(sp)
    .endr
    addi    sp, sp, {frame}
    sret
    .option pop
"#,
    frame = const FRAME_SIZE,
    handler = sym trap_handler,
);

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
/// Timer period in `time` units (0: timer off), the same on every hart; each hart keeps its
/// own next deadline (`PerCpu::timer_next`).
static TIMER_PERIOD: AtomicU64 = AtomicU64::new(0);
/// Set while a fatal exception is being reported: a second one skips the logger.
static DYING: AtomicBool = AtomicBool::new(false);

/// Points `stvec` at the trap entry (direct mode) and stops this hart's timer. Every hart, at
/// its start.
pub fn init() {
    // The assembly entry defined in this file's `global_asm!`; only its address is taken.
    unsafe extern "C" {
        fn trap_entry();
    }
    let entry = trap_entry as *const () as usize;
    // SAFETY: `trap_entry` is 4-byte aligned (direct mode needs the low two bits clear) and
    // handles every trap this kernel can take, returning with all state restored.
    unsafe { stvec::write(Stvec::new(entry, TrapMode::Direct)) };
    sbi::set_timer(u64::MAX);
}

pub fn breakpoints() -> u64 {
    BREAKPOINTS.load(Ordering::Relaxed)
}

/// Timer interrupts taken on this hart.
pub fn ticks() -> u64 {
    percpu::this().ticks.load(Ordering::Relaxed)
}

/// Interrupts of any kind taken on this hart.
pub fn interrupts_taken() -> u64 {
    percpu::this().interrupts.load(Ordering::Relaxed)
}

/// Sets the period every hart's timer uses from now on (0: off).
pub fn set_timer_period(period: u64) {
    TIMER_PERIOD.store(period, Ordering::Relaxed);
}

/// (Re)starts this hart's periodic timer with the current period, or stops it.
pub fn timer_restart() {
    super::without_interrupts(|| {
        let period = TIMER_PERIOD.load(Ordering::Relaxed);
        if period == 0 {
            sbi::set_timer(u64::MAX);
            return;
        }
        let next = timer_now() + period;
        percpu::this().timer_next.store(next, Ordering::Relaxed);
        sbi::set_timer(next);
    });
}

fn timer_tick() {
    let me = percpu::this();
    me.ticks.fetch_add(1, Ordering::Relaxed);
    let period = TIMER_PERIOD.load(Ordering::Relaxed);
    if period == 0 {
        sbi::set_timer(u64::MAX);
        return;
    }
    let now = timer_now();
    let mut next = me.timer_next.load(Ordering::Relaxed) + period;
    if next <= now {
        next = now + period; // fell behind (a slow emulator): skip the missed ticks
    }
    me.timer_next.store(next, Ordering::Relaxed);
    sbi::set_timer(next);
}

/// Length of the instruction at `pc`: 2 if compressed, else 4.
fn instruction_len(pc: u64) -> u64 {
    // SAFETY: `pc` is the `sepc` of a breakpoint trap: the address of an `ebreak` the CPU just
    // fetched, so it is mapped and readable (kernel text is readable), and instructions are at
    // least 2-byte aligned.
    let low = unsafe { (pc as *const u16).read_volatile() };
    if low & 0b11 == 0b11 { 4 } else { 2 }
}

fn cause_name(code: u64) -> &'static str {
    match code {
        0 => "instruction address misaligned",
        1 => "instruction access fault",
        2 => "illegal instruction",
        3 => "breakpoint",
        4 => "load address misaligned",
        5 => "load access fault",
        6 => "store address misaligned",
        7 => "store access fault",
        8 => "environment call from U-mode",
        9 => "environment call from S-mode",
        12 => "instruction page fault",
        13 => "load page fault",
        15 => "store page fault",
        _ => "unknown",
    }
}

/// Reads the trap cause and value. Own asm, not the `riscv` crate's `scause`/`stval`: this runs
/// on every interrupt, and the two raw reads are all the handler needs.
fn read_scause_stval() -> (u64, u64) {
    let (scause, stval): (u64, u64);
    // SAFETY: reading `scause` and `stval` has no side effects.
    unsafe {
        asm!("csrr {}, scause", out(reg) scause, options(nomem, nostack));
        asm!("csrr {}, stval", out(reg) stval, options(nomem, nostack));
    }
    (scause, stval)
}

extern "C" fn trap_handler(frame: &mut TrapFrame) {
    let (scause, stval) = read_scause_stval();
    let code = scause & !INTERRUPT;
    if scause & INTERRUPT != 0 {
        crate::block::woke();
        percpu::this().interrupts.fetch_add(1, Ordering::Relaxed);
        match code {
            IRQ_S_TIMER => timer_tick(),
            IRQ_S_EXTERNAL => plic::handle(),
            IRQ_S_SOFT => {
                // SAFETY: clearing SSIP only acknowledges a software interrupt.
                unsafe { asm!("csrc sip, {}", in(reg) SIP_SSIP, options(nomem, nostack)) };
                // An inter-processor interrupt (SBI IPIs arrive as software interrupts).
                percpu::this().ipis.fetch_add(1, Ordering::Relaxed);
                super::ipi_received();
            }
            _ => {}
        }
        return;
    }
    if code == EXC_BREAKPOINT {
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
        frame.sepc += instruction_len(frame.sepc);
        return;
    }
    fatal(code, frame, stval)
}

fn fatal(code: u64, frame: &TrapFrame, stval: u64) -> ! {
    if DYING.swap(true, Ordering::Relaxed) {
        // Faulted while reporting a fault: the logger may be what broke.
        super::console_write(b"\0FATAL: nested exception\n");
        super::exit(false);
    }
    defmt::error!(
        "exception: {=str} (scause {=u64:#x}) at sepc {=u64:#x}, stval {=u64:#x}, ra {=u64:#x}, sp {=u64:#x}",
        cause_name(code),
        code,
        frame.sepc,
        stval,
        frame.x[1],
        frame.x[2]
    );
    super::exit(false)
}
