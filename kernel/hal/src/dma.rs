//! DMA-able memory.
//!
//! The boot crate hands one static region to [`init`]; drivers take page-granular, aligned
//! buffers from it with [`DmaBuf::alloc`] (at initialisation time, not on the I/O path: the
//! allocator takes a spin lock). A buffer knows its physical address and gives the page back
//! when dropped.
//!
//! CPU access to a buffer goes through the handle. The device may read or write the memory
//! whenever the driver has handed it the physical address; drivers must treat such memory as
//! shared (volatile accessors, or plain slices only while no DMA is outstanding).

use core::ptr::NonNull;

use crate::PhysAddr;
use crate::mmio::Register;
use spin::Mutex;
use volatile::VolatilePtr;
use volatile::access::ReadWrite;

/// Page size of the allocator.
pub const PAGE_SIZE: usize = 4096;
const MAX_PAGES: usize = 16 * 1024; // 64 MiB of DMA memory at most
const WORDS: usize = MAX_PAGES / 64;

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaError {
    /// [`init`] was never called.
    NotInitialised,
    /// No free run of pages large enough (with the alignment asked for).
    OutOfMemory,
    /// Length zero, or alignment not a power of two.
    BadRequest,
}

struct Region {
    virt: usize,
    phys: u64,
    pages: usize,
    used: [u64; WORDS],
    in_use: usize,
}

static REGION: Mutex<Option<Region>> = Mutex::new(None);

/// Gives the allocator its memory: `len` bytes at virtual `virt`, physical `phys`.
///
/// # Safety
/// 1. `virt..virt + len` is RAM, mapped read-write for the rest of the program, used by nothing
///    else, and reachable by devices at `phys..phys + len` and by the CPU at the same physical
///    addresses through [`crate::mem`]'s translation (bio segments over a buffer rely on it).
/// 2. `virt` and `phys` are page-aligned.
/// 3. Called once (a second call panics).
pub unsafe fn init(virt: usize, phys: PhysAddr, len: usize) {
    assert!(
        virt != 0 && virt.is_multiple_of(PAGE_SIZE) && phys.0.is_multiple_of(PAGE_SIZE as u64),
        "dma region null or unaligned"
    );
    let mut r = REGION.lock();
    assert!(r.is_none(), "dma::init called twice");
    *r = Some(Region {
        virt,
        phys: phys.0,
        pages: (len / PAGE_SIZE).min(MAX_PAGES),
        used: [0; WORDS],
        in_use: 0,
    });
}

/// Pages in use and pages in all, for statistics.
pub fn usage() -> (usize, usize) {
    REGION
        .lock()
        .as_ref()
        .map_or((0, 0), |r| (r.in_use, r.pages))
}

impl Region {
    fn is_used(&self, p: usize) -> bool {
        self.used[p / 64] & (1 << (p % 64)) != 0
    }

    fn set(&mut self, first: usize, n: usize, used: bool) {
        for p in first..first + n {
            if used {
                self.used[p / 64] |= 1 << (p % 64);
            } else {
                self.used[p / 64] &= !(1 << (p % 64));
            }
        }
        if used {
            self.in_use += n;
        } else {
            self.in_use -= n;
        }
    }

    fn find(&self, n: usize, align_pages: usize) -> Option<usize> {
        // Physical alignment is what devices need; the region's phys base is page aligned.
        let base_page = (self.phys / PAGE_SIZE as u64) as usize;
        let mut first = (align_pages - base_page % align_pages) % align_pages;
        while first + n <= self.pages {
            match (first..first + n).rev().find(|&p| self.is_used(p)) {
                None => return Some(first),
                Some(busy) => {
                    let next = busy + 1;
                    first = next + (align_pages - (base_page + next) % align_pages) % align_pages;
                }
            }
        }
        None
    }
}

/// A DMA-able buffer: whole pages from the static region, zeroed when allocated.
#[derive(Debug)]
pub struct DmaBuf {
    virt: usize,
    phys: PhysAddr,
    len: usize,
    first_page: usize,
    pages: usize,
}

