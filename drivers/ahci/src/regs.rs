//! AHCI 1.3.1 register map: generic host control (section 3.1) and per-port registers
//! (section 3.3), as offsets and bit masks. No logic.

/// Generic host control registers (offsets into ABAR).
pub mod hba {
    /// Host capabilities.
    pub const CAP: usize = 0x00;
    /// Global host control.
    pub const GHC: usize = 0x04;
    /// Interrupt status (one bit per port, write 1 to clear).
    pub const IS: usize = 0x08;
    /// Ports implemented.
    pub const PI: usize = 0x0c;
    /// Version.
    pub const VS: usize = 0x10;
    /// Host capabilities extended.
    pub const CAP2: usize = 0x24;
    /// BIOS/OS handoff control and status.
    pub const BOHC: usize = 0x28;
    /// First port's registers.
    pub const PORT_BASE: usize = 0x100;
    /// Bytes of registers per port.
    pub const PORT_STRIDE: usize = 0x80;
    /// Bytes of ABAR the driver touches (host registers and 32 ports).
    pub const ABAR_LEN: usize = PORT_BASE + 32 * PORT_STRIDE;
}

/// `CAP` bits.
pub mod cap {
    /// Number of ports minus one (bits 4:0).
    pub const NP_MASK: u32 = 0x1f;
    /// Number of command slots minus one (bits 12:8).
    pub const NCS_SHIFT: u32 = 8;
    /// Supports native command queuing.
    pub const SNCQ: u32 = 1 << 30;
    /// Supports 64-bit addressing.
    pub const S64A: u32 = 1 << 31;
}

/// `CAP2` bits.
pub mod cap2 {
    /// BIOS/OS handoff supported.
    pub const BOH: u32 = 1 << 0;
}

/// `BOHC` bits.
pub mod bohc {
    /// BIOS owned semaphore.
    pub const BOS: u32 = 1 << 0;
    /// OS owned semaphore.
    pub const OOS: u32 = 1 << 1;
    /// BIOS busy.
    pub const BB: u32 = 1 << 4;
}

/// `GHC` bits.
pub mod ghc {
    /// HBA reset.
    pub const HR: u32 = 1 << 0;
    /// Interrupt enable.
    pub const IE: u32 = 1 << 1;
    /// AHCI enable.
    pub const AE: u32 = 1 << 31;
}

/// Per-port register offsets (relative to the port's base).
pub mod port {
    /// Command list base address (1 KiB aligned).
    pub const CLB: usize = 0x00;
    /// Command list base address, upper 32 bits.
    pub const CLBU: usize = 0x04;
    /// Received FIS base address (256-byte aligned).
    pub const FB: usize = 0x08;
    /// Received FIS base address, upper 32 bits.
    pub const FBU: usize = 0x0c;
    /// Interrupt status (write 1 to clear).
    pub const IS: usize = 0x10;
    /// Interrupt enable.
    pub const IE: usize = 0x14;
    /// Command and status.
    pub const CMD: usize = 0x18;
    /// Task file data (status in bits 7:0, error in 15:8).
    pub const TFD: usize = 0x20;
    /// Signature of the attached device.
    pub const SIG: usize = 0x24;
    /// SATA status (SStatus).
    pub const SSTS: usize = 0x28;
    /// SATA control (SControl).
    pub const SCTL: usize = 0x2c;
    /// SATA error (SError, write 1 to clear).
    pub const SERR: usize = 0x30;
    /// SATA active: NCQ tags outstanding.
    pub const SACT: usize = 0x34;
    /// Command issue: slots outstanding.
    pub const CI: usize = 0x38;
}

/// `PxCMD` bits.
pub mod cmd {
    /// Start: process the command list.
    pub const ST: u32 = 1 << 0;
    /// Spin-up device.
    pub const SUD: u32 = 1 << 1;
    /// Power on device.
    pub const POD: u32 = 1 << 2;
    /// FIS receive enable.
    pub const FRE: u32 = 1 << 4;
    /// FIS receive running.
    pub const FR: u32 = 1 << 14;
    /// Command list running.
    pub const CR: u32 = 1 << 15;
}

/// `PxIS` / `PxIE` bits.
pub mod is {
    /// Device-to-host register FIS received.
    pub const DHRS: u32 = 1 << 0;
    /// PIO setup FIS received.
    pub const PSS: u32 = 1 << 1;
    /// DMA setup FIS received.
    pub const DSS: u32 = 1 << 2;
    /// Set device bits FIS received (NCQ completions).
    pub const SDBS: u32 = 1 << 3;
    /// Unknown FIS.
    pub const UFS: u32 = 1 << 4;
    /// Descriptor processed.
    pub const DPS: u32 = 1 << 5;
    /// Port connect change.
    pub const PCS: u32 = 1 << 6;
    /// PhyRdy change.
    pub const PRCS: u32 = 1 << 22;
    /// Overflow.
    pub const OFS: u32 = 1 << 24;
    /// Interface non-fatal error.
    pub const INFS: u32 = 1 << 26;
    /// Interface fatal error.
    pub const IFS: u32 = 1 << 27;
    /// Host bus data error.
    pub const HBDS: u32 = 1 << 28;
    /// Host bus fatal error.
    pub const HBFS: u32 = 1 << 29;
    /// Task file error.
    pub const TFES: u32 = 1 << 30;
    /// Cold port detect.
    pub const CPDS: u32 = 1 << 31;
    /// Interface errors (the link or the host bus, not the device).
    pub const INTERFACE_ERRORS: u32 = OFS | INFS | IFS | HBDS | HBFS;
    /// Every error that stops the port.
    pub const ERRORS: u32 = INTERFACE_ERRORS | TFES;
    /// What the driver enables.
    pub const ENABLED: u32 = DHRS | PSS | DSS | SDBS | UFS | DPS | PCS | PRCS | ERRORS;
}

/// `PxTFD` status bits.
pub mod tfd {
    /// Error.
    pub const ERR: u32 = 1 << 0;
    /// Data request.
    pub const DRQ: u32 = 1 << 3;
    /// Device fault.
    pub const DF: u32 = 1 << 5;
    /// Busy.
    pub const BSY: u32 = 1 << 7;
}

/// `PxSSTS` fields.
pub mod ssts {
    /// Device detection (bits 3:0).
    pub const DET_MASK: u32 = 0xf;
    /// Device present and PHY communication established.
    pub const DET_PRESENT: u32 = 3;
}

/// `PxSCTL` fields.
pub mod sctl {
    /// Device detection initialisation (bits 3:0).
    pub const DET_MASK: u32 = 0xf;
    /// Perform interface initialisation (COMRESET).
    pub const DET_COMRESET: u32 = 1;
}

/// `PxSIG` values.
pub mod sig {
    /// A SATA disk.
    pub const ATA: u32 = 0x0000_0101;
    /// An ATAPI device.
    pub const ATAPI: u32 = 0xeb14_0101;
}
