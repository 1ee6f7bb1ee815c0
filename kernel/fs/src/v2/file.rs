//! File data on the tree: extent items `(ino, EXTENT, end)` whose value is the first file
//! block and the first device block (`end` exclusive, so the extent covering file block `b` is
//! the first item at or after `(ino, EXTENT, b + 1)`). A write puts every block it touches in
//! a newly allocated block and splits or merges at most three extent items for it, so a random
//! overwrite changes O(log n) metadata blocks and never the rest of the file. Data goes
//! through the volume's data buffer in runs: a write takes a run of contiguous new blocks
//! (as many as the buffer holds and the free space gives in a row), fills it, writes it in
//! one I/O and maps it as one extent; a read reads each extent piece of a buffer's worth in
//! one I/O. [`Volume::write_buffer`] lends the buffer for a zero-copy write and
//! [`Volume::read_buffer`] lends it for a zero-copy read.

use super::key::{Key, kind};
use super::node::MAX_HEIGHT;
use super::space::Space;
use super::volume::{Inode, Kind, Volume};
use crate::crc::crc32c;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, Run, WriteFlags};

const EXTENT_SIZE: usize = 16;
/// Data checksums per `CSUM` item (a CRC32C each), the item covering file blocks
/// `[base, base + CSUMS)` keyed `(ino, CSUM, base)` with `base` a multiple of `CSUMS`.
pub(super) const CSUMS: u64 = 240;
/// Bytes of a `CSUM` item's value.
pub(super) const CSUM_ITEM: usize = CSUMS as usize * 4;

/// A block's recorded checksum: its CRC32C, never 0 (0 marks "none recorded").
fn block_crc(b: &[u8]) -> u32 {
    crc32c(b).max(1)
}
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

/// An extent `(start, end, device block of start)`, or none.
type Extent = Option<(u64, u64, u64)>;

/// A lookup's result already known ([`Extent`]), or `None`: look it up.
type Known = Option<Extent>;

