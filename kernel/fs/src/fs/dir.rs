//! Names and directories: path lookup, create, mkdir, stat, readdir, unlink, rmdir and rename.
//! A directory is the set of inodes whose `parent` names it.

use super::{Fs, Ino};
use crate::error::{FsError, Result};
use crate::format::{BLOCK_SIZE, INODES_PER_BLOCK, Inode, Kind, NAME_MAX, ROOT_INO, check_name};
use crate::io::BlockIo;

/// Result of [`Fs::stat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Data blocks allocated.
    pub blocks: u64,
    /// Generation of the commit that last changed the inode.
    pub mtime_gen: u64,
}

/// Result of [`Fs::statfs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes per block.
    pub block_size: u32,
    /// Filesystem size in blocks.
    pub blocks: u64,
    /// Blocks that can be allocated now.
    pub free_blocks: u64,
    /// Inode slots, root included.
    pub inodes: u32,
    /// Free inode slots.
    pub free_inodes: u32,
    /// Generation of the last durable commit.
    pub generation: u64,
    /// Longest name.
    pub name_max: u32,
}

/// One directory entry from [`Fs::readdir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    name_len: u8,
    name: [u8; NAME_MAX],
}

impl DirEntry {
    /// The name bytes.
    pub fn name(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(NAME_MAX)]
    }
}

