//! riscv64 support (QEMU `virt` and boards booted by OpenSBI): Sv39 higher-half boot, traps,
//! SBI timer, PLIC, NS16550 console, device tree discovery, exit through the SiFive test device.
//!
//! Memory map once paging is on: physical 0..256 GiB is identity-mapped (devices, RAM, PCI
//! windows: a buffer's physical address is also a usable pointer), and the kernel image runs at
//! `KERNEL_OFFSET + physical` (0xffff_ffff_8020_0000 for a load at 0x8020_0000).

mod discover;
mod entry;
mod plic;
mod sbi;
mod smp;
mod trap;
mod uart;

use crate::arch::percpu::{self, MAX_CPUS, PERCPU};
use crate::boot::BootInfo;
use bootproto::fdt;
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use entry::{IDENTITY_LIMIT, KERNEL_OFFSET};
use hal::{Mmio, MmioMapper, PhysAddr};
use heapless::Vec;
use spin::Once;

/// Architecture name, as reported at boot.
pub const NAME: &str = "riscv64";

const SSTATUS_SIE: usize = 1 << 1;
/// Where QEMU `virt` has the SiFive test device; used only when there is no device tree.
const VIRT_TEST_DEVICE: usize = 0x10_0000;
const TEST_PASS: u32 = 0x5555;
const TEST_FAIL: u32 = 0x3333;
const DEFAULT_TIMEBASE: u64 = 10_000_000;
const CMDLINE_MAX: usize = 512;

static TIMEBASE: AtomicU64 = AtomicU64::new(DEFAULT_TIMEBASE);
static TEST_DEVICE: AtomicUsize = AtomicUsize::new(VIRT_TEST_DEVICE);
static CMDLINE: Once<heapless::String<CMDLINE_MAX>> = Once::new();
/// Device register windows the MMIO mapper hands out: `(base, size)`.
static WINDOWS: Once<Vec<(u64, u64), 16>> = Once::new();
/// The usable harts of the device tree: (hart id, PLIC S-mode context).
static HARTS: Once<Vec<(usize, Option<usize>), MAX_HARTS>> = Once::new();
/// Most harts read from the device tree.
const MAX_HARTS: usize = 64;
/// The boot hart's id.
static BOOT_HART: AtomicUsize = AtomicUsize::new(0);
/// The periodic timer rate every hart should run at (0: stopped); see [`timer_start`].
static TIMER_HZ: AtomicU32 = AtomicU32::new(0);

