//! Per-device counters: the [`DriverStats`] struct, declared with blk's `driver_stats!`.

blk::driver_stats! {
    /// Counters of one device (relaxed atomics).
    pub struct DriverStats {
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
        /// Used entries with a bad id (including entries published beyond the chains in
        /// flight, also counted in `bad_used_idx`).
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
        /// Reap passes that found the used index ahead of every chain in flight, or behind.
        bad_used_idx,
    }
}
