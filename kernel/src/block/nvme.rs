//! NVMe probing: the first `1b36:0010`-class controller (any NVMe class 01:08:02 function),
//! BAR0 mapped, bus mastering on, a block-layer queue on each of its first
//! `nvme::MAX_NS_QUEUES` usable active namespaces (read-only when the namespace is write
//! protected), all sharing the controller's I/O queue pairs; every other active namespace is
//! logged with the reason it is not attached. With MSI-X (x86_64) one I/O queue pair per
//! online CPU, up to what the controller grants, each completion queue on its own vector
//! routed to the CPU that submits to it; INTx through the PLIC (riscv64), or polling, one
//! pair shared by every CPU.

use core::sync::atomic::{AtomicU64, Ordering};

use blk::{Queue, QueueConfig, Wait};
use hal::IrqLine;
use nvme::{
    Config, InitError, MAX_IO_QUEUES, MAX_NS_QUEUES, Mode, NsQueue, NsState, Nvme, QUEUE_DEPTH,
};
use spin::Once;

use crate::{arch, config, pci};

pub use super::Attach;

/// The NVMe disk: driver, request queue of the first attached namespace, interrupt line.
pub type NvmeDisk = super::Disk<Nvme, QUEUE_DEPTH>;

impl super::DriverDeferred for Nvme {
    fn deferred(&self) {
        Nvme::deferred(self);
        // The disk's own queue (namespace queue 0) gets its kick and timeout scan from the
        // block glue; the other namespaces' queues get theirs here.
        if self.ns_queues() > 1 {
            other_namespaces_deferred();
        }
    }
}

static HW: Once<Nvme> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();
static DISK: Once<NvmeDisk> = Once::new();
/// The `HwQueue`s of namespace queues 1.. (queue 0's is the driver itself).
static NS_HW: [Once<NsQueue<'static>>; MAX_NS_QUEUES] = [const { Once::new() }; MAX_NS_QUEUES];
/// The block-layer queues of namespace queues 1.. (queue 0's is the disk's).
static NS_QUEUES: [Once<Queue<QUEUE_DEPTH>>; MAX_NS_QUEUES] =
    [const { Once::new() }; MAX_NS_QUEUES];
/// The interrupt handler of each vector (vector k reaps I/O queue pair k).
static VECTORS: [Once<Vector>; MAX_IO_QUEUES] = [const { Once::new() }; MAX_IO_QUEUES];
/// The interrupt line of each vector in use.
static LINES: [Once<IrqLine>; MAX_IO_QUEUES] = [const { Once::new() }; MAX_IO_QUEUES];
/// Interrupts taken, by vector and by the CPU that took them, with several vectors (the test
/// of per-CPU completion reads these).
static TAKEN: super::PerCpuCounts<MAX_IO_QUEUES> = super::PerCpuCounts::new();

/// One vector's handler: reaps its own I/O queue pair, counts where it ran.
struct Vector {
    hw: &'static Nvme,
    pair: usize,
}

impl hal::IrqHandler for Vector {
    fn handle(&self) {
        TAKEN.add(self.pair, 1);
        self.hw.handle_vector(self.pair);
    }
}

/// Interrupts of vector `k` (I/O queue pair `k`) taken on CPU `cpu` so far (counted only with
/// several vectors).
pub fn vector_taken_on(k: usize, cpu: usize) -> u64 {
    TAKEN.get(k, cpu)
}

/// Interrupts taken on every vector of the NVMe controller so far.
pub fn interrupts() -> u64 {
    LINES.iter().filter_map(Once::get).map(|l| l.count()).sum()
}

/// The interrupt line of vector `k`, if it is in use.
pub fn vector_line(k: usize) -> Option<IrqLine> {
    LINES.get(k).and_then(Once::get).copied()
}

/// When the other namespaces' queues are next due for a timeout scan.
static NEXT_NS_SCAN: AtomicU64 = AtomicU64::new(0);

/// The NVMe disk (the first attached namespace), if one was found.
pub fn disk() -> Option<&'static NvmeDisk> {
    DISK.get()
}

/// The block-layer queue of attached namespace `k` (0: the disk's own queue; up to
/// `nvme::MAX_NS_QUEUES`, in namespace id order), if there is one.
pub fn namespace(k: usize) -> Option<&'static Queue<QUEUE_DEPTH>> {
    match k {
        0 => QUEUE.get(),
        _ => NS_QUEUES.get(k).and_then(Once::get),
    }
}

/// Kicks the queues of namespaces 1.. (requeued requests) and, every
/// `config::TIMEOUT_SCAN_NS`, scans them for timeouts: the deferred work the block glue does
/// for the disk's own queue. Only with more than one namespace attached.
#[cold]
#[inline(never)]
fn other_namespaces_deferred() {
    let now = super::clock();
    let scan = now >= NEXT_NS_SCAN.load(Ordering::Relaxed);
    if scan {
        NEXT_NS_SCAN.store(
            now.saturating_add(config::TIMEOUT_SCAN_NS),
            Ordering::Relaxed,
        );
    }
    for q in NS_QUEUES.iter().skip(1).filter_map(Once::get) {
        q.kick();
        if scan {
            q.check_timeouts(now);
        }
    }
}

