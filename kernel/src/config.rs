//! Kernel configuration: the sizes, limits and hardware IDs that are data rather than logic,
//! in one place. Everything is a compile-time constant (the kernel has no heap: pools and the
//! DMA region are statics sized here), except the request timeouts, which the kernel command
//! line may shorten ([`block_timeout_ns`]).

// ---- Block layer bio pools (`block::SPLIT_SET`, `block::IO_SET`) ----
//
// With the cargo feature `min-pools` every pool is at the smallest size the rules below allow
// (the `x86_64-nvme-min-pools` profile runs the in-kernel suite that way), to show that the
// stack makes progress on its reserves alone. The rules, checked at compile time at the end
// of this section:
// - every pool keeps a reserve of at least 1 and its slab holds at least that reserve (`init`
//   takes the reserve from the slab);
// - the bio slab holds both reserves plus 2: a split needs one bio while the bio it splits is
//   held;
// - every vector class holds its reserve plus 1: a split front may need an array of the same
//   class as the bio it is cut from, which holds one until all its parts complete;
// - the filesystem's slab holds a whole batch of tinyfs (`tinyfs::blkdev::MAX_INFLIGHT` = 32
//   bios): it keeps every bio of a batch until the whole batch is waited for.

/// Whether the pools are at their minimum (cargo feature `min-pools`).
pub const MIN_POOLS: bool = cfg!(feature = "min-pools");

/// Bios in the slab shared by the split set and the kernel's own I/O set.
pub const BLOCK_BIO_SLAB: usize = if MIN_POOLS {
    (BLOCK_SPLIT_RESERVE + BLOCK_IO_RESERVE) as usize + 2
} else {
    256
};
/// Bios the split set keeps in reserve, so a split can always make progress.
pub const BLOCK_SPLIT_RESERVE: u32 = if MIN_POOLS { 1 } else { 16 };
/// Bios the kernel's own I/O set (tests, demo, bench) keeps in reserve.
pub const BLOCK_IO_RESERVE: u32 = if MIN_POOLS { 1 } else { 16 };
/// Bios the kernel's own I/O set can hold at once: the slab less the split set's reserve.
pub const IO_SET_BIOS: usize = BLOCK_BIO_SLAB - BLOCK_SPLIT_RESERVE as usize;
/// Vector arrays in the block layer's slabs for the size classes 1, 4, 16, 64, 128 and 256
/// entries (`blk::BVEC_CLASSES`), in that order.
pub const BLOCK_BVEC_1: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 64 };
/// See [`BLOCK_BVEC_1`]: 4-entry arrays.
pub const BLOCK_BVEC_4: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 64 };
/// See [`BLOCK_BVEC_1`]: 16-entry arrays.
pub const BLOCK_BVEC_16: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 32 };
/// See [`BLOCK_BVEC_1`]: 64-entry arrays.
pub const BLOCK_BVEC_64: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 16 };
/// See [`BLOCK_BVEC_1`]: 128-entry arrays.
pub const BLOCK_BVEC_128: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 8 };
/// See [`BLOCK_BVEC_1`]: 256-entry arrays.
pub const BLOCK_BVEC_256: usize = if MIN_POOLS { MIN_BVEC_CLASS } else { 4 };
/// Vector arrays of each class the block layer's vector pools keep in reserve.
pub const BLOCK_BVEC_RESERVE: u32 = if MIN_POOLS { 1 } else { 2 };
/// The smallest vector class allowed: its reserve plus one.
const MIN_BVEC_CLASS: usize = BLOCK_BVEC_RESERVE as usize + 1;

// ---- Filesystem bio pools (`fs::FS_SET`) ----

/// Bios in the filesystem's own slab.
pub const FS_BIO_SLAB: usize = if MIN_POOLS {
    tinyfs::blkdev::MAX_INFLIGHT
} else {
    64
};
/// Bios the filesystem set keeps in reserve.
pub const FS_BIO_RESERVE: u32 = if MIN_POOLS { 1 } else { 8 };
/// Vector arrays in the filesystem's slabs, classes 1, 4, 16, 64 and 128 entries (tinyfs
/// bios have one segment, inline in the bio: these pools only back its reserves).
pub const FS_BVEC_SMALL: usize = if MIN_POOLS { 1 } else { 8 };
/// 256-entry vector arrays of the filesystem (see [`FS_BVEC_SMALL`]).
pub const FS_BVEC_256: usize = if MIN_POOLS { 1 } else { 40 };
/// Vector arrays of each class the filesystem's vector pools keep in reserve.
pub const FS_BVEC_RESERVE: u32 = if MIN_POOLS { 1 } else { 2 };

// ---- Filesystem instances (`fs::Instance`) ----

