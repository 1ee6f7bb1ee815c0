//! The driver proper: bring-up, `blk::HwQueue` (requests to descriptor chains, batched
//! notification), reaping the used ring with every entry checked, completion by tag, device
//! reset after a protocol violation, and the statistics.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use blk::{
    BioFlags, BlkError, BlkStatus, HwQueue, Op, QueueLimits, QueueRqError, Request, SgEntry,
    TagComplete, TimeoutAction,
};
use hal::{DmaBuf, IrqLine};
use spin::{Mutex, MutexGuard, Once};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, SomeTransport, Transport};

use crate::hal_impl::{
    ChainBuf, MAX_CHAIN, SMALL_CHAIN, TINY_CHAIN, UsedArea, VirtioHal, add_request, pop_chain,
    take_used_area,
};
use crate::sg::{HeadTable, RequestKind, need_event, plan};
use crate::spec::{config, feature, status};
use crate::{InitError, MAX_SEGMENTS, QUEUE_DEPTH, RING_SIZE};

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
    /// The request was in flight when the driver reset the device.
    pub const RESET: u16 = 0x102;
    /// The device is unusable (a reset failed).
    pub const DEAD: u16 = 0x103;
}

/// What the device offered and the driver took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Most data segments per request (device `seg_max`, capped by [`MAX_SEGMENTS`]).
    pub max_segments: u16,
    /// Largest segment (device `size_max`, or unlimited as far as the ring goes).
    pub max_segment_size: u32,
    /// Writes are refused.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_FLUSH` negotiated (a volatile cache to flush).
    pub flush: bool,
    /// Most sectors per discard (0: none).
    pub max_discard_sectors: u32,
    /// Most sectors per write-zeroes (0: none).
    pub max_write_zeroes_sectors: u32,
    /// `VIRTIO_F_EVENT_IDX` negotiated.
    pub event_idx: bool,
    /// Negotiated feature bits.
    pub features: u64,
    /// Ring entries.
    pub ring_size: u16,
    /// Tags.
    pub queue_depth: u16,
}

impl DeviceInfo {
    /// The block layer's limits for this device.
    pub fn queue_limits(&self) -> QueueLimits {
        let mut l = QueueLimits::new();
        l.logical_block_size = self.block_size;
        l.max_segments = self.max_segments;
        l.max_segment_size = self.max_segment_size;
        // The header's sector field is 64-bit; one request stays within 1 MiB so a request
        // never hogs the ring for long (and splits are exercised).
        l.max_sectors = 2048;
        l.dma_alignment = 4;
        l.max_discard_sectors = self.max_discard_sectors;
        l.max_write_zeroes_sectors = self.max_write_zeroes_sectors;
        l
    }
}

