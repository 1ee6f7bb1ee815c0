//! File data: read, write (with write-behind for appends), the zero-copy [`WriteBuf`],
//! append, truncate, and compacting a fragmented file into one extent.

use super::{BS, Fs, Ino, block_mut, io};
use crate::error::{FsError, IoOp, Result};
use crate::extent::{ExtList, Mapping};
use crate::format::{BLOCK_SIZE, EXTENTS_PER_INODE, Extent, Inode, MAX_FILE_BLOCKS, MAX_FILE_SIZE};
use crate::io::{BlockIo, Run, WriteFlags};

/// The file a write is changing: its inode and extents as the write goes.
#[derive(Clone, Copy, Debug)]
struct WriteState {
    ino: Ino,
    n: Inode,
    ext: ExtList,
}

/// One chunk of a write: file blocks `[fb, fb + k)` go to new blocks `[phys, phys + k)` from
/// the buffer at `base`; bytes `[pos, end)` of the file are new.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    fb: u64,
    phys: u64,
    k: u64,
    base: usize,
    behind: bool,
    pos: u64,
    end: u64,
}

impl Chunk {
    /// Where the chunk's new bytes go in the buffer.
    fn span(&self) -> (usize, usize) {
        let at = |x: u64| self.base + (x - self.fb * BS) as usize;
        (at(self.pos), at(self.end))
    }
}

/// A region of the filesystem's I/O buffer lent for a zero-copy write ([`Fs::write_buffer`]).
///
/// It holds the filesystem borrowed: nothing else runs until it is committed or dropped.
/// Dropping it without [`WriteBuf::commit`] gives its blocks back and leaves the file as it
/// was.
pub struct WriteBuf<'f, 'b, D: BlockIo, const IB: usize, const BW: usize> {
    fs: &'f mut Fs<'b, D, IB, BW>,
    st: WriteState,
    c: Chunk,
    live: bool,
}

impl<D: BlockIo, const IB: usize, const BW: usize> WriteBuf<'_, '_, D, IB, BW> {
    /// The bytes to fill: file bytes `[offset, offset + len)`. They hold whatever the buffer
    /// held (for a partial block's old part, see [`Fs::write_buffer`]: that part is outside).
    pub fn buf(&mut self) -> &mut [u8] {
        let (lo, hi) = self.c.span();
        &mut self.fs.buf[lo..hi]
    }

    /// Bytes lent (at most the `len` asked for).
    pub fn len(&self) -> usize {
        (self.c.end - self.c.pos) as usize
    }

    /// Never empty (a zero-length request is refused); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// File offset of the first byte.
    pub fn offset(&self) -> u64 {
        self.c.pos
    }

    /// Writes the region to the file; returns the bytes written ([`WriteBuf::len`]). Same
    /// durability as [`Fs::write`]: part of the next commit.
    pub fn commit(mut self) -> Result<usize> {
        self.live = false;
        let (mut st, c) = (self.st, self.c);
        self.fs.write_finish(&mut st, &c)?;
        Ok((c.end - c.pos) as usize)
    }
}

impl<D: BlockIo, const IB: usize, const BW: usize> Drop for WriteBuf<'_, '_, D, IB, BW> {
    /// Not committed: the blocks allocated for the region are free again.
    fn drop(&mut self) {
        if self.live {
            Fs::<D, IB, BW>::free_range(&mut self.fs.used, self.c.phys, self.c.k);
        }
    }
}

/// Fills `buf[..k blocks]` with file blocks `[fb, fb + k)`: one read per contiguous device run,
/// zeros for holes.
fn read_file_blocks<D: BlockIo>(
    dev: &mut D,
    buf: &mut [u8],
    ext: &ExtList,
    fb: u64,
    k: u64,
) -> Result<()> {
    let mut i = 0u64;
    while i < k {
        let (n, phys) = match ext.lookup(fb + i) {
            Mapping::Mapped { phys, len } => (len.min(k - i), Some(phys)),
            Mapping::Hole { len } => (len.min(k - i), None),
        };
        let dst = buf
            .get_mut((i * BS) as usize..((i + n) * BS) as usize)
            .ok_or(FsError::BufferTooSmall)?;
        match phys {
            Some(p) => dev.read(p, dst).map_err(io(IoOp::ReadData))?,
            None => dst.fill(0),
        }
        i += n;
    }
    Ok(())
}

