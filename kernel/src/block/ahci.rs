//! AHCI probing: the first SATA AHCI function (class 01:06:01, e.g. q35's ICH9 at 00:1f.2 or
//! `-device ahci`), ABAR (BAR5) mapped, bus mastering on, the block layer's queue on top; MSI on
//! x86_64 when offered, else INTx (through the PLIC on riscv64), or polling (`ahci=poll`).

use ahci::{Ahci, Mode, QUEUE_DEPTH};
use blk::{Queue, QueueConfig, Wait};
use spin::Once;

use crate::{arch, config, pci};

pub use super::Attach;

/// The AHCI disk: driver, request queue, interrupt line.
pub type AhciDisk = super::Disk<Ahci, QUEUE_DEPTH>;

impl super::DriverDeferred for Ahci {
    fn deferred(&self) {
        Ahci::deferred(self);
    }
}

static HW: Once<Ahci> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();
static DISK: Once<AhciDisk> = Once::new();

/// The AHCI disk, if one was found.
pub fn disk() -> Option<&'static AhciDisk> {
    DISK.get()
}

/// Finds the first AHCI controller and brings up the disk on its first live port.
pub fn probe(polled: bool) {
    let Some(f) = pci::functions().iter().find(|f| {
        let c = f.class();
        (c.class, c.subclass, c.prog_if) == config::AHCI_CLASS
    }) else {
        return;
    };
    let Some(abar) = f.map_bar(5, arch::mmio_mapper()) else {
        defmt::error!("ahci: BAR5 not mapped");
        super::attach_failed(super::DiskKind::Ahci, format_args!("ahci: BAR5 not mapped"));
        return;
    };
    f.enable_bus_master();
    let mode = if polled {
        Mode::Polling
    } else {
        Mode::Interrupt
    };
    let hw = match Ahci::new(abar, mode) {
        Ok(hw) => HW.call_once(|| hw),
        // q35 always has its ICH9 controller; without a disk behind it there is nothing to do.
        Err(ahci::InitError::NoDevice) => {
            defmt::println!("ahci: controller without a disk");
            super::attach_failed(
                super::DiskKind::Ahci,
                format_args!("ahci: no port has a disk"),
            );
            return;
        }
        Err(e) => {
            defmt::error!("ahci: {}", defmt::Debug2Format(&e));
            super::attach_failed(super::DiskKind::Ahci, format_args!("ahci: {:?}", e));
            return;
        }
    };
    let i = *hw.info();
    let mut cfg = QueueConfig::new(i.identify.sectors());
    cfg.clock = super::clock;
    cfg.wait = Wait::Hook(super::wait);
    cfg.timeout_ns = config::AHCI_TIMEOUT_NS;
    let queue = QUEUE.call_once(|| Queue::new(hw, hw.limits(), cfg, &super::SPLIT_SET));
    hw.attach(queue);
    let (irq, attach) = match mode {
        Mode::Polling => (None, Attach::Polled),
        Mode::Interrupt => {
            let msi = if cfg!(target_arch = "x86_64") && f.msi_offset().is_some() {
                hal::irq::alloc_msi()
            } else {
                None
            };
            match msi {
                Some((line, msg)) if f.enable_msi(msg).is_ok() => (Some(line), Attach::Msi),
                _ => {
                    let line = pci::intx_line(f);
                    if line.is_some() {
                        f.enable_intx();
                    }
                    (line, Attach::Intx)
                }
            }
        }
    };
    if let Some(line) = irq
        && (line.register(hw).is_err() || line.enable().is_err())
    {
        defmt::error!("ahci: cannot use interrupt line {=u32}", line.number());
    }
    let (model, serial) = hw.model_serial();
    let id = &i.identify;
    defmt::println!(
        "ahci: port {=u8} \"{=str}\" serial \"{=str}\" {=u64} sectors, logical {=u32} physical {=u32}, ncq {=bool} depth {=u8}, write cache {=bool}, trim {=bool}, 64-bit {=bool}, {}",
        i.port,
        model,
        serial,
        id.sectors(),
        id.logical_sector_size,
        id.physical_sector_size,
        i.ncq,
        i.ncq_depth,
        id.write_cache_enabled,
        id.trim,
        i.addr64,
        attach
    );
    DISK.call_once(|| AhciDisk {
        hw,
        queue,
        irq,
        attach,
    });
}
