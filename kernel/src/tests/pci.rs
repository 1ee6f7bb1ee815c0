//! PCI enumeration and device interrupts (MSI on x86_64, INTx through the PLIC on riscv64),
//! with QEMU's `edu` device as the interrupt source.

use crate::ktest::Outcome;
use crate::{arch, boot, boot_info, pci};
use core::sync::atomic::{AtomicU32, Ordering};
use hal::irq::IrqHandler;
use hal::{IrqLine, Mmio};
use spin::Once;

fn parse_id(s: &str) -> Option<(u16, u16)> {
    let (v, d) = s.split_once(':')?;
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(d, 16).ok()?,
    ))
}

ktest! {
    fn pci_enumeration_finds_expected_devices() -> TestResult {
        let Some(list) = boot::cmdline_arg(boot_info().cmdline, "expect_pci") else {
            return Err(Outcome::Skip("no expect_pci= on the command line"));
        };
        let mut n = 0;
        for id in list.split(',') {
            let Some((v, d)) = parse_id(id) else {
                return Err(crate::ktest::fail(format_args!("bad expect_pci entry {}", id)));
            };
            check!(pci::find(v, d).is_some(), "PCI device {:04x}:{:04x} not found", v, d);
            n += 1;
        }
        check!(n > 0, "expect_pci is empty");
        Ok(())
    }
}

ktest! {
    fn pci_bars_are_aligned_disjoint_and_inside_the_windows() -> TestResult {
        let Some(host) = boot_info().pci.as_ref() else {
            return Err(Outcome::Skip("no PCI host"));
        };
        let inside = |a: u64, size: u64, w: (u64, u64)| a >= w.0 && a + size <= w.0 + w.1;
        let mut bars: heapless::Vec<(u64, u64), 64> = heapless::Vec::new();
        for f in pci::functions() {
            for i in 0..6 {
                let Some(b) = f.bar(i) else { continue };
                if b.kind == ::pci::BarKind::Io {
                    continue;
                }
                let a = b.cpu_addr.as_u64();
                check!(b.size.is_power_of_two() && a % b.size == 0, "BAR {:#x}+{:#x} unaligned", a, b.size);
                check!(
                    inside(a, b.size, host.mmio32) || host.mmio64.is_some_and(|w| inside(a, b.size, w)),
                    "BAR {:#x}+{:#x} outside the windows", a, b.size
                );
                for &(o, os) in &bars {
                    check!(a + b.size <= o || o + os <= a, "BARs {:#x} and {:#x} overlap", a, o);
                }
                // The device decodes what the BAR register says.
                let reg = f.config_read32(0x10 + 4 * i as u16) as u64 & !0xf;
                check_eq!(reg, b.pci_addr & 0xffff_ffff);
                let _ = bars.push((a, b.size));
            }
        }
        check!(!bars.is_empty(), "no memory BARs assigned at all");
        Ok(())
    }
}

/// The `edu` device's interrupt handler: acknowledges and counts.
struct EduIrq {
    regs: Once<Mmio>,
    fired: AtomicU32,
    last_status: AtomicU32,
}

const EDU_ID: usize = 0x00;
const EDU_LIVENESS: usize = 0x04;
const EDU_IRQ_STATUS: usize = 0x24;
const EDU_IRQ_RAISE: usize = 0x60;
const EDU_IRQ_ACK: usize = 0x64;

impl IrqHandler for EduIrq {
    fn handle(&self) {
        let Some(regs) = self.regs.get() else { return };
        let status = regs.read32(EDU_IRQ_STATUS);
        if status != 0 {
            regs.write32(EDU_IRQ_ACK, status);
            self.last_status.store(status, Ordering::Relaxed);
            self.fired.fetch_add(1, Ordering::Release);
        }
    }
}

static EDU: EduIrq = EduIrq {
    regs: Once::new(),
    fired: AtomicU32::new(0),
    last_status: AtomicU32::new(0),
};

ktest! {
    fn device_interrupt_is_delivered() -> TestResult {
        let Some(f) = pci::find(0x1234, 0x11e8) else {
            return Err(Outcome::Skip("no edu device (-device edu)"));
        };
        let Some(regs) = f.map_bar(0, arch::mmio_mapper()) else {
            return Err(crate::ktest::fail(format_args!("cannot map edu BAR0")));
        };
        check_eq!(regs.read32(EDU_ID) & 0xff, 0xed);
        regs.write32(EDU_LIVENESS, 0x1234_5678);
        check_eq!(regs.read32(EDU_LIVENESS), !0x1234_5678u32);
        let regs = EDU.regs.call_once(|| regs);

        // Message-signalled where the platform has MSI, else the routed INTx line.
        let line: IrqLine = match hal::irq::alloc_msi() {
            Some((line, msg)) => {
                // An MSI is a memory write by the device: it needs bus mastering.
                f.enable_bus_master();
                f.enable_msi(msg).map_err(|e| crate::ktest::fail(format_args!("enable_msi: {:?}", e)))?;
                line
            }
            None => {
                let Some(line) = pci::intx_line(f) else {
                    return Err(crate::ktest::fail(format_args!("no INTx route for edu")));
                };
                f.enable_intx();
                line
            }
        };
        check!(line.register(&EDU).is_ok(), "cannot register on line {}", line.number());
        check!(line.enable().is_ok(), "cannot enable line {}", line.number());

        for round in 1..=3u32 {
            let before = EDU.fired.load(Ordering::Acquire);
            let line_before = line.count();
            regs.write32(EDU_IRQ_RAISE, round << 4);
            let start = arch::now_ns();
            while EDU.fired.load(Ordering::Acquire) == before {
                check!(arch::now_ns() - start < 2_000_000_000, "no interrupt within 2 s (round {})", round);
                arch::wait_for_interrupt();
            }
            check_eq!(EDU.last_status.load(Ordering::Relaxed), round << 4);
            check!(line.count() > line_before, "line {} count did not move", line.number());
        }
        check_eq!(regs.read32(EDU_IRQ_STATUS), 0);
        Ok(())
    }
}
