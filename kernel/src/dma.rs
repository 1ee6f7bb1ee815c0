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

/// Installs the arch's address translation in `hal::mem`, then gives the region to the DMA
/// allocator. Once, at boot, before interrupts or other CPUs run.
pub fn init() {
    // SAFETY: `arch::TRANSLATION` describes the page tables the entry code built and never
    // changes: 1. the direct map covers RAM and every device window below its limit for the
    // whole run; 2. kernel statics and stacks are in the image window (riscv64's higher half)
    // or in the direct map (x86_64's identity map), so `virt_to_phys` is right and linear for
    // every kernel object. `kmain` calls this once, first.
    unsafe { hal::mem::init(arch::TRANSLATION) };
    let virt = AREA.0.get() as usize;
    // SAFETY: 1. `AREA` is a static in .bss: RAM, mapped read-write for the whole run, used by
    // nothing but the allocator from here on; devices reach it at its physical address, which
    // `hal::mem::virt_to_phys` gives for kernel statics, and the CPU reaches that physical
    // address through the direct map just installed (it is below either arch's limit).
    // 2. It is 4 KiB aligned (`repr(align)`) and the kernel is mapped with page granularity, so
    // the physical address is aligned too.
    // 3. `kmain` calls this once.
    unsafe { hal::dma::init(virt, hal::mem::virt_to_phys(virt), DMA_BYTES) };
}
