//! The driver proper: one disk on one port of an AHCI HBA, as a `blk::HwQueue`.
//!
//! - [`tracker`]: slot and tag bookkeeping ([`Tracker`]), pure and tested on the host.
//! - `bringup`: HBA reset ([`Hba`], [`PortStatus`]), port start and stop, COMRESET, the internal command, IDENTIFY.
//! - `build`: requests to commands in their slots (FIS, header, NCQ or exclusive) and issuing.
//! - `sgmap`: a request's scatter-gather list into the slot's PRDT.
//! - `complete`: the interrupt handler and polling, reaping PxSACT/PxCI, delivery by tag.
//! - `recover`: error and timeout recovery (NCQ error log, COMRESET, failing and replaying).

mod bringup;
mod build;
mod complete;
mod recover;
mod sgmap;
pub mod tracker;

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use blk::driver::CompletionSink;
use blk::{BlkError, HwQueue, Op, QueueLimits, QueueRqError, Request, TagComplete, TimeoutAction};
use hal::{DmaBuf, Mmio};
use spin::Mutex;

use crate::cmd::{HEADER_BYTES, PRDT_ENTRIES, RFIS_BYTES, SLOTS, TABLE_BYTES};
use crate::regs::{Cap, PxCmd, PxIs, Serr, Tfd, port as px};
use crate::spec::{IdentifyInfo, trimmed};
use crate::stats::DriverStats;

pub use bringup::{Hba, PortStatus};
use build::SlotCmd;
use complete::NO_DONE;
pub use tracker::{Issue, Recovery, Tracker};

/// The CPU that owns the port's interrupt, for a port several CPUs submit to
/// ([`Ahci::set_owner`]): completions are delivered there only.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    /// Whether the caller runs on the CPU that takes the port's interrupt.
    pub here: fn() -> bool,
    /// Makes that CPU run the port's interrupt handler soon (e.g. sends it the interrupt's
    /// vector as an IPI). Called with the port's lock not held, from any context.
    pub kick: fn(),
}

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The HBA interrupts; the handler reaps.
    Interrupt,
    /// No interrupts: `HwQueue::poll` reaps (the kernel's wait hook calls it).
    Polling,
}

/// `BlkError::DeviceError` codes this driver reports.
pub mod device_error {
    /// The port is unusable (a reset failed).
    pub const DEAD: u16 = 0x200;
}

/// Times one command is replayed after a recovery it was not to blame for, before it fails.
pub const MAX_REPLAYS: u8 = 8;
/// Register polls before a wait for the hardware gives up (host tests: steps of the fake HBA,
/// which answers within a few).
const SPIN_LIMIT: u32 = if cfg!(test) { 20_000 } else { 2_000_000 };

/// What the controller and the disk offer, and what the driver uses.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// The port the disk is on.
    pub port: u8,
    /// IDENTIFY DEVICE.
    pub identify: IdentifyInfo,
    /// HBA `CAP`.
    pub cap: Cap,
    /// HBA version.
    pub version: u32,
    /// Ports implemented.
    pub ports_implemented: u32,
    /// 64-bit DMA addresses.
    pub addr64: bool,
    /// NCQ in use (HBA and disk both do it).
    pub ncq: bool,
    /// Tags below this go out as NCQ commands.
    pub ncq_depth: u8,
    /// The BIOS owned the HBA and handed it over.
    pub bios_handoff: bool,
    /// GET MEDIA STATUS at bring-up said the media is write-protected (only asked of disks
    /// with removable-media status notification): the queue should be read-only; the driver
    /// refuses writes with `ReadOnly` either way.
    pub write_protected: bool,
}

impl DeviceInfo {
    /// The block layer's limits.
    pub fn queue_limits(&self) -> QueueLimits {
        let id = &self.identify;
        let mut l = QueueLimits::new();
        l.logical_block_size = id.logical_sector_size;
        // 1 MiB per request: well under the 65536-block ATA count, and big bios get split.
        l.max_sectors = 2048;
        l.max_segments = PRDT_ENTRIES as u16;
        l.max_segment_size = crate::sg::PRD_MAX_BYTES;
        l.dma_alignment = 2;
        l.dma_limit = if self.addr64 { u64::MAX } else { 0xffff_ffff };
        if id.trim {
            // One 512-byte block of 64 ranges per command.
            let blocks = 64 * crate::spec::TRIM_RANGE_MAX;
            let sectors = blocks * (id.logical_sector_size as u64 / 512);
            l.max_discard_sectors = sectors.min(u32::MAX as u64 >> 9) as u32
                / (id.logical_sector_size / 512)
                * (id.logical_sector_size / 512);
        }
        l
    }
}

struct Inner {
    tracker: Tracker,
    cmds: [SlotCmd; SLOTS],
    /// Slots holding a passthrough command.
    pt: u32,
    /// Slots whose header and FIS `queue_rq` already wrote for their first issue.
    loaded: u32,
    /// PxIS, PxTFD and PxSERR of the error that stopped the port.
    err_is: PxIs,
    err_tfd: Tfd,
    err_serr: Serr,
    /// Why requests are refused before they reach the port ([`DEAD`], [`READ_ONLY`]).
    refuse: u8,
}

