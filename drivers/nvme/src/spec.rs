//! Wire constants of the NVMe base specification (1.4): opcodes, Identify data offsets,
//! feature ids, status codes.

use bitflags::bitflags;

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O submission queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O submission queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get log page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O completion queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O completion queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get features.
    pub const GET_FEATURES: u8 = 0x0a;
}

/// NVM command set opcodes.
pub mod nvm {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset management (deallocate = discard).
    pub const DSM: u8 = 0x09;
}

/// Identify CNS values.
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u32 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u32 = 0x01;
    /// Active namespace id list (NVMe 1.1): up to 1024 ids above the command's NSID, in
    /// increasing order, ended by a 0.
    pub const ACTIVE_NAMESPACES: u32 = 0x02;
}

/// Feature identifiers.
pub mod feature {
    /// Volatile write cache.
    pub const VOLATILE_WRITE_CACHE: u32 = 0x06;
    /// Number of queues.
    pub const NUMBER_OF_QUEUES: u32 = 0x07;
    /// Namespace write protection config (per namespace; dword 0 bits 2:0 the state).
    pub const NAMESPACE_WRITE_PROTECT: u32 = 0x84;
}

/// Byte offsets in the Identify Controller data structure.
pub mod id_ctrl {
    /// PCI vendor id (u16).
    pub const VID: usize = 0;
    /// Serial number (20 ASCII bytes).
    pub const SN: usize = 4;
    /// Model number (40 ASCII bytes).
    pub const MN: usize = 24;
    /// Maximum data transfer size (u8, power of two of the minimum page size; 0 = none).
    pub const MDTS: usize = 77;
    /// Controller id (u16).
    pub const CNTLID: usize = 78;
    /// Version (u32).
    pub const VER: usize = 80;
    /// Number of namespaces (u32).
    pub const NN: usize = 516;
    /// Optional NVM command support (u16): bit 2 DSM, bit 3 write zeroes.
    pub const ONCS: usize = 520;
    /// Volatile write cache (u8): bit 0 present.
    pub const VWC: usize = 525;
    /// Namespace write protection capabilities (u8): bit 0 the no-write-protect and
    /// write-protect states are supported (the write protection config feature exists).
    pub const NWPC: usize = 531;
    /// SGL support (u32): bits 1:0 non-zero when SGLs are supported.
    pub const SGLS: usize = 536;
}

/// Byte offsets in the Identify Namespace data structure.
pub mod id_ns {
    /// Namespace size in logical blocks (u64).
    pub const NSZE: usize = 0;
    /// Number of LBA formats minus one (u8).
    pub const NLBAF: usize = 25;
    /// Formatted LBA size (u8): bits 3:0 the format index, bit 4 metadata at the end of
    /// each block.
    pub const FLBAS: usize = 26;
    /// Namespace attributes (u8): bit 0 the namespace is write protected (for any reason).
    pub const NSATTR: usize = 99;
    /// First LBA format (u32 each): bits 15:0 metadata bytes per block, bits 23:16 LBA data
    /// size as a power of two.
    pub const LBAF: usize = 128;
}

bitflags! {
    /// Optional NVM command support (`ONCS` in Identify Controller).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Oncs: u16 {
        /// Compare.
        const COMPARE = 1 << 0;
        /// Write uncorrectable.
        const WRITE_UNCORRECTABLE = 1 << 1;
        /// Dataset management.
        const DSM = 1 << 2;
        /// Write zeroes.
        const WRITE_ZEROES = 1 << 3;
        const _ = !0;
    }
}

bitflags! {
    /// Volatile write cache (`VWC` in Identify Controller).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Vwc: u8 {
        /// A volatile write cache is present.
        const PRESENT = 1;
        const _ = !0;
    }
}

bitflags! {
    /// Completion dword 0 of an Abort command.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AbortResult: u32 {
        /// The command was not aborted (it completed, or the controller declined).
        const NOT_ABORTED = 1;
        const _ = !0;
    }
}

