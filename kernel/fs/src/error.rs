//! The filesystem's error type, apart from the crate root so that every module names it
//! without depending on the root that re-exports it.

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
    /// A name longer than [`NAME_MAX`](crate::NAME_MAX).
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
    /// The device failed (the filesystem refuses further changes until remounted).
    Io,
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
}

impl core::fmt::Display for FsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FsError::Corrupt { block, what } => {
                write!(f, "corrupt filesystem (block {block}): {what}")
            }
            FsError::Unsupported(what) => write!(f, "unsupported: {what}"),
            FsError::Failed { durable } => write!(
                f,
                "filesystem failed after an I/O error: remount; last durable commit {durable}"
            ),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Result of filesystem operations.
pub type Result<T> = core::result::Result<T, FsError>;
