//! Paths and the version-1 API on a version-2 volume: [`Fs`] has the method names and
//! semantics of [`crate::Fs`] (`create`, `mkdir`, `open`, `stat`, `stat_path`, `statfs`,
//! `readdir`, `unlink`, `rmdir`, `rename`, `read`, `write`, `write_buffer`, `append`,
//! `truncate`, `fsync`, `sync`; and `read_buffer`, a zero-copy read), so a caller switches by
//! changing types. What differs: mounting is a constructor ([`Fs::mount`] takes the device
//! and memory and returns the instance, [`Fs::mkfs`] is an associated function), inode numbers
//! are 64-bit and never reused, directory cookies are 64-bit, and [`Stat`] carries the
//! caller's clock instead of a commit generation.

use super::file::WriteBuf;
use super::key::{Key, kind};
use super::tree::MountInfo;
use super::volume::{self, Volume};
use crate::error::{FsError, Result};
use crate::format::{BLOCK_SIZE, Kind};
use crate::io::BlockIo;

/// An inode number (64-bit, never reused while the filesystem exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(volume::ROOT);
}

/// Result of [`Fs::stat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Data blocks allocated (counted over the file's extent items).
    pub blocks: u64,
    /// Links: 1 for a file, 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Last change of the contents, by the clock of [`Fs::set_clock`].
    pub mtime: u64,
    /// Last change of the inode.
    pub ctime: u64,
}

/// Result of [`Fs::statfs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes per block.
    pub block_size: u32,
    /// Filesystem size in blocks.
    pub blocks: u64,
    /// Blocks that can be allocated now (frees count after the next commit).
    pub free_blocks: u64,
    /// Inode numbers handed out so far (there is no inode table: files are limited by space).
    pub inodes_used: u64,
    /// Generation of the last durable commit.
    pub generation: u64,
    /// Longest name.
    pub name_max: u32,
}

/// One directory entry from [`Fs::readdir`].
#[derive(Clone, Copy, Debug)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    entry: volume::Entry,
}

impl DirEntry {
    /// The name bytes.
    pub fn name(&self) -> &[u8] {
        self.entry.name()
    }
}

fn kind_of(k: volume::Kind) -> Kind {
    match k {
        volume::Kind::File => Kind::File,
        volume::Kind::Dir => Kind::Dir,
    }
}

fn components(path: &str) -> impl Iterator<Item = &[u8]> {
    path.as_bytes()
        .split(|&c| c == b'/')
        .filter(|c| !c.is_empty())
}

/// A version-2 filesystem with the path API of version 1, over device `D` with `N` node
/// frames and `G` cached free-space groups.
pub struct Fs<'b, D: BlockIo, const N: usize, const G: usize> {
    vol: Volume<'b, D, N, G>,
    read_only: bool,
}

