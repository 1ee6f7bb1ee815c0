//! Device register windows.
//!
//! Accesses are built on the `volatile` crate: a window hands out typed register handles
//! ([`Mmio::reg`], [`Mmio::reg_ro`], [`Mmio::reg_wo`]: `VolatilePtr`s with `ReadWrite`,
//! `ReadOnly` or `WriteOnly` access), and the `read32(off)`-style methods are one-line uses of
//! them. A handle compiles to the same single load or store as a raw volatile access.

use core::ptr::NonNull;

use volatile::VolatilePtr;
use volatile::access::{Access, ReadOnly, ReadWrite, WriteOnly};

use crate::PhysAddr;

/// A register width a device tolerates volatile accesses of: `u8`, `u16`, `u32`, `u64`.
pub trait Register: Copy + private::Sealed {}
impl Register for u8 {}
impl Register for u16 {}
impl Register for u32 {}
impl Register for u64 {}

mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// A window of device registers (or any memory a device shares), accessed with volatile loads
/// and stores. Every access is bounds- and alignment-checked: a bad offset is a driver bug and
/// panics rather than touching memory outside the window.
#[derive(Debug)]
pub struct Mmio {
    virt: usize,
    phys: PhysAddr,
    len: usize,
}

impl Mmio {
    /// Wraps the register window at virtual address `virt` (physical `phys`), `len` bytes long.
    ///
    /// # Safety
    /// 1. `virt..virt + len` is mapped (uncached where the platform needs it) for the whole life
    ///    of the program and belongs to one device (or to memory) that tolerates volatile 8, 16,
    ///    32 and 64-bit accesses at naturally aligned offsets.
    /// 2. No other `Mmio` covers the same range unless both owners only make accesses the device
    ///    tolerates concurrently (e.g. the PCI config space of different functions).
    /// 3. `virt` is not 0.
    pub const unsafe fn new(virt: usize, phys: PhysAddr, len: usize) -> Mmio {
        Mmio { virt, phys, len }
    }

    /// Physical address of the window's start.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Virtual address of the window's start, for a dependency that insists on a raw pointer
    /// (e.g. a transport crate's register struct). Accesses through it bypass the bounds checks.
    pub fn virt(&self) -> usize {
        self.virt
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `off..off + len` of this window, or `None` if it does not fit.
    pub fn subregion(&self, off: usize, len: usize) -> Option<Mmio> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        Some(Mmio {
            virt: self.virt + off,
            phys: self.phys.add(off as u64),
            len,
        })
    }

    #[inline]
    fn check(&self, off: usize, size: usize) -> usize {
        assert!(
            off.is_multiple_of(size) && off.checked_add(size).is_some_and(|end| end <= self.len),
            "mmio access out of window"
        );
        self.virt + off
    }

    #[inline]
    fn handle<T: Register, A: Access>(&self, off: usize, access: A) -> VolatilePtr<'_, T, A> {
        let p = self.check(off, core::mem::size_of::<T>()) as *mut T;
        // SAFETY: `check` proved `p` aligned and inside the window, which the constructor's
        // contract makes mapped device memory, non-null (`virt != 0`, no wrap-around since
        // `off + size <= len`), tolerating volatile accesses of every `Register` width for the
        // whole program, so the handle (borrowing `self`) never outlives it. Handles never
        // create references to the memory, so several may coexist.
        unsafe { VolatilePtr::new_restricted(access, NonNull::new_unchecked(p)) }
    }

    /// The register of type `T` at byte offset `off`, readable and writable. Panics if it is
    /// misaligned or outside the window.
    #[inline]
    pub fn reg<T: Register>(&self, off: usize) -> VolatilePtr<'_, T, ReadWrite> {
        self.handle(off, ReadWrite)
    }

    /// The read-only register of type `T` at byte offset `off` (a status or capability
    /// register). Panics if it is misaligned or outside the window.
    #[inline]
    pub fn reg_ro<T: Register>(&self, off: usize) -> VolatilePtr<'_, T, ReadOnly> {
        self.handle(off, ReadOnly)
    }

    /// The write-only register of type `T` at byte offset `off` (a doorbell). Panics if it is
    /// misaligned or outside the window.
    #[inline]
    pub fn reg_wo<T: Register>(&self, off: usize) -> VolatilePtr<'_, T, WriteOnly> {
        self.handle(off, WriteOnly)
    }
}

macro_rules! accessors {
    ($($read:ident $write:ident $t:ty;)*) => {
        impl Mmio {
            $(
                #[doc = concat!("Volatile read of a `", stringify!($t), "` at byte offset `off`.")]
                #[inline]
                pub fn $read(&self, off: usize) -> $t {
                    self.reg_ro::<$t>(off).read()
                }

                #[doc = concat!("Volatile write of a `", stringify!($t), "` at byte offset `off`.")]
                #[inline]
                pub fn $write(&self, off: usize, v: $t) {
                    self.reg_wo::<$t>(off).write(v)
                }
            )*
        }
    };
}

accessors! {
    read8 write8 u8;
    read16 write16 u16;
    read32 write32 u32;
    read64 write64 u64;
}

/// Maps physical register windows for bus code (PCI BARs) that learns addresses at run time.
///
/// The boot crate implements it (identity mapping, uncached where needed) and vouches for it:
/// it must only be asked for ranges that belong to devices, which bus code guarantees by
/// mapping only the windows it assigned or read from the device.
pub trait MmioMapper: Sync {
    /// A handle on `len` bytes of device registers at `phys`, or `None` if the platform cannot
    /// map that range (outside the device windows it knows).
    fn map(&self, phys: PhysAddr, len: usize) -> Option<Mmio>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_stay_inside() {
        let mut mem = [0u64; 4];
        // SAFETY: `mem` is plain memory that outlives the handle and is only used through it.
        let m = unsafe { Mmio::new(mem.as_mut_ptr() as usize, PhysAddr(0x1000), 32) };
        m.write32(4, 0xdead_beef);
        m.write8(31, 7);
        assert_eq!(m.read32(4), 0xdead_beef);
        assert_eq!(m.read8(31), 7);
        let sub = m.subregion(8, 8).unwrap();
        sub.write64(0, 42);
        assert_eq!(m.read64(8), 42);
        assert_eq!(sub.phys(), PhysAddr(0x1008));
        assert!(m.subregion(30, 4).is_none());
        assert!(std::panic::catch_unwind(|| m.read32(30)).is_err());
        assert!(std::panic::catch_unwind(|| m.read32(2)).is_err());
        m.reg::<u16>(16).write(0xbeef);
        assert_eq!(m.reg_ro::<u16>(16).read(), 0xbeef);
        m.reg_wo::<u8>(24).write(9);
        assert_eq!(m.read8(24), 9);
        assert!(std::panic::catch_unwind(|| m.reg::<u64>(28)).is_err());
        let _ = m;
        assert_eq!(mem[1], 42);
    }
}