macro_rules! driver_stats {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one device (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct DriverStats { $( $(#[$m])* pub $name: AtomicU64, )* }

        impl DriverStats {
            const fn new() -> Self { DriverStats { $( $name: AtomicU64::new(0), )* } }
        }
    };
}

driver_stats! {
    /// Requests turned into descriptor chains.
    requests,
    /// `queue_rq` answered `Busy` (ring full).
    busy,
    /// Doorbell writes.
    notifies,
    /// Commits that skipped the doorbell because the device did not ask for it.
    notifies_suppressed,
    /// Interrupt handler runs.
    interrupts,
    /// Chains reaped from the used ring.
    reaped,
    /// Requests completed to the block layer.
    completions,
    /// Requests completed with an error.
    errors,
    /// Used entries with a bad id.
    bad_used_ids,
    /// Used entries with a short length.
    short_lengths,
    /// Device resets after a protocol violation.
    resets,
    /// Post-flushes run for FUA writes.
    fua_flushes,
    /// Requests that timed out (each resets the device).
    timeouts,
    /// Pre-flushes run for PREFLUSH writes.
    preflushes,
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
    transport: SomeTransport<'static>,
    vq: VirtQueue<VirtioHal, RING_SIZE>,
    used: Option<UsedArea>,
    heads: HeadTable<RING_SIZE>,
    slots: [Slot; QUEUE_DEPTH],
    /// Chains added since bring-up (equals the queue's avail index).
    added: u16,
    /// `added` at the last notification decision.
    notified: u16,
    dead: bool,
}

type Done = (u16, BlkStatus);

/// Completions reaped per pass under the lock (then delivered outside it; a full batch leaves
/// `reap_pending` set so the next pass picks up the rest). Small, so the array is cheap to set
/// up on every interrupt.
const BATCH: usize = 8;

/// Why a reap pass stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The used ring is empty.
    Empty,
    /// The batch is full; more may be waiting.
    Full,
    /// A used entry broke the protocol: the device has to be reset.
    Violation,
}

/// One virtio-blk device with one request queue.
pub struct VirtioBlk {
    inner: Mutex<Inner>,
    cmd: DmaBuf,
    info: DeviceInfo,
    limits: QueueLimits,
    mode: Mode,
    sink: Once<&'static dyn TagComplete>,
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
    corrupt_next: Mutex<Option<u32>>,
    /// `corrupt_next` is set (checked before taking its lock on every used entry).
    corrupt_armed: AtomicBool,
    stats: DriverStats,
}

const WANTED: u64 = feature::VERSION_1
    | feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::DISCARD
    | feature::WRITE_ZEROES;

/// Resets the device, negotiates, sets up queue 0; the caller sets DRIVER_OK.
fn bring_up(
    t: &mut SomeTransport<'static>,
    mode: Mode,
) -> Result<(u64, VirtQueue<VirtioHal, RING_SIZE>, Option<UsedArea>), InitError> {
    t.set_status(DeviceStatus::empty());
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = t.read_device_features();
    if offered & feature::VERSION_1 == 0 {
        t.set_status(DeviceStatus::FAILED);
        return Err(InitError::Legacy);
    }
    let mut wanted = WANTED;
    if mode == Mode::Interrupt {
        wanted |= feature::RING_EVENT_IDX;
    }
    let features = offered & wanted;
    t.write_driver_features(features);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
        t.set_status(DeviceStatus::FAILED);
        return Err(InitError::Transport);
    }
    let event_idx = features & feature::RING_EVENT_IDX != 0;
    let _ = take_used_area();
    let mut vq =
        VirtQueue::<VirtioHal, RING_SIZE>::new(t, 0, false, event_idx).map_err(|e| match e {
            virtio_drivers::Error::DmaError => InitError::NoMemory,
            _ => InitError::Queue,
        })?;
    let used = UsedArea::take_last(RING_SIZE);
    if mode == Mode::Polling {
        vq.set_dev_notify(false);
    }
    Ok((features, vq, used))
}

fn read_u32(t: &SomeTransport<'static>, off: usize) -> Result<u32, InitError> {
    t.read_config_space::<u32>(off)
        .map_err(|_| InitError::BadConfig)
}

impl VirtioBlk {
    /// Brings the device behind `transport` up (reset, negotiation, queue, DRIVER_OK). Attach
    /// the block layer's queue with [`VirtioBlk::attach`] before submitting.
    pub fn new(mut transport: SomeTransport<'static>, mode: Mode) -> Result<VirtioBlk, InitError> {
        if transport.device_type() != DeviceType::Block {
            return Err(InitError::NotBlock);
        }
        let (features, vq, used) = bring_up(&mut transport, mode)?;
        let has = |f: u64| features & f != 0;
        let capacity = read_u32(&transport, config::CAPACITY)? as u64
            | (read_u32(&transport, config::CAPACITY + 4)? as u64) << 32;
        let block_size = if has(feature::BLK_SIZE) {
            read_u32(&transport, config::BLK_SIZE)?
        } else {
            512
        };
        let seg_max = if has(feature::SEG_MAX) {
            read_u32(&transport, config::SEG_MAX)?
        } else {
            1
        };
        let size_max = if has(feature::SIZE_MAX) {
            read_u32(&transport, config::SIZE_MAX)?
        } else {
            u32::MAX
        };
        let max_discard_sectors = if has(feature::DISCARD) {
            read_u32(&transport, config::MAX_DISCARD_SECTORS)?
        } else {
            0
        };
        let max_write_zeroes_sectors = if has(feature::WRITE_ZEROES) {
            read_u32(&transport, config::MAX_WRITE_ZEROES_SECTORS)?
        } else {
            0
        };
        // Keep segments block-aligned and within what a descriptor length can say.
        let max_segment_size = (size_max.clamp(4096, 1 << 22) / 4096) * 4096;
        let info = DeviceInfo {
            capacity,
            block_size,
            max_segments: (seg_max.clamp(1, MAX_SEGMENTS as u32)) as u16,
            max_segment_size,
            read_only: has(feature::RO),
            flush: has(feature::FLUSH),
            max_discard_sectors,
            max_write_zeroes_sectors,
            event_idx: has(feature::RING_EVENT_IDX),
            features,
            ring_size: RING_SIZE as u16,
            queue_depth: QUEUE_DEPTH as u16,
        };
        let limits = info.queue_limits();
        if limits.validate().is_err() {
            transport.set_status(DeviceStatus::FAILED);
            return Err(InitError::BadConfig);
        }
        let cmd = DmaBuf::alloc(QUEUE_DEPTH * CMD_STRIDE, 64).map_err(|_| InitError::NoMemory)?;
        transport.finish_init();
        Ok(VirtioBlk {
            inner: Mutex::new(Inner {
                transport,
                vq,
                used,
                heads: HeadTable::new(),
                slots: [Slot::EMPTY; QUEUE_DEPTH],
                added: 0,
                notified: 0,
                dead: false,
            }),
            cmd,
            info,
            limits,
            mode,
            sink: Once::new(),
            irq: Once::new(),
            msix: Once::new(),
            reap_pending: AtomicBool::new(false),
            unnotified: AtomicBool::new(false),
            corrupt_next: Mutex::new(None),
            corrupt_armed: AtomicBool::new(false),
            stats: DriverStats::new(),
        })
    }

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
        self.sink.call_once(|| queue);
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
        self.inner.lock().heads.in_flight()
    }

    /// Whether a protocol violation left the device unusable.
    pub fn is_dead(&self) -> bool {
        self.inner.lock().dead
    }

    /// Test hook: writes a used entry with id `id` into the used ring as if the device had, and
    /// reaps it at once. Only with nothing in flight (returns `false` otherwise).
    pub fn inject_corrupt_used(&self, id: u32) -> bool {
        let inner = self.inner.lock();
        let Some(u) = inner.used.filter(|_| inner.heads.in_flight() == 0) else {
            return false;
        };
        u.inject(id, 1);
        self.reap_deliver(inner);
        self.reap_if_pending();
        true
    }

    /// Test hook: the next used entry the device returns is read with id `id` instead of its
    /// own (a corrupt entry for a request in flight).
    pub fn corrupt_next_used_id(&self, id: u32) {
        *self.corrupt_next.lock() = Some(id);
        self.corrupt_armed.store(true, Ordering::Release);
    }

    /// The interrupt handler: acknowledge, reap, complete by tag. Never waits.
    pub fn handle_irq(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        self.reap_pending.store(true, Ordering::Release);
        match self.inner.try_lock() {
            Some(mut inner) => {
                inner.transport.ack_interrupt();
                self.reap_deliver(inner);
                self.reap_if_pending();
            }
            None => {
                // Process context holds the lock on this CPU: it reaps when it lets go. A
                // level-triggered line stays masked until then.
                if let Some(l) = self.irq.get() {
                    let _ = l.disable();
                }
            }
        }
    }

    /// Reaps if an interrupt asked for it while the lock was taken.
    fn reap_if_pending(&self) {
        while self.reap_pending.load(Ordering::Acquire) {
            let Some(mut inner) = self.inner.try_lock() else {
                return;
            };
            if self.mode == Mode::Interrupt {
                inner.transport.ack_interrupt();
            }
            self.reap_deliver(inner);
            if let Some(l) = self.irq.get()
                && self.mode == Mode::Interrupt
            {
                let _ = l.enable();
            }
        }
    }

    /// One reap pass with the lock held, then delivery outside it; returns the completions
    /// delivered. A full batch leaves `reap_pending` set: callers follow with
    /// [`VirtioBlk::reap_if_pending`].
    fn reap_deliver(&self, mut inner: MutexGuard<'_, Inner>) -> usize {
        let mut done = [(0u16, Ok(())); BATCH];
        let (n, stop) = self.reap_locked(&mut inner, &mut done);
        match stop {
            Stop::Empty => {}
            Stop::Full => self.reap_pending.store(true, Ordering::Release),
            Stop::Violation => return self.reset_deliver(inner, &done[..n]),
        }
        drop(inner);
        self.deliver(&done[..n]);
        n
    }

    /// A used entry broke the protocol: reset, then deliver `reaped` and everything that was in
    /// flight.
    #[cold]
    #[inline(never)]
    fn reset_deliver(&self, mut inner: MutexGuard<'_, Inner>, reaped: &[Done]) -> usize {
        let mut done = [(0u16, Ok(())); QUEUE_DEPTH + BATCH];
        let n = reaped.len().min(BATCH);
        done[..n].copy_from_slice(&reaped[..n]);
        let n = self.reset_locked(&mut inner, &mut done, n);
        drop(inner);
        self.deliver(&done[..n]);
        n
    }

    fn deliver(&self, done: &[Done]) {
        let Some(sink) = self.sink.get() else { return };
        self.stats
            .completions
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        for &(tag, st) in done {
            match st {
                Ok(()) => sink.complete(tag, Ok(()), None),
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    sink.complete(tag, Err(e), Some(0));
                }
            }
        }
    }

    /// Takes used entries, checking each, until the ring is empty, `done` is full or an entry
    /// breaks the protocol; returns the completions to deliver and why it stopped.
    fn reap_locked(&self, inner: &mut Inner, done: &mut [Done; BATCH]) -> (usize, Stop) {
        self.reap_pending.store(false, Ordering::Relaxed);
        let mut n = 0;
        let mut reaped = 0u64;
        let mut renotify = false;
        let stop = loop {
            if n == BATCH {
                break Stop::Full;
            }
            let Some(mut id) = inner.vq.peek_used() else {
                break Stop::Empty;
            };
            if self.corrupt_armed.load(Ordering::Acquire)
                && let Some(bad) = self.corrupt_next.lock().take()
            {
                self.corrupt_armed.store(false, Ordering::Relaxed);
                id = bad as u16;
                if bad > u16::MAX as u32 {
                    id = u16::MAX;
                }
            }
            let Ok(tag) = inner.heads.check(id) else {
                self.stats.bad_used_ids.fetch_add(1, Ordering::Relaxed);
                break Stop::Violation;
            };
            let Some(&slot) = inner.slots.get(tag as usize) else {
                break Stop::Violation;
            };
            let Ok(len) = pop_chain(&mut inner.vq, id, slot.readable + slot.writable) else {
                break Stop::Violation;
            };
            inner.heads.remove(id);
            reaped += 1;
            let st = if len < slot.min_used_len {
                self.stats.short_lengths.fetch_add(1, Ordering::Relaxed);
                Err(BlkError::DeviceError(device_error::SHORT_LENGTH))
            } else {
                match self.cmd.read8(tag as usize * CMD_STRIDE + CMD_STATUS) {
                    status::OK => Ok(()),
                    status::IOERR => Err(BlkError::Io),
                    status::UNSUPP => Err(BlkError::Unsupported),
                    other => Err(BlkError::DeviceError(other as u16)),
                }
            };
            if st.is_ok() && (slot.fua || slot.preflush_segs > 0) {
                // The next stage of the same request: the write after its pre-flush, or the
                // flush that makes a FUA write stable.
                if self.next_stage_locked(inner, tag, &slot) {
                    renotify = true;
                    continue;
                }
                // No room: let the block layer retry the whole request.
                inner.slots[tag as usize] = Slot::EMPTY;
                done[n] = (tag, Err(BlkError::Busy));
                n += 1;
                continue;
            }
            inner.slots[tag as usize] = Slot::EMPTY;
            done[n] = (tag, st);
            n += 1;
        };
        self.stats.reaped.fetch_add(reaped, Ordering::Relaxed);
        if renotify {
            self.notify_locked(inner);
        }
        (n, stop)
    }

    /// Starts the next chain of a staged request; `false` if the ring has no room.
    fn next_stage_locked(&self, inner: &mut Inner, tag: u16, slot: &Slot) -> bool {
        let mut sg = [SgEntry::default(); MAX_SEGMENTS as usize];
        let (kind, nsg, fua) = if slot.preflush_segs > 0 {
            let base = tag as usize * CMD_STRIDE + CMD_SG;
            let nsg = (slot.preflush_segs as usize).min(sg.len());
            for (i, e) in sg.iter_mut().take(nsg).enumerate() {
                e.addr = hal::PhysAddr(self.cmd.read64(base + 16 * i));
                e.len = self.cmd.read32(base + 16 * i + 8);
            }
            self.write_header(tag, RequestKind::Write, slot.sector);
            (RequestKind::Write, nsg, slot.fua)
        } else {
            self.stats.fua_flushes.fetch_add(1, Ordering::Relaxed);
            self.write_header(tag, RequestKind::Flush, 0);
            (RequestKind::Flush, 0, false)
        };
        let p = plan(kind, nsg as u16, slot.bytes);
        if self.add_locked(inner, tag, kind, &sg[..nsg]).is_err() {
            return false;
        }
        inner.slots[tag as usize] = Slot {
            readable: p.readable,
            writable: p.writable,
            min_used_len: p.min_used_len,
            bytes: slot.bytes,
            fua,
            preflush_segs: 0,
            sector: slot.sector,
        };
        true
    }

    /// The device broke the protocol: reset it (it stops touching memory), fail everything in
    /// flight, and bring it up again.
    fn reset_locked(&self, inner: &mut Inner, done: &mut [Done], mut n: usize) -> usize {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        inner.transport.set_status(DeviceStatus::empty());
        let slots = &mut inner.slots;
        inner.heads.drain(|tag| {
            if let Some(s) = slots.get_mut(tag as usize) {
                *s = Slot::EMPTY;
            }
            if let Some(d) = done.get_mut(n) {
                *d = (tag, Err(BlkError::DeviceError(device_error::RESET)));
                n += 1;
            }
        });
        match bring_up(&mut inner.transport, self.mode) {
            Ok((features, vq, used)) if features == self.info.features => {
                inner.vq = vq;
                inner.used = used;
                inner.added = 0;
                inner.notified = 0;
                if let Some(&(f, mapper, entry)) = self.msix.get() {
                    crate::pci::set_queue_msix_vector(f, mapper, entry);
                }
                inner.transport.finish_init();
            }
            _ => {
                inner.dead = true;
                inner.transport.set_status(DeviceStatus::FAILED);
            }
        }
        n
    }

    fn write_header(&self, tag: u16, kind: RequestKind, sector: u64) {
        let base = tag as usize * CMD_STRIDE;
        self.cmd.write32(base, kind.wire_type());
        self.cmd.write32(base + 4, 0);
        self.cmd.write64(base + 8, sector);
        // A device that never writes the status leaves an error behind.
        self.cmd.write8(base + CMD_STATUS, 0xff);
    }

    /// Adds the chain for `tag`: header, `data` (readable or writable by kind), range segment,
    /// status; arrays sized for the chain.
    fn add_locked(
        &self,
        inner: &mut Inner,
        tag: u16,
        kind: RequestKind,
        data: &[SgEntry],
    ) -> Result<u16, QueueRqError> {
        let base = self.cmd.phys().0 + (tag as usize * CMD_STRIDE) as u64;
        let header = ChainBuf {
            addr: base,
            len: 16,
        };
        let status = ChainBuf {
            addr: base + CMD_STATUS as u64,
            len: 1,
        };
        let range =
            matches!(kind, RequestKind::Discard | RequestKind::WriteZeroes).then_some(ChainBuf {
                addr: base + CMD_RANGE as u64,
                len: 16,
            });
        let writable = kind == RequestKind::Read;
        let vq = &mut inner.vq;
        // The request's segments (the block layer's until completion) and this tag's command
        // memory: `add_request`'s contract.
        let res = if data.len() + 2 <= TINY_CHAIN {
            add_request::<RING_SIZE, TINY_CHAIN>(vq, header, data, writable, range, status)
        } else if data.len() + 2 <= SMALL_CHAIN {
            add_request::<RING_SIZE, SMALL_CHAIN>(vq, header, data, writable, range, status)
        } else {
            add_request::<RING_SIZE, MAX_CHAIN>(vq, header, data, writable, range, status)
        };
        let head = res.map_err(|e| match e {
            virtio_drivers::Error::QueueFull => QueueRqError::Busy,
            _ => QueueRqError::Fatal(BlkError::InvalidArgument),
        })?;
        inner.heads.insert(head, tag);
        inner.added = inner.added.wrapping_add(1);
        Ok(head)
    }

    fn notify_locked(&self, inner: &mut Inner) {
        self.unnotified.store(false, Ordering::Relaxed);
        if inner.added == inner.notified {
            return;
        }
        let need = match (self.info.event_idx, inner.used) {
            (true, Some(u)) => need_event(u.avail_event(), inner.added, inner.notified),
            _ => inner.vq.should_notify(),
        };
        inner.notified = inner.added;
        if need {
            self.stats.notifies.fetch_add(1, Ordering::Relaxed);
            inner.transport.notify(0);
        } else {
            self.stats
                .notifies_suppressed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn submit(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let segs = rq.nr_segments() as usize;
        // More entries than segments (a boundary cut) fail with `InvalidArgument`: the next
        // larger size.
        if segs <= TINY_CHAIN - 2 {
            match self.submit_n::<{ TINY_CHAIN - 2 }>(rq, last) {
                Err(QueueRqError::Fatal(BlkError::InvalidArgument)) => {}
                r => return r,
            }
        }
        if segs <= SMALL_CHAIN - 2 {
            match self.submit_n::<{ SMALL_CHAIN - 2 }>(rq, last) {
                Err(QueueRqError::Fatal(BlkError::InvalidArgument)) => {}
                r => return r,
            }
        }
        self.submit_n::<{ MAX_SEGMENTS as usize }>(rq, last)
    }

    fn submit_n<const S: usize>(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let tag = rq.tag();
        if tag as usize >= QUEUE_DEPTH {
            return Err(QueueRqError::Fatal(BlkError::InvalidArgument));
        }
        if rq.passthrough().is_some() {
            return Err(QueueRqError::Fatal(BlkError::Unsupported));
        }
        let kind = match rq.op() {
            Op::Read => RequestKind::Read,
            Op::Write => RequestKind::Write,
            Op::Flush => RequestKind::Flush,
            Op::Discard => RequestKind::Discard,
            Op::WriteZeroes => RequestKind::WriteZeroes,
        };
        if kind.modifies() && self.info.read_only {
            return Err(QueueRqError::Fatal(BlkError::ReadOnly));
        }
        let mut sg = [SgEntry::default(); S];
        let nsg = match kind {
            RequestKind::Read | RequestKind::Write => rq
                .map_sg(&self.limits, &mut sg)
                .map_err(QueueRqError::Fatal)?,
            RequestKind::Flush if !self.info.flush => {
                // Write-through device: nothing to flush.
                if let Some(s) = self.sink.get() {
                    s.complete(tag, Ok(()), None);
                }
                return Ok(());
            }
            RequestKind::Discard if self.info.max_discard_sectors == 0 => {
                return Err(QueueRqError::Fatal(BlkError::Unsupported));
            }
            RequestKind::WriteZeroes if self.info.max_write_zeroes_sectors == 0 => {
                return Err(QueueRqError::Fatal(BlkError::Unsupported));
            }
            _ => 0,
        };
        if kind.has_data() && nsg == 0 {
            return Err(QueueRqError::Fatal(BlkError::InvalidArgument));
        }
        let fua =
            kind == RequestKind::Write && self.info.flush && rq.flags().contains(BioFlags::FUA);
        let sector = if kind == RequestKind::Flush {
            0
        } else {
            rq.sector()
        };
        // A pre-flush runs first as its own chain; the write's segments wait in command memory.
        let preflush = kind == RequestKind::Write
            && self.info.flush
            && rq.flags().contains(BioFlags::PREFLUSH);
        let data_segs = nsg as u16;
        let (kind, nsg) = if preflush {
            let base = tag as usize * CMD_STRIDE + CMD_SG;
            for (i, e) in sg[..nsg].iter().enumerate() {
                self.cmd.write64(base + 16 * i, e.addr.0);
                self.cmd.write32(base + 16 * i + 8, e.len);
            }
            (RequestKind::Flush, 0)
        } else {
            (kind, nsg)
        };
        let preflush_segs = if preflush {
            self.stats.preflushes.fetch_add(1, Ordering::Relaxed);
            data_segs
        } else {
            0
        };
        self.write_header(tag, kind, sector);
        if matches!(kind, RequestKind::Discard | RequestKind::WriteZeroes) {
            let base = tag as usize * CMD_STRIDE + CMD_RANGE;
            self.cmd.write64(base, rq.sector());
            self.cmd.write32(base + 8, rq.bytes() >> 9);
            self.cmd.write32(base + 12, 0);
        }
        let p = plan(kind, nsg as u16, rq.bytes());
        let mut inner = self.inner.lock();
        if inner.dead {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        let res = self.add_locked(&mut inner, tag, kind, &sg[..nsg]);
        match res {
            Ok(_) => {
                inner.slots[tag as usize] = Slot {
                    readable: p.readable,
                    writable: p.writable,
                    min_used_len: p.min_used_len,
                    bytes: rq.bytes(),
                    fua,
                    preflush_segs,
                    sector,
                };
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                if last {
                    // The end of the batch: the doorbell decision now, under this lock
                    // (`commit` then has nothing to do).
                    self.notify_locked(&mut inner);
                } else {
                    self.unnotified.store(true, Ordering::Relaxed);
                }
            }
            Err(QueueRqError::Busy) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                // Descriptors may only come back through a reap: make sure one happens.
                if inner.heads.in_flight() > 0 {
                    self.notify_locked(&mut inner);
                }
            }
            Err(_) => {}
        }
        drop(inner);
        self.reap_if_pending();
        res.map(|_| ())
    }
}

impl HwQueue for VirtioBlk {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(rq, last)
    }

    fn commit(&self) {
        // Set (under the lock, by this CPU or another) whenever a chain was added without a
        // doorbell decision; the CPU that added it reads its own store here.
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
        if !inner.vq.can_pop() {
            return 0;
        }
        let n = self.reap_deliver(inner);
        self.reap_if_pending();
        n
    }
}

impl VirtioBlk {
    /// A request passed its deadline. virtio has no per-request abort: the device is reset
    /// (it stops using every chain), everything else in flight fails with a retryable device
    /// error, and the late request is retried by the block layer.
    fn abort_by_reset(&self, tag: u16) -> TimeoutAction {
        let mut inner = self.inner.lock();
        let Some(slot_in_flight) = inner.slots.get(tag as usize).map(|s| s.readable != 0) else {
            return TimeoutAction::Fail;
        };
        if !slot_in_flight {
            // Not in the ring (refused or already reaped): nothing to abort.
            return TimeoutAction::Retry;
        }
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut done = [(0u16, Ok(())); QUEUE_DEPTH];
        let n = self.reset_locked(&mut inner, &mut done, 0);
        drop(inner);
        // The late request's own completion is dropped by the queue (it owns the tag now).
        self.deliver(&done[..n]);
        TimeoutAction::Retry
    }
}

impl hal::IrqHandler for VirtioBlk {
    fn handle(&self) {
        self.handle_irq();
    }
}
