//! The contract between the block layer and a driver, and the plumbing drivers share.
//!
//! # What a driver must implement and may call
//!
//! A driver implements [`HwQueue`] and hands it to [`Queue::new`](crate::Queue::new) together
//! with the [`QueueLimits`](crate::QueueLimits) it sets; the queue gives the driver back a
//! `&'static dyn` [`TagComplete`] (the queue itself) to complete requests on.
//!
//! | What | Who calls it | Context |
//! |---|---|---|
//! | [`HwQueue::queue_rq`] | the queue, for each request of a batch | process context (submit path, `kick`) |
//! | [`HwQueue::commit`] | the queue, after the last request of a batch | process context |
//! | [`HwQueue::poll`] | the queue while it waits for a tag or a passthrough command, the kernel's deferred work | any context; must not block |
//! | [`HwQueue::timeout`] | [`Queue::check_timeouts`](crate::Queue::check_timeouts) | process context |
//! | [`TagComplete::complete`] / [`TagComplete::complete_pt`] | the driver | any context, interrupt handler included; lock-free, never waits |
//! | [`TagComplete::kick`] | the driver (e.g. after a reset freed ring space) | process context |
//!
//! - **queue_rq**: build the hardware command for a [`Request`] from its
//!   accessors (`tag`, `op`, `flags`, `sector`, `bytes`, `nr_segments`, `passthrough`,
//!   `map_sg`), or answer [`QueueRqError::Busy`] (requeued, sent again by `kick`) or
//!   [`QueueRqError::Fatal`] (its bios end with the error). The request may be completed from
//!   the interrupt handler before `queue_rq` returns; the queue handles that.
//! - **commit**: ring the doorbell once per batch (`last` tells `queue_rq` which request ends
//!   it).
//! - **Completion by tag**: the driver remembers which tag each command carries and calls
//!   `complete(tag, status, done_bytes)`: `None` bytes on success means all of it, `Some(n)`
//!   is a partial transfer (`Some(0)` for an error that transferred nothing). Passthrough
//!   commands end with `complete_pt(tag, status, result)`. Deliver completions after dropping
//!   the driver's own locks ([`CompletionBatch`], [`TagMaskBatch`]): completion ends bios,
//!   whose `end_io` may submit again.
//! - **Timeouts**: `timeout` aborts the command in the hardware before answering `Retry` or
//!   `Fail`; `Extend` leaves it in flight for another period. A completion for a tag that is not
//!   in flight is counted (`late_completions`) and ignored, but the tag may already carry a new
//!   request: the abort must make sure the old command never completes.
//! - **Passthrough**: a request with `passthrough()` set carries a [`PtCmd`] (identify, admin
//!   commands; opcode and arguments are the driver's to define). The submitter gets a
//!   [`PtResult`] from [`Queue::passthrough`](crate::Queue::passthrough) or
//!   [`Queue::passthrough_wait`](crate::Queue::passthrough_wait).
//! - **Limits**: the driver states what its hardware takes in one request with
//!   [`QueueLimits`](crate::QueueLimits) (block size, max sectors and segments, segment size
//!   and boundary, virt boundary, DMA alignment and limit, discard and write-zeroes sizes).
//!   The queue splits, bounces and merges so that every request obeys them, and
//!   [`Request::map_sg`](crate::Request::map_sg) never returns more than `max_segments`
//!   entries.
//!
//! # Shared plumbing
//!
//! - [`driver_stats!`](crate::driver_stats): a struct of relaxed `AtomicU64` counters.
//! - [`with_sg`]: a request's scatter-gather list on the stack, small or large.
//! - [`CompletionBatch`], [`TagMaskBatch`], [`CompletionSink`]: collect completions under the
//!   driver's lock, deliver them after.
//! - [`block_range`]: LBA and block count of a read or write for the device's block size.

use crate::bio::BioVec;
use crate::error::{BlkError, BlkStatus};
use crate::request::Request;

mod batch;
mod range;
mod sg;
mod stats;

pub use batch::{Completion, CompletionBatch, CompletionSink, Deliver, Delivered, TagMaskBatch};
pub use range::{BlockRange, block_range};
pub use sg::with_sg;

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

/// A driver's answer to `queue_rq` when it cannot take the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRqError {
    /// No room now (ring full): the request is requeued and dispatched again by `kick`.
    Busy,
    /// The request can never be done: its bios end with this error.
    Fatal(BlkError),
}

impl From<BlkError> for QueueRqError {
    /// An error building the command is fatal for the request.
    fn from(e: BlkError) -> Self {
        QueueRqError::Fatal(e)
    }
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
/// driver calling [`TagComplete::complete`] (from its interrupt handler) with the tag. See the
/// [module docs](self) for the whole contract.
pub trait HwQueue: Sync {
    /// Takes request `rq` (build descriptors with [`Request::map_sg`]). `last` is true for
    /// the last request of a batch. The driver may complete the request before returning.
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError>;
    /// Ends a batch: ring the doorbell.
    fn commit(&self) {}
    /// Ends a batch of hardware context `hctx` (a driver with several hardware queues rings
    /// that queue's doorbell). The default calls [`HwQueue::commit`].
    fn commit_hctx(&self, hctx: usize) {
        let _ = hctx;
        self.commit();
    }
    /// Reaps completions without an interrupt; returns how many.
    fn poll(&self) -> usize {
        0
    }
    /// Reaps the completions of hardware context `hctx` only. The default calls
    /// [`HwQueue::poll`].
    fn poll_hctx(&self, hctx: usize) -> usize {
        let _ = hctx;
        self.poll()
    }
    /// `rq` passed its deadline. Abort it in the hardware before returning `Retry` or `Fail`.
    fn timeout(&self, rq: &Request) -> TimeoutAction {
        let _ = rq;
        TimeoutAction::Retry
    }
}

/// What a driver calls back on: completion by tag (implemented by [`Queue`](crate::Queue)).
pub trait TagComplete: Sync {
    /// Completes request `tag` with `status`; `done_bytes` (if given) is how much was
    /// transferred before the error, or a partial success. Lock-free; interrupt-safe.
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>);
    /// Completes passthrough request `tag` with a result word.
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64);
    /// Dispatches requeued requests (process context).
    fn kick(&self);
}