impl<'b, D: BlockIo, const N: usize, const G: usize> Volume<'b, D, N, G> {
    /// The first extent of `ino` ending after file block `fb`: `(start, end, device block of
    /// start)`.
    pub(super) fn extent_from(&mut self, ino: u64, fb: u64) -> Result<Option<(u64, u64, u64)>> {
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
                Ok(Some((start, k.offset, phys)))
            }
            _ => Ok(None),
        }
    }

    /// The extent covering file block `fb` of `ino`: `(start, end, device block of start)`.
    fn extent_at(&mut self, ino: u64, fb: u64) -> Result<Option<(u64, u64, u64)>> {
        Ok(self.extent_from(ino, fb)?.filter(|&(s, _, _)| s <= fb))
    }

    fn put_extent(&mut self, ino: u64, start: u64, end: u64, phys: u64) -> Result<()> {
        let mut v = [0u8; EXTENT_SIZE];
        v[..8].copy_from_slice(&start.to_le_bytes());
        v[8..].copy_from_slice(&phys.to_le_bytes());
        self.put(Key::new(ino, kind::EXTENT, end), &v)
    }

    /// Maps file blocks `[fb, fb + k)` to device blocks `[nb, nb + k)`: the extents that
    /// covered them are cut (their blocks there freed at commit), and the new extent merges
    /// with a contiguous one ending at `fb`.
    pub(super) fn map_range(&mut self, ino: u64, fb: u64, k: u64, nb: u64) -> Result<()> {
        self.map_range_from(ino, fb, k, nb, None)
    }

    /// [`Volume::map_range`]; `first`, when known, is what [`Volume::extent_from`]`(ino, fb)`
    /// returns on the tree as it is now (one lookup fewer).
    fn map_range_from(&mut self, ino: u64, fb: u64, k: u64, nb: u64, first: Known) -> Result<()> {
        let piece = self.cut(ino, fb, k, true, first)?;
        let end = fb + k;
        let left = Key::new(ino, kind::EXTENT, fb);
        // Whether the extent `(start, device block of start)` ending at `fb` continues on disk
        // into the new blocks.
        let joins = |(ls, lp): (u64, u64)| ls < fb && lp.checked_add(fb - ls) == Some(nb);
        // The extent ending at `fb`: the piece the cut just wrote, else found by moving its
        // item's key from `fb` to `end` when it joins (the append of a sequential write: one
        // tree update, its value unchanged), else as seen there.
        let before = match piece {
            Some(x) => Some(x),
            None if fb > 0 => {
                let mut seen = None;
                let grown = self.tree.rekey(
                    &mut self.dev,
                    &mut self.space,
                    &left,
                    &Key::new(ino, kind::EXTENT, end),
                    |v| {
                        seen = (v.len() == EXTENT_SIZE).then(|| (rd64(v, 0), rd64(v, 8)));
                        seen.is_some_and(joins)
                    },
                )?;
                if grown {
                    return Ok(());
                }
                seen
            }
            None => None,
        };
        let (mut start, mut phys) = (fb, nb);
        if let Some((ls, lp)) = before.filter(|&x| joins(x)) {
            self.del(left)?;
            start = ls;
            phys = lp;
        }
        self.put_extent(ino, start, end, phys)
    }

    /// Unmaps file blocks `[fb, fb + k)` of `ino`: the extents covering them are cut (their
    /// blocks there freed at commit).
    pub(super) fn cut_range(&mut self, ino: u64, fb: u64, k: u64) -> Result<()> {
        self.cut(ino, fb, k, false, None).map(|_| ())
    }

    /// [`Volume::cut_range`]; with `remap`, an extent ending exactly at `fb + k` keeps its
    /// item, which the caller replaces at once (one tree update instead of a removal and an
    /// insertion: the random overwrite of a fragmented file). An extent ending past the range
    /// always keeps its item, replaced by the piece after the range. `first`: as in
    /// [`Volume::map_range_from`]. Returns the piece before the range it wrote, `(start,
    /// device block of start)` of the extent now ending at `fb`, if any.
    fn cut(
        &mut self,
        ino: u64,
        fb: u64,
        k: u64,
        remap: bool,
        first: Known,
    ) -> Result<Option<(u64, u64)>> {
        let end = fb + k;
        let mut known = first;
        let mut piece = None;
        loop {
            let found = match known.take() {
                Some(x) => x,
                None => self.extent_from(ino, fb)?,
            };
            let Some((s, e, p)) = found else { break };
            if s >= end {
                break;
            }
            // An extent ending past the range keeps its item (the piece after the range is
            // written over it just below); one ending exactly at it keeps it when the caller
            // maps the range.
            if e < end || (e == end && !remap) {
                self.del(Key::new(ino, kind::EXTENT, e))?;
            }
            if s < fb {
                // Only the extent covering `fb` starts before it: at most one such piece,
                // and no later step of the cut touches its item.
                self.put_extent(ino, s, fb, p)?;
                piece = Some((s, p));
            }
            if e > end {
                self.put_extent(ino, end, e, p + (end - s))?;
            }
            for b in s.max(fb)..e.min(end) {
                self.space.free(&mut self.dev, p + (b - s))?;
            }
            if e >= end {
                // No later extent overlaps (and a kept item must not be found again).
                break;
            }
        }
        Ok(piece)
    }

    /// Extents of `ino` that overlap file blocks `[fb, fb + k)`, counted up to `k`, and the
    /// first lookup's result ([`Volume::extent_from`]`(ino, fb)`).
    fn overlapping(&mut self, ino: u64, fb: u64, k: u64) -> Result<(u64, Extent)> {
        let mut c = 0;
        let mut at = fb;
        let mut first = None;
        while c < k {
            let x = self.extent_from(ino, at)?;
            if at == fb {
                first = x;
            }
            match x {
                Some((s, e, _)) if s < fb + k => {
                    c += 1;
                    at = e;
                }
                _ => break,
            }
        }
        Ok((c, first))
    }

    /// Reads file block `fb` of `ino` into buffer block `at` (zeros for a hole).
    fn read_old(&mut self, ino: u64, fb: u64, at: usize) -> Result<()> {
        let ext = self.extent_at(ino, fb)?;
        let dst = &mut self.data[at * BLOCK_SIZE..(at + 1) * BLOCK_SIZE];
        match ext {
            Some((s, _, p)) => {
                // (Only a chunk that waited for the writes in flight reads old blocks.)
                self.dev
                    .read(p + (fb - s), dst)
                    .map_err(|e| FsError::io(IoOp::ReadData, e))?;
                self.verify(ino, fb, 1, at, p + (fb - s))
            }
            None => {
                dst.fill(0);
                Ok(())
            }
        }
    }

    /// With data checksums: checks buffer blocks `[at, at + k)`, read from device blocks
    /// `[phys, phys + k)` as file blocks `[fb, fb + k)`, against their recorded checksums.
    fn verify(&mut self, ino: u64, fb: u64, k: u64, at: usize, phys: u64) -> Result<()> {
        if !self.data_checksums() {
            return Ok(());
        }
        let mut v = [0u8; CSUM_ITEM];
        let mut loaded = None;
        for i in 0..k {
            let x = fb + i;
            let base = x / CSUMS * CSUMS;
            if loaded != Some(base) {
                let key = Key::new(ino, kind::CSUM, base);
                match self.tree.get(&mut self.dev, &key, &mut v)? {
                    Some(CSUM_ITEM) => {}
                    Some(_) => return Err(corrupt("checksum item of the wrong size")),
                    None => v.fill(0),
                }
                loaded = Some(base);
            }
            let o = ((x - base) * 4) as usize;
            let want = u32::from_le_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]]);
            let b = at + i as usize;
            if block_crc(&self.data[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE]) != want {
                return Err(FsError::DataChecksum { block: phys + i });
            }
        }
        Ok(())
    }

    /// With data checksums: records the checksums of buffer blocks `[at, at + k)` as file
    /// blocks `[fb, fb + k)`.
    fn put_csums(&mut self, ino: u64, fb: u64, k: u64, at: usize) -> Result<()> {
        if !self.data_checksums() {
            return Ok(());
        }
        self.csums_from(ino, fb, k, Err(at))
    }

    /// Records `crcs` as the checksums of file blocks `[fb, fb + crcs.len())` of `ino`.
    pub(super) fn set_csums(&mut self, ino: u64, fb: u64, crcs: &[u32]) -> Result<()> {
        self.csums_from(ino, fb, crcs.len() as u64, Ok(crcs))
    }

    /// Records checksums of file blocks `[fb, fb + k)`: `crcs`, or (`Err(at)`) those of
    /// buffer blocks `[at, at + k)`.
    fn csums_from(
        &mut self,
        ino: u64,
        fb: u64,
        k: u64,
        crcs: core::result::Result<&[u32], usize>,
    ) -> Result<()> {
        let mut v = [0u8; CSUM_ITEM];
        let mut x = fb;
        while x < fb + k {
            let base = x / CSUMS * CSUMS;
            let key = Key::new(ino, kind::CSUM, base);
            match self.tree.get(&mut self.dev, &key, &mut v)? {
                Some(CSUM_ITEM) => {}
                Some(_) => return Err(corrupt("checksum item of the wrong size")),
                None => v.fill(0),
            }
            let stop = (base + CSUMS).min(fb + k);
            for y in x..stop {
                let b = (y - fb) as usize;
                let crc = match crcs {
                    Ok(c) => c[b],
                    Err(at) => {
                        block_crc(&self.data[(at + b) * BLOCK_SIZE..(at + b + 1) * BLOCK_SIZE])
                    }
                };
                let o = ((y - base) * 4) as usize;
                v[o..o + 4].copy_from_slice(&crc.to_le_bytes());
            }
            self.put(key, &v)?;
            x = stop;
        }
        Ok(())
    }

    /// Deletes the checksum items of `ino` from the one covering file block `from` on.
    pub(super) fn drop_csums(&mut self, ino: u64, from: u64) -> Result<()> {
        loop {
            let at = Key::new(ino, kind::CSUM, from.div_ceil(CSUMS) * CSUMS);
            match self.tree.next(&mut self.dev, &at, &mut [])? {
                Some((k, _)) if k.id == ino && k.kind == kind::CSUM => {
                    self.room(1)?;
                    self.del(k)?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Prepares the next chunk of a write of bytes `[off, end)` to `ino`: checks the space
    /// its tree updates and blocks need (a single block when a longer run does not fit),
    /// allocates a run of new blocks and reads the partial first and last blocks' old bytes
    /// into the buffer.
    ///
    /// Write-behind: a chunk starting block-aligned past every mapped block of the file (an
    /// append) reads nothing from the device and frees nothing, so it goes out from the next
    /// unused part of the buffer (a ring over it) and is not waited for; any other
    /// chunk, and whatever reads data blocks, frees blocks or makes anything durable, first
    /// waits for such writes ([`Volume::quiesce`]). The data is thus complete on the device
    /// before the commit or log block that points to it is issued.
    fn prepare(&mut self, ino: u64, off: u64, end: u64) -> Result<Chunk> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        self.tree.writable()?;
        let inode = self.file(ino)?;
        if end.div_ceil(BS) > MAX_FILE_BLOCKS {
            return Err(FsError::FileTooLarge);
        }
        let fb = off / BS;
        let behind = off.is_multiple_of(BS) && fb >= inode.size.div_ceil(BS);
        let base = if behind {
            if self.ring + BLOCK_SIZE > self.data.len() {
                self.ring = 0;
            }
            self.ring
        } else {
            self.quiesce()?;
            0
        };
        let cap = ((self.data.len() - base) / BLOCK_SIZE) as u64;
        let mut k = ((end - 1) / BS + 1 - fb).min(cap);
        if behind {
            let region = &self.data[base..base + (k * BS) as usize];
            if let Err(e) = self.dev.wait_for(region) {
                self.failed = true;
                return Err(FsError::io(IoOp::WriteBehind, e));
            }
        }
        let mut first;
        loop {
            // An append overlaps nothing: every extent ends within the file's size.
            let (n, x) = if behind {
                (0, None)
            } else {
                self.overlapping(ino, fb, k)?
            };
            first = (x, self.tree.generation());
            let c = n + k / CSUMS + 2;
            match self.room(c + 6) {
                Ok(()) if self.space.allocatable() >= (c + 6) * (2 * MAX_HEIGHT as u64 + 2) + k => {
                    break;
                }
                _ if k > 1 => k = 1,
                Ok(()) => return Err(FsError::NoSpace),
                Err(e) => return Err(e),
            }
        }
        let nb = self.space.alloc(&mut self.dev)?;
        let k = 1 + self.space.extend_run(&mut self.dev, nb, k - 1)?;
        let cend = end.min((fb + k) * BS);
        let c = Chunk {
            // Nothing changes the tree between the lookup and the mapping (`room` only checks,
            // the rest reads or allocates); a commit in between would drop it all the same.
            first: (first.1 == self.tree.generation()).then_some(first.0),
            ino,
            inode,
            fb,
            k,
            nb,
            base,
            behind,
            lo: (off - fb * BS) as usize,
            hi: (cend - fb * BS) as usize,
        };
        let at = base / BLOCK_SIZE;
        let r = (|| {
            if !c.lo.is_multiple_of(BLOCK_SIZE) {
                self.read_old(ino, fb, at)?;
            }
            if !c.hi.is_multiple_of(BLOCK_SIZE) && (k > 1 || c.lo.is_multiple_of(BLOCK_SIZE)) {
                self.read_old(ino, fb + k - 1, at + (k - 1) as usize)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            self.release(&c);
            return Err(e);
        }
        Ok(c)
    }

    /// Gives back a prepared chunk's blocks (nothing was mapped).
    fn release(&mut self, c: &Chunk) {
        for b in c.nb..c.nb + c.k {
            if self.space.free(&mut self.dev, b).is_err() {
                self.failed = true;
            }
        }
    }

    /// Writes a prepared chunk's run in one I/O (behind, or waited) and maps it; returns the
    /// new bytes' count.
    fn finish(&mut self, c: &Chunk) -> Result<usize> {
        let run = Run {
            block: c.nb,
            data: &self.data[c.base..c.base + (c.k * BS) as usize],
        };
        let r = if c.behind {
            self.ring = c.base + (c.k * BS) as usize;
            self.behind = true;
            self.dev.write_behind(&[run])
        } else {
            self.dev.write(&[run], WriteFlags::NONE)
        };
        if let Err(e) = r {
            self.failed = true;
            let op = if c.behind {
                IoOp::WriteBehind
            } else {
                IoOp::WriteData
            };
            return Err(FsError::io(op, e));
        }
        self.map_range_from(c.ino, c.fb, c.k, c.nb, c.first)?;
        self.put_csums(c.ino, c.fb, c.k, c.base / BLOCK_SIZE)?;
        self.log.touch(c.ino, c.fb, c.fb + c.k);
        let mut inode = c.inode;
        inode.size = inode.size.max(c.fb * BS + c.hi as u64);
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.put_inode(c.ino, &inode)?;
        Ok(c.hi - c.lo)
    }

    /// Lends the part of the data buffer that the next chunk of a write of `len` bytes at
    /// `off` to file `ino` goes out from: fill [`WriteBuf::buf`] in place, then
    /// [`WriteBuf::commit`] writes it (one I/O) with no copy. The region may be shorter than
    /// `len` (the buffer's size, a short free run): call again from `off + WriteBuf::len()`.
    /// The partial first and last blocks' old bytes are already around the region, so the
    /// caller supplies only the new bytes. Dropping it uncommitted changes nothing.
    pub fn write_buffer(
        &mut self,
        ino: u64,
        off: u64,
        len: usize,
    ) -> Result<WriteBuf<'_, 'b, D, N, G>> {
        if len == 0 {
            return Err(FsError::InvalidArgument);
        }
        let end = off.checked_add(len as u64).ok_or(FsError::FileTooLarge)?;
        let c = self.prepare(ino, off, end)?;
        Ok(WriteBuf {
            vol: self,
            c,
            live: true,
        })
    }

    /// Lends the data buffer holding file `ino`'s bytes from `off`: at most `len` of them,
    /// fewer at the end of the file or past the buffer's size (then call again from `off` +
    /// the length returned); empty at or past the end. Each extent piece is one read; holes
    /// read as zeros. The slice is valid until the next call on the volume.
    pub fn read_buffer(&mut self, ino: u64, off: u64, len: usize) -> Result<&[u8]> {
        let inode = self.file(ino)?;
        if off >= inode.size || len == 0 {
            return Ok(&[]);
        }
        self.quiesce()?;
        let end = inode.size.min(off.saturating_add(len as u64));
        let fb = off / BS;
        let cap = (self.data.len() / BLOCK_SIZE) as u64;
        let k = ((end - 1) / BS + 1 - fb).min(cap);
        let mut i = 0;
        while i < k {
            let at = fb + i;
            let ext = self.extent_from(ino, at)?;
            let (n, phys) = match ext {
                Some((s, e, p)) if s <= at => ((e - at).min(k - i), Some(p + (at - s))),
                Some((s, _, _)) => ((s - at).min(k - i), None),
                None => (k - i, None),
            };
            let dst = &mut self.data[(i * BS) as usize..((i + n) * BS) as usize];
            match phys {
                Some(p) => {
                    self.dev
                        .read(p, dst)
                        .map_err(|e| FsError::io(IoOp::ReadData, e))?;
                    self.verify(ino, at, n, i as usize, p)?;
                }
                None => dst.fill(0),
            }
            i += n;
        }
        let lo = (off - fb * BS) as usize;
        let hi = (end.min((fb + k) * BS) - fb * BS) as usize;
        Ok(&self.data[lo..hi])
    }

    fn file(&mut self, ino: u64) -> Result<super::volume::Inode> {
        let i = self.stat(ino)?;
        if i.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if i.nlink == 0 {
            // Unlinked, its blocks being freed.
            return Err(FsError::NotFound);
        }
        Ok(i)
    }

    /// Writes `data` at byte `off` of file `ino` (anywhere: past the end, into holes). Every
    /// block touched goes to a new block, a run of them per chunk of the buffer's size, one
    /// I/O each. Returns the bytes written: short only when space ran out after the first
    /// chunk (then the file holds a consistent prefix of the write).
    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            if self.failed {
                return Err(FsError::Failed {
                    durable: self.tree.generation(),
                });
            }
            self.file(ino)?;
            return Ok(0);
        }
        let end = off
            .checked_add(data.len() as u64)
            .ok_or(FsError::FileTooLarge)?;
        let mut done = 0usize;
        while done < data.len() {
            let c = match self.prepare(ino, off + done as u64, end) {
                Ok(c) => c,
                Err(FsError::NoSpace) if done > 0 => break,
                Err(e) => return Err(e),
            };
            let n = c.hi - c.lo;
            self.data[c.base + c.lo..c.base + c.hi].copy_from_slice(&data[done..done + n]);
            self.finish(&c)?;
            done += n;
        }
        Ok(done)
    }

    /// Reads from byte `off` of file `ino` into `buf`; returns the bytes read (short at the
    /// end of the file). Holes read as zeros.
    pub fn read(&mut self, ino: u64, off: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let src = self.read_buffer(ino, off + done as u64, buf.len() - done)?;
            if src.is_empty() {
                break;
            }
            buf[done..done + src.len()].copy_from_slice(src);
            done += src.len();
        }
        Ok(done)
    }

    /// Sets the size of file `ino`: shrinking frees the blocks past the end (at commit) and
    /// zeroes the rest of the last block (in a new block), growing leaves a hole.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        self.tree.writable()?;
        let mut inode = self.file(ino)?;
        if size.div_ceil(BS) > MAX_FILE_BLOCKS {
            return Err(FsError::FileTooLarge);
        }
        self.quiesce()?;
        self.log.touch(ino, 0, 0);
        if size < inode.size {
            let keep = size.div_ceil(BS);
            self.log.touch(
                ino,
                (size / BS).min(keep),
                inode.size.div_ceil(BS).max(keep),
            );
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
            self.drop_csums(ino, keep)?;
            // The bytes of the last block past the new end read as zeros if the file grows
            // again: rewrite that block with them cleared.
            let tail = (size % BS) as usize;
            if tail != 0 {
                let fb = size / BS;
                if self.extent_at(ino, fb)?.is_some() {
                    self.room(8)?;
                    self.read_old(ino, fb, 0)?;
                    self.data[tail..BLOCK_SIZE].fill(0);
                    let nb = self.space.alloc(&mut self.dev)?;
                    let run = Run {
                        block: nb,
                        data: &self.data[..BLOCK_SIZE],
                    };
                    if let Err(e) = self.dev.write(&[run], WriteFlags::NONE) {
                        self.failed = true;
                        return Err(FsError::io(IoOp::WriteData, e));
                    }
                    self.map_range(ino, fb, 1, nb)?;
                    self.put_csums(ino, fb, 1, 0)?;
                }
            }
        }
        inode.size = size;
        inode.mtime = self.now;
        inode.ctime = self.now;
        self.room(1)?;
        self.put_inode(ino, &inode)
    }

    /// Frees up to `budget` extent items of `ino` (their blocks at commit), one at a time;
    /// returns how many (fewer than `budget`: none is left).
    pub(super) fn free_extents_upto(&mut self, ino: u64, budget: u64) -> Result<u64> {
        self.quiesce()?;
        let mut b = [0u8; EXTENT_SIZE];
        let mut done = 0;
        loop {
            if done == budget {
                return Ok(done);
            }
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
                    done += 1;
                }
                _ => return Ok(done),
            }
        }
    }
}

