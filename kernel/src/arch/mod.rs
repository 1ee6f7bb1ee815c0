//! Architecture support. Each arch module provides the same set of functions (console, exit,
//! interrupt control, timer, clock, breakpoint, address translation, interrupt controller,
//! MMIO mapper, CPU bring-up and inter-processor interrupts); the rest of the kernel calls them
//! through this module only. [`percpu`] is shared: the per-CPU blocks both arches point a
//! register at (GS base on x86_64, `tp` on riscv64) and the interrupt-safe lock.

pub mod percpu;

pub use percpu::{MAX_CPUS, cpus_online, hw_id, timer_ticks_on};

#[cfg(target_arch = "riscv64")]
mod riscv64;
#[cfg(target_arch = "riscv64")]
pub use riscv64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