/// [`Inner::refuse`]: a reset failed, the port is unusable.
const DEAD: u8 = 1;
/// [`Inner::refuse`]: the disk reported write-protected media; writes fail at once.
const READ_ONLY: u8 = 2;

/// Why a request is refused at once, given [`Inner::refuse`] (not 0).
#[cold]
#[inline(never)]
fn refused(refuse: u8, rq: &Request) -> Option<BlkError> {
    if refuse & DEAD != 0 {
        return Some(BlkError::DeviceError(device_error::DEAD));
    }
    let write = rq.passthrough().is_none() && rq.op().is_write() && rq.op() != Op::Flush;
    (refuse & READ_ONLY != 0 && write).then_some(BlkError::ReadOnly)
}

/// Memory layout of the port's DMA buffer.
const CL_OFF: usize = 0;
const RFIS_OFF: usize = 1024;
const SCRATCH_OFF: usize = 2048;
const TABLES_OFF: usize = 4096;
const INTERNAL_TABLE: usize = TABLES_OFF + SLOTS * TABLE_BYTES;
const MEM_BYTES: usize = INTERNAL_TABLE + TABLE_BYTES;

const _: () =
    assert!(RFIS_OFF >= CL_OFF + SLOTS * HEADER_BYTES && SCRATCH_OFF >= RFIS_OFF + RFIS_BYTES);

/// An AHCI controller with one disk on one port.
pub struct Ahci {
    abar: Mmio,
    /// The port's own registers (`PORT_BASE + port * PORT_STRIDE` of ABAR).
    pregs: Mmio,
    port: usize,
    mem: DmaBuf,
    info: DeviceInfo,
    limits: QueueLimits,
    /// log2 of the logical sector size.
    lbs_shift: u32,
    mode: Mode,
    inner: Mutex<Inner>,
    /// `queue_rq` took a request it left for `commit` to issue.
    unissued: AtomicBool,
    /// The CPU completions run on, when set (several CPUs submit).
    owner: spin::Once<Owner>,
    queue: CompletionSink,
    /// PxIS bits the handler cleared but could not act on (the lock was held).
    pending_is: AtomicU32,
    reap_pending: AtomicBool,
    recovery_pending: AtomicBool,
    /// Tags a recovery failed as writes to write-protected media, to complete with
    /// `BlkError::ReadOnly` after the lock is dropped.
    ro_done: AtomicU32,
    stats: DriverStats,
}

