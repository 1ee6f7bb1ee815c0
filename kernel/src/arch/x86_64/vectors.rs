//! Interrupt vector numbers: who owns which IDT vector. Only constants, so the interrupt
//! controller code (`apic`) and the IDT code (`trap`) both import from here instead of from
//! each other.
//!
//! | vectors      | use                                                          |
//! |--------------|--------------------------------------------------------------|
//! | 0..=31       | CPU exceptions: #BP is counted and resumed, others are fatal |
//! | 32..=47      | the (masked) 8259 PICs: only spurious interrupts can arrive  |
//! | 48..=223     | MSI, handed out by `apic::alloc_msi`                         |
//! | 224..=247    | IOAPIC pins 0..=23                                           |
//! | 253          | inter-processor interrupt (wake-up, timer change)            |
//! | 254          | LAPIC timer                                                  |
//! | 255          | LAPIC spurious                                               |

/// `#BP` (`int3`): counted and resumed.
pub const VECTOR_BREAKPOINT: u64 = 3;
/// `#DF`: runs on its own IST stack.
pub const VECTOR_DOUBLE_FAULT: u64 = 8;
/// `#PF`: reported with CR2.
pub const VECTOR_PAGE_FAULT: u64 = 14;
/// First vector of the remapped master 8259 PIC (IRQ 0).
pub const VECTOR_PIC_FIRST: u64 = 32;
/// Last vector of the remapped slave 8259 PIC (IRQ 15).
pub const VECTOR_PIC_LAST: u64 = 47;
/// First vector handed out for MSI.
pub const VECTOR_MSI_FIRST: u32 = 48;
/// Last vector handed out for MSI.
pub const VECTOR_MSI_LAST: u32 = 223;
/// Vector of IOAPIC pin 0.
pub const VECTOR_IOAPIC_FIRST: u32 = 224;
/// Vector of IOAPIC pin 23, the last one routed.
pub const VECTOR_IOAPIC_LAST: u32 = 247;
/// Inter-processor interrupt: wakes a CPU to look at its mailbox and timer setting.
pub const VECTOR_IPI: u64 = 253;
/// LAPIC timer.
pub const VECTOR_TIMER: u64 = 254;
/// LAPIC spurious interrupt (never acknowledged).
pub const VECTOR_SPURIOUS: u64 = 255;
