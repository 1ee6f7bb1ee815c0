//! Interrupt controllers: the legacy 8259 PICs (remapped and masked), the local APICs (xAPIC,
//! memory-mapped at the same address on every CPU: timer, EOI, MSI target, inter-processor
//! interrupts and the INIT/SIPI start of the other CPUs) and the IOAPIC (legacy lines, all
//! masked until a driver enables one, each delivered to one CPU: the boot CPU unless routed).
//!
//! MSI vectors come from one pool shared by all CPUs (the IDT is shared, so a vector means the
//! same on every CPU); the CPU an MSI interrupts is fixed by the APIC id in its address.

use super::acpi::IsaOverride;
use super::port::outb;
use super::vectors::{
    VECTOR_IOAPIC_FIRST, VECTOR_IOAPIC_LAST, VECTOR_MSI_FIRST, VECTOR_MSI_LAST, VECTOR_PIC_FIRST,
    VECTOR_SPURIOUS, VECTOR_TIMER,
};
use crate::arch::percpu::{self, IrqMutex, MAX_CPUS};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use hal::irq::{IrqChip, MsiMessage};
use x86_64::registers::model_specific::Msr;

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const DEFAULT_LAPIC: u64 = 0xFEE0_0000;
/// IOAPIC address when ACPI does not say otherwise.
pub const DEFAULT_IOAPIC: u64 = 0xFEC0_0000;

// Local APIC registers (byte offsets).
const LAPIC_ID: usize = 0x20;
const LAPIC_TPR: usize = 0x80;
const LAPIC_EOI: usize = 0xB0;
const LAPIC_SVR: usize = 0xF0;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_LVT_LINT1: usize = 0x360;
const LAPIC_LVT_ERROR: usize = 0x370;
const LAPIC_TIMER_INITIAL: usize = 0x380;
const LAPIC_TIMER_CURRENT: usize = 0x390;
const LAPIC_TIMER_DIVIDE: usize = 0x3E0;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
const DIVIDE_BY_16: u32 = 0x3;
/// ICR: delivery status (send pending).
const ICR_PENDING: u32 = 1 << 12;
/// ICR: level assert (required for every IPI but INIT de-assert).
const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery modes.
const ICR_FIXED: u32 = 0 << 8;
const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;
/// IOAPIC redirection entry: level-triggered, active low.
pub const RTE_LEVEL: u32 = 1 << 15;
/// IOAPIC redirection entry: active low.
pub const RTE_ACTIVE_LOW: u32 = 1 << 13;

/// MSI address window of the local APICs.
const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

static LAPIC_BASE: AtomicU64 = AtomicU64::new(DEFAULT_LAPIC);
static IOAPIC_BASE: AtomicU64 = AtomicU64::new(DEFAULT_IOAPIC);
static IOAPIC_PINS: AtomicU32 = AtomicU32::new(0);
static APIC_ID: AtomicU32 = AtomicU32::new(0);
/// LAPIC timer counts per second at divide-by-16 (from calibration).
static LAPIC_TIMER_HZ: AtomicU64 = AtomicU64::new(0);
static NEXT_MSI: AtomicU32 = AtomicU32::new(VECTOR_MSI_FIRST);
/// Serialises IOAPIC select/window accesses (interrupts off while held: the handlers of one
/// CPU and the code it interrupted may both reach the IOAPIC).
static IOAPIC_LOCK: IrqMutex<()> = IrqMutex::new(());
/// IOAPIC pins: how many redirection entries are driven.
const PINS: usize = (VECTOR_IOAPIC_LAST - VECTOR_IOAPIC_FIRST + 1) as usize;
/// Trigger mode and polarity bits of each pin's redirection entry (from the ISA/PCI defaults
/// and the MADT interrupt source overrides).
static PIN_MODE: [AtomicU32; PINS] = [const { AtomicU32::new(0) }; PINS];
/// The logical CPU each pin is delivered to.
static PIN_CPU: [AtomicU8; PINS] = [const { AtomicU8::new(0) }; PINS];
/// The GSI (= pin) of each ISA IRQ.
static ISA_GSI: [AtomicU32; 16] = {
    let mut a = [const { AtomicU32::new(0) }; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = AtomicU32::new(i as u32);
        i += 1;
    }
    a
};

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only architectural MSRs present on every x86_64 CPU are read.
    unsafe { Msr::new(msr).read() }
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: only IA32_APIC_BASE is written, keeping its base address and setting the
    // global-enable bit.
    unsafe { Msr::new(msr).write(value) }
}