/// Rust entry from `entry.rs`: paging is on, we run in the higher half on the boot stack with
/// BSS cleared and the FPU on; interrupts are off.
#[unsafe(no_mangle)]
extern "C" fn riscv64_entry(hart: usize, dtb: usize) -> ! {
    // First: `cpu_id` reads through `tp`. The boot hart is logical CPU 0 whatever its id.
    smp::set_tp(0);
    PERCPU[0].hw_id.store(hart as u32, Ordering::Relaxed);
    BOOT_HART.store(hart, Ordering::Relaxed);
    trap::init();
    let fdt = match device_tree(dtb) {
        Ok(fdt) => fdt,
        Err(why) => boot_stop(hart, dtb, why),
    };
    let board = Some(discover::board(&fdt, hart));
    BOOT_HANDOFF.call_once(|| (hart, dtb, fdt.total_size()));
    HARTS.call_once(|| {
        discover::harts::<MAX_HARTS>(&fdt)
            .iter()
            .map(|h| (h.hart, h.plic_context))
            .collect()
    });

    if let Some(u) = board.as_ref().and_then(|b| b.uart.as_ref())
        && u.base < IDENTITY_LIMIT
    {
        // SAFETY: the device tree names this 8250/16550-compatible UART as the console, with
        // its register spacing and width (checked: 1 or 4, base aligned to it); it is
        // identity-mapped (below `IDENTITY_LIMIT`) and only the console code touches it.
        unsafe { uart::init(u.base as usize, u.shift, u.width, u.clock) };
    }
    if let Some(tb) = board.as_ref().and_then(|b| b.timebase).filter(|&t| t > 0) {
        TIMEBASE.store(tb, Ordering::Relaxed);
    }
    match board.as_ref().map(|b| b.test_device) {
        Some(Some(base)) if base < IDENTITY_LIMIT => {
            TEST_DEVICE.store(base as usize, Ordering::Relaxed);
        }
        Some(_) => TEST_DEVICE.store(0, Ordering::Relaxed), // a board without one
        None => {}                                          // no tree: assume QEMU virt
    }
    if let Some(p) = board.as_ref().and_then(|b| b.plic.as_ref())
        && p.base < IDENTITY_LIMIT
    {
        // SAFETY: the device tree describes this PLIC with `sources` sources and names
        // `context` as this hart's S-mode context; it is identity-mapped.
        unsafe { plic::init(p.base as usize, p.context, p.sources) };
    }
    // SAFETY: enabling the timer, external and software (inter-processor) interrupt sources in
    // `sie` only lets them be taken once `sstatus.SIE` is set; the trap vector is installed.
    unsafe {
        riscv::register::sie::set_stimer();
        riscv::register::sie::set_sext();
        riscv::register::sie::set_ssoft();
    }

    let mut info = BootInfo {
        cmdline: "",
        firmware: sbi::implementation(),
        pci: None,
        virtio_mmio: Vec::new(),
    };
    let mut windows: Vec<(u64, u64), 16> = Vec::new();
    if let Some(b) = board {
        let mut line = heapless::String::new();
        for c in b.cmdline.chars() {
            if line.push(c).is_err() {
                break;
            }
        }
        info.cmdline = CMDLINE.call_once(|| line).as_str();
        for d in &b.virtio_mmio {
            let _ = windows.push((d.base, d.size));
        }
        if let Some(pci) = &b.pci {
            let _ = windows.push((pci.ecam_base, pci.ecam_size));
            let _ = windows.push(pci.mmio32);
            let _ = pci.mmio64.map(|w| windows.push(w));
            let _ = pci.io.map(|w| windows.push(w));
        }
        info.virtio_mmio = b.virtio_mmio;
        info.pci = b.pci;
    }
    WINDOWS.call_once(|| windows);
    crate::kmain(info)
}

/// The boot hart, and the device tree's physical address and size (for the boot log).
static BOOT_HANDOFF: Once<(usize, usize, usize)> = Once::new();

unsafe extern "C" {
    /// The Image's first byte (`KERNEL_PHYS`), at its higher-half address.
    static __kernel_virt_start: u8;
    static __kernel_end: u8;
}

/// The device tree at physical `dtb`, checked: address, magic, size, not overlapping the kernel
/// image (whose `.bss` the entry code cleared), structure.
///
/// The kernel never allocates or reuses RAM outside its own image (DMA memory and page tables
/// are statics in it), so the tree stays where the boot loader left it (U-Boot: in high RAM,
/// OpenSBI: right after its own region) for the whole run; everything the kernel needs from it
/// is read here, at entry, anyway.
fn device_tree(dtb: usize) -> Result<flat_device_tree::Fdt<'static>, &'static str> {
    if dtb == 0 {
        return Err(
            "no device tree (a1 = 0): boot with OpenSBI/U-Boot passing one (booti ADDR - FDT)",
        );
    }
    if !dtb.is_multiple_of(8) || dtb as u64 + 8 > IDENTITY_LIMIT {
        return Err("device tree address misaligned or outside the identity map");
    }
    // SAFETY: the firmware passed `dtb` as the device tree's physical address; RAM is
    // identity-mapped, and the first 8 bytes (magic, size) are read before trusting more.
    let header = unsafe { &*(dtb as *const [u8; 8]) };
    let size = match fdt::total_size(header) {
        Ok(size) => size as usize,
        Err(fdt::Error::BadMagic(_)) => return Err("no device tree at a1 (bad FDT magic)"),
        Err(_) => {
            return Err(
                "device tree size in its header is implausible (under 40 bytes or over 4 MiB)",
            );
        }
    };
    if dtb as u64 + size as u64 > IDENTITY_LIMIT {
        return Err("device tree outside the identity map");
    }
    let image_start = ((&raw const __kernel_virt_start) as usize - entry::KERNEL_OFFSET) as u64;
    let image_end = ((&raw const __kernel_end) as usize - entry::KERNEL_OFFSET) as u64;
    if fdt::overlaps(dtb as u64, size as u64, image_start, image_end) {
        return Err(
            "device tree overlaps the kernel image (placed inside image_size): move fdt_addr_r",
        );
    }
    // SAFETY: the header says the blob is `size` bytes; firmware placed it in RAM (mapped, see
    // above), outside the kernel image (checked), and nothing in the kernel writes there (the
    // kernel only uses its own statics), so it stays valid and unchanged for the whole run.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size) };
    fdt::Header::parse(blob).map_err(
        |_| "device tree header malformed (a block outside totalsize, or an unknown version)",
    )?;
    flat_device_tree::Fdt::new(blob).map_err(|_| "device tree malformed (structure does not parse)")
}

