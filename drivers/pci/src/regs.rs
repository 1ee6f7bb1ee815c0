//! Configuration-space layout: register offsets and bits (PCI Local Bus 3.0, PCIe Base).

// Common header (types 0 and 1).
pub const VENDOR_ID: u16 = 0x00; // vendor [15:0], device [31:16]
pub const COMMAND: u16 = 0x04; // command [15:0], status [31:16]
pub const CLASS_REV: u16 = 0x08; // revision [7:0], prog-if, subclass, class [31:24]
pub const HEADER: u16 = 0x0c; // cache line, latency, header type [23:16], BIST
pub const BAR0: u16 = 0x10;
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT: u16 = 0x3c; // line [7:0], pin [15:8]

// Type 0 only.
pub const ROM_BAR_TYPE0: u16 = 0x30;

// Type 1 (PCI-to-PCI bridge) only.
pub const BUS_NUMBERS: u16 = 0x18; // primary, secondary, subordinate, secondary latency
pub const IO_BASE_LIMIT: u16 = 0x1c; // I/O base [7:0], I/O limit [15:8], secondary status
pub const MEM_BASE_LIMIT: u16 = 0x20; // memory base [15:0], memory limit [31:16]
pub const PREF_BASE_LIMIT: u16 = 0x24;
pub const PREF_BASE_UPPER: u16 = 0x28;
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
pub const IO_UPPER: u16 = 0x30; // I/O base upper 16 [15:0], I/O limit upper 16 [31:16]
pub const ROM_BAR_TYPE1: u16 = 0x38;

// Command register bits.
pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

// Status register bits.
pub const STATUS_CAP_LIST: u16 = 1 << 4;

// Header type byte.
pub const HEADER_TYPE_MASK: u8 = 0x7f;
pub const HEADER_MULTI_FUNCTION: u8 = 0x80;

// BAR low bits.
pub const BAR_IO: u32 = 1 << 0;
pub const BAR_MEM_TYPE_MASK: u32 = 0b110;
pub const BAR_MEM_TYPE_32: u32 = 0b000;
pub const BAR_MEM_TYPE_1M: u32 = 0b010; // legacy "below 1 MiB", treated as 32-bit
pub const BAR_MEM_TYPE_64: u32 = 0b100;
pub const BAR_MEM_PREFETCH: u32 = 1 << 3;

// Bridge window granularity.
pub const BRIDGE_MEM_GRANULE: u64 = 1 << 20;
pub const BRIDGE_IO_GRANULE: u64 = 1 << 12;

// Capability IDs (standard list).
/// Power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Message signalled interrupts.
pub const CAP_ID_MSI: u8 = 0x05;
/// Vendor-specific (virtio uses several).
pub const CAP_ID_VENDOR: u8 = 0x09;
/// PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

// MSI capability (offsets from the capability).
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
pub const MSI_CTRL_MMC_SHIFT: u16 = 1; // multiple message capable [3:1]
pub const MSI_CTRL_MME_MASK: u16 = 0b111 << 4; // multiple message enable [6:4]
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
pub const MSI_CTRL_PER_VECTOR_MASK: u16 = 1 << 8;
pub const MSI_ADDR_LO: u16 = 0x04;
pub const MSI_ADDR_HI: u16 = 0x08; // 64-bit variant only
pub const MSI_DATA_32: u16 = 0x08;
pub const MSI_MASK_32: u16 = 0x0c;
pub const MSI_PENDING_32: u16 = 0x10;
pub const MSI_DATA_64: u16 = 0x0c;
pub const MSI_MASK_64: u16 = 0x10;
pub const MSI_PENDING_64: u16 = 0x14;

// MSI-X capability.
pub const MSIX_CTRL_TABLE_SIZE: u16 = 0x7ff;
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
pub const MSIX_TABLE: u16 = 0x04; // BIR [2:0], offset [31:3]
pub const MSIX_PBA: u16 = 0x08;
pub const MSIX_BIR_MASK: u32 = 0b111;
pub const MSIX_ENTRY_SIZE: usize = 16;
pub const MSIX_ENTRY_ADDR_LO: usize = 0x0;
pub const MSIX_ENTRY_ADDR_HI: usize = 0x4;
pub const MSIX_ENTRY_DATA: usize = 0x8;
pub const MSIX_ENTRY_CTRL: usize = 0xc;
pub const MSIX_ENTRY_MASKED: u32 = 1 << 0;

// Power management capability.
pub const PM_CTRL: u16 = 0x04; // PMCSR [15:0]
pub const PM_STATE_MASK: u16 = 0b11;
pub const PM_PME_STATUS: u16 = 1 << 15;

// Extended capabilities (PCIe, from 0x100).
pub const EXT_CAP_START: u16 = 0x100;
pub const CONFIG_SPACE_LEN: u16 = 0x1000;