/// A prepared chunk of a write: file blocks `[fb, fb + k)` go to new blocks `[nb, nb + k)`
/// from buffer byte `base` on; buffer bytes `[base + lo, base + hi)` are the new ones.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    /// [`Volume::extent_from`]`(ino, fb)` when still true of the tree.
    first: Known,
    ino: u64,
    inode: Inode,
    fb: u64,
    k: u64,
    nb: u64,
    /// Where in the buffer the chunk's first block is.
    base: usize,
    /// Written behind (not waited for).
    behind: bool,
    lo: usize,
    hi: usize,
}

/// A region of the volume's data buffer lent for a zero-copy write
/// ([`Volume::write_buffer`]). It holds the volume borrowed; dropping it without
/// [`WriteBuf::commit`] gives its blocks back and leaves the file as it was.
pub struct WriteBuf<'v, 'b, D: BlockIo, const N: usize, const G: usize> {
    vol: &'v mut Volume<'b, D, N, G>,
    c: Chunk,
    live: bool,
}

impl<D: BlockIo, const N: usize, const G: usize> WriteBuf<'_, '_, D, N, G> {
    /// The bytes to fill: file bytes `[offset, offset + len)`.
    pub fn buf(&mut self) -> &mut [u8] {
        &mut self.vol.data[self.c.base + self.c.lo..self.c.base + self.c.hi]
    }

    /// Bytes lent (at most the `len` asked for).
    pub fn len(&self) -> usize {
        self.c.hi - self.c.lo
    }

    /// Whether the region is empty (never: a region has at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file offset of the region's first byte.
    pub fn offset(&self) -> u64 {
        self.c.fb * BS + self.c.lo as u64
    }

    /// Writes the region (one I/O) and maps it into the file; returns its length.
    pub fn commit(mut self) -> Result<usize> {
        self.live = false;
        self.vol.finish(&self.c)
    }
}

impl<D: BlockIo, const N: usize, const G: usize> Drop for WriteBuf<'_, '_, D, N, G> {
    fn drop(&mut self) {
        if self.live {
            self.vol.release(&self.c);
        }
    }
}
