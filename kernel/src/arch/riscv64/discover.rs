//! What the device tree says about the board: console, clock, interrupt controller, devices.

use super::fdt::{Fdt, Node};
use crate::boot::{IntxEntry, IntxMap, MmioDevice, PciHost};
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
    pub shift: u32,
    pub clock: Option<u32>,
}

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
    let chosen = fdt.find_path("/chosen");
    Board {
        cmdline: chosen.and_then(|c| c.prop_str("bootargs")).unwrap_or(""),
        timebase: timebase(fdt, hart),
        uart: uart(fdt, chosen),
        plic: plic(fdt, hart),
        test_device: ["sifive,test1", "sifive,test0"]
            .iter()
            .find_map(|c| fdt.compatible(c).next())
            .and_then(|n| n.reg(0))
            .map(|(base, _)| base),
        virtio_mmio: fdt
            .compatible("virtio,mmio")
            .filter_map(|n| {
                let (base, size) = n.reg(0)?;
                Some(MmioDevice {
                    base,
                    size,
                    irq: n.prop_u32("interrupts")?,
                })
            })
            .take(8)
            .collect(),
        pci: fdt
            .compatible("pci-host-ecam-generic")
            .find_map(|n| pci_host(fdt, n)),
    }
}

/// The cpu node of hart `hart`.
fn cpu_node<'a>(fdt: &Fdt<'a>, hart: usize) -> Option<Node<'a>> {
    fdt.nodes().find(|n| {
        n.prop_str("device_type") == Some("cpu") && n.reg(0).map(|r| r.0) == Some(hart as u64)
    })
}

fn timebase(fdt: &Fdt<'_>, hart: usize) -> Option<u64> {
    let from = |n: Node<'_>| n.prop_u32("timebase-frequency").map(u64::from);
    cpu_node(fdt, hart)
        .and_then(from)
        .or_else(|| fdt.find_path("/cpus").and_then(from))
}

fn uart<'a>(fdt: &Fdt<'a>, chosen: Option<Node<'a>>) -> Option<UartInfo> {
    // `stdout-path` names the console ("/soc/serial@10000000:115200" or an alias).
    let by_path = chosen
        .and_then(|c| c.prop_str("stdout-path"))
        .and_then(|p| {
            let path = p.split(':').next().unwrap_or(p);
            if path.starts_with('/') {
                fdt.find_path(path)
            } else {
                let full = fdt.find_path("/aliases")?.prop_str(path)?;
                fdt.find_path(full)
            }
        });
    let node = by_path
        .filter(|n| n.is_compatible("ns16550a") || n.is_compatible("ns16550"))
        .or_else(|| fdt.compatible("ns16550a").next())
        .or_else(|| fdt.compatible("ns16550").next())?;
    let (base, _) = node.reg(0)?;
    Some(UartInfo {
        base,
        shift: node.prop_u32("reg-shift").unwrap_or(0),
        clock: node.prop_u32("clock-frequency"),
    })
}

fn plic(fdt: &Fdt<'_>, hart: usize) -> Option<PlicInfo> {
    let node = ["riscv,plic0", "sifive,plic-1.0.0"]
        .iter()
        .find_map(|c| fdt.compatible(c).next())?;
    let (base, _) = node.reg(0)?;
    let sources = node.prop_u32("riscv,ndev").map_or(32, |n| n + 1);
    // Context i is the i-th entry of `interrupts-extended`: (cpu intc phandle, cause). Ours is
    // the one pointing at this hart's controller with cause 9 (supervisor external).
    let intc = cpu_node(fdt, hart).and_then(|cpu| {
        fdt.nodes()
            .skip_while(|n| n.name() != cpu.name() || n.depth != cpu.depth)
            .skip(1)
            .take_while(|n| n.depth > cpu.depth)
            .find(|n| n.is_compatible("riscv,cpu-intc"))
            .and_then(|n| n.prop_u32("phandle"))
    });
    let context = intc
        .and_then(|ph| {
            let mut cells = node.cells("interrupts-extended")?;
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

fn pci_host(fdt: &Fdt<'_>, node: Node<'_>) -> Option<PciHost> {
    let (ecam_base, ecam_size) = node.reg(0)?;
    let (bus_start, bus_end) = match node.cells("bus-range") {
        Some(mut c) => (c.u32()?.min(255) as u8, c.u32()?.min(255) as u8),
        None => (0, ((ecam_size >> 20).clamp(1, 256) - 1) as u8),
    };
    let (child_ac, size_c) = node.own_cells();
    let parent_ac = node.parent_cells.0;

    let (mut mmio32, mut mmio64, mut io) = (None, None, None);
    if let Some(mut r) = node.cells("ranges") {
        while !r.is_empty() {
            let hi = r.u32()?;
            r.skip(child_ac.checked_sub(1)?)?;
            let cpu = r.take(parent_ac)?;
            let size = r.take(size_c)?;
            match (hi >> 24) & 3 {
                1 if io.is_none() => io = Some((cpu, size)),
                2 if mmio32.is_none() => mmio32 = Some((cpu, size)),
                3 if mmio64.is_none() => mmio64 = Some((cpu, size)),
                _ => {}
            }
        }
    }

    Some(PciHost {
        ecam_base,
        ecam_size,
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
fn intx_map(fdt: &Fdt<'_>, node: Node<'_>) -> Option<IntxMap> {
    let (child_ac, _) = node.own_cells();
    let child_ic = node.prop_u32("#interrupt-cells").unwrap_or(1);
    let mut mask = node.cells("interrupt-map-mask")?;
    let mask_hi = mask.u32()?;
    mask.skip(child_ac - 1)?;
    let mask_pin = mask.u32()?;

    let mut map = IntxMap {
        mask_hi,
        mask_pin,
        entries: Vec::new(),
    };
    let mut m = node.cells("interrupt-map")?;
    let mut parent_cache: Option<(u32, u32, u32)> = None; // (phandle, address cells, irq cells)
    while !m.is_empty() {
        let hi = m.u32()?;
        m.skip(child_ac - 1)?;
        let pin = m.u32()?;
        m.skip(child_ic - 1)?;
        let ph = m.u32()?;
        let (pac, pic) = match parent_cache {
            Some((p, ac, ic)) if p == ph => (ac, ic),
            _ => {
                let parent = fdt.by_phandle(ph)?;
                let ac = parent.prop_u32("#address-cells").unwrap_or(0);
                let ic = parent.prop_u32("#interrupt-cells").unwrap_or(1);
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
