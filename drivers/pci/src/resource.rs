//! Address windows and BAR assignment.
//!
//! Every BAR is (re)assigned, whatever firmware left behind. The layout is computed per bus:
//! the items on a bus are the BARs of the functions on it and the windows of the bridges on
//! it; they are placed in order of decreasing alignment, which packs naturally aligned
//! power-of-two blocks without holes. A bridge's window is sized beforehand by laying out its
//! subtree the same way from address 0 (bottom-up, deepest bridges first) and rounding to the
//! bridge granule (1 MiB memory, 4 KiB I/O).
//!
//! Policy:
//! - Memory BARs take at least 4 KiB, so no two functions share a page.
//! - 64-bit BARs on the first bus go to the 64-bit window when one is given; whatever does not
//!   fit there, and every memory BAR behind a bridge, comes from the 32-bit window (a 64-bit
//!   BAR may hold a 32-bit address). Bridges' prefetchable windows are left disabled:
//!   prefetchable BARs behind a bridge sit in its non-prefetchable window, which is allowed.
//! - I/O BARs come from the I/O window, or fail with [`PciError::NoWindow`] without one.
//! - A BAR that does not fit fails with [`PciError::WindowExhausted`]; placement goes on with
//!   the smaller items.

use hal::PhysAddr;

use crate::PciError;
use crate::bar::{self, Bar, BarKind, BarRequest, BarSlot, MAX_BARS};
use crate::config::{self, ConfigAccess};
use crate::function::{BridgeInfo, PciFunction};
use crate::regs::{
    BRIDGE_IO_GRANULE, BRIDGE_MEM_GRANULE, CMD_BUS_MASTER, CMD_IO, CMD_MEMORY, IO_BASE_LIMIT,
    IO_UPPER, MEM_BASE_LIMIT, PREF_BASE_LIMIT, PREF_BASE_UPPER, PREF_LIMIT_UPPER,
};

/// Smallest block a memory BAR is given.
pub const MIN_MEM_BLOCK: u64 = 4096;

/// A range of bus addresses that BARs may be given, and where the CPU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First address on the PCI side.
    pub pci_base: u64,
    /// The CPU address of `pci_base`.
    pub cpu_base: PhysAddr,
    /// Length in bytes.
    pub size: u64,
}

impl Window {
    /// A window the CPU sees at the same addresses as the bus (memory on q35 and virt).
    pub const fn new(base: PhysAddr, size: u64) -> Window {
        Window {
            pci_base: base.0,
            cpu_base: base,
            size,
        }
    }

    /// A window whose bus addresses `pci_base..` appear to the CPU at `cpu_base..`, like the
    /// riscv64 virt I/O space (ports 0.. at CPU 0x0300_0000).
    pub const fn translated(pci_base: u64, cpu_base: PhysAddr, size: u64) -> Window {
        Window {
            pci_base,
            cpu_base,
            size,
        }
    }

    fn end(&self) -> Option<u64> {
        self.pci_base.checked_add(self.size)
    }

    fn cpu_addr(&self, pci: u64) -> PhysAddr {
        self.cpu_base.add(pci - self.pci_base)
    }

    fn check(&self, limit: u64) -> Result<(), PciError> {
        match self.end() {
            Some(end) if self.size > 0 && end <= limit => Ok(()),
            _ => Err(PciError::BadWindow),
        }
    }
}

/// The address ranges enumeration hands out. The boot crate reads them from the device tree
/// (`ranges` of the PCI host node) or knows them for q35 (the hole below 4 GiB minus what
/// the chipset claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Windows {
    /// Memory below 4 GiB (PCI addresses). Without it only 64-bit BARs on the first bus can
    /// be assigned.
    pub mem32: Option<Window>,
    /// Memory above 4 GiB, for 64-bit BARs on the first bus.
    pub mem64: Option<Window>,
    /// I/O ports. Without it I/O BARs stay disabled. Keep it below 64 KiB: some I/O BARs and
    /// bridges only decode 16-bit port numbers.
    pub io: Option<Window>,
}

impl Windows {
    pub(crate) fn check(&self) -> Result<(), PciError> {
        const FOUR_GIB: u64 = 1 << 32;
        if let Some(w) = &self.mem32 {
            w.check(FOUR_GIB)?;
        }
        if let Some(w) = &self.mem64 {
            w.check(u64::MAX)?;
        }
        if let Some(w) = &self.io {
            w.check(FOUR_GIB)?;
        }
        Ok(())
    }
}

/// What a bridge's subtree needs from one space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Need {
    pub size: u64,
    pub align: u64,
}

/// What BAR assignment keeps about one function beside the [`PciFunction`] it fills in, at the
/// same index of a list of its own: state that only enumeration needs, gone once every BAR is
/// settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scratch {
    /// BARs sized but not yet placed (their slot in the function reads
    /// `Failed(request, BarNotAssigned)` until they are).
    pub pending: [Option<BarRequest>; MAX_BARS],
    /// Index (in the enumeration list) of the bridge above, `None` on the first bus.
    pub parent: Option<u16>,
    /// What the bridge's subtree needs, memory and I/O (bridges only).
    pub needs: [Need; 2],
    /// Command register as found.
    pub command: u16,
}

