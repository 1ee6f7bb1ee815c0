//! AHCI: SATA disks behind an AHCI host bus adapter, as a `blk` hardware queue.
//!
//! Bring-up ([`Hba`]) takes the HBA from the BIOS when it offers a handoff, resets it, enables
//! AHCI mode and tells what each port has ([`PortStatus`]); each port with a disk is then an
//! [`Ahci`] of its own ([`Ahci::on_port`]) with a command list and a received-FIS area in DMA
//! memory, and its disk is identified (capacity, sector sizes, NCQ, write
//! cache, TRIM). Block-layer tags are command slots: read and write requests go out as
//! READ/WRITE FPDMA QUEUED when the disk and the HBA do NCQ, else as READ/WRITE DMA EXT one at a
//! time; flush, TRIM, FUA/PREFLUSH writes and passthrough commands run alone (the port drains
//! its queued commands first). Completion reaps PxSACT/PxCI from the interrupt handler (or
//! `poll`) and completes by tag. Errors stop the port; recovery (process context) names the
//! failed command (the only one outstanding, or the NCQ error log, or by replaying the suspects
//! one at a time), resets the port (COMRESET), fails that command and replays the others. See
//! `docs/ahci.md`.
//!
//! Modules: [`regs`], [`spec`], [`cmd`] and [`sg`] are the hardware and ATA formats (pure);
//! [`port`] is the driver ([`Ahci`], split into bring-up, request building, SG mapping,
//! completion and recovery, with the slot bookkeeping in [`port::tracker`]); [`stats`] its
//! counters. Host tests run the whole driver against a fake HBA (`fake`, test builds only).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cmd;
pub mod port;
pub mod regs;
pub mod sg;
pub mod spec;
pub mod stats;

pub use port::{Ahci, DeviceInfo, Hba, Mode, Owner, PortStatus, Tracker};
pub use spec::IdentifyInfo;
pub use stats::DriverStats;

/// Tags (command slots) of the one queue.
pub const QUEUE_DEPTH: usize = cmd::SLOTS;

/// Why a controller could not be brought up.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The register window is too small or the controller never left reset.
    Controller,
    /// Fewer than 32 command slots.
    TooFewSlots,
    /// No port with a device present and the PHY up.
    NoDevice,
    /// The port did not start.
    PortStart,
    /// IDENTIFY DEVICE failed (ATA status and error in `PxTFD` layout).
    Identify(u32),
    /// IDENTIFY data refused.
    BadIdentify(spec::IdentifyError),
    /// No DMA memory (or none the controller can reach).
    NoMemory,
}

/// Passthrough commands: `PtCmd::opcode` is the ATA command byte, `args[0]` the LBA,
/// `args[1]` the count, `args[2]` the features, `args[3]` the device register (0: LBA mode);
/// `data` an optional buffer (even length and address), `write` its direction.
pub mod pt {
    use blk::{BioVec, PtCmd};

    /// IDENTIFY DEVICE into `buf` (512 bytes).
    pub fn identify(buf: BioVec) -> PtCmd {
        PtCmd {
            opcode: crate::spec::ata::IDENTIFY_DEVICE as u32,
            args: [0; 4],
            data: Some(buf),
            write: false,
        }
    }

    /// FLUSH CACHE EXT.
    pub fn flush() -> PtCmd {
        PtCmd {
            opcode: crate::spec::ata::FLUSH_CACHE_EXT as u32,
            ..PtCmd::default()
        }
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
