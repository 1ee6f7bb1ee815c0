//! Per-CPU blocks, the count of CPUs online, and the lock for data that interrupt handlers
//! also take.
//!
//! Every CPU has one [`PerCpu`] block in [`PERCPU`], indexed by its logical CPU index (0 is the
//! boot CPU; the others are numbered in the order they came online, with no gaps). Each CPU
//! points a register at its own block before it runs any Rust code that asks who it is: GS
//! base on x86_64, `tp` on riscv64. The block's first word is the logical index, so
//! `arch::cpu_id()` is one load relative to that register.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Most CPUs brought up; the firmware's others are left stopped (and reported). Matches the
/// block layer's per-CPU magazines (`blk::magazine::MAX_CPUS`).
pub const MAX_CPUS: usize = 8;

/// One CPU's own data. Aligned to 128 bytes (two cache lines) so CPUs never share a line.
#[repr(C, align(128))]
pub struct PerCpu {
    /// The logical index. Offset 0: `cpu_id()` reads it through GS base / `tp`. Never changes.
    index: usize,
    /// Hardware id: the local APIC id (x86_64) or the hart id (riscv64).
    pub hw_id: AtomicU32,
    /// Timer interrupts taken on this CPU.
    pub ticks: AtomicU64,
    /// Interrupts of any kind taken on this CPU (riscv64: `wait_for_interrupt` returns once
    /// this moves).
    pub interrupts: AtomicU64,
    /// Inter-processor interrupts taken on this CPU.
    pub ipis: AtomicU64,
    /// The rate this CPU's periodic timer runs at (0: stopped).
    pub timer_hz: AtomicU32,
    /// riscv64: this hart's next timer deadline (`time` units).
    pub timer_next: AtomicU64,
}

impl PerCpu {
    const fn new(index: usize) -> PerCpu {
        PerCpu {
            index,
            hw_id: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
            timer_hz: AtomicU32::new(0),
            timer_next: AtomicU64::new(0),
        }
    }
}

/// The blocks, by logical index.
pub static PERCPU: [PerCpu; MAX_CPUS] = {
    let mut all = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        all[i] = PerCpu::new(i);
        i += 1;
    }
    all
};

/// CPUs online: logical indexes `0..ONLINE`.
static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// CPUs online (logical indexes `0..cpus_online()`).
#[inline]
pub fn cpus_online() -> usize {
    ONLINE.load(Ordering::Acquire)
}

/// Marks logical CPU `index` online; called by the boot CPU once `index` reported in, in
/// index order. Release: what the new CPU set up before reporting is visible to whoever sees
/// it online.
pub(super) fn set_online(index: usize) {
    debug_assert_eq!(index, ONLINE.load(Ordering::Relaxed));
    ONLINE.store(index + 1, Ordering::Release);
}

/// The hardware id (APIC id / hart id) of logical CPU `cpu`, if it is online.
pub fn hw_id(cpu: usize) -> Option<u32> {
    (cpu < cpus_online()).then(|| PERCPU[cpu].hw_id.load(Ordering::Relaxed))
}

/// Timer interrupts taken on logical CPU `cpu` so far (0 for a CPU that is not online).
pub fn timer_ticks_on(cpu: usize) -> u64 {
    PERCPU
        .get(cpu)
        .map_or(0, |p| p.ticks.load(Ordering::Relaxed))
}

/// The running CPU's block.
#[inline]
pub fn this() -> &'static PerCpu {
    &PERCPU[super::cpu_id()]
}

/// A spin lock for data that interrupt handlers also use: interrupts are off on the holding
/// CPU for as long as it holds the lock, so a handler on that CPU can never spin on a lock its
/// own CPU holds. Another CPU's handler may spin briefly; no holder waits for anything.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

impl<T> IrqMutex<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> IrqMutex<T> {
        IrqMutex {
            inner: spin::Mutex::new(value),
        }
    }

    /// Runs `f` on the data with interrupts off and the lock held; restores the interrupt
    /// state afterwards.
    pub fn lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        super::without_interrupts(|| f(&mut self.inner.lock()))
    }
}
