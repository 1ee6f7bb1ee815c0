//! Fault injection (feature `fault-injection`, on only in test builds): corrupt used-ring
//! entries, to show that the checks in the reap path catch them.

use core::sync::atomic::Ordering;

use super::VirtioBlk;

impl VirtioBlk {
    /// Test hook: writes a used entry with id `id` into the used ring as if the device had,
    /// (on queue 0) and reaps it at once. Only with nothing in flight (returns `false`
    /// otherwise).
    pub fn inject_corrupt_used(&self, id: u32) -> bool {
        let v = &self.vq0;
        let inner = v.inner.lock();
        if inner.heads.in_flight() != 0 {
            return false;
        }
        let u = inner.used;
        u.inject(id, 1);
        self.reap_deliver(v, inner);
        self.reap_if_pending(v);
        true
    }

    /// Test hook: the next used entry the device returns is read with id `id` instead of its
    /// own (a corrupt entry for a request in flight).
    pub fn corrupt_next_used_id(&self, id: u32) {
        *self.corrupt_next.lock() = Some(id);
        self.corrupt_armed.store(true, Ordering::Release);
    }

    /// The id the reap loop uses for a used entry the device gave as `id`: the armed
    /// replacement once, `id` otherwise (ids past `u16::MAX` read as `u16::MAX`).
    pub(super) fn corrupted_used_id(&self, id: u16) -> u16 {
        if self.corrupt_armed.load(Ordering::Acquire)
            && let Some(bad) = self.corrupt_next.lock().take()
        {
            self.corrupt_armed.store(false, Ordering::Relaxed);
            return u16::try_from(bad).unwrap_or(u16::MAX);
        }
        id
    }
}
