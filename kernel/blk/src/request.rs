//! Requests, the request queue of a driver, the hardware-queue trait, completion by tag,
//! requeue, timeouts and passthrough commands.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::bio::{
    Bio, BioFlags, BioList, BioListIter, BioVec, Op, SECTOR_SHIFT, bio_endio, bio_io_error,
};
use crate::bioset::BioSet;
use crate::bounce::{BOUNCE_MAX_BYTES, Bouncer};
use crate::device::{BlockDevice, CpuCtx, check_bio_dev};
use crate::error::{BlkError, BlkStatus, status_code, status_from_code};
use crate::limits::{QueueLimits, check_bio, split_point};
use crate::map_sg::{SgEntry, map_sg};
use crate::slab::Wait;
use crate::split::bio_split;
use crate::stats::BlkStats;
use crate::tag::{MAX_DEPTH, TAG_WORDS, TagSet};

/// A pre-built driver command (identify, flush, an admin command) sent through the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PtCmd {
    /// Driver-defined opcode.
    pub opcode: u32,
    /// Driver-defined arguments.
    pub args: [u64; 4],
    /// Optional data buffer.
    pub data: Option<BioVec>,
    /// Whether the data goes to the device.
    pub write: bool,
}

/// The outcome of a passthrough command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtResult {
    /// Status.
    pub status: BlkStatus,
    /// Driver-defined result word (e.g. a completion queue entry's result field).
    pub result: u64,
    /// The submitter's private word.
    pub private: usize,
    /// The command.
    pub cmd: PtCmd,
}

#[derive(Clone, Copy)]
enum PtKind {
    Async(fn(PtResult), usize),
    Sync,
}

/// A driver's answer to `queue_rq` when it cannot take the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRqError {
    /// No room now (ring full): the request is requeued and dispatched again by `kick`.
    Busy,
    /// The request can never be done: its bios end with this error.
    Fatal(BlkError),
}

/// A driver's decision for a request past its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    /// The command was aborted: dispatch it again (while retries last, then fail).
    Retry,
    /// The command was aborted: fail it with `Timeout`.
    Fail,
    /// Still working: give it another timeout period.
    Extend,
}

/// The driver side of a request queue.
///
/// `queue_rq` runs in process context; `poll` may be called from anywhere; completion is the
/// driver calling [`Queue::complete`] (from its interrupt handler) with the tag.
pub trait HwQueue: Sync {
    /// Takes request `rq` (build descriptors with [`Request::map_sg`]). `last` is true for
    /// the last request of a batch. The driver may complete the request before returning.
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError>;
    /// Ends a batch: ring the doorbell.
    fn commit(&self) {}
    /// Reaps completions without an interrupt; returns how many.
    fn poll(&self) -> usize {
        0
    }
    /// `rq` passed its deadline. Abort it in the hardware before returning `Retry` or `Fail`.
    fn timeout(&self, rq: &Request) -> TimeoutAction {
        let _ = rq;
        TimeoutAction::Retry
    }
}

/// What a driver calls back on: completion by tag (implemented by [`Queue`]).
pub trait TagComplete: Sync {
    /// Completes request `tag` with `status`; `done_bytes` (if given) is how much was
    /// transferred before the error, or a partial success. Lock-free; interrupt-safe.
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>);
    /// Completes passthrough request `tag` with a result word.
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64);
    /// Dispatches requeued requests (process context).
    fn kick(&self);
}

/// A request: a contiguous range made of one or more bios (or a passthrough command), with a
/// tag that names its slot in the queue's static array.
pub struct Request {
    tag: u16,
    op: Op,
    flags: BioFlags,
    sector: u64,
    bytes: u32,
    nr_segs: u32,
    bios: BioList,
    first_seg: BioVec,
    last_seg: BioVec,
    retries: u8,
    pt: Option<(PtCmd, PtKind)>,
}

impl Request {
    const fn empty(tag: u16) -> Self {
        Request {
            tag,
            op: Op::Read,
            flags: BioFlags::empty(),
            sector: 0,
            bytes: 0,
            nr_segs: 0,
            bios: BioList::new(),
            first_seg: BioVec::ZERO,
            last_seg: BioVec::ZERO,
            retries: 0,
            pt: None,
        }
    }

