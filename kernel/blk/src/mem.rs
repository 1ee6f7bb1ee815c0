//! The one place that dereferences segment addresses.
//!
//! In the kernel every RAM physical address is identity mapped, so the CPU can reach a
//! segment's memory at its physical address; on the host a "physical" address is a host
//! pointer. The contract of the whole block layer: whoever puts a segment `(addr, len)` into a
//! bio promises that it names memory valid for reads and writes of `len` bytes, owned by that
//! I/O until the bio completes — the same promise as handing the address to a DMA engine. The
//! functions below (RAM disk copies, bounce buffers, test oracles) rely on it.

use hal::PhysAddr;

/// The physical address of a buffer (identity mapping: its address).
pub fn phys_of(buf: &[u8]) -> PhysAddr {
    PhysAddr(buf.as_ptr() as usize as u64)
}

/// Copies `src` into the segment memory at `dst`.
pub fn copy_to_phys(dst: PhysAddr, src: &[u8]) {
    if src.is_empty() {
        return;
    }
    // SAFETY: by the segment contract (module docs), `dst` names `src.len()` writable bytes
    // owned by the I/O in progress; `src` is a live slice; the I/O's buffer does not overlap
    // the caller's slice (a device's store or a bounce page is never also an I/O buffer).
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as usize as *mut u8, src.len()) }
}

/// Copies segment memory at `src` into `dst`.
pub fn copy_from_phys(dst: &mut [u8], src: PhysAddr) {
    if dst.is_empty() {
        return;
    }
    // SAFETY: by the segment contract, `src` names `dst.len()` readable bytes; `dst` is a live
    // unique slice that is not the segment's memory.
    unsafe {
        core::ptr::copy_nonoverlapping(src.0 as usize as *const u8, dst.as_mut_ptr(), dst.len())
    }
}

/// Copies `len` bytes between two segment memories (`copy`, so overlap is allowed).
pub fn copy_phys(dst: PhysAddr, src: PhysAddr, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: by the segment contract both name `len` valid bytes; `ptr::copy` allows overlap.
    unsafe { core::ptr::copy(src.0 as usize as *const u8, dst.0 as usize as *mut u8, len) }
}

/// Zeroes `len` bytes of segment memory.
pub fn zero_phys(dst: PhysAddr, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: by the segment contract `dst` names `len` writable bytes.
    unsafe { core::ptr::write_bytes(dst.0 as usize as *mut u8, 0, len) }
}

/// A static byte store shared between the submit path and a completion thread (the RAM disk's
/// medium). Accesses to overlapping ranges by concurrent requests race exactly as they would on
/// a disk; each access itself is a plain copy.
pub struct Store {
    base: *mut u8,
    len: usize,
}

// SAFETY: the store is plain bytes; concurrent access to distinct ranges is fine and
// overlapping concurrent requests have undefined *contents* (as on hardware), never touch
// memory outside `base..base+len` (every access is bounds-checked).
unsafe impl Sync for Store {}
// SAFETY: as above.
unsafe impl Send for Store {}

impl Store {
    /// A store over `mem`, which it keeps for ever.
    pub fn new(mem: &'static mut [u8]) -> Self {
        Store {
            base: mem.as_mut_ptr(),
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

    fn range_ok(&self, off: u64, len: usize) -> bool {
        (off as usize) <= self.len && len <= self.len - off as usize && off <= usize::MAX as u64
    }

    /// Copies `len` bytes at `off` of the store to segment memory `dst`. False if out of range.
    pub fn read_to(&self, off: u64, dst: PhysAddr, len: usize) -> bool {
        if !self.range_ok(off, len) {
            return false;
        }
        // SAFETY: `off..off+len` is inside the store (checked above); `dst` follows the segment
        // contract.
        copy_phys(
            dst,
            PhysAddr(unsafe { self.base.add(off as usize) } as usize as u64),
            len,
        );
        true
    }

    /// Copies `len` bytes from segment memory `src` into the store at `off`.
    pub fn write_from(&self, off: u64, src: PhysAddr, len: usize) -> bool {
        if !self.range_ok(off, len) {
            return false;
        }
        // SAFETY: as in `read_to`.
        copy_phys(
            PhysAddr(unsafe { self.base.add(off as usize) } as usize as u64),
            src,
            len,
        );
        true
    }

    /// Zeroes `len` bytes at `off`.
    pub fn zero(&self, off: u64, len: usize) -> bool {
        if !self.range_ok(off, len) {
            return false;
        }
        // SAFETY: the range is inside the store (checked above).
        zero_phys(
            PhysAddr(unsafe { self.base.add(off as usize) } as usize as u64),
            len,
        );
        true
    }

    /// Copies store bytes into `dst` (tests, partition scanning).
    pub fn read_bytes(&self, off: u64, dst: &mut [u8]) -> bool {
        if !self.range_ok(off, dst.len()) {
            return false;
        }
        // SAFETY: the range is inside the store (checked above).
        copy_from_phys(
            dst,
            PhysAddr(unsafe { self.base.add(off as usize) } as usize as u64),
        );
        true
    }

    /// Copies `src` into the store.
    pub fn write_bytes(&self, off: u64, src: &[u8]) -> bool {
        if !self.range_ok(off, src.len()) {
            return false;
        }
        // SAFETY: the range is inside the store (checked above).
        copy_to_phys(
            PhysAddr(unsafe { self.base.add(off as usize) } as usize as u64),
            src,
        );
        true
    }
}
