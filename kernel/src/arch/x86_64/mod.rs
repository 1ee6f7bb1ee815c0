//! x86_64: PVH / Multiboot2 boot, identity paging, GDT/TSS/IDT, LAPIC + IOAPIC, MSI, TSC clock,
//! COM1 console, ACPI discovery of the PCI ECAM (legacy configuration ports without one),
//! isa-debug-exit.
//!
//! Boot order: `_start32` (entry.rs) reaches long mode and calls [`x86_64_entry`], which points
//! GS base at CPU 0's per-CPU block, sets up the console, descriptor tables, stack guard,
//! interrupt controllers and clocks, reads the hand-over and ACPI (the MADT's CPUs are kept for
//! [`start_cpus`]), and calls `crate::kmain` with interrupts disabled. `kmain` starts the other
//! CPUs through [`start_cpus`] (smp.rs) before it probes devices.

mod acpi;
mod apic;
mod crc;
mod entry;
mod gdt;
mod handoff;
mod paging;
mod port;
mod serial;
mod smp;
mod time;
mod trap;
mod vectors;

pub use crc::{crc_instruction, install_crc};

use crate::arch::percpu::{self, PERCPU};
use crate::boot::{BootInfo, IntxMap, PciHost};
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use hal::{Mmio, MmioMapper, PhysAddr};
use spin::Once;

/// Architecture name.
pub const NAME: &str = "x86_64";

/// Device hole below 4 GiB: PCI BARs, IOAPIC, HPET, LAPIC, firmware ROM. Mapped uncached.
const DEVICE_HOLE: (u64, u64) = (0xC000_0000, 1 << 32);
/// Where q35's ECAM sits when ACPI has no MCFG.
const Q35_ECAM_BASE: u64 = 0xB000_0000;
/// Port space handed to the PCI code for I/O BARs.
const PCI_IO_WINDOW: (u64, u64) = (0xC000, 0x4000);
/// isa-debug-exit port (QEMU `-device isa-debug-exit,iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xF4;
const RFLAGS_IF: u64 = 1 << 9;

/// The PCI ECAM window found at boot (base, size), mappable through [`mmio_mapper`].
static ECAM_WINDOW: Once<(u64, u64)> = Once::new();
/// The local APIC ids of the CPUs the MADT lists.
static MADT_CPUS: Once<heapless::Vec<u32, { acpi::MAX_MADT_CPUS }>> = Once::new();
/// CPUs the MADT lists beyond what was read.
static MADT_DROPPED: AtomicUsize = AtomicUsize::new(0);
/// The periodic timer rate every CPU should run at (0: stopped); see [`timer_start`].
static TIMER_HZ: AtomicU32 = AtomicU32::new(0);

/// Rust entry from `_start32`, in long mode on the boot stack with `.bss` cleared.
#[unsafe(no_mangle)]
extern "C" fn x86_64_entry(magic: u32, info: u32) -> ! {
    // First: `cpu_id` reads through GS base.
    smp::set_gs_base(0);
    serial::init();
    // SAFETY: the boot CPU (logical 0) is the only one running, interrupts are off and this
    // runs once: the descriptor tables and page tables are not in use by anything else.
    unsafe {
        gdt::init(0);
        trap::init();
        paging::unmap_stack_guard();
    }
    apic::init();
    PERCPU[0].hw_id.store(apic::apic_id(), Ordering::Relaxed);
    time::calibrate();
    let handoff = handoff::parse(magic, info).unwrap_or_else(|fatal| fatal.stop());
    let rsdp = handoff
        .rsdp
        .or_else(|| handoff.efi_system_table.and_then(handoff::efi_rsdp));
    let acpi = acpi::discover(rsdp);
    apic::set_isa_overrides(&acpi.isa);
    MADT_DROPPED.store(acpi.cpus_dropped, Ordering::Relaxed);
    MADT_CPUS.call_once(|| acpi.cpus.clone());
    if let Some(ioapic) = acpi
        .ioapic
        .filter(|&a| a != apic::DEFAULT_IOAPIC && in_device_hole(a, 0x20))
    {
        apic::ioapic_init(ioapic);
    }
    let pci = pci_host(acpi.ecam);
    let boot_info = BootInfo {
        cmdline: handoff.cmdline,
        firmware: handoff.protocol,
        pci,
        virtio_mmio: heapless::Vec::new(),
    };
    crate::kmain(boot_info)
}

fn in_device_hole(base: u64, len: u64) -> bool {
    base >= DEVICE_HOLE.0
        && base
            .checked_add(len)
            .is_some_and(|end| end <= DEVICE_HOLE.1)
}

