//! NVMe probing: the first `1b36:0010`-class controller (any NVMe class 01:08:02 function),
//! BAR0 mapped, bus mastering on, the block layer's queue on top; MSI-X entry 0 on x86_64,
//! INTx through the PLIC on riscv64, or polling.

use blk::{Queue, QueueConfig, Wait};
use nvme::{Config, Mode, Nvme, QUEUE_DEPTH};
use spin::Once;

use crate::{arch, config, pci};

pub use super::Attach;

/// The NVMe disk: driver, request queue, interrupt line.
pub type NvmeDisk = super::Disk<Nvme, QUEUE_DEPTH>;

impl super::DriverDeferred for Nvme {
    fn deferred(&self) {
        Nvme::deferred(self);
    }
}

static HW: Once<Nvme> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();
static DISK: Once<NvmeDisk> = Once::new();

/// The NVMe disk, if one was found.
pub fn disk() -> Option<&'static NvmeDisk> {
    DISK.get()
}

/// Finds the NVMe controller and brings it up.
pub fn probe(polled: bool, prefer_sgl: bool) {
    let Some(f) = pci::find(config::NVME_VENDOR_ID, config::NVME_DEVICE_ID) else {
        return;
    };
    let Some(bar0) = f.map_bar(0, arch::mmio_mapper()) else {
        defmt::error!("nvme: BAR0 not mapped");
        super::attach_failed(super::DiskKind::Nvme, format_args!("nvme: BAR0 not mapped"));
        return;
    };
    f.enable_bus_master();
    super::POLLED.fetch_or(polled, core::sync::atomic::Ordering::Relaxed);
    let msi = if polled { None } else { hal::irq::alloc_msi() };
    let intx = !polled && msi.is_none();
    let mode = if polled {
        Mode::Polling
    } else {
        Mode::Interrupt
    };
    let cfg = Config {
        mode,
        intx,
        prefer_sgl,
        clock: super::clock,
    };
    // QEMU only signals a completion queue's MSI-X vector if MSI-X was enabled when the
    // queue was created: program it before the controller is enabled.
    let (irq, attach) = match msi {
        Some((line, msg)) => {
            let ok = f.msix(arch::mmio_mapper()).is_ok_and(|t| {
                t.set_entry(0, msg).is_ok() && t.unmask(0).is_ok() && {
                    t.enable();
                    true
                }
            });
            if !ok {
                defmt::error!("nvme: MSI-X setup failed");
            }
            (Some(line), Attach::Msix)
        }
        None if !polled => {
            let line = pci::intx_line(f);
            if line.is_some() {
                f.enable_intx();
            }
            (line, Attach::Intx)
        }
        None => (None, Attach::Polled),
    };
    let hw = match Nvme::new(bar0, cfg) {
        Ok(hw) => HW.call_once(|| hw),
        Err(e) => {
            defmt::error!("nvme: {}", defmt::Debug2Format(&e));
            super::attach_failed(super::DiskKind::Nvme, format_args!("nvme: {:?}", e));
            return;
        }
    };
    let i = *hw.info();
    let mut qc = QueueConfig::new(i.capacity);
    qc.clock = super::clock;
    qc.wait = Wait::Hook(super::wait);
    qc.timeout_ns = config::NVME_TIMEOUT_NS;
    let queue = QUEUE.call_once(|| Queue::new(hw, hw.limits(), qc, &super::SPLIT_SET));
    hw.attach(queue);
    if let Some(line) = irq
        && (line.register(hw).is_err() || line.enable().is_err())
    {
        defmt::error!("nvme: cannot use interrupt line {=u32}", line.number());
    }
    let l = hw.limits();
    defmt::println!(
        "nvme: {} {=u64} sectors, block {=u32}, mdts {=u64}, max {=u32} sectors x {=u16} segs, vwc {=bool}, dsm {=bool}, wzeroes {=bool}, sgl {=bool}/{=bool}, queue {=u16} of {=u32}, depth {=usize}",
        attach,
        i.capacity,
        i.block_size,
        i.mdts_bytes,
        l.max_sectors,
        l.max_segments,
        i.vwc,
        i.dsm,
        i.write_zeroes,
        i.sgl_supported,
        i.sgl,
        i.io_entries,
        i.max_queue_entries,
        QUEUE_DEPTH
    );
    DISK.call_once(|| NvmeDisk {
        hw,
        queue,
        irq,
        attach,
    });
}