/// Index of the memory and I/O needs in [`Scratch::needs`].
const MEM: usize = 0;
const IO: usize = 1;

/// One placement pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// 64-bit memory BARs of the first bus into the 64-bit window; misses stay pending.
    Mem64,
    /// All pending memory BARs and bridge memory windows into the 32-bit window.
    Mem,
    /// I/O BARs and bridge I/O windows.
    Io,
}

impl Pass {
    fn takes(self, req: &BarRequest) -> bool {
        match self {
            Pass::Mem64 => req.kind == BarKind::Mem64,
            Pass::Mem => req.kind.is_memory(),
            Pass::Io => req.kind == BarKind::Io,
        }
    }

    fn need_index(self) -> Option<usize> {
        match self {
            Pass::Mem64 => None,
            Pass::Mem => Some(MEM),
            Pass::Io => Some(IO),
        }
    }

    fn granule(self) -> u64 {
        match self {
            Pass::Io => BRIDGE_IO_GRANULE,
            _ => BRIDGE_MEM_GRANULE,
        }
    }
}

/// Block size and alignment of a BAR in the layout.
fn block(req: &BarRequest) -> u64 {
    if req.kind.is_memory() {
        req.size.max(MIN_MEM_BLOCK)
    } else {
        req.size
    }
}

/// A bump allocator over `cursor..end`.
#[derive(Debug, Clone, Copy)]
struct Region {
    cursor: u64,
    end: u64,
    max_align: u64,
}

impl Region {
    fn new(base: u64, end: u64) -> Region {
        Region {
            cursor: base,
            end,
            max_align: 1,
        }
    }

    fn take(&mut self, size: u64, align: u64) -> Option<u64> {
        let addr = self.cursor.checked_add(align - 1)? & !(align - 1);
        let end = addr.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.cursor = end;
        self.max_align = self.max_align.max(align);
        Some(addr)
    }
}

