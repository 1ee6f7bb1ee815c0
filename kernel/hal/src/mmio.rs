//! Device register windows.

use crate::PhysAddr;

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
}

macro_rules! accessors {
    ($($read:ident $write:ident $t:ty;)*) => {
        impl Mmio {
            $(
                #[doc = concat!("Volatile read of a `", stringify!($t), "` at byte offset `off`.")]
                #[inline]
                pub fn $read(&self, off: usize) -> $t {
                    let p = self.check(off, core::mem::size_of::<$t>()) as *const $t;
                    // SAFETY: `check` proved `p` is aligned and inside the window, which the
                    // constructor's contract says is mapped device memory for volatile access.
                    unsafe { core::ptr::read_volatile(p) }
                }

                #[doc = concat!("Volatile write of a `", stringify!($t), "` at byte offset `off`.")]
                #[inline]
                pub fn $write(&self, off: usize, v: $t) {
                    let p = self.check(off, core::mem::size_of::<$t>()) as *mut $t;
                    // SAFETY: as in the read: aligned, inside the mapped window.
                    unsafe { core::ptr::write_volatile(p, v) }
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
        let _ = m;
        assert_eq!(mem[1], 42);
    }
}
