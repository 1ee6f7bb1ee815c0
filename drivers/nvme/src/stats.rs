//! The driver's counters.

blk::driver_stats! {
    /// Counters of one controller (relaxed atomics).
    pub struct DriverStats {
        /// Commands submitted on the I/O queue.
        requests,
        /// Passthrough admin commands submitted.
        passthrough,
        /// `queue_rq` answered `Busy` (queue full).
        busy,
        /// Doorbell writes on the I/O submission queue.
        doorbells,
        /// Interrupt handler runs.
        interrupts,
        /// Completion entries consumed.
        reaped,
        /// Requests completed to the block layer.
        completions,
        /// Requests completed with an error.
        errors,
        /// Completions whose command id was not in flight (or stale).
        bad_cids,
        /// Completions with a wrong submission queue id or head.
        bad_sq,
        /// Requests that used a PRP list.
        prp_lists,
        /// Requests whose PRP/SGL list took more than one page.
        chained_lists,
        /// Requests with SGLs.
        sgls,
        /// Pre-flushes run for PREFLUSH writes.
        preflushes,
        /// Timeouts seen.
        timeouts,
        /// Abort commands sent.
        aborts,
        /// Controller resets.
        resets,
        /// Fatal status seen.
        fatal,
        /// INTx masked by the handler (a lock was taken).
        masks,
        /// INTx unmasked after a masked interrupt.
        unmasks,
    }
}