/// Builds the PCI host description from the MCFG (or q35's fixed ECAM if a device answers
/// there), marks the ECAM uncached and picks the 32-bit BAR window. Without an ECAM (i440fx,
/// `-M pc`) it falls back to the legacy configuration ports (mechanism #1) when the host bridge
/// answers there.
fn pci_host(ecam: Option<(u64, u8, u8)>) -> Option<PciHost> {
    let (base, bus_start, bus_end) = match ecam {
        Some(e) => e,
        None if q35_ecam_answers() => (Q35_ECAM_BASE, 0, 255),
        None if port::pci_config_ports_present() => {
            return Some(PciHost {
                ecam_base: 0,
                ecam_size: 0,
                ports: Some(pci::ConfigPorts {
                    read: port::pci_config_read,
                    write: port::pci_config_write,
                }),
                bus_start: 0,
                bus_end: 255,
                mmio32: mmio32_window(0, 0),
                mmio64: None,
                io: Some(PCI_IO_WINDOW),
                intx: IntxMap::default(),
            });
        }
        None => return None,
    };
    // The window as it lies in memory: bus `bus_start` first.
    let ecam_base = base + (u64::from(bus_start) << 20);
    let ecam_size = (u64::from(bus_end) - u64::from(bus_start) + 1) << 20;
    if ecam_base
        .checked_add(ecam_size)
        .is_none_or(|end| end > 1 << 32)
    {
        return None;
    }
    if !in_device_hole(ecam_base, ecam_size) {
        // SAFETY: boot CPU, nothing else touches the page tables; the ECAM is device memory
        // (firmware reserves it), and it lies far above the kernel image and its stack guard.
        unsafe { paging::set_uncached(ecam_base, ecam_size) };
    }
    ECAM_WINDOW.call_once(|| (ecam_base, ecam_size));
    Some(PciHost {
        ecam_base,
        ecam_size,
        ports: None,
        bus_start,
        bus_end,
        mmio32: mmio32_window(ecam_base, ecam_size),
        mmio64: None,
        io: Some(PCI_IO_WINDOW),
        intx: IntxMap::default(),
    })
}

/// Whether function 00:00.0 of q35's default ECAM has a plausible vendor id.
fn q35_ecam_answers() -> bool {
    // SAFETY: 0xB000_0000 is mapped (identity, below 4 GiB); on q35 it is the ECAM, elsewhere
    // an unclaimed bus address, where a read returns all ones without side effects.
    let vendor = unsafe { core::ptr::read_volatile(Q35_ECAM_BASE as *const u16) };
    vendor != 0xFFFF && vendor != 0
}

/// The 32-bit BAR window: from the device hole's start to the IOAPIC, minus the ECAM.
fn mmio32_window(ecam_base: u64, ecam_size: u64) -> (u64, u64) {
    let (mut start, end) = (DEVICE_HOLE.0, apic::DEFAULT_IOAPIC);
    let ecam_end = ecam_base + ecam_size;
    if ecam_base < end && ecam_end > start {
        // Keep the larger piece on either side of the ECAM.
        if ecam_base.saturating_sub(start) >= end.saturating_sub(ecam_end) {
            return (start, ecam_base - start);
        }
        start = ecam_end;
    }
    (start, end - start)
}

/// Logs what the boot loader said about memory (Multiboot2 memory map: available RAM below and
/// above 4 GiB, each entry) and firmware (loader name, EFI system table). Called by `kmain` once
/// the console runs.
pub fn log_boot_details() {
    let Some(m) = handoff::memory() else {
        return;
    };
    defmt::println!(
        "memory: {=u64} MiB available below 4 GiB (identity-mapped), {=u64} MiB above 4 GiB (not mapped, unused); loader \"{=str}\"",
        m.below_4g >> 20,
        m.above_4g >> 20,
        m.loader.as_str()
    );
    for r in &m.regions {
        defmt::println!(
            "  {=u64:#012x}..{=u64:#012x} {=str}",
            r.base,
            r.base.saturating_add(r.len),
            if r.available { "available" } else { "reserved" }
        );
    }
    if m.dropped > 0 {
        defmt::println!("  ... {=usize} more entries not kept", m.dropped);
    }
    if let Some(st) = m.efi_system_table {
        match handoff::efi_rsdp(st) {
            Some(rsdp) => defmt::println!(
                "firmware: UEFI, EFI system table at {=u64:#x}, its configuration table names the ACPI RSDP at {=u64:#x}",
                st,
                rsdp
            ),
            None => defmt::println!(
                "firmware: UEFI, EFI system table at {=u64:#x} (no ACPI entry readable in its configuration table)",
                st
            ),
        }
    }
}