bitflags! {
    /// Status field (completion dword 3, bits 31:17, shifted down). The status code and its
    /// type are fields ([`Status::code`], [`Status::code_type`]); More and Do Not Retry are
    /// flags.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Status: u16 {
        /// More status information in the error log page.
        const MORE = 1 << 13;
        /// Do not retry.
        const DNR = 1 << 14;
        const _ = !0;
    }
}

/// Command specific status codes of the NVM command set (type 1).
pub mod csc {
    /// Attempted write to a read-only range.
    pub const READ_ONLY_RANGE: u8 = 0x82;
}

/// Status code types.
pub mod sct {
    /// Generic command status.
    pub const GENERIC: u8 = 0;
    /// Command specific status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and data integrity errors.
    pub const MEDIA: u8 = 2;
}

/// Generic status codes.
pub mod sc {
    /// Success.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command opcode.
    pub const INVALID_OPCODE: u8 = 0x01;
    /// Invalid field in command.
    pub const INVALID_FIELD: u8 = 0x02;
    /// Command abort requested.
    pub const ABORT_REQUESTED: u8 = 0x07;
    /// Namespace is write protected (the command would change it).
    pub const NS_WRITE_PROTECTED: u8 = 0x20;
    /// LBA out of range.
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
}

impl Status {
    /// Status code.
    pub fn code(self) -> u8 {
        self.bits() as u8
    }
    /// A status of type `sct` with code `sc`.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status::from_bits_retain(((sct as u16) & 7) << 8 | sc as u16)
    }
    /// Status code type.
    pub fn code_type(self) -> u8 {
        ((self.bits() >> 8) & 7) as u8
    }
    /// Do not retry.
    pub fn do_not_retry(self) -> bool {
        self.contains(Status::DNR)
    }
    /// Success.
    pub fn is_success(self) -> bool {
        self.code() == sc::SUCCESS && self.code_type() == sct::GENERIC
    }
    /// The block layer's view: `Unsupported` for an opcode or field the controller refuses,
    /// `OutOfRange`, `ReadOnly` for a write-protected namespace or a read-only range (never
    /// retried), `Io` for media errors, otherwise `DeviceError(type << 8 | code)`.
    pub fn to_blk(self) -> blk::BlkStatus {
        use blk::BlkError;
        if self.is_success() {
            return Ok(());
        }
        Err(match (self.code_type(), self.code()) {
            (sct::GENERIC, sc::INVALID_OPCODE | sc::INVALID_FIELD) => BlkError::Unsupported,
            (sct::GENERIC, sc::LBA_OUT_OF_RANGE) => BlkError::OutOfRange,
            (sct::GENERIC, sc::NS_WRITE_PROTECTED)
            | (sct::COMMAND_SPECIFIC, csc::READ_ONLY_RANGE) => BlkError::ReadOnly,
            (sct::MEDIA, _) => BlkError::Io,
            (t, c) => BlkError::DeviceError((t as u16) << 8 | c as u16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk::BlkError;

    #[test]
    fn status_mapping() {
        let st = Status::from_bits_retain;
        assert_eq!(st(0).to_blk(), Ok(()));
        assert_eq!(st(0x01).to_blk(), Err(BlkError::Unsupported));
        assert_eq!(st(0x80).to_blk(), Err(BlkError::OutOfRange));
        assert_eq!(st(0x281).to_blk(), Err(BlkError::Io));
        assert_eq!(st(0x107).to_blk(), Err(BlkError::DeviceError(0x107)));
        // Write protection is typed and not retryable, with or without DNR.
        for s in [0x20, 1 << 14 | 0x20, 0x182] {
            assert_eq!(st(s).to_blk(), Err(BlkError::ReadOnly), "{s:#x}");
            assert!(!BlkError::ReadOnly.is_retryable());
        }
        assert_eq!(st(0x21).to_blk(), Err(BlkError::DeviceError(0x21)));
        assert!(st(1 << 14 | 4).do_not_retry());
        assert!(!st(4).do_not_retry());
        assert_eq!(Status::new(sct::MEDIA, 0x81), st(0x281));
        assert_eq!(st(Status::DNR.bits() | 0x281).code_type(), sct::MEDIA);
    }
}