    /// The tag (index in the queue's request array).
    pub fn tag(&self) -> u16 {
        self.tag
    }
    /// The operation.
    pub fn op(&self) -> Op {
        self.op
    }
    /// Flags of the bios (all bios of a request have the same).
    pub fn flags(&self) -> BioFlags {
        self.flags
    }
    /// First sector still to do.
    pub fn sector(&self) -> u64 {
        self.sector
    }
    /// Bytes still to do.
    pub fn bytes(&self) -> u32 {
        self.bytes
    }
    /// Upper bound of the scatter-gather entries `map_sg` produces.
    pub fn nr_segments(&self) -> u32 {
        self.nr_segs
    }
    /// Attempts so far beyond the first.
    pub fn retries(&self) -> u8 {
        self.retries
    }
    /// The bios, in order.
    pub fn bios(&self) -> BioListIter<'_> {
        self.bios.iter()
    }
    /// All segments still to transfer, in order.
    pub fn segments(&self) -> impl Iterator<Item = BioVec> + '_ {
        self.bios.iter().flat_map(|b| b.segments())
    }
    /// The passthrough command, if this is one.
    pub fn passthrough(&self) -> Option<&PtCmd> {
        self.pt.as_ref().map(|(c, _)| c)
    }
    /// The scatter-gather list (see [`map_sg`]).
    pub fn map_sg(&self, limits: &QueueLimits, out: &mut [SgEntry]) -> Result<usize, BlkError> {
        map_sg(self, limits, out)
    }
    /// A request outside any queue made of `bios` (for drivers' host tests and benchmarks of
    /// `map_sg`): starts at the first bio, `bytes` is their sum, tag 0.
    pub fn standalone(mut bios: BioList) -> Self {
        bios.normalize();
        let mut rq = Request::empty(0);
        if let Some(b) = bios.first() {
            rq.op = b.op();
            rq.flags = b.flags();
            rq.sector = b.sector();
        }
        rq.bytes = bios.iter().map(|b| b.size()).sum();
        rq.nr_segs = bios.iter().map(|b| b.segments().count() as u32).sum();
        rq.bios = bios;
        rq
    }

    fn end_sector(&self) -> u64 {
        self.sector + (self.bytes >> SECTOR_SHIFT) as u64
    }
}

const FREE: u8 = 0;
const BUILD: u8 = 1;
const DISPATCHING: u8 = 2;
const INFLIGHT: u8 = 3;
const COMPLETING: u8 = 4;
const EARLY: u8 = 5;
const REQUEUE: u8 = 6;
const TIMEDOUT: u8 = 7;
const PT_DONE: u8 = 8;

const NO_BYTES: u32 = u32::MAX;

/// A request slot. Its `state` decides who owns the request: whoever moves it out of a state
/// by CAS. The spin lock is therefore never contended; it only gives safe interior mutability.
struct RqSlot {
    state: AtomicU8,
    deadline: AtomicU64,
    early_status: AtomicU32,
    early_bytes: AtomicU32,
    result: AtomicU64,
    rq: spin::Mutex<Request>,
}

impl RqSlot {
    const fn new(tag: u16) -> Self {
        RqSlot {
            state: AtomicU8::new(FREE),
            deadline: AtomicU64::new(u64::MAX),
            early_status: AtomicU32::new(0),
            early_bytes: AtomicU32::new(NO_BYTES),
            result: AtomicU64::new(0),
            rq: spin::Mutex::new(Request::empty(tag)),
        }
    }
}

/// Settings of a [`Queue`] besides the driver and the limits.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Refuse writes.
    pub read_only: bool,
    /// Time a request may be in flight (clock units, ns) before the timeout hook.
    pub timeout_ns: u64,
    /// Retries after an error or a timeout.
    pub max_retries: u8,
    /// How to wait for a free tag or memory on the submit path.
    pub wait: Wait,
    /// The kernel's monotonic clock in ns.
    pub clock: fn() -> u64,
}

fn zero_clock() -> u64 {
    0
}

