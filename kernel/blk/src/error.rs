//! The block layer's error type and the per-bio status.

use core::fmt;

/// Why a block-layer operation failed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The sectors lie (partly) outside the device.
    OutOfRange,
    /// Sector, size or buffer alignment breaks the device's limits.
    Misaligned,
    /// The device does not support this operation.
    Unsupported,
    /// Write to a read-only device.
    ReadOnly,
    /// No memory left in the pools (only when not allowed to wait).
    NoMemory,
    /// An I/O error reported by the device.
    Io,
    /// The request timed out and retries ran out.
    Timeout,
    /// A device-specific error code.
    DeviceError(u16),
    /// Queue limits that contradict each other.
    InvalidLimits,
    /// The device or queue is busy; try again.
    Busy,
    /// A partition table that does not parse or points outside the disk.
    BadPartitionTable,
    /// An argument out of its allowed range (e.g. more than 256 segments).
    InvalidArgument,
    /// The device was reset (after another request's timeout, or a protocol violation) while
    /// the request was in flight: it was cut off, not refused. The queue dispatches it again
    /// without counting a retry, at most [`MAX_ABORTS`](crate::request::MAX_ABORTS) times; a
    /// flush, PREFLUSH or FUA write ends with this error at once (its data is not known to be
    /// durable).
    Aborted,
}

impl BlkError {
    /// A non-zero code for atomic storage.
    pub const fn code(self) -> u32 {
        match self {
            BlkError::OutOfRange => 1,
            BlkError::Misaligned => 2,
            BlkError::Unsupported => 3,
            BlkError::ReadOnly => 4,
            BlkError::NoMemory => 5,
            BlkError::Io => 6,
            BlkError::Timeout => 7,
            BlkError::InvalidLimits => 8,
            BlkError::Busy => 9,
            BlkError::BadPartitionTable => 10,
            BlkError::InvalidArgument => 11,
            BlkError::Aborted => 12,
            BlkError::DeviceError(c) => 0x1_0000 | c as u32,
        }
    }

    /// The error for a code from [`BlkError::code`]; `None` for 0 (success).
    pub const fn from_code(c: u32) -> Option<BlkError> {
        Some(match c {
            0 => return None,
            1 => BlkError::OutOfRange,
            2 => BlkError::Misaligned,
            3 => BlkError::Unsupported,
            4 => BlkError::ReadOnly,
            5 => BlkError::NoMemory,
            6 => BlkError::Io,
            7 => BlkError::Timeout,
            8 => BlkError::InvalidLimits,
            9 => BlkError::Busy,
            10 => BlkError::BadPartitionTable,
            11 => BlkError::InvalidArgument,
            12 => BlkError::Aborted,
            c if c & 0x1_0000 != 0 => BlkError::DeviceError(c as u16),
            _ => BlkError::Io,
        })
    }

    /// Whether retrying the same request may help.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            BlkError::Io
                | BlkError::Timeout
                | BlkError::Busy
                | BlkError::DeviceError(_)
                | BlkError::Aborted
        )
    }
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for BlkError {}

/// A bio's or a request's outcome.
pub type BlkStatus = Result<(), BlkError>;

/// Encodes a status for atomic storage (0 = success).
pub const fn status_code(s: BlkStatus) -> u32 {
    match s {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

/// Decodes a status stored with [`status_code`].
pub const fn status_from_code(c: u32) -> BlkStatus {
    match BlkError::from_code(c) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            BlkError::OutOfRange,
            BlkError::Misaligned,
            BlkError::Unsupported,
            BlkError::ReadOnly,
            BlkError::NoMemory,
            BlkError::Io,
            BlkError::Timeout,
            BlkError::InvalidLimits,
            BlkError::Busy,
            BlkError::BadPartitionTable,
            BlkError::InvalidArgument,
            BlkError::DeviceError(0),
            BlkError::DeviceError(0xbeef),
        ] {
            assert_ne!(e.code(), 0);
            assert_eq!(BlkError::from_code(e.code()), Some(e));
        }
        assert_eq!(status_from_code(status_code(Ok(()))), Ok(()));
    }
}
