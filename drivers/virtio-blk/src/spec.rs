//! virtio-blk wire formats and numbers (virtio 1.2, section 5.2).

/// Request types (`type` of the request header).
pub mod req_type {
    /// Read sectors into the device-writable buffers.
    pub const IN: u32 = 0;
    /// Write sectors from the device-readable buffers.
    pub const OUT: u32 = 1;
    /// Flush the volatile write cache.
    pub const FLUSH: u32 = 4;
    /// Read the 20-byte device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard a range (one [`super::DiscardWriteZeroes`] segment).
    pub const DISCARD: u32 = 11;
    /// Write zeroes to a range (one [`super::DiscardWriteZeroes`] segment).
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values the device writes last.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported by the device.
    pub const UNSUPP: u8 = 2;
}

/// Feature bits the driver looks at.
pub mod feature {
    /// `size_max` is valid.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The device is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Flush is supported.
    pub const FLUSH: u64 = 1 << 9;
    /// Discard is supported (`max_discard_*` valid).
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes is supported (`max_write_zeroes_*` valid).
    pub const WRITE_ZEROES: u64 = 1 << 14;
    /// `VIRTIO_BLK_F_MQ`: the device has `num_queues` request queues.
    pub const MQ: u64 = 1 << 12;
    /// Indirect descriptors.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A modern (virtio 1.x) device.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Byte offsets in the device configuration space.
pub mod config {
    /// `le64 capacity` in 512-byte sectors (read as two 32-bit halves).
    pub const CAPACITY: usize = 0;
    /// `le32 size_max`: largest segment.
    pub const SIZE_MAX: usize = 8;
    /// `le32 seg_max`: most data segments per request.
    pub const SEG_MAX: usize = 12;
    /// `le32 blk_size`: logical block size.
    pub const BLK_SIZE: usize = 20;
    /// `le32 max_discard_sectors`.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `le16 num_queues` (with `VIRTIO_BLK_F_MQ`).
    pub const NUM_QUEUES: usize = 34;
    /// `le32 max_write_zeroes_sectors`.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
}

/// The header every request starts with (device-readable).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqHeader {
    /// One of [`req_type`].
    pub type_: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// First 512-byte sector (ignored by flush).
    pub sector: u64,
}

/// The data segment of a discard or write-zeroes request (device-readable).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardWriteZeroes {
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub num_sectors: u32,
    /// Bit 0: unmap (write-zeroes may deallocate).
    pub flags: u32,
}

/// Virtio-PCI common configuration offsets the driver programs itself (MSI-X vectors).
pub mod pci_common {
    /// `le16 msix_config`.
    pub const MSIX_CONFIG: usize = 0x10;
    /// `le16 queue_select`.
    pub const QUEUE_SELECT: usize = 0x16;
    /// `le16 queue_msix_vector`.
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    /// `le16 queue_notify_off`.
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    /// "No vector".
    pub const NO_VECTOR: u16 = 0xffff;
    /// Vendor-specific capability: `cfg_type` of the common configuration.
    pub const CAP_COMMON_CFG: u8 = 1;
    /// Vendor-specific capability: `cfg_type` of the notification area (followed by
    /// `le32 notify_off_multiplier` at byte 16).
    pub const CAP_NOTIFY_CFG: u8 = 2;
}

/// Used-ring layout (split virtqueue), for the driver's own reads of what the device wrote.
pub mod used_ring {
    /// `le16 idx`.
    pub const IDX: usize = 2;
    /// First `{le32 id, le32 len}` element.
    pub const RING: usize = 4;
    /// Bytes per element.
    pub const ELEM: usize = 8;
}

const _: () = assert!(core::mem::size_of::<ReqHeader>() == 16);
const _: () = assert!(core::mem::size_of::<DiscardWriteZeroes>() == 16);