impl QueueConfig {
    /// A read-write queue of `capacity` sectors: 30 s timeout, 3 retries, spin waits, and a
    /// clock that always says 0 (set `clock` for timeouts to fire).
    pub const fn new(capacity: u64) -> Self {
        QueueConfig {
            capacity,
            read_only: false,
            timeout_ns: 30_000_000_000,
            max_retries: 3,
            wait: Wait::Spin,
            clock: zero_clock,
        }
    }
}

/// Rounds of re-dispatch one `kick` does at most (a driver answering `Busy` forever must not
/// keep the submitter spinning).
pub const KICK_ROUNDS: usize = 16;

/// Most requests merged and dispatched as one batch.
pub const BATCH_MAX: usize = 32;

/// A driver's request queue: `D` request slots indexed by tag, a tag set, the driver's
/// limits, and the submit → split → bounce → merge → dispatch → complete path.
pub struct Queue<const D: usize> {
    hw: &'static dyn HwQueue,
    limits: QueueLimits,
    cfg: QueueConfig,
    capacity: AtomicU64,
    tags: TagSet,
    slots: [RqSlot; D],
    requeue: [AtomicU64; TAG_WORDS],
    split_set: &'static BioSet<()>,
    bouncer: Option<&'static Bouncer>,
    stats: BlkStats,
}

type Open = heapless::Vec<u16, BATCH_MAX>;

impl<const D: usize> Queue<D> {
    /// A queue of depth `D` (at most 1024) for driver `hw`. Split bios come from `split_set`.
    pub const fn new(
        hw: &'static dyn HwQueue,
        limits: QueueLimits,
        cfg: QueueConfig,
        split_set: &'static BioSet<()>,
    ) -> Self {
        assert!(D >= 1 && D <= MAX_DEPTH, "queue depth out of range");
        // Each request gets its tag written when its slot is taken.
        let slots = [const { RqSlot::new(0) }; D];
        Queue {
            hw,
            limits,
            cfg,
            capacity: AtomicU64::new(cfg.capacity),
            tags: TagSet::new(D),
            slots,
            requeue: [const { AtomicU64::new(0) }; TAG_WORDS],
            split_set,
            bouncer: None,
            stats: BlkStats::new(),
        }
    }

    /// Bounce buffers for segments above `limits.dma_limit`.
    pub const fn with_bounce(mut self, b: &'static Bouncer) -> Self {
        self.bouncer = Some(b);
        self
    }

    /// The limits.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Tags in use now.
    pub fn tags_in_use(&self) -> usize {
        self.tags.in_use()
    }

    /// Changes the capacity (e.g. after the driver identified the device).
    pub fn set_capacity(&self, sectors: u64) {
        self.capacity.store(sectors, Ordering::Relaxed);
    }

    fn slot(&self, tag: u16) -> Option<&RqSlot> {
        self.slots.get(tag as usize)
    }

    fn get_tag(&self) -> Option<u16> {
        loop {
            if let Some(t) = self.tags.alloc() {
                return Some(t);
            }
            if matches!(self.cfg.wait, Wait::Never) {
                return None;
            }
            self.kick();
            self.hw.poll();
            self.cfg.wait.wait_once();
        }
    }