/// Stops the boot before the console exists: the reason through the SBI console, then exit.
fn boot_stop(hart: usize, dtb: usize, why: &str) -> ! {
    uart::sbi_write("\r\nboot stopped: ");
    uart::sbi_write(why);
    let mut line: heapless::String<64> = heapless::String::new();
    let _ =
        core::fmt::Write::write_fmt(&mut line, format_args!(" (hart {hart}, a1 = {dtb:#x})\r\n"));
    uart::sbi_write(&line);
    exit(false)
}

/// The filesystem's CRC32C stays in software: the base ISA has no CRC instruction (the
/// carry-less multiply of Zbc could fold one; not done). Returns what it uses.
pub fn install_crc() -> &'static str {
    "software (no CRC instruction on riscv64)"
}

/// Whether the CPU has a CRC32C instruction the kernel uses: not on riscv64.
pub fn crc_instruction() -> bool {
    false
}

/// Logs the boot hart and where the device tree was. Called by `kmain` once the console runs.
pub fn log_boot_details() {
    if let Some(&(hart, dtb, size)) = BOOT_HANDOFF.get() {
        defmt::println!(
            "boot hart {=usize}, device tree at {=usize:#x} ({=usize} bytes)",
            hart,
            dtb,
            size
        );
    }
}

/// Sends raw bytes to the serial console (polling); usable anywhere, interrupts on or off.
pub fn console_write(bytes: &[u8]) {
    uart::write_bytes(bytes);
}

