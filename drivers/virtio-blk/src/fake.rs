//! A virtio-blk device model for host tests: a `Transport` whose registers are plain fields,
//! and a split-ring device that serves the chains the driver puts on the available ring
//! against an in-memory disk.
//!
//! Nothing happens behind the driver's back: a test calls [`Device::run`] to let the device
//! take every available chain, perform it and write the used ring, then calls the driver's
//! interrupt handler. Faults to inject are queued with [`Device::inject`] and apply to the
//! next used entries, in order. Memory comes from `hal::dma::host::init_test_region`, where a
//! buffer's "physical" address is its host pointer, so the model reads and writes the
//! driver's descriptors, headers, data and status bytes through those addresses.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Queues the model can hold.
pub const QUEUES: usize = 8;
/// Ring entries the model offers (`queue_num_max`) unless a test sets [`Device::max_queue`].
pub const MAX_QUEUE: u32 = 256;
/// `VIRTIO_BLK_T_*` request types, from the specification (not from the driver's tables).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Status bytes.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Descriptor flags.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;

/// A fault applied to the next used entry the device writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The entry names this id instead of the chain's head.
    BadId(u32),
    /// The entry's length is one byte (less than any read needs).
    ShortLength,
    /// The entry is written twice.
    Repeat,
    /// The request fails: status `IOERR`, nothing transferred.
    IoErr,
    /// No fault: the entry goes through (so that a later one gets the next fault).
    Pass,
}

/// The queue addresses the driver set.
#[derive(Clone, Copy, Debug)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

/// The device's state, shared between the transport the driver owns and the test.
#[derive(Debug)]
pub struct Device {
    /// Feature bits offered.
    pub offered: u64,
    /// Feature bits the driver wrote.
    pub driver_features: u64,
    status: DeviceStatus,
    /// Configuration space (virtio-blk layout).
    pub config: [u8; 64],
    /// Each queue's rings, as the driver set them.
    rings: [Option<Ring>; QUEUES],
    last_avail: [u16; QUEUES],
    used_idx: [u16; QUEUES],
    /// The queue the single-queue methods (`take_chain`, `push_used`, ...) act on.
    cur: usize,
    /// Queues that exist (`max_queue_size` is 0 for the others).
    pub queues: u16,
    /// Doorbell writes per queue.
    pub queue_notifies: [u32; QUEUES],
    /// Chains taken per queue.
    pub queue_served: [u32; QUEUES],
    interrupt: bool,
    /// Doorbell writes.
    pub notifies: u32,
    /// Writes of status 0 (resets).
    pub resets: u32,
    /// Flush requests served.
    pub flushes: u32,
    /// The medium.
    pub disk: Vec<u8>,
    faults: VecDeque<Fault>,
    /// The largest queue offered (`queue_num_max` / virtio-pci `queue_size` before the driver
    /// writes its own).
    pub max_queue: u32,
    /// Chains taken from the available ring.
    pub served: u32,
    /// Chains that would change the medium (write, discard, write-zeroes), served or not.
    pub modifying: u32,
    /// Where the driver's descriptors may point (`[start, end)` ranges; empty: anywhere).
    pub dma_ok: Vec<(u64, u64)>,
    /// Descriptors found pointing outside `dma_ok`, or linking past the ring.
    pub dma_violations: u32,
    /// What the last of them was.
    pub dma_detail: std::string::String,
    /// A legacy (virtio-mmio version 1) transport: one contiguous queue layout.
    pub legacy_layout: bool,
}

impl Device {
    /// Queues `f` for the next used entry without a fault queued before it.
    pub fn inject(&mut self, f: Fault) {
        self.faults.push_back(f);
    }

    /// Whether the driver set DRIVER_OK.
    pub fn driver_ok(&self) -> bool {
        self.status.contains(DeviceStatus::DRIVER_OK)
    }

    /// Takes every chain on every queue's available ring, performs it and writes its used
    /// entry; raises the interrupt if it wrote any. Returns the chains taken.
    pub fn run(&mut self) -> usize {
        let cur = self.cur;
        let n = (0..QUEUES).map(|q| self.run_queue(q)).sum();
        self.cur = cur;
        n
    }

