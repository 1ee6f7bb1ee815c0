//! Bring-up: reset, feature negotiation, the request queues (queue 0, and with
//! `VIRTIO_BLK_F_MQ` one per hardware context), the limits read from configuration space.

use core::sync::atomic::AtomicBool;

use blk::QueueLimits;
use blk::driver::CompletionSink;
use hal::DmaBuf;
use spin::{Mutex, Once};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use super::stats::DriverStats;
use super::{CMD_STRIDE, MAX_QUEUES, Mode, VirtioBlk, Vq};
use crate::hal_impl::{UsedArea, take_used_area};
use crate::pci::Doorbells;
use crate::ring::{Ring, ring_size};
use crate::spec::{config, feature};
use crate::{DeviceTransport, InitError, MAX_SEGMENTS, QUEUE_DEPTH, RING_SIZE, depth_for_ring};

/// What the device offered and the driver took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Most data segments per request (device `seg_max`, capped by [`MAX_SEGMENTS`] and by
    /// the ring: `ring_size - 2`).
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
    /// Ring entries: the largest power of two within the device's largest queue and
    /// [`RING_SIZE`](crate::RING_SIZE).
    pub ring_size: u16,
    /// Tags the block layer may use ([`depth_for_ring`](crate::depth_for_ring) of the ring; at
    /// most [`QUEUE_DEPTH`](crate::QUEUE_DEPTH)), shared by all request queues.
    pub queue_depth: u16,
    /// Request queues the device offers: `num_queues` as read with `VIRTIO_BLK_F_MQ` (0 or
    /// any other value a device may give), 1 without it or when one queue was asked for.
    pub queues_offered: u16,
    /// Request queues in use (at least 1).
    pub queues: u16,
    /// Why fewer queues are used than were asked for and offered, if so.
    pub queue_fallback: Option<QueueFallback>,
}

/// Why a multi-queue device got fewer request queues than it offered and the driver asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFallback {
    /// `VIRTIO_BLK_F_MQ` with `num_queues` 0: one queue is used.
    NoQueues,
    /// Queue `n` (of the `num_queues` offered) does not exist or holds fewer entries than
    /// queue 0's ring: queues `0..n` are used.
    QueueMissing(u16),
    /// The tags (`queue_depth`) cannot be split any further: that many queues are used.
    Depth(u16),
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

const WANTED: u64 = feature::VERSION_1
    | feature::SIZE_MAX
    | feature::SEG_MAX
    | feature::RO
    | feature::BLK_SIZE
    | feature::FLUSH
    | feature::DISCARD
    | feature::WRITE_ZEROES;

/// Resets the device and negotiates (`VIRTIO_BLK_F_MQ` only if `mq`); returns the features.
pub(super) fn negotiate(t: &mut DeviceTransport, mode: Mode, mq: bool) -> Result<u64, InitError> {
    t.set_status(DeviceStatus::empty());
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = t.read_device_features();
    // A legacy virtio-mmio device (version 1) has no VERSION_1 bit; its transport lays the
    // queue out contiguously (virtio-drivers does that when the transport asks for it). A
    // transport without a legacy layout (PCI) needs a 1.x device.
    if offered & feature::VERSION_1 == 0 && !t.requires_legacy_layout() {
        t.set_status(DeviceStatus::FAILED);
        return Err(InitError::Legacy);
    }
    let mut wanted = WANTED;
    if mode == Mode::Interrupt {
        wanted |= feature::RING_EVENT_IDX;
    }
    if mq {
        wanted |= feature::MQ;
    }
    let features = offered & wanted;
    t.write_driver_features(features);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
        t.set_status(DeviceStatus::FAILED);
        return Err(InitError::Transport);
    }
    Ok(features)
}

/// Sets up queue `q` with a ring of `size` entries (one of the supported sizes).
pub(super) fn setup_queue(
    t: &mut DeviceTransport,
    q: u16,
    size: usize,
    features: u64,
    mode: Mode,
) -> Result<(Ring, UsedArea), InitError> {
    let event_idx = features & feature::RING_EVENT_IDX != 0;
    let _ = take_used_area();
    let mut vq = Ring::new(t, q, size, event_idx).map_err(|e| match e {
        virtio_drivers::Error::DmaError => InitError::NoMemory,
        _ => InitError::Queue,
    })?;
    // The driver reads the used ring itself: without its address there is no queue.
    let used = UsedArea::take_last(size).ok_or(InitError::Queue)?;
    if mode == Mode::Polling {
        vq.set_dev_notify(false);
    }
    Ok((vq, used))
}

/// Resets the device, negotiates, sets up queue 0 with the largest ring within the device's and
/// `want` entries; the caller sets DRIVER_OK.
pub(super) fn bring_up(
    t: &mut DeviceTransport,
    mode: Mode,
    want: usize,
    mq: bool,
) -> Result<(u64, Ring, UsedArea), InitError> {
    let features = negotiate(t, mode, mq)?;
    let max = t.max_queue_size(0);
    let Some(size) = ring_size(max, want) else {
        t.set_status(DeviceStatus::FAILED);
        return Err(InitError::RingTooSmall(max));
    };
    let (vq, used) = setup_queue(t, 0, size, features, mode)?;
    Ok((features, vq, used))
}

