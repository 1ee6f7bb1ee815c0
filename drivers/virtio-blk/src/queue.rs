//! The driver proper: one device with one request queue, as a `blk::HwQueue`.
//!
//! The pieces live in submodules: `setup` brings the device up, `submit` builds
//! descriptor chains, `reap` takes and checks used entries, `reset` recovers after a protocol
//! violation or a timeout; `stats` declares the counters, and `fault` holds the test hooks
//! (feature `fault-injection`). The plumbing every driver has comes from `blk::driver`: the
//! counters macro, the completion list and its sink, the scatter-gather list on the stack.

use core::sync::atomic::{AtomicBool, Ordering};

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

pub use setup::DeviceInfo;
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

struct Inner {
    transport: DeviceTransport,
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
    dead: bool,
}

/// One virtio-blk device with one request queue.
pub struct VirtioBlk {
    inner: Mutex<Inner>,
    cmd: DmaBuf,
    info: DeviceInfo,
    limits: QueueLimits,
    mode: Mode,
    sink: CompletionSink,
    irq: Once<IrqLine>,
    msix: Once<(
        &'static ::pci::PciFunction<'static>,
        &'static dyn hal::MmioMapper,
        u16,
    )>,
    /// Someone has to reap: set by an interrupt that found the lock taken.
    reap_pending: AtomicBool,
    /// Chains were added without a doorbell decision (`commit` skips the lock otherwise).
    unnotified: AtomicBool,
    /// Next reap replaces the id of the first used entry (test hook).
    #[cfg(feature = "fault-injection")]
    corrupt_next: Mutex<Option<u32>>,
    /// `corrupt_next` is set (checked before taking its lock on every used entry).
    #[cfg(feature = "fault-injection")]
    corrupt_armed: AtomicBool,
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

    /// Counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Connects the block layer's queue (completion by tag). Once.
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.sink.attach(queue);
    }

    /// The interrupt line (masked briefly when the handler finds the queue lock taken).
    pub fn set_irq_line(&self, line: IrqLine) {
        self.irq.call_once(|| line);
    }

    /// Routes queue 0 to MSI-X entry `entry` of PCI function `f` (again after every reset).
    pub fn set_msix(
        &self,
        f: &'static ::pci::PciFunction<'static>,
        mapper: &'static dyn hal::MmioMapper,
        entry: u16,
    ) -> bool {
        self.msix.call_once(|| (f, mapper, entry));
        crate::pci::set_queue_msix_vector(f, mapper, entry)
    }

    /// Requests in flight in the device.
    pub fn in_flight(&self) -> u16 {
        let n = self.inner.lock().heads.in_flight();
        self.reap_if_pending();
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
        let dead = self.inner.lock().dead;
        self.reap_if_pending();
        dead
    }
}

impl HwQueue for VirtioBlk {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(rq, last)
    }

    fn commit(&self) {
        self.commit_hctx(0);
    }

    fn commit_hctx(&self, _hctx: usize) {
        // One virtqueue: every context rings it (the body is here, not behind the default's
        // second call). `unnotified` is set (under the lock, by this CPU or another) whenever
        // a chain was added without a doorbell decision; the CPU that added it reads its own
        // store here.
        if self.unnotified.load(Ordering::Relaxed) {
            let mut inner = self.inner.lock();
            self.notify_locked(&mut inner);
        }
        self.reap_if_pending();
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.abort_by_reset(rq.tag())
    }

    fn poll(&self) -> usize {
        let Some(inner) = self.inner.try_lock() else {
            return 0;
        };
        if inner.used.idx() == inner.taken {
            // An interrupt may have handed its reap over while this held the lock.
            drop(inner);
            self.reap_if_pending();
            return 0;
        }
        let n = self.reap_deliver(inner);
        self.reap_if_pending();
        n
    }
}

impl hal::IrqHandler for VirtioBlk {
    fn handle(&self) {
        self.handle_irq();
    }
}