    /// Makes the single-queue methods act on queue `q`.
    pub fn select(&mut self, q: usize) {
        self.cur = q;
    }

    /// Sets `num_queues` in configuration space (read with `VIRTIO_BLK_F_MQ`).
    pub fn set_num_queues(&mut self, n: u16) {
        self.config[34..36].copy_from_slice(&n.to_le_bytes());
    }

    /// [`Device::run`] for queue `q` only (and selects it).
    pub fn run_queue(&mut self, q: usize) -> usize {
        self.cur = q;
        let mut n = 0;
        loop {
            let fault = self.faults.front().copied();
            let status = (fault == Some(Fault::IoErr)).then_some(S_IOERR);
            let Some((head, len)) = self.take_chain(status) else {
                break;
            };
            self.faults.pop_front();
            let (id, len) = match fault {
                Some(Fault::BadId(id)) => (id, len),
                Some(Fault::ShortLength) => (u32::from(head), 1),
                _ => (u32::from(head), len),
            };
            self.push_used(id, len);
            if fault == Some(Fault::Repeat) {
                self.push_used(id, len);
            }
            n += 1;
        }
        if n > 0 {
            self.interrupt = true;
        }
        n
    }

    /// Takes the next chain from the available ring and performs it, writing `status` (or
    /// the outcome) into its status byte; returns its head and the bytes written, without a
    /// used entry (the caller posts one, or not).
    pub fn take_chain(&mut self, status: Option<u8>) -> Option<(u16, u32)> {
        let q = self.cur;
        let r = self.rings[q].filter(|_| self.driver_ok())?;
        // What every `rd`/`wr` of this model relies on: the addresses are the rings the driver
        // set with `queue_set` (in the leaked DMA test region) and the buffers its descriptors
        // name (leaked test buffers), and the driver does not touch a chain or the used ring
        // while the device owns them.
        // SAFETY: a field of the available ring the driver set (see above).
        let avail_idx = unsafe { rd::<u16>(r.avail + 2) };
        if self.last_avail[q] == avail_idx {
            return None;
        }
        let slot = u64::from(self.last_avail[q] % r.size);
        // SAFETY: a field of the available ring the driver set (see above).
        let head = unsafe { rd::<u16>(r.avail + 4 + 2 * slot) };
        self.last_avail[q] = self.last_avail[q].wrapping_add(1);
        self.served += 1;
        self.queue_served[q] += 1;
        let (len, status_at, st) = self.serve(&r, head);
        if let Some(at) = status_at {
            // SAFETY: the chain's status byte (see above).
            unsafe { wr::<u8>(at, status.unwrap_or(st)) };
        }
        Some((head, len))
    }

    /// Raises the interrupt (the handler's `ack_interrupt` sees it).
    pub fn raise(&mut self) {
        self.interrupt = true;
    }

    /// The used index as the device last published it.
    pub fn used_idx(&self) -> u16 {
        self.used_idx[self.cur]
    }

    /// Publishes used index `idx` without writing any element (stale entries, or going
    /// back).
    pub fn set_used_idx(&mut self, idx: u16) {
        let Some(r) = self.rings[self.cur] else {
            return;
        };
        self.used_idx[self.cur] = idx;
        // SAFETY: the index of the used ring the driver set (see `take_chain`).
        unsafe { wr::<u16>(r.used + 2, idx) };
    }

    /// Writes `v` into the used ring's `avail_event` (the driver's doorbell hint).
    pub fn set_avail_event(&mut self, v: u16) {
        let Some(r) = self.rings[self.cur] else {
            return;
        };
        // SAFETY: the field after the used ring's elements (see `take_chain`).
        unsafe { wr::<u16>(r.used + 4 + 8 * u64::from(r.size), v) };
    }

    /// Ring entries the driver set (0: no queue).
    pub fn ring_size(&self) -> u16 {
        self.rings[self.cur].map_or(0, |r| r.size)
    }

