//! virtio-blk probing: PCI first (either arch), then the riscv64 virtio-mmio slots; the block
//! layer's queue on top; MSI-X, INTx or the slot's PLIC line for completions.
//!
//! Over PCI with MSI-X the device gets one request queue per hardware context of the block
//! layer's queue (`VIRTIO_BLK_F_MQ`: as many as it offers, up to the CPUs online), each with
//! its own MSI-X vector delivered to the CPU that submits to it. INTx, virtio-mmio, polled
//! mode and devices without `VIRTIO_BLK_F_MQ` share one queue.

use blk::{Queue, QueueConfig, Wait};
use hal::{IrqLine, MsiMessage, PhysAddr};
use spin::Once;
use virtio_blk::queue::MAX_QUEUES;
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
        self.recover();
    }
}

static HW: Once<VirtioBlk> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();
static DISK: Once<VirtioDisk> = Once::new();

/// The interrupt handler of one request queue (its own MSI-X vector), counting its runs and
/// the completions it delivers on the CPU it runs on.
struct QueueIrq {
    q: usize,
}

impl hal::IrqHandler for QueueIrq {
    fn handle(&self) {
        let Some(hw) = HW.get() else { return };
        let n = hw.handle_queue_irq(self.q);
        QUEUE_DONE_ON.add(self.q, n as u64);
        QUEUE_IRQ_ON.add(self.q, 1);
    }
}

static QUEUE_IRQS: [QueueIrq; MAX_QUEUES] = {
    let mut h = [const { QueueIrq { q: 0 } }; MAX_QUEUES];
    let mut q = 0;
    while q < MAX_QUEUES {
        h[q].q = q;
        q += 1;
    }
    h
};

/// Completions delivered by queue `q`'s own interrupt handler on CPU `cpu`.
static QUEUE_DONE_ON: super::PerCpuCounts<MAX_QUEUES> = super::PerCpuCounts::new();

/// Runs of queue `q`'s own interrupt handler on CPU `cpu`.
static QUEUE_IRQ_ON: super::PerCpuCounts<MAX_QUEUES> = super::PerCpuCounts::new();

/// The per-queue interrupt lines (one MSI-X vector each), when the device has them.
static QUEUE_LINES: Once<([Option<IrqLine>; MAX_QUEUES], usize)> = Once::new();

/// Completions queue `q`'s own interrupt handler has delivered on CPU `cpu` so far (0 without
/// per-queue vectors).
pub fn queue_completions_on(q: usize, cpu: usize) -> u64 {
    QUEUE_DONE_ON.get(q, cpu)
}

/// Times queue `q`'s own interrupt handler has run on CPU `cpu` so far (0 without per-queue
/// vectors). A run may deliver nothing: the reap is handed to the code it interrupted (on the
/// same CPU) when that holds the queue's lock.
pub fn queue_interrupts_on(q: usize, cpu: usize) -> u64 {
    QUEUE_IRQ_ON.get(q, cpu)
}

/// Request queues with an interrupt vector of their own (0: one shared interrupt).
pub fn queue_vectors() -> usize {
    QUEUE_LINES.get().map_or(0, |(_, n)| *n)
}

/// Queue `q`'s own interrupt line, if it has one.
pub fn queue_line(q: usize) -> Option<IrqLine> {
    QUEUE_LINES
        .get()
        .and_then(|(l, _)| l.get(q).copied().flatten())
}

