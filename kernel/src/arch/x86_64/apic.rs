//! Interrupt controllers: the legacy 8259 PICs (remapped and masked), the local APIC (xAPIC,
//! memory-mapped: timer, EOI, MSI target) and the IOAPIC (legacy lines, all masked until a
//! driver enables one).

use super::port::outb;
use super::vectors::{
    VECTOR_IOAPIC_FIRST, VECTOR_IOAPIC_LAST, VECTOR_MSI_FIRST, VECTOR_MSI_LAST, VECTOR_PIC_FIRST,
    VECTOR_SPURIOUS, VECTOR_TIMER,
};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

/// MSI address window of the local APICs.
const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;

static LAPIC_BASE: AtomicU64 = AtomicU64::new(DEFAULT_LAPIC);
static IOAPIC_BASE: AtomicU64 = AtomicU64::new(DEFAULT_IOAPIC);
static IOAPIC_PINS: AtomicU32 = AtomicU32::new(0);
static APIC_ID: AtomicU32 = AtomicU32::new(0);
/// LAPIC timer counts per second at divide-by-16 (from calibration).
static LAPIC_TIMER_HZ: AtomicU64 = AtomicU64::new(0);
static NEXT_MSI: AtomicU32 = AtomicU32::new(VECTOR_MSI_FIRST);
/// Serialises IOAPIC select/window accesses.
static IOAPIC_LOCK: spin::Mutex<()> = spin::Mutex::new(());

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
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VECTOR_TIMER as u32);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_ENABLE | VECTOR_SPURIOUS as u32);
    lapic_write(LAPIC_EOI, 0);
    ioapic_init(DEFAULT_IOAPIC);
}

/// Points the IOAPIC driver at `base` and masks every pin there.
pub fn ioapic_init(base: u64) {
    let _guard = IOAPIC_LOCK.lock();
    IOAPIC_BASE.store(base, Ordering::Relaxed);
    let version = ioapic_read(0x01);
    let pins = ((version >> 16) & 0xFF) + 1;
    let pins = pins.min(VECTOR_IOAPIC_LAST - VECTOR_IOAPIC_FIRST + 1);
    IOAPIC_PINS.store(pins, Ordering::Relaxed);
    for pin in 0..pins {
        ioapic_write(0x10 + 2 * pin, LVT_MASKED);
        ioapic_write(0x11 + 2 * pin, 0);
    }
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

/// Periodic timer interrupts at `hz` per second; 0 stops the timer.
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

impl IrqChip for Chip {
    fn enable(&self, irq: u32) {
        let Some(pin) = ioapic_pin(irq) else {
            // MSI vectors are masked at the device; the timer by `timer_start`.
            return;
        };
        // ISA pins 0..=15 are edge-triggered active-high, PCI pins 16.. level-triggered
        // active-low.
        let mode = if pin < 16 { 0 } else { (1 << 15) | (1 << 13) };
        super::without_interrupts(|| {
            let _guard = IOAPIC_LOCK.lock();
            ioapic_write(0x11 + 2 * pin, apic_id() << 24);
            ioapic_write(0x10 + 2 * pin, irq | mode);
        });
    }

    fn disable(&self, irq: u32) {
        let Some(pin) = ioapic_pin(irq) else {
            return;
        };
        super::without_interrupts(|| {
            let _guard = IOAPIC_LOCK.lock();
            let low = ioapic_read(0x10 + 2 * pin);
            ioapic_write(0x10 + 2 * pin, low | LVT_MASKED);
        });
    }

    fn alloc_msi(&self) -> Option<(u32, MsiMessage)> {
        let vector = NEXT_MSI
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v <= VECTOR_MSI_LAST).then_some(v + 1)
            })
            .ok()?;
        // Fixed delivery, edge-triggered, physical destination = this CPU's APIC id.
        let address = MSI_ADDRESS_BASE | (u64::from(apic_id()) << 12);
        Some((
            vector,
            MsiMessage {
                address,
                data: vector,
            },
        ))
    }
}
