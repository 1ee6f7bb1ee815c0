//! The driver proper: one device with one request queue, or (`VIRTIO_BLK_F_MQ`) one per
//! hardware context of the block layer's queue, as a `blk::HwQueue`.
//!
//! The pieces live in submodules: `setup` brings the device up, `submit` builds
//! descriptor chains, `reap` takes and checks used entries, `reset` recovers after a protocol
//! violation or a timeout; `stats` declares the counters, and `fault` holds the test hooks
//! (feature `fault-injection`). The plumbing every driver has comes from `blk::driver`: the
//! counters macro, the completion list and its sink, the scatter-gather list on the stack.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use blk::driver::CompletionSink;
use blk::{HwQueue, QueueLimits, QueueRqError, Request, TagComplete, TimeoutAction};
use hal::{DmaBuf, IrqLine};
use spin::{Mutex, Once};

use crate::hal_impl::UsedArea;
use crate::ring::Ring;
use crate::sg::HeadTable;
use crate::{DeviceTransport, MAX_SEGMENTS, QUEUE_DEPTH, RING_SIZE};

#[cfg(feature = "fault-injection")]
mod fault;
mod reap;
mod reset;
mod setup;
mod stats;
mod submit;

pub use setup::{DeviceInfo, QueueFallback};
pub use stats::DriverStats;

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The device interrupts; the handler reaps.
    Interrupt,
    /// No interrupts: `HwQueue::poll` reaps (the kernel's wait hook calls it).
    Polling,
}

/// `BlkError::DeviceError` codes this driver reports besides the device's own status byte.
pub mod device_error {
    /// The used ring named a chain that was not in flight (or no chain at all).
    pub const BAD_USED_ID: u16 = 0x100;
    /// The device reported fewer bytes written than the chain needed.
    pub const SHORT_LENGTH: u16 = 0x101;
    /// The device is unusable (a reset failed).
    pub const DEAD: u16 = 0x103;
}

/// Most request queues (virtqueues) a device is given: one per hardware context of the block
/// layer's queue.
pub const MAX_QUEUES: usize = blk::queue::MAX_HW_CTX;

/// Bytes of command memory per tag: header at 0, range segment at 16, status at 32, and from 64
/// the saved scatter-gather list of a write that waits for its pre-flush.
const CMD_STRIDE: usize = 64 + 16 * MAX_SEGMENTS as usize;
const CMD_RANGE: usize = 16;
const CMD_STATUS: usize = 32;
const CMD_SG: usize = 64;

#[derive(Clone, Copy, Debug)]
struct Slot {
    readable: u16,
    writable: u16,
    min_used_len: u32,
    bytes: u32,
    /// A FUA write whose post-flush is still to run.
    fua: bool,
    /// This chain is the pre-flush of a write with this many saved segments (0: not one).
    preflush_segs: u16,
    /// Sector of that write.
    sector: u64,
}

impl Slot {
    const EMPTY: Slot = Slot {
        readable: 0,
        writable: 0,
        min_used_len: 0,
        bytes: 0,
        fua: false,
        preflush_segs: 0,
        sector: 0,
    };
}

pub(crate) struct Inner {
    vq: Ring,
    /// The ring's used area, read directly (index, ids, `avail_event`).
    used: UsedArea,
    heads: HeadTable<RING_SIZE>,
    slots: [Slot; QUEUE_DEPTH],
    /// Chains added since bring-up (equals the queue's avail index).
    added: u16,
    /// Used entries taken since bring-up (equals the queue's last used index).
    taken: u16,
    /// `added` at the last notification decision.
    notified: u16,
    /// This queue's own doorbell register (virtio-pci); `None`: notified through the
    /// transport.
    doorbell: Option<hal::Mmio>,
}

/// One request queue (virtqueue): its ring state under its own lock (taken by the one CPU
/// that submits to it and by its interrupt handler), its reap hand-over flags and its
/// counters. Aligned so that two queues never share a cache line (pair).
#[repr(align(128))]
pub(crate) struct Vq {
    inner: Mutex<Inner>,
    /// The queue's index on the device.
    index: u16,
    /// Someone has to reap: set by an interrupt that found the lock taken.
    reap_pending: AtomicBool,
    /// Chains were added without a doorbell decision (`commit` skips the lock otherwise).
    unnotified: AtomicBool,
    /// Requests completed from this queue's used ring.
    completions: AtomicU64,
    /// The counters of the I/O path on this queue (requests, doorbells, its interrupts, reaps
    /// and completions): [`VirtioBlk::stats`] adds them up.
    stats: DriverStats,
}