    fn release(&self, slot: &RqSlot, tag: u16) {
        slot.deadline.store(u64::MAX, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
        self.tags.free(tag);
    }

    /// Splits, bounces, merges and dispatches `bios` (in order).
    fn make_requests(&'static self, mut bios: BioList) {
        let mut open = Open::new();
        let l = &self.limits;
        while let Some(bio) = bios.pop_front() {
            self.stats.bios_submitted(1);
            if let Err(e) = check_bio(l, &bio) {
                self.stats.bio_errors(1);
                bio_io_error(bio, e);
                continue;
            }
            let mut work = BioList::new();
            work.push_back(bio);
            while let Some(mut b) = work.pop_front() {
                if l.needs_bounce(&b) {
                    let Some(bouncer) = self.bouncer else {
                        self.stats.bio_errors(1);
                        bio_io_error(b, BlkError::Unsupported);
                        continue;
                    };
                    let cap = BOUNCE_MAX_BYTES / l.logical_block_size * l.logical_block_size;
                    if b.size() > cap {
                        match bio_split(&mut b, cap, self.split_set, self.cfg.wait) {
                            Ok(front) => {
                                self.stats.splits(1);
                                work.push_front(b);
                                work.push_front(front);
                            }
                            Err(e) => {
                                self.stats.bio_errors(1);
                                bio_io_error(b, e);
                            }
                        }
                        continue;
                    }
                    match bouncer.bounce(b, l, self.cfg.wait) {
                        Ok(c) => {
                            self.stats.bounces(1);
                            b = c;
                        }
                        Err((e, b)) => {
                            self.stats.bio_errors(1);
                            bio_io_error(b, e);
                            continue;
                        }
                    }
                }
                match split_point(l, &b, None) {
                    Err(e) => {
                        self.stats.bio_errors(1);
                        bio_io_error(b, e);
                    }
                    Ok(None) => self.add_bio(b, &mut open),
                    Ok(Some(n)) => match bio_split(&mut b, n, self.split_set, self.cfg.wait) {
                        Ok(front) => {
                            self.stats.splits(1);
                            work.push_front(b);
                            self.add_bio(front, &mut open);
                        }
                        Err(e) => {
                            self.stats.bio_errors(1);
                            bio_io_error(b, e);
                        }
                    },
                }
            }
        }
        self.dispatch(&open);
        self.kick();
    }

    fn try_merge(&self, rq: &mut Request, bio: &Bio, segs: u32) -> Option<bool> {
        let l = &self.limits;
        let mergeable = |f: BioFlags| !f.intersects(BioFlags::NOMERGE | BioFlags::PREFLUSH);
        if rq.pt.is_some()
            || rq.op != bio.op()
            || !bio.op().has_data()
            || rq.flags != bio.flags()
            || !mergeable(bio.flags())
            || rq.bytes as u64 + bio.size() as u64 > l.max_bytes() as u64
            || rq.nr_segs + segs > l.max_segments as u32
        {
            return None;
        }
        let (start, end) = (
            rq.sector.min(bio.sector()),
            rq.end_sector().max(bio.end_sector()),
        );
        if l.chunk_sectors != 0
            && start / l.chunk_sectors as u64 != (end - 1) / l.chunk_sectors as u64
        {
            return None;
        }
        let first = bio.segments().next()?;
        let last = bio.segments().last()?;
        if rq.end_sector() == bio.sector() && !l.virt_gap(&rq.last_seg, &first) {
            return Some(true);
        }
        if bio.end_sector() == rq.sector && !l.virt_gap(&last, &rq.first_seg) {
            return Some(false);
        }
        None
    }

    fn add_bio(&'static self, bio: Bio, open: &mut Open) {
        let segs = self.limits.bio_segments(&bio);
        for &t in open.iter().rev() {
            let Some(slot) = self.slot(t) else { continue };
            let mut rq = slot.rq.lock();
            match self.try_merge(&mut rq, &bio, segs) {
                Some(true) => {
                    rq.bytes += bio.size();
                    rq.nr_segs += segs;
                    if let Some(v) = bio.segments().last() {
                        rq.last_seg = v;
                    }
                    rq.bios.push_back(bio);
                    self.stats.merges_back(1);
                    return;
                }
                Some(false) => {
                    rq.bytes += bio.size();
                    rq.nr_segs += segs;
                    rq.sector = bio.sector();
                    if let Some(v) = bio.segments().next() {
                        rq.first_seg = v;
                    }
                    rq.bios.push_front(bio);
                    self.stats.merges_front(1);
                    return;
                }
                None => {}
            }
        }
        if open.is_full() {
            self.dispatch(open);
            open.clear();
        }
        let tag = match self.tags.alloc() {
            Some(t) => Some(t),
            None => {
                // Let the open batch go first: its completions free tags.
                self.dispatch(open);
                open.clear();
                self.get_tag()
            }
        };
        let Some(tag) = tag else {
            self.stats.bio_errors(1);
            bio_io_error(bio, BlkError::Busy);
            return;
        };
        let Some(slot) = self.slot(tag) else { return };
        slot.state.store(BUILD, Ordering::Relaxed);
        {
            let mut rq = slot.rq.lock();
            rq.tag = tag;
            rq.op = bio.op();
            rq.flags = bio.flags();
            rq.sector = bio.sector();
            rq.bytes = bio.size();
            rq.nr_segs = segs;
            rq.retries = 0;
            rq.pt = None;
            rq.first_seg = bio.segments().next().unwrap_or(BioVec::ZERO);
            rq.last_seg = bio.segments().last().unwrap_or(BioVec::ZERO);
            rq.bios.push_back(bio);
        }
        let _ = open.push(tag);
    }

    /// Hands requests in state BUILD or REQUEUE (already moved to BUILD) to the driver.
    fn dispatch(&self, tags: &[u16]) {
        if tags.is_empty() {
            return;
        }
        let now = (self.cfg.clock)();
        let n = tags.len();
        for (i, &t) in tags.iter().enumerate() {
            let Some(slot) = self.slot(t) else { continue };
            slot.early_bytes.store(NO_BYTES, Ordering::Relaxed);
            slot.deadline
                .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
            slot.state.store(DISPATCHING, Ordering::Release);
            let res = {
                let mut rq = slot.rq.lock();
                rq.bios.normalize();
                self.hw.queue_rq(&rq, i + 1 == n)
            };
            self.dispatched(slot, t, res);
        }
        self.hw.commit();
    }

    /// What follows the driver's answer to `queue_rq` for request `t`.
    #[inline]
    fn dispatched(&self, slot: &RqSlot, t: u16, res: Result<(), QueueRqError>) {
        self.stats.requests_dispatched(1);
        {
            {
                match res {
                    Ok(()) => {
                        if slot
                            .state
                            .compare_exchange(
                                DISPATCHING,
                                INFLIGHT,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_err()
                        {
                            // Completed during queue_rq (state EARLY): finish it here.
                            let st = status_from_code(slot.early_status.load(Ordering::Acquire));
                            let b = slot.early_bytes.load(Ordering::Acquire);
                            slot.state.store(COMPLETING, Ordering::Release);
                            self.finish(t, st, (b != NO_BYTES).then_some(b), true);
                        }
                    }
                    Err(QueueRqError::Busy) => {
                        // A completion cannot have arrived for a request the driver refused.
                        self.stats.requeues(1);
                        self.mark_requeue(slot, t);
                    }
                    Err(QueueRqError::Fatal(e)) => {
                        slot.state.store(COMPLETING, Ordering::Release);
                        self.finish(t, Err(e), Some(0), false);
                    }
                }
            }
        }
    }

    /// Bitmap words the depth uses.
    const WORDS: usize = D.div_ceil(64);

    #[inline]
    fn requeue_pending(&self) -> bool {
        self.requeue[..Self::WORDS]
            .iter()
            .any(|w| w.load(Ordering::Relaxed) != 0)
    }

    /// Segment count of `bio` if it can become a request of its own as it is: a flush, or a
    /// read/write of at most `DIRECT_SEGS` segments, each within the DMA limit and alignment,
    /// the segment size and boundary, without virt-boundary gaps, within max sectors,
    /// max segments and one chunk. Sector, size and range were checked by `submit_bio`.
    #[inline]
    fn direct_segments(&self, bio: &Bio) -> Option<u32> {
        const DIRECT_SEGS: u32 = 4;
        let l = &self.limits;
        match bio.op() {
            Op::Flush => return Some(0),
            Op::Read | Op::Write => {}
            Op::Discard | Op::WriteZeroes => return None,
        }
        let size = bio.size();
        if size == 0 || size > l.max_bytes() {
            return None;
        }
        if l.chunk_sectors != 0 {
            let c = l.chunk_sectors as u64;
            if bio.sector() / c != (bio.end_sector() - 1) / c {
                return None;
            }
        }
        let align = l.dma_alignment as u64 - 1;
        let mut n = 0u32;
        let mut prev: Option<BioVec> = None;
        for v in bio.segments() {
            n += 1;
            if n > DIRECT_SEGS
                || (v.addr().0 | v.len() as u64) & align != 0
                || v.end() - 1 > l.dma_limit
                || v.len() > l.max_segment_size
                || v.len() as u64 > l.bytes_to_boundary(v.addr().0)
                || prev.is_some_and(|p| l.virt_gap(&p, &v))
            {
                return None;
            }
            prev = Some(v);
        }
        (n <= l.max_segments as u32).then_some(n)
    }

    /// The direct path for a bio submitted without a plug: if it fits the limits as it is and
    /// a tag is free now, it becomes a request and goes to the driver at once. Otherwise the
    /// bio is handed back for the general path.
    fn submit_direct(&'static self, bio: Bio) -> Result<(), Bio> {
        let Some(segs) = self.direct_segments(&bio) else {
            return Err(bio);
        };
        let Some(tag) = self.tags.alloc() else {
            return Err(bio);
        };
        let Some(slot) = self.slot(tag) else {
            return Err(bio);
        };
        self.stats.bios_submitted(1);
        let now = (self.cfg.clock)();
        slot.early_bytes.store(NO_BYTES, Ordering::Relaxed);
        slot.deadline
            .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
        let res = {
            let mut rq = slot.rq.lock();
            rq.tag = tag;
            rq.op = bio.op();
            rq.flags = bio.flags();
            rq.sector = bio.sector();
            rq.bytes = bio.size();
            rq.nr_segs = segs;
            rq.retries = 0;
            rq.pt = None;
            // One bio: merges never look at this request, so its first and last segments
            // are not needed.
            rq.bios.push_front(bio);
            slot.state.store(DISPATCHING, Ordering::Release);
            self.hw.queue_rq(&rq, true)
        };
        self.dispatched(slot, tag, res);
        self.hw.commit();
        self.kick();
        Ok(())
    }

    fn mark_requeue(&self, slot: &RqSlot, tag: u16) {
        slot.state.store(REQUEUE, Ordering::Release);
        self.requeue[tag as usize / 64].fetch_or(1 << (tag % 64), Ordering::Release);
    }

    /// Ends request `tag` (the caller moved its state to COMPLETING).
    fn finish(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>, may_retry: bool) {
        let Some(slot) = self.slot(tag) else { return };
        let mut rq = slot.rq.lock();
        if status.is_ok() && done_bytes.is_none() && rq.pt.is_none() {
            // All done (the common case): every bio ends with success.
            let mut ended = core::mem::take(&mut rq.bios);
            rq.sector += (rq.bytes >> SECTOR_SHIFT) as u64;
            rq.bytes = 0;
            drop(rq);
            self.stats.requests_completed(1);
            self.release(slot, tag);
            while let Some(mut b) = ended.pop_front() {
                b.advance_all();
                bio_endio(b);
            }
            return;
        }
        let mut ended = BioList::new();
        if rq.pt.is_some()
            && let Some((cmd, kind)) = rq.pt.take()
        {
            drop(rq);
            let result = slot.result.load(Ordering::Acquire);
            self.stats.requests_completed(1);
            match kind {
                PtKind::Async(done, private) => {
                    self.release(slot, tag);
                    done(PtResult {
                        status,
                        result,
                        private,
                        cmd,
                    });
                }
                PtKind::Sync => {
                    // Keep the command for the waiter, which frees the slot.
                    slot.rq.lock().pt = Some((cmd, kind));
                    slot.early_status
                        .store(status_code(status), Ordering::Release);
                    slot.state.store(PT_DONE, Ordering::Release);
                }
            }
            return;
        }
        let done = match (status, done_bytes) {
            (Ok(()), None) => rq.bytes,
            (_, Some(b)) => b.min(rq.bytes),
            (Err(_), None) => 0,
        };
        let mut left = done >> SECTOR_SHIFT << SECTOR_SHIFT;
        while left > 0 {
            let Some(mut b) = rq.bios.pop_front() else {
                break;
            };
            let n = b.size().min(left);
            b.advance(n);
            left -= n;
            rq.bytes -= n;
            rq.sector += (n >> SECTOR_SHIFT) as u64;
            if b.size() == 0 {
                ended.push_back(b);
            } else {
                rq.bios.push_front(b);
            }
        }
        let mut final_done = rq.bytes == 0;
        match status {
            Ok(()) if !final_done => {
                // Partial completion: the rest goes again.
                self.stats.requeues(1);
            }
            Err(e) if !final_done || rq.op == Op::Flush => {
                if may_retry && e.is_retryable() && rq.retries < self.cfg.max_retries {
                    rq.retries += 1;
                    self.stats.retries(1);
                    self.stats.requeues(1);
                    final_done = false;
                } else {
                    while let Some(b) = rq.bios.pop_front() {
                        b.fail(e);
                        self.stats.bio_errors(1);
                        ended.push_back(b);
                    }
                    final_done = true;
                }
            }
            _ => {}
        }
        if final_done {
            // Data-less requests (flush) end with their bios.
            while let Some(b) = rq.bios.pop_front() {
                ended.push_back(b);
            }
            drop(rq);
            self.stats.requests_completed(1);
            self.release(slot, tag);
        } else {
            rq.nr_segs = rq.bios.iter().map(|b| self.limits.bio_segments(b)).sum();
            drop(rq);
            self.mark_requeue(slot, tag);
        }
        while let Some(b) = ended.pop_front() {
            bio_endio(b);
        }
    }

    /// Dispatches every requeued request (process context). Requests requeued again while
    /// this runs (partial completion, retry) go again, for a bounded number of rounds.
    #[inline]
    pub fn kick(&self) {
        if self.requeue_pending() {
            self.kick_rounds();
        }
    }

    #[inline(never)]
    fn kick_rounds(&self) {
        for _ in 0..KICK_ROUNDS {
            if !self.requeue_pending() {
                return;
            }
            self.kick_once();
        }
    }

    fn kick_once(&self) {
        let mut batch = Open::new();
        for w in 0..Self::WORDS {
            if self.requeue[w].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = self.requeue[w].swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let tag = (w * 64) as u16 + b as u16;
                let Some(slot) = self.slot(tag) else { continue };
                if slot
                    .state
                    .compare_exchange(REQUEUE, BUILD, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    if batch.is_full() {
                        self.dispatch(&batch);
                        batch.clear();
                    }
                    let _ = batch.push(tag);
                }
            }
        }
        self.dispatch(&batch);
    }

    /// Completes request `tag` (see [`TagComplete::complete`]). Never waits.
    pub fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        let Some(slot) = self.slot(tag) else {
            self.stats.late_completions(1);
            return;
        };
        let mut s = slot.state.load(Ordering::Acquire);
        loop {
            match s {
                INFLIGHT => match slot.state.compare_exchange(
                    INFLIGHT,
                    COMPLETING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.finish(tag, status, done_bytes, true);
                        return;
                    }
                    Err(now) => s = now,
                },
                DISPATCHING => {
                    slot.early_status
                        .store(status_code(status), Ordering::Release);
                    slot.early_bytes
                        .store(done_bytes.unwrap_or(NO_BYTES), Ordering::Release);
                    match slot.state.compare_exchange(
                        DISPATCHING,
                        EARLY,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return,
                        Err(now) => s = now,
                    }
                }
                _ => {
                    self.stats.late_completions(1);
                    return;
                }
            }
        }
    }

    /// Looks for requests past their deadline at time `now` and runs the driver's timeout
    /// hook on them; returns how many timed out. Then dispatches requeued requests.
    pub fn check_timeouts(&self, now: u64) -> usize {
        let mut n = 0;
        for (t, slot) in self.slots.iter().enumerate() {
            if slot.state.load(Ordering::Acquire) != INFLIGHT
                || slot.deadline.load(Ordering::Relaxed) > now
            {
                continue;
            }
            if slot
                .state
                .compare_exchange(INFLIGHT, TIMEDOUT, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            n += 1;
            self.stats.timeouts(1);
            let tag = t as u16;
            let (action, retries, is_pt) = {
                let rq = slot.rq.lock();
                (self.hw.timeout(&rq), rq.retries, rq.pt.is_some())
            };
            match action {
                TimeoutAction::Extend => {
                    slot.deadline
                        .store(now.saturating_add(self.cfg.timeout_ns), Ordering::Relaxed);
                    slot.state.store(INFLIGHT, Ordering::Release);
                }
                TimeoutAction::Retry if !is_pt && retries < self.cfg.max_retries => {
                    slot.rq.lock().retries += 1;
                    self.stats.retries(1);
                    self.stats.requeues(1);
                    self.mark_requeue(slot, tag);
                }
                _ => {
                    slot.state.store(COMPLETING, Ordering::Release);
                    self.finish(tag, Err(BlkError::Timeout), Some(0), false);
                }
            }
        }
        self.kick();
        n
    }

    fn start_pt(&self, cmd: PtCmd, kind: PtKind) -> Result<u16, (BlkError, PtCmd)> {
        let Some(tag) = self.get_tag() else {
            return Err((BlkError::Busy, cmd));
        };
        let Some(slot) = self.slot(tag) else {
            return Err((BlkError::Busy, cmd));
        };
        slot.state.store(BUILD, Ordering::Relaxed);
        slot.result.store(0, Ordering::Relaxed);
        {
            let mut rq = slot.rq.lock();
            rq.tag = tag;
            rq.op = if cmd.write { Op::Write } else { Op::Read };
            rq.flags = BioFlags::empty();
            rq.sector = 0;
            rq.bytes = 0;
            rq.nr_segs = 0;
            rq.retries = 0;
            rq.pt = Some((cmd, kind));
        }
        self.stats.passthrough(1);
        Ok(tag)
    }

    /// Sends a passthrough command through the queue; `done` gets the result (often in
    /// interrupt context). On refusal the command is handed back.
    pub fn passthrough(
        &self,
        cmd: PtCmd,
        done: fn(PtResult),
        private: usize,
    ) -> Result<(), (BlkError, PtCmd)> {
        let tag = self.start_pt(cmd, PtKind::Async(done, private))?;
        self.dispatch(&[tag]);
        Ok(())
    }

    /// Sends a passthrough command and waits for it, calling `wait` (and the driver's `poll`)
    /// between checks.
    pub fn passthrough_wait(&self, cmd: PtCmd, wait: fn()) -> Result<PtResult, (BlkError, PtCmd)> {
        let tag = self.start_pt(cmd, PtKind::Sync)?;
        self.dispatch(&[tag]);
        let Some(slot) = self.slot(tag) else {
            return Err((BlkError::Io, cmd));
        };
        while slot.state.load(Ordering::Acquire) != PT_DONE {
            self.kick();
            self.hw.poll();
            if slot.state.load(Ordering::Acquire) == PT_DONE {
                break;
            }
            wait();
        }
        let cmd = slot.rq.lock().pt.take().map(|(c, _)| c).unwrap_or(cmd);
        let res = PtResult {
            status: status_from_code(slot.early_status.load(Ordering::Acquire)),
            result: slot.result.load(Ordering::Acquire),
            private: 0,
            cmd,
        };
        self.release(slot, tag);
        Ok(res)
    }
}

