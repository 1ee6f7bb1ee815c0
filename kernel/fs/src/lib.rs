//! tinyfs: a tiny crash-consistent filesystem for small kernels.
//!
//! Copy-on-write with two alternating checksummed superblocks (`docs/tinyfs-format.md` for the
//! format, `docs/tinyfs.md` and `docs/tinyfs-v2.md` for the design and API). `no_std`, no heap.
//! The crate's [`Fs`] is format version 2 ([`v2::Fs`]: one copy-on-write B+tree, on-disk free
//! space, memory lent by the caller); format version 1 stays as [`v1`] (an instance holds its
//! whole state in fixed-size arrays sized by const generics), so the two can be compared. All
//! I/O goes through a [`BlockIo`]; in a kernel that is [`blkdev::BlkDisk`], which turns every
//! request into `blk` bios.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bitmap;
pub mod blkdev;
pub mod check;
pub mod crc;
mod error;
pub mod extent;
pub mod format;
mod fs;
pub mod io;
pub mod v2;

#[cfg(any(test, feature = "std"))]
pub mod host;

#[cfg(test)]
mod tests;

pub use error::{FsError, IoOp, Result};
pub use format::{BLOCK_SIZE, Kind};
pub use io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
pub use v2::{DirEntry, Fs, Ino, MountInfo, Stat, StatFs, WriteBuf};

/// Format version 1 (`docs/tinyfs.md`): the whole inode table and the bitmaps in memory, 56-byte
/// names, 11 extents a file. Kept beside version 2 for its tests and for side-by-side
/// benchmarks; its images are not mountable by version 2.
pub mod v1 {
    pub use crate::check::Problem;
    pub use crate::error::{FsError, IoOp, Result};
    pub use crate::format::{BLOCK_SIZE, Kind, NAME_MAX};
    pub use crate::fs::{
        BadSlot, DirEntry, Fallback, Fs, FsckStats, FsckStatus, Ino, MkfsOptions, Mode,
        MountOptions, MountReport, Stat, StatFs, WriteBuf,
    };
    pub use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
}
