//! NVMe over PCIe as a `blk` hardware queue.
//!
//! Bring-up from BAR0 (reset, admin queue, enable, Identify Controller and Namespace, number of
//! queues, volatile write cache), one I/O queue pair, data pointers from `Request::map_sg` (PRP
//! lists chained over a per-tag page budget, or SGLs when the controller has them), completion
//! by command id from the interrupt handler (or `poll`), every completion checked against the
//! ids in flight, abort then controller reset on a timeout or a fatal status. Admin commands go
//! through the same queue as passthrough requests. See `docs/nvme.md`.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cmd;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod spec;

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use blk::error::{status_code, status_from_code};
use blk::{
    BioFlags, BlkError, BlkStatus, HwQueue, Op, QueueLimits, QueueRqError, Request, SgEntry,
    TagComplete, TimeoutAction,
};
use hal::{DmaBuf, IrqLine, Mmio};
use spin::{Mutex, Once};

use crate::cmd::{Command, DataPtr};
use crate::prp::{ListPages, PAGE, build_prp, build_sgl, max_prp_entries};
use crate::queue::{CidTable, CompQueue, Cqe, INTERNAL_CID, SubQueue};
use crate::regs::{Regs, cc, csts};
use crate::spec::{cns, feature, id_ctrl, id_ns, nvm, oncs};

/// Requests in flight at once (tags of the block layer's queue).
pub const QUEUE_DEPTH: usize = 128;
/// Largest I/O queue this driver creates (also bounded by `CAP.MQES`).
pub const IO_QUEUE_ENTRIES_MAX: u32 = 256;
/// Smallest I/O queue it accepts.
pub const IO_QUEUE_ENTRIES_MIN: u32 = 64;
/// Admin queue entries.
pub const ADMIN_ENTRIES: u16 = 32;
/// PRP/SGL list pages per tag.
pub const LIST_PAGES: usize = 2;
/// Most scatter-gather entries per request.
pub const MAX_SEGMENTS: usize = 128;
/// Scatter-gather entries of the list on the stack for small requests.
const SMALL_SG: usize = 4;
/// The namespace this driver uses.
pub const NSID: u32 = 1;
/// The I/O queue id.
const IOQ: u16 = 1;

/// Passthrough opcodes (`PtCmd::opcode`).
pub mod pt {
    /// An admin command. `args[0]`: opcode (bits 7:0) and NSID (bits 63:32); `args[1..4]`:
    /// command dwords 10..16 (low half first). Data: the optional segment (PRPs). The result
    /// word is completion dword 0.
    pub const ADMIN: u32 = 1;
}

/// `BlkError::DeviceError` codes this driver reports besides the controller's status.
pub mod device_error {
    /// The request was in flight when the controller was reset.
    pub const RESET: u16 = 0x1001;
    /// The controller is unusable (a reset failed).
    pub const DEAD: u16 = 0x1002;
}

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The controller interrupts; the handler reaps.
    Interrupt,
    /// No interrupts: `HwQueue::poll` reaps.
    Polling,
}

/// Driver settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Interrupts or polling.
    pub mode: Mode,
    /// The interrupt is INTx (level): the handler masks with `INTMS` when it cannot reap.
    pub intx: bool,
    /// Use SGLs when the controller supports them (PRPs otherwise).
    pub prefer_sgl: bool,
    /// Monotonic nanoseconds (bounds every wait on the controller).
    pub clock: fn() -> u64,
}

/// Why a controller could not be brought up.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// BAR0 too small for the registers and doorbells.
    Registers,
    /// No NVM command set, 4 KiB pages unsupported, or queues too small.
    Unsupported,
    /// No DMA memory.
    NoMemory,
    /// `CSTS.RDY` did not follow `CC.EN`, or the controller reported a fatal status.
    NotReady,
    /// An admin command failed or timed out during bring-up.
    Admin,
    /// Identify data makes no sense (block size, capacity, no namespace 1).
    BadIdentify,
}

/// What Identify said and what the driver chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlInfo {
    /// Version register.
    pub version: u32,
    /// PCI vendor id from Identify.
    pub vendor: u16,
    /// Serial number (ASCII, space padded).
    pub serial: [u8; 20],
    /// Maximum data transfer in bytes (0: no limit).
    pub mdts_bytes: u64,
    /// Volatile write cache present (and enabled).
    pub vwc: bool,
    /// Dataset management (discard) supported.
    pub dsm: bool,
    /// Write zeroes supported.
    pub write_zeroes: bool,
    /// SGLs supported by the controller.
    pub sgl_supported: bool,
    /// SGLs used for data.
    pub sgl: bool,
    /// Namespaces.
    pub namespaces: u32,
    /// `CAP.MQES + 1`.
    pub max_queue_entries: u32,
    /// Entries of the I/O queue pair.
    pub io_entries: u16,
    /// Logical block size.
    pub block_size: u32,
    /// Namespace size in logical blocks.
    pub blocks: u64,
    /// Size in 512-byte sectors.
    pub capacity: u64,
}

