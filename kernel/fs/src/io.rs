//! The filesystem's view of its device: whole blocks, multi-block reads, batched writes with
//! ordering flags. [`crate::blkdev::BlkDisk`] implements it with `blk` bios; host tools and
//! tests also have in-memory and file-backed devices.

use blk::BlkError;

use crate::format::BLOCK_SIZE;

/// Ordering flags of a write batch (the bio flags they become).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Everything completed before this batch is made durable before it is written (`PREFLUSH`).
    pub preflush: bool,
    /// The batch is durable when it completes (`FUA`).
    pub fua: bool,
}

impl WriteFlags {
    /// No ordering.
    pub const NONE: WriteFlags = WriteFlags {
        preflush: false,
        fua: false,
    };
    /// `PREFLUSH | FUA`: the commit record.
    pub const COMMIT: WriteFlags = WriteFlags {
        preflush: true,
        fua: true,
    };
}

/// One contiguous run of blocks to write: `data.len()` is a multiple of [`BLOCK_SIZE`].
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// First block.
    pub block: u64,
    /// Bytes of the blocks.
    pub data: &'a [u8],
}

/// What went wrong in a device I/O.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoErrorKind {
    /// The device failed (host devices: the image file's read or write failed).
    Device,
    /// A block past the end of the device.
    OutOfRange,
    /// The device refuses writes (write-protected or read-only).
    ReadOnly,
    /// Any other error of the block layer, as it reported it.
    Blk(BlkError),
}

impl From<BlkError> for IoErrorKind {
    fn from(e: BlkError) -> Self {
        match e {
            BlkError::OutOfRange => IoErrorKind::OutOfRange,
            BlkError::ReadOnly => IoErrorKind::ReadOnly,
            other => IoErrorKind::Blk(other),
        }
    }
}

impl core::fmt::Display for IoErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IoErrorKind::Device => f.write_str("device error"),
            IoErrorKind::OutOfRange => f.write_str("past the end of the device"),
            IoErrorKind::ReadOnly => f.write_str("device is read-only"),
            IoErrorKind::Blk(e) => write!(f, "block layer error {e}"),
        }
    }
}

/// A device failure as the filesystem sees it: what went wrong, and the first block of the I/O
/// that failed (for a batch, of the failed part of it, when the device can tell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError {
    /// First block of the failed I/O.
    pub block: u64,
    /// What went wrong.
    pub kind: IoErrorKind,
}

impl IoError {
    /// An error of `kind` on the I/O starting at `block`.
    pub const fn new(block: u64, kind: IoErrorKind) -> Self {
        IoError { block, kind }
    }
}

/// A block device in filesystem blocks.
pub trait BlockIo {
    /// Device size in blocks of [`BLOCK_SIZE`].
    fn block_count(&self) -> u64;
    /// Reads `buf.len() / BLOCK_SIZE` contiguous blocks from `block` as one I/O and waits.
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Issues every run (each one I/O) together, plugged, and waits for all of them.
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError>;
    /// Starts writing `runs` (no ordering flags) and may return before they complete: the
    /// memory of `runs` must not change until [`BlockIo::wait_for`] on it or
    /// [`BlockIo::drain`] has returned. An error may be reported here or by either of those.
    /// Default: the waited [`BlockIo::write`].
    fn write_behind(&mut self, runs: &[Run<'_>]) -> Result<(), IoError> {
        self.write(runs, WriteFlags::NONE)
    }
    /// Waits for the writes started by `write_behind` whose memory overlaps `mem`.
    fn wait_for(&mut self, mem: &[u8]) -> Result<(), IoError> {
        let _ = mem;
        Ok(())
    }
    /// Waits for every write started by `write_behind`; the first error among them.
    fn drain(&mut self) -> Result<(), IoError> {
        Ok(())
    }
    /// Whether the device refuses writes (a read-write mount is then refused). Default: no.
    fn read_only(&self) -> bool {
        false
    }
}

pub(crate) fn check_range(count: u64, block: u64, bytes: usize) -> Result<u64, IoError> {
    let out = IoError::new(block, IoErrorKind::OutOfRange);
    if !bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(out);
    }
    let n = (bytes / BLOCK_SIZE) as u64;
    match block.checked_add(n) {
        Some(end) if end <= count => Ok(n),
        _ => Err(out),
    }
}

impl<T: BlockIo + ?Sized> BlockIo for &mut T {
    fn block_count(&self) -> u64 {
        (**self).block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        (**self).read(block, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        (**self).write(runs, flags)
    }
    fn write_behind(&mut self, runs: &[Run<'_>]) -> Result<(), IoError> {
        (**self).write_behind(runs)
    }
    fn wait_for(&mut self, mem: &[u8]) -> Result<(), IoError> {
        (**self).wait_for(mem)
    }
    fn drain(&mut self) -> Result<(), IoError> {
        (**self).drain()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
}
