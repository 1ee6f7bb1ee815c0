//! The one module where `unsafe` is allowed: virtio-drivers' `Hal` trait, its `unsafe fn`
//! queue calls, the MMIO transport constructor, and the raw used-ring reads (used index, ids,
//! event index, test hook). Addresses are translated with `hal::mem` (the mapping the arch code installed at boot;
//! the identity on the host), and device register windows come from `hal::MmioMapper`.
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use blk::SgEntry;
use hal::{DmaBuf, Mmio, PhysAddr};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal};

use crate::spec::used_ring;

/// virtio-drivers' view of our DMA memory: pages from `hal::dma`, buffer addresses through
/// `hal::mem`'s translation (the driver only hands it memory it names by physical address).
pub struct VirtioHal;

/// Virtual address of the last device-written ("used ring") area the queue allocated.
static LAST_USED_AREA: AtomicUsize = AtomicUsize::new(0);
/// Bytes of that area (whole pages).
static LAST_USED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Whether that area is a whole legacy queue (descriptors, available ring, then the used ring
/// at the next page boundary) rather than the used ring alone.
static LAST_LEGACY: AtomicBool = AtomicBool::new(false);

// SAFETY: `dma_alloc` returns zeroed, page-aligned pages that belong to nobody else until
// `dma_dealloc`; `share` returns the address the device must use for a buffer: its physical
// address, the inverse (`hal::mem::direct_phys`) of the direct-map address `phys_bytes` made
// it from (virtio-drivers only shares buffers this driver passes to `add`); `mmio_phys_to_virt` maps device windows through the same direct map, which is where
// the boot code maps them on both architectures.
unsafe impl Hal for VirtioHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (u64, NonNull<u8>) {
        let Ok(buf) = DmaBuf::alloc(pages * hal::dma::PAGE_SIZE, hal::dma::PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        let (virt, phys, _) = buf.into_raw_parts();
        // The device-written area: the used ring's own pages (1.x layout), or the one region
        // of a legacy layout, whose used ring starts at a page boundary inside it.
        if direction == BufferDirection::DeviceToDriver || direction == BufferDirection::Both {
            LAST_USED_BYTES.store(pages * hal::dma::PAGE_SIZE, Ordering::Relaxed);
            LAST_USED_AREA.store(virt, Ordering::Relaxed);
            LAST_LEGACY.store(direction == BufferDirection::Both, Ordering::Relaxed);
        }
        match NonNull::new(virt as *mut u8) {
            Some(p) => (phys.0, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: u64, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what `dma_alloc` returned, once.
        drop(unsafe {
            DmaBuf::from_raw_parts(
                vaddr.as_ptr() as usize,
                PhysAddr(paddr),
                pages * hal::dma::PAGE_SIZE,
            )
        });
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        hal::mem::phys_to_virt(PhysAddr(paddr))
            .and_then(|v| NonNull::new(v as *mut u8))
            .unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> u64 {
        // Every buffer this driver adds is a direct-map address made by `phys_bytes`.
        hal::mem::direct_phys(buffer.as_ptr() as *mut u8 as usize).0
    }

    unsafe fn unshare(_paddr: u64, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The used area the last `VirtQueue::new` allocated (read right after creating a queue, at
/// initialisation, which is single-threaded).
pub(crate) fn take_used_area() -> usize {
    LAST_USED_AREA.swap(0, Ordering::Relaxed)
}

/// `len` bytes of memory at physical address `addr`, as the slice virtio-drivers' `add` wants
/// (it only takes the address and length of it).
///
/// # Safety
/// `addr..addr + len` is RAM in `hal::mem`'s direct map that stays allocated while the device
/// owns the chain, and nothing reads it as a Rust value meanwhile.
unsafe fn phys_bytes<'a>(addr: u64, len: u32) -> &'a mut [u8] {
    let virt = hal::mem::direct_virt(PhysAddr(addr));
    // SAFETY: the caller's contract: RAM in the direct map, so reachable at `virt`, allocated
    // and otherwise untouched while the slice is used (virtio-drivers only takes its address
    // and length).
    unsafe { core::slice::from_raw_parts_mut(virt as *mut u8, len as usize) }
}

/// One buffer of a chain: physical address and length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainBuf {
    pub addr: u64,
    pub len: u32,
}

/// Most buffers in one chain.
pub(crate) const MAX_CHAIN: usize = crate::MAX_SEGMENTS as usize + 2;
/// Chain arrays for requests of a few segments (no 66-entry arrays on the common path).
pub(crate) const SMALL_CHAIN: usize = 8;
/// Chain arrays for the most common requests: header, one or two data segments, status.
pub(crate) const TINY_CHAIN: usize = 4;

/// Adds the chain of one request without notifying; returns its head: `header` (readable),
/// the data segments (readable, or writable if `data_writable`), `range` (readable) if any, and
/// `status` (writable). `N` bounds the chain (`data.len() + 2 <= N`).
///
/// Crate-internal contract (what makes this safe to call): every buffer is either a data
/// segment of a block-layer request, which the block layer leaves alone until the request
/// completes (after the chain came back through [`pop_chain`] or the device was reset), or the
/// driver's own command memory for that tag, which it only touches through volatile accessors.
#[inline(always)]
pub(crate) fn add_request<const RING: usize, const N: usize>(
    vq: &mut VirtQueue<VirtioHal, RING>,
    header: ChainBuf,
    data: &[SgEntry],
    data_writable: bool,
    range: Option<ChainBuf>,
    status: ChainBuf,
) -> virtio_drivers::Result<u16> {
    if data.len() + 2 > N {
        return Err(virtio_drivers::Error::InvalidParam);
    }
    let mut ins: [&[u8]; N] = [&[]; N];
    let mut outs: [&mut [u8]; N] = core::array::from_fn(|_| <&mut [u8]>::default());
    // SAFETY: this tag's command memory, the device's until the chain is popped or the device
    // is reset (the contract above).
    ins[0] = unsafe { phys_bytes(header.addr, header.len) };
    let (mut nr, mut nw) = (1, 0);
    if data_writable {
        for (slot, s) in outs.iter_mut().zip(data) {
            // SAFETY: a request segment, the device's until the chain is popped (as above).
            *slot = unsafe { phys_bytes(s.addr.0, s.len) };
        }
        nw = data.len();
    } else {
        for (slot, s) in ins[1..].iter_mut().zip(data) {
            // SAFETY: a request segment, the device's until the chain is popped (as above).
            *slot = unsafe { phys_bytes(s.addr.0, s.len) };
        }
        nr += data.len();
    }
    if let Some(r) = range
        && let Some(slot) = ins.get_mut(nr)
    {
        // SAFETY: this tag's command memory (as above).
        *slot = unsafe { phys_bytes(r.addr, r.len) };
        nr += 1;
    }
    let Some(slot) = outs.get_mut(nw) else {
        return Err(virtio_drivers::Error::InvalidParam);
    };
    // SAFETY: this tag's command memory (as above).
    *slot = unsafe { phys_bytes(status.addr, status.len) };
    nw += 1;
    // SAFETY: the buffers stay valid and untouched by the CPU until `pop_chain` returns this
    // head or the device is reset (the contract above).
    unsafe { vq.add(&ins[..nr], &mut outs[..nw]) }
}

/// What `pop_used` is given for a chain: `VirtioHal::unshare` ignores buffers and directions,
/// and the queue walks the chain from its own copy of the descriptors, so only the number of
/// (non-empty) buffers has to match. One shared table, nothing built per call.
static PLACEHOLDERS: [&[u8]; MAX_CHAIN] = [&[0u8]; MAX_CHAIN];

/// Pops the next used chain, which the caller has checked is `head` with `descriptors`
/// buffers (from its own records); returns the device's `len`.
#[inline(always)]
pub(crate) fn pop_chain<const RING: usize>(
    vq: &mut VirtQueue<VirtioHal, RING>,
    head: u16,
    descriptors: u16,
) -> virtio_drivers::Result<u32> {
    let Some(ins) = PLACEHOLDERS.get(..descriptors as usize) else {
        return Err(virtio_drivers::Error::InvalidParam);
    };
    // SAFETY: `head` is a chain this driver added with exactly `descriptors` buffers (checked
    // against the head table by the caller); the placeholders only have to match in number
    // because `unshare` does nothing.
    unsafe { vq.pop_used(head, ins, &mut []) }
}

/// A virtio-mmio transport over a register window from the mapper.
pub(crate) fn mmio_transport(regs: &Mmio) -> Result<MmioTransport<'static>, crate::InitError> {
    let header =
        NonNull::new(regs.virt() as *mut VirtIOHeader).ok_or(crate::InitError::Transport)?;
    // SAFETY: `regs` is a mapped virtio-mmio register window owned by this driver for the rest
    // of the program (the boot crate mapped it from the slot's device-tree range).
    unsafe { MmioTransport::new(header, regs.len()) }.map_err(|_| crate::InitError::Transport)
}

/// Raw access to a queue's used area (device-written), for what `VirtQueue` does not expose.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UsedArea {
    virt: usize,
    ring: usize,
}

impl UsedArea {
    /// The used area the last `VirtQueue::new` allocated, for a ring of `ring` entries (`None`
    /// if unknown, if `ring` is not a power of two, or if the area is too small for it). The address only ever comes
    /// from `dma_alloc`, so a handle always names memory the queue owns.
    pub(crate) fn take_last(ring: usize) -> Option<Self> {
        let mut virt = take_used_area();
        let mut bytes = LAST_USED_BYTES.load(Ordering::Relaxed);
        if LAST_LEGACY.load(Ordering::Relaxed) {
            // Legacy layout (virtio 0.9.5 "2.3 Virtqueues"): 16-byte descriptors, then the
            // available ring (flags, idx, ring, used_event: 2 * (3 + ring) bytes), then the used
            // ring at the next page boundary.
            let skip = ring
                .checked_mul(16)
                .and_then(|d| d.checked_add(2 * (3 + ring)))?
                .next_multiple_of(hal::dma::PAGE_SIZE);
            bytes = bytes.checked_sub(skip)?;
            virt = if virt == 0 { 0 } else { virt + skip };
        }
        let fits = ring.is_power_of_two()
            && ring
                .checked_mul(used_ring::ELEM)
                .and_then(|r| r.checked_add(used_ring::RING + 2))
                .is_some_and(|end| end <= bytes);
        (virt != 0 && virt.is_multiple_of(4) && fits).then_some(UsedArea { virt, ring })
    }

    fn ptr16(&self, off: usize) -> *mut u16 {
        (self.virt + off) as *mut u16
    }

    /// `avail_event`: the avail index the device wants to be notified at (event-index mode).
    pub(crate) fn avail_event(&self) -> u16 {
        // SAFETY: inside the used area (`4 + 8 * ring` is its last field), aligned, memory the
        // queue allocated and keeps; a volatile read of a device-written word.
        unsafe {
            self.ptr16(used_ring::RING + used_ring::ELEM * self.ring)
                .read_volatile()
        }
    }

    /// The used index the device last published.
    #[inline]
    pub(crate) fn idx(&self) -> u16 {
        // SAFETY: the `idx` field of the used area (checked in `take_last` to lie inside it),
        // aligned, memory the queue allocated and keeps; a volatile read of a device-written
        // word.
        unsafe { self.ptr16(used_ring::IDX).read_volatile() }
    }

    /// The full 32-bit id of used element `n` (taken modulo the ring size).
    #[inline]
    pub(crate) fn id(&self, n: u16) -> u32 {
        let slot = n as usize & (self.ring - 1);
        // SAFETY: element `slot < ring` of the used area (checked in `take_last` to lie inside
        // it; `ring` is a power of two), 4-byte aligned; a volatile read of a device-written
        // word.
        unsafe {
            ((self.virt + used_ring::RING + used_ring::ELEM * slot) as *const u32).read_volatile()
        }
    }

    /// Test hook (feature `fault-injection`): appends a used element `{id, len}` as if the
    /// device had written it. Only meaningful while the device has nothing in flight.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject(&self, id: u32, len: u32) {
        // SAFETY: every access is inside the used area and aligned; the device is idle (nothing
        // in flight), so it does not write the ring concurrently.
        unsafe {
            let idx = self.ptr16(used_ring::IDX).read_volatile();
            let slot = idx as usize % self.ring;
            let elem = (self.virt + used_ring::RING + used_ring::ELEM * slot) as *mut u32;
            elem.write_volatile(id);
            elem.add(1).write_volatile(len);
            core::sync::atomic::fence(Ordering::SeqCst);
            self.ptr16(used_ring::IDX)
                .write_volatile(idx.wrapping_add(1));
        }
    }
}

/// Configuration space of one PCI function, for virtio-drivers' `PciRoot` (which only asks
/// about the function it was given).
pub(crate) struct FunctionConfig(pub &'static ::pci::PciFunction<'static>);

impl virtio_drivers::transport::pci::bus::ConfigurationAccess for FunctionConfig {
    fn read_word(&self, _df: virtio_drivers::transport::pci::bus::DeviceFunction, off: u8) -> u32 {
        self.0.config_read32(off as u16 & !3)
    }

    fn write_word(
        &mut self,
        _df: virtio_drivers::transport::pci::bus::DeviceFunction,
        off: u8,
        data: u32,
    ) {
        self.0.config_write32(off as u16 & !3, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        FunctionConfig(self.0)
    }
}
