//! Host test support: the DMA region every host test allocates from, and one window on all of
//! it for the device model (`fake`), which reaches what the driver hands it by "physical"
//! address. On the host a buffer's physical address is its pointer.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use hal::dma::host::{TEST_REGION_BYTES, init_test_region};
use hal::{DmaBuf, Mmio, PhysAddr};

static WINDOW: OnceLock<Mmio> = OnceLock::new();

/// Sets up the DMA region (once per test process) and returns a window on all of it, whose
/// offsets are physical addresses minus [`Mmio::phys`]. Every test calls this before it
/// allocates DMA memory: the first call finds the region by allocating all of it.
pub(crate) fn dma_init() -> &'static Mmio {
    WINDOW.get_or_init(|| {
        init_test_region();
        // Nothing is allocated yet (every allocation in this crate's tests comes after this
        // call, which other threads wait for), so the whole region is one free run: its
        // address is the region's start.
        let all = DmaBuf::alloc(TEST_REGION_BYTES, 4096)
            .expect("dma_init runs before any DMA allocation");
        let base = all.phys().0;
        assert_eq!(base as usize, all.virt(), "host DMA addresses are pointers");
        drop(all);
        // SAFETY: 1. `base..base + TEST_REGION_BYTES` is the region `init_test_region` gave
        // the DMA allocator: leaked host memory, mapped read-write for the rest of the
        // process; plain memory tolerates volatile 8/16/32/64-bit accesses at aligned offsets.
        // 2. The only other accesses to it are `DmaBuf` volatile accessors (the driver's
        // rings and lists, the tests' data buffers): memory shared with a device by design,
        // which is what this window stands in for; nothing else in the process uses it.
        unsafe { Mmio::new(base as usize, PhysAddr(base), TEST_REGION_BYTES) }
    })
}
