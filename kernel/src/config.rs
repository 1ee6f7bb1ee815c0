//! Kernel configuration: the sizes, limits and hardware IDs that are data rather than logic,
//! in one place. Everything is a compile-time constant (the kernel has no heap: pools and the
//! DMA region are statics sized here), except the request timeouts, which the kernel command
//! line may shorten ([`block_timeout_ns`]).

// ---- Block layer bio pools (`block::SPLIT_SET`, `block::IO_SET`) ----

/// Bios in the slab shared by the split set and the kernel's own I/O set.
pub const BLOCK_BIO_SLAB: usize = 256;
/// Bios the split set keeps in reserve, so a split can always make progress.
pub const BLOCK_SPLIT_RESERVE: u32 = 16;
/// Bios the kernel's own I/O set (tests, demo, bench) keeps in reserve.
pub const BLOCK_IO_RESERVE: u32 = 16;
/// Vector arrays in the block layer's slabs for the size classes 1, 4, 16, 64, 128 and 256
/// entries (`blk::BVEC_CLASSES`), in that order.
pub const BLOCK_BVEC_1: usize = 64;
/// See [`BLOCK_BVEC_1`]: 4-entry arrays.
pub const BLOCK_BVEC_4: usize = 64;
/// See [`BLOCK_BVEC_1`]: 16-entry arrays.
pub const BLOCK_BVEC_16: usize = 32;
/// See [`BLOCK_BVEC_1`]: 64-entry arrays.
pub const BLOCK_BVEC_64: usize = 16;
/// See [`BLOCK_BVEC_1`]: 128-entry arrays.
pub const BLOCK_BVEC_128: usize = 8;
/// See [`BLOCK_BVEC_1`]: 256-entry arrays.
pub const BLOCK_BVEC_256: usize = 4;
/// Vector arrays of each class the block layer's vector pools keep in reserve.
pub const BLOCK_BVEC_RESERVE: u32 = 2;

// ---- Filesystem bio pools (`fs::FS_SET`) ----

/// Bios in the filesystem's own slab.
pub const FS_BIO_SLAB: usize = 64;
/// Bios the filesystem set keeps in reserve.
pub const FS_BIO_RESERVE: u32 = 8;
/// Vector arrays in the filesystem's slabs, classes 1, 4, 16, 64 and 128 entries.
pub const FS_BVEC_SMALL: usize = 8;
/// 256-entry vector arrays of the filesystem: one for every bio of a full batch (at most 32
/// in flight) plus the reserve.
pub const FS_BVEC_256: usize = 40;
/// Vector arrays of each class the filesystem's vector pools keep in reserve.
pub const FS_BVEC_RESERVE: u32 = 2;

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
/// benches.
pub const DMA_BYTES: usize = 16 << 20;
