//! Walking the buses: finding functions, numbering bridges, sizing BARs.

use heapless::Vec;

use crate::PciError;
use crate::bar::{self, BarSlot, MAX_BARS, Probe};
use crate::cap;
use crate::config::{self, Bdf, ConfigAccess};
use crate::function::{BridgeInfo, PciFunction};
use crate::regs::{
    BUS_NUMBERS, CAP_PTR, CLASS_REV, CMD_IO, CMD_MEMORY, COMMAND, HEADER, HEADER_MULTI_FUNCTION,
    HEADER_TYPE_MASK, INTERRUPT, ROM_BAR_TYPE0, ROM_BAR_TYPE1, VENDOR_ID,
};
use crate::resource::{self, Need, Scratch, Windows};

/// What a scan found besides the functions it listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanReport {
    /// Functions found after the list was full. Their decoding is off; bridges among them
    /// were not scanned below.
    pub dropped: usize,
    /// Bridges found after the ECAM bus range ran out; they were left unnumbered.
    pub unnumbered_bridges: usize,
    /// BARs that could not be given an address.
    pub failed_bars: usize,
}

/// Where a function's INTx ends up on the first bus: the device number there and the sum of
/// device numbers to swizzle by on the way.
#[derive(Debug, Clone, Copy)]
struct IntxPath {
    root_dev: Option<u8>,
    swizzle: u8,
}

struct Scan<'a, 'l, C: ConfigAccess + ?Sized, const N: usize> {
    cfg: &'a C,
    list: &'l mut Vec<PciFunction<'a, C>, N>,
    /// What BAR assignment needs about each function of `list`, at the same index.
    scratch: &'l mut Vec<Scratch, N>,
    last_bus: u8,
    /// Highest bus number handed out so far.
    next_bus: u8,
    report: ScanReport,
}

