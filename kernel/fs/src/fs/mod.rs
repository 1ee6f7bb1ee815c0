//! The filesystem: an [`Fs`] instance, its state and the inode-table accessors every part
//! uses. The operations live beside it, one concept per file: `mount` (mkfs, mount, fsck,
//! unmount), `alloc` (block allocation), `dir` (names and directories), `file` (file data,
//! zero-copy writes) and `commit` (the copy-on-write superblock flip); `report` holds what
//! mount and fsck tell their caller.

mod alloc;
mod commit;
mod dir;
mod file;
mod mount;
mod report;

use crate::bitmap::Bitmap;
use crate::error::{FsError, IoOp, Result};
use crate::format::{
    BLOCK_SIZE, Block, INODES_PER_BLOCK, Inode, Kind, MAX_INODE_BLOCKS, ROOT_INO, SUPER_BLOCKS,
    Superblock,
};
use crate::io::{BlockIo, IoError};

pub use dir::{DirEntry, Stat, StatFs};
pub use file::WriteBuf;
pub use mount::MkfsOptions;
pub use report::{BadSlot, Fallback, FsckStats, FsckStatus, MountOptions, MountReport};

const BS: u64 = BLOCK_SIZE as u64;

/// An inode number: the handle of an open file or directory.
///
/// Handles are plain inode numbers: after `unlink`, a handle to the removed file may later name
/// a new file that reuses the slot. Callers close (forget) handles of files they unlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u32);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(ROOT_INO);
}

/// How the filesystem is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not mounted.
    Unmounted,
    /// Read-write.
    ReadWrite,
    /// Read-only: every change fails with `ReadOnly`, nothing is written.
    ReadOnly,
}

/// A tinyfs instance over device `D`.
///
/// `IB` is the most inode-table blocks this instance can hold (15 inodes each, ≤ 64); `BW` the
/// words of its block bitmaps (it handles filesystems up to `64 * BW` blocks). Everything lives
/// inside the struct: place it in a `static` (it has a `const fn new`) or on a large enough
/// stack. The buffer given to [`Fs::new`] is the only memory I/O is done to (it must be DMA-able
/// in a kernel); its size, a multiple of 4096 of at least 8 KiB, bounds the largest single I/O.
pub struct Fs<'b, D: BlockIo, const IB: usize, const BW: usize> {
    dev: D,
    buf: &'b mut [u8],
    sb: Superblock,
    inodes: [[Inode; INODES_PER_BLOCK]; IB],
    dirty: u64,
    used: Bitmap<BW>,
    pinned: Bitmap<BW>,
    cursor: u64,
    mode: Mode,
    failed: bool,
    /// Buffer offset where the next write-behind chunk goes (see [`Fs::write`]).
    ring: usize,
}

/// A map_err adapter: a device error during `op`.
fn io(op: IoOp) -> impl FnOnce(IoError) -> FsError {
    move |e| FsError::io(op, e)
}

fn block_mut(buf: &mut [u8], i: usize) -> Result<&mut Block> {
    buf.get_mut(i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE)
        .and_then(|s| s.try_into().ok())
        .ok_or(FsError::BufferTooSmall)
}

impl<'b, D: BlockIo, const IB: usize, const BW: usize> Fs<'b, D, IB, BW> {
    /// An unmounted instance over `dev`, doing I/O through `buf`.
    pub const fn new(dev: D, buf: &'b mut [u8]) -> Self {
        Fs {
            dev,
            buf,
            sb: Superblock {
                generation: 0,
                block_count: 0,
                inode_blocks: 0,
                table: [0; MAX_INODE_BLOCKS],
            },
            inodes: [[Inode::FREE; INODES_PER_BLOCK]; IB],
            dirty: 0,
            used: Bitmap::new(),
            pinned: Bitmap::new(),
            cursor: SUPER_BLOCKS,
            mode: Mode::Unmounted,
            failed: false,
            ring: 0,
        }
    }

    /// Waits for the data writes [`Fs::write`] left in flight. Done before anything that reads
    /// the device, reuses the buffer from its start, frees blocks, or commits; an error among
    /// those writes fails the instance (changes are refused until it is mounted again).
    fn quiesce(&mut self) -> Result<()> {
        self.ring = 0;
        if let Err(e) = self.dev.drain() {
            self.failed = true;
            return Err(FsError::io(IoOp::WriteBehind, e));
        }
        Ok(())
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Gives the device back.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// How the filesystem is mounted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Generation of the last durable commit.
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }

    /// When a write or cache flush failed (see [`FsError::Failed`]): the generation of the
    /// commit that was lost, one past [`Fs::generation`]. `None` while the instance works.
    pub fn lost_generation(&self) -> Option<u64> {
        (self.mode != Mode::Unmounted && self.failed).then_some(self.sb.generation + 1)
    }

    fn cap_blocks(&self) -> u64 {
        (self.buf.len() / BLOCK_SIZE) as u64
    }

    fn check_buf(&self) -> Result<()> {
        if !self.buf.len().is_multiple_of(BLOCK_SIZE) || self.buf.len() < 2 * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        Ok(())
    }

    fn mounted(&self) -> Result<()> {
        match self.mode {
            Mode::Unmounted => Err(FsError::NotMounted),
            _ => Ok(()),
        }
    }

    fn writable(&self) -> Result<()> {
        match self.mode {
            Mode::Unmounted => Err(FsError::NotMounted),
            Mode::ReadOnly => Err(FsError::ReadOnly),
            Mode::ReadWrite if self.failed => Err(FsError::Failed {
                durable: self.sb.generation,
            }),
            Mode::ReadWrite => Ok(()),
        }
    }

    fn inode(&self, ino: u32) -> Inode {
        let i = ino as usize;
        self.inodes
            .get(i / INODES_PER_BLOCK)
            .and_then(|b| b.get(i % INODES_PER_BLOCK))
            .copied()
            .unwrap_or(Inode::FREE)
    }

    fn set_inode(&mut self, ino: u32, mut n: Inode) {
        let i = ino as usize;
        n.mtime_gen = self.sb.generation + 1;
        if let Some(slot) = self
            .inodes
            .get_mut(i / INODES_PER_BLOCK)
            .and_then(|b| b.get_mut(i % INODES_PER_BLOCK))
        {
            *slot = n;
            self.dirty |= 1 << (i / INODES_PER_BLOCK);
        }
    }

    fn ninodes(&self) -> u32 {
        self.sb.inode_count() as u32
    }

    fn file(&self, ino: Ino) -> Result<Inode> {
        let n = self.inode(ino.0);
        match n.kind {
            Kind::File if ino.0 < self.ninodes() => Ok(n),
            Kind::Dir => Err(FsError::IsDir),
            _ => Err(FsError::NotFound),
        }
    }
}