impl Vq {
    fn new(index: u16, vq: Ring, used: UsedArea, doorbell: Option<hal::Mmio>) -> Vq {
        Vq {
            inner: Mutex::new(Inner {
                vq,
                used,
                heads: HeadTable::new(),
                slots: [Slot::EMPTY; QUEUE_DEPTH],
                added: 0,
                taken: 0,
                notified: 0,
                doorbell,
            }),
            index,
            reap_pending: AtomicBool::new(false),
            unnotified: AtomicBool::new(false),
            completions: AtomicU64::new(0),
            stats: DriverStats::new(),
        }
    }
}

/// One virtio-blk device with one request queue, or several (one per hardware context).
pub struct VirtioBlk {
    /// Queue 0 (every device has it).
    vq0: Vq,
    /// Queues 1.. (multi-queue).
    more: [Option<Vq>; MAX_QUEUES - 1],
    /// Queues in use (`1 + ` those in `more`).
    nr_queues: usize,
    /// The transport: status, interrupt acknowledge, and the doorbell of a queue without its
    /// own. Taken after a queue's lock, never before.
    transport: Mutex<DeviceTransport>,
    /// A reset failed: the device is unusable.
    dead: AtomicBool,
    /// Held while every queue is reset (before their locks, in order).
    reset_lock: Mutex<()>,
    /// A reset is owed: a protocol violation found where the locks could not all be taken
    /// (interrupt context); the next [`VirtioBlk::recover`] or timeout does it.
    reset_wanted: AtomicBool,
    cmd: DmaBuf,
    info: DeviceInfo,
    limits: QueueLimits,
    mode: Mode,
    sink: CompletionSink,
    irq: Once<IrqLine>,
    /// Queue `q`'s interrupt is MSI-X entry `q` of this function (programmed again after every
    /// reset); completions need no interrupt acknowledge then.
    msix: Once<(
        &'static ::pci::PciFunction<'static>,
        &'static dyn hal::MmioMapper,
    )>,
    /// Next reap replaces the id of the first used entry (test hook).
    #[cfg(feature = "fault-injection")]
    corrupt_next: Mutex<Option<u32>>,
    /// `corrupt_next` is set (checked before taking its lock on every used entry).
    #[cfg(feature = "fault-injection")]
    corrupt_armed: AtomicBool,
    /// The counters of the device's own paths (resets, timeouts, completions a reset
    /// delivers); each queue keeps those of its I/O path.
    stats: DriverStats,
}

impl VirtioBlk {
    /// What the device offered.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The limits to build the block layer's queue with.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Completion mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Counters: totals over the device's own and every queue's (each counter read once,
    /// relaxed; not at one instant). A copy: read it again for later values.
    pub fn stats(&self) -> DriverStats {
        let total = DriverStats::new();
        total.add_from(&self.stats);
        for v in self.queues() {
            total.add_from(&v.stats);
        }
        total
    }