/// Ends the run: QEMU exits with status 0 (`success`) or 1.
pub fn exit(success: bool) -> ! {
    interrupts_disable();
    let dev = TEST_DEVICE.load(Ordering::Relaxed);
    if dev != 0 {
        let v = if success {
            TEST_PASS
        } else {
            1 << 16 | TEST_FAIL
        };
        // SAFETY: `dev` is the identity-mapped SiFive test device (from the device tree, or
        // QEMU virt's fixed address when booted without one); a 32-bit write to its only
        // register ends the emulation.
        unsafe { (dev as *mut u32).write_volatile(v) };
    }
    sbi::system_reset(!success);
    loop {
        // SAFETY: `wfi` only idles the hart; with interrupts off it stays here.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

// The `sstatus.SIE` toggles, the wait and the clock read below stay one-instruction asm rather
// than the `riscv` crate's CSR functions: they run on every I/O, and each asm block's memory
// clobber (or its absence) is chosen for the code around it.

/// Lets interrupts be taken (`sstatus.SIE`).
pub fn interrupts_enable() {
    // SAFETY: the trap vector and its handlers are installed before `kmain` runs.
    unsafe { asm!("csrs sstatus, {}", in(reg) SSTATUS_SIE, options(nomem, nostack)) };
}

/// Masks interrupts.
pub fn interrupts_disable() {
    // SAFETY: clearing `sstatus.SIE` only defers interrupts. The memory clobber (no `nomem`)
    // keeps the compiler from moving memory accesses out of a section this starts.
    unsafe { asm!("csrc sstatus, {}", in(reg) SSTATUS_SIE, options(nostack)) };
}

/// Whether interrupts can be taken now.
pub fn interrupts_enabled() -> bool {
    let s: usize;
    // SAFETY: reading `sstatus` has no side effects.
    unsafe { asm!("csrr {}, sstatus", out(reg) s, options(nomem, nostack)) };
    s & SSTATUS_SIE != 0
}

/// Runs `f` with interrupts masked, then restores the previous state.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_on = interrupts_enabled();
    interrupts_disable();
    let r = f();
    if was_on {
        interrupts_enable();
    }
    r
}

/// Sleeps until an interrupt arrives and has been handled, then restores the previous
/// interrupt state. Call with interrupts off after checking for work to close the race: `wfi`
/// wakes on a pending interrupt even with `sstatus.SIE` clear, which is then taken here.
pub fn wait_for_interrupt() {
    let was_on = interrupts_enabled();
    interrupts_disable();
    let seen = trap::interrupts_taken();
    while trap::interrupts_taken() == seen {
        // SAFETY: `wfi` idles until an interrupt is pending; enabling SIE right after takes it
        // (the handler is installed), and SIE is masked again before the check.
        unsafe {
            asm!("wfi", "csrs sstatus, {sie}", "csrc sstatus, {sie}", sie = in(reg) SSTATUS_SIE,
                 options(nostack));
        }
    }
    if was_on {
        interrupts_enable();
    }
}

/// Executes `ebreak`; the trap handler counts it and resumes after it.
pub fn breakpoint() {
    // SAFETY: the breakpoint exception is handled by the trap handler, which steps over the
    // instruction and returns with every register restored.
    unsafe { asm!("ebreak", options(nostack)) };
}

/// Breakpoints handled so far.
pub fn breakpoint_count() -> u64 {
    trap::breakpoints()
}

/// Starts the periodic timer interrupt at `hz` ticks a second (0 stops it) on every hart: here
/// at once, on the others when the IPI sent to them arrives.
pub fn timer_start(hz: u32) {
    let period = if hz == 0 {
        0
    } else {
        (TIMEBASE.load(Ordering::Relaxed) / u64::from(hz)).max(1)
    };
    trap::set_timer_period(period);
    TIMER_HZ.store(hz, Ordering::Relaxed);
    percpu::this().timer_hz.store(hz, Ordering::Relaxed);
    trap::timer_restart();
    let me = cpu_id();
    for cpu in (0..cpus_online()).filter(|&c| c != me) {
        send_ipi(cpu);
    }
}

/// Brings this hart's timer to the rate [`timer_start`] last asked for.
fn apply_timer() {
    let hz = TIMER_HZ.load(Ordering::Relaxed);
    let mine = &percpu::this().timer_hz;
    if mine.load(Ordering::Relaxed) != hz {
        mine.store(hz, Ordering::Relaxed);
        trap::timer_restart();
    }
}

/// What an inter-processor interrupt asks of this hart beyond waking it up (interrupt
/// context).
fn ipi_received() {
    apply_timer();
}

/// Timer interrupts taken so far on this hart (every hart's timer ticks at the same rate).
pub fn timer_ticks() -> u64 {
    trap::ticks()
}

/// Sends an inter-processor interrupt (an SBI IPI: a supervisor software interrupt) to logical
/// CPU `cpu` (nothing if it is not online): it wakes from `wait_for_interrupt` and looks at its
/// mailbox (`crate::smp`).
pub fn send_ipi(cpu: usize) {
    if let Some(hart) = percpu::hw_id(cpu) {
        let _ = sbi_rt::send_ipi(sbi_rt::HartMask::from_mask_base(1, hart as usize));
    }
}

/// Raises a message-signalled interrupt on a CPU: never on riscv64 `virt`, which has no MSI
/// (a PLIC source cannot be raised by software). Always `false`.
pub fn raise_msi_on(cpu: usize, irq: u32) -> bool {
    let _ = (cpu, irq);
    false
}

/// Starts the other harts the device tree lists (at most [`MAX_CPUS`] CPUs in all) through
/// SBI HSM, one at a time; a hart that does not report in within a second is logged with its
/// hart id and left out. `smp_skip=ID,...` on the command line names hart ids to leave stopped
/// (a test of that path). Boot hart, once, before devices are probed.
pub fn start_cpus() {
    let Some(harts) = HARTS.get() else { return };
    if harts.len() > 1 && !sbi_rt::probe_extension(sbi_rt::Hsm).is_available() {
        defmt::warn!("no SBI HSM extension: the other harts stay stopped");
        return;
    }
    let mut skip: Vec<u32, 8> = Vec::new();
    if let Some(list) = crate::boot::cmdline_arg(crate::boot_info().cmdline, "smp_skip") {
        for id in list.split(',').filter_map(|w| w.parse().ok()) {
            let _ = skip.push(id);
        }
    }
    smp::start_cpus(BOOT_HART.load(Ordering::Relaxed), harts, &skip);
}

/// Hardware ids (hart ids) of the harts that did not start.
pub fn cpus_failed() -> Vec<u32, MAX_CPUS> {
    smp::cpus_failed()
}

/// The `time` CSR (ticks at the device tree's timebase frequency).
fn timer_now() -> u64 {
    let t: u64;
    // SAFETY: reading `time` has no side effects (OpenSBI lets S-mode read it).
    unsafe { asm!("rdtime {}", out(reg) t, options(nomem, nostack)) };
    t
}

/// Nanoseconds since the machine started.
pub fn now_ns() -> u64 {
    let t = timer_now();
    let f = TIMEBASE.load(Ordering::Relaxed);
    (t / f) * 1_000_000_000 + (t % f) * 1_000_000_000 / f
}

/// A fine-grained counter for cost figures: the `time` CSR (`cycle` may trap in S-mode).
pub fn cycles() -> u64 {
    timer_now()
}

/// How memory is mapped once paging is on (module docs), for `hal::mem`: physical
/// 0..`IDENTITY_LIMIT` identity-mapped, the kernel image (statics, stacks) at
/// `KERNEL_OFFSET + physical`.
pub const TRANSLATION: hal::mem::Translation = hal::mem::Translation {
    direct_offset: 0,
    direct_limit: IDENTITY_LIMIT,
    image_base: KERNEL_OFFSET,
    image_offset: KERNEL_OFFSET,
};

/// Logical index of the running hart: one `tp`-relative load of its per-CPU block's first word.
#[inline(always)]
pub fn cpu_id() -> usize {
    let index: usize;
    // SAFETY: every hart points `tp` at its own `PerCpu` block (a static that lives forever,
    // first field the index, never written after initialisation) before running any code that
    // calls this: the boot hart first thing in `riscv64_entry`, the others first thing in their
    // entry.
    unsafe {
        asm!("ld {}, 0(tp)", out(reg) index, options(nostack, preserves_flags, readonly, pure))
    };
    index
}

use percpu::cpus_online;

/// The PLIC.
pub fn irq_chip() -> &'static dyn hal::irq::IrqChip {
    &plic::PLIC
}

struct Mapper;

impl MmioMapper for Mapper {
    fn map(&self, phys: PhysAddr, len: usize) -> Option<Mmio> {
        let end = phys.0.checked_add(len as u64)?;
        if end > IDENTITY_LIMIT {
            return None;
        }
        let inside = |&(base, size): &(u64, u64)| phys.0 >= base && end <= base + size;
        let virt = hal::mem::phys_to_virt(phys)?;
        WINDOWS.get()?.iter().any(inside).then(|| {
            // SAFETY: 1. the range lies in a device window from the device tree (virtio-mmio
            // slot, PCI ECAM or a PCI host window), in the direct map at `virt`
            // (`hal::mem`, identity below `IDENTITY_LIMIT`); devices there take naturally
            // aligned volatile accesses. 2. `MmioMapper` callers (bus code) only map what they
            // assigned or read from the device, one owner each. 3. `virt` is not 0: no device
            // window of the `virt` machine starts at address 0.
            unsafe { Mmio::new(virt, phys, len) }
        })
    }
}

/// Identity mapper for the device windows the device tree lists.
pub fn mmio_mapper() -> &'static dyn MmioMapper {
    &Mapper
}
