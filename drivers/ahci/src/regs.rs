//! AHCI 1.3.1 register map: generic host control (section 3.1) and per-port registers
//! (section 3.3): offsets, `bitflags` types for the registers the driver tests and sets bits
//! in, and masks for the multi-bit fields.

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

bitflags::bitflags! {
    /// `CAP`: host capabilities (the number-of-ports and command-slots fields through
    /// [`Cap::ports`] and [`Cap::command_slots`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cap: u32 {
        /// Supports native command queuing.
        const SNCQ = 1 << 30;
        /// Supports 64-bit addressing.
        const S64A = 1 << 31;
        const _ = !0;
    }
}

impl Cap {
    /// Ports the HBA supports (NP, bits 4:0, plus one).
    pub const fn ports(self) -> u32 {
        (self.bits() & 0x1f) + 1
    }

    /// Command slots per port (NCS, bits 12:8, plus one).
    pub const fn command_slots(self) -> u32 {
        ((self.bits() >> 8) & 0x1f) + 1
    }
}

bitflags::bitflags! {
    /// `CAP2`: host capabilities extended.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cap2: u32 {
        /// BIOS/OS handoff supported.
        const BOH = 1 << 0;
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `BOHC`: BIOS/OS handoff control and status.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Bohc: u32 {
        /// BIOS owned semaphore.
        const BOS = 1 << 0;
        /// OS owned semaphore.
        const OOS = 1 << 1;
        /// BIOS busy.
        const BB = 1 << 4;
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `GHC`: global host control.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Ghc: u32 {
        /// HBA reset.
        const HR = 1 << 0;
        /// Interrupt enable.
        const IE = 1 << 1;
        /// AHCI enable.
        const AE = 1 << 31;
        const _ = !0;
    }
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

bitflags::bitflags! {
    /// `PxCMD`: port command and status.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PxCmd: u32 {
        /// Start: process the command list.
        const ST = 1 << 0;
        /// Spin-up device.
        const SUD = 1 << 1;
        /// Power on device.
        const POD = 1 << 2;
        /// FIS receive enable.
        const FRE = 1 << 4;
        /// FIS receive running.
        const FR = 1 << 14;
        /// Command list running.
        const CR = 1 << 15;
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `PxIS` (write 1 to clear) and `PxIE`: port interrupt status and enable.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PxIs: u32 {
        /// Device-to-host register FIS received.
        const DHRS = 1 << 0;
        /// PIO setup FIS received.
        const PSS = 1 << 1;
        /// DMA setup FIS received.
        const DSS = 1 << 2;
        /// Set device bits FIS received (NCQ completions).
        const SDBS = 1 << 3;
        /// Unknown FIS.
        const UFS = 1 << 4;
        /// Descriptor processed.
        const DPS = 1 << 5;
        /// Port connect change.
        const PCS = 1 << 6;
        /// PhyRdy change.
        const PRCS = 1 << 22;
        /// Overflow.
        const OFS = 1 << 24;
        /// Interface non-fatal error.
        const INFS = 1 << 26;
        /// Interface fatal error.
        const IFS = 1 << 27;
        /// Host bus data error.
        const HBDS = 1 << 28;
        /// Host bus fatal error.
        const HBFS = 1 << 29;
        /// Task file error.
        const TFES = 1 << 30;
        /// Cold port detect.
        const CPDS = 1 << 31;
        /// Interface errors (the link or the host bus, not the device).
        const INTERFACE_ERRORS = Self::OFS.bits()
            | Self::INFS.bits()
            | Self::IFS.bits()
            | Self::HBDS.bits()
            | Self::HBFS.bits();
        /// Every error that stops the port.
        const ERRORS = Self::INTERFACE_ERRORS.bits() | Self::TFES.bits();
        /// What the driver enables.
        const ENABLED = Self::DHRS.bits()
            | Self::PSS.bits()
            | Self::DSS.bits()
            | Self::SDBS.bits()
            | Self::UFS.bits()
            | Self::DPS.bits()
            | Self::PCS.bits()
            | Self::PRCS.bits()
            | Self::ERRORS.bits();
        const _ = !0;
    }
}

bitflags::bitflags! {
    /// `PxTFD`: task file data, the ATA status in bits 7:0 (these flags) and the ATA error in
    /// bits 15:8 ([`Tfd::error`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Tfd: u32 {
        /// Error.
        const ERR = 1 << 0;
        /// Data request.
        const DRQ = 1 << 3;
        /// Device fault.
        const DF = 1 << 5;
        /// Device ready.
        const DRDY = 1 << 6;
        /// Busy.
        const BSY = 1 << 7;
        const _ = !0;
    }
}

impl Tfd {
    /// The ATA error register (bits 15:8).
    pub const fn error(self) -> u8 {
        (self.bits() >> 8) as u8
    }
}

bitflags::bitflags! {
    /// `PxSERR`: SATA error (SError, write 1 to clear): the error bits (15:0) and the
    /// diagnostics (31:16).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Serr: u32 {
        /// Recovered data integrity error.
        const ERR_I = 1 << 0;
        /// Recovered communications error.
        const ERR_M = 1 << 1;
        /// Transient data integrity error.
        const ERR_T = 1 << 8;
        /// Persistent communication or data integrity error.
        const ERR_C = 1 << 9;
        /// Protocol error.
        const ERR_P = 1 << 10;
        /// Internal error.
        const ERR_E = 1 << 11;
        /// PhyRdy change.
        const DIAG_N = 1 << 16;
        /// Phy internal error.
        const DIAG_I = 1 << 17;
        /// COMWAKE detected.
        const DIAG_W = 1 << 18;
        /// 10B to 8B decode error.
        const DIAG_B = 1 << 19;
        /// Disparity error.
        const DIAG_D = 1 << 20;
        /// CRC error.
        const DIAG_C = 1 << 21;
        /// Handshake error.
        const DIAG_H = 1 << 22;
        /// Link sequence error.
        const DIAG_S = 1 << 23;
        /// Transport state transition error.
        const DIAG_T = 1 << 24;
        /// Unknown FIS type.
        const DIAG_F = 1 << 25;
        /// Exchanged (a device was attached or removed).
        const DIAG_X = 1 << 26;
        const _ = !0;
    }
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
    /// A port multiplier.
    pub const PORT_MULTIPLIER: u32 = 0x9669_0101;
    /// An enclosure management bridge (SEMB).
    pub const SEMB: u32 = 0xc33c_0101;
    /// No signature received yet (the register's reset value).
    pub const NONE: u32 = 0xffff_ffff;
}
