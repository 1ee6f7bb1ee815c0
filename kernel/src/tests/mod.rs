//! In-kernel tests: CPU, interrupts, timer, buses.

mod ahci;
mod blockdev;
mod cpu;
mod faults;
mod fs;
mod mq;
mod nvme;
mod partitions;
mod pci;
mod selftest;
