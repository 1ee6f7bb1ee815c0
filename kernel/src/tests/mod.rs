//! In-kernel tests: CPU, interrupts, timer, buses.

mod blockdev;
mod cpu;
mod fs;
mod pci;
mod selftest;
