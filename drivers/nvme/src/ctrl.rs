//! The controller: its state (queues, command ids, flags), bring-up (disable, admin queue,
//! enable, Identify, features, the I/O queue pair), the driver's own admin commands during
//! bring-up, and the limits the block layer gets.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

use blk::driver::{CompletionBatch, CompletionSink};
use blk::handover::ReapHandover;
use blk::{BlkError, QueueLimits, TagComplete};
use hal::{DmaBuf, Mmio};
use spin::{Mutex, MutexGuard};

use crate::cmd::{Command, DataPtr};
use crate::ns::{AttachedNs, MAX_NS_QUEUES, Namespace, Namespaces, NsQueueInfo, has_wp_feature};
use crate::prp::{PAGE, max_prp_entries};
use crate::queue::{CidTable, CompQueue, Cqe, INTERNAL_CID, SubQueue};
use crate::regs::{self, Cc, Csts, Regs};
use crate::spec::{Oncs, Vwc, cns, feature, id_ctrl};
use crate::stats::DriverStats;

/// Requests in flight at once per namespace queue (tags of each block-layer queue).
pub const QUEUE_DEPTH: usize = 128;
/// Command slots of a controller: namespace queue `q`'s tag `t` is slot `q * QUEUE_DEPTH + t`,
/// the low bits of its command ids, the index of its list pages and staged write, and what a
/// completion is routed by.
pub(crate) const SLOTS: usize = QUEUE_DEPTH * MAX_NS_QUEUES;
const _: () = assert!(SLOTS <= 1 << crate::queue::TAG_BITS);
/// Completions gathered on the cold paths (bring-up, reset, waits for admin commands): room
/// for every slot.
pub(crate) type ColdBatch = CompletionBatch<SLOTS>;
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
/// Most I/O queue pairs a controller gets: one per CPU, as many as a block-layer queue has
/// hardware contexts.
pub const MAX_IO_QUEUES: usize = blk::queue::MAX_HW_CTX;
const _: () = assert!(MAX_IO_QUEUES.is_power_of_two());
/// The queue id of I/O queue pair 0 (pair `k` is `IOQ + k`).
pub(crate) const IOQ: u16 = 1;

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
    /// I/O queue pairs to ask for (at most [`MAX_IO_QUEUES`]): pair `k`'s completion queue
    /// signals MSI-X vector `k`, which the caller has programmed for the CPU that submits to
    /// pair `k`. 0 or 1: one pair on vector 0, shared by every CPU (the only choice with INTx
    /// or polling, which this field is ignored for). The controller may grant fewer
    /// ([`Nvme::io_queues`]).
    pub queues: u16,
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
    /// Identify Controller data makes no sense (no namespace at all).
    BadIdentify,
    /// No active namespace the driver can use: how many are active, and the first of them
    /// with the reason it was not attached (see `Nvme::namespaces` on success).
    NoNamespace {
        /// Active namespaces found.
        active: u32,
        /// The first active namespace and its state.
        first: Option<Namespace>,
    },
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
    /// Number of namespaces (Identify Controller NN: the highest namespace id).
    pub namespaces: u32,
    /// The first attached namespace (the first usable active one; the others are in
    /// [`Nvme::ns_queue_info`]).
    pub nsid: u32,
    /// The first attached namespace is write protected (`NSATTR` bit 0, or the write
    /// protection config feature): writes fail with `BlkError::ReadOnly`.
    pub read_only: bool,
    /// `CAP.MQES + 1`.
    pub max_queue_entries: u32,
    /// Entries of each I/O queue pair.
    pub io_entries: u16,
    /// I/O queue pairs asked for (Set Features / Number of Queues).
    pub queues_wanted: u16,
    /// I/O submission and completion queues the controller granted (the smaller of the two).
    pub queues_granted: u16,
    /// Logical block size of the first attached namespace.
    pub block_size: u32,
    /// The first attached namespace's size in logical blocks.
    pub blocks: u64,
    /// Its size in 512-byte sectors.
    pub capacity: u64,
}

