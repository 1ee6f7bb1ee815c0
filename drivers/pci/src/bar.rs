//! Base address registers: what a BAR asks for, what it was given, and sizing.

use hal::PhysAddr;

use crate::PciError;
use crate::config::{Bdf, ConfigAccess};
use crate::regs::{
    BAR_IO, BAR_MEM_PREFETCH, BAR_MEM_TYPE_1M, BAR_MEM_TYPE_32, BAR_MEM_TYPE_64, BAR_MEM_TYPE_MASK,
    BAR0,
};

/// Most BARs a header has (type 0: six, type 1: two).
pub const MAX_BARS: usize = 6;

/// The address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Memory, 32-bit address.
    Mem32,
    /// Memory, 64-bit address (the BAR takes two slots).
    Mem64,
    /// I/O ports.
    Io,
}

impl BarKind {
    /// Whether the BAR decodes memory.
    pub fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }
}

/// What a BAR asks for, as read back while sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRequest {
    /// Address space and width.
    pub kind: BarKind,
    /// Memory the device allows to be prefetched (no read side effects).
    pub prefetchable: bool,
    /// Size in bytes, a power of two.
    pub size: u64,
}

/// A BAR with the address it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Address space and width.
    pub kind: BarKind,
    /// Memory the device allows to be prefetched.
    pub prefetchable: bool,
    /// The address written into the BAR (bus address; an I/O port number for I/O BARs).
    pub pci_addr: u64,
    /// Where the CPU reaches it: `pci_addr` translated through the window it came from. For
    /// I/O BARs on x86 this is the port number again; on riscv64 virt an MMIO address.
    pub cpu_addr: PhysAddr,
    /// Size in bytes, a power of two; `pci_addr` is a multiple of it.
    pub size: u64,
}

/// One BAR slot of a function after enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSlot {
    /// Not implemented (reads back zero), or beyond the header's BARs.
    Unused,
    /// The upper half of the 64-bit BAR in the slot before.
    Upper,
    /// The BAR has an address and its space is decoded.
    Assigned(Bar),
    /// The BAR could not be given an address (for example [`PciError::WindowExhausted`] or
    /// [`PciError::NoWindow`]); the BAR holds zero and, for memory, the function's memory
    /// decoding stays off.
    Failed(BarRequest, PciError),
    /// The BAR reports a reserved type, or a 64-bit BAR sits in the last slot.
    Invalid,
}

/// Outcome of sizing one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Unused,
    /// A BAR; for [`BarKind::Mem64`] the next slot is its upper half.
    Request(BarRequest),
    Invalid,
}

/// Offset of BAR `index` in the header.
pub(crate) fn bar_offset(index: usize) -> u16 {
    BAR0 + 4 * index as u16
}

/// Sizes BAR `index` of `bdf` by writing all ones and reading the mask back. The caller has
/// turned off memory and I/O decoding. The BAR (both halves for 64-bit) is left holding zero:
/// it gets its final address from the assignment pass, or stays zero if it gets none.
pub(crate) fn probe<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    index: usize,
    slots: usize,
) -> Probe {
    let off = bar_offset(index);
    let original = cfg.read32(bdf, off);
    cfg.write32(bdf, off, u32::MAX);
    let mask = cfg.read32(bdf, off);
    cfg.write32(bdf, off, 0);

    if original & BAR_IO != 0 {
        let mut addr_mask = mask & !0b11;
        if addr_mask == 0 {
            return Probe::Unused;
        }
        // A 16-bit I/O decoder has its upper half hard-wired to zero.
        if addr_mask >> 16 == 0 {
            addr_mask |= 0xffff_0000;
        }
        let size = 1u64 << addr_mask.trailing_zeros();
        return Probe::Request(BarRequest {
            kind: BarKind::Io,
            prefetchable: false,
            size,
        });
    }

    let prefetchable = original & BAR_MEM_PREFETCH != 0;
    match original & BAR_MEM_TYPE_MASK {
        BAR_MEM_TYPE_32 | BAR_MEM_TYPE_1M => {
            let addr_mask = mask & !0xf;
            if addr_mask == 0 {
                return Probe::Unused;
            }
            let size = 1u64 << addr_mask.trailing_zeros();
            Probe::Request(BarRequest {
                kind: BarKind::Mem32,
                prefetchable,
                size,
            })
        }
        BAR_MEM_TYPE_64 => {
            if index + 1 >= slots {
                return Probe::Invalid;
            }
            let hi_off = bar_offset(index + 1);
            cfg.write32(bdf, hi_off, u32::MAX);
            let hi_mask = cfg.read32(bdf, hi_off);
            cfg.write32(bdf, hi_off, 0);
            let addr_mask = u64::from(hi_mask) << 32 | u64::from(mask & !0xf);
            if addr_mask == 0 {
                return Probe::Unused;
            }
            let size = 1u64 << addr_mask.trailing_zeros();
            Probe::Request(BarRequest {
                kind: BarKind::Mem64,
                prefetchable,
                size,
            })
        }
        _ => Probe::Invalid,
    }
}

/// Writes `addr` into BAR `index` (both halves for a 64-bit BAR). The low type bits are
/// read-only, so writing the plain address keeps them.
pub(crate) fn program<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    index: usize,
    kind: BarKind,
    addr: u64,
) {
    cfg.write32(bdf, bar_offset(index), addr as u32);
    if kind == BarKind::Mem64 {
        cfg.write32(bdf, bar_offset(index + 1), (addr >> 32) as u32);
    }
}