    /// Connects the block layer's queue (completion by tag). Once.
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.sink.attach(queue);
    }

    /// The interrupt line of a single queue on a level-triggered or wired line (masked
    /// briefly when the handler finds the queue lock taken).
    pub fn set_irq_line(&self, line: IrqLine) {
        self.irq.call_once(|| line);
    }

    /// Routes queue `q`'s interrupt to MSI-X entry `q` of PCI function `f`, for every queue
    /// (again after every reset); `false` if the device refused one. Completions then need no
    /// interrupt acknowledge.
    pub fn set_msix(
        &self,
        f: &'static ::pci::PciFunction<'static>,
        mapper: &'static dyn hal::MmioMapper,
    ) -> bool {
        self.msix.call_once(|| (f, mapper));
        self.program_msix()
    }

    /// Writes every queue's MSI-X entry (its index).
    fn program_msix(&self) -> bool {
        let Some(&(f, mapper)) = self.msix.get() else {
            return true;
        };
        self.queues()
            .all(|v| crate::pci::set_queue_msix_vector(f, mapper, v.index, v.index))
    }

    /// Request queues in use (hardware contexts the block layer's queue should have).
    pub fn nr_queues(&self) -> usize {
        self.nr_queues
    }

    /// Requests completed from queue `q`'s used ring so far.
    pub fn queue_completions(&self, q: usize) -> u64 {
        self.queue(q)
            .map_or(0, |v| v.completions.load(Ordering::Relaxed))
    }

    /// Queue `q`, if in use.
    fn queue(&self, q: usize) -> Option<&Vq> {
        if q == 0 {
            Some(&self.vq0)
        } else {
            self.more.get(q - 1).and_then(Option::as_ref)
        }
    }

    /// Hardware context `h`'s queue (queue 0 for a context past the queues, which the block
    /// layer never makes: its contexts are at most [`VirtioBlk::nr_queues`]).
    #[inline]
    fn vq(&self, h: usize) -> &Vq {
        if h == 0 {
            return &self.vq0;
        }
        match self.more.get(h.wrapping_sub(1)) {
            Some(Some(v)) => v,
            _ => &self.vq0,
        }
    }

    /// Every queue in use, in order.
    fn queues(&self) -> impl Iterator<Item = &Vq> {
        core::iter::once(&self.vq0).chain(self.more.iter().flatten())
    }

    /// Requests in flight in the device.
    pub fn in_flight(&self) -> u16 {
        let mut n = 0;
        for v in self.queues() {
            n += v.inner.lock().heads.in_flight();
            self.reap_if_pending(v);
        }
        n
    }

    /// Requests in flight on queue `q`.
    pub fn queue_in_flight(&self, q: usize) -> u16 {
        let Some(v) = self.queue(q) else { return 0 };
        let n = v.inner.lock().heads.in_flight();
        self.reap_if_pending(v);
        n
    }

    /// Physical range of the command memory (host tests check descriptors against it).
    #[cfg(test)]
    pub(crate) fn cmd_range(&self) -> (u64, u64) {
        let p = self.cmd.phys().0;
        (p, p + self.cmd.len() as u64)
    }

    /// Whether a protocol violation left the device unusable.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Process context: does a reset a protocol violation asked for where it could not run
    /// (an interrupt handler that found a queue lock taken). Cheap when none is owed.
    #[inline]
    pub fn recover(&self) {
        if self.reset_wanted.load(Ordering::Acquire) {
            self.recover_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn recover_now(&self) {
        self.reset_all_deliver(&blk::driver::CompletionBatch::<0>::new(), true);
    }
}

impl HwQueue for VirtioBlk {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(rq, last)
    }

    fn commit(&self) {
        for v in self.queues() {
            self.commit_vq(v);
        }
    }

    fn commit_hctx(&self, hctx: usize) {
        self.commit_vq(self.vq(hctx));
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.abort_by_reset(rq.tag(), rq.hctx())
    }

    fn poll(&self) -> usize {
        self.queues().map(|v| self.poll_vq(v)).sum()
    }

    fn poll_hctx(&self, hctx: usize) -> usize {
        self.poll_vq(self.vq(hctx))
    }
}

impl VirtioBlk {
    #[inline(always)]
    fn commit_vq(&self, v: &Vq) {
        // `unnotified` is set (under the queue's lock, by this CPU or another) whenever a
        // chain was added without a doorbell decision; the CPU that added it reads its own
        // store here.
        if v.unnotified.load(Ordering::Relaxed) {
            self.commit_notify(v);
        }
        self.reap_if_pending(v);
    }

    /// The doorbell decision `commit` owes queue `v` (out of line: the last `queue_rq` of a
    /// batch usually took it).
    #[inline(never)]
    fn commit_notify(&self, v: &Vq) {
        let mut inner = v.inner.lock();
        self.notify_locked(v, &mut inner);
    }

    fn poll_vq(&self, v: &Vq) -> usize {
        let Some(inner) = v.inner.try_lock() else {
            return 0;
        };
        if inner.used.idx() == inner.taken {
            // An interrupt may have handed its reap over while this held the lock.
            drop(inner);
            self.reap_if_pending(v);
            return 0;
        }
        let n = self.reap_deliver(v, inner);
        self.reap_if_pending(v);
        n
    }
}

impl hal::IrqHandler for VirtioBlk {
    fn handle(&self) {
        self.handle_irq();
    }
}