fn lapic_read(reg: usize) -> u32 {
    let addr = LAPIC_BASE.load(Ordering::Relaxed) as usize + reg;
    // SAFETY: the LAPIC page is identity-mapped uncached (device hole) and `reg` is one of the
    // aligned 32-bit registers above.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn lapic_write(reg: usize, value: u32) {
    let addr = LAPIC_BASE.load(Ordering::Relaxed) as usize + reg;
    // SAFETY: as in `lapic_read`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

fn ioapic_read(reg: u32) -> u32 {
    let base = IOAPIC_BASE.load(Ordering::Relaxed) as usize;
    // SAFETY: the IOAPIC's select (offset 0) and window (offset 0x10) registers lie in the
    // uncached device hole; callers hold IOAPIC_LOCK so the pair is not interleaved.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::read_volatile((base + 0x10) as *const u32)
    }
}

fn ioapic_write(reg: u32, value: u32) {
    let base = IOAPIC_BASE.load(Ordering::Relaxed) as usize;
    // SAFETY: as in `ioapic_read`.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::write_volatile((base + 0x10) as *mut u32, value);
    }
}

/// Remaps the 8259 PICs away from the exception vectors and masks every line.
fn disable_pic() {
    const PIC1_CMD: u16 = 0x20;
    const PIC1_DATA: u16 = 0x21;
    const PIC2_CMD: u16 = 0xA0;
    const PIC2_DATA: u16 = 0xA1;
    outb(PIC1_CMD, 0x11); // ICW1: init, ICW4 follows
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, VECTOR_PIC_FIRST as u8); // ICW2: vector base
    outb(PIC2_DATA, VECTOR_PIC_FIRST as u8 + 8);
    outb(PIC1_DATA, 0x04); // ICW3: slave on line 2
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01); // ICW4: 8086 mode
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xFF);
    outb(PIC2_DATA, 0xFF);
}

/// Masks the PICs, enables the local APIC, masks every IOAPIC pin.
pub fn init() {
    disable_pic();
    let msr = rdmsr(IA32_APIC_BASE);
    LAPIC_BASE.store(msr & 0x000F_FFFF_FFFF_F000, Ordering::Relaxed);
    if msr & APIC_BASE_ENABLE == 0 {
        wrmsr(IA32_APIC_BASE, msr | APIC_BASE_ENABLE);
    }
    APIC_ID.store(lapic_read(LAPIC_ID) >> 24, Ordering::Relaxed);
    for (pin, mode) in PIN_MODE.iter().enumerate() {
        // ISA pins 0..=15 are edge-triggered active-high, PCI pins 16.. level-triggered
        // active-low; the MADT's overrides change some (`set_isa_overrides`).
        let default = if pin < 16 {
            0
        } else {
            RTE_LEVEL | RTE_ACTIVE_LOW
        };
        mode.store(default, Ordering::Relaxed);
    }
    lapic_setup();
    ioapic_init(DEFAULT_IOAPIC);
}

/// Enables this CPU's local APIC (another CPU than the boot CPU, once, at its start): every
/// local vector masked, the spurious vector set, priority 0.
pub fn init_ap() {
    let msr = rdmsr(IA32_APIC_BASE);
    if msr & APIC_BASE_ENABLE == 0 {
        wrmsr(IA32_APIC_BASE, msr | APIC_BASE_ENABLE);
    }
    lapic_setup();
}

/// This CPU's local APIC id (read from the hardware).
pub fn local_apic_id() -> u32 {
    lapic_read(LAPIC_ID) >> 24
}

/// Masks every local vector, sets the spurious vector and priority 0 on this CPU's LAPIC.
fn lapic_setup() {
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER as u32);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_ENABLE | VECTOR_SPURIOUS as u32);
    lapic_write(LAPIC_EOI, 0);
}

