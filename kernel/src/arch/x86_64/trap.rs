//! The IDT, the entry stubs of all 256 vectors and the common trap handler.
//!
//! Every vector has a 16-byte stub. An exception stub (vectors 0..=31) pushes a zero error code
//! (unless the CPU pushed one), then the vector number, and jumps to `x86_trap_common`, which
//! saves the general registers and calls [`x86_trap`] with a pointer to the [`TrapFrame`]. An
//! interrupt stub (32..=255) saves `rdi`, loads the vector into it and jumps to
//! `x86_irq_common`, which saves only the other caller-saved registers (the callee-saved ones
//! are preserved by [`x86_irq`] itself) and calls [`x86_irq`] with the vector. Which vector is
//! what: [`super::vectors`].

use super::vectors::{
    VECTOR_BREAKPOINT, VECTOR_DOUBLE_FAULT, VECTOR_IPI, VECTOR_PAGE_FAULT, VECTOR_PIC_FIRST,
    VECTOR_PIC_LAST, VECTOR_SPURIOUS, VECTOR_TIMER,
};
use super::{apic, gdt};
use crate::arch::percpu;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::Cr2;
use x86_64::structures::DescriptorTablePointer;

/// Size of each entry stub (the IDT points at `x86_trap_stubs + 16 * vector`).
const STUB_SIZE: u64 = 16;

global_asm!(
    ".section .text.traps, \"ax\"",
    ".balign 16",
    ".global x86_trap_stubs",
    "x86_trap_stubs:",
    ".set vector, 0",
    ".rept 256",
    ".balign 16",
    ".if vector >= 32",
    "pushq %rdi",
    "movl $vector, %edi",
    "jmp x86_irq_common",
    ".else",
    // Exceptions with a CPU-pushed error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX.
    ".if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)",
    ".else",
    "pushq $0",
    ".endif",
    "pushq $vector",
    "jmp x86_trap_common",
    ".endif",
    ".set vector, vector + 1",
    ".endr",
    "",
    "x86_trap_common:",
    "pushq %rax",
    "pushq %rbx",
    "pushq %rcx",
    "pushq %rdx",
    "pushq %rsi",
    "pushq %rdi",
    "pushq %rbp",
    "pushq %r8",
    "pushq %r9",
    "pushq %r10",
    "pushq %r11",
    "pushq %r12",
    "pushq %r13",
    "pushq %r14",
    "pushq %r15",
    // The CPU aligned RSP to 16 before pushing its 5-word frame; with the error code, vector and
    // 15 registers the total is 22 words, so RSP is 16-byte aligned here as the ABI wants.
    "movq %rsp, %rdi",
    "cld",
    "call x86_trap",
    "popq %r15",
    "popq %r14",
    "popq %r13",
    "popq %r12",
    "popq %r11",
    "popq %r10",
    "popq %r9",
    "popq %r8",
    "popq %rbp",
    "popq %rdi",
    "popq %rsi",
    "popq %rdx",
    "popq %rcx",
    "popq %rbx",
    "popq %rax",
    "addq $16, %rsp",
    "iretq",
    "",
    "x86_irq_common:",
    "pushq %rax",
    "pushq %rcx",
    "pushq %rdx",
    "pushq %rsi",
    "pushq %r8",
    "pushq %r9",
    "pushq %r10",
    "pushq %r11",
    // The CPU's 5-word frame, `rdi` and 8 registers: 14 words, RSP stays 16-byte aligned.
    "cld",
    "call x86_irq",
    "popq %r11",
    "popq %r10",
    "popq %r9",
    "popq %r8",
    "popq %rsi",
    "popq %rdx",
    "popq %rcx",
    "popq %rax",
    "popq %rdi",
    "iretq",
    ".text",
    options(att_syntax)
);

// The first stub of the table in the `global_asm!` above; only its address is taken (the IDT
// entries point into the table), the byte itself is never read.
unsafe extern "C" {
    static x86_trap_stubs: u8;
}

/// What the stubs and the CPU leave on the stack.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// One 16-byte interrupt gate.
///
/// The gates are written here rather than with the `x86_64` crate's `InterruptDescriptorTable`:
/// every one of the 256 vectors points into the uniform stub table above, and that type types
/// each exception entry for an `extern "x86-interrupt"` handler and keeps the reserved vectors
/// (15, 22..=27, 31) private, so it cannot fill the whole table with these stubs. `lidt` and
/// its pointer type do come from the crate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const GATE_INTERRUPT: u8 = 0x8E; // present, DPL 0, 64-bit interrupt gate

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 256]);