    /// Writes a used element `{id, len}` and publishes it.
    pub fn push_used(&mut self, id: u32, len: u32) {
        let q = self.cur;
        let Some(r) = self.rings[q] else { return };
        let at = r.used + 4 + 8 * u64::from(self.used_idx[q] % r.size);
        // SAFETY: an element or the index of the used ring the driver set (see `take_chain`).
        unsafe { wr::<u32>(at, id) };
        // SAFETY: an element or the index of the used ring the driver set (see `take_chain`).
        unsafe { wr::<u32>(at + 4, len) };
        self.used_idx[q] = self.used_idx[q].wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: an element or the index of the used ring the driver set (see `take_chain`).
        unsafe { wr::<u16>(r.used + 2, self.used_idx[q]) };
    }

    /// Performs the chain at `head`: the bytes written (data and status), where the status
    /// byte is, and the status.
    fn serve(&mut self, r: &Ring, head: u16) -> (u32, Option<u64>, u8) {
        let mut bufs: Vec<(u64, u32, bool)> = Vec::new();
        let mut i = head;
        loop {
            if i >= r.size || bufs.len() > usize::from(r.size) {
                self.dma_violations += 1;
                self.dma_detail = format!(
                    "chain from {head}: link to {i}, {} buffers, ring {}",
                    bufs.len(),
                    r.size
                );
                return (0, None, S_IOERR);
            }
            let d = r.desc + 16 * u64::from(i);
            // SAFETY: a descriptor of the table the driver set (see `take_chain`).
            let flags = unsafe { rd::<u16>(d + 12) };
            bufs.push((
                // SAFETY: a descriptor of the table the driver set (see `take_chain`).
                unsafe { rd::<u64>(d) },
                // SAFETY: a descriptor of the table the driver set (see `take_chain`).
                unsafe { rd::<u32>(d + 8) },
                flags & DESC_WRITE != 0,
            ));
            if flags & DESC_NEXT == 0 {
                break;
            }
            // SAFETY: a descriptor of the table the driver set (see `take_chain`).
            i = unsafe { rd::<u16>(d + 14) };
        }
        if !self.dma_ok.is_empty() {
            for &(addr, len, _) in &bufs {
                let end = addr.saturating_add(u64::from(len));
                if len == 0 {
                    // A recycled (cleared) descriptor: this model took an entry the driver had
                    // already got back through a used entry the model posted early.
                    return (0, None, S_IOERR);
                }
                if !self.dma_ok.iter().any(|&(s, e)| s <= addr && end <= e) {
                    self.dma_violations += 1;
                    self.dma_detail =
                        format!("chain from {head}: buffer {addr:#x}+{len} of {bufs:x?}");
                    return (0, None, S_IOERR);
                }
            }
        }
        let (Some(&(hdr, hdr_len, false)), Some(&(st, 1, true))) = (bufs.first(), bufs.last())
        else {
            return (0, None, S_IOERR);
        };
        if hdr_len < 16 || bufs.len() < 2 {
            return (0, Some(st), S_IOERR);
        }
        // SAFETY: the chain's header buffer (see `take_chain`).
        let kind = unsafe { rd::<u32>(hdr) };
        // SAFETY: the chain's header buffer (see `take_chain`).
        let sector = unsafe { rd::<u64>(hdr + 8) };
        if matches!(kind, T_OUT | T_DISCARD | T_WRITE_ZEROES) {
            self.modifying += 1;
        }
        let data = &bufs[1..bufs.len() - 1];
        let mut pos = sector as usize * 512;
        let mut written = 0u32;
        match kind {
            T_IN | T_OUT => {
                for &(addr, len, writable) in data {
                    let len = len as usize;
                    if writable != (kind == T_IN) || pos + len > self.disk.len() {
                        return (written + 1, Some(st), S_IOERR);
                    }
                    // SAFETY: a data buffer of the chain (see `take_chain`).
                    let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
                    if kind == T_IN {
                        buf.copy_from_slice(&self.disk[pos..pos + len]);
                        written += len as u32;
                    } else {
                        self.disk[pos..pos + len].copy_from_slice(buf);
                    }
                    pos += len;
                }
            }
            T_FLUSH => self.flushes += 1,
            T_GET_ID => {
                let Some(&(addr, len, true)) = data.first() else {
                    return (0, Some(st), S_IOERR);
                };
                for (k, b) in b"fake-virtio-blk".iter().take(len as usize).enumerate() {
                    // SAFETY: a device-writable data buffer of the chain (see `take_chain`).
                    unsafe { wr::<u8>(addr + k as u64, *b) };
                    written += 1;
                }
            }
            _ => return (1, Some(st), S_UNSUPP),
        }
        (written + 1, Some(st), S_OK)
    }
}

