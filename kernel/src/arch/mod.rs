//! Architecture support. Each arch module provides the same set of functions (console, exit,
//! interrupt control, timer, clock, breakpoint, address translation, interrupt controller,
//! MMIO mapper); the rest of the kernel calls them through this module only.

#[cfg(target_arch = "riscv64")]
mod riscv64;
#[cfg(target_arch = "riscv64")]
pub use riscv64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;