impl<'b, D: BlockIo, const IB: usize, const BW: usize> Fs<'b, D, IB, BW> {
    /// Reads from `off`; returns the bytes read (short at end of file).
    pub fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> Result<usize> {
        self.mounted()?;
        self.quiesce()?;
        let n = self.file(ino)?;
        if off >= n.size || out.is_empty() {
            return Ok(0);
        }
        let end = n.size.min(off.saturating_add(out.len() as u64));
        let ext = ExtList::of(&n);
        let cap = self.cap_blocks();
        let mut pos = off;
        while pos < end {
            let fb = pos / BS;
            let k = ((end - 1) / BS - fb + 1).min(cap);
            read_file_blocks(&mut self.dev, self.buf, &ext, fb, k)?;
            let chunk_end = end.min((fb + k) * BS);
            let src = &self.buf[(pos - fb * BS) as usize..(chunk_end - fb * BS) as usize];
            let dst = out
                .get_mut((pos - off) as usize..(chunk_end - off) as usize)
                .ok_or(FsError::InvalidArgument)?;
            dst.copy_from_slice(src);
            pos = chunk_end;
        }
        Ok((end - off) as usize)
    }

    /// Writes `data` at `off` (past the end and into holes included).
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        let n = self.file(ino)?;
        if data.is_empty() {
            return Ok(0);
        }
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        let mut st = WriteState {
            ino,
            n,
            ext: ExtList::of(&n),
        };
        let mut pos = off;
        while pos < end {
            let c = self.write_prepare(&mut st, pos, end)?;
            let (lo, hi) = c.span();
            self.buf[lo..hi].copy_from_slice(&data[(pos - off) as usize..(c.end - off) as usize]);
            self.write_finish(&mut st, &c)?;
            pos = c.end;
        }
        Ok(data.len())
    }

    /// Lends the part of the I/O buffer that the next chunk of a write of `len` bytes at `off`
    /// goes out from: fill [`WriteBuf::buf`] in place, then [`WriteBuf::commit`] writes it,
    /// with no copy (zero-copy write). The region may be shorter than `len` (the buffer size,
    /// the end of the buffer's ring, a short free run): call again from
    /// `off + WriteBuf::len()`. Dropping the `WriteBuf` without committing changes nothing.
    ///
    /// An append at a block boundary (the streaming case) is written behind like [`Fs::write`]
    /// writes it: the region comes from the next unused part of the buffer and `commit`
    /// returns once its bios are submitted. Anything else (overwrites, unaligned starts) first
    /// waits for the writes in flight and reads the partial first and last blocks into the
    /// region before lending it, so the caller only supplies the new bytes.
    pub fn write_buffer(
        &mut self,
        ino: Ino,
        off: u64,
        len: usize,
    ) -> Result<WriteBuf<'_, 'b, D, IB, BW>> {
        self.writable()?;
        let n = self.file(ino)?;
        if len == 0 {
            return Err(FsError::InvalidArgument);
        }
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        let mut st = WriteState {
            ino,
            n,
            ext: ExtList::of(&n),
        };
        let c = self.write_prepare(&mut st, off, end)?;
        Ok(WriteBuf {
            fs: self,
            st,
            c,
            live: true,
        })
    }

    /// First half of one chunk of a write from `pos` towards `end`: room in the extent list,
    /// the place in the buffer (waiting for what still reads it), the new blocks, and the old
    /// contents of partial first and last blocks. The chunk's bytes are then put at
    /// [`Chunk::span`] and [`Fs::write_finish`] writes them.
    fn write_prepare(&mut self, st: &mut WriteState, pos: u64, end: u64) -> Result<Chunk> {
        if st.ext.len() + 2 > EXTENTS_PER_INODE {
            self.compact(&mut st.ext)?;
            st.ext
                .store(&mut st.n)
                .map_err(|_| FsError::TooFragmented)?;
            self.set_inode(st.ino.0, st.n);
        }
        let cap = self.cap_blocks();
        let fb = pos / BS;
        let mut want = ((end - 1) / BS - fb + 1).min(cap);
        // Write-behind: a block-aligned chunk past every mapped block of the file (an
        // append) reads nothing from the device and frees nothing, so it is written from the
        // next unused part of the buffer and not waited for; whatever reads the device,
        // frees blocks or commits waits for such writes first (`quiesce`).
        let behind = pos.is_multiple_of(BS) && fb >= st.n.size.div_ceil(BS);
        let base = if behind {
            if self.ring + BLOCK_SIZE > self.buf.len() {
                self.ring = 0;
            }
            want = want.min(((self.buf.len() - self.ring) / BLOCK_SIZE) as u64);
            let region = &self.buf[self.ring..self.ring + (want * BS) as usize];
            if let Err(e) = self.dev.wait_for(region) {
                self.failed = true;
                return Err(FsError::io(IoOp::WriteBehind, e));
            }
            self.ring
        } else {
            self.quiesce()?;
            0
        };
        let (phys, k) = self.alloc_run(want, self.reserve())?;
        let c = Chunk {
            fb,
            phys,
            k,
            base,
            behind,
            pos,
            end: end.min((fb + k) * BS),
        };
        if let Err(e) = self.read_partial(&st.ext, &c) {
            Self::free_range(&mut self.used, phys, k);
            return Err(e);
        }
        Ok(c)
    }

    /// Partial first and last blocks of a chunk start from their old contents (zeros in a
    /// hole or past the end).
    fn read_partial(&mut self, ext: &ExtList, c: &Chunk) -> Result<()> {
        let buf = &mut self.buf[c.base..];
        if !c.pos.is_multiple_of(BS) {
            read_file_blocks(&mut self.dev, buf, ext, c.fb, 1)?;
        }
        if !c.end.is_multiple_of(BS) && (c.end / BS != c.fb || c.pos.is_multiple_of(BS)) {
            let lb = c.end / BS;
            let i = (lb - c.fb) as usize;
            let tail = buf
                .get_mut(i * BLOCK_SIZE..)
                .ok_or(FsError::BufferTooSmall)?;
            read_file_blocks(&mut self.dev, tail, ext, lb, 1)?;
        }
        Ok(())
    }

    /// Second half of a chunk: writes its blocks from the buffer (behind, or waited) and maps
    /// them into the file.
    fn write_finish(&mut self, st: &mut WriteState, c: &Chunk) -> Result<()> {
        let run = Run {
            block: c.phys,
            data: &self.buf[c.base..c.base + (c.k * BS) as usize],
        };
        let r = if c.behind {
            self.ring = c.base + (c.k * BS) as usize;
            self.dev.write_behind(&[run])
        } else {
            self.dev.write(&[run], WriteFlags::NONE)
        };
        if let Err(e) = r {
            Self::free_range(&mut self.used, c.phys, c.k);
            self.failed = true;
            let op = if c.behind {
                IoOp::WriteBehind
            } else {
                IoOp::WriteData
            };
            return Err(FsError::io(op, e));
        }
        let used = &mut self.used;
        st.ext
            .punch(c.fb, c.fb + c.k, &mut |p, l| Self::free_range(used, p, l))
            .map_err(|_| FsError::TooFragmented)?;
        st.ext
            .insert(Extent {
                fblock: c.fb as u32,
                len: c.k as u32,
                phys: c.phys,
            })
            .map_err(|_| FsError::TooFragmented)?;
        st.ext
            .store(&mut st.n)
            .map_err(|_| FsError::TooFragmented)?;
        st.n.size = st.n.size.max(c.end);
        self.set_inode(st.ino.0, st.n);
        Ok(())
    }

    /// Appends `data`; returns the offset it was written at.
    pub fn append(&mut self, ino: Ino, data: &[u8]) -> Result<u64> {
        self.writable()?;
        let off = self.file(ino)?.size;
        self.write(ino, off, data)?;
        Ok(off)
    }

    /// Rewrites a file's mapped range into one contiguous extent (holes inside become zeros).
    fn compact(&mut self, ext: &mut ExtList) -> Result<()> {
        self.quiesce()?;
        let (Some(first), Some(last)) = (
            ext.as_slice().first().copied(),
            ext.as_slice().last().copied(),
        ) else {
            return Ok(());
        };
        let (start, end) = (first.fblock as u64, last.fend());
        let total = end - start;
        let dst = self.alloc_exact(total, self.reserve())?;
        let cap = self.cap_blocks();
        let mut i = 0;
        while i < total {
            let k = cap.min(total - i);
            read_file_blocks(&mut self.dev, self.buf, ext, start + i, k)?;
            let run = Run {
                block: dst + i,
                data: &self.buf[..(k * BS) as usize],
            };
            if let Err(e) = self.dev.write(&[run], WriteFlags::NONE) {
                Self::free_range(&mut self.used, dst, total);
                self.failed = true;
                return Err(FsError::io(IoOp::WriteData, e));
            }
            i += k;
        }
        let used = &mut self.used;
        ext.punch(start, end, &mut |p, l| Self::free_range(used, p, l))
            .map_err(|_| FsError::TooFragmented)?;
        ext.insert(Extent {
            fblock: start as u32,
            len: total as u32,
            phys: dst,
        })
        .map_err(|_| FsError::TooFragmented)
    }

    /// Sets the size: shrinking frees blocks past the end, growing leaves a hole.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let mut n = self.file(ino)?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooLarge);
        }
        if size >= n.size {
            n.size = size;
            self.set_inode(ino.0, n);
            return Ok(());
        }
        let mut ext = ExtList::of(&n);
        let used = &mut self.used;
        ext.punch(size.div_ceil(BS), MAX_FILE_BLOCKS, &mut |p, l| {
            Self::free_range(used, p, l)
        })
        .map_err(|_| FsError::TooFragmented)?;
        let fb = size / BS;
        if !size.is_multiple_of(BS)
            && let Mapping::Mapped { phys: old, .. } = ext.lookup(fb)
        {
            // Copy the new last block with its tail zeroed, so growing later reads zeros.
            if ext.len() + 2 > EXTENTS_PER_INODE {
                self.compact(&mut ext)?;
            }
            let b = block_mut(self.buf, 0)?;
            self.dev.read(old, b).map_err(io(IoOp::ReadData))?;
            b[(size % BS) as usize..].fill(0);
            let (phys, _) = self.alloc_run(1, self.reserve())?;
            if let Err(e) = self.dev.write(
                &[Run {
                    block: phys,
                    data: &self.buf[..BLOCK_SIZE],
                }],
                WriteFlags::NONE,
            ) {
                self.used.clear(phys);
                self.failed = true;
                return Err(FsError::io(IoOp::WriteData, e));
            }
            let used = &mut self.used;
            ext.punch(fb, fb + 1, &mut |p, l| Self::free_range(used, p, l))
                .map_err(|_| FsError::TooFragmented)?;
            ext.insert(Extent {
                fblock: fb as u32,
                len: 1,
                phys,
            })
            .map_err(|_| FsError::TooFragmented)?;
        }
        ext.store(&mut n).map_err(|_| FsError::TooFragmented)?;
        n.size = size;
        self.set_inode(ino.0, n);
        Ok(())
    }
}
