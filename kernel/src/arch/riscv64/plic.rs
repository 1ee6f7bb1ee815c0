//! The platform-level interrupt controller (PLIC), driven for one context: this hart's S-mode.
//!
//! Every source gets priority 1 and starts masked; the context's threshold is 0, so an enabled
//! source that is pending raises the supervisor external interrupt. The trap handler claims,
//! dispatches and completes ([`handle`]). A source that fires with no handler registered (say
//! a device that finished a request before its driver enabled the line) is masked again
//! instead of firing forever, and remembered: the claim consumed its pending bit, and QEMU's
//! PLIC does not set it again for a level interrupt that stays asserted, so the next time the
//! line is enabled its handlers run once right away (handlers tolerate calls with nothing to
//! do) to service the device.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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

/// The PLIC, once [`init`] found it; every call before that does nothing.
pub struct Plic {
    base: AtomicUsize,
    context: AtomicUsize,
    /// Highest source number + 1.
    sources: AtomicU32,
}

pub static PLIC: Plic = Plic {
    base: AtomicUsize::new(0),
    context: AtomicUsize::new(0),
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

    fn context_reg(&self, off: usize) -> usize {
        CONTEXT + CONTEXT_STRIDE * self.context.load(Ordering::Relaxed) + off
    }

    fn enable_word(&self, irq: u32) -> usize {
        ENABLE + ENABLE_STRIDE * self.context.load(Ordering::Relaxed) + 4 * (irq as usize / 32)
    }

    fn set_enabled(&self, irq: u32, on: bool) {
        if irq == 0 || irq >= self.sources.load(Ordering::Relaxed) {
            return;
        }
        let word = self.enable_word(irq);
        let bit = 1u32 << (irq % 32);
        // The trap handler also masks sources: keep the read-modify-write whole.
        super::without_interrupts(|| {
            let v = self.read(word);
            self.write(word, if on { v | bit } else { v & !bit });
            // QEMU 7.2's PLIC does not re-evaluate its output when an enable bit changes, only
            // on writes such as the threshold's: without this rewrite, a level interrupt already
            // pending when its source is enabled (raised before the driver was ready) was never
            // signalled. Harmless on other PLICs.
            let threshold = self.context_reg(THRESHOLD);
            self.write(threshold, self.read(threshold));
            let missed = &MISSED[irq as usize / 32];
            if on && missed.fetch_and(!bit, Ordering::Relaxed) & bit != 0 {
                // Interrupts are off here, as in the trap handler.
                if !hal::irq::dispatch(irq) {
                    missed.fetch_or(bit, Ordering::Relaxed);
                }
            }
        });
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
}

/// Takes over the PLIC at `base` for `context`, with sources `1..sources`: all masked,
/// priority 1, threshold 0.
///
/// # Safety
/// `base` is the identity-mapped register block of a PLIC with at least `sources` sources and
/// `context + 1` contexts, and `context` belongs to this hart's S-mode.
pub unsafe fn init(base: usize, context: usize, sources: u32) {
    let sources = sources.min(hal::irq::MAX_IRQS as u32);
    PLIC.context.store(context, Ordering::Relaxed);
    PLIC.sources.store(sources, Ordering::Relaxed);
    PLIC.base.store(base, Ordering::Release);
    for word in 0..sources.div_ceil(32) {
        PLIC.write(PLIC.enable_word(word * 32), 0);
    }
    for irq in 1..sources {
        PLIC.write(PRIORITY + 4 * irq as usize, 1);
    }
    PLIC.write(PLIC.context_reg(THRESHOLD), 0);
}

/// Supervisor external interrupt: claims every pending source, runs its handlers, completes it.
pub fn handle() {
    loop {
        let irq = PLIC.read(PLIC.context_reg(CLAIM));
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
        PLIC.write(PLIC.context_reg(CLAIM), irq);
    }
}
