//! The static DMA region handed to `hal::dma`.

use crate::arch;
use crate::config::DMA_BYTES;
use core::cell::UnsafeCell;

#[repr(C, align(4096))]
struct Area(UnsafeCell<[u8; DMA_BYTES]>);

// SAFETY: the area is only ever touched through `hal::dma`, which hands out disjoint pages
// under its own lock; nothing here reads or writes it.
unsafe impl Sync for Area {}

static AREA: Area = Area(UnsafeCell::new([0; DMA_BYTES]));

/// Gives the region to the DMA allocator. Once, at boot.
pub fn init() {
    let virt = AREA.0.get() as usize;
    // SAFETY: 1. `AREA` is a static in .bss: RAM, mapped read-write for the whole run, used by
    // nothing but the allocator from here on; devices reach it at its physical address, which
    // `virt_to_phys` gives for kernel statics. 2. It is 4 KiB aligned (`repr(align)`) and the
    // kernel is mapped with page granularity, so the physical address is aligned too.
    // 3. `kmain` calls this once.
    unsafe { hal::dma::init(virt, hal::PhysAddr(arch::virt_to_phys(virt)), DMA_BYTES) };
}