/// Writes `bytes` to COM1 by polling. Usable anywhere, interrupts on or off.
pub fn console_write(bytes: &[u8]) {
    serial::write(bytes);
}

/// Ends the run: QEMU exits with 33 (success) or 35 (failure) through isa-debug-exit;
/// elsewhere the CPU halts.
pub fn exit(success: bool) -> ! {
    port::outb(DEBUG_EXIT_PORT, if success { 0x10 } else { 0x11 });
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

// The interrupt enable/disable/wait functions below stay hand-written: they sit on the I/O
// path (locks and waits around every request), and the `x86_64` crate's versions differ in
// codegen: its `enable` is `sti; nop` (one more instruction), its `disable` is a compiler
// barrier, its `enable_and_hlt` is `nomem` (the wait below must be a compiler barrier).

/// Enables interrupts.
pub fn interrupts_enable() {
    // SAFETY: the IDT is loaded before kmain runs, so every vector has a handler.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disables interrupts.
pub fn interrupts_disable() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Whether interrupts are enabled.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack (push, then pop into a register).
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & RFLAGS_IF != 0
}

/// Runs `f` with interrupts disabled, restoring the previous state afterwards.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_enabled = interrupts_enabled();
    if was_enabled {
        interrupts_disable();
    }
    let result = f();
    if was_enabled {
        interrupts_enable();
    }
    result
}

/// Enables interrupts and halts until one has been handled (`sti; hlt` cannot lose a wake-up:
/// `sti` takes effect after the next instruction), then restores the previous interrupt state.
pub fn wait_for_interrupt() {
    let was_enabled = interrupts_enabled();
    // SAFETY: as in `interrupts_enable`; the handler runs between `sti` and the return from
    // `hlt`. No `nomem`: handlers change memory, so this is a compiler barrier.
    unsafe { asm!("sti", "hlt", options(nostack)) };
    if !was_enabled {
        interrupts_disable();
    }
}

/// Executes `int3`; the handler counts it and resumes after it.
pub fn breakpoint() {
    // SAFETY: the #BP handler only increments a counter and returns. Not the `x86_64` crate's
    // `int3`, which is `nomem`: the handler writes the counter read after it.
    unsafe { asm!("int3", options(nostack)) };
}

/// Breakpoints taken so far.
pub fn breakpoint_count() -> u64 {
    trap::breakpoint_count()
}

/// Starts the periodic LAPIC timer at `hz` interrupts per second (0 stops it) on every CPU:
/// here at once, on the others when the IPI sent to them arrives.
pub fn timer_start(hz: u32) {
    TIMER_HZ.store(hz, Ordering::Relaxed);
    apply_timer();
    let me = cpu_id();
    for cpu in (0..cpus_online()).filter(|&c| c != me) {
        send_ipi(cpu);
    }
}

/// Brings this CPU's timer to the rate [`timer_start`] last asked for.
fn apply_timer() {
    let hz = TIMER_HZ.load(Ordering::Relaxed);
    let mine = &percpu::this().timer_hz;
    if mine.load(Ordering::Relaxed) != hz {
        mine.store(hz, Ordering::Relaxed);
        apic::timer_start(hz);
    }
}

/// What an inter-processor interrupt asks of this CPU beyond waking it up (interrupt context).
fn ipi_received() {
    apply_timer();
}

/// Timer interrupts taken so far on this CPU (each CPU's timer ticks at the same rate).
pub fn timer_ticks() -> u64 {
    trap::timer_ticks()
}

/// Sends an inter-processor interrupt to logical CPU `cpu` (nothing if it is not online): it
/// wakes from `wait_for_interrupt` and looks at its mailbox (`crate::smp`).
pub fn send_ipi(cpu: usize) {
    if let Some(id) = percpu::hw_id(cpu) {
        apic::send_ipi(id, vectors::VECTOR_IPI as u32);
    }
}

/// Raises interrupt `irq` (a message-signalled interrupt's vector from `hal::irq::alloc_msi*`)
/// on logical CPU `cpu`, as if its device had sent it there: its handler runs on that CPU.
/// `false` if the CPU is not online.
pub fn raise_msi_on(cpu: usize, irq: u32) -> bool {
    match percpu::hw_id(cpu) {
        Some(id) => {
            apic::send_ipi(id, irq);
            true
        }
        None => false,
    }
}

