//! Bounce buffers for disks that reach only part of memory: AHCI controllers without 64-bit
//! addressing (`CAP.S64A` clear) reach only the first 4 GiB, and their queues' limits say so
//! (`dma_limit`). Every AHCI queue carries [`BOUNCER`]: the block layer copies a bio whose
//! segments lie above its queue's limit through pages of [`PAGE_SLAB`], a static in the kernel
//! image (below 4 GiB on both architectures), and counts it (`BlkStats::bounces`). A queue
//! whose limit is `u64::MAX` never looks at it.
//!
//! Tests force the path on machines whose memory all lies below 4 GiB with the command-line word
//! `ahci_bounce`: the last attached AHCI disk is treated as one on a controller without 64-bit
//! addressing whose DMA limit is [`low_limit`], the last byte of the bounce pages, so buffers
//! the kernel allocates elsewhere are above it and must bounce (`kernel/src/tests/bounce.rs`).

use blk::bounce::{BOUNCE_PAGES, BouncePad, BouncePage, Bouncer};
use blk::slab::{Mempool, Slab};
use blk::{BioSet, BioSlab, BvecPools, BvecSlabs};

/// Bounce pages: four bounced bios of the largest size at once (256 KiB).
const PAGES: usize = 4 * BOUNCE_PAGES;

/// The pages, in the kernel image.
static PAGE_SLAB: Slab<BouncePage, PAGES> = Slab::new();
/// One largest bounced bio's pages are kept in reserve.
static PAGE_POOL: Mempool<BouncePage> = Mempool::new(&PAGE_SLAB, BOUNCE_PAGES as u32);
/// The clones that carry the pages: their bios and vectors (one vector of up to
/// [`BOUNCE_PAGES`] entries each). As many clones as pages, so that a queue's whole depth of
/// 4 KiB bios (AHCI: 32) can be bounced and in flight at once.
static PAD_SLAB: BioSlab<BouncePad, PAGES> = BioSlab::new();
static PAD_BVEC_SLABS: BvecSlabs<PAGES, 16, 16, 2, 2, 2> = BvecSlabs::new();
static PAD_BVECS: BvecPools = BvecPools::new(&PAD_BVEC_SLABS, 2);
static PAD_SET: BioSet<BouncePad> = BioSet::new(&PAD_SLAB, 2, Some(&PAD_BVECS));

/// The bouncer of every AHCI queue.
pub static BOUNCER: Bouncer = Bouncer::new(&PAGE_POOL, &PAD_SET);

/// Fills the reserves of the pools; once, before the first queue with a DMA limit takes I/O.
pub fn init() -> Result<(), blk::BlkError> {
    PAGE_POOL.init()?;
    PAD_SET.init()
}

/// The last byte of the bounce pages: every page lies at or below it.
pub fn low_limit() -> u64 {
    let start = hal::mem::virt_to_phys(core::ptr::from_ref(&PAGE_SLAB) as usize).0;
    start + core::mem::size_of_val(&PAGE_SLAB) as u64 - 1
}

/// Whether the bounce pages lie at or below `limit` (so that they can serve a device with that
/// DMA limit).
pub fn pages_below(limit: u64) -> bool {
    low_limit() <= limit
}

/// Bounce pages in use now (each returns when its bio completes).
pub fn pages_in_use() -> u64 {
    PAGE_POOL.stats().in_use
}

/// The command-line word that forces the bounce path on the last AHCI disk.
pub const FORCE_WORD: &str = "ahci_bounce";

/// Whether `ahci_bounce` is on the command line and `port` is the highest port of `hba` with a
/// disk (the last AHCI disk attached).
pub fn forced_on(hba: &ahci::Hba, port: usize) -> bool {
    let cmdline = crate::boot_info().cmdline;
    let last = 31usize.checked_sub(hba.disk_ports().leading_zeros() as usize);
    cmdline.split_ascii_whitespace().any(|w| w == FORCE_WORD) && last == Some(port)
}