/// Applies the MADT's interrupt source overrides: ISA IRQ `n` arrives on the override's GSI
/// with its trigger mode and polarity (QEMU: IRQ 0 on GSI 2; IRQ 9, the ACPI SCI, level).
pub fn set_isa_overrides(overrides: &[Option<IsaOverride>; 16]) {
    for (irq, o) in overrides.iter().enumerate() {
        let Some(o) = o else { continue };
        ISA_GSI[irq].store(o.gsi, Ordering::Relaxed);
        if let Some(mode) = PIN_MODE.get(o.gsi as usize) {
            let mut bits = 0;
            if o.level {
                bits |= RTE_LEVEL;
            }
            if o.active_low {
                bits |= RTE_ACTIVE_LOW;
            }
            mode.store(bits, Ordering::Relaxed);
        }
    }
}

/// The interrupt number (vector) ISA IRQ `irq` (0..=15) arrives on, after the MADT's
/// overrides; `None` if its GSI is not an IOAPIC pin this kernel drives.
pub fn isa_irq(irq: u8) -> Option<u32> {
    let gsi = ISA_GSI.get(usize::from(irq))?.load(Ordering::Relaxed);
    (gsi < IOAPIC_PINS.load(Ordering::Relaxed)).then_some(VECTOR_IOAPIC_FIRST + gsi)
}

/// The trigger/polarity bits of IOAPIC pin `pin`'s redirection entry.
pub fn pin_mode(pin: u32) -> u32 {
    PIN_MODE
        .get(pin as usize)
        .map_or(0, |m| m.load(Ordering::Relaxed))
}

/// Waits until the LAPIC has sent the last IPI (delivery status clear), at most ~1 ms.
fn icr_wait() {
    let start = super::time::now_ns();
    while lapic_read(LAPIC_ICR_LOW) & ICR_PENDING != 0 {
        if super::time::now_ns().wrapping_sub(start) > 1_000_000 {
            break;
        }
        core::hint::spin_loop();
    }
}

/// Writes the interrupt command register: `low` to the CPU with APIC id `apic_id`.
fn send_icr(apic_id: u32, low: u32) {
    // The two halves must not be split by a handler sending its own IPI on this CPU.
    super::without_interrupts(|| {
        icr_wait();
        lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
        lapic_write(LAPIC_ICR_LOW, low);
        icr_wait();
    });
}

/// Sends vector `vector` (fixed delivery) to the CPU with APIC id `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u32) {
    send_icr(apic_id, ICR_FIXED | ICR_ASSERT | vector);
}

/// Sends INIT (the CPU resets and waits for a start-up IPI).
pub fn send_init(apic_id: u32) {
    send_icr(apic_id, ICR_INIT | ICR_ASSERT);
}

/// Sends a start-up IPI: the CPU starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) {
    send_icr(apic_id, ICR_STARTUP | ICR_ASSERT | u32::from(page));
}

/// Points the IOAPIC driver at `base` and masks every pin there.
pub fn ioapic_init(base: u64) {
    IOAPIC_LOCK.lock(|_| {
        IOAPIC_BASE.store(base, Ordering::Relaxed);
        let version = ioapic_read(0x01);
        let pins = ((version >> 16) & 0xFF) + 1;
        let pins = pins.min(PINS as u32);
        IOAPIC_PINS.store(pins, Ordering::Relaxed);
        for pin in 0..pins {
            ioapic_write(0x10 + 2 * pin, LVT_MASKED);
            ioapic_write(0x11 + 2 * pin, 0);
        }
    });
}

/// The boot CPU's local APIC id.
pub fn apic_id() -> u32 {
    APIC_ID.load(Ordering::Relaxed)
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    lapic_write(LAPIC_EOI, 0);
}

/// Starts the LAPIC timer counting down from the maximum at divide-by-16, masked: calibration
/// reads how far it got with [`timer_count`].
pub fn timer_free_run() {
    lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER as u32);
    lapic_write(LAPIC_TIMER_INITIAL, u32::MAX);
}

/// The LAPIC timer's current count.
pub fn timer_count() -> u32 {
    lapic_read(LAPIC_TIMER_CURRENT)
}

/// Records the calibrated LAPIC timer rate (counts per second at divide-by-16) and stops it.
pub fn set_timer_hz(hz: u64) {
    LAPIC_TIMER_HZ.store(hz, Ordering::Relaxed);
    lapic_write(LAPIC_TIMER_INITIAL, 0);
}

