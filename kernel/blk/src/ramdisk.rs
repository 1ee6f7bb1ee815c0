//! A RAM disk driver: an [`HwQueue`] over a byte store, with chosen limits, completing inline
//! or from another context (a host thread standing in for an interrupt), with error injection.
//! Every request it receives is checked against its limits (a conformance check on the block
//! layer): violations are counted.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::bio::{Op, SECTOR_SHIFT};
use crate::error::{BlkError, BlkStatus, status_code, status_from_code};
use crate::limits::QueueLimits;
use crate::map_sg::SgEntry;
use crate::mem::Store;
use crate::request::{HwQueue, QueueRqError, Request, TagComplete, TimeoutAction};
use crate::tag::{MAX_DEPTH, TAG_WORDS};

/// When the RAM disk completes a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionMode {
    /// Inside `queue_rq`.
    Inline,
    /// When someone calls [`RamDisk::process_completions`] (or the queue polls).
    Deferred,
}

/// Passthrough opcode: write the capacity (sectors, u64 little endian) to the data buffer.
pub const PT_IDENTIFY: u32 = 1;
/// Passthrough opcode: flush.
pub const PT_FLUSH: u32 = 2;

/// Most scatter-gather entries per request the RAM disk accepts.
pub const RAMDISK_MAX_SG: usize = 256;

/// Scatter-gather list size for requests of few segments.
const SMALL_SG: usize = 8;

/// The RAM disk.
pub struct RamDisk {
    store: Store,
    limits: QueueLimits,
    mode: CompletionMode,
    queue: spin::Once<&'static dyn TagComplete>,
    pending: [AtomicU64; TAG_WORDS],
    status: [AtomicU32; MAX_DEPTH],
    bytes: [AtomicU32; MAX_DEPTH],
    fail_sector: AtomicU64,
    flush_skip: AtomicU32,
    fail_flushes: AtomicU32,
    drop_completions: AtomicU32,
    busy_next: AtomicU32,
    abort_next: AtomicU32,
    timeout_action: AtomicU32,
    /// Requests received.
    pub requests: AtomicU64,
    /// Limit violations seen in received requests (must stay 0).
    pub violations: AtomicU64,
    /// Scatter-gather entries received.
    pub sg_entries: AtomicU64,
    /// Flushes (op, preflush, passthrough).
    pub flushes: AtomicU64,
    /// Timeout hook calls.
    pub timeouts: AtomicU64,
}

