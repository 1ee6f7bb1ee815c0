//! The platform-level interrupt controller (PLIC), driven for the S-mode context of every hart
//! the kernel runs on.
//!
//! Every source gets priority 1 and starts masked; each context's threshold is 0, so an enabled
//! source that is pending raises the supervisor external interrupt of the hart whose context
//! enables it. A source is enabled in one context only: the one of the CPU it is routed to
//! ([`IrqChip::route`]; CPU 0, the boot hart, unless routed), so exactly one hart claims it.
//! The trap handler claims from its own hart's context, dispatches and completes ([`handle`]). A source that fires with no handler registered (say
//! a device that finished a request before its driver enabled the line) is masked again
//! instead of firing forever, and remembered: the claim consumed its pending bit, and QEMU's
//! PLIC does not set it again for a level interrupt that stays asserted, so the next time the
//! line is enabled its handlers run once right away (handlers tolerate calls with nothing to
//! do) to service the device.

use crate::arch::percpu::{IrqMutex, MAX_CPUS};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use hal::irq::{IrqChip, MsiMessage};

const PRIORITY: usize = 0x0;
const ENABLE: usize = 0x2000;
const ENABLE_STRIDE: usize = 0x80;
const CONTEXT: usize = 0x20_0000;
const CONTEXT_STRIDE: usize = 0x1000;
const THRESHOLD: usize = 0x0;
const CLAIM: usize = 0x4;

/// Sources claimed while nobody handled them, one bit each.
static MISSED: [AtomicU32; hal::irq::MAX_IRQS / 32] =
    [const { AtomicU32::new(0) }; hal::irq::MAX_IRQS / 32];
/// Sources enabled (in the context of the CPU each is routed to), one bit each.
static ENABLED: [AtomicU32; hal::irq::MAX_IRQS / 32] =
    [const { AtomicU32::new(0) }; hal::irq::MAX_IRQS / 32];
/// The logical CPU each source is delivered to.
static ROUTE: [AtomicU8; hal::irq::MAX_IRQS] = [const { AtomicU8::new(0) }; hal::irq::MAX_IRQS];
/// Serialises the read-modify-write of enable words (several harts may enable or route
/// sources at once; the trap handler masks sources too, hence interrupts off while held).
static LOCK: IrqMutex<()> = IrqMutex::new(());
/// "No context" in [`Plic::contexts`].
const NO_CONTEXT: usize = usize::MAX;

/// The PLIC, once [`init`] found it; every call before that does nothing.
pub struct Plic {
    base: AtomicUsize,
    /// The S-mode context of each logical CPU.
    contexts: [AtomicUsize; MAX_CPUS],
    /// Highest source number + 1.
    sources: AtomicU32,
}

pub static PLIC: Plic = Plic {
    base: AtomicUsize::new(0),
    contexts: [const { AtomicUsize::new(NO_CONTEXT) }; MAX_CPUS],
    sources: AtomicU32::new(0),
};

impl Plic {
    fn reg(&self, off: usize) -> Option<*mut u32> {
        let base = self.base.load(Ordering::Acquire);
        (base != 0).then_some((base + off) as *mut u32)
    }

    fn read(&self, off: usize) -> u32 {
        match self.reg(off) {
            // SAFETY: `init`'s caller vouched that `base` is the identity-mapped PLIC register
            // block; every offset used here is a 4-byte aligned register for a source below
            // `sources` or for this hart's context.
            Some(p) => unsafe { p.read_volatile() },
            None => 0,
        }
    }

    fn write(&self, off: usize, v: u32) {
        if let Some(p) = self.reg(off) {
            // SAFETY: as in `read`.
            unsafe { p.write_volatile(v) }
        }
    }

    /// The S-mode context of logical CPU `cpu`, if it has one.
    fn context(&self, cpu: usize) -> Option<usize> {
        let c = self.contexts.get(cpu)?.load(Ordering::Relaxed);
        (c != NO_CONTEXT).then_some(c)
    }

    fn context_reg(context: usize, off: usize) -> usize {
        CONTEXT + CONTEXT_STRIDE * context + off
    }

    fn enable_word(context: usize, irq: u32) -> usize {
        ENABLE + ENABLE_STRIDE * context + 4 * (irq as usize / 32)
    }

    /// Sets or clears `irq`'s enable bit in `context`. Caller holds [`LOCK`].
    fn write_enable(&self, context: usize, irq: u32, on: bool) {
        let word = Self::enable_word(context, irq);
        let bit = 1u32 << (irq % 32);
        let v = self.read(word);
        self.write(word, if on { v | bit } else { v & !bit });
        // QEMU 7.2's PLIC does not re-evaluate its output when an enable bit changes, only on
        // writes such as the threshold's: without this rewrite, a level interrupt already
        // pending when its source is enabled (raised before the driver was ready) was never
        // signalled. Harmless on other PLICs.
        let threshold = Self::context_reg(context, THRESHOLD);
        self.write(threshold, self.read(threshold));
    }

    fn valid(&self, irq: u32) -> bool {
        irq != 0 && irq < self.sources.load(Ordering::Relaxed)
    }

