//! File data on the tree: extent items `(ino, EXTENT, end)` whose value is the first file
//! block and the first device block (`end` exclusive, so the extent covering file block `b` is
//! the first item at or after `(ino, EXTENT, b + 1)`). A write puts every block it touches in
//! a newly allocated block and splits or merges at most three extent items for it, so a random
//! overwrite changes O(log n) metadata blocks and never the rest of the file. Data goes
//! through the volume's one-block buffer (a copying path, one block per I/O; run allocation
//! and the zero-copy paths are not built yet).

use super::key::{Key, kind};
use super::space::Space;
use super::volume::{Kind, Volume};
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, Run, WriteFlags};

const EXTENT_SIZE: usize = 16;
/// Largest file, in blocks (the largest filesystem).
pub const MAX_FILE_BLOCKS: u64 = 1 << 32;
const BS: u64 = BLOCK_SIZE as u64;

fn rd64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn corrupt(what: &'static str) -> FsError {
    FsError::Corrupt { block: 0, what }
}

impl<D: BlockIo, const N: usize, const G: usize> Volume<'_, D, N, G> {
    /// The extent covering file block `fb` of `ino`: `(start, end, device block of start)`.
    fn extent_at(&mut self, ino: u64, fb: u64) -> Result<Option<(u64, u64, u64)>> {
        let mut b = [0u8; EXTENT_SIZE];
        let from = Key::new(ino, kind::EXTENT, fb + 1);
        match self.tree.next(&mut self.dev, &from, &mut b)? {
            Some((k, n)) if k.id == ino && k.kind == kind::EXTENT => {
                if n != EXTENT_SIZE {
                    return Err(corrupt("extent item of the wrong size"));
                }
                let (start, phys) = (rd64(&b, 0), rd64(&b, 8));
                if start >= k.offset || phys.checked_add(k.offset - start).is_none() {
                    return Err(corrupt("extent out of range"));
                }
                Ok((start <= fb).then_some((start, k.offset, phys)))
            }
            _ => Ok(None),
        }
    }

    fn put_extent(&mut self, ino: u64, start: u64, end: u64, phys: u64) -> Result<()> {
        let mut v = [0u8; EXTENT_SIZE];
        v[..8].copy_from_slice(&start.to_le_bytes());
        v[8..].copy_from_slice(&phys.to_le_bytes());
        self.put(Key::new(ino, kind::EXTENT, end), &v)
    }

    /// Maps file block `fb` to device block `nb`, which replaces `old` (the extent that
    /// covered it, whose block is freed at commit), merging with a contiguous extent before.
    fn map_block(
        &mut self,
        ino: u64,
        fb: u64,
        nb: u64,
        old: Option<(u64, u64, u64)>,
    ) -> Result<()> {
        if let Some((s, e, p)) = old {
            self.del(Key::new(ino, kind::EXTENT, e))?;
            if s < fb {
                self.put_extent(ino, s, fb, p)?;
            }
            if fb + 1 < e {
                self.put_extent(ino, fb + 1, e, p + (fb + 1 - s))?;
            }
            self.space.free(&mut self.dev, p + (fb - s))?;
        }
        let (mut start, mut phys) = (fb, nb);
        let mut b = [0u8; EXTENT_SIZE];
        let left = Key::new(ino, kind::EXTENT, fb);
        if fb > 0 && self.tree.get(&mut self.dev, &left, &mut b)? == Some(EXTENT_SIZE) {
            let (ls, lp) = (rd64(&b, 0), rd64(&b, 8));
            if ls < fb && lp.checked_add(fb - ls) == Some(nb) {
                self.del(left)?;
                start = ls;
                phys = lp;
            }
        }
        self.put_extent(ino, start, fb + 1, phys)
    }

    fn file(&mut self, ino: u64) -> Result<super::volume::Inode> {
        let i = self.stat(ino)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        Ok(i)
    }

    /// Writes `data` at byte `off` of file `ino` (anywhere: past the end, into holes). Every
    /// block touched goes to a new block. Returns the bytes written: short only when space
    /// ran out after the first block (then the file holds a consistent prefix of the write).
    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<usize> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        let mut inode = self.file(ino)?;
        off.checked_add(data.len() as u64)
            .filter(|&e| e.div_ceil(BS) <= MAX_FILE_BLOCKS)
            .ok_or(FsError::FileTooLarge)?;
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let (fb, inb) = (pos / BS, (pos % BS) as usize);
            let n = (BLOCK_SIZE - inb).min(data.len() - done);
            if let Err(e) = self.room(7) {
                if done > 0 {
                    break;
                }
                return Err(e);
            }
            let old = self.extent_at(ino, fb)?;
            if n < BLOCK_SIZE {
                match old {
                    Some((s, _, p)) => self
                        .dev
                        .read(p + (fb - s), self.data)
                        .map_err(|e| FsError::io(IoOp::ReadData, e))?,
                    None => self.data.fill(0),
                }
            }
            self.data[inb..inb + n].copy_from_slice(&data[done..done + n]);
            let nb = self.space.alloc(&mut self.dev)?;
            let run = Run {
                block: nb,
                data: self.data,
            };
            if let Err(e) = self.dev.write(&[run], WriteFlags::NONE) {
                self.failed = true;
                return Err(FsError::io(IoOp::WriteData, e));
            }
            self.map_block(ino, fb, nb, old)?;
            done += n;
            inode.size = inode.size.max(pos + n as u64);
            inode.mtime = self.now;
            inode.ctime = self.now;
            self.put_inode(ino, &inode)?;
        }
        Ok(done)
    }

    /// Reads from byte `off` of file `ino` into `buf`; returns the bytes read (short at the
    /// end of the file). Holes read as zeros.
    pub fn read(&mut self, ino: u64, off: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.file(ino)?;
        if off >= inode.size {
            return Ok(0);
        }
        let len = buf
            .len()
            .min((inode.size - off).min(usize::MAX as u64) as usize);
        let mut done = 0;
        while done < len {
            let pos = off + done as u64;
            let (fb, inb) = (pos / BS, (pos % BS) as usize);
            let n = (BLOCK_SIZE - inb).min(len - done);
            match self.extent_at(ino, fb)? {
                Some((s, _, p)) => {
                    self.dev
                        .read(p + (fb - s), self.data)
                        .map_err(|e| FsError::io(IoOp::ReadData, e))?;
                    buf[done..done + n].copy_from_slice(&self.data[inb..inb + n]);
                }
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(len)
    }

    /// Sets the size of file `ino`: shrinking frees the blocks past the end (at commit) and
    /// zeroes the rest of the last block (in a new block), growing leaves a hole.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        let mut inode = self.file(ino)?;
        if size.div_ceil(BS) > MAX_FILE_BLOCKS {
            return Err(FsError::FileTooLarge);
        }
        if size < inode.size {
            let keep = size.div_ceil(BS);
            let mut b = [0u8; EXTENT_SIZE];
            loop {
                let from = Key::new(ino, kind::EXTENT, keep + 1);
                let Some((k, n)) = self.tree.next(&mut self.dev, &from, &mut b)? else {
                    break;
                };
                if k.id != ino || k.kind != kind::EXTENT {
                    break;
                }
                let (start, phys) = (rd64(&b, 0), rd64(&b, 8));
                if n != EXTENT_SIZE || start >= k.offset {
                    return Err(corrupt("extent out of range"));
                }
                self.room(3)?;
                self.del(k)?;
                let first_freed = start.max(keep);
                if start < keep {
                    self.put_extent(ino, start, keep, phys)?;
                }
                for fb in first_freed..k.offset {
                    self.space.free(&mut self.dev, phys + (fb - start))?;
                }
            }
            // The bytes of the last block past the new end read as zeros if the file grows
            // again: rewrite that block with them cleared.
            let tail = (size % BS) as usize;
            if tail != 0 {
                let fb = size / BS;
                if let Some(old @ (s, _, p)) = self.extent_at(ino, fb)? {
                    self.room(7)?;
                    self.dev
                        .read(p + (fb - s), self.data)
                        .map_err(|e| FsError::io(IoOp::ReadData, e))?;
                    self.data[tail..].fill(0);
                    let nb = self.space.alloc(&mut self.dev)?;
                    let run = Run {
                        block: nb,
                        data: self.data,
                    };
                    if let Err(e) = self.dev.write(&[run], WriteFlags::NONE) {
                        self.failed = true;
                        return Err(FsError::io(IoOp::WriteData, e));
                    }
                    self.map_block(ino, fb, nb, Some(old))?;
                }
            }
        }
        inode.size = size;
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.room(1)?;
        self.put_inode(ino, &inode)
    }

    /// Frees every extent of `ino` (its blocks at commit), one item at a time.
    pub(super) fn free_extents(&mut self, ino: u64) -> Result<()> {
        let mut b = [0u8; EXTENT_SIZE];
        loop {
            let from = Key::new(ino, kind::EXTENT, 0);
            match self.tree.next(&mut self.dev, &from, &mut b)? {
                Some((k, n)) if k.id == ino && k.kind == kind::EXTENT => {
                    if n != EXTENT_SIZE {
                        return Err(corrupt("extent item of the wrong size"));
                    }
                    let (start, phys) = (rd64(&b, 0), rd64(&b, 8));
                    if start >= k.offset {
                        return Err(corrupt("extent out of range"));
                    }
                    self.room(1)?;
                    self.del(k)?;
                    for i in 0..k.offset - start {
                        self.space.free(&mut self.dev, phys + i)?;
                    }
                }
                _ => return Ok(()),
            }
        }
    }
}