/// Starts the other CPUs the MADT lists (at most [`MAX_CPUS`](percpu::MAX_CPUS) in all), one
/// at a time; a CPU that does not report in within a second is logged with its APIC id and
/// left out. `smp_skip=ID,...` on the command line names APIC ids to leave stopped (a test of
/// that path). Boot CPU, once, before devices are probed.
pub fn start_cpus() {
    let Some(cpus) = MADT_CPUS.get() else { return };
    let mut skip: heapless::Vec<u32, 8> = heapless::Vec::new();
    if let Some(list) = crate::boot::cmdline_arg(crate::boot_info().cmdline, "smp_skip") {
        for id in list.split(',').filter_map(|w| w.parse().ok()) {
            let _ = skip.push(id);
        }
    }
    let dropped = MADT_DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        defmt::warn!("{=usize} more CPUs in the MADT not started", dropped);
    }
    smp::start_cpus(cpus, &skip);
}

/// The interrupt line ISA IRQ `irq` (0..=15) arrives on after the MADT's interrupt source
/// overrides, with its trigger mode and polarity: (line number, level-triggered, active low).
pub fn isa_irq(irq: u8) -> Option<(u32, bool, bool)> {
    let line = apic::isa_irq(irq)?;
    let mode = apic::pin_mode(line - vectors::VECTOR_IOAPIC_FIRST);
    Some((
        line,
        mode & apic::RTE_LEVEL != 0,
        mode & apic::RTE_ACTIVE_LOW != 0,
    ))
}

/// Hardware ids (APIC ids) of the CPUs that did not start.
pub fn cpus_failed() -> heapless::Vec<u32, { percpu::MAX_CPUS }> {
    smp::cpus_failed()
}

/// Monotonic nanoseconds since boot (TSC, calibrated against the PIT).
pub fn now_ns() -> u64 {
    time::now_ns()
}

/// The time-stamp counter.
pub fn cycles() -> u64 {
    time::rdtsc()
}

/// How memory is mapped, for `hal::mem`: the entry code identity-maps physical 0..4 GiB (RAM,
/// the kernel image, the device hole); there is no separate image window.
pub const TRANSLATION: hal::mem::Translation = hal::mem::Translation {
    direct_offset: 0,
    direct_limit: 4 << 30,
    image_base: usize::MAX,
    image_offset: 0,
};

/// Logical index of the running CPU: one GS-relative load of its per-CPU block's first word.
#[inline(always)]
pub fn cpu_id() -> usize {
    let index: usize;
    // SAFETY: every CPU points GS base at its own `PerCpu` block (a static that lives forever,
    // first field the index, never written after initialisation) before running any code that
    // calls this: the boot CPU first thing in `x86_64_entry`, the others first thing in their
    // entry.
    unsafe {
        asm!("mov {}, gs:[0]", out(reg) index, options(nostack, preserves_flags, readonly, pure))
    };
    index
}

use percpu::cpus_online;

/// The LAPIC/IOAPIC interrupt controller; interrupt numbers are vectors.
pub fn irq_chip() -> &'static dyn hal::irq::IrqChip {
    &apic::CHIP
}

/// Mapper for device windows (the device hole below 4 GiB and the PCI ECAM), through
/// `hal::mem`'s direct map.
struct IdentityMapper;

static MAPPER: IdentityMapper = IdentityMapper;

impl MmioMapper for IdentityMapper {
    fn map(&self, phys: PhysAddr, len: usize) -> Option<Mmio> {
        let (base, len64) = (phys.as_u64(), len as u64);
        let end = base.checked_add(len64)?;
        let in_ecam = ECAM_WINDOW
            .get()
            .is_some_and(|&(b, s)| base >= b && end <= b + s);
        if !(in_device_hole(base, len64) || in_ecam) {
            return None;
        }
        let virt = hal::mem::phys_to_virt(phys)?;
        // SAFETY: 1. the range is in the direct map at `virt` (`hal::mem`, identity below
        // 4 GiB) and uncached (device hole, or the ECAM marked uncached at boot); 2. the
        // `MmioMapper` contract makes the caller ask only for ranges that belong to devices;
        // 3. `virt` is not 0: the device hole and the ECAM lie far above address 0.
        Some(unsafe { Mmio::new(virt, phys, len) })
    }
}

/// The device-window mapper for bus code.
pub fn mmio_mapper() -> &'static dyn MmioMapper {
    &MAPPER
}
