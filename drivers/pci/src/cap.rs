//! Capability lists: the standard list (0x40..0x100) and PCIe extended capabilities.
//!
//! Both walks are bounded so that a corrupt or hostile list (a loop, a pointer into the
//! header, a misaligned pointer) ends the walk instead of hanging enumeration.

use heapless::Vec;

use crate::config::{Bdf, ConfigAccess};
use crate::regs::{CONFIG_SPACE_LEN, EXT_CAP_START, STATUS_CAP_LIST};

/// Capabilities recorded per function, at most. A virtio device has about eight.
pub const MAX_CAPS: usize = 16;

/// Capability IDs of the standard list.
pub mod id {
    pub use crate::regs::{
        CAP_ID_MSI as MSI, CAP_ID_MSIX as MSIX, CAP_ID_PCIE as PCIE, CAP_ID_PM as POWER_MANAGEMENT,
        CAP_ID_VENDOR as VENDOR,
    };
}

/// One entry of the standard capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID (see [`id`]).
    pub id: u8,
    /// Offset of the capability in configuration space.
    pub offset: u8,
}

/// The standard capability list of a function, as found during enumeration.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    entries: Vec<Capability, MAX_CAPS>,
    truncated: bool,
}

impl Capabilities {
    /// The capabilities, in list order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.entries.iter().copied()
    }

    /// Offset of the first capability with `id`.
    pub fn find(&self, id: u8) -> Option<u8> {
        self.entries.iter().find(|c| c.id == id).map(|c| c.offset)
    }

    /// Offsets of every capability with `id`, in list order (a function may carry several of
    /// one kind, vendor-specific ones above all).
    pub fn find_all(&self, id: u8) -> impl Iterator<Item = u8> + '_ {
        self.entries
            .iter()
            .filter(move |c| c.id == id)
            .map(|c| c.offset)
    }

    /// Whether the walk stopped early: a loop, a pointer into the header, a vanished device,
    /// or more than [`MAX_CAPS`] entries. The entries found before that are kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Walks the standard list of `bdf`, starting from the pointer register `ptr_reg`.
///
/// Pointers are dword-aligned (the low two bits are reserved and ignored) and must lie in
/// 0x40..0x100; every dword may be visited once, which bounds the walk to 48 steps.
pub(crate) fn walk<C: ConfigAccess + ?Sized>(
    cfg: &C,
    bdf: Bdf,
    status: u16,
    ptr_reg: u16,
) -> Capabilities {
    let mut caps = Capabilities::default();
    if status & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut visited: u64 = 0;
    let mut ptr = cfg.read8(bdf, ptr_reg) & 0xfc;
    while ptr != 0 {
        let bit = 1u64 << (ptr / 4);
        if ptr < 0x40 || visited & bit != 0 {
            caps.truncated = true;
            break;
        }
        visited |= bit;
        let header = cfg.read32(bdf, u16::from(ptr));
        if header == u32::MAX {
            caps.truncated = true;
            break;
        }
        let cap = Capability {
            id: header as u8,
            offset: ptr,
        };
        if caps.entries.push(cap).is_err() {
            caps.truncated = true;
            break;
        }
        ptr = (header >> 8) as u8 & 0xfc;
    }
    caps
}

/// Most extended capabilities a walk visits: one per dword of extended space.
const MAX_EXT_STEPS: usize = (CONFIG_SPACE_LEN as usize - EXT_CAP_START as usize) / 4;

/// Offset of the first PCIe extended capability with `id`, walking from 0x100.
///
/// The walk stops at an empty or all-ones header, a next pointer below 0x100, or after
/// [`MAX_EXT_STEPS`] steps (so a loop ends).
pub(crate) fn find_ext<C: ConfigAccess + ?Sized>(cfg: &C, bdf: Bdf, id: u16) -> Option<u16> {
    let mut off = EXT_CAP_START;
    for _ in 0..MAX_EXT_STEPS {
        let header = cfg.read32(bdf, off);
        if header == 0 || header == u32::MAX {
            return None;
        }
        if header as u16 == id {
            return Some(off);
        }
        let next = (header >> 20) as u16 & 0xffc;
        if next < EXT_CAP_START {
            return None;
        }
        off = next;
    }
    None
}
