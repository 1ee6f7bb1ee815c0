//! [`AtomicWaker`]: the one-waker cell of a node's header.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};
use core::task::Waker;

const AW_IDLE: u8 = 0;
const AW_REGISTERING: u8 = 1;
const AW_WAKING: u8 = 2;

/// A one-waker cell that a completion path (interrupt context) can wake without ever waiting.
pub struct AtomicWaker {
    state: AtomicU8,
    waker: UnsafeCell<Option<Waker>>,
}

// SAFETY: the cell is only accessed by the party that moved `state` out of AW_IDLE (the
// registrar in AW_REGISTERING, the waker in AW_WAKING from AW_IDLE), so accesses never overlap.
unsafe impl Sync for AtomicWaker {}
// SAFETY: `Waker` is Send.
unsafe impl Send for AtomicWaker {}

impl AtomicWaker {
    /// An empty cell.
    pub const fn new() -> Self {
        AtomicWaker {
            state: AtomicU8::new(AW_IDLE),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `w` (one registrar at a time).
    pub fn register(&self, w: &Waker) {
        match self.state.compare_exchange(
            AW_IDLE,
            AW_REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: AW_REGISTERING gives this side exclusive access to the cell.
                unsafe {
                    let slot = &mut *self.waker.get();
                    match slot {
                        Some(old) if old.will_wake(w) => {}
                        _ => *slot = Some(w.clone()),
                    }
                }
                if self
                    .state
                    .compare_exchange(AW_REGISTERING, AW_IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // A wake came in meanwhile (state is REGISTERING|WAKING): deliver it.
                    // SAFETY: the waker side saw REGISTERING and left the cell to this side.
                    let taken = unsafe { (*self.waker.get()).take() };
                    self.state.swap(AW_IDLE, Ordering::AcqRel);
                    if let Some(t) = taken {
                        t.wake();
                    }
                }
            }
            Err(_) => w.wake_by_ref(),
        }
    }

    /// Wakes the registered waker, if any. Never waits.
    pub fn wake(&self) {
        if self.state.fetch_or(AW_WAKING, Ordering::AcqRel) == AW_IDLE {
            // SAFETY: the state went from AW_IDLE to AW_WAKING: exclusive access to the cell.
            let taken = unsafe { (*self.waker.get()).take() };
            self.state.fetch_and(!AW_WAKING, Ordering::Release);
            if let Some(t) = taken {
                t.wake();
            }
        }
    }
}

impl Default for AtomicWaker {
    fn default() -> Self {
        Self::new()
    }
}