static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Breakpoints taken so far (all CPUs).
pub fn breakpoint_count() -> u64 {
    BREAKPOINTS.load(Ordering::Relaxed)
}

/// Timer interrupts taken so far on this CPU.
pub fn timer_ticks() -> u64 {
    percpu::this().ticks.load(Ordering::Relaxed)
}

/// Fills and loads the IDT (one table for every CPU).
///
/// # Safety
/// Boot CPU only, once, after [`gdt::init`] (the double-fault gate uses its IST slot), before
/// any other CPU runs.
pub unsafe fn init() {
    // Defined by the global_asm above: only its address is taken.
    let stubs = (&raw const x86_trap_stubs) as u64;
    let idt = &raw mut IDT;
    for vector in 0..256u64 {
        let handler = stubs + vector * STUB_SIZE;
        let ist = if vector == VECTOR_DOUBLE_FAULT {
            gdt::DOUBLE_FAULT_IST
        } else {
            0
        };
        let gate = Gate {
            offset_low: handler as u16,
            selector: gdt::KERNEL_CS,
            ist,
            attributes: GATE_INTERRUPT,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
        // SAFETY: `vector < 256`; boot CPU only and the IDT is not loaded yet.
        unsafe { (*idt).0[vector as usize] = gate };
    }
    load();
}

/// Loads the IDT [`init`] filled on this CPU (the other CPUs, at their start).
pub fn load() {
    let idt = &raw const IDT;
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is a static that lives forever, filled by `init` on the boot CPU before
    // any other CPU was started (and never written again): every gate points at a stub in
    // `x86_trap_stubs` with the kernel code selector.
    unsafe { lidt(&pointer) };
}

/// Names of the architectural exceptions.
fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        9 => "coprocessor segment overrun",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating-point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point",
        20 => "virtualization",
        21 => "control protection",
        28 => "hypervisor injection",
        29 => "VMM communication",
        30 => "security",
        _ => "reserved",
    }
}

/// Reports a fatal exception and ends the run with failure.
fn fatal_exception(frame: &TrapFrame) -> ! {
    // The fault may have hit while a log frame was being written: close it first.
    crate::console::recover_for_panic();
    let name = exception_name(frame.vector);
    if frame.vector == VECTOR_PAGE_FAULT {
        defmt::error!(
            "exception {=u64} ({=str}): error {=u64:#x} rip {=u64:#x} rsp {=u64:#x} cr2 {=u64:#x}",
            frame.vector,
            name,
            frame.error,
            frame.rip,
            frame.rsp,
            Cr2::read_raw()
        );
    } else {
        defmt::error!(
            "exception {=u64} ({=str}): error {=u64:#x} rip {=u64:#x} rsp {=u64:#x}",
            frame.vector,
            name,
            frame.error,
            frame.rip,
            frame.rsp
        );
    }
    if frame.vector == VECTOR_DOUBLE_FAULT {
        defmt::error!("double fault: probably a kernel stack overflow");
    }
    super::exit(false)
}

/// Called by `x86_trap_common` for the exceptions (vectors 0..=31), with interrupts off.
#[unsafe(no_mangle)]
extern "C" fn x86_trap(frame: &mut TrapFrame) {
    if frame.vector == VECTOR_BREAKPOINT {
        // `int3` is a trap: RIP already points after it, so returning resumes.
        BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
    } else {
        fatal_exception(frame);
    }
}

/// Called by `x86_irq_common` for every interrupt vector (32..=255), with interrupts off.
#[unsafe(no_mangle)]
extern "C" fn x86_irq(vector: u32) {
    crate::block::woke();
    match vector {
        // The PICs are masked: only their spurious IRQ 7/15 can get here, which need no EOI.
        // LAPIC spurious interrupts must not be acknowledged.
        PIC_FIRST..=PIC_LAST | SPURIOUS_VECTOR => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
        }
        TIMER_VECTOR => {
            percpu::this().ticks.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
        }
        IPI_VECTOR => {
            percpu::this().ipis.fetch_add(1, Ordering::Relaxed);
            apic::eoi();
            super::ipi_received();
        }
        _ => {
            hal::irq::dispatch(vector);
            apic::eoi();
        }
    }
}

const PIC_FIRST: u32 = VECTOR_PIC_FIRST as u32;
const PIC_LAST: u32 = VECTOR_PIC_LAST as u32;
const TIMER_VECTOR: u32 = VECTOR_TIMER as u32;
const IPI_VECTOR: u32 = VECTOR_IPI as u32;
const SPURIOUS_VECTOR: u32 = VECTOR_SPURIOUS as u32;
