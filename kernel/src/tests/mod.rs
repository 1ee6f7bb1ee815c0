//! In-kernel tests: CPU, interrupts, timer, buses.

mod blockdev;
mod cpu;
mod pci;
mod selftest;
