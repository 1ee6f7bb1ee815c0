//! The filesystem's I/O over the `blk` block layer: every read and write becomes bios from the
//! filesystem's own [`BioSet`], whose front pad ([`FsIo`]) carries the per-I/O state; a
//! multi-block read is one bio, and the bios of a write batch are submitted under one plug so
//! the queue merges them before they reach the driver.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use blk::bio::MAX_VECS;
use blk::mem::DmaSpan;
use blk::{
    Bio, BioFlags, BioFuture, BioSet, BioVec, BlkError, BlockDevice, CpuCtx, Op, SECTOR_SIZE, Wait,
};

use crate::format::{BLOCK_SIZE, SECTORS_PER_BLOCK};
use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags};

/// Per-I/O state in front of every filesystem bio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsIo {
    /// First filesystem block of the I/O.
    pub block: u64,
    /// Blocks it covers.
    pub blocks: u32,
    /// Part of a commit record write (PREFLUSH | FUA).
    pub commit: bool,
}

/// Bios in flight per batch: the plug is released and the batch waited for when it is full.
pub const MAX_INFLIGHT: usize = 32;
/// Blocks per bio: one 4 KiB segment per block, `MAX_VECS` segments (1 MiB).
pub const BLOCKS_PER_BIO: usize = MAX_VECS;

/// A `blk` block device as a [`BlockIo`].
///
/// `set` is the filesystem's `BioSet<FsIo>` (a static with its own reserve, so the filesystem
/// keeps making progress when other users exhaust the shared slab); `wait` is called while
/// waiting for completions (halt until the next interrupt in a kernel; a yield or a spin on the
/// host, or a call that processes a deferred RAM disk's completions). The memory it does I/O to
/// is the filesystem's buffer, which must be the bytes of a `blk::mem::DmaRegion` (see
/// [`BlkDisk::new`]): that is how this module, which has no `unsafe`, builds segments.
pub struct BlkDisk {
    dev: &'static dyn BlockDevice,
    ctx: &'static CpuCtx,
    set: &'static BioSet<FsIo>,
    wait: fn(),
    mem: DmaSpan,
    blocks: u64,
    /// Write-behind bios in flight: the future and the memory range (address, bytes) it reads.
    pending: [Option<(BioFuture, usize, usize)>; MAX_INFLIGHT],
    /// Occupied slots of `pending` (the scans stop once they have seen them all).
    inflight: usize,
    /// First error of a write-behind bio not yet reported.
    error: Option<IoError>,
}

impl Drop for BlkDisk {
    /// Waits for the write-behind bios: their memory belongs to the caller again afterwards.
    fn drop(&mut self) {
        let _ = self.drain();
    }
}

impl core::fmt::Debug for BlkDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkDisk")
            .field("blocks", &self.blocks)
            .finish()
    }
}

/// The error of a bio for `block` that failed with `e`.
#[cold]
fn io_err(block: u64, e: BlkError) -> IoError {
    IoError::new(block, IoErrorKind::from(e))
}

/// The error of a completed bio: its first block from the front pad.
#[cold]
fn bio_err(bio: Option<&Bio>, e: BlkError) -> IoError {
    let block = bio.and_then(|b| b.front::<FsIo>()).map_or(0, |f| f.block);
    io_err(block, e)
}

impl BlkDisk {
    /// A filesystem device over `dev`; `None` when its logical block size does not divide 4096.
    ///
    /// `mem` is the span of the [`blk::mem::DmaRegion`] whose bytes are the filesystem's I/O
    /// buffer (given to [`crate::v1::Fs::new`], or the memory a [`crate::Fs`] mounts with); every read and write must fall inside it, or fails
    /// with [`IoErrorKind::Device`].
    pub fn new(
        dev: &'static dyn BlockDevice,
        ctx: &'static CpuCtx,
        set: &'static BioSet<FsIo>,
        wait: fn(),
        mem: DmaSpan,
    ) -> Option<Self> {
        let lbs = dev.logical_block_size();
        if lbs == 0
            || lbs as usize > BLOCK_SIZE
            || !BLOCK_SIZE.is_multiple_of(lbs as usize)
            || !lbs.is_multiple_of(SECTOR_SIZE)
        {
            return None;
        }
        Some(BlkDisk {
            dev,
            ctx,
            set,
            wait,
            mem,
            blocks: dev.capacity() / SECTORS_PER_BLOCK,
            pending: [const { None }; MAX_INFLIGHT],
            inflight: 0,
            error: None,
        })
    }