impl<'a, C: ConfigAccess + ?Sized, const N: usize> Scan<'a, '_, C, N> {
    fn present(&self, bdf: Bdf) -> bool {
        !matches!(self.cfg.read16(bdf, VENDOR_ID), 0xffff | 0x0000)
    }

    /// Present functions on `bus`, honouring the multi-function bit of function 0.
    fn functions(&self, bus: u8) -> impl Iterator<Item = Bdf> + '_ {
        (0..32u8).flat_map(move |dev| {
            let bdf0 = Bdf::new(bus, dev, 0);
            let funcs = if !self.present(bdf0) {
                0
            } else if self.cfg.read8(bdf0, HEADER + 2) & HEADER_MULTI_FUNCTION != 0 {
                8
            } else {
                1
            };
            (0..funcs)
                .map(move |func| Bdf::new(bus, dev, func))
                .filter(|&bdf| self.present(bdf))
        })
    }

    fn scan_bus(&mut self, bus: u8, parent: Option<u16>, path: IntxPath) {
        // Bus numbers left by firmware could make two bridges claim the bus numbered next:
        // close every bridge on this bus before numbering any.
        for bdf in self.functions(bus) {
            if self.cfg.read8(bdf, HEADER + 2) & HEADER_TYPE_MASK == 1 {
                let latency = self.cfg.read32(bdf, BUS_NUMBERS) & 0xff00_0000;
                self.cfg.write32(bdf, BUS_NUMBERS, latency);
            }
        }
        for dev in 0..32 {
            let bdf0 = Bdf::new(bus, dev, 0);
            if !self.present(bdf0) {
                continue;
            }
            let multi = self.cfg.read8(bdf0, HEADER + 2) & HEADER_MULTI_FUNCTION != 0;
            let funcs = if multi { 8 } else { 1 };
            let path = IntxPath {
                root_dev: Some(path.root_dev.unwrap_or(dev)),
                swizzle: if path.root_dev.is_some() {
                    path.swizzle.wrapping_add(dev)
                } else {
                    0
                },
            };
            for func in 0..funcs {
                let bdf = Bdf::new(bus, dev, func);
                if self.present(bdf) {
                    self.scan_function(bdf, parent, path);
                }
            }
        }
    }

    fn scan_function(&mut self, bdf: Bdf, parent: Option<u16>, path: IntxPath) {
        let cfg = self.cfg;
        let command = cfg.read16(bdf, COMMAND);
        // No decoding while BARs are sized and moved.
        config::write_command(cfg, bdf, command & !(CMD_MEMORY | CMD_IO));

        let header = cfg.read8(bdf, HEADER + 2);
        let slots = match header & HEADER_TYPE_MASK {
            0 => MAX_BARS,
            1 => 2,
            _ => 0,
        };
        let mut bars = [BarSlot::Unused; MAX_BARS];
        let mut pending = [None; MAX_BARS];
        let mut i = 0;
        while i < slots {
            match bar::probe(cfg, bdf, i, slots) {
                Probe::Unused => {}
                Probe::Invalid => bars[i] = BarSlot::Invalid,
                Probe::Request(req) => {
                    bars[i] = BarSlot::Failed(req, PciError::BarNotAssigned);
                    pending[i] = Some(req);
                    if req.kind == bar::BarKind::Mem64 {
                        i += 1;
                        bars[i] = BarSlot::Upper;
                    }
                }
            }
            i += 1;
        }
        // Expansion ROMs are not used; make sure a stale one does not decode.
        match slots {
            MAX_BARS => cfg.write32(bdf, ROM_BAR_TYPE0, 0),
            2 => cfg.write32(bdf, ROM_BAR_TYPE1, 0),
            _ => {}
        }

        let status = cfg.read16(bdf, COMMAND + 2);
        let caps = if slots > 0 {
            cap::walk(cfg, bdf, status, CAP_PTR)
        } else {
            Default::default()
        };
        let function = PciFunction {
            cfg,
            bdf,
            ids: cfg.read32(bdf, VENDOR_ID),
            class_rev: cfg.read32(bdf, CLASS_REV),
            header,
            interrupt_pin: cfg.read8(bdf, INTERRUPT + 1),
            intx_root: (path.root_dev.unwrap_or(bdf.dev()), path.swizzle),
            bars,
            caps,
            bridge: None,
        };
        let scratch = Scratch {
            pending,
            parent,
            needs: [Need::default(); 2],
            command,
        };
        let is_bridge = header & HEADER_TYPE_MASK == 1;
        // The two lists have the same capacity and grow together.
        if self.list.is_full() || self.scratch.is_full() {
            self.report.dropped += 1;
            return;
        }
        let _ = self.list.push(function);
        let _ = self.scratch.push(scratch);
        if is_bridge {
            let index = self.list.len() - 1;
            self.scan_bridge(index, bdf, path);
        }
    }

    /// Numbers the bridge at `index`, scans below it, then closes its bus range.
    fn scan_bridge(&mut self, index: usize, bdf: Bdf, path: IntxPath) {
        let cfg = self.cfg;
        let latency = cfg.read32(bdf, BUS_NUMBERS) & 0xff00_0000;
        if self.next_bus >= self.last_bus {
            self.report.unnumbered_bridges += 1;
            cfg.write32(bdf, BUS_NUMBERS, latency);
            return;
        }
        self.next_bus += 1;
        let secondary = self.next_bus;
        let numbers = |sub: u8| {
            latency | u32::from(sub) << 16 | u32::from(secondary) << 8 | u32::from(bdf.bus())
        };
        // Open the range wide while scanning below: siblings scanned later get higher numbers.
        cfg.write32(bdf, BUS_NUMBERS, numbers(self.last_bus));
        self.scan_bus(secondary, Some(index as u16), path);
        let subordinate = self.next_bus;
        cfg.write32(bdf, BUS_NUMBERS, numbers(subordinate));
        self.list[index].bridge = Some(BridgeInfo {
            secondary,
            subordinate,
            ..BridgeInfo::default()
        });
    }
}

/// Scans every bus reachable from the first bus of `cfg`, numbers bridges, sizes and assigns
/// every BAR from `windows`, and fills `out` (emptied first) with the functions found (depth-first order:
/// a bridge comes before the functions below it).
///
/// Only an invalid window is an error; per-BAR failures are in each function's
/// [`BarSlot`]s and counted in the report, and functions beyond `out`'s capacity are counted
/// and left with decoding off.
///
/// While it runs it keeps the state of BAR assignment (about 140 bytes per slot of `out`) on
/// the stack.
pub fn enumerate_into<'a, C: ConfigAccess + ?Sized, const N: usize>(
    cfg: &'a C,
    windows: &Windows,
    out: &mut Vec<PciFunction<'a, C>, N>,
) -> Result<ScanReport, PciError> {
    windows.check()?;
    out.clear();
    let mut scratch = Vec::new();
    let range = cfg.bus_range();
    let first = *range.start();
    let mut scan = Scan {
        cfg,
        list: out,
        scratch: &mut scratch,
        last_bus: *range.end(),
        next_bus: first,
        report: ScanReport::default(),
    };
    scan.scan_bus(
        first,
        None,
        IntxPath {
            root_dev: None,
            swizzle: 0,
        },
    );
    let mut report = scan.report;
    resource::assign(out, &mut scratch, windows);
    report.failed_bars = out
        .iter()
        .flat_map(|f| f.bar_slots())
        .filter(|s| matches!(s, BarSlot::Failed(..)))
        .count();
    Ok(report)
}