/// Filesystem instances mounted at once, each over its own device.
pub const FS_INSTANCES: usize = 3;
/// Node frames of an instance's B+tree cache (4 KiB each; at least `tinyfs::v2::MIN_FRAMES`):
/// 2 MiB holds the interior nodes and a third of the leaves of a directory of 100,000
/// entries, so operations there cost within 2x of those in a directory of 100 (64 frames:
/// 2.6x for `create`; docs/tinyfs.md). The cache's lookups and victim choice cost the same
/// at any size.
pub const FS_NODE_FRAMES: usize = 512;
/// Free-space groups an instance caches (two bitmap blocks each).
pub const FS_GROUPS: usize = 8;
/// Bytes of an instance's data buffer: the largest data I/O (one 1 MiB bio).
pub const FS_DATA_BYTES: usize = 1 << 20;

const _: () = {
    assert!(BLOCK_SPLIT_RESERVE >= 1 && BLOCK_IO_RESERVE >= 1 && FS_BIO_RESERVE >= 1);
    assert!(BLOCK_BVEC_RESERVE >= 1 && FS_BVEC_RESERVE >= 1);
    assert!(BLOCK_BIO_SLAB >= (BLOCK_SPLIT_RESERVE + BLOCK_IO_RESERVE) as usize + 2);
    let classes = [
        BLOCK_BVEC_1,
        BLOCK_BVEC_4,
        BLOCK_BVEC_16,
        BLOCK_BVEC_64,
        BLOCK_BVEC_128,
        BLOCK_BVEC_256,
    ];
    let mut i = 0;
    while i < classes.len() {
        assert!(classes[i] >= MIN_BVEC_CLASS);
        i += 1;
    }
    assert!(FS_BIO_SLAB >= tinyfs::blkdev::MAX_INFLIGHT);
    assert!(FS_BIO_SLAB >= FS_BIO_RESERVE as usize);
    assert!(FS_BVEC_SMALL >= FS_BVEC_RESERVE as usize);
    assert!(FS_BVEC_256 >= FS_BVEC_RESERVE as usize);
};

// ---- Drivers ----

/// How long a request may be outstanding on a virtio-blk disk before the queue times it out.
pub const VIRTIO_TIMEOUT_NS: u64 = 5_000_000_000;
/// How long a request may be outstanding on an NVMe namespace before the queue times it out.
pub const NVME_TIMEOUT_NS: u64 = 5_000_000_000;
/// How long a request may be outstanding on an AHCI disk before the queue times it out.
pub const AHCI_TIMEOUT_NS: u64 = 5_000_000_000;
/// Outstanding requests are checked for timeouts at most this often.
pub const TIMEOUT_SCAN_NS: u64 = 100_000_000;
/// Kernel command-line key that overrides every disk's request timeout, in milliseconds
/// (`blk_timeout_ms=200`): the timeout profiles shorten it so that requests held back by a
/// throttled QEMU drive outlive it. Absent, zero or not a number: the defaults above.
pub const BLOCK_TIMEOUT_ARG: &str = "blk_timeout_ms";

/// The request timeout of a disk whose default is `default_ns`: `blk_timeout_ms=N` (N > 0) on
/// the kernel command line replaces it by N milliseconds, for every disk; otherwise the default.
/// Read once per disk, when its queue is set up.
pub fn block_timeout_ns(default_ns: u64) -> u64 {
    crate::boot::cmdline_arg(crate::boot_info().cmdline, BLOCK_TIMEOUT_ARG)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(default_ns, |ms| ms.saturating_mul(1_000_000))
}

/// PCI vendor ID of the NVMe controller the kernel drives (QEMU's `nvme`).
pub const NVME_VENDOR_ID: u16 = 0x1b36;
/// PCI device ID of the NVMe controller the kernel drives (QEMU's `nvme`).
pub const NVME_DEVICE_ID: u16 = 0x0010;
/// PCI `(vendor, device)` IDs taken as virtio-blk, tried in this order: the modern device,
/// then the transitional one (the values are the virtio specification's, kept by the driver).
pub const VIRTIO_BLK_PCI_IDS: [(u16, u16); 2] = [
    (
        virtio_blk::pci::VENDOR_ID,
        virtio_blk::pci::DEVICE_ID_MODERN,
    ),
    (
        virtio_blk::pci::VENDOR_ID,
        virtio_blk::pci::DEVICE_ID_TRANSITIONAL,
    ),
];
/// PCI `(class, subclass, programming interface)` of an AHCI 1.0 SATA controller: AHCI
/// controllers are matched by class, not by ID.
pub const AHCI_CLASS: (u8, u8, u8) = (0x01, 0x06, 0x01);

// ---- Memory ----

/// Bytes of DMA-able memory (`dma.rs`): rings, command tables, data buffers of the tests and
/// benches, the filesystem instances' memory (3.2 MiB each, kept once taken).
pub const DMA_BYTES: usize = 24 << 20;