/// Why an NVMe controller present on PCI could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// BAR0 could not be mapped.
    Bar0,
    /// The driver's bring-up failed.
    Init(InitError),
}

impl defmt::Format for ProbeError {
    fn format(&self, f: defmt::Formatter) {
        match self {
            ProbeError::Bar0 => defmt::write!(f, "BAR0 not mapped"),
            ProbeError::Init(InitError::NoNamespace {
                active,
                first: Some(n),
            }) => defmt::write!(
                f,
                "no usable namespace ({=u32} active; namespace {=u32}: {=str})",
                active,
                n.nsid,
                ns_reason(n.state)
            ),
            ProbeError::Init(e) => defmt::write!(f, "{}", defmt::Debug2Format(e)),
        }
    }
}

/// Why a namespace is (not) attached, in words.
pub fn ns_reason(s: NsState) -> &'static str {
    match s {
        NsState::Attached => "attached",
        NsState::NotAttached => "not attached: the controller has its namespace queues already",
        NsState::NoMemory => "not attached: no DMA memory for its command slots",
        NsState::IdentifyFailed => "not attached: Identify Namespace failed",
        NsState::Empty => "not attached: size 0",
        NsState::BadFormat => "not attached: unusable LBA format",
        NsState::Metadata => "not attached: LBA format with metadata",
    }
}

/// Finds the NVMe controller and brings it up, logging an error it could not.
pub fn probe(polled: bool, prefer_sgl: bool) {
    if let Err(e) = attach(polled, prefer_sgl) {
        defmt::error!("nvme: {}", e);
        super::attach_failed(super::DiskKind::Nvme, format_args!("nvme: {:?}", e));
    }
}

