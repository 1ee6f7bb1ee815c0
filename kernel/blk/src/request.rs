//! The request: a contiguous range made of one or more bios (or a passthrough command), as a
//! driver sees it in [`HwQueue::queue_rq`].
//!
//! The queue that owns requests is in [`crate::queue`], the driver contract in
//! [`crate::driver`]; both are re-exported here under their old paths.

use crate::bio::{BioFlags, BioList, BioListIter, BioVec, Op, SECTOR_SHIFT};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::map_sg::{SgEntry, map_sg};
use crate::queue::PtKind;

pub use crate::driver::{HwQueue, PtCmd, PtResult, QueueRqError, TagComplete, TimeoutAction};
pub use crate::queue::{BATCH_MAX, KICK_ROUNDS, Queue, QueueConfig};

/// A request: a contiguous range made of one or more bios (or a passthrough command), with a
/// tag that names its slot in the queue's static array.
pub struct Request {
    pub(crate) tag: u16,
    pub(crate) hctx: u16,
    pub(crate) op: Op,
    pub(crate) flags: BioFlags,
    pub(crate) sector: u64,
    pub(crate) bytes: u32,
    pub(crate) nr_segs: u32,
    pub(crate) bios: BioList,
    pub(crate) first_seg: BioVec,
    pub(crate) last_seg: BioVec,
    pub(crate) attempts: Attempts,
    pub(crate) pt: Option<(PtCmd, PtKind)>,
}

/// How often a request went to the device again: after a retryable error or a timeout
/// (`retries`, at most [`QueueConfig::max_retries`](crate::QueueConfig)), and after a reset of
/// the device cut it off (`aborts`, at most [`MAX_ABORTS`]). Two bytes, cleared with one store
/// when a request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempts {
    pub(crate) retries: u8,
    pub(crate) aborts: u8,
}

impl Attempts {
    pub(crate) const NONE: Attempts = Attempts {
        retries: 0,
        aborts: 0,
    };
}

/// How many times a request cut off by device resets ([`BlkError::Aborted`])
/// is dispatched again before it fails with that error. Such a dispatch is not a retry (the
/// request did nothing wrong: another request's timeout or a protocol violation reset the
/// device); the bound keeps a device that resets forever from holding requests forever.
pub const MAX_ABORTS: u8 = 8;

impl Request {
    pub(crate) const fn empty(tag: u16) -> Self {
        Request {
            tag,
            hctx: 0,
            op: Op::Read,
            flags: BioFlags::empty(),
            sector: 0,
            bytes: 0,
            nr_segs: 0,
            bios: BioList::new(),
            first_seg: BioVec::ZERO,
            last_seg: BioVec::ZERO,
            attempts: Attempts::NONE,
            pt: None,
        }
    }

    /// The tag (index in the queue's request array).
    pub fn tag(&self) -> u16 {
        self.tag
    }
    /// The hardware context (hardware queue) the request goes to: `0..nr_hw_contexts` of its
    /// queue ([`Queue::map_hw_contexts`]); always 0 for a queue with one context.
    pub fn hctx(&self) -> usize {
        self.hctx as usize
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
        self.attempts.retries
    }
    /// Times the request was dispatched again because a device reset cut it off
    /// ([`BlkError::Aborted`]).
    pub fn aborts(&self) -> u8 {
        self.attempts.aborts
    }
    /// Whether the request flushes the device's volatile cache (a flush, or a write with
    /// `PREFLUSH` or `FUA`). Such a request is never retried after an error: a failed flush
    /// may have lost cached data, which a later successful flush would not bring back.
    pub fn flushes(&self) -> bool {
        self.op == Op::Flush || self.flags.intersects(BioFlags::PREFLUSH | BioFlags::FUA)
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
        map_sg(&self.bios, limits, out)
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

    /// Sets the hardware context of a request built with [`Request::standalone`] (a driver's
    /// own tests of its hardware queues).
    pub fn set_hctx(&mut self, hctx: usize) {
        self.hctx = hctx.min(u16::MAX as usize) as u16;
    }

    pub(crate) fn end_sector(&self) -> u64 {
        self.sector + (self.bytes >> SECTOR_SHIFT) as u64
    }
}