/// The first CPU that submits to hardware context `q` of `n` (the one its vector goes to).
fn owner_cpu(q: usize, n: usize) -> usize {
    let cpus = super::cpus_for_queues();
    (0..cpus)
        .find(|&c| blk::queue::cpu_to_ctx(c, cpus, n) == q)
        .unwrap_or(0)
}

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
    // Queue 0's vector (on CPU 0, which submits to context 0) says whether the platform has
    // MSI at all: only then are several queues asked for.
    let vector0 = (mode == Mode::Interrupt)
        .then(|| hal::irq::alloc_msi_on(0))
        .flatten();
    let Some((hw, found)) = find(info, mode, vector0.is_some()) else {
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
    let contexts = super::map_queue(queue, hw.nr_queues());
    if contexts != hw.nr_queues() {
        defmt::error!(
            "virtio-blk: {=usize} queues but {=usize} hardware contexts",
            hw.nr_queues(),
            contexts
        );
    }
    hw.attach(queue);
    let (irq, attach, vectors) = match found {
        Found::Pci(f) => match (mode, vector0) {
            (Mode::Interrupt, Some((line, msg))) => {
                let lines = msix_vectors(f, hw, (line, msg));
                (Some(line), Attach::Msix, lines)
            }
            (Mode::Interrupt, None) => {
                let line = pci::intx_line(f);
                if line.is_some() {
                    f.enable_intx();
                }
                (line, Attach::Intx, 0)
            }
            (Mode::Polling, _) => (None, Attach::Polled, 0),
        },
        Found::Mmio(irq) => (
            (mode == Mode::Interrupt).then(|| IrqLine::new(irq)),
            Attach::MmioLine,
            0,
        ),
    };
    if let Some(line) = irq
        && vectors <= 1
    {
        if attach != Attach::Msix {
            hw.set_irq_line(line);
        }
        if line.register(hw).is_err() || line.enable().is_err() {
            super::setup_errors::record(format_args!(
                "virtio-blk: cannot use interrupt line {}",
                line.number()
            ));
        }
    }
    let i = hw.info();
    if let Some(why) = i.queue_fallback {
        defmt::warn!(
            "virtio-blk: {=u16} queues offered, using {=u16}: {}",
            i.queues_offered,
            i.queues,
            defmt::Debug2Format(&why)
        );
    }
    defmt::println!(
        "virtio-blk: {}, {=u16} queues offered, {=u16} used, {=usize} vectors, {=u64} sectors, block {=u32}, segs {=u16}x{=u32}, ro {=bool}, flush {=bool}, discard {=u32}, wzeroes {=u32}, event-idx {=bool}, ring {=u16}, depth {=u16}, {=str}",
        attach,
        i.queues_offered,
        i.queues,
        vectors,
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

/// Programs MSI-X entry `q` of `f` for each of `hw`'s queues (entry 0 with `first`, the others
/// with a vector allocated on the CPU that submits to that queue), registers each queue's own
/// handler when there are several, and enables MSI-X; returns the vectors programmed.
fn msix_vectors(
    f: &'static ::pci::PciFunction<'static>,
    hw: &'static VirtioBlk,
    first: (IrqLine, MsiMessage),
) -> usize {
    let n = hw.nr_queues();
    let Ok(t) = f.msix(arch::mmio_mapper()) else {
        super::setup_errors::record(format_args!("virtio-blk: MSI-X setup failed"));
        return 0;
    };
    let mut lines = [None; MAX_QUEUES];
    let mut ok = true;
    let mut programmed = 0;
    for (q, slot) in lines.iter_mut().enumerate().take(n) {
        let (line, msg) = if q == 0 {
            first
        } else {
            let Some(v) = hal::irq::alloc_msi_on(owner_cpu(q, n)) else {
                super::setup_errors::record(format_args!(
                    "virtio-blk: no interrupt vector for queue {q}"
                ));
                ok = false;
                break;
            };
            v
        };
        ok &= t.set_entry(q as u16, msg).is_ok() && t.unmask(q as u16).is_ok();
        if n > 1 && (line.register(&QUEUE_IRQS[q]).is_err() || line.enable().is_err()) {
            super::setup_errors::record(format_args!(
                "virtio-blk: cannot use interrupt line {}",
                line.number()
            ));
            ok = false;
        }
        *slot = Some(line);
        programmed += 1;
    }
    t.enable();
    if !ok || !hw.set_msix(f, arch::mmio_mapper()) {
        super::setup_errors::record(format_args!("virtio-blk: MSI-X setup failed"));
    }
    if n > 1 {
        QUEUE_LINES.call_once(|| (lines, programmed));
    }
    programmed
}

/// Finds the first virtio-blk device and brings it up: over PCI with MSI (`msi`) and MSI-X
/// with its doorbells, with a queue per CPU (as the device grants); one queue otherwise.
fn find(info: &BootInfo, mode: Mode, msi: bool) -> Option<(VirtioBlk, Found)> {
    if let Some(f) = config::VIRTIO_BLK_PCI_IDS
        .iter()
        .find_map(|&(vendor, device)| pci::find(vendor, device))
    {
        let doorbells = virtio_blk::pci::Doorbells::of(f, arch::mmio_mapper());
        let vectors = f.msix_table_size().map_or(0, usize::from);
        let want = if msi && doorbells.is_some() {
            super::cpus_for_queues().min(vectors).max(1)
        } else {
            1
        };
        match virtio_blk::pci::transport(f)
            .and_then(|t| VirtioBlk::with_queues(t, mode, want, doorbells.as_ref()))
        {
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
