//! Physical memory: the kernel's virtual <-> physical translation, and the CPU copies to and
//! from memory named by physical address.
//!
//! Bio segments and DMA buffers name memory by physical address (what a device is given). When
//! the CPU has to touch such memory itself (a RAM disk, bounce buffers, a test oracle) it goes
//! through the functions here, which find the memory through the translation the arch code set
//! up at boot with [`init`]. Nothing else in the storage stack turns a physical address into a
//! pointer.
//!
//! The translation has two linear windows, which is how both architectures map memory:
//!
//! - the *direct map*: physical `p` is at virtual `p + direct_offset` for every `p` below
//!   `direct_limit` (an identity map of low memory on x86_64 and riscv64: offset 0);
//! - the *image window*: a virtual address at or above `image_base` is at physical
//!   `virt - image_offset` (riscv64 runs its kernel image in the higher half; x86_64 has no
//!   such window).
//!
//! A kernel virtual address goes through the image window if it lies in it, else through the
//! direct map; a physical address always goes through the direct map. Until [`init`] runs (and
//! on the host, where tests of drivers and of the block layer run) the translation is the
//! identity: a "physical" address is a host pointer.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::PhysAddr;

/// How the kernel maps memory (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// `virt - phys` in the direct map (0 for an identity map).
    pub direct_offset: usize,
    /// Physical addresses below this are in the direct map.
    pub direct_limit: u64,
    /// Virtual addresses at or above this are in the image window (`usize::MAX`: no window).
    pub image_base: usize,
    /// `virt - phys` inside the image window.
    pub image_offset: usize,
}

impl Translation {
    /// The identity over the whole address space (the host, and the kernel before [`init`]).
    pub const IDENTITY: Translation = Translation {
        direct_offset: 0,
        direct_limit: u64::MAX,
        image_base: usize::MAX,
        image_offset: 0,
    };
}

static DIRECT_OFFSET: AtomicUsize = AtomicUsize::new(0);
static DIRECT_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
static IMAGE_BASE: AtomicUsize = AtomicUsize::new(usize::MAX);
static IMAGE_OFFSET: AtomicUsize = AtomicUsize::new(0);
static SET: AtomicBool = AtomicBool::new(false);

/// Installs the kernel's translation. Once, at boot, before any other CPU or interrupt handler
/// runs (a second call panics).
///
/// # Safety
/// 1. Every physical address of RAM and of device memory that the storage stack names (DMA
///    buffers, bio segments, register windows) below `t.direct_limit` is mapped read-write at
///    `phys + t.direct_offset` for the rest of the program.
/// 2. Every virtual address at or above `t.image_base` that the kernel uses (its image:
///    statics, stacks) is backed by physical memory at `virt - t.image_offset`, and every other
///    kernel virtual address by physical memory at `virt - t.direct_offset`, so that
///    [`virt_to_phys`] is right for any live object, and linear over it.
pub unsafe fn init(t: Translation) {
    assert!(!SET.swap(true, Ordering::Relaxed), "mem::init called twice");
    DIRECT_OFFSET.store(t.direct_offset, Ordering::Relaxed);
    DIRECT_LIMIT.store(t.direct_limit, Ordering::Relaxed);
    IMAGE_BASE.store(t.image_base, Ordering::Relaxed);
    IMAGE_OFFSET.store(t.image_offset, Ordering::Relaxed);
}

/// The translation in force.
pub fn translation() -> Translation {
    Translation {
        direct_offset: DIRECT_OFFSET.load(Ordering::Relaxed),
        direct_limit: DIRECT_LIMIT.load(Ordering::Relaxed),
        image_base: IMAGE_BASE.load(Ordering::Relaxed),
        image_offset: IMAGE_OFFSET.load(Ordering::Relaxed),
    }
}

/// The physical address of kernel virtual address `virt` (plain arithmetic: meaningful for the
/// address of a live kernel object).
#[inline]
pub fn virt_to_phys(virt: usize) -> PhysAddr {
    let off = if virt >= IMAGE_BASE.load(Ordering::Relaxed) {
        IMAGE_OFFSET.load(Ordering::Relaxed)
    } else {
        DIRECT_OFFSET.load(Ordering::Relaxed)
    };
    PhysAddr(virt.wrapping_sub(off) as u64)
}

/// The direct-map virtual address of physical address `phys`, or `None` above the direct map.
/// Plain arithmetic: dereferencing the result is what the `unsafe` functions below vouch for.
#[inline]
pub fn phys_to_virt(phys: PhysAddr) -> Option<usize> {
    if phys.0 >= DIRECT_LIMIT.load(Ordering::Relaxed) || phys.0 > usize::MAX as u64 {
        return None;
    }
    Some((phys.0 as usize).wrapping_add(DIRECT_OFFSET.load(Ordering::Relaxed)))
}

