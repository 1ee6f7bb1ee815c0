//! What became of each storage controller: the disk kinds, the drivers' bring-up errors, the
//! boot log line per controller, and the check of the disks the command line expects.
//!
//! `expect=KIND[,KIND..]` (`virtio`, `ahci`, `nvme`; `cargo xtask` derives it from the QEMU
//! profile) names the disk kinds that must attach. A missing one fails the boot in every mode
//! ([`missing_expected`]) and turns the tests that need that kind into failures instead of skips
//! (`crate::ktest`), each with the driver's error.

use core::fmt::{self, Write};

use spin::Once;

use super::{Attach, ahci, nvme, virtio};
use crate::text::{self, Bounded};
use crate::{boot, config, pci};

/// A kind of disk the kernel drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, defmt::Format)]
pub enum DiskKind {
    /// virtio-blk, over PCI or MMIO.
    Virtio,
    /// A SATA disk behind an AHCI controller.
    Ahci,
    /// An NVMe namespace.
    Nvme,
}

impl DiskKind {
    /// Every kind, in probe order.
    pub const ALL: [DiskKind; 3] = [DiskKind::Virtio, DiskKind::Ahci, DiskKind::Nvme];

    /// The word for this kind on the command line (`expect=`) and in QEMU profiles.
    pub fn word(self) -> &'static str {
        match self {
            DiskKind::Virtio => "virtio",
            DiskKind::Ahci => "ahci",
            DiskKind::Nvme => "nvme",
        }
    }

    /// The kind named by `word`.
    pub fn from_word(word: &str) -> Option<DiskKind> {
        DiskKind::ALL.into_iter().find(|k| k.word() == word)
    }

    /// What a reader calls it, with its article: "a virtio-blk disk".
    pub fn a_disk(self) -> &'static str {
        match self {
            DiskKind::Virtio => "a virtio-blk disk",
            DiskKind::Ahci => "an AHCI disk",
            DiskKind::Nvme => "an NVMe disk",
        }
    }

    /// Whether a disk of this kind attached.
    pub fn attached(self) -> bool {
        match self {
            DiskKind::Virtio => virtio::disk().is_some(),
            DiskKind::Ahci => ahci::disk().is_some(),
            DiskKind::Nvme => nvme::disk().is_some(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Room for one driver's bring-up error.
const ERROR_BYTES: usize = 192;

/// The first bring-up error of each kind's driver, in [`DiskKind::ALL`] order.
static ERRORS: [Once<heapless::String<ERROR_BYTES>>; 3] = [const { Once::new() }; 3];

/// Records why a controller of `kind` did not attach (the driver's error), for the attach
/// report and the failure of a boot that expected this kind. The first error of a kind is
/// kept; the probe logs every error itself.
pub fn attach_failed(kind: DiskKind, why: fmt::Arguments<'_>) {
    ERRORS[kind.index()].call_once(|| text::format(why));
}

/// The recorded bring-up error of `kind`, if its driver reported one.
pub fn attach_error(kind: DiskKind) -> Option<&'static str> {
    ERRORS[kind.index()].get().map(|s| s.as_str())
}

/// The disk kinds `expect=` names, and the words it holds that name no kind.
pub fn expected(cmdline: &str) -> impl Iterator<Item = Result<DiskKind, &str>> {
    boot::cmdline_arg(cmdline, "expect")
        .unwrap_or("")
        .split(',')
        .filter(|w| !w.is_empty())
        .map(|w| DiskKind::from_word(w).ok_or(w))
}

/// Whether the command line expects a disk of `kind`.
pub fn is_expected(cmdline: &str, kind: DiskKind) -> bool {
    expected(cmdline).any(|k| k == Ok(kind))
}

/// Why an expected disk of `kind` is missing: the driver's error, or that no controller of the
/// kind was found at all.
pub fn why_missing(kind: DiskKind, out: &mut dyn Write) -> fmt::Result {
    write!(
        out,
        "the profile expects {} (expect={}), but none attached: ",
        kind.a_disk(),
        kind.word()
    )?;
    match attach_error(kind) {
        Some(e) => out.write_str(e),
        None if controllers(kind).next().is_some() => {
            out.write_str("the controller was found but its driver gave no disk")
        }
        None => out.write_str("no controller of that kind was found"),
    }
}

/// Logs every expected disk kind that did not attach (and every unknown `expect=` word), with
/// the reason; returns how many there were. The boot fails when this is not 0.
pub fn missing_expected(cmdline: &str) -> usize {
    let mut missing = 0;
    for want in expected(cmdline) {
        match want {
            Ok(kind) if kind.attached() => {}
            Ok(kind) => {
                missing += 1;
                let mut why = heapless::String::<256>::new();
                let _ = why_missing(kind, &mut Bounded::new(&mut why));
                defmt::error!("block: {=str}", why.as_str());
            }
            Err(word) => {
                missing += 1;
                defmt::error!(
                    "block: expect={=str} names no disk kind (virtio, ahci, nvme)",
                    word
                );
            }
        }
    }
    missing
}

/// The PCI functions a driver of `kind` would take, in the order its probe tries them.
fn controllers(kind: DiskKind) -> impl Iterator<Item = &'static ::pci::PciFunction<'static>> {
    pci::functions()
        .iter()
        .filter(move |f| kind_of(f) == Some(kind))
}

/// The disk kind of a PCI function, by the IDs and classes the probes match on.
fn kind_of(f: &::pci::PciFunction<'static>) -> Option<DiskKind> {
    let c = f.class();
    let ids = (f.vendor_id(), f.device_id());
    if config::VIRTIO_BLK_PCI_IDS.contains(&ids) {
        Some(DiskKind::Virtio)
    } else if ids == (config::NVME_VENDOR_ID, config::NVME_DEVICE_ID) {
        Some(DiskKind::Nvme)
    } else if (c.class, c.subclass, c.prog_if) == config::AHCI_CLASS {
        Some(DiskKind::Ahci)
    } else {
        None
    }
}

/// The function each kind's probe took (the first it matches), if any.
fn probed(kind: DiskKind) -> Option<&'static ::pci::PciFunction<'static>> {
    match kind {
        DiskKind::Virtio => config::VIRTIO_BLK_PCI_IDS
            .iter()
            .find_map(|&(v, d)| pci::find(v, d)),
        DiskKind::Nvme => pci::find(config::NVME_VENDOR_ID, config::NVME_DEVICE_ID),
        DiskKind::Ahci => controllers(DiskKind::Ahci).next(),
    }
}

/// Whether the virtio disk is the PCI function: the probe tries PCI first and tries the
/// virtio-mmio slots only when that failed (recording the error) or found nothing.
fn virtio_on_pci() -> bool {
    virtio::disk().is_some()
        && probed(DiskKind::Virtio).is_some()
        && attach_error(DiskKind::Virtio).is_none()
}

/// How a kind's disk takes its completions, if it attached.
fn attach_of(kind: DiskKind) -> Option<Attach> {
    match kind {
        DiskKind::Virtio => virtio::disk().map(|d| d.attach),
        DiskKind::Ahci => ahci::disk().map(|d| d.attach),
        DiskKind::Nvme => nvme::disk().map(|d| d.attach),
    }
}

/// Logs one line for every storage controller (every PCI mass-storage function, every
/// virtio-mmio block slot) with what became of it.
pub(super) fn report_controllers(info: &boot::BootInfo) {
    let mut seen = 0usize;
    for f in pci::functions() {
        let kind = kind_of(f);
        if kind.is_none() && f.class().class != 0x01 {
            continue;
        }
        seen += 1;
        let s = f.summary();
        let (bus, dev, func) = (s.bdf.bus(), s.bdf.dev(), s.bdf.func());
        let Some(kind) = kind else {
            defmt::println!(
                "block: pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x} {=str}: no driver for this controller",
                bus,
                dev,
                func,
                s.vendor_id,
                s.device_id,
                s.class.name()
            );
            continue;
        };
        let taken = probed(kind).is_some_and(|p| core::ptr::eq(p, f));
        match (taken, attach_of(kind)) {
            (true, Some(a)) if kind != DiskKind::Virtio || virtio_on_pci() => defmt::println!(
                "block: pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x}: attached as {=str} ({})",
                bus,
                dev,
                func,
                s.vendor_id,
                s.device_id,
                kind.a_disk(),
                a
            ),
            // An error when the boot needs this kind (it fails further on), a note otherwise
            // (q35's built-in AHCI controller usually has no disk).
            (true, _) if is_expected(info.cmdline, kind) => defmt::error!(
                "block: pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x}: {=str} controller not attached: {=str}",
                bus,
                dev,
                func,
                s.vendor_id,
                s.device_id,
                kind.word(),
                attach_error(kind).unwrap_or("its driver gave no disk (see above)")
            ),
            (true, _) => defmt::println!(
                "block: pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x}: {=str} controller not attached: {=str}",
                bus,
                dev,
                func,
                s.vendor_id,
                s.device_id,
                kind.word(),
                attach_error(kind).unwrap_or("its driver gave no disk (see above)")
            ),
            (false, _) => defmt::println!(
                "block: pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x}: {=str} controller not attached: the kernel drives the first one only",
                bus,
                dev,
                func,
                s.vendor_id,
                s.device_id,
                kind.word()
            ),
        }
    }
    let mut mmio_taken = false;
    for slot in &info.virtio_mmio {
        let Some(regs) = crate::arch::mmio_mapper().map(hal::PhysAddr(slot.base), 0x100) else {
            continue;
        };
        // Slot magic "virt" and device ID 2 (block); empty slots have ID 0.
        if regs.read32(0) != 0x7472_6976 || regs.read32(8) != 2 {
            continue;
        }
        seen += 1;
        let first = !core::mem::replace(&mut mmio_taken, true);
        match virtio::disk() {
            Some(d) if first && !virtio_on_pci() => defmt::println!(
                "block: virtio-mmio {=u64:#x}: attached as a virtio-blk disk ({})",
                slot.base,
                d.attach
            ),
            Some(_) => defmt::println!(
                "block: virtio-mmio {=u64:#x}: not attached: the kernel drives one virtio-blk disk, taken first",
                slot.base
            ),
            None => defmt::error!(
                "block: virtio-mmio {=u64:#x}: not attached: {=str}",
                slot.base,
                attach_error(DiskKind::Virtio).unwrap_or("its driver gave no disk (see above)")
            ),
        }
    }
    if seen == 0 {
        defmt::println!("block: no storage controller found");
    }
}