/// Places the items of the bus below `parent` (`None`: the first bus) into `region`.
///
/// With `commit` false this is a dry run from address 0 that only measures; with `commit` it
/// programs BARs, records bridge windows and recurses below each bridge.
fn place<C: ConfigAccess + ?Sized>(
    list: &mut [PciFunction<'_, C>],
    scratch: &mut [Scratch],
    parent: Option<u16>,
    pass: Pass,
    mut region: Region,
    window: &Window,
    commit: bool,
) -> Region {
    for shift in (0..64).rev() {
        let align = 1u64 << shift;
        for i in 0..list.len().min(scratch.len()) {
            if scratch[i].parent != parent {
                continue;
            }
            for slot in 0..MAX_BARS {
                let Some(req) = scratch[i].pending[slot] else {
                    continue;
                };
                if !pass.takes(&req) || block(&req) != align {
                    continue;
                }
                let addr = region.take(align, align);
                if !commit {
                    continue;
                }
                let f = &mut list[i];
                match addr {
                    Some(addr) => {
                        bar::program(f.cfg, f.bdf, slot, req.kind, addr);
                        f.bars[slot] = BarSlot::Assigned(Bar {
                            kind: req.kind,
                            prefetchable: req.prefetchable,
                            pci_addr: addr,
                            cpu_addr: window.cpu_addr(addr),
                            size: req.size,
                        });
                        scratch[i].pending[slot] = None;
                    }
                    None if pass != Pass::Mem64 => {
                        f.bars[slot] = BarSlot::Failed(req, PciError::WindowExhausted);
                        scratch[i].pending[slot] = None;
                    }
                    None => {}
                }
            }
            let Some(n) = pass.need_index() else { continue };
            if list[i].bridge.is_none() {
                continue;
            }
            let need = scratch[i].needs[n];
            if need.size == 0 || need.align != align {
                continue;
            }
            let addr = region.take(need.size, need.align);
            if !commit {
                continue;
            }
            let below = match addr {
                Some(addr) => Region::new(addr, addr + need.size),
                None => Region::new(0, 0),
            };
            if let Some(b) = list[i].bridge.as_mut() {
                let win = addr.map(|a| (a, need.size));
                if n == MEM {
                    b.mem_window = win
                } else {
                    b.io_window = win
                }
            }
            place(list, scratch, Some(i as u16), pass, below, window, true);
        }
    }
    region
}

/// Measures every bridge's needs for `pass`, deepest bridges first (they come later in the
/// list, which is in depth-first order).
fn measure<C: ConfigAccess + ?Sized>(
    list: &mut [PciFunction<'_, C>],
    scratch: &mut [Scratch],
    pass: Pass,
    window: &Window,
) {
    let Some(n) = pass.need_index() else { return };
    for i in (0..list.len().min(scratch.len())).rev() {
        if list[i].bridge.is_none() {
            continue;
        }
        let used = place(
            list,
            scratch,
            Some(i as u16),
            pass,
            Region::new(0, u64::MAX),
            window,
            false,
        );
        let granule = pass.granule();
        scratch[i].needs[n] = if used.cursor == 0 {
            Need::default()
        } else {
            let size = used
                .cursor
                .checked_next_multiple_of(granule)
                .unwrap_or(u64::MAX);
            Need {
                size,
                align: used.max_align.max(granule),
            }
        };
    }
}

/// Marks every pending BAR that `pass` takes as failed with `error`.
fn fail_pending<C: ConfigAccess + ?Sized>(
    list: &mut [PciFunction<'_, C>],
    scratch: &mut [Scratch],
    pass: Pass,
    error: PciError,
) {
    for (f, s) in list.iter_mut().zip(scratch.iter_mut()) {
        for (b, p) in f.bars.iter_mut().zip(s.pending.iter_mut()) {
            if let Some(req) = *p
                && pass.takes(&req)
            {
                *b = BarSlot::Failed(req, error);
                *p = None;
            }
        }
    }
}

/// Runs one pass over the whole tree with `window`, or fails its BARs without one.
fn run<C: ConfigAccess + ?Sized>(
    list: &mut [PciFunction<'_, C>],
    scratch: &mut [Scratch],
    pass: Pass,
    window: Option<&Window>,
) {
    let Some(w) = window else {
        fail_pending(list, scratch, pass, PciError::NoWindow);
        return;
    };
    measure(list, scratch, pass, w);
    let end = w.end().unwrap_or(u64::MAX);
    place(
        list,
        scratch,
        None,
        pass,
        Region::new(w.pci_base, end),
        w,
        true,
    );
}

/// Assigns every BAR of `list` (whose enumeration state `scratch` holds, index for index),
/// programs bridge windows and turns decoding on where all BARs of a space got an address.
pub(crate) fn assign<C: ConfigAccess + ?Sized>(
    list: &mut [PciFunction<'_, C>],
    scratch: &mut [Scratch],
    windows: &Windows,
) {
    if let Some(w) = &windows.mem64 {
        let end = w.end().unwrap_or(u64::MAX);
        place(
            list,
            scratch,
            None,
            Pass::Mem64,
            Region::new(w.pci_base, end),
            w,
            true,
        );
    }
    run(list, scratch, Pass::Mem, windows.mem32.as_ref());
    run(list, scratch, Pass::Io, windows.io.as_ref());
    for (f, s) in list.iter().zip(scratch.iter()) {
        if let Some(b) = f.bridge {
            program_bridge_windows(f, &b);
        }
        let mut cmd = s.command & !(CMD_MEMORY | CMD_IO);
        for (memory, bit) in [(true, CMD_MEMORY), (false, CMD_IO)] {
            let on = match f.bridge {
                Some(b) if memory => b.mem_window.is_some(),
                Some(b) => b.io_window.is_some(),
                // Nothing of this space to assign: keep what was found, for functions that
                // decode fixed legacy ranges (an ISA bridge's ports).
                None if !f.has_bars(memory) => s.command & bit != 0,
                None => f.all_assigned(memory),
            };
            if on {
                cmd |= bit;
            }
        }
        if f.bridge.is_some() {
            // Devices below a bridge reach memory (DMA, MSI) only through it.
            cmd |= CMD_BUS_MASTER;
        }
        config::write_command(f.cfg, f.bdf, cmd);
    }
}

/// Writes a bridge's memory and I/O windows (or closes them) and closes its prefetchable one.
fn program_bridge_windows<C: ConfigAccess + ?Sized>(f: &PciFunction<'_, C>, b: &BridgeInfo) {
    let (cfg, bdf) = (f.cfg, f.bdf);
    // A window is closed by a base above its limit.
    let mem = match b.mem_window {
        Some((base, size)) => {
            let last = base + size - 1;
            ((base >> 16) as u32 & 0xfff0) | ((last >> 16) as u32 & 0xfff0) << 16
        }
        None => 0x0000_fff0,
    };
    cfg.write32(bdf, MEM_BASE_LIMIT, mem);
    cfg.write32(bdf, PREF_BASE_LIMIT, 0x0000_fff0);
    cfg.write32(bdf, PREF_BASE_UPPER, 0);
    cfg.write32(bdf, PREF_LIMIT_UPPER, 0);
    // The upper half of the I/O base/limit dword is the secondary status register
    // (write-one-to-clear): zeros leave it alone.
    let (io, io_upper) = match b.io_window {
        Some((base, size)) => {
            let last = base + size - 1;
            (
                ((base >> 8) as u32 & 0xf0) | ((last >> 8) as u32 & 0xf0) << 8,
                (base >> 16) as u32 & 0xffff | ((last >> 16) as u32 & 0xffff) << 16,
            )
        }
        None => (0x0000_00f0, 0),
    };
    cfg.write32(bdf, IO_UPPER, io_upper);
    cfg.write32(bdf, IO_BASE_LIMIT, io);
}