/// The direct-map virtual address of `phys`, without the limit check of [`phys_to_virt`]: for
/// hot paths whose caller already knows `phys` is in the direct map (a bio segment, a DMA
/// buffer). Plain arithmetic, one load and one add.
#[inline]
pub fn direct_virt(phys: PhysAddr) -> usize {
    (phys.0 as usize).wrapping_add(DIRECT_OFFSET.load(Ordering::Relaxed))
}

/// The physical address of a direct-map virtual address (the inverse of [`direct_virt`], e.g.
/// for a pointer [`direct_virt`] made); for any other kernel address use [`virt_to_phys`].
#[inline]
pub fn direct_phys(virt: usize) -> PhysAddr {
    PhysAddr(virt.wrapping_sub(DIRECT_OFFSET.load(Ordering::Relaxed)) as u64)
}

/// [`phys_to_virt`] for the copies below, whose callers vouch that the range is mapped.
#[inline]
fn ptr(phys: PhysAddr) -> *mut u8 {
    match phys_to_virt(phys) {
        Some(v) => v as *mut u8,
        None => panic!("physical address outside the direct map"),
    }
}

/// Copies `src` into the memory at physical address `dst`.
///
/// # Safety
/// 1. `dst..dst + src.len()` is memory reachable through the translation (RAM in the direct
///    map), valid for writes, and the caller has the right to write it: nothing else reads or
///    writes it during the copy (e.g. a bio segment owned by the I/O in progress).
/// 2. It does not overlap `src`.
pub unsafe fn copy_to_phys(dst: PhysAddr, src: &[u8]) {
    if src.is_empty() {
        return;
    }
    // SAFETY: the caller vouches (1) that `dst` names `src.len()` writable bytes reachable at
    // `ptr(dst)` and owned by the caller, and (2) that they do not overlap the live slice `src`.
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), ptr(dst), src.len()) }
}

/// Copies the memory at physical address `src` into `dst`.
///
/// # Safety
/// `src..src + dst.len()` is memory reachable through the translation, valid for reads, not
/// written by anything else during the copy, and not part of `dst`.
pub unsafe fn copy_from_phys(dst: &mut [u8], src: PhysAddr) {
    if dst.is_empty() {
        return;
    }
    // SAFETY: the caller vouches that `src` names `dst.len()` readable bytes reachable at
    // `ptr(src)`, stable during the copy and disjoint from the unique slice `dst`.
    unsafe { core::ptr::copy_nonoverlapping(ptr(src), dst.as_mut_ptr(), dst.len()) }
}

/// Copies `len` bytes from physical address `src` to physical address `dst` (the ranges may
/// overlap).
///
/// # Safety
/// Both ranges are memory reachable through the translation; `src..src + len` is valid for
/// reads and `dst..dst + len` for writes; the caller has the right to write `dst` and nothing
/// else writes either range during the copy.
pub unsafe fn copy_phys(dst: PhysAddr, src: PhysAddr, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller vouches for both ranges; `ptr::copy` allows overlap.
    unsafe { core::ptr::copy(ptr(src), ptr(dst), len) }
}

/// Zeroes `len` bytes at physical address `dst`.
///
/// # Safety
/// `dst..dst + len` is memory reachable through the translation, valid for writes, and the
/// caller has the right to write it: nothing else reads or writes it meanwhile.
pub unsafe fn zero_phys(dst: PhysAddr, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller vouches that `dst` names `len` writable bytes it owns.
    unsafe { core::ptr::write_bytes(ptr(dst), 0, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_default_is_identity_and_copies_work() {
        assert_eq!(translation(), Translation::IDENTITY);
        let mut a = [1u8, 2, 3, 4];
        let mut b = [0u8; 4];
        let pa = virt_to_phys(a.as_mut_ptr() as usize);
        let pb = virt_to_phys(b.as_mut_ptr() as usize);
        assert_eq!(pa.0, a.as_ptr() as u64);
        assert_eq!(phys_to_virt(pa), Some(a.as_ptr() as usize));
        assert_eq!(direct_virt(pa), a.as_ptr() as usize);
        assert_eq!(direct_phys(direct_virt(pb)), pb);
        // SAFETY: `a` and `b` are live locals used by nothing else during the calls; the
        // identity translation reaches them at their addresses.
        unsafe {
            copy_phys(pb, pa, 4);
            assert_eq!(b, [1, 2, 3, 4]);
            zero_phys(pa.add(1), 2);
            copy_to_phys(pb, &[9]);
        }
        assert_eq!(a, [1, 0, 0, 4]);
        let mut c = [0u8; 4];
        // SAFETY: as above.
        unsafe { copy_from_phys(&mut c, pb) };
        assert_eq!(c, [9, 2, 3, 4]);
    }
}
