//! Request slots: the state machine that says who owns a request, and the kind of a
//! passthrough command.

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use crate::driver::PtResult;
use crate::request::Request;

/// How the submitter of a passthrough command waits for its result.
#[derive(Clone, Copy)]
pub(crate) enum PtKind {
    Async(fn(PtResult), usize),
    Sync,
}

pub(super) use crate::slot_state::{
    BUILD, COMPLETING, DISPATCHING, FREE, INFLIGHT, PT_DONE, REQUEUE,
};

pub(super) const NO_BYTES: u32 = u32::MAX;

/// A request slot. Its `state` decides who owns the request: whoever moves it out of a state
/// by CAS. The spin lock is therefore never contended; it only gives safe interior mutability.
pub(super) struct RqSlot {
    pub(super) state: AtomicU8,
    /// The hardware context whose tag range holds this slot (set at attach).
    pub(super) hctx: AtomicU8,
    pub(super) deadline: AtomicU64,
    pub(super) early_status: AtomicU32,
    pub(super) early_bytes: AtomicU32,
    pub(super) result: AtomicU64,
    pub(super) rq: spin::Mutex<Request>,
}

impl RqSlot {
    pub(super) const fn new(tag: u16) -> Self {
        RqSlot {
            state: AtomicU8::new(FREE),
            hctx: AtomicU8::new(0),
            deadline: AtomicU64::new(u64::MAX),
            early_status: AtomicU32::new(0),
            early_bytes: AtomicU32::new(NO_BYTES),
            result: AtomicU64::new(0),
            rq: spin::Mutex::new(Request::empty(tag)),
        }
    }
}