impl<D: BlockIo, const N: usize, const G: usize> core::fmt::Debug for Fs<'_, D, N, G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fs")
            .field("vol", &self.vol)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl<'b, D: BlockIo, const N: usize, const G: usize> Fs<'b, D, N, G> {
    /// Writes an empty filesystem on the whole device (see [`Volume::mkfs`]); `mem` holds
    /// [`volume::volume_frames`]`(N, G)` blocks.
    pub fn mkfs(dev: &mut D, mem: &mut [u8], group_blocks: u32, now: u64) -> Result<()> {
        Volume::<D, N, G>::mkfs(dev, mem, group_blocks, now)
    }

    /// [`Fs::mkfs`] with data checksums when `data_checksums` (see [`Volume::mkfs_with`]).
    pub fn mkfs_with(
        dev: &mut D,
        mem: &mut [u8],
        group_blocks: u32,
        now: u64,
        data_checksums: bool,
    ) -> Result<()> {
        Volume::<D, N, G>::mkfs_with(dev, mem, group_blocks, now, data_checksums)
    }

    /// Mounts the filesystem on `dev` (read-only as asked, or as [`MountInfo::rolled_back`]
    /// forces); `mem` holds [`volume::volume_frames`]`(N, G)` blocks.
    pub fn mount(dev: D, mem: &'b mut [u8], read_only: bool) -> Result<(Self, MountInfo)> {
        let (vol, info) = Volume::mount(dev, mem, read_only)?;
        let read_only = read_only || info.rolled_back;
        Ok((Fs { vol, read_only }, info))
    }

    /// The volume underneath (the inode-and-name API).
    pub fn volume(&mut self) -> &mut Volume<'b, D, N, G> {
        &mut self.vol
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        self.vol.device()
    }

    /// Generation of the last durable commit.
    pub fn generation(&self) -> u64 {
        self.vol.tree.generation()
    }

    /// Sets the clock new timestamps are taken from.
    pub fn set_clock(&mut self, now: u64) {
        self.vol.set_clock(now);
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    fn resolve(&mut self, path: &str) -> Result<(u64, volume::Kind)> {
        let mut cur = (volume::ROOT, volume::Kind::Dir);
        for c in components(path) {
            cur = self.vol.lookup(cur.0, c)?;
        }
        Ok(cur)
    }

    /// The directory a path's last component lives in, and that component.
    fn resolve_parent<'p>(&mut self, path: &'p str) -> Result<(u64, &'p [u8])> {
        let mut it = components(path).peekable();
        let mut cur = volume::ROOT;
        while let Some(c) = it.next() {
            if it.peek().is_none() {
                return Ok((cur, c));
            }
            cur = self.vol.lookup(cur, c)?.0;
        }
        Err(FsError::InvalidName)
    }

    /// Creates an empty file; `Exists` if the name is taken.
    pub fn create(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.vol.create(dir, name, volume::Kind::File).map(Ino)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.vol.create(dir, name, volume::Kind::Dir).map(Ino)
    }

    /// Looks a path up (file or directory).
    pub fn open(&mut self, path: &str) -> Result<Ino> {
        self.resolve(path).map(|(i, _)| Ino(i))
    }

    /// Data blocks of `ino` (a walk over its extent items).
    fn blocks(&mut self, ino: u64) -> Result<u64> {
        let mut b = [0u8; 16];
        let mut from = Key::new(ino, kind::EXTENT, 0);
        let mut total = 0u64;
        while let Some((k, n)) = self.vol.tree.next(&mut self.vol.dev, &from, &mut b)? {
            if k.id != ino || k.kind != kind::EXTENT || n != 16 {
                break;
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&b[..8]);
            total += k.offset.saturating_sub(u64::from_le_bytes(s));
            match k.successor() {
                Some(s) => from = s,
                None => break,
            }
        }
        Ok(total)
    }

    /// Stat of an inode.
    pub fn stat(&mut self, ino: Ino) -> Result<Stat> {
        let i = self.vol.stat(ino.0)?;
        let blocks = match i.kind {
            volume::Kind::File => self.blocks(ino.0)?,
            volume::Kind::Dir => 0,
        };
        Ok(Stat {
            ino,
            kind: kind_of(i.kind),
            size: i.size,
            blocks,
            nlink: i.nlink,
            mtime: i.mtime,
            ctime: i.ctime,
        })
    }

    /// Stat of a path.
    pub fn stat_path(&mut self, path: &str) -> Result<Stat> {
        let ino = self.open(path)?;
        self.stat(ino)
    }

    /// Filesystem counts.
    pub fn statfs(&mut self) -> Result<StatFs> {
        let sb = self.vol.superblock();
        Ok(StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: sb.block_count,
            free_blocks: self.vol.space.allocatable(),
            inodes_used: sb.next_ino - volume::ROOT,
            generation: self.generation(),
            name_max: volume::NAME_MAX as u32,
        })
    }

    /// The entry at or after position `cookie` in directory `dir` (start with 0), and the
    /// cookie of the next call; `None` at the end. Entries come in name-hash order.
    pub fn readdir(&mut self, dir: Ino, cookie: u64) -> Result<Option<(DirEntry, u64)>> {
        if self.vol.stat(dir.0)?.kind != volume::Kind::Dir {
            return Err(FsError::NotDir);
        }
        let Some((e, next)) = self.vol.readdir(dir.0, cookie)? else {
            return Ok(None);
        };
        let size = self.vol.stat(e.ino)?.size;
        Ok(Some((
            DirEntry {
                ino: Ino(e.ino),
                kind: kind_of(e.kind),
                size,
                entry: e,
            },
            next,
        )))
    }

    /// Removes a file (`IsDir` for a directory).
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        if self.vol.lookup(dir, name)?.1 == volume::Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.vol.remove(dir, name)
    }

    /// Removes an empty directory (`NotDir` for a file, `NotEmpty` if it has entries).
    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        if self.vol.lookup(dir, name)?.1 != volume::Kind::Dir {
            return Err(FsError::NotDir);
        }
        self.vol.remove(dir, name)
    }

    /// Moves `from` to `to`, atomically replacing a file (or an empty directory, when `from`
    /// is a directory) already at `to`; the source is looked up first, then the target's
    /// directory.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.writable()?;
        let (fdir, fname) = self.resolve_parent(from)?;
        self.vol.lookup(fdir, fname)?;
        let (tdir, tname) = self.resolve_parent(to)?;
        self.vol.rename(fdir, fname, tdir, tname)
    }

    /// Reads from `off`; returns the bytes read (short at end of file).
    pub fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> Result<usize> {
        self.vol.read(ino.0, off, out)
    }

    /// Writes `data` at `off` (past the end and into holes included); short only when space
    /// ran out after the first block.
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        if data.is_empty() {
            self.vol.stat(ino.0)?;
            return Ok(0);
        }
        self.vol.write(ino.0, off, data)
    }

    /// Lends the data buffer for a zero-copy write of (a first part of) `len` bytes at `off`
    /// (see [`Volume::write_buffer`]): fill [`WriteBuf::buf`], then [`WriteBuf::commit`];
    /// continue from `off + WriteBuf::len()`.
    pub fn write_buffer(
        &mut self,
        ino: Ino,
        off: u64,
        len: usize,
    ) -> Result<WriteBuf<'_, 'b, D, N, G>> {
        self.writable()?;
        self.vol.write_buffer(ino.0, off, len)
    }

    /// Lends the data buffer holding (a first part of) `len` bytes of the file from `off`, a
    /// zero-copy read (see [`Volume::read_buffer`]); empty at the end of the file.
    pub fn read_buffer(&mut self, ino: Ino, off: u64, len: usize) -> Result<&[u8]> {
        self.vol.read_buffer(ino.0, off, len)
    }

    /// Appends `data`; returns the offset it was written at.
    pub fn append(&mut self, ino: Ino, data: &[u8]) -> Result<u64> {
        self.writable()?;
        let off = self.vol.stat(ino.0)?.size;
        self.write(ino, off, data)?;
        Ok(off)
    }

    /// Sets the size: shrinking frees blocks past the end, growing leaves a hole.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<()> {
        self.writable()?;
        self.vol.truncate(ino.0, size)
    }

    /// Makes a file's data and inode durable: one log block after its data when the file
    /// existed at the last commit, a commit otherwise ([`Volume::fsync`]); names changed since
    /// the last commit need [`Fs::sync`]. `IsDir` for a directory.
    pub fn fsync(&mut self, ino: Ino) -> Result<()> {
        self.writable()?;
        self.vol.fsync_file(ino.0)
    }

    /// Commits every change: on return every change made before is durable.
    pub fn sync(&mut self) -> Result<()> {
        self.writable()?;
        self.vol.sync()
    }

    /// Commits and gives the device back.
    pub fn unmount(mut self) -> Result<D> {
        if !self.read_only {
            self.vol.sync()?;
        }
        Ok(self.vol.dev)
    }
}
