//! AHCI probing: the first SATA AHCI function (class 01:06:01, e.g. q35's ICH9 at 00:1f.2 or
//! `-device ahci`), ABAR (BAR5) mapped, bus mastering on, the HBA reset, then every port with a
//! disk brought up as a block-layer queue of its own (up to [`MAX_DISKS`]). Every implemented
//! port that is not attached is logged with the reason (no device, link down, ATAPI, port
//! multiplier, bring-up error, over the limit). The ports share the controller's interrupt: MSI
//! on x86_64 when offered, else INTx (through the PLIC on riscv64), or polling (`ahci=poll`).
//! Each port has one command list, shared by every CPU (one hardware context: NCQ tags from
//! the block layer's lock-free tag set); with MSI and several CPUs every completion runs on
//! [`IRQ_CPU`], the CPU the MSI goes to (the driver's completions; a bio whose request
//! completed while its submitter was still handing it to the driver is ended by the
//! submitter, as the block layer does for every driver).

use core::sync::atomic::{AtomicU64, Ordering};

use ahci::{Ahci, Hba, Mode, Owner, PortStatus, QUEUE_DEPTH};
use blk::{BlkStatus, Queue, QueueConfig, TagComplete, Wait};
use hal::IrqLine;
use spin::Once;

use super::MAX_CPUS;
use crate::{arch, config, pci};

pub use super::Attach;

/// An AHCI disk: driver (one port), request queue, interrupt line (shared by the ports).
pub type AhciDisk = super::Disk<Ahci, QUEUE_DEPTH>;

/// Disks (ports) attached at most: the ICH9 has 6 ports. A disk on a further port is logged
/// and left alone.
pub const MAX_DISKS: usize = 6;

impl super::DriverDeferred for Ahci {
    fn deferred(&self) {
        Ahci::deferred(self);
    }
}

static HBA: Once<Hba> = Once::new();
static HW: [Once<Ahci>; MAX_DISKS] = [const { Once::new() }; MAX_DISKS];
static QUEUES: [Once<Queue<QUEUE_DEPTH>>; MAX_DISKS] = [const { Once::new() }; MAX_DISKS];
static DISKS: [Once<AhciDisk>; MAX_DISKS] = [const { Once::new() }; MAX_DISKS];

/// The first AHCI disk (lowest port), if one was attached.
pub fn disk() -> Option<&'static AhciDisk> {
    DISKS[0].get()
}

/// Every attached AHCI disk, by port.
pub fn disks() -> impl Iterator<Item = &'static AhciDisk> {
    DISKS.iter().map_while(Once::get)
}

/// Why the AHCI controller, or a disk on one of its ports, was not attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// BAR5 (ABAR) could not be mapped.
    Bar,
    /// The HBA did not come out of its reset, or is refused.
    Controller(ahci::InitError),
    /// The disk on `port` failed to come up (the first such port; the others are logged).
    Port {
        /// The HBA port.
        port: u8,
        /// What failed.
        error: ahci::InitError,
    },
}

/// Dispatches the controller's interrupt to the ports that raised it (the HBA's `IS`), when
/// several disks share it.
struct Ports;

/// Rounds of `Ports::handle` over the HBA's `IS` before it leaves the rest to the next
/// interrupt (a bound against a port that keeps raising).
const DISPATCH_ROUNDS: usize = 8;

impl hal::IrqHandler for Ports {
    fn handle(&self) {
        let Some(hba) = HBA.get() else {
            return;
        };
        // Go round until `IS` reads 0: a port that raised while another was being handled
        // keeps a shared INTx line high, and an interrupt controller that only sees rising
        // edges (QEMU's PLIC on riscv64 `virt`) would never signal that port again; its
        // requests, and then every port's, would wait for the request timeout.
        // A kick from a lock holder on another CPU (`Ahci::set_owner`): `IS` was acknowledged
        // already, the port only wants its reap.
        for hw in HW.iter().map_while(Once::get) {
            if hw.reap_wanted() {
                hw.handle_irq();
            }
        }
        for _ in 0..DISPATCH_ROUNDS {
            let pending = hba.pending();
            if pending == 0 {
                return;
            }
            for hw in HW.iter().map_while(Once::get) {
                if pending & (1 << hw.port()) != 0 {
                    hw.handle_irq();
                }
            }
        }
    }
}

static PORTS: Ports = Ports;

/// The CPU the controller's MSI goes to: where every completion runs when several CPUs
/// submit.
pub const IRQ_CPU: usize = 0;
/// The MSI line, when completions are kept on [`IRQ_CPU`].
static MSI_LINE: Once<IrqLine> = Once::new();