/// Whether queue `q` holds a ring of `size` entries.
pub(super) fn queue_fits(t: &mut DeviceTransport, q: u16, size: usize) -> bool {
    ring_size(t.max_queue_size(q), size) == Some(size)
}

fn read_u32(t: &DeviceTransport, off: usize) -> Result<u32, InitError> {
    t.read_config_space::<u32>(off)
        .map_err(|_| InitError::BadConfig)
}

impl VirtioBlk {
    /// Brings the device behind `transport` up (reset, negotiation, one request queue,
    /// DRIVER_OK). Attach the block layer's queue with [`VirtioBlk::attach`] before
    /// submitting.
    pub fn new(transport: DeviceTransport, mode: Mode) -> Result<VirtioBlk, InitError> {
        Self::with_queues(transport, mode, 1, None)
    }

    /// Like [`VirtioBlk::new`], with up to `want` request queues: with `VIRTIO_BLK_F_MQ`,
    /// `min(want, num_queues, MAX_QUEUES)` queues, fewer if a queue is missing or the tags do
    /// not split that far ([`DeviceInfo::queue_fallback`]); one otherwise. Each queue is
    /// notified through its own register from `doorbells` (virtio-pci), or through the
    /// transport. Give the block layer's queue [`VirtioBlk::nr_queues`] hardware contexts;
    /// context `h` submits to queue `h`.
    pub fn with_queues(
        mut transport: DeviceTransport,
        mode: Mode,
        want: usize,
        doorbells: Option<&Doorbells>,
    ) -> Result<VirtioBlk, InitError> {
        if transport.device_type() != DeviceType::Block {
            return Err(InitError::NotBlock);
        }
        let want = want.clamp(1, MAX_QUEUES);
        let (features, vq, used) = bring_up(&mut transport, mode, RING_SIZE, want > 1)?;
        let ring = vq.size();
        let depth = depth_for_ring(ring).min(QUEUE_DEPTH);
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
        let mut info = DeviceInfo {
            capacity,
            block_size,
            // A request of n segments takes n + 2 descriptors and must fit an empty ring.
            max_segments: seg_max.clamp(1, (MAX_SEGMENTS as u32).min(ring as u32 - 2)) as u16,
            max_segment_size,
            read_only: has(feature::RO),
            flush: has(feature::FLUSH),
            max_discard_sectors,
            max_write_zeroes_sectors,
            event_idx: has(feature::RING_EVENT_IDX),
            features,
            ring_size: ring as u16,
            queue_depth: depth as u16,
            queues_offered: 1,
            queues: 1,
            queue_fallback: None,
        };
        let limits = info.queue_limits();
        if limits.validate().is_err() {
            transport.set_status(DeviceStatus::FAILED);
            return Err(InitError::BadConfig);
        }
        let cmd = DmaBuf::alloc(depth * CMD_STRIDE, 64).map_err(|_| InitError::NoMemory)?;
        let doorbell = |q: u16| doorbells.and_then(|d| d.for_queue(q));
        let vq0 = Vq::new(0, vq, used, doorbell(0));
        let mut more: [Option<Vq>; MAX_QUEUES - 1] = [const { None }; MAX_QUEUES - 1];
        if has(feature::MQ) {
            let offered = transport
                .read_config_space::<u16>(config::NUM_QUEUES)
                .map_err(|_| InitError::BadConfig)?;
            info.queues_offered = offered;
            // Each queue gets at least one tag.
            let n = want.min(usize::from(offered)).min(depth);
            if offered == 0 {
                info.queue_fallback = Some(QueueFallback::NoQueues);
            } else if n < want.min(usize::from(offered)) {
                info.queue_fallback = Some(QueueFallback::Depth(n as u16));
            }
            for q in 1..n as u16 {
                if !queue_fits(&mut transport, q, ring) {
                    info.queue_fallback = Some(QueueFallback::QueueMissing(q));
                    break;
                }
                let Ok((vq, used)) = setup_queue(&mut transport, q, ring, features, mode) else {
                    info.queue_fallback = Some(QueueFallback::QueueMissing(q));
                    break;
                };
                more[usize::from(q) - 1] = Some(Vq::new(q, vq, used, doorbell(q)));
                info.queues = q + 1;
            }
        }
        transport.finish_init();
        Ok(VirtioBlk {
            vq0,
            more,
            nr_queues: usize::from(info.queues),
            transport: Mutex::new(transport),
            dead: AtomicBool::new(false),
            reset_lock: Mutex::new(()),
            reset_wanted: AtomicBool::new(false),
            cmd,
            info,
            limits,
            mode,
            sink: CompletionSink::new(),
            irq: Once::new(),
            msix: Once::new(),
            #[cfg(feature = "fault-injection")]
            corrupt_next: Mutex::new(None),
            #[cfg(feature = "fault-injection")]
            corrupt_armed: AtomicBool::new(false),
            stats: DriverStats::new(),
        })
    }
}
