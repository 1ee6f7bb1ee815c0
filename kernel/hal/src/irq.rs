//! Interrupt lines.
//!
//! The boot crate installs its interrupt controller ([`IrqChip`]: IOAPIC/LAPIC on x86_64, PLIC
//! on riscv64) with [`set_chip`] and calls [`dispatch`] from its trap handler for every device
//! interrupt. Drivers get an [`IrqLine`] (from discovery, or from [`alloc_msi`]), register a
//! handler on it and enable it. A line may be shared (PCI INTx): every handler registered on it
//! runs, and each must tolerate being called when its device has nothing to report.
//!
//! Handlers run in interrupt context with interrupts masked, on the CPU the line is delivered
//! to: an MSI on the CPU its message names ([`alloc_msi_on`]), a wired line on the CPU it was
//! routed to ([`IrqLine::route_to`]; the boot CPU until then). They must not wait or allocate,
//! and may run on one CPU while the code that registered them runs on another.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

/// Interrupt numbers go up to this (exclusive): x86 vectors, PLIC sources.
pub const MAX_IRQS: usize = 256;
/// Handlers sharing one line, at most.
pub const MAX_SHARED: usize = 4;

/// Code run when a line fires.
pub trait IrqHandler: Sync {
    /// Acknowledge the device and record or complete its work. Interrupt context.
    fn handle(&self);
}

/// The platform's interrupt controller, as the boot crate implements it.
pub trait IrqChip: Sync {
    /// Unmask `irq` and route it to the CPU.
    fn enable(&self, irq: u32);
    /// Mask `irq`.
    fn disable(&self, irq: u32);
    /// Reserve a message-signalled interrupt: its number for [`dispatch`] and the address/data
    /// pair a device writes to raise it. `None` when the platform has no MSI or none is left.
    fn alloc_msi(&self) -> Option<(u32, MsiMessage)>;
    /// Like [`alloc_msi`](IrqChip::alloc_msi), but the message interrupts CPU `cpu` (a logical
    /// index, as the boot crate's `cpu_id`); `None` also when `cpu` is not online. The number
    /// is valid on every CPU. The default serves one-CPU platforms.
    fn alloc_msi_on(&self, cpu: usize) -> Option<(u32, MsiMessage)> {
        let _ = cpu;
        self.alloc_msi()
    }
    /// Delivers wired line `irq` to CPU `cpu` from now on, whether enabled or not (it stays
    /// enabled or masked as it was); nothing for an MSI or a CPU that is not online. The
    /// default serves one-CPU platforms (nothing to route).
    fn route(&self, irq: u32, cpu: usize) {
        let _ = (irq, cpu);
    }
}

/// What a device writes, and where, to raise a message-signalled interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address the device writes to.
    pub address: u64,
    /// Value it writes.
    pub data: u32,
}

/// Why a line cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IrqError {
    /// The number is beyond [`MAX_IRQS`].
    OutOfRange,
    /// [`MAX_SHARED`] handlers already sit on this line.
    Full,
    /// No interrupt controller was installed.
    NoChip,
}