macro_rules! driver_stats {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one controller (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct DriverStats { $( $(#[$m])* pub $name: AtomicU64, )* }

        impl DriverStats {
            const fn new() -> Self { DriverStats { $( $name: AtomicU64::new(0), )* } }
        }
    };
}

driver_stats! {
    /// Commands submitted on the I/O queue.
    requests,
    /// Passthrough admin commands submitted.
    passthrough,
    /// `queue_rq` answered `Busy` (queue full).
    busy,
    /// Doorbell writes on the I/O submission queue.
    doorbells,
    /// Interrupt handler runs.
    interrupts,
    /// Completion entries consumed.
    reaped,
    /// Requests completed to the block layer.
    completions,
    /// Requests completed with an error.
    errors,
    /// Completions whose command id was not in flight (or stale).
    bad_cids,
    /// Completions with a wrong submission queue id or head.
    bad_sq,
    /// Requests that used a PRP list.
    prp_lists,
    /// Requests whose PRP/SGL list took more than one page.
    chained_lists,
    /// Requests with SGLs.
    sgls,
    /// Pre-flushes run for PREFLUSH writes.
    preflushes,
    /// Timeouts seen.
    timeouts,
    /// Abort commands sent.
    aborts,
    /// Controller resets.
    resets,
    /// Fatal status seen.
    fatal,
    /// INTx masked by the handler (a lock was taken).
    masks,
    /// INTx unmasked after a masked interrupt.
    unmasks,
}

/// What became of a staged write when its pre-flush completed.
enum Staged {
    /// On the submission queue (the doorbell is due).
    Submitted,
    /// Left in flight for a reset.
    InFlight,
    /// Complete the request with this status.
    Done(BlkStatus),
}

/// One completion to hand to the block layer.
#[derive(Clone, Copy)]
struct Done {
    tag: u16,
    status: u32,
    result: u32,
    pt: bool,
}

/// Completions gathered under the locks, delivered after them. The interrupt path uses a
/// small batch ([`BATCH`]; a full batch leaves the reap pending for another pass), the cold
/// paths (bring-up, reset, waits for admin commands) room for every tag.
struct DoneList<const N: usize = QUEUE_DEPTH> {
    items: [Done; N],
    n: usize,
}

/// Completions delivered per pass of the interrupt path.
const BATCH: usize = 16;

impl<const N: usize> DoneList<N> {
    fn new() -> Self {
        DoneList {
            items: [Done {
                tag: 0,
                status: 0,
                result: 0,
                pt: false,
            }; N],
            n: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.n == self.items.len()
    }
    fn push(&mut self, tag: u16, st: BlkStatus, result: u32, pt: bool) {
        if let Some(d) = self.items.get_mut(self.n) {
            *d = Done {
                tag,
                status: status_code(st),
                result,
                pt,
            };
            self.n += 1;
        }
    }
}

struct IoQ {
    sq: SubQueue,
    cq: CompQueue,
    cids: CidTable<QUEUE_DEPTH>,
    /// Writes waiting for their pre-flush, by tag.
    staged: [Option<Command>; QUEUE_DEPTH],
    rung: u16,
    /// The controller has the queue pair (created, not deleted).
    live: bool,
}

struct AdminQ {
    sq: SubQueue,
    cq: CompQueue,
    cids: CidTable<QUEUE_DEPTH>,
    internal_seq: u16,
    internal: Option<Cqe>,
}

/// One NVMe controller, namespace 1, one I/O queue pair.
pub struct Nvme {
    regs: Regs,
    io: Mutex<IoQ>,
    admin: Mutex<AdminQ>,
    /// `LIST_PAGES` pages per tag (PRP lists, SGLs, DSM ranges).
    lists: DmaBuf,
    /// Identify data during bring-up.
    ident: DmaBuf,
    info: CtrlInfo,
    limits: QueueLimits,
    cfg: Config,
    sink: Once<&'static dyn TagComplete>,
    /// Someone has to reap: set by an interrupt that found a lock taken.
    pending: AtomicBool,
    /// The handler masked INTx (`INTMS`): whoever next finishes a reap unmasks.
    masked: AtomicBool,
    /// Admin commands submitted and not reaped yet (changed under the `admin` lock). The
    /// controller posts nothing unasked on the admin queue (no asynchronous event requests),
    /// so the interrupt path leaves the admin queue alone while this is 0.
    admin_outstanding: AtomicU32,
    /// Entries pushed on the I/O submission queue and not rung yet (`commit` rings them).
    unrung: AtomicBool,
    dead: AtomicBool,
    /// A fatal status was seen: reset from process context.
    reset_wanted: AtomicBool,
    stats: DriverStats,
}

fn wait_until(clock: fn() -> u64, ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = clock();
    // Also bounded by iterations in case the clock does not move.
    let mut spins: u64 = 0;
    loop {
        if done() {
            return true;
        }
        spins += 1;
        if clock().saturating_sub(start) > ms * 1_000_000 || spins > ms.saturating_mul(200_000) {
            return done();
        }
        core::hint::spin_loop();
    }
}

impl Nvme {
    /// Brings the controller in BAR0 up: reset, admin queue, enable, Identify, features, the I/O
    /// queue pair (interrupt vector 0 in interrupt mode). Bus mastering must be on.
    pub fn new(bar0: Mmio, cfg: Config) -> Result<Nvme, InitError> {
        let regs = Regs::new(bar0).ok_or(InitError::Registers)?;
        let cap = regs.cap();
        if !cap.nvm_command_set() || cap.page_shift_min() > 12 || !regs.has_queue(IOQ) {
            return Err(InitError::Unsupported);
        }
        let mqe = cap.max_queue_entries();
        if mqe < IO_QUEUE_ENTRIES_MIN {
            return Err(InitError::Unsupported);
        }
        let io_entries = mqe.min(IO_QUEUE_ENTRIES_MAX) as u16;
        let admin_entries = (ADMIN_ENTRIES as u32).min(mqe) as u16;
        let nomem = |_| InitError::NoMemory;
        let admin = AdminQ {
            sq: SubQueue::new(admin_entries).map_err(nomem)?,
            cq: CompQueue::new(admin_entries).map_err(nomem)?,
            cids: CidTable::new(),
            internal_seq: 0,
            internal: None,
        };
        let io = IoQ {
            sq: SubQueue::new(io_entries).map_err(nomem)?,
            cq: CompQueue::new(io_entries).map_err(nomem)?,
            cids: CidTable::new(),
            staged: [None; QUEUE_DEPTH],
            rung: 0,
            live: false,
        };
        let lists = DmaBuf::alloc(QUEUE_DEPTH * LIST_PAGES * PAGE as usize, 4096).map_err(nomem)?;
        let ident = DmaBuf::alloc(4096, 4096).map_err(nomem)?;
        let info = CtrlInfo {
            version: regs.version(),
            vendor: 0,
            serial: [0; 20],
            mdts_bytes: 0,
            vwc: false,
            dsm: false,
            write_zeroes: false,
            sgl_supported: false,
            sgl: false,
            namespaces: 0,
            max_queue_entries: mqe,
            io_entries,
            block_size: 512,
            blocks: 0,
            capacity: 0,
        };
        let mut n = Nvme {
            regs,
            io: Mutex::new(io),
            admin: Mutex::new(admin),
            lists,
            ident,
            info,
            limits: QueueLimits::new(),
            cfg,
            sink: Once::new(),
            pending: AtomicBool::new(false),
            masked: AtomicBool::new(false),
            admin_outstanding: AtomicU32::new(0),
            unrung: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            reset_wanted: AtomicBool::new(false),
            stats: DriverStats::new(),
        };
        {
            let mut admin = n.admin.lock();
            n.enable(&mut admin)?;
            let info = n.identify(&mut admin)?;
            drop(admin);
            n.info = info;
        }
        n.limits = n.compute_limits();
        {
            let mut io = n.io.lock();
            let mut admin = n.admin.lock();
            n.setup_io(&mut admin, &mut io)?;
        }
        Ok(n)
    }

    /// Disables the controller and waits for `RDY` to clear.
    fn disable(&self) -> bool {
        let cc_now = self.regs.read32(regs::CC);
        if cc_now & cc::EN != 0 {
            self.regs.write32(regs::CC, cc_now & !cc::EN);
        }
        let to = self.regs.cap().timeout_ms();
        wait_until(self.cfg.clock, to, || {
            self.regs.read32(regs::CSTS) & csts::RDY == 0
        })
    }

    /// Reset, program the admin queue, enable, wait for ready.
    fn enable(&self, admin: &mut AdminQ) -> Result<(), InitError> {
        if !self.disable() {
            return Err(InitError::NotReady);
        }
        admin.sq.reset();
        admin.cq.reset();
        admin.internal = None;
        self.admin_outstanding.store(0, Ordering::Release);
        let (sqe, cqe) = (admin.sq.entries() as u32, admin.cq.entries() as u32);
        self.regs.write32(regs::AQA, (cqe - 1) << 16 | (sqe - 1));
        self.regs.write64(regs::ASQ, admin.sq.phys());
        self.regs.write64(regs::ACQ, admin.cq.phys());
        fence(Ordering::SeqCst);
        self.regs
            .write32(regs::CC, cc::IOSQES_64 | cc::IOCQES_16 | cc::EN);
        let to = self.regs.cap().timeout_ms();
        let ok = wait_until(self.cfg.clock, to, || {
            self.regs.read32(regs::CSTS) & (csts::RDY | csts::CFS) != 0
        });
        if !ok || self.regs.read32(regs::CSTS) & csts::CFS != 0 {
            return Err(InitError::NotReady);
        }
        Ok(())
    }

    fn identify(&self, admin: &mut AdminQ) -> Result<CtrlInfo, InitError> {
        let mut done = DoneList::<QUEUE_DEPTH>::new();
        let mut c = Command::identify(cns::CONTROLLER, 0);
        c.set_data(DataPtr::Prp(self.ident.phys().0, 0));
        self.admin_sync(admin, c, &mut done)
            .map_err(|_| InitError::Admin)?;
        let id = &self.ident;
        let mut info = self.info;
        info.vendor = id.read16(id_ctrl::VID);
        for (i, b) in info.serial.iter_mut().enumerate() {
            *b = id.read8(id_ctrl::SN + i);
        }
        let mdts = id.read8(id_ctrl::MDTS) as u32;
        let min_page = 1u64 << self.regs.cap().page_shift_min();
        info.mdts_bytes = if mdts == 0 || mdts > 20 {
            0
        } else {
            min_page << mdts
        };
        info.vwc = id.read8(id_ctrl::VWC) & 1 != 0;
        let o = id.read16(id_ctrl::ONCS);
        info.dsm = o & oncs::DSM != 0;
        info.write_zeroes = o & oncs::WRITE_ZEROES != 0;
        info.sgl_supported = id.read32(id_ctrl::SGLS) & 3 != 0;
        info.sgl = info.sgl_supported && self.cfg.prefer_sgl;
        info.namespaces = id.read32(id_ctrl::NN);
        if info.namespaces < NSID {
            return Err(InitError::BadIdentify);
        }
        let mut c = Command::identify(cns::NAMESPACE, NSID);
        c.set_data(DataPtr::Prp(self.ident.phys().0, 0));
        self.admin_sync(admin, c, &mut done)
            .map_err(|_| InitError::Admin)?;
        let id = &self.ident;
        let nsze = id.read64(id_ns::NSZE);
        let fmt = (id.read8(id_ns::FLBAS) & 0xf) as usize;
        if fmt > id.read8(id_ns::NLBAF) as usize {
            return Err(InitError::BadIdentify);
        }
        let lbads = (id.read32(id_ns::LBAF + 4 * fmt) >> 16) & 0xff;
        if !(9..=16).contains(&lbads) || nsze == 0 {
            return Err(InitError::BadIdentify);
        }
        info.block_size = 1 << lbads;
        info.blocks = nsze;
        info.capacity = nsze.saturating_mul((info.block_size / 512) as u64);
        Ok(info)
    }

    /// Features and the I/O queue pair (after an enable).
    fn setup_io(&self, admin: &mut AdminQ, io: &mut IoQ) -> Result<(), InitError> {
        let mut done = DoneList::<QUEUE_DEPTH>::new();
        let mut run = |admin: &mut AdminQ, c: Command| {
            self.admin_sync(admin, c, &mut done)
                .map_err(|_| InitError::Admin)
        };
        // One submission and one completion queue (zero-based counts).
        run(admin, Command::set_features(feature::NUMBER_OF_QUEUES, 0))?;
        if self.info.vwc {
            run(
                admin,
                Command::set_features(feature::VOLATILE_WRITE_CACHE, 1),
            )?;
        }
        io.sq.reset();
        io.cq.reset();
        io.rung = 0;
        io.live = false;
        let irq = self.cfg.mode == Mode::Interrupt;
        run(
            admin,
            Command::create_cq(IOQ, io.cq.entries(), io.cq.phys(), 0, irq),
        )?;
        run(
            admin,
            Command::create_sq(IOQ, io.sq.entries(), io.sq.phys(), IOQ),
        )?;
        io.live = true;
        Ok(())
    }

    /// Runs one of the driver's own admin commands and waits for it (bounded), reaping the
    /// admin queue meanwhile (passthrough completions go to `done`).
    fn admin_sync(
        &self,
        a: &mut AdminQ,
        mut c: Command,
        done: &mut DoneList,
    ) -> Result<Cqe, BlkError> {
        a.internal_seq = a.internal_seq.wrapping_add(1);
        let cid = INTERNAL_CID | (a.internal_seq & 0x7fff);
        c.set_cid(cid);
        a.internal = None;
        if !a.sq.push(&c) {
            return Err(BlkError::Busy);
        }
        self.admin_outstanding.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        self.regs.write32(
            regs::sq_tail_doorbell(0, self.regs.cap().doorbell_stride()),
            a.sq.tail() as u32,
        );
        let mut got = None;
        wait_until(self.cfg.clock, 2_000, || {
            self.reap_admin(a, done);
            if let Some(e) = a.internal.take()
                && e.cid == cid
            {
                got = Some(e);
                return true;
            }
            self.regs.read32(regs::CSTS) & csts::CFS != 0
        });
        let e = got.ok_or(BlkError::Timeout)?;
        e.status.to_blk().map(|_| e)
    }

    fn compute_limits(&self) -> QueueLimits {
        let i = &self.info;
        let mut l = QueueLimits::new();
        l.logical_block_size = i.block_size;
        // Any request must fit the list budget whatever its alignment: two entries spare.
        let budget = (max_prp_entries(LIST_PAGES) as u64 - 2) * PAGE;
        let mut max = if i.mdts_bytes == 0 {
            budget
        } else {
            i.mdts_bytes.min(budget)
        };
        // The command's block count is 16 bits.
        max = max.min(65536 * i.block_size as u64);
        max -= max % i.block_size as u64;
        l.max_sectors = (max / 512) as u32;
        l.max_segments = MAX_SEGMENTS.min(max_prp_entries(LIST_PAGES)) as u16;
        l.max_segment_size = u32::MAX;
        l.dma_alignment = 4;
        l.virt_boundary_mask = if i.sgl { 0 } else { PAGE - 1 };
        let per_cmd = (65536u64 * i.block_size as u64 / 512).min(u32::MAX as u64) as u32;
        l.max_discard_sectors = if i.dsm { per_cmd } else { 0 };
        l.max_write_zeroes_sectors = if i.write_zeroes { per_cmd } else { 0 };
        l
    }

    /// What Identify said.
    pub fn info(&self) -> &CtrlInfo {
        &self.info
    }
    /// The block layer's limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }
    /// The mode.
    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }
    /// The counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }
    /// Connects the block layer's queue (completion by tag).
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.sink.call_once(|| queue);
    }
    /// Commands in flight (I/O and passthrough).
    pub fn in_flight(&self) -> usize {
        let n = self.io.lock().cids.count();
        let n = n + self.admin.lock().cids.count();
        self.after_unlock();
        n
    }
    /// The controller is unusable.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
    /// Controller status register.
    pub fn csts(&self) -> u32 {
        self.regs.read32(regs::CSTS)
    }

    /// The interrupt handler: reap both completion queues, complete by tag. Never waits.
    pub fn handle_irq(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        self.pending.store(true, Ordering::Release);
        if !self.reap_pending() && self.cfg.intx {
            // Process context holds a lock: mask the level interrupt until it reaps (the
            // holder's `after_unlock`, or any other reaper that gets there first, unmasks).
            self.masked.store(true, Ordering::Release);
            self.stats.masks.fetch_add(1, Ordering::Relaxed);
            self.regs.write32(regs::INTMS, 1);
        }
    }

    /// Reaps while someone asked for it; `false` if a lock was taken (its holder reaps).
    /// A complete reap also lifts the handler's INTx mask, whoever does it: the handler, the
    /// lock holder's `after_unlock`, `poll` (passthrough waits, tag waits, timeouts). When
    /// only `after_unlock` unmasked, a `poll` that consumed `pending` first left INTx masked
    /// for good and every later completion went unsignalled (see `docs/nvme.md`).
    fn reap_pending(&self) -> bool {
        while self.pending.swap(false, Ordering::AcqRel) {
            let mut done = DoneList::<BATCH>::new();
            let Some(mut io) = self.io.try_lock() else {
                self.pending.store(true, Ordering::Release);
                return false;
            };
            // One CPU: nothing submits an admin command while this runs, so a 0 here means
            // no admin completion can be posted before the next look.
            let mut admin = if self.admin_outstanding.load(Ordering::Acquire) != 0 {
                let Some(a) = self.admin.try_lock() else {
                    self.pending.store(true, Ordering::Release);
                    return false;
                };
                Some(a)
            } else {
                None
            };
            loop {
                let mut n = self.reap_io(&mut io, &mut done);
                if let Some(a) = admin.as_mut() {
                    n += self.reap_admin(a, &mut done);
                }
                if done.is_full() {
                    self.pending.store(true, Ordering::Release);
                    break;
                }
                // Each reap ran until its queue looked empty. With MSI-X an entry posted after
                // that look sends another message. With INTx, go round until a pass finds both
                // queues empty after their head doorbells: the controller only lowers the line
                // when a head doorbell finds its queue empty, and QEMU 7.2's PLIC only signals
                // a rising edge, so an entry posted after the last look but before the doorbell
                // would otherwise wait for the next interrupt.
                if n == 0 || !self.cfg.intx {
                    break;
                }
            }
            drop(admin);
            drop(io);
            self.deliver(&done);
        }
        // Both queues were found empty after their head doorbells with no lock taken: the
        // controller has lowered its INTx status, and unmasking raises the line again only
        // if something new was posted since (a fresh edge for the PLIC).
        if self.masked.load(Ordering::Acquire) && self.masked.swap(false, Ordering::AcqRel) {
            self.stats.unmasks.fetch_add(1, Ordering::Relaxed);
            self.regs.write32(regs::INTMC, 1);
        }
        true
    }

    /// After process context let go of the locks: reap what an interrupt left (which
    /// unmasks INTx if the handler masked it). Every path that takes `io` or `admin` in
    /// process context ends with this; `submit` relies on the block layer's `commit`.
    fn after_unlock(&self) {
        if self.pending.load(Ordering::Acquire) {
            self.reap_pending();
        }
    }

    fn deliver<const N: usize>(&self, done: &DoneList<N>) {
        let Some(sink) = self.sink.get() else { return };
        if done.n == 0 {
            return;
        }
        self.stats
            .completions
            .fetch_add(done.n as u64, Ordering::Relaxed);
        for d in &done.items[..done.n] {
            let st = status_from_code(d.status);
            if st.is_err() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            if d.pt {
                sink.complete_pt(d.tag, st, d.result as u64);
            } else {
                sink.complete(d.tag, st, if st.is_err() { Some(0) } else { None });
            }
        }
    }

    /// Consumes the I/O completion queue: checks queue id, head and command id of each
    /// entry; starts the write after a finished pre-flush.
    fn reap_io<const N: usize>(&self, io: &mut IoQ, done: &mut DoneList<N>) -> usize {
        let mut n = 0;
        let mut resubmit = false;
        while !done.is_full() {
            let Some(e) = io.cq.peek() else { break };
            io.cq.advance();
            n += 1;
            if e.sq_id != IOQ || !io.sq.set_head(e.sq_head) {
                self.stats.bad_sq.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(tag) = io.cids.complete(e.cid) else {
                self.stats.bad_cids.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let st = e.status.to_blk();
            if io.staged[tag as usize].is_some() {
                match self.start_staged(io, tag, st) {
                    Staged::Submitted => {
                        resubmit = true;
                        continue;
                    }
                    Staged::InFlight => continue,
                    Staged::Done(st) => {
                        done.push(tag, st, 0, false);
                        continue;
                    }
                }
            }
            done.push(tag, st, 0, false);
        }
        if n > 0 {
            self.stats.reaped.fetch_add(n as u64, Ordering::Relaxed);
            self.regs.ring_cq(IOQ, io.cq.head());
        }
        if resubmit {
            self.ring_io(io);
        }
        n
    }

    /// The pre-flush of tag `tag`'s staged write completed with `st`: submit the write.
    #[cold]
    #[inline(never)]
    fn start_staged(&self, io: &mut IoQ, tag: u16, st: BlkStatus) -> Staged {
        let Some(mut w) = io.staged[tag as usize].take() else {
            return Staged::Done(st);
        };
        if st.is_err() {
            return Staged::Done(st);
        }
        let Some(cid) = io.cids.issue(tag) else {
            return Staged::Done(st);
        };
        w.set_cid(cid);
        if !io.live {
            // The queue is being deleted: the write stays in flight for the reset.
            return Staged::InFlight;
        }
        if io.sq.push(&w) {
            return Staged::Submitted;
        }
        io.cids.forget(tag);
        Staged::Done(Err(BlkError::Busy))
    }

    fn reap_admin<const N: usize>(&self, a: &mut AdminQ, done: &mut DoneList<N>) -> usize {
        let mut n = 0;
        while !done.is_full() {
            let Some(e) = a.cq.peek() else { break };
            a.cq.advance();
            n += 1;
            if e.sq_id != 0 || !a.sq.set_head(e.sq_head) {
                self.stats.bad_sq.fetch_add(1, Ordering::Relaxed);
            }
            if e.cid & INTERNAL_CID != 0 {
                a.internal = Some(e);
                continue;
            }
            match a.cids.complete(e.cid) {
                Ok(tag) => done.push(tag, e.status.to_blk(), e.result, true),
                Err(_) => {
                    self.stats.bad_cids.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if n > 0 {
            self.stats.reaped.fetch_add(n as u64, Ordering::Relaxed);
            self.regs.ring_cq(0, a.cq.head());
            let left = self.admin_outstanding.load(Ordering::Relaxed);
            self.admin_outstanding
                .store(left.saturating_sub(n as u32), Ordering::Release);
        }
        n
    }

    fn ring_io(&self, io: &mut IoQ) {
        if io.rung != io.sq.tail() {
            fence(Ordering::SeqCst);
            self.regs.ring_sq(IOQ, io.sq.tail());
            io.rung = io.sq.tail();
            self.stats.doorbells.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn list_pages(&self, tag: u16) -> ListPages<'_> {
        ListPages {
            buf: &self.lists,
            first: tag as usize * LIST_PAGES * PAGE as usize,
            pages: LIST_PAGES,
        }
    }

    fn data_ptr(&self, tag: u16, sg: &[SgEntry]) -> Result<DataPtr, QueueRqError> {
        let lp = self.list_pages(tag);
        let r = if self.info.sgl {
            build_sgl(sg, &lp)
        } else {
            build_prp(sg, &lp)
        };
        let (d, pages) = r.map_err(|_| QueueRqError::Fatal(BlkError::InvalidArgument))?;
        if self.info.sgl {
            self.stats.sgls.fetch_add(1, Ordering::Relaxed);
        } else if pages > 0 {
            self.stats.prp_lists.fetch_add(1, Ordering::Relaxed);
        }
        if pages > 1 {
            self.stats.chained_lists.fetch_add(1, Ordering::Relaxed);
        }
        Ok(d)
    }

    /// The data pointer of a read or write: requests of a few segments map into a small
    /// list on the stack (clearing a `MAX_SEGMENTS` list for each of them was ~300
    /// instructions), bigger ones take the general path.
    fn map_data(&self, rq: &Request) -> Result<DataPtr, QueueRqError> {
        if rq.nr_segments() as usize <= SMALL_SG {
            let mut sg = [SgEntry::default(); SMALL_SG];
            if let Ok(n) = rq.map_sg(&self.limits, &mut sg) {
                return self.data_ptr(rq.tag(), &sg[..n]);
            }
        }
        self.map_data_large(rq)
    }

    #[inline(never)]
    fn map_data_large(&self, rq: &Request) -> Result<DataPtr, QueueRqError> {
        let mut sg = [SgEntry::default(); MAX_SEGMENTS];
        let n = rq
            .map_sg(&self.limits, &mut sg)
            .map_err(QueueRqError::Fatal)?;
        self.data_ptr(rq.tag(), &sg[..n])
    }

    fn build(&self, rq: &Request) -> Result<(Command, bool), QueueRqError> {
        let bs = self.info.block_size as u64;
        let lba = rq.sector() * 512 / bs;
        let blocks = (rq.bytes() as u64 / bs) as u32;
        let fatal = |e| QueueRqError::Fatal(e);
        let c = match rq.op() {
            Op::Read | Op::Write => {
                if blocks == 0 || blocks > 65536 {
                    return Err(fatal(BlkError::InvalidArgument));
                }
                let write = rq.op() == Op::Write;
                let opc = if write { nvm::WRITE } else { nvm::READ };
                let fua = write && rq.flags().contains(BioFlags::FUA);
                let mut c = Command::rw(opc, NSID, lba, blocks, fua);
                c.set_data(self.map_data(rq)?);
                let pre = write && self.info.vwc && rq.flags().contains(BioFlags::PREFLUSH);
                return Ok((c, pre));
            }
            Op::Flush => Command::flush(NSID),
            Op::WriteZeroes if self.info.write_zeroes && (1..=65536).contains(&blocks) => {
                Command::rw(nvm::WRITE_ZEROES, NSID, lba, blocks, false)
            }
            Op::Discard if self.info.dsm && blocks > 0 => {
                // One range in the tag's first list page: attributes, length, start.
                let lp = self.list_pages(rq.tag());
                let off = lp.first;
                self.lists.write32(off, 0);
                self.lists.write32(off + 4, blocks);
                self.lists.write64(off + 8, lba);
                let mut c = Command::deallocate(NSID, 1);
                c.set_data(DataPtr::Prp(self.lists.phys().0 + off as u64, 0));
                c
            }
            _ => return Err(fatal(BlkError::Unsupported)),
        };
        Ok((c, false))
    }

    fn submit_admin(&self, rq: &Request) -> Result<(), QueueRqError> {
        let Some(p) = rq.passthrough() else {
            return Err(QueueRqError::Fatal(BlkError::Io));
        };
        if p.opcode != pt::ADMIN {
            return Err(QueueRqError::Fatal(BlkError::Unsupported));
        }
        let mut c = Command::new(p.args[0] as u8, (p.args[0] >> 32) as u32);
        for k in 0..3 {
            c.dw[10 + 2 * k] = p.args[1 + k] as u32;
            c.dw[11 + 2 * k] = (p.args[1 + k] >> 32) as u32;
        }
        if let Some(v) = p.data {
            let sg = [SgEntry {
                addr: v.addr(),
                len: v.len(),
            }];
            let lp = self.list_pages(rq.tag());
            let (d, _) =
                build_prp(&sg, &lp).map_err(|_| QueueRqError::Fatal(BlkError::InvalidArgument))?;
            c.set_data(d);
        }
        let mut a = self.admin.lock();
        let Some(cid) = a.cids.issue(rq.tag()) else {
            return Err(QueueRqError::Busy);
        };
        c.set_cid(cid);
        if !a.sq.push(&c) {
            a.cids.forget(rq.tag());
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        }
        self.admin_outstanding.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        self.regs.ring_sq(0, a.sq.tail());
        self.stats.passthrough.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Puts `rq` on a queue; the last request of a batch rings the I/O doorbell here (under
    /// the lock already taken), earlier ones leave it to `commit`.
    fn submit(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        if rq.passthrough().is_some() {
            let r = self.submit_admin(rq);
            self.after_unlock();
            return r;
        }
        let (cmd, preflush) = self.build(rq)?;
        let tag = rq.tag();
        let mut io = self.io.lock();
        if io.sq.is_full() {
            drop(io);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        }
        let Some(cid) = io.cids.issue(tag) else {
            drop(io);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(QueueRqError::Busy);
        };
        let mut first = if preflush {
            self.stats.preflushes.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = io.staged.get_mut(tag as usize) {
                *s = Some(cmd);
            }
            Command::flush(NSID)
        } else {
            cmd
        };
        first.set_cid(cid);
        let _ = io.sq.push(&first);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if last {
            self.ring_io(&mut io);
        } else {
            self.unrung.store(true, Ordering::Relaxed);
        }
        drop(io);
        Ok(())
    }

    /// Runs one internal admin command from process context (locks taken here).
    fn admin_command(&self, c: Command) -> Result<Cqe, BlkError> {
        let mut done = DoneList::<QUEUE_DEPTH>::new();
        let r = {
            let mut a = self.admin.lock();
            self.admin_sync(&mut a, c, &mut done)
        };
        self.deliver(&done);
        self.after_unlock();
        r
    }

    /// Resets the controller: every command in flight (except `skip`'s) completes with a
    /// retryable `DeviceError(RESET)`, the queues are set up again. Process context.
    pub fn reset_controller(&self, skip: Option<u16>) -> bool {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        let mut done = DoneList::<QUEUE_DEPTH>::new();
        let ok = {
            let mut io = self.io.lock();
            let mut a = self.admin.lock();
            // What already finished completes normally.
            self.reap_io(&mut io, &mut done);
            self.reap_admin(&mut a, &mut done);
            self.delete_io_queues(&mut a, &mut io, &mut done);
            let _ = self.disable();
            let mut failed = DoneList::<QUEUE_DEPTH>::new();
            let IoQ { cids, staged, .. } = &mut *io;
            cids.drain(|t| {
                if let Some(s) = staged.get_mut(t as usize) {
                    *s = None;
                }
                if Some(t) != skip {
                    failed.push(t, Err(BlkError::DeviceError(device_error::RESET)), 0, false);
                }
            });
            a.cids.drain(|t| {
                if Some(t) != skip {
                    failed.push(t, Err(BlkError::DeviceError(device_error::RESET)), 0, true);
                }
            });
            for d in &failed.items[..failed.n] {
                if !done.is_full() {
                    done.items[done.n] = *d;
                    done.n += 1;
                }
            }
            let ok = self.enable(&mut a).is_ok() && self.setup_io(&mut a, &mut io).is_ok();
            if !ok {
                self.dead.store(true, Ordering::Relaxed);
            }
            ok
        };
        if self.cfg.intx {
            // The disable cleared the controller's mask; keep ours in step.
            self.masked.store(false, Ordering::Release);
            self.regs.write32(regs::INTMC, 1);
        }
        self.deliver(&done);
        self.after_unlock();
        ok
    }

    /// Deletes the I/O queue pair before a disable, as long as the controller still answers:
    /// the controller stops fetching commands and finishes (or cancels) the ones it started,
    /// so none of them is still being processed when `CC.EN` clears. What it completes while
    /// deleting is reaped (the completion queue still exists then). QEMU 7.2 fetches and
    /// starts commands it had not fetched yet while `CC.EN = 0` drains the namespace, then
    /// frees the queue under them and crashes when they finish (see `docs/nvme.md`).
    fn delete_io_queues(&self, a: &mut AdminQ, io: &mut IoQ, done: &mut DoneList) {
        if self.is_dead() || self.regs.read32(regs::CSTS) & (csts::RDY | csts::CFS) != csts::RDY {
            return;
        }
        if self.admin_sync(a, Command::delete_sq(IOQ), done).is_err() {
            return;
        }
        io.live = false;
        self.reap_io(io, done);
        let _ = self.admin_sync(a, Command::delete_cq(IOQ), done);
    }

    /// Test hook: reset the controller now, as a timeout or a fatal status would.
    pub fn force_reset(&self) -> bool {
        self.reset_controller(None)
    }

    /// Process-context work: reset after a fatal status; reap in polling mode.
    pub fn deferred(&self) {
        if self.reset_wanted.swap(false, Ordering::AcqRel)
            || (!self.is_dead() && self.regs.read32(regs::CSTS) & csts::CFS != 0)
        {
            self.stats.fatal.fetch_add(1, Ordering::Relaxed);
            self.reset_controller(None);
        }
        if self.cfg.mode == Mode::Polling {
            HwQueue::poll(self);
        }
    }

    fn reap_all(&self) -> usize {
        self.pending.store(true, Ordering::Release);
        let before = self.stats.reaped.load(Ordering::Relaxed);
        self.reap_pending();
        (self.stats.reaped.load(Ordering::Relaxed) - before) as usize
    }

    /// `tag` passed its deadline: abort it; if the controller does not confirm the abort and
    /// complete the command soon, reset it.
    fn abort_or_reset(&self, tag: u16) -> TimeoutAction {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        self.reap_all();
        let io_cid = self.io.lock().cids.in_flight(tag);
        let admin_cid = self.admin.lock().cids.in_flight(tag);
        self.after_unlock();
        let (sqid, cid) = match (io_cid, admin_cid) {
            (Some(c), _) => (IOQ, c),
            (None, Some(c)) => (0, c),
            (None, None) => return TimeoutAction::Retry,
        };
        self.stats.aborts.fetch_add(1, Ordering::Relaxed);
        if let Ok(e) = self.admin_command(Command::abort(sqid, cid))
            && e.result & 1 == 0
        {
            let gone = wait_until(self.cfg.clock, 100, || {
                self.reap_all();
                let io = self.io.lock().cids.in_flight(tag);
                let gone = io.is_none() && self.admin.lock().cids.in_flight(tag).is_none();
                self.after_unlock();
                gone
            });
            if gone {
                return TimeoutAction::Retry;
            }
        }
        if self.reset_controller(Some(tag)) {
            TimeoutAction::Retry
        } else {
            TimeoutAction::Fail
        }
    }
}

impl HwQueue for Nvme {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        self.submit(rq, last)
    }

    fn commit(&self) {
        // Entries of a batch whose last request was refused (or not marked last) are still
        // unrung; the last request of a batch rang the doorbell itself.
        if self.unrung.load(Ordering::Relaxed) {
            let mut io = self.io.lock();
            self.unrung.store(false, Ordering::Relaxed);
            self.ring_io(&mut io);
            drop(io);
        }
        self.after_unlock();
    }

    fn poll(&self) -> usize {
        self.reap_all()
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.abort_or_reset(rq.tag())
    }
}

impl hal::IrqHandler for Nvme {
    fn handle(&self) {
        self.handle_irq();
    }
}

/// The interrupt line, when the kernel wants to keep it next to the driver.
pub type Line = IrqLine;
