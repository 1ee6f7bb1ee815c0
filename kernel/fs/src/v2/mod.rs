//! Format version 2 (`docs/tinyfs-v2.md`): one copy-on-write B+tree of items keyed by
//! `(id, kind, offset)`, with a node cache of fixed size and a superblock pair as the commit
//! record.
//!
//! This is the filesystem the crate's [`crate::Fs`] is (version 1 stays in [`crate::v1`] for
//! comparison). Everything here is `no_std` and heap-free: the node cache's frames are memory
//! the caller lends (over `blk`, part of the DMA region), and nothing grows with the size of
//! the disk or the number of items.

pub mod cache;
pub mod check;
pub mod file;
pub mod fs;
pub mod key;
pub mod log;
pub mod names;
pub mod node;
pub mod space;
pub mod superblock;
pub mod tree;
pub mod volume;

pub use cache::{CacheStats, MIN_FRAMES, NodeCache};
pub use file::WriteBuf;
pub use fs::{DirEntry, Fs, Ino, Stat, StatFs};
pub use key::Key;
pub use space::Space;
pub use superblock::Superblock;
pub use tree::{MountInfo, Tree};
pub use volume::{Entry, Inode, Kind, Volume};

#[cfg(test)]
mod tests;
