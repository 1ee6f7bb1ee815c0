//! The request-slot state machine: who owns a request while the driver has it. Each
//! transition is one atomic operation on the slot's state byte; whoever wins a compare-and-swap
//! owns the request, so a completion on one CPU, the submitting CPU returning from `queue_rq`
//! and a timeout scan on a third never both finish it. The queue (`queue/`) calls these; loom
//! checks them (`cargo xtask test` runs the models with the other host tests).
//!
//! ```text
//!  FREE → BUILD → DISPATCHING ─(queue_rq returned)→ INFLIGHT ─(complete)→ COMPLETING → FREE
//!                      │                                │
//!                      └─(completed during queue_rq)→ EARLY: the dispatcher finishes it
//!                                            INFLIGHT ─(timeout scan)→ TIMEDOUT
//! ```

use crate::loom::{AtomicU8, AtomicU32, Ordering};

/// Not in use.
pub const FREE: u8 = 0;
/// Being built by its submitter.
pub const BUILD: u8 = 1;
/// Handed to the driver; `queue_rq` has not returned yet.
pub const DISPATCHING: u8 = 2;
/// The driver has it.
pub const INFLIGHT: u8 = 3;
/// Someone is finishing it.
pub const COMPLETING: u8 = 4;
/// Completed while `queue_rq` ran: the dispatcher finishes it.
pub const EARLY: u8 = 5;
/// Waiting in the requeue bitmap.
pub const REQUEUE: u8 = 6;
/// The timeout scan took it.
pub const TIMEDOUT: u8 = 7;
/// A waited-for passthrough command completed; its waiter frees the slot.
pub const PT_DONE: u8 = 8;

/// What a completion by tag did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completed {
    /// It owns the request (state COMPLETING): it must finish it.
    Finish,
    /// The request was still being dispatched: the status was recorded and the dispatcher
    /// finishes it.
    Early,
    /// The request was not in flight (a timeout took it, or a stray tag): dropped.
    Late,
}

/// What the dispatcher does after `queue_rq` returned `Ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatched {
    /// The request is in flight; a completion will finish it.
    InFlight,
    /// It completed during `queue_rq` with this status code and byte count (state now
    /// COMPLETING): the dispatcher finishes it.
    FinishEarly(u32, u32),
}

/// The completion side. For a request still being dispatched, `record_early` stores the
/// status and byte count (with Release) before the state says EARLY, so the dispatcher that
/// sees EARLY reads them; it is not called otherwise (the common path computes nothing).
#[inline]
pub fn complete(state: &AtomicU8, mut record_early: impl FnMut()) -> Completed {
    let mut s = state.load(Ordering::Acquire);
    loop {
        match s {
            INFLIGHT => {
                match state.compare_exchange(
                    INFLIGHT,
                    COMPLETING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Completed::Finish,
                    Err(now) => s = now,
                }
            }
            DISPATCHING => {
                record_early();
                match state.compare_exchange(
                    DISPATCHING,
                    EARLY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Completed::Early,
                    Err(now) => s = now,
                }
            }
            _ => return Completed::Late,
        }
    }
}

/// The dispatcher after `queue_rq` returned `Ok`.
#[inline]
pub fn dispatched(state: &AtomicU8, early: (&AtomicU32, &AtomicU32)) -> Dispatched {
    if state
        .compare_exchange(DISPATCHING, INFLIGHT, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        return Dispatched::InFlight;
    }
    // EARLY: the completion stored its status before its CAS, which we saw fail ours.
    let st = early.0.load(Ordering::Acquire);
    let b = early.1.load(Ordering::Acquire);
    state.store(COMPLETING, Ordering::Release);
    Dispatched::FinishEarly(st, b)
}

/// The timeout scan takes an in-flight request; `false` if it was not in flight (a
/// completion got there first).
#[inline]
pub fn time_out(state: &AtomicU8) -> bool {
    state
        .compare_exchange(INFLIGHT, TIMEDOUT, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// The dispatcher returns from `queue_rq` while the completion arrives on another CPU
    /// (before, during or after): exactly one side finishes the request, with the status the
    /// device gave.
    #[test]
    fn loom_dispatch_races_completion() {
        loom::model(|| {
            let state = Arc::new(AtomicU8::new(DISPATCHING));
            let early = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
            let (s2, e2) = (state.clone(), early.clone());
            let irq = loom::thread::spawn(move || {
                complete(&s2, || {
                    e2.0.store(7, Ordering::Release);
                    e2.1.store(512, Ordering::Release);
                })
            });
            let d = dispatched(&state, (&early.0, &early.1));
            let c = irq.join().unwrap();
            match (d, c) {
                (Dispatched::InFlight, Completed::Finish) => {}
                (Dispatched::FinishEarly(st, b), Completed::Early) => assert_eq!((st, b), (7, 512)),
                other => panic!("both or neither finished: {other:?}"),
            }
            assert_eq!(state.load(Ordering::SeqCst), COMPLETING);
        });
    }

    /// A completion and the timeout scan race for an in-flight request: one wins, the other
    /// leaves it alone.
    #[test]
    fn loom_completion_races_timeout() {
        loom::model(|| {
            let state = Arc::new(AtomicU8::new(INFLIGHT));
            let early = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
            let (s2, e2) = (state.clone(), early.clone());
            let irq =
                loom::thread::spawn(move || complete(&s2, || e2.0.store(0, Ordering::Release)));
            let timed_out = time_out(&state);
            let c = irq.join().unwrap();
            match (timed_out, c) {
                (true, Completed::Late) => assert_eq!(state.load(Ordering::SeqCst), TIMEDOUT),
                (false, Completed::Finish) => {
                    assert_eq!(state.load(Ordering::SeqCst), COMPLETING)
                }
                other => panic!("both or neither took it: {other:?}"),
            }
        });
    }

    /// Two completions for one tag (a duplicate from a hostile device) while the dispatcher
    /// returns: the request is finished exactly once.
    #[test]
    fn loom_duplicate_completion_finishes_once() {
        loom::model(|| {
            let state = Arc::new(AtomicU8::new(DISPATCHING));
            let early = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (s, e) = (state.clone(), early.clone());
                    loom::thread::spawn(move || complete(&s, || e.0.store(3, Ordering::Release)))
                })
                .collect();
            let d = dispatched(&state, (&early.0, &early.1));
            let cs: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            let finishers = cs.iter().filter(|c| matches!(c, Completed::Finish)).count()
                + usize::from(matches!(d, Dispatched::FinishEarly(..)));
            assert_eq!(finishers, 1, "{d:?} {cs:?}");
        });
    }
}