fn spin_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..SPIN_LIMIT {
        // Host tests: the fake HBA runs while the driver waits for it.
        #[cfg(test)]
        crate::fake::tick();
        if f() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

impl Ahci {
    /// What the controller and disk offer.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The block layer's limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Treats the controller as one without 64-bit addressing (`CAP.S64A` clear) that reaches
    /// data memory only up to `limit` (capped at 4 GiB - 1): [`DeviceInfo::addr64`] becomes
    /// false and the limits' `dma_limit` becomes `limit`, so a queue with bounce buffers copies
    /// every segment above it through pages below it, and the driver refuses a PRD above it
    /// ([`crate::sg::PrdtError::AboveLimit`]). For tests of the bounce path on machines whose
    /// memory all lies below 4 GiB; call before the queue is built on [`Ahci::limits`]. The
    /// port's own command memory is not moved.
    pub fn limit_dma(&mut self, limit: u64) {
        self.info.addr64 = false;
        self.limits.dma_limit = limit.min(0xffff_ffff);
    }

    /// Completion mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Model and serial number, trimmed.
    pub fn model_serial(&self) -> (&str, &str) {
        (
            trimmed(&self.info.identify.model),
            trimmed(&self.info.identify.serial),
        )
    }

    /// Connects the block layer's queue (completion by tag).
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.queue.attach(queue);
    }

    /// Delivers every completion on the CPU that owns the port's interrupt: a submitter on
    /// another CPU that finds a reap handed over to it (the handler found the lock taken)
    /// kicks that CPU instead of reaping itself. Without an owner (one CPU, or an interrupt
    /// that cannot be sent again, like INTx through the PLIC) whoever holds the lock reaps.
    /// Set once, at attach; later calls are ignored. Recovery (timeouts, errors) and polling
    /// still complete where they run.
    pub fn set_owner(&self, owner: Owner) {
        self.owner.call_once(|| owner);
    }

    /// Requests the driver holds now.
    pub fn in_flight(&self) -> u32 {
        let g = self.inner.lock();
        let n = g.tracker.busy().count_ones();
        // An interrupt may have handed its reap over while this held the lock.
        self.unlock_and_deliver(g, NO_DONE);
        n
    }

    /// Whether a reap was handed over and not done yet: the owner's handler, when it shares
    /// its interrupt with other ports, calls [`Ahci::handle_irq`] for such a port even when
    /// the HBA's `IS` has no bit for it (an owner kick, see [`Ahci::set_owner`]).
    pub fn reap_wanted(&self) -> bool {
        self.reap_pending.load(Ordering::Acquire)
    }

    /// Test hook: runs `f` (an interrupt handler, say) while process context holds the
    /// port's lock, then lets go as every lock holder does.
    #[cfg(test)]
    pub(crate) fn with_lock_held(&self, f: impl FnOnce()) {
        let g = self.inner.lock();
        f();
        self.unlock_and_deliver(g, NO_DONE);
    }

    /// The HBA port the disk is on (its bit in the HBA's `IS`, [`Hba::pending`]).
    pub fn port(&self) -> usize {
        self.port
    }

    /// Whether a reset failed and the port is unusable.
    pub fn is_dead(&self) -> bool {
        let g = self.inner.lock();
        let dead = g.refuse & DEAD != 0;
        self.unlock_and_deliver(g, NO_DONE);
        dead
    }

    /// Whether the disk reported write-protected media: writes (and TRIM) then fail at once
    /// with `BlkError::ReadOnly`; reads, flushes and passthrough commands go on.
    pub fn is_read_only(&self) -> bool {
        let g = self.inner.lock();
        let ro = g.refuse & READ_ONLY != 0;
        self.unlock_and_deliver(g, NO_DONE);
        ro
    }

    #[inline]
    fn pread(&self, off: usize) -> u32 {
        self.pregs.read32(off)
    }

    #[inline]
    fn pwrite(&self, off: usize, v: u32) {
        self.pregs.write32(off, v);
        // Host tests: PxSACT and PxCI are write-1-to-set in hardware but plain memory in the
        // fake HBA, so it takes each write before a second one in the same call overwrites it.
        #[cfg(test)]
        if off == px::SACT || off == px::CI {
            crate::fake::tick();
        }
    }

    /// `PxCMD`.
    #[inline]
    fn pcmd(&self) -> PxCmd {
        PxCmd::from_bits_retain(self.pread(px::CMD))
    }

    /// `PxIS`.
    #[inline]
    fn pis(&self) -> PxIs {
        PxIs::from_bits_retain(self.pread(px::IS))
    }

    /// `PxTFD`.
    #[inline]
    fn tfd(&self) -> Tfd {
        Tfd::from_bits_retain(self.pread(px::TFD))
    }

    fn table_off(slot: usize) -> usize {
        TABLES_OFF + slot * TABLE_BYTES
    }
}

impl HwQueue for Ahci {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let tag = rq.tag();
        if tag as usize >= SLOTS {
            return Err(QueueRqError::Fatal(BlkError::Io));
        }
        let mut g = self.inner.lock();
        if g.refuse != 0
            && let Some(e) = refused(g.refuse, rq)
        {
            return Err(QueueRqError::Fatal(e));
        }
        if g.tracker.busy() & (1 << tag) != 0 {
            // A block-layer bug: the slot's table belongs to the command in it.
            return Err(QueueRqError::Busy);
        }
        let (ncq, steps) = self.build(&mut g, rq)?;
        let accepted = g.tracker.accept(tag as u8, ncq, steps);
        debug_assert!(accepted);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if last {
            // The last request of a batch goes out now; `commit` then has nothing to do.
            self.issue_ready(&mut g);
        } else {
            self.unissued.store(true, Ordering::Relaxed);
        }
        // An interrupt that came while the lock was held left its reaping here.
        self.unlock_and_deliver(g, NO_DONE);
        Ok(())
    }

    fn commit(&self) {
        if !self.unissued.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.inner.lock();
        self.issue_ready(&mut g);
        self.unlock_and_deliver(g, NO_DONE);
    }

    fn poll(&self) -> usize {
        if self.mode == Mode::Polling {
            self.poll_once()
        } else {
            0
        }
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock();
        let mut done = NO_DONE;
        if g.tracker.busy() & (1 << rq.tag()) != 0 {
            self.recover(&mut g, Some(rq.tag() as u8), &mut done);
        }
        self.unlock_and_deliver(g, done);
        TimeoutAction::Retry
    }
}

impl hal::IrqHandler for Ahci {
    fn handle(&self) {
        self.handle_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_controller_and_the_disk() {
        let id = IdentifyInfo::parse(&crate::spec::tests_support::qemu_words()).unwrap();
        let mut info = DeviceInfo {
            port: 0,
            identify: id,
            cap: Cap::empty(),
            version: 0,
            ports_implemented: 1,
            addr64: true,
            ncq: true,
            ncq_depth: 32,
            bios_handoff: false,
            write_protected: false,
        };
        let l = info.queue_limits();
        l.validate().unwrap();
        assert_eq!(l.dma_limit, u64::MAX);
        assert_eq!(l.max_segments, 128);
        assert!(l.max_discard_sectors > 0);
        info.addr64 = false;
        assert_eq!(info.queue_limits().dma_limit, 0xffff_ffff);
    }
}
