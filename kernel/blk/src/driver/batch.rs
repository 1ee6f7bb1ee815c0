//! Completions collected under a driver's lock and delivered after it, and the sink they go
//! to.
//!
//! A driver reaps its completion ring under its own lock, but must not call the block layer
//! there: completing a request ends bios, whose `end_io` may submit again and re-enter the
//! driver. So it records `(tag, status)` pairs in a batch while it holds the lock and delivers
//! the batch to its [`CompletionSink`] after dropping it.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;

use super::TagComplete;
use crate::error::{BlkError, BlkStatus};

/// What a delivery did, for the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Completions delivered (requests and passthrough commands).
    pub completed: u32,
    /// Of them, completions with an error.
    pub errors: u32,
}

impl Delivered {
    /// Adds this delivery to a driver's `completions` and `errors` counters (relaxed; a
    /// counter is only written when its figure is not zero).
    #[inline]
    pub fn count(&self, completions: &AtomicU64, errors: &AtomicU64) {
        if self.completed != 0 {
            completions.fetch_add(self.completed as u64, Ordering::Relaxed);
        }
        if self.errors != 0 {
            errors.fetch_add(self.errors as u64, Ordering::Relaxed);
        }
    }
}

/// A batch of completions that can be handed to a [`TagComplete`].
pub trait Deliver {
    /// Completes every entry on `sink`, in order: a request with an error as having
    /// transferred nothing (`Some(0)` bytes), a successful one as complete (`None`), a
    /// passthrough command with its result word.
    fn deliver(&self, sink: &dyn TagComplete) -> Delivered;
}

/// One completion of a [`CompletionBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's tag.
    pub tag: u16,
    /// Whether it is a passthrough command (completed with `result`).
    pub pt: bool,
    /// The status.
    pub status: BlkStatus,
    /// The result word of a passthrough command.
    pub result: u64,
}

/// Up to `N` completions in arrival order (for drivers with many tags or per-command status).
///
/// The entries live in a `heapless::Vec`, so an empty batch costs one length word to make:
/// interrupt paths build one per reap pass, and initialising `N` entries there showed up in
/// the per-I/O instruction count.
#[derive(Clone, Debug)]
pub struct CompletionBatch<const N: usize> {
    items: heapless::Vec<Completion, N>,
}

impl<const N: usize> Default for CompletionBatch<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> CompletionBatch<N> {
    /// An empty batch.
    pub const fn new() -> Self {
        CompletionBatch {
            items: heapless::Vec::new(),
        }
    }

    /// Adds the completion of request `tag`; false (and nothing added) when the batch is full.
    #[inline]
    pub fn push(&mut self, tag: u16, status: BlkStatus) -> bool {
        self.push_entry(Completion {
            tag,
            pt: false,
            status,
            result: 0,
        })
    }

    /// Adds the completion of passthrough command `tag` with its result word; false when full.
    #[inline]
    pub fn push_pt(&mut self, tag: u16, status: BlkStatus, result: u64) -> bool {
        self.push_entry(Completion {
            tag,
            pt: true,
            status,
            result,
        })
    }

    #[inline]
    fn push_entry(&mut self, c: Completion) -> bool {
        self.items.push(c).is_ok()
    }

    /// Completions in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether the batch is full.
    pub fn is_full(&self) -> bool {
        self.items.is_full()
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// The completions, in the order they were added.
    pub fn as_slice(&self) -> &[Completion] {
        &self.items
    }
}

impl<const N: usize> Deliver for CompletionBatch<N> {
    fn deliver(&self, sink: &dyn TagComplete) -> Delivered {
        let mut d = Delivered {
            completed: self.items.len() as u32,
            errors: 0,
        };
        for c in self.as_slice() {
            if c.status.is_err() {
                d.errors += 1;
            }
            if c.pt {
                sink.complete_pt(c.tag, c.status, c.result);
            } else {
                sink.complete(c.tag, c.status, c.status.is_err().then_some(0));
            }
        }
        d
    }
}

/// Completions of a driver with at most 64 tags as bitmasks: one bit per tag for success,
/// one mask per error kind (`E` kinds, fixed when the batch is made), and a mask of the
/// passthrough commands (completed with result word 0). A tag is in at most one of the
/// status masks. Delivery is in tag order.
#[derive(Clone, Copy, Debug)]
pub struct TagMaskBatch<const E: usize> {
    ok: u64,
    failed: [u64; E],
    errors: [BlkError; E],
    pt: u64,
}

impl<const E: usize> TagMaskBatch<E> {
    /// An empty batch whose error kind `i` completes with `errors[i]`.
    pub const fn new(errors: [BlkError; E]) -> Self {
        TagMaskBatch {
            ok: 0,
            failed: [0; E],
            errors,
            pt: 0,
        }
    }

    /// Adds the tags in `mask` as completed successfully.
    #[inline]
    pub fn ok(&mut self, mask: u64) {
        self.ok |= mask;
    }

