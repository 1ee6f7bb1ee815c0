//! Per-device counters: the `driver_stats!` macro and the [`DriverStats`] it defines (plumbing
//! every driver has, kept apart from the virtio logic).

use core::sync::atomic::AtomicU64;

macro_rules! driver_stats {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one device (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct DriverStats { $( $(#[$m])* pub $name: AtomicU64, )* }

        impl DriverStats {
            pub(super) const fn new() -> Self { DriverStats { $( $name: AtomicU64::new(0), )* } }
        }
    };
}

driver_stats! {
    /// Requests turned into descriptor chains.
    requests,
    /// `queue_rq` answered `Busy` (ring full).
    busy,
    /// Doorbell writes.
    notifies,
    /// Commits that skipped the doorbell because the device did not ask for it.
    notifies_suppressed,
    /// Interrupt handler runs.
    interrupts,
    /// Chains reaped from the used ring.
    reaped,
    /// Requests completed to the block layer.
    completions,
    /// Requests completed with an error.
    errors,
    /// Used entries with a bad id.
    bad_used_ids,
    /// Used entries with a short length.
    short_lengths,
    /// Device resets after a protocol violation.
    resets,
    /// Post-flushes run for FUA writes.
    fua_flushes,
    /// Requests that timed out (each resets the device).
    timeouts,
    /// Pre-flushes run for PREFLUSH writes.
    preflushes,
}