/// One I/O queue pair and what is in flight on it.
pub(crate) struct IoQ {
    /// Its queue id (submission and completion queue alike; pair `k` is `IOQ + k`).
    pub(crate) qid: u16,
    /// Byte offsets of its submission tail and completion head doorbells in BAR0.
    pub(crate) sq_db: usize,
    pub(crate) cq_db: usize,
    pub(crate) sq: SubQueue,
    pub(crate) cq: CompQueue,
    pub(crate) cids: CidTable<SLOTS>,
    /// Writes of this pair waiting for their pre-flush (in `Nvme::staged`): none is the
    /// common case, and then a completion looks no further.
    pub(crate) staged: u16,
    pub(crate) rung: u16,
    /// The controller has the queue pair (created, not deleted).
    pub(crate) live: bool,
}

impl IoQ {
    fn new(regs: &Regs, qid: u16, entries: u16) -> Result<IoQ, InitError> {
        let nomem = |_| InitError::NoMemory;
        let (sq_db, cq_db) = regs.doorbells(qid);
        Ok(IoQ {
            qid,
            sq_db,
            cq_db,
            sq: SubQueue::new(entries).map_err(nomem)?,
            cq: CompQueue::new(entries).map_err(nomem)?,
            cids: CidTable::new(),
            staged: 0,
            rung: 0,
            live: false,
        })
    }
}

/// One I/O queue pair with what its submitter and its interrupt handler share: the reap
/// hand-over, the unrung flag and the pair's counters. Each pair on cache lines of its own, so
/// that CPUs on different pairs write no common line.
#[repr(align(128))]
pub(crate) struct Pair {
    pub(crate) io: Mutex<IoQ>,
    /// Someone has to reap this pair: set by an interrupt that found a lock taken; with INTx
    /// (pair 0 only) also that the handler masked the line (`INTMS`): whoever next finishes
    /// a reap unmasks (see `complete.rs`). Pair 0's also covers the admin queue.
    pub(crate) hand: ReapHandover,
    /// Entries pushed on this pair's submission queue and not rung yet (`commit` rings them).
    pub(crate) unrung: AtomicBool,
    /// The counters of the I/O path on this pair (submission, doorbells, its interrupts,
    /// reaps and completions): [`Nvme::stats`] adds them up.
    pub(crate) stats: DriverStats,
}

/// The admin queue pair, passthrough commands in flight on it, and the driver's own command.
pub(crate) struct AdminQ {
    pub(crate) sq: SubQueue,
    pub(crate) cq: CompQueue,
    pub(crate) cids: CidTable<SLOTS>,
    pub(crate) internal_seq: u16,
    /// The command id of the driver's own command in flight (its completion is awaited).
    pub(crate) internal_cid: Option<u16>,
    pub(crate) internal: Option<Cqe>,
}

/// One NVMe controller, up to [`MAX_NS_QUEUES`] usable active namespaces (each a block-layer
/// queue: the first through `HwQueue for Nvme`, every one through [`Nvme::ns_queue`]), up to
/// [`MAX_IO_QUEUES`] I/O queue pairs they share: a request goes to the pair of its hardware
/// context (`Request::hctx`).
pub struct Nvme {
    pub(crate) regs: Regs,
    /// The I/O queue pairs; the first `nr_io` are created on the controller.
    pub(crate) pairs: [Pair; MAX_IO_QUEUES],
    /// I/O queue pairs in use (1..=`MAX_IO_QUEUES`), fixed at bring-up.
    pub(crate) nr_io: usize,
    /// Writes waiting for their pre-flush, by slot (a slot is on one pair at a time, whose
    /// lock its holder has when it takes this one).
    pub(crate) staged: [Mutex<Option<Command>>; SLOTS],
    pub(crate) admin: Mutex<AdminQ>,
    /// `LIST_PAGES` pages per slot of the attached namespaces (PRP lists, SGLs, DSM ranges).
    pub(crate) lists: DmaBuf,
    /// Identify data during bring-up.
    pub(crate) ident: DmaBuf,
    pub(crate) info: CtrlInfo,
    pub(crate) namespaces: Namespaces,
    /// The attached namespaces, by queue index.
    pub(crate) ns: [NsQueueInfo; MAX_NS_QUEUES],
    /// How many are attached (1..=`MAX_NS_QUEUES`): above 1 completions are routed by slot.
    pub(crate) ns_count: usize,
    /// The first attached namespace's limits (with a `HwQueue` of its own for the request
    /// path's scatter-gather lists; every namespace shares the segment limits).
    pub(crate) limits: QueueLimits,
    pub(crate) cfg: Config,
    /// Each namespace queue's completions, by queue index.
    pub(crate) sinks: [CompletionSink; MAX_NS_QUEUES],
    /// Admin commands submitted and not reaped yet (changed under the `admin` lock). The
    /// controller posts nothing unasked on the admin queue (no asynchronous event requests),
    /// so the interrupt path leaves the admin queue alone while this is 0.
    pub(crate) admin_outstanding: AtomicU32,
    pub(crate) dead: AtomicBool,
    /// A fatal status was seen: reset from process context.
    pub(crate) reset_wanted: AtomicBool,
    /// The counters of the controller's own paths (admin, passthrough, resets, timeouts);
    /// each pair keeps those of its I/O path.
    pub(crate) stats: DriverStats,
}

