//! What the device tree says about the board: console, clock, interrupt controller, devices.
//!
//! The blob is parsed by the `flat_device_tree` crate (no allocation; malformed input yields
//! `None`/empty iterators rather than panics in the calls used here). It decodes `reg` and
//! `ranges` with the parents' cell counts; `interrupts-extended`, `bus-range` and
//! `interrupt-map` (whose entry layout depends on each interrupt parent's cell counts) it leaves
//! as raw bytes, read here with [`Cells`].

use crate::boot::{IntxEntry, IntxMap, MmioDevice, PciHost};
use flat_device_tree::Fdt;
use flat_device_tree::node::FdtNode;
use heapless::Vec;

/// The interrupt controller found for this hart.
pub struct PlicInfo {
    pub base: u64,
    pub sources: u32,
    pub context: usize,
}

/// The console UART.
pub struct UartInfo {
    pub base: u64,
    /// `reg-shift`: registers are `1 << shift` bytes apart.
    pub shift: u32,
    /// `reg-io-width`: access width in bytes (1 or 4).
    pub width: u32,
    /// Input clock: `clock-frequency`, else that of the clock `clocks` names.
    pub clock: Option<u32>,
}

/// `compatible` strings of 8250/16550-style UARTs the console driver handles.
const UART_COMPATIBLE: [&str; 6] = [
    "ns16550a",
    "ns16550",
    "snps,dw-apb-uart",
    "ns16750",
    "ns8250",
    "starfive,jh7110-uart",
];

/// Everything the boot code uses from the tree.
pub struct Board<'a> {
    pub cmdline: &'a str,
    pub timebase: Option<u64>,
    pub uart: Option<UartInfo>,
    pub plic: Option<PlicInfo>,
    pub test_device: Option<u64>,
    pub virtio_mmio: Vec<MmioDevice, 8>,
    pub pci: Option<PciHost>,
}

/// Reads the board description for hart `hart` from `fdt`.
pub fn board<'a>(fdt: &Fdt<'a>, hart: usize) -> Board<'a> {
    let chosen = fdt.find_node("/chosen");
    Board {
        cmdline: chosen.and_then(|c| prop_str(c, "bootargs")).unwrap_or(""),
        timebase: timebase(fdt, hart),
        uart: uart(fdt, chosen),
        plic: plic(fdt, hart),
        test_device: ["sifive,test1", "sifive,test0"]
            .iter()
            .find_map(|c| compatible(fdt, c).next())
            .and_then(reg0)
            .map(|(base, _)| base),
        virtio_mmio: compatible(fdt, "virtio,mmio")
            .filter_map(|n| {
                let (base, size) = reg0(n)?;
                Some(MmioDevice {
                    base,
                    size,
                    irq: prop_u32(n, "interrupts")?,
                })
            })
            .take(8)
            .collect(),
        pci: compatible(fdt, "pci-host-ecam-generic").find_map(|n| pci_host(fdt, n)),
    }
}

/// Every node whose `compatible` list has `compat`, in document order.
fn compatible<'b, 'a>(
    fdt: &'b Fdt<'a>,
    compat: &'b str,
) -> impl Iterator<Item = FdtNode<'b, 'a>> + 'b {
    fdt.all_nodes().filter(move |n| is_compatible(*n, compat))
}

/// Whether `node`'s `compatible` lists `compat`.
fn is_compatible(node: FdtNode<'_, '_>, compat: &str) -> bool {
    node.compatible()
        .is_some_and(|c| c.all().any(|s| s == compat))
}

/// The first cell of property `name`.
fn prop_u32(node: FdtNode<'_, '_>, name: &str) -> Option<u32> {
    Cells::of(node, name)?.u32()
}

/// A string property (its first string for a list).
fn prop_str<'a>(node: FdtNode<'_, 'a>, name: &str) -> Option<&'a str> {
    node.property(name)?.iter_str().next()
}