/// Reads a `T` at host address `at`.
///
/// # Safety
/// `at..at + size_of::<T>()` is readable host memory: a ring field or a chain buffer of the
/// driver (see [`Device::run`]).
unsafe fn rd<T: FromBytes + Copy>(at: u64) -> T {
    // SAFETY: the caller's contract; an unaligned read needs no alignment.
    unsafe { (at as *const T).read_unaligned() }
}

/// Writes a `T` at host address `at`.
///
/// # Safety
/// As [`rd`], and writable: the device owns it (used ring, status byte, read data).
unsafe fn wr<T: IntoBytes + Copy>(at: u64, v: T) {
    // SAFETY: the caller's contract; an unaligned write needs no alignment.
    unsafe { (at as *mut T).write_unaligned(v) }
}

/// The transport handed to the driver; the test keeps a [`FakeTransport::device`] handle.
#[derive(Debug)]
pub struct FakeTransport {
    dev: Arc<Mutex<Device>>,
}

impl FakeTransport {
    /// A block device of `sectors` 512-byte sectors offering `features`, with configuration
    /// `seg_max`, `size_max` and `blk_size`.
    pub fn new(sectors: u64, features: u64, seg_max: u32, size_max: u32, blk_size: u32) -> Self {
        let mut config = [0u8; 64];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        config[8..12].copy_from_slice(&size_max.to_le_bytes());
        config[12..16].copy_from_slice(&seg_max.to_le_bytes());
        config[20..24].copy_from_slice(&blk_size.to_le_bytes());
        let dev = Device {
            offered: features,
            driver_features: 0,
            status: DeviceStatus::empty(),
            config,
            rings: [None; QUEUES],
            last_avail: [0; QUEUES],
            used_idx: [0; QUEUES],
            cur: 0,
            queues: QUEUES as u16,
            queue_notifies: [0; QUEUES],
            queue_served: [0; QUEUES],
            interrupt: false,
            notifies: 0,
            resets: 0,
            flushes: 0,
            disk: vec![0; sectors as usize * 512],
            faults: VecDeque::new(),
            max_queue: MAX_QUEUE,
            served: 0,
            modifying: 0,
            dma_ok: Vec::new(),
            dma_violations: 0,
            dma_detail: std::string::String::new(),
            legacy_layout: false,
        };
        FakeTransport {
            dev: Arc::new(Mutex::new(dev)),
        }
    }

    /// A handle on the device for the test.
    pub fn device(&self) -> Arc<Mutex<Device>> {
        self.dev.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Device> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        self.lock().offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.lock().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        let d = self.lock();
        if queue < d.queues { d.max_queue } else { 0 }
    }

    fn notify(&mut self, queue: u16) {
        let mut d = self.lock();
        d.notifies += 1;
        if let Some(n) = d.queue_notifies.get_mut(usize::from(queue)) {
            *n += 1;
        }
    }

    fn get_status(&self) -> DeviceStatus {
        self.lock().status
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut d = self.lock();
        if status.is_empty() {
            // Reset: the device forgets the queue and stops touching memory.
            d.resets += 1;
            d.rings = [None; QUEUES];
            d.last_avail = [0; QUEUES];
            d.used_idx = [0; QUEUES];
            d.interrupt = false;
        }
        d.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        self.lock().legacy_layout
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.lock().rings[usize::from(queue)] = Some(Ring {
            size: size as u16,
            desc: descriptors,
            avail: driver_area,
            used: device_area,
        });
    }

    fn queue_unset(&mut self, queue: u16) {
        self.lock().rings[usize::from(queue)] = None;
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.lock().rings[usize::from(queue)].is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        if core::mem::take(&mut self.lock().interrupt) {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let d = self.lock();
        let bytes = d
            .config
            .get(offset..offset + core::mem::size_of::<T>())
            .ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> virtio_drivers::Result<()> {
        Err(Error::Unsupported)
    }
}
