//! dm-io: one call does I/O to up to [`MAX_REGIONS`] regions (device, sector, count), with the
//! memory described as bio vectors, a list of pages, a kernel buffer or a DMA buffer; it waits
//! ([`DmIo::run_sync`]) or calls back ([`DmIo::run_async`], [`IoNotify`]) with a per-region
//! error bitmap.
//!
//! A write sends the same memory to every region (what a mirror does); a read has one region.
//! Each region's bios are cut to its device's limits (`max_sectors`, `max_segments`,
//! `max_segment_size`) so the queue below never splits them. The bios come from the client's
//! own [`BioSet`] (its own reserve, so that dm-io makes progress when the shared slab is
//! empty: only dm-io's own bios in flight can be waited for) and are submitted through the
//! caller's [`CpuCtx`] (inside a stacked device's `submit` they only queue: no recursion).
//!
//! The state of one call lives in one of [`IO_SLOTS`] slots, taken from a lock-free tag set:
//! a slot is taken by the caller and given back by the last completion, so the region bios'
//! end-io (interrupt context) never takes a lock another context may hold.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use hal::DmaBuf;

use crate::bio::{Bio, BioFlags, BioVec, MAX_VECS, Op, SECTOR_SHIFT, bio_endio};
use crate::bioset::BioSet;
use crate::device::{BlockDevice, CpuCtx};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::mem::DmaSpan;
use crate::slab::Wait;
use crate::tag::TagSet;

/// Regions one call does I/O to at most (bits of the error bitmap).
pub const MAX_REGIONS: usize = 8;
/// Calls in flight at once per client.
pub const IO_SLOTS: usize = 64;
/// Bytes of a page in a [`Mem::Pages`] list.
pub const PAGE_BYTES: u32 = 4096;

/// One region: `count` sectors of `dev` from `sector`, and the limits of `dev`'s queue.
#[derive(Clone, Copy)]
pub struct Region {
    /// The device.
    pub dev: &'static dyn BlockDevice,
    /// First sector.
    pub sector: u64,
    /// Sectors (0 for a flush).
    pub count: u64,
    /// Limits the region's bios are cut to.
    pub limits: QueueLimits,
}

