//! Statistics counters (relaxed atomics) that conformance tests and the kernel read.

use core::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Live counters of a queue or a stacked device.
        #[derive(Default)]
        pub struct BlkStats { $( $name: AtomicU64, )* }

        /// A snapshot of [`BlkStats`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct StatsSnapshot { $( $(#[$m])* pub $name: u64, )* }

        impl BlkStats {
            /// All zero.
            pub const fn new() -> Self { BlkStats { $( $name: AtomicU64::new(0), )* } }
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
            $(
                #[inline]
                pub(crate) fn $name(&self, n: u64) { self.$name.fetch_add(n, Ordering::Relaxed); }
            )*
        }
    };
}

counters! {
    /// Bios handed to this device.
    bios_submitted,
    /// Requests given to the driver (re-dispatches included).
    requests_dispatched,
    /// Bios merged at the back of a request.
    merges_back,
    /// Bios merged at the front of a request.
    merges_front,
    /// Splits (each produces one extra bio).
    splits,
    /// Bios that went through bounce buffers.
    bounces,
    /// Requests completed for good (success or final error).
    requests_completed,
    /// Bios this device ended with an error.
    bio_errors,
    /// Requests put back for a later dispatch (busy driver, partial completion, retry).
    requeues,
    /// Requests that passed their deadline.
    timeouts,
    /// Retries after an error or a timeout.
    retries,
    /// Completions for a tag that was not in flight (after a timeout took it), dropped.
    late_completions,
    /// Passthrough commands sent.
    passthrough,
    /// Bios a stacked device remapped to a lower device.
    remaps,
}