impl<D: BlockIo, const IB: usize, const BW: usize> Fs<'_, D, IB, BW> {
    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        (1..self.ninodes()).find(|&i| {
            let n = self.inode(i);
            n.kind != Kind::Free && n.parent == dir && n.name() == name
        })
    }

    fn components(path: &str) -> impl Iterator<Item = &[u8]> {
        path.as_bytes()
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
    }

    fn check_path(path: &str) -> Result<()> {
        Self::components(path).try_for_each(check_name)
    }

    fn resolve(&self, path: &str) -> Result<u32> {
        Self::check_path(path)?;
        let mut cur = ROOT_INO;
        for c in Self::components(path) {
            check_name(c)?;
            if self.inode(cur).kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            cur = self.child(cur, c).ok_or(FsError::NotFound)?;
        }
        Ok(cur)
    }

    /// The directory a path's last component lives in, and that component.
    fn resolve_parent<'p>(&self, path: &'p str) -> Result<(u32, &'p [u8])> {
        Self::check_path(path)?;
        let mut it = Self::components(path).peekable();
        let mut cur = ROOT_INO;
        while let Some(c) = it.next() {
            check_name(c)?;
            if it.peek().is_none() {
                if self.inode(cur).kind != Kind::Dir {
                    return Err(FsError::NotDir);
                }
                return Ok((cur, c));
            }
            if self.inode(cur).kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            cur = self.child(cur, c).ok_or(FsError::NotFound)?;
        }
        Err(FsError::InvalidName)
    }

    fn new_inode(&mut self, parent: u32, name: &[u8], kind: Kind) -> Result<u32> {
        if self.child(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        let ino = (1..self.ninodes())
            .find(|&i| self.inode(i).kind == Kind::Free)
            .ok_or(FsError::NoInodes)?;
        let mut n = Inode::FREE;
        n.kind = kind;
        n.parent = parent;
        n.name_len = name.len() as u8;
        n.name[..name.len()].copy_from_slice(name);
        self.set_inode(ino, n);
        Ok(ino)
    }

    /// Creates an empty file; `Exists` if the name is taken.
    pub fn create(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.new_inode(dir, name, Kind::File).map(Ino)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.new_inode(dir, name, Kind::Dir).map(Ino)
    }

    /// Looks a path up (file or directory).
    pub fn open(&self, path: &str) -> Result<Ino> {
        self.mounted()?;
        self.resolve(path).map(Ino)
    }

    /// Stat of an inode.
    pub fn stat(&self, ino: Ino) -> Result<Stat> {
        self.mounted()?;
        let n = self.inode(ino.0);
        if n.kind == Kind::Free || ino.0 >= self.ninodes() {
            return Err(FsError::NotFound);
        }
        Ok(Stat {
            ino,
            kind: n.kind,
            size: n.size,
            blocks: n.mapped_blocks(),
            mtime_gen: n.mtime_gen,
        })
    }

    /// Stat of a path.
    pub fn stat_path(&self, path: &str) -> Result<Stat> {
        let ino = self.open(path)?;
        self.stat(ino)
    }

    /// Filesystem counts.
    pub fn statfs(&self) -> Result<StatFs> {
        self.mounted()?;
        let free_inodes = (1..self.ninodes())
            .filter(|&i| self.inode(i).kind == Kind::Free)
            .count() as u32;
        Ok(StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: self.sb.block_count,
            free_blocks: self.free_blocks().saturating_sub(self.reserve()),
            inodes: self.ninodes(),
            free_inodes,
            generation: self.sb.generation,
            name_max: NAME_MAX as u32,
        })
    }

    /// The entry after position `cookie` in directory `dir` (start with 0), and the cookie of
    /// the next call; `None` at the end.
    pub fn readdir(&self, dir: Ino, cookie: u32) -> Result<Option<(DirEntry, u32)>> {
        self.mounted()?;
        let d = self.inode(dir.0);
        if d.kind == Kind::Free {
            return Err(FsError::NotFound);
        }
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        for i in cookie.max(1)..self.ninodes() {
            let n = self.inode(i);
            if n.kind != Kind::Free && n.parent == dir.0 {
                let e = DirEntry {
                    ino: Ino(i),
                    kind: n.kind,
                    size: n.size,
                    name_len: n.name_len,
                    name: n.name,
                };
                return Ok(Some((e, i + 1)));
            }
        }
        Ok(None)
    }

    fn remove(&mut self, ino: u32) {
        let n = self.inode(ino);
        for e in n.extents() {
            Self::free_range(&mut self.used, e.phys, e.len as u64);
        }
        let i = ino as usize;
        if let Some(slot) = self
            .inodes
            .get_mut(i / INODES_PER_BLOCK)
            .and_then(|b| b.get_mut(i % INODES_PER_BLOCK))
        {
            *slot = Inode::FREE;
            self.dirty |= 1 << (i / INODES_PER_BLOCK);
        }
    }

    fn has_children(&self, dir: u32) -> bool {
        (1..self.ninodes()).any(|i| {
            let n = self.inode(i);
            n.kind != Kind::Free && n.parent == dir
        })
    }

    /// Removes a file.
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let ino = self.resolve(path)?;
        self.file(Ino(ino))?;
        self.remove(ino);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let ino = self.resolve(path)?;
        if ino == ROOT_INO {
            return Err(FsError::InvalidArgument);
        }
        if self.inode(ino).kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.has_children(ino) {
            return Err(FsError::NotEmpty);
        }
        self.remove(ino);
        Ok(())
    }

    /// Moves `from` to `to`, atomically replacing a file (or an empty directory, when `from`
    /// is a directory) already at `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let src = self.resolve(from)?;
        if src == ROOT_INO {
            return Err(FsError::InvalidArgument);
        }
        let (dir, name) = self.resolve_parent(to)?;
        let sn = self.inode(src);
        if sn.kind == Kind::Dir {
            // The destination directory must not be inside the moved one.
            let mut cur = dir;
            for _ in 0..=self.ninodes() {
                if cur == src {
                    return Err(FsError::InvalidArgument);
                }
                if cur == ROOT_INO {
                    break;
                }
                cur = self.inode(cur).parent;
            }
        }
        if let Some(dst) = self.child(dir, name) {
            if dst == src {
                return Ok(());
            }
            let dn = self.inode(dst);
            match (sn.kind, dn.kind) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if self.has_children(dst) => return Err(FsError::NotEmpty),
                _ => {}
            }
            self.remove(dst);
        }
        let mut n = sn;
        n.parent = dir;
        n.name = [0; NAME_MAX];
        n.name_len = name.len() as u8;
        n.name[..name.len()].copy_from_slice(name);
        self.set_inode(src, n);
        Ok(())
    }
}
