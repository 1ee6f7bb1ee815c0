//! The driver's counters: [`DriverStats`], one relaxed `AtomicU64` per counter, declared with
//! `blk::driver_stats!`.

blk::driver_stats! {
    /// Counters of one port (relaxed atomics).
    pub struct DriverStats {
        /// Requests taken by `queue_rq`.
        requests,
        /// READ/WRITE FPDMA QUEUED commands issued.
        ncq_commands,
        /// Commands issued one at a time (DMA EXT, flush, TRIM, passthrough).
        exclusive_commands,
        /// FLUSH CACHE EXT commands issued (flush requests, FUA and PREFLUSH writes).
        flushes,
        /// TRIM commands issued.
        trims,
        /// Interrupt handler runs.
        interrupts,
        /// Reaps handed back to the CPU that owns the interrupt by a lock holder on another
        /// CPU ([`Ahci::set_owner`](crate::Ahci::set_owner)).
        kicks,
        /// Requests completed to the block layer.
        completions,
        /// Requests completed with an error.
        errors,
        /// Error recoveries.
        recoveries,
        /// Task-file errors seen.
        task_file_errors,
        /// Interface (link or host bus) errors seen.
        interface_errors,
        /// NCQ error log reads that named the failed tag.
        log_reads,
        /// Recoveries that had to replay suspects one at a time to find the failed command.
        isolations,
        /// Port resets (COMRESET).
        port_resets,
        /// Commands replayed after a recovery.
        replays,
        /// Requests that timed out.
        timeouts,
        /// Writes failed with `ReadOnly` by a recovery: the one the disk reported
        /// write-protected media for, and the writes waiting behind it (later ones are refused
        /// by `queue_rq` at once).
        write_protected,
        /// Non-queued reads and writes the device finished with a short byte count (PRDBC):
        /// failed with `Io`.
        short_transfers,
        /// Largest PRDT built.
        max_prdt_entries,
    }
}