/// The first `(address, size)` of `reg` (size 0 where the parent has `#size-cells = <0>`).
fn reg0(node: FdtNode<'_, '_>) -> Option<(u64, u64)> {
    let r = node.reg().next()?;
    Some((r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

/// The cpu node of hart `hart`.
fn cpu_node<'b, 'a>(fdt: &'b Fdt<'a>, hart: usize) -> Option<FdtNode<'b, 'a>> {
    fdt.all_nodes().find(|n| {
        prop_str(*n, "device_type") == Some("cpu") && reg0(*n).map(|r| r.0) == Some(hart as u64)
    })
}

fn timebase(fdt: &Fdt<'_>, hart: usize) -> Option<u64> {
    let from = |n: FdtNode<'_, '_>| prop_u32(n, "timebase-frequency").map(u64::from);
    cpu_node(fdt, hart)
        .and_then(from)
        .or_else(|| fdt.find_node("/cpus").and_then(from))
}

fn uart(fdt: &Fdt<'_>, chosen: Option<FdtNode<'_, '_>>) -> Option<UartInfo> {
    // `stdout-path` names the console ("/soc/serial@10000000:115200" or an alias).
    let by_path = chosen
        .and_then(|c| prop_str(c, "stdout-path"))
        .and_then(|p| {
            let path = p.split(':').next().unwrap_or(p);
            if path.starts_with('/') {
                fdt.find_node(path)
            } else {
                fdt.find_node(prop_str(fdt.find_node("/aliases")?, path)?)
            }
        });
    let is_uart = |n: FdtNode<'_, '_>| UART_COMPATIBLE.iter().any(|c| is_compatible(n, c));
    let node = by_path
        .filter(|n| is_uart(*n))
        .or_else(|| fdt.all_nodes().find(|n| is_uart(*n)))?;
    let (base, _) = reg0(node)?;
    let width = prop_u32(node, "reg-io-width").unwrap_or(1);
    let shift = prop_u32(node, "reg-shift").unwrap_or(0);
    if !matches!(width, 1 | 4) || shift > 4 || !base.is_multiple_of(u64::from(width)) {
        return None;
    }
    // `clock-frequency` on the node, else the first clock of `clocks` when it is a fixed clock
    // with a `clock-frequency`.
    let clock = prop_u32(node, "clock-frequency")
        .filter(|&c| c > 0)
        .or_else(|| {
            let phandle = Cells::of(node, "clocks")?.u32()?;
            prop_u32(fdt.find_phandle(phandle)?, "clock-frequency").filter(|&c| c > 0)
        });
    Some(UartInfo {
        base,
        shift,
        width,
        clock,
    })
}

fn plic(fdt: &Fdt<'_>, hart: usize) -> Option<PlicInfo> {
    let node = ["riscv,plic0", "sifive,plic-1.0.0"]
        .iter()
        .find_map(|c| compatible(fdt, c).next())?;
    let (base, _) = reg0(node)?;
    let sources = prop_u32(node, "riscv,ndev").map_or(32, |n| n + 1);
    // Context i is the i-th entry of `interrupts-extended`: (cpu intc phandle, cause). Ours is
    // the one pointing at this hart's controller (a child of its cpu node) with cause 9
    // (supervisor external).
    let intc = cpu_node(fdt, hart).and_then(|cpu| {
        cpu.children()
            .find(|n| is_compatible(*n, "riscv,cpu-intc"))
            .and_then(|n| prop_u32(n, "phandle"))
    });
    let context = intc
        .and_then(|ph| {
            let mut cells = Cells::of(node, "interrupts-extended")?;
            let mut i = 0;
            while !cells.is_empty() {
                let (p, cause) = (cells.u32()?, cells.u32()?);
                if p == ph && cause == 9 {
                    return Some(i);
                }
                i += 1;
            }
            None
        })
        .unwrap_or(2 * hart + 1); // QEMU virt and SiFive: M then S context per hart
    Some(PlicInfo {
        base,
        sources,
        context,
    })
}

fn pci_host(fdt: &Fdt<'_>, node: FdtNode<'_, '_>) -> Option<PciHost> {
    let (ecam_base, ecam_size) = reg0(node)?;
    let (bus_start, bus_end) = match Cells::of(node, "bus-range") {
        Some(mut c) => (c.u32()?.min(255) as u8, c.u32()?.min(255) as u8),
        None => (0, ((ecam_size >> 20).clamp(1, 256) - 1) as u8),
    };

    // `ranges` entries: PCI address (3 cells, the space code in bits 24..26 of the first),
    // CPU address, size.
    let (mut mmio32, mut mmio64, mut io) = (None, None, None);
    for r in node.ranges() {
        let window = Some((r.parent_bus_address as u64, r.size as u64));
        match (r.child_bus_address_hi >> 24) & 3 {
            1 if io.is_none() => io = window,
            2 if mmio32.is_none() => mmio32 = window,
            3 if mmio64.is_none() => mmio64 = window,
            _ => {}
        }
    }

    Some(PciHost {
        ecam_base,
        ecam_size,
        ports: None,
        bus_start,
        bus_end,
        mmio32: mmio32?,
        mmio64,
        io,
        intx: intx_map(fdt, node).unwrap_or_default(),
    })
}

/// `interrupt-map` of a PCI host: entries of child unit address (3 cells), pin (1 cell),
/// parent phandle, parent unit address and parent interrupt specifier (sizes from the parent).
fn intx_map(fdt: &Fdt<'_>, node: FdtNode<'_, '_>) -> Option<IntxMap> {
    let child_ac = node.cell_sizes().address_cells.to_u32();
    let child_ic = prop_u32(node, "#interrupt-cells").unwrap_or(1);
    let mut mask = Cells::of(node, "interrupt-map-mask")?;
    let mask_hi = mask.u32()?;
    mask.skip(child_ac.checked_sub(1)?)?;
    let mask_pin = mask.u32()?;

    let mut map = IntxMap {
        mask_hi,
        mask_pin,
        entries: Vec::new(),
    };
    let mut m = Cells::of(node, "interrupt-map")?;
    let mut parent_cache: Option<(u32, u32, u32)> = None; // (phandle, address cells, irq cells)
    while !m.is_empty() {
        let hi = m.u32()?;
        m.skip(child_ac.checked_sub(1)?)?;
        let pin = m.u32()?;
        m.skip(child_ic.checked_sub(1)?)?;
        let ph = m.u32()?;
        let (pac, pic) = match parent_cache {
            Some((p, ac, ic)) if p == ph => (ac, ic),
            _ => {
                let parent = fdt.find_phandle(ph)?;
                let ac = prop_u32(parent, "#address-cells").unwrap_or(0);
                let ic = prop_u32(parent, "#interrupt-cells").unwrap_or(1);
                parent_cache = Some((ph, ac, ic));
                (ac, ic)
            }
        };
        m.skip(pac)?;
        let irq = m.u32()?;
        m.skip(pic.checked_sub(1)?)?;
        // A map longer than the table is truncated: routes beyond it are reported missing.
        let _ = map.entries.push(IntxEntry {
            hi: hi & mask_hi,
            pin: pin & mask_pin,
            irq,
        });
    }
    Some(map)
}

/// Big-endian 32-bit cells of one property value, read in order.
struct Cells<'a> {
    bytes: &'a [u8],
}

impl<'a> Cells<'a> {
    /// The value of `node`'s property `name`.
    fn of(node: FdtNode<'_, 'a>, name: &str) -> Option<Self> {
        node.property(name).map(|p| Cells { bytes: p.value })
    }

    /// The next cell.
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.bytes.split_first_chunk::<4>()?;
        self.bytes = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// Skips `n` cells.
    fn skip(&mut self, n: u32) -> Option<()> {
        let len = usize::try_from(n).ok()?.checked_mul(4)?;
        self.bytes = self.bytes.get(len..)?;
        Some(())
    }

    /// Whether every cell has been read.
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A hart the device tree lists as usable, with the PLIC context of its S-mode.
pub struct HartInfo {
    /// The hart id (`reg` of its cpu node).
    pub hart: usize,
    /// Its S-mode context of the PLIC (from the PLIC's `interrupts-extended`), if there is a
    /// PLIC.
    pub plic_context: Option<usize>,
}

/// Every cpu node under `/cpus` not marked unusable (`status` absent, "okay" or "ok"), in tree
/// order, at most `N`.
pub fn harts<const N: usize>(fdt: &Fdt<'_>) -> Vec<HartInfo, N> {
    let Some(cpus) = fdt.find_node("/cpus") else {
        return Vec::new();
    };
    cpus.children()
        .filter(|n| prop_str(*n, "device_type") == Some("cpu"))
        .filter(|n| prop_str(*n, "status").is_none_or(|s| s == "okay" || s == "ok"))
        .filter_map(|n| reg0(n).map(|(hart, _)| hart as usize))
        .map(|hart| HartInfo {
            hart,
            plic_context: plic(fdt, hart).map(|p| p.context),
        })
        .take(N)
        .collect()
}