impl DmaBuf {
    /// Allocates `len` bytes whose physical address is a multiple of `align` (a power of two;
    /// anything up to a page is page-aligned anyway).
    pub fn alloc(len: usize, align: usize) -> Result<DmaBuf, DmaError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(DmaError::BadRequest);
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let align_pages = align.div_ceil(PAGE_SIZE).max(1);
        let mut guard = REGION.lock();
        let r = guard.as_mut().ok_or(DmaError::NotInitialised)?;
        let first = r.find(pages, align_pages).ok_or(DmaError::OutOfMemory)?;
        r.set(first, pages, true);
        let buf = DmaBuf {
            virt: r.virt + first * PAGE_SIZE,
            phys: PhysAddr(r.phys + (first * PAGE_SIZE) as u64),
            len,
            first_page: first,
            pages,
        };
        drop(guard);
        buf.as_slice_inner_zero();
        Ok(buf)
    }

    fn as_slice_inner_zero(&self) {
        // SAFETY: the pages were just taken from the region for this buffer alone, and the
        // region is mapped read-write RAM (`init`'s contract).
        unsafe { core::ptr::write_bytes(self.virt as *mut u8, 0, self.pages * PAGE_SIZE) };
    }

    /// Gives up the handle without freeing: `(virtual address, physical address, length)`. The
    /// pages stay allocated until [`DmaBuf::from_raw_parts`] rebuilds the handle and drops it.
    /// For a dependency whose DMA API passes raw addresses around.
    pub fn into_raw_parts(self) -> (usize, PhysAddr, usize) {
        let parts = (self.virt, self.phys, self.len);
        core::mem::forget(self);
        parts
    }

    /// Rebuilds a handle from [`DmaBuf::into_raw_parts`].
    ///
    /// # Safety
    /// `virt`, `phys` and `len` come from one `into_raw_parts` call whose buffer has not been
    /// rebuilt since (one handle per allocation).
    pub unsafe fn from_raw_parts(virt: usize, phys: PhysAddr, len: usize) -> DmaBuf {
        let first_page = REGION
            .lock()
            .as_ref()
            .map_or(0, |r| (virt - r.virt) / PAGE_SIZE);
        DmaBuf {
            virt,
            phys,
            len,
            first_page,
            pages: len.div_ceil(PAGE_SIZE),
        }
    }

    /// Virtual address of the first byte (for a dependency that wants a pointer).
    pub fn virt(&self) -> usize {
        self.virt
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Length asked for at allocation.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero (never, for an allocated buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as bytes. Only meaningful while no device writes to it.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer exclusively owns `len` bytes of mapped RAM at `virt` (alloc), and
        // `&self` excludes CPU writers through this handle.
        unsafe { core::slice::from_raw_parts(self.virt as *const u8, self.len) }
    }

    /// The buffer as mutable bytes. Only meaningful while no device accesses it.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only CPU access.
        unsafe { core::slice::from_raw_parts_mut(self.virt as *mut u8, self.len) }
    }

    #[inline]
    fn ptr(&self, off: usize, size: usize) -> usize {
        assert!(
            off.is_multiple_of(size) && off.checked_add(size).is_some_and(|e| e <= self.len),
            "dma access out of buffer"
        );
        self.virt + off
    }

    /// The value of type `T` at byte offset `off`, for volatile access to memory the device
    /// shares (a ring entry, a doorbell record). Panics if misaligned or outside the buffer.
    #[inline]
    pub fn reg<T: Register>(&self, off: usize) -> VolatilePtr<'_, T, ReadWrite> {
        let p = self.ptr(off, core::mem::size_of::<T>()) as *mut T;
        // SAFETY: `ptr` proved `p` aligned and inside the buffer's own mapped RAM, which is
        // non-null (`init` refuses a null region) and stays allocated while the handle borrows
        // `self`. Handles never create references, so concurrent device writes and several
        // handles are fine (memory shared with a device by design).
        unsafe { VolatilePtr::new(NonNull::new_unchecked(p)) }
    }
}