impl RamDisk {
    /// A RAM disk over `mem` with `limits`.
    pub fn new(mem: &'static mut [u8], limits: QueueLimits, mode: CompletionMode) -> Self {
        RamDisk {
            store: Store::new(mem),
            limits,
            mode,
            queue: spin::Once::new(),
            pending: [const { AtomicU64::new(0) }; TAG_WORDS],
            status: [const { AtomicU32::new(0) }; MAX_DEPTH],
            bytes: [const { AtomicU32::new(0) }; MAX_DEPTH],
            fail_sector: AtomicU64::new(u64::MAX),
            flush_skip: AtomicU32::new(0),
            fail_flushes: AtomicU32::new(0),
            drop_completions: AtomicU32::new(0),
            busy_next: AtomicU32::new(0),
            abort_next: AtomicU32::new(0),
            timeout_action: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            sg_entries: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// Connects the queue the RAM disk completes to (once).
    pub fn attach(&self, q: &'static dyn TagComplete) {
        self.queue.call_once(|| q);
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        (self.store.len() >> SECTOR_SHIFT) as u64
    }

    /// The limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// The medium.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Requests touching `sector` fail with `Io` (after transferring the bytes before it).
    pub fn fail_at(&self, sector: Option<u64>) {
        self.fail_sector
            .store(sector.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// After `skip` more cache flushes that succeed, the next `n` (flush requests, and the
    /// flush step of PREFLUSH and FUA writes) fail with `Io`; later ones succeed again.
    pub fn fail_flushes(&self, skip: u32, n: u32) {
        self.flush_skip.store(skip, Ordering::Relaxed);
        self.fail_flushes.store(n, Ordering::Relaxed);
    }

    /// Counts a cache flush; `false` when it is one that [`RamDisk::fail_flushes`] fails.
    fn flush_ok(&self) -> bool {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let dec = |n: u32| n.checked_sub(1);
        self.flush_skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, dec)
            .is_ok()
            || self
                .fail_flushes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, dec)
                .is_err()
    }

    /// Swallows the next `n` completions (so the requests time out).
    pub fn drop_completions(&self, n: u32) {
        self.drop_completions.store(n, Ordering::Relaxed);
    }

    /// Answers `Busy` to the next `n` requests.
    pub fn busy_next(&self, n: u32) {
        self.busy_next.store(n, Ordering::Relaxed);
    }

    /// Completes the next `n` requests with [`BlkError::Aborted`] without doing them, as a
    /// driver does for the requests a device reset cut off.
    pub fn abort_next(&self, n: u32) {
        self.abort_next.store(n, Ordering::Relaxed);
    }

    /// What the timeout hook answers.
    pub fn set_timeout_action(&self, a: TimeoutAction) {
        let v = match a {
            TimeoutAction::Retry => 0,
            TimeoutAction::Fail => 1,
            TimeoutAction::Extend => 2,
        };
        self.timeout_action.store(v, Ordering::Relaxed);
    }

    fn take_one(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    fn check(&self, rq: &Request, sg: &[SgEntry]) {
        let l = &self.limits;
        let mut bad = 0;
        if rq.bytes() > l.max_bytes() || sg.len() > l.max_segments as usize {
            bad += 1;
        }
        if rq.op().has_data() && !(rq.bytes() as u64).is_multiple_of(l.logical_block_size as u64) {
            bad += 1;
        }
        if l.chunk_sectors != 0 && rq.bytes() > 0 {
            let c = l.chunk_sectors as u64;
            if rq.sector() / c != (rq.sector() + rq.sectors_u64() - 1) / c {
                bad += 1;
            }
        }
        let last = sg.len().saturating_sub(1);
        for (i, e) in sg.iter().enumerate() {
            let a = e.addr.0;
            if e.len == 0 || e.len > l.max_segment_size || (e.len as u64) > l.bytes_to_boundary(a) {
                bad += 1;
            }
            if a + e.len as u64 - 1 > l.dma_limit {
                bad += 1;
            }
            if (a | e.len as u64) & (l.dma_alignment as u64 - 1) != 0 {
                bad += 1;
            }
            let vb = l.virt_boundary_mask;
            if vb != 0 && ((i > 0 && a & vb != 0) || (i < last && (a + e.len as u64) & vb != 0)) {
                bad += 1;
            }
        }
        if sg.iter().map(|e| e.len as u64).sum::<u64>() != rq.bytes() as u64 && rq.op().has_data() {
            bad += 1;
        }
        if bad > 0 {
            self.violations.fetch_add(bad, Ordering::Relaxed);
        }
    }

    fn do_io(&self, rq: &Request) -> (BlkStatus, Option<u32>) {
        let byte_off = rq.sector() << SECTOR_SHIFT;
        if rq.flags().contains(crate::bio::BioFlags::PREFLUSH) && !self.flush_ok() {
            return (Err(BlkError::Io), Some(0));
        }
        match rq.op() {
            Op::Flush => {
                return if self.flush_ok() {
                    (Ok(()), None)
                } else {
                    (Err(BlkError::Io), Some(0))
                };
            }
            Op::Discard | Op::WriteZeroes => {
                return if self.store.zero(byte_off, rq.bytes() as usize) {
                    (Ok(()), None)
                } else {
                    (Err(BlkError::OutOfRange), Some(0))
                };
            }
            Op::Read | Op::Write => {}
        }
        // Most requests have a few segments: a small list avoids clearing the big one.
        if rq.nr_segments() as usize <= SMALL_SG {
            let mut sg = [SgEntry::default(); SMALL_SG];
            if let Ok(n) = rq.map_sg(&self.limits, &mut sg) {
                return self.transfer(rq, byte_off, &sg[..n]);
            }
        }
        let mut sg = [SgEntry::default(); RAMDISK_MAX_SG];
        match rq.map_sg(&self.limits, &mut sg) {
            Ok(n) => self.transfer(rq, byte_off, &sg[..n]),
            Err(e) => {
                self.violations.fetch_add(1, Ordering::Relaxed);
                (Err(e), Some(0))
            }
        }
    }

    #[allow(unsafe_code)] // copies segment memory through the store
    fn transfer(&self, rq: &Request, byte_off: u64, sg: &[SgEntry]) -> (BlkStatus, Option<u32>) {
        let n = sg.len();
        self.sg_entries.fetch_add(n as u64, Ordering::Relaxed);
        self.check(rq, sg);
        // Error injection: transfer up to the bad sector, then fail.
        let fs = self.fail_sector.load(Ordering::Relaxed);
        let limit = if fs >= rq.sector() && fs < rq.sector() + rq.sectors_u64() {
            ((fs - rq.sector()) << SECTOR_SHIFT) as u32
        } else {
            rq.bytes()
        };
        let mut off = byte_off;
        let mut left = limit as usize;
        for e in sg {
            if left == 0 {
                break;
            }
            let n = (e.len as usize).min(left);
            // SAFETY: `e` comes from `map_sg` of `rq`, so it names (part of) the request's bio
            // segments, which the segment contract (`BioVec::new`) makes the request's own
            // memory, readable and writable, until it completes; `n <= e.len`.
            let ok = unsafe {
                match rq.op() {
                    Op::Read => self.store.read_to(off, e.addr, n),
                    _ => self.store.write_from(off, e.addr, n),
                }
            };
            if !ok {
                return (Err(BlkError::OutOfRange), Some((off - byte_off) as u32));
            }
            off += n as u64;
            left -= n;
        }
        if rq.flags().contains(crate::bio::BioFlags::FUA) && !self.flush_ok() {
            // The data went to the medium, but its flush failed: report the whole transfer.
            return (Err(BlkError::Io), Some(rq.bytes()));
        }
        if limit < rq.bytes() {
            (Err(BlkError::Io), Some(limit))
        } else {
            (Ok(()), None)
        }
    }

    #[allow(unsafe_code)] // writes the identify answer into the data segment
    fn do_passthrough(&self, rq: &Request) -> (BlkStatus, u64) {
        let Some(cmd) = rq.passthrough() else {
            return (Err(BlkError::Io), 0);
        };
        match cmd.opcode {
            PT_IDENTIFY => {
                let cap = self.capacity();
                if let Some(d) = cmd.data
                    && d.len() >= 8
                {
                    // SAFETY: `d` is the command's data segment, a `BioVec`, so it is under the
                    // segment contract: writable memory of at least 8 bytes (checked) owned by
                    // this command until it completes, reachable through `hal`'s translation.
                    unsafe { hal::mem::copy_to_phys(d.addr(), &cap.to_le_bytes()) };
                }
                (Ok(()), cap)
            }
            PT_FLUSH => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
                (Ok(()), 0)
            }
            _ => (Err(BlkError::Unsupported), 0),
        }
    }

    /// Completes every request finished so far (the "interrupt handler"); returns how many.
    pub fn process_completions(&self) -> usize {
        let Some(q) = self.queue.get() else { return 0 };
        let mut n = 0;
        for w in 0..TAG_WORDS {
            if self.pending[w].load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = self.pending[w].swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let tag = w * 64 + b;
                let st = status_from_code(self.status[tag].load(Ordering::Acquire));
                let by = self.bytes[tag].load(Ordering::Acquire);
                q.complete(tag as u16, st, (by != u32::MAX).then_some(by));
                n += 1;
            }
        }
        n
    }
}

impl Request {
    fn sectors_u64(&self) -> u64 {
        (self.bytes() >> SECTOR_SHIFT) as u64
    }
}

impl HwQueue for RamDisk {
    fn queue_rq(&self, rq: &Request, _last: bool) -> Result<(), QueueRqError> {
        if Self::take_one(&self.busy_next) {
            return Err(QueueRqError::Busy);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some(q) = self.queue.get() else {
            return Err(QueueRqError::Fatal(BlkError::Io));
        };
        let tag = rq.tag();
        if rq.passthrough().is_some() {
            let (st, res) = self.do_passthrough(rq);
            q.complete_pt(tag, st, res);
            return Ok(());
        }
        let (st, bytes) = if Self::take_one(&self.abort_next) {
            (Err(BlkError::Aborted), Some(0))
        } else {
            self.do_io(rq)
        };
        if Self::take_one(&self.drop_completions) {
            return Ok(());
        }
        match self.mode {
            CompletionMode::Inline => q.complete(tag, st, bytes),
            CompletionMode::Deferred => {
                self.status[tag as usize].store(status_code(st), Ordering::Relaxed);
                self.bytes[tag as usize].store(bytes.unwrap_or(u32::MAX), Ordering::Relaxed);
                self.pending[tag as usize / 64].fetch_or(1 << (tag % 64), Ordering::Release);
            }
        }
        Ok(())
    }

    fn poll(&self) -> usize {
        self.process_completions()
    }

    fn timeout(&self, _rq: &Request) -> TimeoutAction {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        match self.timeout_action.load(Ordering::Relaxed) {
            1 => TimeoutAction::Fail,
            2 => TimeoutAction::Extend,
            _ => TimeoutAction::Retry,
        }
    }
}