/// The memory of a call. A write sends it to every region; a read fills it from its region.
pub enum Mem<'a> {
    /// No memory (flush, discard, write-zeroes).
    None,
    /// Bio vectors, in order.
    Bvecs(&'a [BioVec]),
    /// Whole pages ([`PAGE_BYTES`] each, as segments), the data starting `offset` bytes into
    /// the first.
    Pages {
        /// The pages.
        pages: &'a [BioVec],
        /// Bytes to skip in the first page.
        offset: u32,
    },
    /// A kernel buffer to write from (only for [`DmIo::run_sync`], which waits for every bio
    /// before it returns the borrow).
    Kernel(&'a [u8]),
    /// A kernel buffer to read into (sync only, as [`Mem::Kernel`]).
    KernelMut(&'a mut [u8]),
    /// Bytes `offset..` of a DMA region's span (memory owned for ever, so async calls may use
    /// it).
    Dma(DmaSpan, usize),
    /// A DMA buffer (sync only: it is borrowed for the call).
    DmaBuf(&'a DmaBuf),
    /// The segments of the bio parked in the call ([`DmIo::run_async`] with `parked`): a
    /// stacked device sending its bio's data on (the bio outlives its region bios).
    Parked,
}

/// A call: operation, flags given to every bio (FUA, PREFLUSH, ...), regions.
#[derive(Clone, Copy)]
pub struct IoRequest<'r> {
    /// The operation.
    pub op: Op,
    /// Flags of every bio.
    pub flags: BioFlags,
    /// The regions (1 for a read, up to [`MAX_REGIONS`]).
    pub regions: &'r [Region],
}

/// What an async call reports.
pub struct IoDone {
    /// Bit `i` set: region `i` had an error (one of its bios failed).
    pub errors: u64,
    /// The bio parked in the call, handed back.
    pub parked: Option<Bio>,
    /// The caller's word.
    pub word: usize,
}

/// Receives the end of async calls. Runs in the completing context (often an interrupt
/// handler): it must not wait nor submit through the interrupted CPU's context.
pub trait IoNotify: Sync {
    /// One call ended.
    fn done(&'static self, d: IoDone);
}

/// The front pad of dm-io's bios: which client, call and region.
pub struct RegionIo {
    io: &'static DmIo,
    slot: u16,
    region: u8,
}

impl RegionIo {
    /// A front pad naming `io` (tests that fill a slab shared with dm-io).
    #[cfg(test)]
    pub(crate) fn for_test(io: &'static DmIo) -> RegionIo {
        RegionIo {
            io,
            slot: 0,
            region: 0,
        }
    }
}

struct Slot {
    /// Bios not yet completed, plus one while the call is being built.
    remaining: AtomicU32,
    errors: AtomicU64,
    sync: AtomicBool,
    done: AtomicBool,
    word: AtomicUsize,
    /// Touched only by the slot's owner: the caller while building, then the last completion
    /// (the tag and `remaining` order them), so the lock is never contended.
    parked: spin::Mutex<Option<Bio>>,
    notify: spin::Mutex<Option<&'static dyn IoNotify>>,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            remaining: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            sync: AtomicBool::new(false),
            done: AtomicBool::new(false),
            word: AtomicUsize::new(0),
            parked: spin::Mutex::new(None),
            notify: spin::Mutex::new(None),
        }
    }
}

/// A dm-io client: its bio set and its call slots.
pub struct DmIo {
    set: &'static BioSet<RegionIo>,
    tags: TagSet,
    slots: [Slot; IO_SLOTS],
    calls: AtomicU64,
    bios: AtomicU64,
}

/// Where the bytes of a call are: an iterator of segments over the memory.
#[derive(Clone)]
enum Src<'a> {
    None,
    Vecs {
        vecs: &'a [BioVec],
        idx: usize,
        skip: u32,
    },
    /// Kernel memory by address (translated page by page).
    Virt {
        addr: usize,
        left: usize,
    },
    /// Physically contiguous memory a sync call borrowed (a DMA buffer).
    Phys {
        phys: hal::PhysAddr,
        left: usize,
    },
    Span {
        span: DmaSpan,
        off: usize,
        left: usize,
    },
}

impl Src<'_> {
    /// The next piece of at most `max` bytes.
    #[allow(unsafe_code)] // segments over memory a sync call borrowed (SAFETY below)
    fn next(&mut self, max: u32) -> Option<BioVec> {
        match self {
            Src::None => None,
            Src::Vecs { vecs, idx, skip } => loop {
                let v = vecs.get(*idx)?;
                if *skip >= v.len() {
                    *idx += 1;
                    *skip = 0;
                    continue;
                }
                let n = (v.len() - *skip).min(max);
                let piece = v.part(*skip, n)?;
                *skip += n;
                return Some(piece);
            },
            Src::Virt { addr, left } => {
                if *left == 0 {
                    return None;
                }
                let in_page = PAGE_BYTES as usize - (*addr % PAGE_BYTES as usize);
                let n = (*left).min(in_page).min(max as usize);
                let phys = hal::mem::virt_to_phys(*addr);
                *addr += n;
                *left -= n;
                // SAFETY: the segment contract for kernel memory a sync call borrowed
                // (`Mem::Kernel`/`KernelMut`): the bytes are inside the caller's slice, which
                // stays borrowed (so valid and not otherwise accessed, for a read not even
                // read) until `run_sync` has waited for every bio of the call; the translation
                // of each page is `hal`'s, which the CPU path uses too.
                Some(unsafe { segment(phys, n as u32) })
            }
            Src::Phys { phys, left } => {
                if *left == 0 {
                    return None;
                }
                let n = (*left).min(max as usize);
                let at = *phys;
                *phys = phys.add(n as u64);
                *left -= n;
                // SAFETY: the segment contract for a DMA buffer a sync call borrowed
                // (`Mem::DmaBuf`): DMA memory, physically contiguous, inside the buffer, which
                // stays borrowed until `run_sync` has waited for every bio of the call.
                Some(unsafe { segment(at, n as u32) })
            }
            Src::Span { span, off, left } => {
                if *left == 0 {
                    return None;
                }
                let n = (*left).min(max as usize);
                let v = span.segment(*off, n as u32)?;
                *off += n;
                *left -= n;
                Some(v)
            }
        }
    }
}