    /// The segment over `part`, which must lie in the filesystem's I/O memory (`mem`): the
    /// only memory this device does I/O to, so a bio in flight can never name memory that may
    /// be freed or reused.
    fn segment(&self, block: u64, part: &[u8]) -> Result<BioVec, IoError> {
        self.mem
            .segment_of(part)
            .ok_or(IoError::new(block, IoErrorKind::Device))
    }

    /// A bio for `blocks` blocks from `block` with room for `vecs` segments.
    fn bio(
        &self,
        op: Op,
        block: u64,
        blocks: usize,
        vecs: usize,
        flags: BioFlags,
        commit: bool,
    ) -> Result<Bio, IoError> {
        let front = FsIo {
            block,
            blocks: blocks as u32,
            commit,
        };
        let mut bio = self
            .set
            .alloc(front, op, vecs, Wait::Hook(self.wait))
            .map_err(|e| io_err(block, e))?;
        bio.set_dev(self.dev);
        bio.set_sector(block * SECTORS_PER_BLOCK);
        bio.set_flags(flags);
        Ok(bio)
    }

    /// Polls the write-behind bios until `busy(address, bytes)` holds for none still in
    /// flight and at least `free` slots are empty, calling the wait hook between polls.
    fn reap(&mut self, free: usize, busy: impl Fn(usize, usize) -> bool) {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut empty = MAX_INFLIGHT - self.inflight;
            let mut blocked = false;
            // Occupied slots not seen yet: the scan ends with the last of them.
            let mut left = self.inflight;
            for slot in self.pending.iter_mut() {
                if left == 0 {
                    break;
                }
                let Some((f, addr, len)) = slot.as_mut() else {
                    continue;
                };
                left -= 1;
                let hit = busy(*addr, *len);
                if !hit && empty >= free {
                    // Neither waited for nor needed for room: left for a later reap (`drain`
                    // polls every one, so an error is never lost).
                    continue;
                }
                match Pin::new(f).poll(&mut cx) {
                    Poll::Ready((status, bio)) => {
                        if let Err(e) = status
                            && self.error.is_none()
                        {
                            self.error = Some(bio_err(bio.as_ref(), e));
                        }
                        *slot = None;
                        self.inflight -= 1;
                        empty += 1;
                    }
                    Poll::Pending => blocked |= hit,
                }
            }
            if empty >= free && !blocked {
                return;
            }
            (self.wait)();
        }
    }

    fn take_error(&mut self) -> Result<(), IoError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every future, calling the wait hook between polls; the first error wins.
    fn wait_all(&self, futs: &mut [Option<BioFuture>]) -> Result<(), IoError> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut result = Ok(());
        loop {
            let mut pending = false;
            for slot in futs.iter_mut() {
                let Some(f) = slot.as_mut() else { continue };
                match Pin::new(f).poll(&mut cx) {
                    Poll::Ready((status, bio)) => {
                        if let Err(e) = status
                            && result.is_ok()
                        {
                            result = Err(bio_err(bio.as_ref(), e));
                        }
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
            if !pending {
                return result;
            }
            (self.wait)();
        }
    }

    /// Submits the bios `make(i)` for `i in 0..n`, plugged, at most [`MAX_INFLIGHT`] at a time,
    /// and waits for all of them.
    fn submit_all(
        &self,
        n: usize,
        make: &mut dyn FnMut(usize) -> Result<Bio, IoError>,
    ) -> Result<(), IoError> {
        if n == 1 {
            // One bio (a block, a run, a log block or a superblock): no table of futures to
            // fill and drop, which costs more than the rest of this function.
            let mut fut = [Some(blk::submit_bio_async(self.ctx, make(0)?))];
            return self.wait_all(&mut fut);
        }
        let mut i = 0;
        let mut result = Ok(());
        while i < n {
            let mut futs: [Option<BioFuture>; MAX_INFLIGHT] = [const { None }; MAX_INFLIGHT];
            // Slots filled: only those are polled at each wake-up.
            let mut used = 0;
            {
                let _plug = (n - i > 1).then(|| self.ctx.plug());
                for slot in futs.iter_mut() {
                    if i >= n {
                        break;
                    }
                    match make(i) {
                        Ok(bio) => *slot = Some(blk::submit_bio_async(self.ctx, bio)),
                        Err(e) => {
                            result = Err(e);
                            i = n;
                            break;
                        }
                    }
                    used += 1;
                    i += 1;
                }
            }
            let r = self.wait_all(&mut futs[..used]);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl BlockIo for BlkDisk {
    /// Submits the runs' bios (plugged) into free write-behind slots, first waiting for enough
    /// slots; a batch of more bios than slots is written and waited for like [`BlockIo::write`].
    fn write_behind(&mut self, runs: &[Run<'_>]) -> Result<(), IoError> {
        for r in runs {
            crate::io::check_range(self.blocks, r.block, r.data.len())?;
        }
        let chunk = BLOCKS_PER_BIO * BLOCK_SIZE;
        let total: usize = runs.iter().map(|r| r.data.len().div_ceil(chunk)).sum();
        if total > MAX_INFLIGHT {
            self.drain()?;
            return self.write(runs, WriteFlags::NONE);
        }
        if MAX_INFLIGHT - self.inflight < total {
            self.reap(total, |_, _| false);
        }
        // A plug only pays for itself with several bios to merge and batch; one bio (a
        // sequential write of up to `BLOCKS_PER_BIO` blocks) takes the queue's direct path.
        let _plug = (total > 1).then(|| self.ctx.plug());
        for r in runs {
            for (i, part) in r.data.chunks(chunk).enumerate() {
                let blocks = part.len() / BLOCK_SIZE;
                let at = r.block + (i * BLOCKS_PER_BIO) as u64;
                let mut bio = self.bio(Op::Write, at, blocks, 1, BioFlags::empty(), false)?;
                // One segment: the part is contiguous memory (the queue cuts it to its limits).
                // The device only reads this memory for a write.
                bio.add_vec(self.segment(at, part)?)
                    .map_err(|e| io_err(at, e))?;
                let slot = self
                    .pending
                    .iter()
                    .position(Option::is_none)
                    .ok_or(IoError::new(at, IoErrorKind::Device))?;
                let fut = blk::submit_bio_async(self.ctx, bio);
                self.pending[slot] = Some((fut, part.as_ptr() as usize, part.len()));
                self.inflight += 1;
            }
        }
        Ok(())
    }

    fn wait_for(&mut self, mem: &[u8]) -> Result<(), IoError> {
        let (lo, hi) = (mem.as_ptr() as usize, mem.as_ptr() as usize + mem.len());
        self.reap(0, |a, n| a < hi && lo < a + n);
        self.take_error()
    }

    fn drain(&mut self) -> Result<(), IoError> {
        self.reap(MAX_INFLIGHT, |_, _| true);
        self.take_error()
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }

    fn read_only(&self) -> bool {
        self.dev.read_only()
    }

    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        crate::io::check_range(self.blocks, block, buf.len())?;
        let chunk = BLOCKS_PER_BIO * BLOCK_SIZE;
        let n = buf.len().div_ceil(chunk);
        let this = &*self;
        let mut parts = buf.chunks_mut(chunk);
        this.submit_all(n, &mut |i| {
            let at = block + (i * BLOCKS_PER_BIO) as u64;
            let part = parts
                .next()
                .ok_or(IoError::new(at, IoErrorKind::OutOfRange))?;
            let blocks = part.len() / BLOCK_SIZE;
            let mut bio = this.bio(Op::Read, at, blocks, 1, BioFlags::empty(), false)?;
            // One segment: the part is contiguous memory.
            bio.add_vec(this.segment(at, part)?)
                .map_err(|e| io_err(at, e))?;
            Ok(bio)
        })
    }

    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        for r in runs {
            crate::io::check_range(self.blocks, r.block, r.data.len())?;
        }
        let chunk = BLOCKS_PER_BIO * BLOCK_SIZE;
        // Bio `i` of the batch: run by run, each cut into bios of at most BLOCKS_PER_BIO blocks.
        let total: usize = runs.iter().map(|r| r.data.len().div_ceil(chunk)).sum();
        let mut bf = BioFlags::empty();
        if flags.preflush {
            bf |= BioFlags::PREFLUSH;
        }
        if flags.fua {
            bf |= BioFlags::FUA;
        }
        let commit = flags.preflush && flags.fua;
        let this = &*self;
        this.submit_all(total, &mut |mut i| {
            for r in runs {
                let k = r.data.len().div_ceil(chunk);
                if i < k {
                    let part = &r.data[i * chunk..r.data.len().min((i + 1) * chunk)];
                    let blocks = part.len() / BLOCK_SIZE;
                    let at = r.block + (i * BLOCKS_PER_BIO) as u64;
                    let mut bio = this.bio(Op::Write, at, blocks, 1, bf, commit)?;
                    // One segment (contiguous memory); the device only reads it for a write.
                    bio.add_vec(this.segment(at, part)?)
                        .map_err(|e| io_err(at, e))?;
                    return Ok(bio);
                }
                i -= k;
            }
            Err(IoError::new(0, IoErrorKind::OutOfRange))
        })
    }
}
