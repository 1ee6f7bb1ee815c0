//! In-kernel tests: CPU, interrupts, timer, buses.

mod cpu;
mod pci;
mod selftest;