static CHIP: Once<&'static dyn IrqChip> = Once::new();
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Once<&'static dyn IrqHandler> = Once::new();
#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_LINE: [Once<&'static dyn IrqHandler>; MAX_SHARED] = [EMPTY; MAX_SHARED];
static HANDLERS: [[Once<&'static dyn IrqHandler>; MAX_SHARED]; MAX_IRQS] = [EMPTY_LINE; MAX_IRQS];
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static COUNTS: [AtomicU64; MAX_IRQS] = [ZERO; MAX_IRQS];
static SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Installs the interrupt controller. Boot code, once.
pub fn set_chip(chip: &'static dyn IrqChip) {
    CHIP.call_once(|| chip);
}

/// Runs every handler registered on `irq`. Called by the arch trap code, interrupt context.
/// Returns whether any handler was registered.
pub fn dispatch(irq: u32) -> bool {
    let Some(line) = HANDLERS.get(irq as usize) else {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    COUNTS[irq as usize].fetch_add(1, Ordering::Relaxed);
    // Slots fill in order (`register` takes the first free one), so the first empty slot ends
    // the line.
    let mut any = false;
    for slot in line {
        let Some(h) = slot.get() else { break };
        h.handle();
        any = true;
    }
    if !any {
        SPURIOUS.fetch_add(1, Ordering::Relaxed);
    }
    any
}

/// Interrupts that arrived on lines with no handler (or out of range).
pub fn spurious_count() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

/// Reserves a message-signalled interrupt (see [`IrqChip::alloc_msi`]).
pub fn alloc_msi() -> Option<(IrqLine, MsiMessage)> {
    let (irq, msg) = CHIP.get()?.alloc_msi()?;
    Some((IrqLine { irq }, msg))
}

/// Reserves a message-signalled interrupt delivered to CPU `cpu` (see
/// [`IrqChip::alloc_msi_on`]).
pub fn alloc_msi_on(cpu: usize) -> Option<(IrqLine, MsiMessage)> {
    let (irq, msg) = CHIP.get()?.alloc_msi_on(cpu)?;
    Some((IrqLine { irq }, msg))
}

/// One interrupt line a driver may register a handler on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqLine {
    irq: u32,
}

impl IrqLine {
    /// The line with number `irq` (a PLIC source, an x86 vector). The boot crate's discovery
    /// hands these out; a wrong number misroutes interrupts but cannot corrupt memory.
    pub const fn new(irq: u32) -> IrqLine {
        IrqLine { irq }
    }

    /// The line's number.
    pub fn number(&self) -> u32 {
        self.irq
    }

    /// Adds `handler` to the line (it stays for the life of the program).
    pub fn register(&self, handler: &'static dyn IrqHandler) -> Result<(), IrqError> {
        let line = HANDLERS
            .get(self.irq as usize)
            .ok_or(IrqError::OutOfRange)?;
        for slot in line {
            let mut mine = false;
            slot.call_once(|| {
                mine = true;
                handler
            });
            if mine {
                return Ok(());
            }
        }
        Err(IrqError::Full)
    }

    /// Unmasks the line at the interrupt controller.
    pub fn enable(&self) -> Result<(), IrqError> {
        CHIP.get().ok_or(IrqError::NoChip)?.enable(self.irq);
        Ok(())
    }

    /// Masks the line.
    pub fn disable(&self) -> Result<(), IrqError> {
        CHIP.get().ok_or(IrqError::NoChip)?.disable(self.irq);
        Ok(())
    }

    /// Delivers the line to CPU `cpu` (wired lines; an MSI's CPU is fixed by its message).
    pub fn route_to(&self, cpu: usize) -> Result<(), IrqError> {
        CHIP.get().ok_or(IrqError::NoChip)?.route(self.irq, cpu);
        Ok(())
    }

    /// How many times the line has fired.
    pub fn count(&self) -> u64 {
        COUNTS
            .get(self.irq as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    struct Counter(AtomicU32);
    impl IrqHandler for Counter {
        fn handle(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn shared_line_runs_every_handler() {
        static A: Counter = Counter(AtomicU32::new(0));
        static B: Counter = Counter(AtomicU32::new(0));
        let line = IrqLine::new(200);
        line.register(&A).unwrap();
        line.register(&B).unwrap();
        assert!(dispatch(200));
        assert!(dispatch(200));
        assert_eq!(A.0.load(Ordering::Relaxed), 2);
        assert_eq!(B.0.load(Ordering::Relaxed), 2);
        assert_eq!(line.count(), 2);
        for _ in 0..MAX_SHARED - 2 {
            line.register(&A).unwrap();
        }
        assert_eq!(line.register(&A), Err(IrqError::Full));
        assert_eq!(IrqLine::new(999).register(&A), Err(IrqError::OutOfRange));
        assert!(!dispatch(201));
        assert!(!dispatch(5000));
        assert!(spurious_count() >= 2);
        assert_eq!(line.enable(), Err(IrqError::NoChip));
    }
}