    /// Adds the tags in `mask` as failed with error kind `kind` (ignored if out of range).
    #[inline]
    pub fn fail(&mut self, kind: usize, mask: u64) {
        if let Some(f) = self.failed.get_mut(kind) {
            *f |= mask;
        }
    }

    /// Marks the tags in `mask` as passthrough commands.
    #[inline]
    pub fn mark_pt(&mut self, mask: u64) {
        self.pt |= mask;
    }

    /// Every tag in the batch.
    #[inline]
    pub fn all(&self) -> u64 {
        self.failed.iter().fold(self.ok, |a, f| a | f)
    }

    /// The tags that failed.
    pub fn failed(&self) -> u64 {
        self.failed.iter().fold(0, |a, f| a | f)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.all() == 0
    }

    /// Empties the batch (the error kinds stay).
    pub fn clear(&mut self) {
        self.ok = 0;
        self.failed = [0; E];
        self.pt = 0;
    }

    /// The status of `tag`'s completion, if it is in the batch.
    pub fn status(&self, tag: u32) -> Option<BlkStatus> {
        let b = 1u64.checked_shl(tag)?;
        if self.ok & b != 0 {
            return Some(Ok(()));
        }
        self.failed
            .iter()
            .zip(self.errors)
            .find(|(f, _)| *f & b != 0)
            .map(|(_, e)| Err(e))
    }
}

impl<const E: usize> TagMaskBatch<E> {
    /// Delivers the batch's only tag, `all` (a single bit or none), to `sink`; whether it
    /// failed, `None` if the batch is empty.
    #[inline]
    fn one(&self, all: u64, sink: &dyn TagComplete) -> Option<bool> {
        if all == 0 {
            return None;
        }
        let tag = all.trailing_zeros();
        let st = if self.ok & all != 0 {
            Ok(())
        } else {
            self.status(tag).unwrap_or(Ok(()))
        };
        if self.pt & all != 0 {
            sink.complete_pt(tag as u16, st, 0);
        } else {
            sink.complete(tag as u16, st, st.is_err().then_some(0));
        }
        Some(st.is_err())
    }
}

impl<const E: usize> Deliver for TagMaskBatch<E> {
    fn deliver(&self, sink: &dyn TagComplete) -> Delivered {
        let all = self.all();
        if all & all.wrapping_sub(1) == 0 {
            // At most one completion (the common case at low queue depth): no loop, no
            // population counts.
            return match self.one(all, sink) {
                None => Delivered::default(),
                Some(failed) => Delivered {
                    completed: 1,
                    errors: u32::from(failed),
                },
            };
        }
        self.many(all, sink)
    }
}

impl<const E: usize> TagMaskBatch<E> {
    /// Delivers the tags of `all` (two or more) in tag order. Out of line, so that the caller
    /// of [`Deliver::deliver`] does not carry the loop's registers on the one-completion path.
    #[inline(never)]
    fn many(&self, all: u64, sink: &dyn TagComplete) -> Delivered {
        let failed = self.failed();
        let mut m = all;
        while m != 0 {
            let tag = m.trailing_zeros();
            m &= m - 1;
            // Only a failed tag looks its error kind up.
            let st = if failed & (1 << tag) == 0 {
                Ok(())
            } else {
                self.status(tag).unwrap_or(Ok(()))
            };
            if self.pt & (1 << tag) != 0 {
                sink.complete_pt(tag as u16, st, 0);
            } else {
                sink.complete(tag as u16, st, st.is_err().then_some(0));
            }
        }
        Delivered {
            completed: all.count_ones(),
            errors: failed.count_ones(),
        }
    }
}

/// Where a driver's completions go: the queue it was attached to, set once at bring-up and
/// read lock-free from the interrupt handler.
pub struct CompletionSink(Once<&'static dyn TagComplete>);

impl Default for CompletionSink {
    fn default() -> Self {
        Self::new()
    }
}

impl CompletionSink {
    /// A sink not attached yet (completions are dropped until [`attach`](Self::attach)).
    pub const fn new() -> Self {
        CompletionSink(Once::new())
    }

    /// Attaches the queue (the first call wins; later calls are ignored).
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.0.call_once(|| queue);
    }

    /// The queue, once attached.
    #[inline]
    pub fn get(&self) -> Option<&'static dyn TagComplete> {
        self.0.get().copied()
    }

    /// Completes request `tag` with `status` (as [`Deliver::deliver`] does for one entry);
    /// false if no queue is attached.
    #[inline]
    pub fn complete(&self, tag: u16, status: BlkStatus) -> bool {
        match self.get() {
            Some(q) => {
                q.complete(tag, status, status.is_err().then_some(0));
                true
            }
            None => false,
        }
    }

    /// Delivers `batch` to the queue; nothing (and zero counts) if no queue is attached or the
    /// batch is empty.
    #[inline]
    pub fn deliver(&self, batch: &impl Deliver) -> Delivered {
        match self.get() {
            Some(q) => batch.deliver(q),
            None => Delivered::default(),
        }
    }

    /// Dispatches the queue's requeued requests (process context); nothing if not attached.
    pub fn kick(&self) {
        if let Some(q) = self.get() {
            q.kick();
        }
    }
}
