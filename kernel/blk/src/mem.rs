//! The memory that bios name: DMA regions that safe code builds segments from, and the RAM
//! disk's store.
//!
//! A segment ([`BioVec`]) is a promise that a device may read and write its memory until the
//! bio completes (the segment contract, on [`BioVec::new`]). Safe code keeps that promise by
//! taking segments from a [`DmaRegion`]: memory given up for the rest of the program (a
//! `'static` slice, or a `hal::DmaBuf` never to be freed), so that whatever a segment of it
//! names stays valid for ever, whatever happens to the bio.
//!
//! The block layer never turns an address into a pointer itself: the RAM disk and bounce
//! buffers copy segment memory with `hal::mem`, which finds it through the translation the arch
//! code set up at boot.

use hal::{DmaBuf, PhysAddr};

use crate::bio::BioVec;

/// Memory owned for the rest of the program, from which safe code builds bio segments.
///
/// The region hands out bounds-checked segments of itself ([`DmaRegion::segment`]) and CPU
/// access to itself ([`DmaRegion::as_mut_slice`]). Its contents are unspecified while a bio
/// over it is in flight (the device may be writing them); the memory itself stays valid.
#[derive(Debug)]
pub struct DmaRegion {
    span: DmaSpan,
}

/// The address range of a [`DmaRegion`], without CPU access: a copyable handle that builds
/// segments of the region (e.g. for a filesystem's block device, while the filesystem holds the
/// region's bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSpan {
    virt: usize,
    phys: PhysAddr,
    len: usize,
}

impl DmaRegion {
    /// A region over `mem`, which it keeps for ever. Its physical address comes from `hal`'s
    /// translation.
    pub fn from_static(mem: &'static mut [u8]) -> Self {
        let virt = mem.as_mut_ptr() as usize;
        DmaRegion {
            span: DmaSpan {
                virt,
                phys: hal::mem::virt_to_phys(virt),
                len: mem.len(),
            },
        }
    }

    /// A region over a DMA buffer, given up for good (its pages are never freed).
    pub fn from_dma_buf(buf: DmaBuf) -> Self {
        let (virt, phys, len) = buf.into_raw_parts();
        DmaRegion {
            span: DmaSpan { virt, phys, len },
        }
    }

    /// The region's range, to build segments from while its bytes are lent out.
    pub fn span(&self) -> DmaSpan {
        self.span
    }

    /// The segment `off..off + len` of the region, or `None` if it does not fit.
    pub fn segment(&self, off: usize, len: u32) -> Option<BioVec> {
        self.span.segment(off, len)
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> PhysAddr {
        self.span.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.span.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.span.len == 0
    }

    /// The region's bytes. Only meaningful while no bio over it is reading into it.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `virt..virt + len` is memory the region owns for the rest of the program
        // (`from_static` took a `&'static mut`, `from_dma_buf` gave up the buffer's pages), and
        // `&self` excludes CPU writers through this handle (a `DmaSpan` has no CPU access).
        unsafe { core::slice::from_raw_parts(self.span.virt as *const u8, self.span.len) }
    }

    /// The region's bytes, mutably. Only meaningful while no bio over it is in flight.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only CPU access.
        unsafe { core::slice::from_raw_parts_mut(self.span.virt as *mut u8, self.span.len) }
    }
}

impl DmaSpan {
    /// The segment `off..off + len` of the region, or `None` if it does not fit.
    pub fn segment(&self, off: usize, len: u32) -> Option<BioVec> {
        if off.checked_add(len as usize)? > self.len {
            return None;
        }
        // SAFETY: the segment contract: the range is inside the region (checked above), memory
        // the region owns for the rest of the program, so it outlives any bio; it is RAM that
        // devices reach at `phys` (a DMA buffer, or a static whose address `hal`'s translation
        // gave), and the CPU reaches it there through the same translation. Nothing but the
        // region's owner accesses it, through the region.
        Some(unsafe { BioVec::new(self.phys.add(off as u64), len) })
    }

    /// The segment over `buf`, if `buf` lies inside the region (e.g. a part of the region's
    /// bytes lent out with [`DmaRegion::as_mut_slice`]); `None` otherwise.
    pub fn segment_of(&self, buf: &[u8]) -> Option<BioVec> {
        let off = (buf.as_ptr() as usize).checked_sub(self.virt)?;
        self.segment(off, u32::try_from(buf.len()).ok()?)
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A static byte store shared between the submit path and a completion thread (the RAM disk's
/// medium). Accesses to overlapping ranges by concurrent requests race exactly as they would on
/// a disk; each access itself is a plain copy through `hal::mem`.
pub struct Store {
    phys: PhysAddr,
    len: usize,
}

impl Store {
    /// A store over `mem`, which it keeps for ever.
    pub fn new(mem: &'static mut [u8]) -> Self {
        Store {
            phys: hal::mem::virt_to_phys(mem.as_mut_ptr() as usize),
            len: mem.len(),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The physical address of byte `off` if `off..off + len` is inside the store.
    fn at(&self, off: u64, len: usize) -> Option<PhysAddr> {
        let ok = off <= self.len as u64 && len <= self.len - off as usize;
        ok.then(|| self.phys.add(off))
    }

    /// Copies `len` bytes at `off` of the store to segment memory `dst`. False if out of range.
    ///
    /// # Safety
    /// `dst..dst + len` is under the segment contract ([`BioVec::new`]): a segment (or part of
    /// one) of a bio in progress, writable, reachable through `hal`'s translation.
    pub unsafe fn read_to(&self, off: u64, dst: PhysAddr, len: usize) -> bool {
        let Some(src) = self.at(off, len) else {
            return false;
        };
        // SAFETY: `src..src + len` is inside the store (checked by `at`), memory the store owns
        // for ever, reached through the translation `new` took its address from; `dst` is
        // segment memory the caller vouches for. Racing requests on one range make the
        // contents undefined, as on a disk, never touch memory outside either range.
        unsafe { hal::mem::copy_phys(dst, src, len) };
        true
    }

    /// Copies `len` bytes from segment memory `src` into the store at `off`.
    ///
    /// # Safety
    /// `src..src + len` is under the segment contract ([`BioVec::new`]), readable.
    pub unsafe fn write_from(&self, off: u64, src: PhysAddr, len: usize) -> bool {
        let Some(dst) = self.at(off, len) else {
            return false;
        };
        // SAFETY: as in `read_to`, the other way round.
        unsafe { hal::mem::copy_phys(dst, src, len) };
        true
    }

    /// Zeroes `len` bytes at `off`.
    pub fn zero(&self, off: u64, len: usize) -> bool {
        let Some(dst) = self.at(off, len) else {
            return false;
        };
        // SAFETY: the range is inside the store (checked by `at`), memory it owns for ever.
        unsafe { hal::mem::zero_phys(dst, len) };
        true
    }

    /// Copies store bytes into `dst` (tests, partition scanning).
    pub fn read_bytes(&self, off: u64, dst: &mut [u8]) -> bool {
        let Some(src) = self.at(off, dst.len()) else {
            return false;
        };
        // SAFETY: the range is inside the store (checked by `at`); `dst` is a unique slice, so
        // not store memory (the store's bytes are never lent out as a slice).
        unsafe { hal::mem::copy_from_phys(dst, src) };
        true
    }

    /// Copies `src` into the store.
    pub fn write_bytes(&self, off: u64, src: &[u8]) -> bool {
        let Some(dst) = self.at(off, src.len()) else {
            return false;
        };
        // SAFETY: as in `read_bytes`.
        unsafe { hal::mem::copy_to_phys(dst, src) };
        true
    }
}