/// A segment over borrowed memory.
///
/// # Safety
/// The segment contract of [`BioVec::new`] holds for `phys..phys + len` until every bio
/// carrying the segment completed.
#[allow(unsafe_code)]
unsafe fn segment(phys: hal::PhysAddr, len: u32) -> BioVec {
    // SAFETY: the caller's promise.
    unsafe { BioVec::new(phys, len) }
}

impl DmIo {
    /// A client allocating its bios from `set` (give the set a reserve of at least the bios
    /// of one call: one per region per `max_sectors` piece).
    pub const fn new(set: &'static BioSet<RegionIo>) -> Self {
        DmIo {
            set,
            tags: TagSet::new(IO_SLOTS),
            slots: [const { Slot::new() }; IO_SLOTS],
            calls: AtomicU64::new(0),
            bios: AtomicU64::new(0),
        }
    }

    /// Calls and bios issued so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.bios.load(Ordering::Relaxed),
        )
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.tags.in_use()
    }

    /// The bio set.
    pub fn set(&self) -> &'static BioSet<RegionIo> {
        self.set
    }

    /// Does the call and waits for it, calling `wait` between checks. `Ok(errors)`: the
    /// per-region error bitmap (0: all went well). Must not be called from a device's `submit`
    /// (its bios would only queue behind the caller).
    pub fn run_sync(
        &'static self,
        ctx: &CpuCtx,
        req: &IoRequest<'_>,
        mem: Mem<'_>,
        wait: fn(),
    ) -> Result<u64, BlkError> {
        let slot = self
            .start(req, &mem, None, None, 0, Wait::Hook(wait), ctx)
            .map_err(|(e, _)| e)?;
        let s = &self.slots[slot as usize];
        while !s.done.load(Ordering::Acquire) {
            wait();
        }
        let errors = s.errors.swap(0, Ordering::Relaxed);
        s.done.store(false, Ordering::Relaxed);
        self.tags.free(slot);
        Ok(errors)
    }

    /// Starts the call; `notify.done` gets the error bitmap, `parked` and `word` when every
    /// bio completed. Memory must outlive the call: `Mem::Parked` (the parked bio's segments),
    /// `Bvecs`/`Pages` (segments whose contract covers the call), `Dma`; `Kernel`,
    /// `KernelMut` and `DmaBuf` are refused. A refused call (bad request, no slot with
    /// `Wait::Never`) submitted nothing and hands `parked` back; a bio that could not be built
    /// after others went down (no memory with `Wait::Never`) shows as its region's error.
    #[allow(clippy::too_many_arguments)]
    pub fn run_async(
        &'static self,
        ctx: &CpuCtx,
        req: &IoRequest<'_>,
        mem: Mem<'static>,
        parked: Option<Bio>,
        notify: &'static dyn IoNotify,
        word: usize,
        wait: Wait,
    ) -> Result<(), (BlkError, Option<Bio>)> {
        if matches!(mem, Mem::Kernel(_) | Mem::KernelMut(_) | Mem::DmaBuf(_)) {
            return Err((BlkError::InvalidArgument, parked));
        }
        self.start(req, &mem, parked, Some(notify), word, wait, ctx)?;
        Ok(())
    }

    /// Takes a slot (the parked bio in it), builds and submits every bio of the call, then
    /// drops the builder's hold: the last completion ends the call (`notify`, or the sync
    /// waiter when `notify` is `None`). A refusal before the first bio (bad request, no slot)
    /// hands `parked` back; a bio that cannot be built later marks its region and the ones
    /// after it in the error bitmap.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &'static self,
        req: &IoRequest<'_>,
        mem: &Mem<'_>,
        parked: Option<Bio>,
        notify: Option<&'static dyn IoNotify>,
        word: usize,
        wait: Wait,
        ctx: &CpuCtx,
    ) -> Result<u16, (BlkError, Option<Bio>)> {
        let refuse = |e: BlkError, parked: Option<Bio>| Err((e, parked));
        let n = req.regions.len();
        if n == 0 || n > MAX_REGIONS || (req.op == Op::Read && n != 1) {
            return refuse(BlkError::InvalidArgument, parked);
        }
        if req.op.has_data() == matches!(mem, Mem::None) {
            return refuse(BlkError::InvalidArgument, parked);
        }
        if req.op == Op::Read && matches!(mem, Mem::Kernel(_)) {
            return refuse(BlkError::InvalidArgument, parked);
        }
        // Room in the memory for the largest region.
        let need = req.regions.iter().map(|r| r.count).max().unwrap_or(0) << SECTOR_SHIFT;
        let have = match mem {
            Mem::None => 0,
            Mem::Bvecs(v) => v.iter().map(|v| v.len() as u64).sum(),
            Mem::Pages { pages, offset } => {
                if pages.iter().any(|p| p.len() != PAGE_BYTES) {
                    return refuse(BlkError::InvalidArgument, parked);
                }
                (pages.len() as u64 * PAGE_BYTES as u64).saturating_sub(*offset as u64)
            }
            Mem::Kernel(b) => b.len() as u64,
            Mem::KernelMut(b) => b.len() as u64,
            Mem::Dma(s, off) => (s.len() as u64).saturating_sub(*off as u64),
            Mem::DmaBuf(b) => b.len() as u64,
            Mem::Parked => parked.as_ref().map_or(0, |b| b.size() as u64),
        };
        if req.op.has_data() && have < need {
            return refuse(BlkError::InvalidArgument, parked);
        }
        let slot = loop {
            if let Some(t) = self.tags.alloc() {
                break t;
            }
            if matches!(wait, Wait::Never) {
                return refuse(BlkError::NoMemory, parked);
            }
            // Bios this context holds on its plug may be what the calls in flight wait for.
            ctx.flush_plug();
            wait.wait_once();
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let s = &self.slots[slot as usize];
        s.errors.store(0, Ordering::Relaxed);
        s.done.store(false, Ordering::Relaxed);
        s.sync.store(notify.is_none(), Ordering::Relaxed);
        s.word.store(word, Ordering::Relaxed);
        s.remaining.store(1, Ordering::Relaxed);
        if notify.is_some() {
            *s.notify.lock() = notify;
        }
        {
            // Completions never take this lock before the builder's hold is dropped below.
            let mut guard = s.parked.lock();
            *guard = parked;
            let parked_vecs: &[BioVec] = match (mem, guard.as_ref()) {
                (Mem::Parked, Some(b)) => b.vecs(),
                _ => &[],
            };
            let parked_skip = match (mem, guard.as_ref()) {
                (Mem::Parked, Some(b)) => Some(b.iter()),
                _ => None,
            };
            let src = match mem {
                Mem::None => Src::None,
                Mem::Bvecs(v) => Src::Vecs {
                    vecs: v,
                    idx: 0,
                    skip: 0,
                },
                Mem::Pages { pages, offset } => Src::Vecs {
                    vecs: pages,
                    idx: 0,
                    skip: *offset,
                },
                Mem::Kernel(b) => Src::Virt {
                    addr: b.as_ptr() as usize,
                    left: b.len(),
                },
                Mem::KernelMut(b) => Src::Virt {
                    addr: b.as_ptr() as usize,
                    left: b.len(),
                },
                Mem::Dma(span, off) => Src::Span {
                    span: *span,
                    off: *off,
                    left: span.len().saturating_sub(*off),
                },
                Mem::DmaBuf(b) => Src::Phys {
                    phys: b.phys(),
                    left: b.len(),
                },
                Mem::Parked => Src::Vecs {
                    vecs: parked_vecs,
                    idx: parked_skip.map_or(0, |i| i.idx as usize),
                    skip: parked_skip.map_or(0, |i| i.done),
                },
            };
            for (i, reg) in req.regions.iter().enumerate() {
                if self
                    .build_region(req, i, reg, src.clone(), slot, wait, ctx)
                    .is_err()
                {
                    let all = (1u64 << req.regions.len()) - 1;
                    s.errors
                        .fetch_or(all & !((1u64 << i) - 1), Ordering::Relaxed);
                    break;
                }
            }
        }
        self.put(slot);
        Ok(slot)
    }

    /// Builds and submits the bios of region `i`, cut to its limits.
    #[allow(clippy::too_many_arguments)]
    fn build_region(
        &'static self,
        req: &IoRequest<'_>,
        i: usize,
        reg: &Region,
        mut src: Src<'_>,
        slot: u16,
        wait: Wait,
        ctx: &CpuCtx,
    ) -> Result<(), BlkError> {
        let s = &self.slots[slot as usize];
        let l = &reg.limits;
        let lbs = reg
            .dev
            .logical_block_size()
            .max(l.logical_block_size)
            .max(512) as u64;
        let max_bytes = ((l.max_sectors.max(1) as u64) << SECTOR_SHIFT) / lbs * lbs;
        let max_bytes = max_bytes.max(lbs).min(u32::MAX as u64 / 2);
        let max_segs = (l.max_segments.max(1) as usize).min(MAX_VECS);
        let max_seg = l.max_segment_size.max(512);
        let mut sector = reg.sector;
        let mut left = reg.count << SECTOR_SHIFT;
        let front = |_: ()| RegionIo {
            io: self,
            slot,
            region: i as u8,
        };
        if !req.op.has_data() {
            // One bio per region for a flush; discard/write-zeroes by `max_bytes`.
            loop {
                let n = left.min(max_bytes);
                let mut b = self.set.alloc(front(()), req.op, 0, wait)?;
                b.set_flags(req.flags);
                b.set_dev(reg.dev);
                b.set_sector(sector);
                if req.op != Op::Flush {
                    b.set_size(n as u32)?;
                }
                b.set_end_io(region_end);
                s.remaining.fetch_add(1, Ordering::Relaxed);
                self.bios.fetch_add(1, Ordering::Relaxed);
                ctx.submit(b);
                sector += n >> SECTOR_SHIFT;
                left -= n;
                if left == 0 {
                    return Ok(());
                }
            }
        }
        while left > 0 {
            // Count the pieces of this bio, then take them.
            let mut probe = src.clone();
            let (mut segs, mut bytes) = (0usize, 0u64);
            while segs < max_segs && bytes < left.min(max_bytes) {
                let room = (left.min(max_bytes) - bytes).min(max_seg as u64) as u32;
                let Some(v) = probe.next(room) else { break };
                segs += 1;
                bytes += v.len() as u64;
            }
            // Whole blocks only: a bio ending inside a block is cut back to the block.
            let whole = bytes / lbs * lbs;
            if whole == 0 {
                return Err(BlkError::Misaligned);
            }
            let mut b = self.set.alloc(front(()), req.op, segs, wait)?;
            b.set_flags(req.flags);
            b.set_dev(reg.dev);
            b.set_sector(sector);
            b.set_end_io(region_end);
            let mut got = 0u64;
            while got < whole {
                let room = (whole - got).min(max_seg as u64) as u32;
                let Some(v) = src.next(room) else { break };
                got += v.len() as u64;
                b.add_vec(v)?;
            }
            s.remaining.fetch_add(1, Ordering::Relaxed);
            self.bios.fetch_add(1, Ordering::Relaxed);
            ctx.submit(b);
            sector += whole >> SECTOR_SHIFT;
            left -= whole;
        }
        Ok(())
    }

    fn put(&'static self, slot: u16) {
        let s = &self.slots[slot as usize];
        if s.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if s.sync.load(Ordering::Relaxed) {
            s.done.store(true, Ordering::Release);
            return;
        }
        let d = IoDone {
            errors: s.errors.swap(0, Ordering::Relaxed),
            parked: s.parked.lock().take(),
            word: s.word.load(Ordering::Relaxed),
        };
        let notify = s.notify.lock().take();
        self.tags.free(slot);
        match notify {
            Some(n) => n.done(d),
            None => {
                if let Some(b) = d.parked {
                    bio_endio(b);
                }
            }
        }
    }
}

/// End-io of every dm-io bio: records the region's error, frees the bio, drops the call's
/// count.
fn region_end(bio: Bio) {
    let Some(r) = bio.front::<RegionIo>() else {
        return;
    };
    let (io, slot, region) = (r.io, r.slot, r.region);
    if bio.status().is_err() {
        io.slots[slot as usize]
            .errors
            .fetch_or(1 << region, Ordering::Relaxed);
    }
    drop(bio);
    io.put(slot);
}