impl<const D: usize> TagComplete for Queue<D> {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        Queue::complete(self, tag, status, done_bytes);
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        if let Some(slot) = self.slot(tag) {
            slot.result.store(result, Ordering::Release);
        }
        Queue::complete(self, tag, status, None);
    }
    fn kick(&self) {
        Queue::kick(self);
    }
}

impl<const D: usize> BlockDevice for Queue<D> {
    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }
    fn logical_block_size(&self) -> u32 {
        self.limits.logical_block_size
    }
    fn read_only(&self) -> bool {
        self.cfg.read_only
    }
    fn supports(&self, op: Op) -> bool {
        match op {
            Op::Read | Op::Write | Op::Flush => true,
            Op::Discard => self.limits.max_discard_sectors > 0,
            Op::WriteZeroes => self.limits.max_write_zeroes_sectors > 0,
        }
    }
    fn check(&self, bio: &Bio) -> Result<(), BlkError> {
        check_bio_dev(self, bio)
    }
    fn submit(&'static self, bio: Bio, ctx: &CpuCtx) {
        if ctx.plugged() && bio.op().has_data() {
            ctx.add_to_plug(bio);
            return;
        }
        // No plug: a bio that needs no split or bounce goes straight to the driver.
        let bio = match self.submit_direct(bio) {
            Ok(()) => return,
            Err(bio) => bio,
        };
        let mut l = BioList::new();
        l.push_back(bio);
        self.make_requests(l);
    }
    fn flush_plugged(&'static self, bios: BioList, _ctx: &CpuCtx) {
        self.make_requests(bios);
    }
}
