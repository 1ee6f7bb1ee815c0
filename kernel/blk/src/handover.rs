//! The reap handshake between a device's interrupt handler and process context on any CPU,
//! checked by loom.
//!
//! A driver reaps its completion queue under a lock; the interrupt handler only try-locks it
//! (it never waits). When the lock is taken, the reap is handed to the holder instead: the
//! handler sets `pending`, and every holder looks at `pending` after it lets go
//! ([`ReapHandover::after_unlock`]). Both are read-modify-writes of `pending` (so they are
//! ordered with each other): if the holder's comes first, the handler's synchronises with it
//! and its second look at the lock sees it let go; otherwise the holder reads the request. A
//! reap is never lost, whichever CPUs the two run on. (A store and a load with fences would do
//! as well on hardware, but loom checks this form.)
//!
//! A level-triggered line (PCI INTx) stays asserted until the queue is reaped, so the handler
//! masks it at the device while the reap waits for the holder, and whoever next completes a
//! reap unmasks. The handler masks first, then records it ([`ReapHandover::masked`]), which
//! hands the reap over once more: whoever takes that request sees the mask and lifts it after
//! its reap, so an unmask always follows the mask it undoes. (On one CPU the order did not
//! matter, as the holder could not run while the handler did; with several, a holder on
//! another CPU could finish its reap between the handler's failed try-lock and its mask, and
//! nobody unmasked.)

use crate::loom::{AtomicBool, Ordering};

/// The two flags of the handshake: a reap is wanted, the line is masked.
pub struct ReapHandover {
    pending: AtomicBool,
    masked: AtomicBool,
}

impl Default for ReapHandover {
    fn default() -> Self {
        Self::new()
    }
}