macro_rules! dma_accessors {
    ($($read:ident $write:ident $t:ty;)*) => {
        impl DmaBuf {
            $(
                #[doc = concat!("Volatile read of a `", stringify!($t), "` the device may have written.")]
                #[inline]
                pub fn $read(&self, off: usize) -> $t {
                    self.reg::<$t>(off).read()
                }

                #[doc = concat!("Volatile write of a `", stringify!($t), "` the device may read.")]
                #[inline]
                pub fn $write(&self, off: usize, v: $t) {
                    self.reg::<$t>(off).write(v)
                }
            )*
        }
    };
}

dma_accessors! {
    read8 write8 u8;
    read16 write16 u16;
    read32 write32 u32;
    read64 write64 u64;
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if let Some(r) = REGION.lock().as_mut() {
            r.set(self.first_page, self.pages, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_align_free() {
        let mem = Box::leak(vec![0u8; 64 * PAGE_SIZE + PAGE_SIZE].into_boxed_slice());
        let base = (mem.as_mut_ptr() as usize).next_multiple_of(PAGE_SIZE);
        // SAFETY: leaked host memory, page aligned, used by nothing else.
        unsafe { init(base, PhysAddr(0x10_0000), 64 * PAGE_SIZE) };
        assert_eq!(DmaBuf::alloc(0, 8).unwrap_err(), DmaError::BadRequest);
        let mut a = DmaBuf::alloc(100, 8).unwrap();
        assert_eq!(a.phys(), PhysAddr(0x10_0000));
        a.as_mut_slice()[99] = 5;
        a.write32(4, 77);
        assert_eq!(a.read32(4), 77);
        let b = DmaBuf::alloc(PAGE_SIZE * 2, 4 * PAGE_SIZE).unwrap();
        assert!(b.phys().is_aligned(4 * PAGE_SIZE as u64));
        assert_eq!(usage().0, 3);
        let all = DmaBuf::alloc(64 * PAGE_SIZE, 8);
        assert_eq!(all.unwrap_err(), DmaError::OutOfMemory);
        drop(a);
        let c = DmaBuf::alloc(PAGE_SIZE, 8).unwrap();
        assert_eq!(c.phys(), PhysAddr(0x10_0000));
        assert_eq!(c.as_slice()[99], 0, "buffers come zeroed");
        drop((b, c));
        assert_eq!(usage().0, 0);
        let d = DmaBuf::alloc(3 * PAGE_SIZE, 8).unwrap();
        let (virt, phys, len) = d.into_raw_parts();
        assert_eq!(usage().0, 3, "raw parts keep the pages");
        // SAFETY: the parts of `d`, rebuilt once.
        drop(unsafe { DmaBuf::from_raw_parts(virt, phys, len) });
        assert_eq!(usage().0, 0);
    }
}

/// Host tests of drivers: one process-wide DMA region of leaked host memory, in which a
/// buffer's "physical" address is its host pointer (so a fake device model can reach what a
/// driver hands it). Behind the `host-test` feature; drivers enable it as a dev-dependency.
#[cfg(feature = "host-test")]
pub mod host {
    extern crate std;
    use std::boxed::Box;
    use std::vec;

    /// Bytes of the test region (enough for every driver's rings plus test buffers, with the
    /// controllers that tests leak for their `'static` queues and many test threads at once).
    pub const TEST_REGION_BYTES: usize = 32 << 20;

    /// Gives [`super::init`] leaked host memory, once per test process; later calls do nothing.
    pub fn init_test_region() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let mem = Box::leak(vec![0u8; TEST_REGION_BYTES + super::PAGE_SIZE].into_boxed_slice());
            let base = (mem.as_mut_ptr() as usize).next_multiple_of(super::PAGE_SIZE);
            // SAFETY: 1. `base..base + TEST_REGION_BYTES` lies inside `mem`, which is leaked,
            // so it is valid for the rest of the process and used by nothing else, and the
            // host translation of `crate::mem` is the identity, so the CPU reaches it at its
            // "physical" address, which is `base` itself; 2. `base`
            // is page aligned, and so is the "physical" address, which is the same number;
            // 3. `ONCE` makes this the only call.
            unsafe { super::init(base, crate::PhysAddr(base as u64), TEST_REGION_BYTES) };
        });
    }
}