    fn set_enabled(&self, irq: u32, on: bool) {
        if !self.valid(irq) {
            return;
        }
        let bit = 1u32 << (irq % 32);
        let cpu = usize::from(ROUTE[irq as usize].load(Ordering::Relaxed));
        let Some(context) = self.context(cpu).or_else(|| self.context(0)) else {
            return;
        };
        // The trap handler also masks sources, and other harts change enable words too: the
        // read-modify-write is done whole, under the lock with interrupts off.
        LOCK.lock(|_| {
            self.write_enable(context, irq, on);
            if on {
                ENABLED[irq as usize / 32].fetch_or(bit, Ordering::Relaxed);
            } else {
                ENABLED[irq as usize / 32].fetch_and(!bit, Ordering::Relaxed);
            }
        });
        let missed = &MISSED[irq as usize / 32];
        if on && missed.fetch_and(!bit, Ordering::Relaxed) & bit != 0 {
            // Outside the lock (a handler may enable or disable lines); interrupts off, as in
            // the trap handler.
            super::without_interrupts(|| {
                if !hal::irq::dispatch(irq) {
                    missed.fetch_or(bit, Ordering::Relaxed);
                }
            });
        }
    }
}

impl IrqChip for Plic {
    fn enable(&self, irq: u32) {
        self.set_enabled(irq, true);
    }

    fn disable(&self, irq: u32) {
        self.set_enabled(irq, false);
    }

    fn alloc_msi(&self) -> Option<(u32, MsiMessage)> {
        None // MSIs need the AIA (IMSIC), which this kernel does not drive
    }

    fn route(&self, irq: u32, cpu: usize) {
        if !self.valid(irq) || cpu >= super::cpus_online() {
            return;
        }
        let Some(to) = self.context(cpu) else { return };
        let bit = 1u32 << (irq % 32);
        LOCK.lock(|_| {
            let from = usize::from(ROUTE[irq as usize].swap(cpu as u8, Ordering::Relaxed));
            if ENABLED[irq as usize / 32].load(Ordering::Relaxed) & bit != 0 {
                // Enable on the new hart first: a pending level interrupt is never dropped (at
                // worst both harts see it, and one claims it).
                self.write_enable(to, irq, true);
                if let Some(old) = self.context(from).filter(|&c| c != to) {
                    self.write_enable(old, irq, false);
                }
            }
        });
    }
}

/// Takes over the PLIC at `base` for the boot hart's `context` (logical CPU 0), with sources
/// `1..sources`: all masked, priority 1, threshold 0.
///
/// # Safety
/// `base` is the identity-mapped register block of a PLIC with at least `sources` sources and
/// `context + 1` contexts, and `context` belongs to this hart's S-mode.
pub unsafe fn init(base: usize, context: usize, sources: u32) {
    let sources = sources.min(hal::irq::MAX_IRQS as u32);
    PLIC.contexts[0].store(context, Ordering::Relaxed);
    PLIC.sources.store(sources, Ordering::Relaxed);
    PLIC.base.store(base, Ordering::Release);
    for irq in 1..sources {
        PLIC.write(PRIORITY + 4 * irq as usize, 1);
    }
    init_context(context);
}

/// Masks every source in `context` and sets its threshold to 0.
fn init_context(context: usize) {
    let sources = PLIC.sources.load(Ordering::Relaxed);
    for word in 0..sources.div_ceil(32) {
        PLIC.write(Plic::enable_word(context, word * 32), 0);
    }
    PLIC.write(Plic::context_reg(context, THRESHOLD), 0);
}

/// Records `context` as logical CPU `cpu`'s S-mode context (boot CPU, before starting `cpu`;
/// `None`: that hart takes no device interrupts).
pub fn set_context(cpu: usize, context: Option<usize>) {
    if let Some(slot) = PLIC.contexts.get(cpu) {
        slot.store(context.unwrap_or(NO_CONTEXT), Ordering::Relaxed);
    }
}

/// Sets up this hart's context (logical CPU `cpu`, at its start): every source masked there,
/// threshold 0.
pub fn init_hart(cpu: usize) {
    if PLIC.base.load(Ordering::Acquire) == 0 {
        return;
    }
    if let Some(context) = PLIC.context(cpu) {
        init_context(context);
    }
}

/// Supervisor external interrupt: claims every pending source in this hart's context, runs its
/// handlers, completes it.
pub fn handle() {
    let Some(context) = PLIC.context(super::cpu_id()) else {
        return;
    };
    let claim = Plic::context_reg(context, CLAIM);
    loop {
        let irq = PLIC.read(claim);
        if irq == 0 {
            return;
        }
        if !hal::irq::dispatch(irq) {
            // Register the handler before enabling the line, or this masks it again.
            defmt::warn!("PLIC source {=u32} fired with no handler: masked", irq);
            if let Some(m) = MISSED.get(irq as usize / 32) {
                m.fetch_or(1 << (irq % 32), Ordering::Relaxed);
            }
            PLIC.set_enabled(irq, false);
        }
        PLIC.write(claim, irq);
    }
}