/// Periodic timer interrupts at `hz` per second on this CPU's LAPIC; 0 stops the timer.
pub fn timer_start(hz: u32) {
    if hz == 0 {
        lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER as u32);
        lapic_write(LAPIC_TIMER_INITIAL, 0);
        return;
    }
    let count =
        (LAPIC_TIMER_HZ.load(Ordering::Relaxed) / u64::from(hz)).clamp(1, u64::from(u32::MAX));
    lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VECTOR_TIMER as u32);
    lapic_write(LAPIC_TIMER_INITIAL, count as u32);
}

/// IOAPIC pin behind `vector`, if it is one of the IOAPIC vectors of a present pin.
fn ioapic_pin(vector: u32) -> Option<u32> {
    let pin = vector.checked_sub(VECTOR_IOAPIC_FIRST)?;
    (vector <= VECTOR_IOAPIC_LAST && pin < IOAPIC_PINS.load(Ordering::Relaxed)).then_some(pin)
}

/// The x86 interrupt controller as `hal` sees it. Interrupt numbers are vectors.
pub struct Chip;

/// The one instance.
pub static CHIP: Chip = Chip;

/// The destination (APIC id) of logical CPU `cpu`, if it is online.
fn destination(cpu: usize) -> Option<u32> {
    percpu::hw_id(cpu)
}

impl Chip {
    /// Writes pin `pin`'s redirection entry: its vector, mode and destination CPU, masked or
    /// not. Takes the IOAPIC lock.
    fn write_pin(&self, pin: u32, masked: Option<bool>) {
        let irq = VECTOR_IOAPIC_FIRST + pin;
        let cpu = usize::from(PIN_CPU[pin as usize].load(Ordering::Relaxed));
        let dest = destination(cpu).unwrap_or_else(apic_id);
        IOAPIC_LOCK.lock(|_| {
            let low = ioapic_read(0x10 + 2 * pin);
            let masked = masked.unwrap_or(low & LVT_MASKED != 0);
            // Mask while the destination changes, so the entry is never half written.
            ioapic_write(0x10 + 2 * pin, low | LVT_MASKED);
            ioapic_write(0x11 + 2 * pin, dest << 24);
            let mask = if masked { LVT_MASKED } else { 0 };
            ioapic_write(0x10 + 2 * pin, irq | pin_mode(pin) | mask);
        });
    }
}

impl IrqChip for Chip {
    fn enable(&self, irq: u32) {
        let Some(pin) = ioapic_pin(irq) else {
            // MSI vectors are masked at the device; the timer by `timer_start`.
            return;
        };
        self.write_pin(pin, Some(false));
    }

    fn disable(&self, irq: u32) {
        let Some(pin) = ioapic_pin(irq) else {
            return;
        };
        IOAPIC_LOCK.lock(|_| {
            let low = ioapic_read(0x10 + 2 * pin);
            ioapic_write(0x10 + 2 * pin, low | LVT_MASKED);
        });
    }

    fn alloc_msi(&self) -> Option<(u32, MsiMessage)> {
        self.alloc_msi_on(0)
    }

    fn alloc_msi_on(&self, cpu: usize) -> Option<(u32, MsiMessage)> {
        let dest = destination(cpu)?;
        // One vector space for all CPUs: the IDT is shared, so the vector is valid on whichever
        // CPU the message names.
        let vector = NEXT_MSI
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v <= VECTOR_MSI_LAST).then_some(v + 1)
            })
            .ok()?;
        // Fixed delivery, edge-triggered, physical destination = that CPU's APIC id.
        let address = MSI_ADDRESS_BASE | (u64::from(dest) << 12);
        Some((
            vector,
            MsiMessage {
                address,
                data: vector,
            },
        ))
    }

    fn route(&self, irq: u32, cpu: usize) {
        // MSI vectors: the CPU is in the message, nothing to do here.
        let Some(pin) = ioapic_pin(irq) else { return };
        if cpu >= MAX_CPUS || destination(cpu).is_none() {
            return;
        }
        PIN_CPU[pin as usize].store(cpu as u8, Ordering::Relaxed);
        self.write_pin(pin, None);
    }
}
