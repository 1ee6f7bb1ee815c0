//! tinyfs: a tiny crash-consistent filesystem for small kernels.
//!
//! Copy-on-write with two alternating checksummed superblocks (`docs/tinyfs-format.md` for the
//! format, `docs/tinyfs.md` for the design and API). `no_std`, no heap: an [`Fs`] holds its
//! whole state in fixed-size arrays sized by const generics. All I/O goes through a
//! [`BlockIo`]; in a kernel that is [`blkdev::BlkDisk`], which turns every request into `blk`
//! bios.
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

pub use check::Problem;
pub use error::{FsError, IoOp, Result};
pub use format::{BLOCK_SIZE, Kind, NAME_MAX};
pub use fs::{
    BadSlot, DirEntry, Fallback, Fs, FsckStats, FsckStatus, Ino, MkfsOptions, Mode, MountOptions,
    MountReport, Stat, StatFs, WriteBuf,
};
pub use io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};