impl ReapHandover {
    /// Nothing pending, not masked.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        ReapHandover {
            pending: AtomicBool::new(false),
            masked: AtomicBool::new(false),
        }
    }

    /// Nothing pending, not masked.
    #[cfg(loom)]
    pub fn new() -> Self {
        ReapHandover {
            pending: AtomicBool::new(false),
            masked: AtomicBool::new(false),
        }
    }

    /// Asks for a reap (the handler, `poll`, a batch that filled up).
    #[inline]
    pub fn request(&self) {
        self.pending.swap(true, Ordering::AcqRel);
    }

    /// Takes the request for one reap pass: `true` if one was made since the last take.
    #[inline]
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }

    /// The guard `try_lock` gives, or `None` with the reap handed to the lock's holder: the
    /// request is made before a second look at the lock, and the holder looks at it after
    /// letting go. With the lock got on the second look the request stays made (the caller
    /// does one pass more).
    #[inline]
    pub fn lock_or_hand_over<G>(&self, mut try_lock: impl FnMut() -> Option<G>) -> Option<G> {
        if let Some(g) = try_lock() {
            return Some(g);
        }
        self.pending.swap(true, Ordering::AcqRel);
        try_lock()
    }

    /// The handler masked the line at the device (call after the mask write): records it and
    /// hands the reap over again, so that whoever takes it also unmasks. The caller then tries
    /// to reap itself once more (the holder may have let go before).
    #[inline]
    pub fn masked(&self) {
        self.masked.store(true, Ordering::Release);
        self.pending.swap(true, Ordering::AcqRel);
    }

    /// After a complete reap (every lock got, the queues found empty): `true` once per mask,
    /// for the caller to unmask the line now.
    #[inline]
    pub fn take_mask(&self) -> bool {
        self.masked.load(Ordering::Acquire) && self.masked.swap(false, Ordering::AcqRel)
    }

    /// The device's own mask was cleared (a controller reset): forget ours.
    pub fn clear_mask(&self) {
        self.masked.store(false, Ordering::Release);
    }

    /// After letting go of the lock: whether a reap was handed over (the caller reaps). A
    /// read-modify-write that changes nothing: ordered with the handler's (see the module).
    /// `SeqCst`, not `AcqRel`: LLVM turns an idempotent read-modify-write into a plain load
    /// (x86_64: no fence), which may be served before the lock's release store leaves the
    /// store buffer; with `SeqCst` it keeps a full fence before the load.
    #[inline]
    pub fn after_unlock(&self) -> bool {
        self.pending.fetch_or(false, Ordering::SeqCst)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::loom::AtomicU32;
    use loom::sync::Arc;

    /// The driver's lock as `spin::Mutex` has it: a flag taken by compare-and-swap (loom's own
    /// mutex hides its try-lock from the model's reordering search).
    struct Lock(AtomicBool);

    impl Lock {
        fn try_lock(&self) -> Option<()> {
            self.0
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .ok()
                .map(|_| ())
        }
        fn lock(&self) {
            while self.try_lock().is_none() {
                loom::thread::yield_now();
            }
        }
        fn unlock(&self) {
            self.0.store(false, Ordering::Release);
        }
    }

    /// A device with one completion queue and a level line: `posted` entries, `reaped` of them
    /// (under the lock), `hw_masked` its mask register.
    struct Dev {
        hand: ReapHandover,
        lock: Lock,
        reaped: AtomicU32,
        posted: AtomicU32,
        hw_masked: AtomicBool,
        /// The handler of the single-CPU protocol: mask after the failed reap, nothing more.
        old: bool,
    }

    impl Dev {
        fn new(old: bool) -> Self {
            Dev {
                hand: ReapHandover::new(),
                lock: Lock(AtomicBool::new(false)),
                reaped: AtomicU32::new(0),
                // The entry the interrupt is for, posted before anything runs.
                posted: AtomicU32::new(1),
                hw_masked: AtomicBool::new(false),
                old,
            }
        }

        /// The driver's reap loop (as `nvme`'s `reap_pending`).
        fn reap_pending(&self) -> bool {
            while self.hand.take() {
                if self
                    .hand
                    .lock_or_hand_over(|| self.lock.try_lock())
                    .is_none()
                {
                    return false;
                }
                let n = self.posted.load(Ordering::Acquire);
                self.reaped.store(n, Ordering::Relaxed);
                self.lock.unlock();
            }
            if self.hand.take_mask() {
                self.hw_masked.store(false, Ordering::Release);
            }
            true
        }

        /// The interrupt handler.
        fn handle_irq(&self) {
            self.hand.request();
            if self.reap_pending() {
                return;
            }
            self.hw_masked.store(true, Ordering::Release);
            if self.old {
                // Single-CPU order: mark masked after the reap was handed over, no retry.
                self.hand.masked.store(true, Ordering::Release);
                return;
            }
            self.hand.masked();
            self.reap_pending();
        }

        /// Process context (a submission): take the lock, let go, reap what was handed over.
        fn submit(&self) {
            self.lock.lock();
            self.lock.unlock();
            if self.hand.after_unlock() {
                self.reap_pending();
            }
        }

        /// Another CPU polls (a tag wait, a timeout scan).
        fn poll(&self) {
            self.hand.request();
            self.reap_pending();
        }
    }

    fn model(old: bool) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(move || {
            let d = Arc::new(Dev::new(old));
            let d1 = d.clone();
            let holder = loom::thread::spawn(move || d1.submit());
            let d2 = d.clone();
            let irq = loom::thread::spawn(move || d2.handle_irq());
            d.poll();
            holder.join().unwrap();
            irq.join().unwrap();
            d.lock.lock();
            assert_eq!(
                d.reaped.load(Ordering::Relaxed),
                1,
                "the posted entry was never reaped"
            );
            assert!(
                !d.hw_masked.load(Ordering::Acquire),
                "the line stayed masked with nobody to unmask it"
            );
        });
    }

    /// The handler on one CPU, the lock holder on a second, a poll on a third: the entry is
    /// reaped and the line ends unmasked in every interleaving.
    #[test]
    fn loom_reap_handover_three_cpus() {
        model(false);
    }

    /// The single-CPU order (mask recorded after the reap was handed over, no retry) loses the
    /// unmask with a holder on another CPU: the model finds it.
    #[test]
    #[should_panic]
    fn loom_reap_handover_single_cpu_order_loses_the_unmask() {
        model(true);
    }
}
