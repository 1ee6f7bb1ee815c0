//! Waiting for a bio: a blocking helper over a wait hook, and a `Future`.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::bio::{Bio, BioInner};
use crate::device::{CpuCtx, submit_bio};
use crate::error::{BlkError, BlkStatus};
use crate::slab::WaitRef;

/// Submits `bio` and waits for it, calling `wait` (e.g. halt until the next interrupt)
/// between checks. Returns the status and the bio. The bio's own `end_io` is replaced.
pub fn submit_bio_wait(ctx: &CpuCtx, mut bio: Bio, wait: fn()) -> (BlkStatus, Bio) {
    bio.clear_end_io();
    let Some(mut w) = bio.waiter() else {
        return (Err(BlkError::InvalidArgument), bio);
    };
    if let Err((e, b)) = submit_bio(ctx, bio) {
        drop(w);
        return (Err(e), b);
    }
    loop {
        match w.try_take() {
            Ok(node) => {
                let b = Bio(node);
                return (b.status(), b);
            }
            Err(again) => w = again,
        }
        wait();
    }
}

/// A future that resolves to the status and the bio once it completed.
pub struct BioFuture {
    w: Option<WaitRef<BioInner>>,
    early: Option<(BlkError, Bio)>,
}

/// Submits `bio` and returns a future for its completion. The bio's own `end_io` is replaced.
/// The completion path wakes the task without waiting (safe from interrupt context).
pub fn submit_bio_async(ctx: &CpuCtx, mut bio: Bio) -> BioFuture {
    bio.clear_end_io();
    let Some(w) = bio.waiter() else {
        return BioFuture {
            w: None,
            early: Some((BlkError::InvalidArgument, bio)),
        };
    };
    match submit_bio(ctx, bio) {
        Ok(()) => BioFuture {
            w: Some(w),
            early: None,
        },
        Err((e, b)) => {
            drop(w);
            BioFuture {
                w: None,
                early: Some((e, b)),
            }
        }
    }
}

impl Future for BioFuture {
    type Output = (BlkStatus, Option<Bio>);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some((e, b)) = self.early.take() {
            return Poll::Ready((Err(e), Some(b)));
        }
        let Some(w) = self.w.take() else {
            return Poll::Ready((Err(BlkError::InvalidArgument), None));
        };
        if !w.poll_done(cx.waker()) {
            self.w = Some(w);
            return Poll::Pending;
        }
        match w.try_take() {
            Ok(node) => {
                let b = Bio(node);
                Poll::Ready((b.status(), Some(b)))
            }
            Err(w) => {
                self.w = Some(w);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}