/// Completions the driver delivered to the block layer, by the CPU they ran on (with several
/// CPUs online).
static DELIVERED_ON: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Each disk's queue behind its counter (with several CPUs online).
static COUNTED: [Once<Counted>; MAX_DISKS] = [const { Once::new() }; MAX_DISKS];

/// A disk's queue, with the driver's completions counted by CPU on the way.
struct Counted(&'static Queue<QUEUE_DEPTH>);

impl Counted {
    fn count(&self) {
        DELIVERED_ON[arch::cpu_id() & (MAX_CPUS - 1)].fetch_add(1, Ordering::Relaxed);
    }
}

impl TagComplete for Counted {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        self.count();
        self.0.complete(tag, status, done_bytes);
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        self.count();
        self.0.complete_pt(tag, status, result);
    }
    fn kick(&self) {
        self.0.kick();
    }
}

/// Completions the AHCI driver delivered on CPU `cpu` so far (counted with several CPUs
/// online).
pub fn delivered_on(cpu: usize) -> u64 {
    DELIVERED_ON
        .get(cpu)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// The CPU completions run on ([`IRQ_CPU`]) when the ports have an owner: MSI and several
/// CPUs.
pub fn completion_cpu() -> Option<usize> {
    MSI_LINE.get().map(|_| IRQ_CPU)
}

fn on_irq_cpu() -> bool {
    arch::cpu_id() == IRQ_CPU
}

/// Sends the controller's MSI vector to [`IRQ_CPU`] (a reap handed to another CPU).
fn kick_irq_cpu() {
    if let Some(line) = MSI_LINE.get() {
        arch::raise_msi_on(IRQ_CPU, line.number());
    }
}

/// Finds the first AHCI controller and attaches the disk on every port that has one. `Ok(n)`:
/// `n` disks attached (0 without a controller or a disk); an error when the controller, or
/// the disk on some port, failed to come up (the disks on the other ports stay attached).
/// Every port's outcome is logged.
pub fn probe(polled: bool) -> Result<usize, ProbeError> {
    let Some(f) = pci::functions().iter().find(|f| {
        let c = f.class();
        (c.class, c.subclass, c.prog_if) == config::AHCI_CLASS
    }) else {
        return Ok(0);
    };
    let Some(abar) = f.map_bar(5, arch::mmio_mapper()) else {
        defmt::error!("ahci: BAR5 not mapped");
        return Err(ProbeError::Bar);
    };
    f.enable_bus_master();
    let mode = if polled {
        Mode::Polling
    } else {
        Mode::Interrupt
    };
    let hba = match Hba::new(abar) {
        Ok(h) => HBA.call_once(|| h),
        Err(e) => {
            defmt::error!("ahci: controller: {}", defmt::Debug2Format(&e));
            return Err(ProbeError::Controller(e));
        }
    };
    let mut attached = 0;
    let mut first_error = None;
    let mut no_device = 0u32;
    for port in 0..32 {
        match hba.port_status(port) {
            PortStatus::NotImplemented => {}
            PortStatus::NoDevice => no_device |= 1 << port,
            PortStatus::Disk if attached == MAX_DISKS => defmt::println!(
                "ahci: port {=usize}: disk not attached: this kernel takes at most {=usize} AHCI disks",
                port,
                MAX_DISKS
            ),
            PortStatus::Disk => match attach_port(hba, port, mode, attached) {
                Ok(()) => attached += 1,
                Err(error) => {
                    defmt::error!(
                        "ahci: port {=usize}: disk not attached: bring-up failed: {}",
                        port,
                        defmt::Debug2Format(&error)
                    );
                    first_error.get_or_insert(ProbeError::Port {
                        port: port as u8,
                        error,
                    });
                }
            },
            other => defmt::println!(
                "ahci: port {=usize}: not attached: {}",
                port,
                defmt::Debug2Format(&other)
            ),
        }
    }
    if no_device != 0 {
        defmt::println!(
            "ahci: no device on ports {=u32:#x} (bit per port)",
            no_device
        );
    }
    if attached > 0 {
        connect_interrupt(f, mode, attached);
    } else if first_error.is_none() {
        // q35 always has its ICH9 controller; without a disk behind it there is nothing to do.
        defmt::println!("ahci: controller without a disk");
    }
    first_error.map_or(Ok(attached), Err)
}

/// Brings up the disk on `port` as disk number `n`, with its queue (the disk is completed by
/// [`connect_interrupt`] once every port is up).
fn attach_port(hba: &Hba, port: usize, mode: Mode, n: usize) -> Result<(), ahci::InitError> {
    let mut hw = Ahci::on_port(hba, port, mode)?;
    if super::bounce::forced_on(hba, port) {
        // Tests of the bounce path: as if the controller had no 64-bit addressing and reached
        // only the bounce pages (block/bounce.rs).
        hw.limit_dma(super::bounce::low_limit());
        defmt::println!(
            "ahci: port {=usize}: {=str}: DMA limit {=u64:#x}, as without 64-bit addressing",
            port,
            super::bounce::FORCE_WORD,
            hw.limits().dma_limit
        );
    }
    let hw = HW[n].call_once(|| hw);
    let i = *hw.info();
    let mut cfg = QueueConfig::new(i.identify.sectors());
    cfg.clock = super::clock;
    cfg.wait = Wait::Hook(super::wait);
    cfg.timeout_ns = config::block_timeout_ns(config::AHCI_TIMEOUT_NS);
    // Write-protected removable media (GET MEDIA STATUS at bring-up): writes are refused by
    // the block layer at submission, and the filesystem sees a read-only device.
    cfg.read_only = i.write_protected;
    // Without 64-bit addressing (`dma_limit` below `u64::MAX`) the queue bounces segments above
    // the limit through pages in the kernel image.
    let limits = hw.limits();
    if !super::bounce::pages_below(limits.dma_limit) {
        defmt::error!(
            "ahci: port {=usize}: bounce pages above the DMA limit {=u64:#x}",
            port,
            limits.dma_limit
        );
    }
    let queue = QUEUES[n].call_once(|| {
        Queue::new(hw, limits, cfg, &super::SPLIT_SET).with_bounce(&super::bounce::BOUNCER)
    });
    // One command list per port, shared by every CPU: one hardware context.
    super::map_queue(queue, 1);
    if super::cpus_for_queues() > 1 {
        // Several CPUs: count where the driver's completions run (the tests read it).
        hw.attach(COUNTED[n].call_once(|| Counted(queue)));
    } else {
        hw.attach(queue);
    }
    let (model, serial) = hw.model_serial();
    let id = &i.identify;
    defmt::println!(
        "ahci: port {=u8} \"{=str}\" serial \"{=str}\" {=u64} sectors, logical {=u32} physical {=u32}, ncq {=bool} depth {=u8}, write cache {=bool}, trim {=bool}, 64-bit {=bool}, write-protected {=bool}",
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
        i.write_protected,
    );
    Ok(())
}

/// The controller's interrupt (MSI, else INTx, none when polled), shared by the `n` disks
/// brought up: with one disk its port's handler is the line's handler, with several [`Ports`]
/// dispatches by the HBA's `IS`. Then the disks are complete.
fn connect_interrupt(f: &::pci::PciFunction<'static>, mode: Mode, n: usize) {
    let (irq, attach): (Option<IrqLine>, Attach) = match mode {
        Mode::Polling => (None, Attach::Polled),
        Mode::Interrupt => {
            let msi = if cfg!(target_arch = "x86_64") && f.msi_offset().is_some() {
                hal::irq::alloc_msi_on(IRQ_CPU)
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
    let handler: &'static dyn hal::IrqHandler = match HW[0].get() {
        Some(hw) if n == 1 => hw,
        _ => &PORTS,
    };
    if let Some(line) = irq
        && (line.register(handler).is_err() || line.enable().is_err())
    {
        super::setup_errors::record(format_args!(
            "ahci: cannot use interrupt line {}",
            line.number()
        ));
    }
    // Several CPUs submit to the ports' one command list each: completions run on the CPU the
    // MSI goes to, which a lock holder elsewhere sends the interrupt again when it finds a
    // reap handed to it. INTx (through the IOAPIC or the PLIC) cannot be sent again: whoever
    // holds the lock reaps, as on one CPU.
    let owned = attach == Attach::Msi && super::cpus_for_queues() > 1;
    if let Some(line) = irq
        && owned
    {
        MSI_LINE.call_once(|| line);
        for hw in HW.iter().take(n).filter_map(Once::get) {
            hw.set_owner(Owner {
                here: on_irq_cpu,
                kick: kick_irq_cpu,
            });
        }
    }
    for k in 0..n {
        if let (Some(hw), Some(queue)) = (HW[k].get(), QUEUES[k].get()) {
            DISKS[k].call_once(|| AhciDisk {
                hw,
                queue,
                irq,
                attach,
            });
        }
    }
    if owned {
        defmt::println!(
            "ahci: {=usize} disk(s), {}, one command list per port shared by {=usize} CPUs, completions on CPU {=usize}",
            n,
            attach,
            super::cpus_for_queues(),
            IRQ_CPU
        );
    } else {
        defmt::println!("ahci: {=usize} disk(s), {}", n, attach);
    }
}
