//! virtio-blk probing: PCI first (either arch), then the riscv64 virtio-mmio slots; the block
//! layer's queue on top; MSI-X, INTx or the slot's PLIC line for completions.

use blk::{Queue, QueueConfig, Wait};
use hal::{IrqLine, PhysAddr};
use spin::Once;
use virtio_blk::{Mode, QUEUE_DEPTH, VirtioBlk};

use crate::{arch, boot::BootInfo, config, pci};

pub use super::Attach;

/// The virtio disk: driver, request queue, interrupt line.
pub type VirtioDisk = super::Disk<VirtioBlk, QUEUE_DEPTH>;

impl super::DriverDeferred for VirtioBlk {
    fn deferred(&self) {
        if self.mode() == Mode::Polling {
            blk::HwQueue::poll(self);
        }
    }
}

static HW: Once<VirtioBlk> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();
static DISK: Once<VirtioDisk> = Once::new();

/// The virtio disk, if one was found.
pub fn disk() -> Option<&'static VirtioDisk> {
    DISK.get()
}

enum Found {
    Pci(&'static ::pci::PciFunction<'static>),
    Mmio(u32),
}

/// Finds the first virtio-blk device and brings it up.
pub fn probe(info: &BootInfo, polled: bool) {
    let mode = if polled {
        Mode::Polling
    } else {
        Mode::Interrupt
    };
    let Some((hw, found)) = find(info, mode) else {
        return;
    };
    let hw = HW.call_once(|| hw);
    let mut cfg = QueueConfig::new(hw.info().capacity);
    cfg.read_only = hw.info().read_only;
    cfg.clock = super::clock;
    cfg.wait = Wait::Hook(super::wait);
    cfg.timeout_ns = config::block_timeout_ns(config::VIRTIO_TIMEOUT_NS);
    // A ring smaller than the largest takes fewer requests at once: only that many tags.
    let depth = hw.info().queue_depth as usize;
    let queue =
        QUEUE.call_once(|| Queue::new(hw, hw.limits(), cfg, &super::SPLIT_SET).with_depth(depth));
    super::map_queue(queue, 1);
    hw.attach(queue);
    let (irq, attach) = match found {
        Found::Pci(f) => match (mode, hal::irq::alloc_msi()) {
            (Mode::Interrupt, Some((line, msg))) => {
                let ok = f.msix(arch::mmio_mapper()).is_ok_and(|t| {
                    t.set_entry(0, msg).is_ok() && t.unmask(0).is_ok() && {
                        t.enable();
                        true
                    }
                });
                if !ok || !hw.set_msix(f, arch::mmio_mapper(), 0) {
                    defmt::error!("virtio-blk: MSI-X setup failed");
                }
                (Some(line), Attach::Msix)
            }
            (Mode::Interrupt, None) => {
                let line = pci::intx_line(f);
                if line.is_some() {
                    f.enable_intx();
                }
                (line, Attach::Intx)
            }
            (Mode::Polling, _) => (None, Attach::Polled),
        },
        Found::Mmio(irq) => (
            (mode == Mode::Interrupt).then(|| IrqLine::new(irq)),
            Attach::MmioLine,
        ),
    };
    if let Some(line) = irq {
        if attach != Attach::Msix {
            hw.set_irq_line(line);
        }
        if line.register(hw).is_err() || line.enable().is_err() {
            defmt::error!(
                "virtio-blk: cannot use interrupt line {=u32}",
                line.number()
            );
        }
    }
    let i = hw.info();
    defmt::println!(
        "virtio-blk: {} {=u64} sectors, block {=u32}, segs {=u16}x{=u32}, ro {=bool}, flush {=bool}, discard {=u32}, wzeroes {=u32}, event-idx {=bool}, ring {=u16}, depth {=u16}, {=str}",
        attach,
        i.capacity,
        i.block_size,
        i.max_segments,
        i.max_segment_size,
        i.read_only,
        i.flush,
        i.max_discard_sectors,
        i.max_write_zeroes_sectors,
        i.event_idx,
        i.ring_size,
        i.queue_depth,
        if polled { "polled" } else { "interrupts" }
    );
    DISK.call_once(|| VirtioDisk {
        hw,
        queue,
        irq,
        attach,
    });
}

fn find(info: &BootInfo, mode: Mode) -> Option<(VirtioBlk, Found)> {
    if let Some(f) = config::VIRTIO_BLK_PCI_IDS
        .iter()
        .find_map(|&(vendor, device)| pci::find(vendor, device))
    {
        match virtio_blk::pci::transport(f).and_then(|t| VirtioBlk::new(t, mode)) {
            Ok(hw) => return Some((hw, Found::Pci(f))),
            Err(e) => {
                defmt::error!("virtio-blk pci: {}", defmt::Debug2Format(&e));
                super::attach_failed(
                    super::DiskKind::Virtio,
                    format_args!("virtio-blk pci: {:?}", e),
                );
            }
        }
    }
    for slot in &info.virtio_mmio {
        let Some(regs) = arch::mmio_mapper().map(PhysAddr(slot.base), slot.size as usize) else {
            continue;
        };
        // Slot magic "virt" and device ID 2 (block); empty slots have ID 0.
        if regs.read32(0) != 0x7472_6976 || regs.read32(8) != 2 {
            continue;
        }
        match virtio_blk::mmio_transport(&regs).and_then(|t| VirtioBlk::new(t, mode)) {
            Ok(hw) => return Some((hw, Found::Mmio(slot.irq))),
            Err(e) => {
                defmt::error!(
                    "virtio-blk mmio {=u64:#x}: {}",
                    slot.base,
                    defmt::Debug2Format(&e)
                );
                super::attach_failed(
                    super::DiskKind::Virtio,
                    format_args!("virtio-blk mmio {:#x}: {:?}", slot.base, e),
                );
            }
        }
    }
    None
}
