//! What mount and fsck tell their caller: which generation they used, whether (and why) they
//! passed over a newer superblock, and fsck's counts and verdict.
//!
//! Two superblock slots hold the newest commit and the one before it. Mount uses the newest
//! superblock whose tree validates; using an older one is a *fallback*, and it is never silent:
//!
//! - **Torn superblock** ([`Fallback::TornSuperblock`]): the newest slot fails validation (its
//!   header claims a newer generation, or is unreadable) and the other slot's tree is intact.
//!   This is the crash the two slots exist for: the commit record write was interrupted, so
//!   that commit was never reported durable. Mount goes on read-write if asked; the next
//!   commit rewrites the slot.
//! - **Corrupt newer tree** ([`Fallback::CorruptTree`]): the newest superblock is valid but a
//!   block of its tree is not, and the previous generation's tree is intact. Using the older
//!   tree loses the newest commit, and writing to it would overwrite the newer tree's blocks for
//!   good, so mount is read-only unless the caller accepts the rollback
//!   ([`MountOptions::accept_rollback`]).

use super::Mode;

/// Parameters of [`super::Fs::mount_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Mount read-only (nothing is ever written).
    pub read_only: bool,
    /// Mount read-write even when the newest generation's tree is corrupt and an older one is
    /// used ([`Fallback::CorruptTree`]); the next commit then makes the rollback permanent.
    /// Without it such a mount is read-only.
    pub accept_rollback: bool,
}

/// A superblock slot that failed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSlot {
    /// The slot (block 0 or 1).
    pub slot: u64,
    /// The generation its header claims, when magic, kind and slot parity are right (the
    /// checksum or another field failed); `None` when the header is unreadable.
    pub claimed: Option<u64>,
    /// What failed.
    pub what: &'static str,
}

/// Why mount (or fsck) used an older generation than the newest superblock on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The newest superblock slot is unreadable: a torn commit record write (or a damaged
    /// newest superblock, which looks the same).
    TornSuperblock(BadSlot),
    /// The newest superblock is valid, but a block of its tree is not.
    CorruptTree {
        /// Generation of the superblock passed over.
        generation: u64,
        /// The first block of its tree that failed.
        block: u64,
        /// The inode, when the problem is about one.
        ino: Option<u32>,
        /// What was wrong.
        what: &'static str,
    },
}

impl Fallback {
    /// The generation passed over, when known.
    pub fn generation(&self) -> Option<u64> {
        match self {
            Fallback::TornSuperblock(s) => s.claimed,
            Fallback::CorruptTree { generation, .. } => Some(*generation),
        }
    }
}

impl core::fmt::Display for Fallback {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Fallback::TornSuperblock(s) => {
                write!(f, "newest superblock (slot {}", s.slot)?;
                if let Some(g) = s.claimed {
                    write!(f, ", generation {g}")?;
                }
                write!(f, ") unreadable: {} (torn commit record write)", s.what)
            }
            Fallback::CorruptTree {
                generation,
                block,
                ino,
                what,
            } => {
                write!(f, "generation {generation} is corrupt: block {block}")?;
                if let Some(i) = ino {
                    write!(f, ", inode {i}")?;
                }
                write!(f, ": {what}")
            }
        }
    }
}

/// What [`super::Fs::mount`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountReport {
    /// The generation mounted.
    pub generation: u64,
    /// How it is mounted: read-only when asked, or after a [`Fallback::CorruptTree`] that was
    /// not accepted.
    pub mode: Mode,
    /// Set when a newer superblock was passed over, with the reason.
    pub fell_back_from: Option<Fallback>,
    /// The older superblock slot, when it fails validation (the newest is fine; the next
    /// commit rewrites it).
    pub damaged_older: Option<BadSlot>,
}

impl MountReport {
    /// Whether the mount is read-only because a rollback was not accepted although a
    /// read-write mount was asked for.
    pub fn rollback_refused(&self, asked: MountOptions) -> bool {
        !asked.read_only
            && self.mode == Mode::ReadOnly
            && matches!(self.fell_back_from, Some(Fallback::CorruptTree { .. }))
    }
}

impl core::fmt::Display for MountReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mode = match self.mode {
            Mode::ReadOnly => "read-only",
            Mode::ReadWrite => "read-write",
            Mode::Unmounted => "unmounted",
        };
        write!(f, "generation {} {mode}", self.generation)?;
        if let Some(fb) = &self.fell_back_from {
            write!(f, "; FELL BACK from the newest superblock: {fb}")?;
        }
        if let Some(s) = &self.damaged_older {
            write!(
                f,
                "; older superblock (slot {}) damaged: {}",
                s.slot, s.what
            )?;
        }
        Ok(())
    }
}

/// fsck's verdict, worst first; [`FsckStatus::code`] is the exit status of
/// `cargo xtask fsck`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsckStatus {
    /// No problem.
    #[default]
    Clean,
    /// The generation that mounts has problems, none mounts, or a metadata block the mounting
    /// generation does not need fails validation (a damaged older superblock).
    Corrupt,
    /// The newest superblock is torn or unreadable; the previous generation is intact and
    /// mounts read-write (the lost commit was never reported durable).
    RolledBackTorn,
    /// The newest generation's tree is corrupt; the previous generation is intact and mounts
    /// read-only unless the rollback is accepted.
    RolledBackCorrupt,
}

impl FsckStatus {
    /// Exit status: 0 clean, 1 corrupt, 2 fell back past a torn newest superblock, 3 fell
    /// back past a corrupt newest tree.
    pub const fn code(self) -> u8 {
        match self {
            FsckStatus::Clean => 0,
            FsckStatus::Corrupt => 1,
            FsckStatus::RolledBackTorn => 2,
            FsckStatus::RolledBackCorrupt => 3,
        }
    }
}

/// Counts and verdict from [`super::Fs::fsck`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckStats {
    /// Problems reported (every metadata block that failed, the fallback's reasons included).
    pub problems: u32,
    /// The verdict.
    pub status: FsckStatus,
    /// Generation checked (the one that mounts).
    pub generation: u64,
    /// Filesystem size in blocks, from its superblock.
    pub block_count: u64,
    /// Files.
    pub files: u32,
    /// Directories (root included).
    pub dirs: u32,
    /// Blocks in use (superblocks, inode table, data).
    pub used_blocks: u64,
    /// Set when a newer superblock was passed over.
    pub fell_back_from: Option<Fallback>,
    /// Set when the older superblock slot fails validation.
    pub damaged_older: Option<BadSlot>,
}
