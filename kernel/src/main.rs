//! The bootable kernel: boot code for x86_64 and riscv64 (in `arch`), the console, DMA memory,
//! device discovery, and the in-kernel tests.
//!
//! The arch code brings the CPU up (paging, traps, serial, interrupt controller), gathers a
//! [`boot::BootInfo`] and calls [`kmain`]. Everything after that is architecture-independent.
#![no_std]
#![no_main]

mod arch;
mod bench;
mod bench_fs;
mod bench_profile;
mod block;
mod boot;
mod config;
mod console;
mod dma;
mod fs;
#[macro_use]
mod ktest;
mod pci;
mod powercut;
mod smp;
mod tests;
mod text;

use boot::BootInfo;
use spin::Once;

static BOOT: Once<BootInfo> = Once::new();

/// What the arch code found at boot.
pub fn boot_info() -> &'static BootInfo {
    BOOT.get()
        .expect("boot info is set before anything asks for it")
}

/// Periodic timer rate.
const TIMER_HZ: u32 = 100;

/// Architecture-independent kernel entry; the arch code calls it once, with interrupts off.
pub fn kmain(info: BootInfo) -> ! {
    console::start();
    let info = BOOT.call_once(|| info);
    dma::init();
    hal::irq::set_chip(arch::irq_chip());
    defmt::println!(
        "storage-stack kernel {=str} on {=str} cpu {=usize} ({=str}), cmdline \"{=str}\"",
        env!("CARGO_PKG_VERSION"),
        arch::NAME,
        arch::cpu_id(),
        info.firmware,
        info.cmdline
    );
    arch::log_boot_details();
    defmt::println!("crc32c: {=str}", arch::install_crc());
    // Before the devices: drivers spread their queues over the CPUs online at attach.
    smp::start_others();
    pci::init(info);
    block::init(info);
    arch::timer_start(TIMER_HZ);
    arch::interrupts_enable();
    block::registry::init();
    defmt::println!("{=usize} CPUs online", arch::cpus_online());

    let mode = boot::cmdline_arg(info.cmdline, "mode").unwrap_or("run");
    // The test runner reports a missing expected disk as a failing check; the other modes stop
    // here, with the driver's error already logged.
    if mode != "test" && block::missing_expected(info.cmdline) != 0 {
        defmt::error!("boot failed: an expected disk did not attach (expect= on the command line)");
        arch::exit(false);
    }
    let ok = match mode {
        "test" => ktest::run_all(info.cmdline),
        "bench" => bench::run(),
        "powercut" => powercut::run(info.cmdline),
        "run" => {
            for d in &info.virtio_mmio {
                defmt::println!("virtio-mmio {=u64:#x} irq {=u32}", d.base, d.irq);
            }
            let raw = block::demo::run();
            raw && block::demo::filesystem()
        }
        other => {
            defmt::error!("unknown mode {=str}", other);
            false
        }
    };
    arch::exit(ok)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    arch::interrupts_disable();
    console::recover_for_panic();
    match info.location() {
        Some(l) => defmt::println!(
            "PANIC {} at {=str}:{=u32}:{=u32}",
            defmt::Display2Format(&info.message()),
            l.file(),
            l.line(),
            l.column()
        ),
        None => defmt::println!("PANIC {}", defmt::Display2Format(&info.message())),
    }
    arch::exit(false)
}