/// Finds the NVMe controller and brings it up: `Ok(None)` when there is none, the error
/// when one is present and cannot be used (a profile that expects a disk fails then).
pub fn attach(polled: bool, prefer_sgl: bool) -> Result<Option<&'static NvmeDisk>, ProbeError> {
    if let Some(d) = DISK.get() {
        return Ok(Some(d));
    }
    let Some(f) = pci::find(config::NVME_VENDOR_ID, config::NVME_DEVICE_ID) else {
        return Ok(None);
    };
    let Some(bar0) = f.map_bar(0, arch::mmio_mapper()) else {
        return Err(ProbeError::Bar0);
    };
    f.enable_bus_master();
    super::POLLED.fetch_or(polled, core::sync::atomic::Ordering::Relaxed);
    // One I/O queue pair per CPU, each completion queue on an MSI-X vector of its own that
    // interrupts the CPU which submits to it; one shared pair on one vector (MSI-X entry 0,
    // INTx, polling) otherwise. QEMU only signals a completion queue's MSI-X vector if MSI-X
    // was enabled when the queue was created: program the vectors before the controller is
    // enabled.
    let cpus = super::cpus_for_queues();
    let table = if polled {
        None
    } else {
        f.msix(arch::mmio_mapper()).ok()
    };
    let mut lines = [None; MAX_IO_QUEUES];
    let mut vectors = 0;
    if let Some(t) = &table {
        let want = cpus.min(MAX_IO_QUEUES).min(usize::from(t.len()));
        for (k, l) in lines.iter_mut().enumerate().take(want) {
            // Vector k interrupts CPU k: the first CPU of hardware context k when every CPU
            // has its own (the map is `cpu * contexts / cpus`); moved below if fewer pairs
            // are granted.
            let Some((line, msg)) = hal::irq::alloc_msi_on(k) else {
                break;
            };
            if t.set_entry(k as u16, msg).is_err() || t.unmask(k as u16).is_err() {
                defmt::error!("nvme: MSI-X entry {=usize} setup failed", k);
                break;
            }
            *l = Some(line);
            vectors = k + 1;
        }
        if vectors > 0 {
            t.enable();
        }
    }
    let intx = !polled && vectors == 0;
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
        queues: vectors.max(1) as u16,
    };
    let (irq, attach) = if vectors > 0 {
        (lines[0], Attach::Msix)
    } else if !polled {
        let line = pci::intx_line(f);
        if line.is_some() {
            f.enable_intx();
        }
        lines[0] = line;
        (line, Attach::Intx)
    } else {
        (None, Attach::Polled)
    };
    let hw = match Nvme::new(bar0, cfg) {
        Ok(hw) => HW.call_once(|| hw),
        Err(e) => return Err(ProbeError::Init(e)),
    };
    let pairs = hw.io_queues();
    // Fewer pairs granted than CPUs: context k's CPUs are a group; its vector goes to the
    // group's first CPU (the entries past the pairs in use stay unused).
    if pairs < cpus
        && pairs > 1
        && let Some(t) = &table
    {
        for (k, l) in lines.iter_mut().enumerate().take(pairs).skip(1) {
            let first = (k * cpus).div_ceil(pairs);
            if let Some((line, msg)) = hal::irq::alloc_msi_on(first)
                && t.set_entry(k as u16, msg).is_ok()
            {
                *l = Some(line);
            }
        }
    }
    let i = *hw.info();
    let queue =
        QUEUE.call_once(|| Queue::new(hw, hw.limits(), queue_config(hw, 0), &super::SPLIT_SET));
    super::map_queue(queue, pairs);
    hw.attach(queue);
    for k in 1..hw.ns_queues() {
        if let (Some(nq), Some(limits)) = (hw.ns_queue(k), hw.ns_limits(k)) {
            let nhw = NS_HW[k].call_once(|| nq);
            let q = NS_QUEUES[k]
                .call_once(|| Queue::new(nhw, limits, queue_config(hw, k), &super::SPLIT_SET));
            super::map_queue(q, pairs);
            hw.attach_ns(k, q);
        }
    }
    let used = if vectors > 0 {
        pairs
    } else {
        usize::from(irq.is_some())
    };
    for (k, line) in lines.iter().enumerate().take(used) {
        let Some(line) = line else { continue };
        // One vector: the driver's own handler (vector 0), as on one CPU. Several: each
        // vector's handler reaps its pair and counts the CPU it ran on.
        let h: &'static dyn hal::IrqHandler = if used > 1 {
            VECTORS[k].call_once(|| Vector { hw, pair: k })
        } else {
            hw
        };
        if line.register(h).is_err() || line.enable().is_err() {
            super::setup_errors::record(format_args!(
                "nvme: cannot use interrupt line {}",
                line.number()
            ));
        } else {
            LINES[k].call_once(|| *line);
        }
    }
    defmt::println!(
        "nvme: I/O queue pairs {=usize} ({=u16} asked, {=u16} granted), vectors {=usize}, CPUs {=usize}{=str}",
        pairs,
        i.queues_wanted,
        i.queues_granted,
        used,
        cpus,
        match attach {
            Attach::Polled => " (polled: one shared pair)",
            Attach::Intx => " (INTx: one shared pair)",
            _ if pairs == 1 && cpus > 1 => " (one vector: one shared pair)",
            _ => "",
        }
    );
    let l = hw.limits();
    defmt::println!(
        "nvme: {} namespace {=u32}{=str}, {=u64} sectors, block {=u32}, mdts {=u64}, max {=u32} sectors x {=u16} segs, vwc {=bool}, dsm {=bool}, wzeroes {=bool}, sgl {=bool}/{=bool}, queue {=u16} of {=u32}, depth {=usize}",
        attach,
        i.nsid,
        if i.read_only {
            " (write protected: read-only)"
        } else {
            ""
        },
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
    log_namespaces(hw);
    Ok(Some(DISK.call_once(|| NvmeDisk {
        hw,
        queue,
        irq,
        attach,
    })))
}

/// The block-layer settings of namespace queue `k`: its size, read-only when write protected.
fn queue_config(hw: &Nvme, k: usize) -> QueueConfig {
    let (capacity, read_only) = hw
        .ns_queue_info(k)
        .map_or((0, true), |n| (n.capacity, n.read_only));
    let mut qc = QueueConfig::new(capacity);
    qc.read_only = read_only;
    qc.clock = super::clock;
    qc.wait = Wait::Hook(super::wait);
    qc.timeout_ns = config::block_timeout_ns(config::NVME_TIMEOUT_NS);
    qc
}

/// Logs the namespaces attached besides the first (which the line before names) and every
/// active namespace not attached, with the reason.
fn log_namespaces(hw: &Nvme) {
    for k in 1..hw.ns_queues() {
        if let Some(n) = hw.ns_queue_info(k) {
            defmt::println!(
                "nvme: namespace {=u32}{=str} attached as queue {=usize}, {=u64} sectors, block {=u32}",
                n.nsid,
                if n.read_only {
                    " (write protected: read-only)"
                } else {
                    ""
                },
                k,
                n.capacity,
                n.block_size
            );
        }
    }
    let ns = hw.namespaces();
    for n in ns.iter().filter(|n| n.state != NsState::Attached) {
        defmt::warn!("nvme: namespace {=u32} {=str}", n.nsid, ns_reason(n.state));
    }
    if ns.unlisted > 0 {
        defmt::warn!(
            "nvme: {=u32} more active namespaces not attached: more than the driver records",
            ns.unlisted
        );
    }
    if ns.unscanned > 0 {
        defmt::warn!(
            "nvme: namespace ids above {=u32} not looked at ({=u32} of them; no active namespace list)",
            nvme::ns::SCAN_MAX,
            ns.unscanned
        );
    }
}
