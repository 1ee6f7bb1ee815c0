//! The filesystem's error type, apart from the crate root so that every module names it
//! without depending on the root that re-exports it.

use crate::io::{IoError, IoErrorKind};

/// The filesystem operation a device error happened in (see [`FsError::Io`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Reading a superblock slot (mount, fsck).
    ReadSuperblock,
    /// Reading an inode-table block (mount, fsck).
    ReadInodeTable,
    /// Reading file data (read, the partial blocks of a write, truncate, fsck).
    ReadData,
    /// Writing file data and waiting for it.
    WriteData,
    /// File data written behind (an append), reported by a later call.
    WriteBehind,
    /// Writing a commit's inode-table blocks.
    WriteInodeTable,
    /// Writing the commit record (the superblock, `PREFLUSH | FUA`).
    WriteSuperblock,
    /// Writing a new filesystem (mkfs).
    Format,
    /// Reading a tree node (format version 2).
    ReadNode,
    /// Writing a tree node (format version 2): before a commit, or early when the node cache
    /// is full of changed nodes.
    WriteNode,
}

impl IoOp {
    /// A short name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            IoOp::ReadSuperblock => "superblock read",
            IoOp::ReadInodeTable => "inode-table read",
            IoOp::ReadData => "data read",
            IoOp::WriteData => "data write",
            IoOp::WriteBehind => "written-behind data write",
            IoOp::WriteInodeTable => "inode-table write",
            IoOp::WriteSuperblock => "commit record (superblock) write",
            IoOp::Format => "mkfs write",
            IoOp::ReadNode => "tree node read",
            IoOp::WriteNode => "tree node write",
        }
    }
}

/// Filesystem errors.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    /// No such file or directory.
    NotFound,
    /// The name is taken.
    Exists,
    /// The directory is not empty.
    NotEmpty,
    /// A path component, or the target, is not a directory.
    NotDir,
    /// A directory where a file was needed.
    IsDir,
    /// No free blocks.
    NoSpace,
    /// No free inodes.
    NoInodes,
    /// A name longer than [`NAME_MAX`](crate::v1::NAME_MAX) (255 in version 2).
    NameTooLong,
    /// Empty, `.`, `..`, or containing `/` or NUL.
    InvalidName,
    /// Past the largest file size.
    FileTooLarge,
    /// A file needs more extents than an inode holds and could not be made contiguous.
    TooFragmented,
    /// On-disk data failed validation.
    Corrupt {
        /// The block it was found in.
        block: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// The device failed: in which operation, the first block of the failed I/O, and the
    /// device's error. A failed write fails the instance (see [`FsError::Failed`]).
    Io {
        /// What the filesystem was doing.
        op: IoOp,
        /// First block of the failed I/O.
        block: u64,
        /// The device's error.
        error: IoErrorKind,
    },
    /// An earlier write or cache flush failed, so changes made since the last durable commit
    /// may be lost; every operation that would change or commit the filesystem is refused
    /// (reads go on). Remount to recover: the filesystem then holds commit `durable` (or, if
    /// the failed commit record did reach the medium, commit `durable + 1`).
    Failed {
        /// Generation of the last commit the filesystem reported durable.
        durable: u64,
    },
    /// Mounted read-only.
    ReadOnly,
    /// The device refuses writes: a read-write mount of a read-only device, or a write the
    /// device refused as read-only (which fails the instance like any failed write).
    DeviceReadOnly,
    /// Not mounted.
    NotMounted,
    /// Already mounted.
    Busy,
    /// An argument makes no sense (e.g. moving a directory into itself, removing the root).
    InvalidArgument,
    /// The I/O buffer is not a multiple of 4096 bytes or smaller than 8 KiB.
    BufferTooSmall,
    /// The filesystem needs more than this instance was built for.
    Unsupported(&'static str),
    /// A data block read back does not match the checksum recorded when it was written
    /// (format version 2 with data checksums): the device block.
    DataChecksum {
        /// The device block whose contents changed.
        block: u64,
    },
}

impl core::fmt::Display for FsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FsError::Corrupt { block, what } => {
                write!(f, "corrupt filesystem (block {block}): {what}")
            }
            FsError::Unsupported(what) => write!(f, "unsupported: {what}"),
            FsError::Io { op, block, error } => {
                write!(f, "I/O error in {} at block {block}: {error}", op.name())
            }
            FsError::DataChecksum { block } => {
                write!(f, "data checksum mismatch in block {block}")
            }
            FsError::DeviceReadOnly => f.write_str("the device is read-only"),
            FsError::ReadOnly => f.write_str("the filesystem is mounted read-only"),
            FsError::Failed { durable } => write!(
                f,
                "filesystem failed after an I/O error: remount; last durable commit {durable}"
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

impl FsError {
    /// The error for a device failure `e` during `op`: a refused write to a read-only
    /// device is [`FsError::DeviceReadOnly`].
    #[cold]
    pub fn io(op: IoOp, e: IoError) -> FsError {
        match e.kind {
            IoErrorKind::ReadOnly => FsError::DeviceReadOnly,
            error => FsError::Io {
                op,
                block: e.block,
                error,
            },
        }
    }
}

/// Result of filesystem operations.
pub type Result<T> = core::result::Result<T, FsError>;
