//! In-kernel tests: CPU, interrupts, timer, buses.

mod ahci;
mod blockdev;
mod bounce;
mod cpu;
mod faults;
mod fs;
mod mq;
mod nvme;
mod partitions;
mod pci;
mod selftest;
mod smp;
mod stack;
mod virtio_mq;
