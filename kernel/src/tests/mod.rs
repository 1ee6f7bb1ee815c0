//! In-kernel tests: CPU, interrupts, timer, buses.

mod ahci;
mod blockdev;
mod nvme;
mod cpu;
mod fs;
mod pci;
mod selftest;