/// The locks of several I/O queue pairs, taken in pair order (the order every path that
/// holds more than one keeps; the admin lock comes after them).
pub(crate) struct Locked<'a> {
    guards: [Option<MutexGuard<'a, IoQ>>; MAX_IO_QUEUES],
    len: usize,
}

impl<'a> Locked<'a> {
    /// Locks `pairs` (at most [`MAX_IO_QUEUES`]), first to last.
    pub(crate) fn new(pairs: &'a [Pair]) -> Locked<'a> {
        let guards = core::array::from_fn(|k| pairs.get(k).map(|p| p.io.lock()));
        Locked {
            guards,
            len: pairs.len().min(MAX_IO_QUEUES),
        }
    }
    /// How many pairs.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// The pairs, in order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut IoQ> {
        self.guards.iter_mut().flatten().map(|g| &mut **g)
    }
}

/// Waits (spinning) until `done`, at most `ms` milliseconds of `clock`.
pub(crate) fn wait_until(clock: fn() -> u64, ms: u64, mut done: impl FnMut() -> bool) -> bool {
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
    /// queue pairs (`cfg.queues` asked for, what the controller grants used; pair `k` on
    /// interrupt vector `k` in interrupt mode). Bus mastering must be on.
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
            internal_cid: None,
            internal: None,
        };
        // Several pairs need a vector each (MSI-X); INTx and polling have one pair.
        let want = if cfg.mode == Mode::Interrupt && !cfg.intx {
            (cfg.queues as usize).clamp(1, MAX_IO_QUEUES)
        } else {
            1
        };
        // As many as BAR0 has doorbells for (pair 0's were checked above).
        let want = (1..=want)
            .rev()
            .find(|&w| regs.has_queue(IOQ + w as u16 - 1))
            .unwrap_or(1);
        // Pairs past `want` are never created on the controller: rings of two entries.
        let mut pairs = [const { None }; MAX_IO_QUEUES];
        for (k, p) in pairs.iter_mut().enumerate() {
            let entries = if k < want { io_entries } else { 2 };
            *p = Some(Pair {
                io: Mutex::new(IoQ::new(&regs, IOQ + k as u16, entries)?),
                hand: ReapHandover::new(),
                unrung: AtomicBool::new(false),
                stats: DriverStats::new(),
            });
        }
        let pairs = pairs.map(|p| p.expect("every pair was made above"));
        // A placeholder until bring-up knows how many namespaces get slots.
        let lists = DmaBuf::alloc(PAGE as usize, 4096).map_err(nomem)?;
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
            nsid: 0,
            read_only: false,
            max_queue_entries: mqe,
            io_entries,
            queues_wanted: want as u16,
            queues_granted: 0,
            block_size: 512,
            blocks: 0,
            capacity: 0,
        };
        let mut n = Nvme {
            regs,
            pairs,
            nr_io: want,
            staged: [const { Mutex::new(None) }; SLOTS],
            admin: Mutex::new(admin),
            lists,
            ident,
            info,
            namespaces: Namespaces::new(),
            ns: [NsQueueInfo::EMPTY; MAX_NS_QUEUES],
            ns_count: 0,
            limits: QueueLimits::new(),
            cfg,
            sinks: [const { CompletionSink::new() }; MAX_NS_QUEUES],
            admin_outstanding: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            reset_wanted: AtomicBool::new(false),
            stats: DriverStats::new(),
        };
        {
            let mut admin = n.admin.lock();
            n.enable(&mut admin)?;
            let (info, mut namespaces, attached) = n.identify(&mut admin)?;
            drop(admin);
            // List pages for every attached namespace's slots; with too little DMA memory
            // fewer namespaces are attached (the others are `NsState::NoMemory`).
            let mut count = attached.len;
            n.lists = loop {
                let bytes = count * QUEUE_DEPTH * LIST_PAGES * PAGE as usize;
                match DmaBuf::alloc(bytes, 4096) {
                    Ok(b) => break b,
                    Err(_) if count > 1 => count -= 1,
                    Err(_) => return Err(InitError::NoMemory),
                }
            };
            namespaces.detach_from(count);
            n.info = info;
            n.namespaces = namespaces;
            n.ns = attached.list;
            n.ns_count = count;
        }
        n.limits = n.compute_limits(n.info.block_size);
        let (granted, used) = {
            let mut ios = Locked::new(&n.pairs[..want]);
            let mut admin = n.admin.lock();
            n.setup_io(&mut admin, &mut ios)?
        };
        n.info.queues_granted = granted;
        n.nr_io = used;
        Ok(n)
    }

    /// Disables the controller and waits for `RDY` to clear.
    pub(crate) fn disable(&self) -> bool {
        let cc_now = self.regs.cc();
        if cc_now.contains(Cc::EN) {
            self.regs.set_cc(cc_now.difference(Cc::EN));
        }
        let to = self.regs.cap().timeout_ms();
        wait_until(self.cfg.clock, to, || !self.regs.csts().contains(Csts::RDY))
    }

    /// Reset, program the admin queue, enable, wait for ready.
    pub(crate) fn enable(&self, admin: &mut AdminQ) -> Result<(), InitError> {
        if !self.disable() {
            return Err(InitError::NotReady);
        }
        admin.sq.reset();
        admin.cq.reset();
        admin.internal = None;
        admin.internal_cid = None;
        self.admin_outstanding.store(0, Ordering::Release);
        let (sqe, cqe) = (admin.sq.entries() as u32, admin.cq.entries() as u32);
        self.regs.write32(regs::AQA, (cqe - 1) << 16 | (sqe - 1));
        self.regs.write64(regs::ASQ, admin.sq.phys());
        self.regs.write64(regs::ACQ, admin.cq.phys());
        fence(Ordering::SeqCst);
        self.regs.set_cc(Cc::io_queue_entry_sizes(6, 4) | Cc::EN);
        let to = self.regs.cap().timeout_ms();
        let ok = wait_until(self.cfg.clock, to, || {
            self.regs.csts().intersects(Csts::RDY | Csts::CFS)
        });
        if !ok || self.regs.csts().contains(Csts::CFS) {
            return Err(InitError::NotReady);
        }
        Ok(())
    }

    /// Identify Controller, then the namespaces (see `ns.rs`).
    fn identify(
        &self,
        admin: &mut AdminQ,
    ) -> Result<(CtrlInfo, Namespaces, AttachedNs), InitError> {
        let mut done = ColdBatch::new();
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
        info.vwc = Vwc::from_bits_retain(id.read8(id_ctrl::VWC)).contains(Vwc::PRESENT);
        let o = Oncs::from_bits_retain(id.read16(id_ctrl::ONCS));
        info.dsm = o.contains(Oncs::DSM);
        info.write_zeroes = o.contains(Oncs::WRITE_ZEROES);
        info.sgl_supported = id.read32(id_ctrl::SGLS) & 3 != 0;
        info.sgl = info.sgl_supported && self.cfg.prefer_sgl;
        info.namespaces = id.read32(id_ctrl::NN);
        if info.namespaces == 0 {
            return Err(InitError::BadIdentify);
        }
        let wp_feature = has_wp_feature(id);
        let (found, attached) = self.discover_namespaces(admin, info.namespaces, wp_feature)?;
        let first = attached.list[0];
        info.nsid = first.nsid;
        info.read_only = first.read_only;
        info.block_size = first.block_size;
        info.blocks = first.blocks;
        info.capacity = first.capacity;
        Ok((info, found, attached))
    }

    /// Asks for `want` submission and completion queues (Set Features / Number of Queues,
    /// zero-based counts); returns how many of each the controller granted (the smaller
    /// count; a controller that answers with no result grants what was asked).
    fn number_of_queues(&self, admin: &mut AdminQ, want: usize) -> Result<u16, InitError> {
        let mut done = ColdBatch::new();
        let n = (want as u32 - 1) & 0xffff;
        let mut c = Command::set_features(feature::NUMBER_OF_QUEUES, 0);
        c.dw[11] = n << 16 | n;
        let e = self
            .admin_sync(admin, c, &mut done)
            .map_err(|_| InitError::Admin)?;
        let (nsqa, ncqa) = (e.result & 0xffff, e.result >> 16);
        Ok((nsqa.min(ncqa) + 1).min(u16::MAX as u32) as u16)
    }

    /// Locks every I/O queue pair in use, in order (the order every path that takes several
    /// of them keeps; the admin lock comes after them).
    pub(crate) fn lock_pairs(&self) -> Locked<'_> {
        Locked::new(&self.pairs[..self.nr_io])
    }

    /// Features and the I/O queue pairs of `ios` (after an enable), as many of them as the
    /// controller grants: returns the grant and the pairs created. After a reset the same
    /// pairs are created again with the same ids and vectors, so the block layer's map of
    /// CPUs to pairs still holds.
    pub(crate) fn setup_io(
        &self,
        admin: &mut AdminQ,
        ios: &mut Locked<'_>,
    ) -> Result<(u16, usize), InitError> {
        let granted = self.number_of_queues(admin, ios.len())?;
        let used = ios.len().min(granted as usize);
        let mut done = ColdBatch::new();
        let mut run = |admin: &mut AdminQ, c: Command| {
            self.admin_sync(admin, c, &mut done)
                .map_err(|_| InitError::Admin)
        };
        if self.info.vwc {
            run(
                admin,
                Command::set_features(feature::VOLATILE_WRITE_CACHE, 1),
            )?;
        }
        let irq = self.cfg.mode == Mode::Interrupt;
        for (k, io) in ios.iter_mut().take(used).enumerate() {
            io.sq.reset();
            io.cq.reset();
            io.rung = 0;
            io.live = false;
            let q = io.qid;
            run(
                admin,
                Command::create_cq(q, io.cq.entries(), io.cq.phys(), k as u16, irq),
            )?;
            run(
                admin,
                Command::create_sq(q, io.sq.entries(), io.sq.phys(), q),
            )?;
            io.live = true;
        }
        Ok((granted, used))
    }

    /// Runs one of the driver's own admin commands and waits for it (bounded), reaping the
    /// admin queue meanwhile (passthrough completions go to `done`).
    pub(crate) fn admin_sync(
        &self,
        a: &mut AdminQ,
        mut c: Command,
        done: &mut ColdBatch,
    ) -> Result<Cqe, BlkError> {
        a.internal_seq = a.internal_seq.wrapping_add(1);
        let cid = INTERNAL_CID | (a.internal_seq & 0x7fff);
        c.set_cid(cid);
        a.internal = None;
        if !a.sq.push(&c) {
            return Err(BlkError::Busy);
        }
        a.internal_cid = Some(cid);
        self.admin_outstanding.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        self.regs.write32(
            regs::sq_tail_doorbell(0, self.regs.cap().doorbell_stride()),
            a.sq.tail() as u32,
        );
        let mut got = None;
        wait_until(self.cfg.clock, 2_000, || {
            self.reap_admin(a, done, &self.stats);
            if let Some(e) = a.internal.take()
                && e.cid == cid
            {
                got = Some(e);
                return true;
            }
            self.regs.csts().contains(Csts::CFS)
        });
        let e = got.ok_or(BlkError::Timeout)?;
        e.status.to_blk().map(|_| e)
    }

    /// The block layer's limits for a namespace of `block_size`-byte blocks.
    fn compute_limits(&self, block_size: u32) -> QueueLimits {
        let i = &self.info;
        let mut l = QueueLimits::new();
        l.logical_block_size = block_size;
        // Any request must fit the list budget whatever its alignment: two entries spare.
        let budget = (max_prp_entries(LIST_PAGES) as u64 - 2) * PAGE;
        let mut max = if i.mdts_bytes == 0 {
            budget
        } else {
            i.mdts_bytes.min(budget)
        };
        // The command's block count is 16 bits.
        max = max.min(65536 * block_size as u64);
        max -= max % block_size as u64;
        l.max_sectors = (max / 512) as u32;
        l.max_segments = MAX_SEGMENTS.min(max_prp_entries(LIST_PAGES)) as u16;
        l.max_segment_size = u32::MAX;
        l.dma_alignment = 4;
        l.virt_boundary_mask = if i.sgl { 0 } else { PAGE - 1 };
        let per_cmd = (65536u64 * block_size as u64 / 512).min(u32::MAX as u64) as u32;
        l.max_discard_sectors = if i.dsm { per_cmd } else { 0 };
        l.max_write_zeroes_sectors = if i.write_zeroes { per_cmd } else { 0 };
        l
    }

    /// What Identify said.
    pub fn info(&self) -> &CtrlInfo {
        &self.info
    }
    /// The active namespaces, the attached ones, and why each other one is not attached.
    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }
    /// The block layer's limits for the first attached namespace (queue 0).
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }
    /// Namespaces attached as queues (1..=[`MAX_NS_QUEUES`]).
    pub fn ns_queues(&self) -> usize {
        self.ns_count
    }
    /// Namespace queue `q`'s namespace (id, size, write protection), if attached.
    pub fn ns_queue_info(&self, q: usize) -> Option<&NsQueueInfo> {
        self.ns[..self.ns_count].get(q)
    }
    /// The block layer's limits for namespace queue `q` (its block size; the same segment
    /// limits for every namespace), if attached.
    pub fn ns_limits(&self, q: usize) -> Option<QueueLimits> {
        let ns = self.ns_queue_info(q)?;
        Some(if q == 0 {
            self.limits
        } else {
            self.compute_limits(ns.block_size)
        })
    }
    /// The mode.
    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }
    /// The counters: totals over the controller's own and every I/O queue pair's (each
    /// counter read once, relaxed; not at one instant). A copy: read it again for later
    /// values.
    pub fn stats(&self) -> DriverStats {
        let total = DriverStats::new();
        total.add_from(&self.stats);
        for p in &self.pairs {
            total.add_from(&p.stats);
        }
        total
    }
    /// Connects the block layer's queue of the first attached namespace (completion by tag).
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.sinks[0].attach(queue);
    }
    /// Connects the block layer's queue of namespace queue `q` (whose `HwQueue` is
    /// [`Nvme::ns_queue`]`(q)`); `false` if no namespace has that index.
    pub fn attach_ns(&self, q: usize, queue: &'static dyn TagComplete) -> bool {
        match self.sinks[..self.ns_count].get(q) {
            Some(s) => {
                s.attach(queue);
                true
            }
            None => false,
        }
    }
    /// Commands in flight (I/O on every pair and passthrough).
    pub fn in_flight(&self) -> usize {
        let mut n = 0;
        for k in 0..self.nr_io {
            n += self.pairs[k].io.lock().cids.count();
            self.after_unlock(k);
        }
        n += self.admin.lock().cids.count();
        self.after_unlock(0);
        n
    }
    /// Commands in flight on I/O queue pair `k` (0 past the pairs in use).
    pub fn in_flight_on(&self, k: usize) -> usize {
        if k >= self.nr_io {
            return 0;
        }
        let n = self.pairs[k].io.lock().cids.count();
        self.after_unlock(k);
        n
    }
    /// I/O queue pairs in use: one per hardware context of the block-layer queues (map the
    /// CPUs with this many), pair `k` completing on interrupt vector `k`.
    pub fn io_queues(&self) -> usize {
        self.nr_io
    }
    /// The controller is unusable.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }
    /// Controller status register.
    pub fn csts(&self) -> Csts {
        self.regs.csts()
    }
}
