//! The driver proper: HBA and port bring-up, IDENTIFY, `blk::HwQueue` (requests to command
//! slots), the interrupt handler (PxIS, PxSACT, PxCI), completion by tag, and error recovery by
//! port reset. The slot bookkeeping is [`Tracker`], pure and tested on the host.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use blk::{
    BioFlags, BlkError, HwQueue, Op, PtCmd, QueueLimits, QueueRqError, Request, SgEntry,
    TagComplete, TimeoutAction,
};
use hal::{DmaBuf, Mmio, PhysAddr};
use spin::{Mutex, MutexGuard, Once};

use crate::InitError;
use crate::cmd::{
    H2dFis, HEADER_BYTES, PRDT_ENTRIES, RFIS_BYTES, SLOTS, TABLE_BYTES, TRIM_OFFSET, header_dw0,
    trim_ranges,
};
use crate::regs::{bohc, cap, cap2, cmd, ghc, hba, is, port as px, sctl, ssts, tfd};
use crate::sg::{Prd, build_prdt, write_prdt, write_prdt_sg};
use crate::spec::{
    IdentifyInfo, LOG_NCQ_ERROR, NcqErrorLog, ata, parse_ncq_error_log, trimmed, words,
};

/// How completions are noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The HBA interrupts; the handler reaps.
    Interrupt,
    /// No interrupts: `HwQueue::poll` reaps (the kernel's wait hook calls it).
    Polling,
}

/// `BlkError::DeviceError` codes this driver reports.
pub mod device_error {
    /// The port is unusable (a reset failed).
    pub const DEAD: u16 = 0x200;
}

/// Times one command is replayed after a recovery it was not to blame for, before it fails.
pub const MAX_REPLAYS: u8 = 8;
/// Register polls before a wait for the hardware gives up.
const SPIN_LIMIT: u32 = 2_000_000;

/// What the controller and the disk offer, and what the driver uses.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// The port the disk is on.
    pub port: u8,
    /// IDENTIFY DEVICE.
    pub identify: IdentifyInfo,
    /// HBA `CAP`.
    pub cap: u32,
    /// HBA version.
    pub version: u32,
    /// Ports implemented.
    pub ports_implemented: u32,
    /// 64-bit DMA addresses.
    pub addr64: bool,
    /// NCQ in use (HBA and disk both do it).
    pub ncq: bool,
    /// Tags below this go out as NCQ commands.
    pub ncq_depth: u8,
    /// The BIOS owned the HBA and handed it over.
    pub bios_handoff: bool,
}

impl DeviceInfo {
    /// The block layer's limits.
    pub fn queue_limits(&self) -> QueueLimits {
        let id = &self.identify;
        let mut l = QueueLimits::new();
        l.logical_block_size = id.logical_sector_size;
        // 1 MiB per request: well under the 65536-block ATA count, and big bios get split.
        l.max_sectors = 2048;
        l.max_segments = PRDT_ENTRIES as u16;
        l.max_segment_size = crate::sg::PRD_MAX_BYTES;
        l.dma_alignment = 2;
        l.dma_limit = if self.addr64 { u64::MAX } else { 0xffff_ffff };
        if id.trim {
            // One 512-byte block of 64 ranges per command.
            let blocks = 64 * crate::spec::TRIM_RANGE_MAX;
            let sectors = blocks * (id.logical_sector_size as u64 / 512);
            l.max_discard_sectors = sectors.min(u32::MAX as u64 >> 9) as u32
                / (id.logical_sector_size / 512)
                * (id.logical_sector_size / 512);
        }
        l
    }
}

macro_rules! driver_stats {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one port (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct DriverStats { $( $(#[$m])* pub $name: AtomicU64, )* }

        impl DriverStats {
            const fn new() -> Self { DriverStats { $( $name: AtomicU64::new(0), )* } }
        }
    };
}

driver_stats! {
    /// Requests taken by `queue_rq`.
    requests,
    /// READ/WRITE FPDMA QUEUED commands issued.
    ncq_commands,
    /// Commands issued one at a time (DMA EXT, flush, TRIM, passthrough).
    exclusive_commands,
    /// FLUSH CACHE EXT commands issued (flush requests, FUA and PREFLUSH writes).
    flushes,
    /// TRIM commands issued.
    trims,
    /// Interrupt handler runs.
    interrupts,
    /// Requests completed to the block layer.
    completions,
    /// Requests completed with an error.
    errors,
    /// Error recoveries.
    recoveries,
    /// Task-file errors seen.
    task_file_errors,
    /// Interface (link or host bus) errors seen.
    interface_errors,
    /// NCQ error log reads that named the failed tag.
    log_reads,
    /// Recoveries that had to replay suspects one at a time to find the failed command.
    isolations,
    /// Port resets (COMRESET).
    port_resets,
    /// Commands replayed after a recovery.
    replays,
    /// Requests that timed out.
    timeouts,
    /// Largest PRDT built.
    max_prdt_entries,
}

/// One step of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The data command (or passthrough, TRIM) saved in the slot.
    Main,
    /// FLUSH CACHE EXT.
    Flush,
}

/// A slot's saved command.
#[derive(Clone, Copy, Debug)]
struct SlotCmd {
    fis: H2dFis,
    dw0: u32,
    steps: [Step; 3],
    nsteps: u8,
}

impl SlotCmd {
    const EMPTY: SlotCmd = SlotCmd {
        fis: H2dFis {
            command: 0,
            features: 0,
            lba: 0,
            device: 0,
            count: 0,
        },
        dw0: 0,
        steps: [Step::Main; 3],
        nsteps: 1,
    };
}

/// What to write to the port after a bookkeeping step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Issue {
    /// NCQ tags to issue (PxSACT, then PxCI).
    pub ncq: u32,
    /// A slot to issue alone (PxCI), at its current step.
    pub exclusive: Option<u8>,
}

/// Slot bookkeeping: which tags hold a request, which wait, which the port works on, and
/// which step of a multi-step request is running. Every tag the tracker takes leaves it
/// exactly once, through a completion, a failure, or [`Tracker::forget`].
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Tags holding a request.
    busy: u32,
    /// Queued-command tags waiting to be issued.
    ncq_wait: u32,
    /// Exclusive tags waiting.
    excl_wait: u32,
    /// Queued commands in the port.
    ncq_active: u32,
    /// The exclusive command in the port (one bit at most).
    excl_active: u32,
    /// Tags that may have failed: replayed one at a time.
    suspects: u32,
    /// An error stopped the port; nothing is issued until recovery.
    stopped: bool,
    /// Current step per tag.
    step: [u8; SLOTS],
    /// Steps per tag.
    nsteps: [u8; SLOTS],
    /// Replays per tag.
    replays: [u8; SLOTS],
}

/// What a recovery decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Tags that fail.
    pub failed: u32,
    /// Tags to issue again.
    pub replayed: u32,
    /// Tags held as suspects (the failed one was not known).
    pub suspects: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Nothing in flight.
    pub const fn new() -> Tracker {
        Tracker {
            busy: 0,
            ncq_wait: 0,
            excl_wait: 0,
            ncq_active: 0,
            excl_active: 0,
            suspects: 0,
            stopped: false,
            step: [0; SLOTS],
            nsteps: [1; SLOTS],
            replays: [0; SLOTS],
        }
    }

    /// Tags holding a request.
    pub fn busy(&self) -> u32 {
        self.busy
    }

    /// Commands in the port.
    pub fn active(&self) -> u32 {
        self.ncq_active | self.excl_active
    }

    /// Queued commands in the port.
    pub fn ncq_active(&self) -> u32 {
        self.ncq_active
    }

    /// The exclusive command in the port (one bit at most).
    pub fn excl_active(&self) -> u32 {
        self.excl_active
    }

    /// Whether an error stopped the port.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes a request on `tag`: queued (NCQ) or exclusive with `steps` steps. False when the
    /// tag is already busy (a block-layer bug; nothing changes).
    pub fn accept(&mut self, tag: u8, ncq: bool, steps: u8) -> bool {
        let b = 1u32 << tag;
        if self.busy & b != 0 {
            return false;
        }
        self.busy |= b;
        self.step[tag as usize] = 0;
        self.nsteps[tag as usize] = steps.max(1);
        self.replays[tag as usize] = 0;
        if ncq {
            self.ncq_wait |= b;
        } else {
            self.excl_wait |= b;
        }
        true
    }

    /// The current step of `tag`.
    pub fn step(&self, tag: u8) -> u8 {
        self.step[tag as usize]
    }

    /// What may go to the port now; marks it active.
    pub fn next_issue(&mut self) -> Issue {
        let mut out = Issue::default();
        if self.stopped || self.excl_active != 0 {
            return out;
        }
        if self.suspects != 0 {
            // One at a time, so an error names its command.
            if self.ncq_active == 0 {
                let t = self.suspects.trailing_zeros() as u8;
                let b = 1u32 << t;
                if self.ncq_wait & b != 0 {
                    self.ncq_wait &= !b;
                    self.ncq_active |= b;
                    out.ncq = b;
                } else {
                    self.excl_wait &= !b;
                    self.excl_active = b;
                    out.exclusive = Some(t);
                }
            }
            return out;
        }
        if self.excl_wait != 0 {
            if self.ncq_active == 0 {
                let t = self.excl_wait.trailing_zeros() as u8;
                self.excl_wait &= !(1 << t);
                self.excl_active = 1 << t;
                out.exclusive = Some(t);
            }
            return out;
        }
        out.ncq = self.ncq_wait;
        self.ncq_active |= self.ncq_wait;
        self.ncq_wait = 0;
        out
    }

    fn leave(&mut self, mask: u32) {
        self.busy &= !mask;
        self.ncq_wait &= !mask;
        self.excl_wait &= !mask;
        self.ncq_active &= !mask;
        self.excl_active &= !mask;
        self.suspects &= !mask;
    }

    /// Queued commands the port finished (their PxSACT bit is clear): they complete.
    pub fn reap_ncq(&mut self, sact: u32) -> u32 {
        let done = self.ncq_active & !sact;
        self.leave(done);
        done
    }

    /// The exclusive command after its PxCI bit cleared without an error: `Some((tag, true))`
    /// when it completes, `Some((tag, false))` when its next step must be issued.
    pub fn reap_exclusive(&mut self, ci: u32) -> Option<(u8, bool)> {
        if self.excl_active == 0 || ci & self.excl_active != 0 {
            return None;
        }
        let t = self.excl_active.trailing_zeros() as u8;
        self.step[t as usize] += 1;
        if self.step[t as usize] >= self.nsteps[t as usize] {
            self.leave(1 << t);
            Some((t, true))
        } else {
            Some((t, false))
        }
    }

    /// An error: the port stops issuing until [`Tracker::recover`].
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whom to blame without asking the device: the exclusive command, or the only command
    /// in the port. `None` when several queued commands were in the port.
    pub fn obvious_culprit(&self) -> Option<u32> {
        let a = self.active();
        if self.excl_active != 0 {
            Some(self.excl_active)
        } else if a.count_ones() <= 1 {
            Some(a)
        } else {
            None
        }
    }

    /// Removes `tag` without completing it (the block layer took it back on a timeout).
    pub fn forget(&mut self, tag: u8) -> bool {
        let b = 1u32 << tag;
        let was = self.busy & b != 0;
        self.leave(b);
        was
    }

    /// After the port was reset: `failed` (when known) fails; every other command that was in
    /// the port goes again (up to [`MAX_REPLAYS`] times each); when the failed command is not
    /// known, they go again one at a time as suspects. The port issues again.
    pub fn recover(&mut self, failed: Option<u32>) -> Recovery {
        let active = self.active();
        let mut r = Recovery::default();
        let failed = failed.map(|f| f & active);
        let mut rest = active & !failed.unwrap_or(0);
        r.failed = failed.unwrap_or(0);
        for t in 0..SLOTS {
            let b = 1u32 << t;
            if rest & b != 0 {
                self.replays[t] += 1;
                if self.replays[t] > MAX_REPLAYS {
                    r.failed |= b;
                    rest &= !b;
                }
            }
        }
        // Queued commands wait again; an exclusive command restarts its current step.
        self.ncq_wait |= self.ncq_active & rest;
        self.excl_wait |= self.excl_active & rest;
        self.ncq_active = 0;
        self.excl_active = 0;
        self.leave(r.failed);
        if failed.is_none() && rest.count_ones() > 1 {
            self.suspects |= rest;
            r.suspects = rest;
        } else {
            r.replayed = rest;
        }
        self.stopped = false;
        r
    }
}

/// Completions collected under the lock, delivered after it: one bit per tag (a tag is in at
/// most one of `ok`, `io`, `dead`, since the tracker lets every tag leave once).
#[derive(Clone, Copy, Default)]
struct DoneList {
    /// Completed successfully.
    ok: u32,
    /// Failed with `BlkError::Io`.
    io: u32,
    /// Failed because the port is dead.
    dead: u32,
    /// Which of them are passthrough commands.
    pt: u32,
}

impl DoneList {
    const fn new() -> Self {
        DoneList {
            ok: 0,
            io: 0,
            dead: 0,
            pt: 0,
        }
    }

    fn all(&self) -> u32 {
        self.ok | self.io | self.dead
    }
}

struct Inner {
    tracker: Tracker,
    cmds: [SlotCmd; SLOTS],
    /// Slots holding a passthrough command.
    pt: u32,
    /// Slots whose header and FIS `queue_rq` already wrote for their first issue.
    loaded: u32,
    /// PxIS, PxTFD and PxSERR of the error that stopped the port.
    err_is: u32,
    err_tfd: u32,
    err_serr: u32,
    dead: bool,
}

/// Memory layout of the port's DMA buffer.
const CL_OFF: usize = 0;
const RFIS_OFF: usize = 1024;
const SCRATCH_OFF: usize = 2048;
const TABLES_OFF: usize = 4096;
const INTERNAL_TABLE: usize = TABLES_OFF + SLOTS * TABLE_BYTES;
const MEM_BYTES: usize = INTERNAL_TABLE + TABLE_BYTES;

const _: () =
    assert!(RFIS_OFF >= CL_OFF + SLOTS * HEADER_BYTES && SCRATCH_OFF >= RFIS_OFF + RFIS_BYTES);

/// An AHCI controller with one disk on one port.
pub struct Ahci {
    abar: Mmio,
    /// The port's own registers (`PORT_BASE + port * PORT_STRIDE` of ABAR).
    pregs: Mmio,
    port: usize,
    mem: DmaBuf,
    info: DeviceInfo,
    limits: QueueLimits,
    /// log2 of the logical sector size.
    lbs_shift: u32,
    mode: Mode,
    inner: Mutex<Inner>,
    /// `queue_rq` took a request it left for `commit` to issue.
    unissued: AtomicBool,
    queue: Once<&'static dyn TagComplete>,
    /// PxIS bits the handler cleared but could not act on (the lock was held).
    pending_is: AtomicU32,
    reap_pending: AtomicBool,
    recovery_pending: AtomicBool,
    stats: DriverStats,
}

fn spin_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..SPIN_LIMIT {
        if f() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

impl Ahci {
    /// Brings up the HBA behind `abar` (BAR5) and the disk on its first live port.
    pub fn new(abar: Mmio, mode: Mode) -> Result<Ahci, InitError> {
        if abar.len() < hba::PORT_BASE + hba::PORT_STRIDE {
            return Err(InitError::Controller);
        }
        // BIOS/OS handoff when offered.
        let mut bios_handoff = false;
        if abar.read32(hba::CAP2) & cap2::BOH != 0 {
            let b = abar.read32(hba::BOHC);
            bios_handoff = b & bohc::BOS != 0;
            abar.write32(hba::BOHC, b | bohc::OOS);
            spin_until(|| abar.read32(hba::BOHC) & bohc::BOS == 0);
            spin_until(|| abar.read32(hba::BOHC) & bohc::BB == 0);
        }
        // AHCI mode, HBA reset (firmware may have left ports running), AHCI mode again.
        abar.write32(hba::GHC, ghc::AE);
        abar.write32(hba::GHC, ghc::AE | ghc::HR);
        if !spin_until(|| abar.read32(hba::GHC) & ghc::HR == 0) {
            return Err(InitError::Controller);
        }
        abar.write32(hba::GHC, ghc::AE);
        let cap_v = abar.read32(hba::CAP);
        if ((cap_v >> cap::NCS_SHIFT) & 0x1f) + 1 < SLOTS as u32 {
            return Err(InitError::TooFewSlots);
        }
        let pi = abar.read32(hba::PI);
        let nports = (abar.len() - hba::PORT_BASE) / hba::PORT_STRIDE;
        let port = (0..nports.min(32))
            .filter(|p| pi & (1 << p) != 0)
            .find(|&p| {
                let off = hba::PORT_BASE + p * hba::PORT_STRIDE + px::SSTS;
                abar.read32(off) & ssts::DET_MASK == ssts::DET_PRESENT
            })
            .ok_or(InitError::NoDevice)?;
        let addr64 = cap_v & cap::S64A != 0;
        let mem = DmaBuf::alloc(MEM_BYTES, 4096).map_err(|_| InitError::NoMemory)?;
        if !addr64 && mem.phys().0 + MEM_BYTES as u64 > 1 << 32 {
            return Err(InitError::NoMemory);
        }
        let placeholder = IdentifyInfo {
            blocks: 0,
            logical_sector_size: 512,
            physical_sector_size: 512,
            lba48: false,
            ncq: false,
            ncq_depth: 1,
            write_cache: false,
            write_cache_enabled: false,
            fua: false,
            trim: false,
            trim_max_blocks: 0,
            model: [b' '; 40],
            serial: [b' '; 20],
        };
        let pregs = abar
            .subregion(hba::PORT_BASE + port * hba::PORT_STRIDE, hba::PORT_STRIDE)
            .ok_or(InitError::Controller)?;
        let mut ahci = Ahci {
            abar,
            pregs,
            port,
            mem,
            info: DeviceInfo {
                port: port as u8,
                identify: placeholder,
                cap: cap_v,
                version: 0,
                ports_implemented: pi,
                addr64,
                ncq: false,
                ncq_depth: 1,
                bios_handoff,
            },
            limits: QueueLimits::new(),
            lbs_shift: 9,
            mode,
            inner: Mutex::new(Inner {
                tracker: Tracker::new(),
                cmds: [SlotCmd::EMPTY; SLOTS],
                pt: 0,
                loaded: 0,
                err_is: 0,
                err_tfd: 0,
                err_serr: 0,
                dead: false,
            }),
            queue: Once::new(),
            unissued: AtomicBool::new(false),
            pending_is: AtomicU32::new(0),
            reap_pending: AtomicBool::new(false),
            recovery_pending: AtomicBool::new(false),
            stats: DriverStats::new(),
        };
        ahci.info.version = ahci.abar.read32(hba::VS);
        if !ahci.port_start() {
            return Err(InitError::PortStart);
        }
        let scratch = ahci.mem.phys().add(SCRATCH_OFF as u64);
        ahci.exec_internal(
            H2dFis::simple(ata::IDENTIFY_DEVICE),
            Some((scratch, 512)),
            false,
        )
        .map_err(InitError::Identify)?;
        let mut bytes = [0u8; 512];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = ahci.mem.read8(SCRATCH_OFF + i);
        }
        let id = IdentifyInfo::parse(&words(&bytes)).map_err(InitError::BadIdentify)?;
        ahci.info.identify = id;
        ahci.info.ncq = cap_v & cap::SNCQ != 0 && id.ncq && id.lba48;
        ahci.info.ncq_depth = if ahci.info.ncq { id.ncq_depth } else { 0 };
        ahci.limits = ahci.info.queue_limits();
        ahci.limits
            .validate()
            .map_err(|_| InitError::BadIdentify(crate::spec::IdentifyError::BadSectorSize))?;
        // A power of two (checked by `validate`).
        ahci.lbs_shift = id.logical_sector_size.trailing_zeros();
        if mode == Mode::Interrupt {
            ahci.abar.write32(hba::GHC, ghc::AE | ghc::IE);
        }
        Ok(ahci)
    }

    /// What the controller and disk offer.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The block layer's limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Completion mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The counters.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Model and serial number, trimmed.
    pub fn model_serial(&self) -> (&str, &str) {
        (
            trimmed(&self.info.identify.model),
            trimmed(&self.info.identify.serial),
        )
    }

    /// Connects the block layer's queue (completion by tag).
    pub fn attach(&self, queue: &'static dyn TagComplete) {
        self.queue.call_once(|| queue);
    }

    /// Requests the driver holds now.
    pub fn in_flight(&self) -> u32 {
        self.inner.lock().tracker.busy().count_ones()
    }

    /// Whether a reset failed and the port is unusable.
    pub fn is_dead(&self) -> bool {
        self.inner.lock().dead
    }

    #[inline]
    fn pread(&self, off: usize) -> u32 {
        self.pregs.read32(off)
    }

    #[inline]
    fn pwrite(&self, off: usize, v: u32) {
        self.pregs.write32(off, v)
    }

    fn table_off(slot: usize) -> usize {
        TABLES_OFF + slot * TABLE_BYTES
    }

    /// Stops the command engine and FIS receive (AHCI 10.1.2).
    fn port_stop(&self) -> bool {
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c & !cmd::ST);
        let a = spin_until(|| self.pread(px::CMD) & cmd::CR == 0);
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c & !cmd::FRE);
        let b = spin_until(|| self.pread(px::CMD) & cmd::FR == 0);
        a && b
    }

    /// Points the port at its memory, enables FIS receive, clears errors, starts the engine.
    fn port_start(&self) -> bool {
        if !self.port_stop() {
            return false;
        }
        let base = self.mem.phys().0;
        let cl = base + CL_OFF as u64;
        let fb = base + RFIS_OFF as u64;
        self.pwrite(px::CLB, cl as u32);
        self.pwrite(px::CLBU, (cl >> 32) as u32);
        self.pwrite(px::FB, fb as u32);
        self.pwrite(px::FBU, (fb >> 32) as u32);
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c | cmd::FRE | cmd::SUD | cmd::POD);
        self.pwrite(px::SERR, !0);
        if !spin_until(|| self.pread(px::TFD) & (tfd::BSY | tfd::DRQ) == 0) {
            return false;
        }
        self.pwrite(px::IS, !0);
        self.pwrite(
            px::IE,
            if self.mode == Mode::Interrupt {
                is::ENABLED
            } else {
                0
            },
        );
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c | cmd::ST);
        true
    }

    /// COMRESET and start again.
    fn port_reset(&self) -> bool {
        self.stats.port_resets.fetch_add(1, Ordering::Relaxed);
        self.port_stop();
        let s = self.pread(px::SCTL) & !sctl::DET_MASK;
        self.pwrite(px::SCTL, s | sctl::DET_COMRESET);
        // At least 1 ms of COMRESET on real links.
        for _ in 0..10_000 {
            let _ = self.pread(px::SSTS);
        }
        self.pwrite(px::SCTL, s);
        let up = spin_until(|| self.pread(px::SSTS) & ssts::DET_MASK == ssts::DET_PRESENT);
        self.pwrite(px::SERR, !0);
        up && self.port_start()
    }

    /// Writes command header `slot` for a command table at `table`.
    /// Dword 0 and PRDBC (cleared) as one 64-bit store, CTBA and CTBAU as another.
    #[inline]
    fn write_header(&self, slot: usize, dw0: u32, table: usize) {
        let h = CL_OFF + slot * HEADER_BYTES;
        let t = self.mem.phys().0 + table as u64;
        self.mem.write64(h, dw0 as u64);
        self.mem.write64(h + 8, t);
    }

    #[inline]
    fn write_cfis(&self, table: usize, fis: &H2dFis) {
        let d = fis.to_dwords();
        self.mem.write64(table, d[0] as u64 | (d[1] as u64) << 32);
        self.mem
            .write64(table + 8, d[2] as u64 | (d[3] as u64) << 32);
        self.mem.write32(table + 16, d[4]);
    }

    /// Runs one command in slot 0 with the internal table and waits for it (port idle only:
    /// bring-up and recovery). Errors give `PxTFD`.
    fn exec_internal(
        &self,
        fis: H2dFis,
        data: Option<(PhysAddr, u32)>,
        write: bool,
    ) -> Result<(), u32> {
        let mut n = 0;
        if let Some((a, len)) = data {
            write_prdt(
                &self.mem,
                INTERNAL_TABLE,
                &[Prd {
                    dba: a.0,
                    bytes: len,
                }],
            );
            n = 1;
        }
        self.write_cfis(INTERNAL_TABLE, &fis);
        self.write_header(0, header_dw0(write, n), INTERNAL_TABLE);
        self.pwrite(px::IS, !0);
        self.pwrite(px::CI, 1);
        let ok = spin_until(|| self.pread(px::CI) & 1 == 0 || self.pread(px::IS) & is::ERRORS != 0);
        let t = self.pread(px::TFD);
        let failed = !ok || self.pread(px::IS) & is::ERRORS != 0 || t & tfd::ERR != 0;
        self.pwrite(px::IS, !0);
        if failed { Err(t) } else { Ok(()) }
    }

    /// Writes header and FIS of `tag` at its current step (unless `queue_rq` already did for
    /// the first issue).
    fn load_slot(&self, inner: &mut Inner, tag: u8) {
        let b = 1u32 << tag;
        if inner.loaded & b != 0 {
            inner.loaded &= !b;
            return;
        }
        self.write_slot(inner, tag);
    }

    /// Writes header and FIS of `tag` at its current step.
    fn write_slot(&self, inner: &Inner, tag: u8) {
        let c = &inner.cmds[tag as usize];
        let table = Self::table_off(tag as usize);
        let step = inner.tracker.step(tag).min(c.nsteps - 1);
        match c.steps[step as usize] {
            Step::Main => {
                self.write_cfis(table, &c.fis);
                self.write_header(tag as usize, c.dw0, table);
            }
            Step::Flush => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.write_cfis(table, &H2dFis::simple(ata::FLUSH_CACHE_EXT));
                self.write_header(tag as usize, header_dw0(false, 0), table);
            }
        }
    }

    /// Issues whatever the tracker allows.
    fn issue_ready(&self, inner: &mut Inner) {
        self.unissued.store(false, Ordering::Relaxed);
        if inner.dead {
            return;
        }
        let iss = inner.tracker.next_issue();
        if iss.ncq != 0 {
            // Slots `queue_rq` loaded go out as they are; the others (replays) are written now.
            let mut m = iss.ncq & !inner.loaded;
            inner.loaded &= !iss.ncq;
            while m != 0 {
                let t = m.trailing_zeros() as u8;
                m &= m - 1;
                self.write_slot(inner, t);
            }
            self.stats
                .ncq_commands
                .fetch_add(iss.ncq.count_ones() as u64, Ordering::Relaxed);
            self.pwrite(px::SACT, iss.ncq);
            self.pwrite(px::CI, iss.ncq);
        }
        if let Some(t) = iss.exclusive {
            self.issue_exclusive(inner, t);
        }
    }

    fn issue_exclusive(&self, inner: &mut Inner, t: u8) {
        self.load_slot(inner, t);
        self.stats
            .exclusive_commands
            .fetch_add(1, Ordering::Relaxed);
        self.pwrite(px::CI, 1 << t);
    }

    /// Reaps finished commands; an error stops the port for recovery.
    fn reap_locked(&self, inner: &mut Inner, done: &mut DoneList) {
        self.reap_pending.store(false, Ordering::Release);
        let is_bits = self.pending_is.swap(0, Ordering::AcqRel);
        let t = self.pread(px::TFD);
        let error = is_bits & is::ERRORS != 0 || (t & tfd::ERR != 0 && t & tfd::BSY == 0);
        // Only the registers of commands in the port: with none of a kind, reaping that kind
        // finds nothing.
        let mut ok = if inner.tracker.ncq_active() != 0 {
            inner.tracker.reap_ncq(self.pread(px::SACT))
        } else {
            0
        };
        if error {
            if !inner.tracker.stopped() {
                if is_bits & is::INTERFACE_ERRORS != 0 {
                    self.stats.interface_errors.fetch_add(1, Ordering::Relaxed);
                }
                if is_bits & is::TFES != 0 || t & tfd::ERR != 0 {
                    self.stats.task_file_errors.fetch_add(1, Ordering::Relaxed);
                }
                inner.err_is = is_bits;
                inner.err_tfd = t;
                inner.err_serr = self.pread(px::SERR);
                inner.tracker.stop();
            }
            self.recovery_pending.store(true, Ordering::Release);
        } else if inner.tracker.excl_active() != 0
            && let Some((tag, finished)) = inner.tracker.reap_exclusive(self.pread(px::CI))
        {
            if finished {
                ok |= 1 << tag;
            } else {
                self.issue_exclusive(inner, tag);
            }
        }
        done.ok |= ok;
        done.pt |= ok & inner.pt;
        self.issue_ready(inner);
    }

    /// Drops the lock, delivers completions, and reaps again while the interrupt handler left
    /// work behind.
    fn unlock_and_deliver<'a>(&'a self, mut guard: MutexGuard<'a, Inner>, mut done: DoneList) {
        loop {
            drop(guard);
            self.deliver(&done);
            if !self.reap_pending.load(Ordering::Acquire) {
                return;
            }
            match self.inner.try_lock() {
                Some(g) => guard = g,
                None => return,
            }
            done = DoneList::new();
            self.reap_locked(&mut guard, &mut done);
        }
    }

    fn deliver(&self, done: &DoneList) {
        let all = done.all();
        if all == 0 {
            return;
        }
        let Some(q) = self.queue.get() else { return };
        let one = all & (all - 1) == 0;
        self.stats.completions.fetch_add(
            if one { 1 } else { all.count_ones() as u64 },
            Ordering::Relaxed,
        );
        let failed = done.io | done.dead;
        if failed != 0 {
            self.stats
                .errors
                .fetch_add(failed.count_ones() as u64, Ordering::Relaxed);
        }
        let mut m = all;
        while m != 0 {
            let tag = m.trailing_zeros();
            m &= m - 1;
            let b = 1u32 << tag;
            let st = if done.ok & b != 0 {
                Ok(())
            } else if done.io & b != 0 {
                Err(BlkError::Io)
            } else {
                Err(BlkError::DeviceError(device_error::DEAD))
            };
            if done.pt & b != 0 {
                q.complete_pt(tag as u16, st, 0);
            } else {
                q.complete(tag as u16, st, if st.is_ok() { None } else { Some(0) });
            }
        }
    }

    /// The interrupt handler: acknowledge the port and the HBA, then reap (or leave it to
    /// whoever holds the lock).
    pub fn handle_irq(&self) {
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        let s = self.pread(px::IS);
        if s != 0 {
            self.pwrite(px::IS, s);
        }
        self.abar.write32(hba::IS, 1 << self.port);
        self.pending_is.fetch_or(s, Ordering::AcqRel);
        self.reap_pending.store(true, Ordering::Release);
        if let Some(mut g) = self.inner.try_lock() {
            let mut done = DoneList::new();
            self.reap_locked(&mut g, &mut done);
            self.unlock_and_deliver(g, done);
        }
    }

    /// Process-context work: error recovery when an error stopped the port. The kernel calls
    /// it from its deferred-work loop.
    pub fn deferred(&self) {
        if self.mode == Mode::Polling {
            self.poll_once();
        }
        if self.recovery_pending.load(Ordering::Relaxed)
            && self.recovery_pending.swap(false, Ordering::AcqRel)
        {
            let mut g = self.inner.lock();
            let mut done = DoneList::new();
            if g.tracker.stopped() {
                self.recover(&mut g, None, &mut done);
            }
            self.unlock_and_deliver(g, done);
        }
    }

    /// Reads the NCQ command error log; `Some(tag mask)` when it names a command in the port.
    fn read_ncq_log(&self, inner: &Inner) -> Option<u32> {
        if !self.port_stop() {
            return None;
        }
        self.pwrite(px::SERR, !0);
        self.pwrite(px::IS, !0);
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c | cmd::FRE);
        let c = self.pread(px::CMD);
        self.pwrite(px::CMD, c | cmd::ST);
        let scratch = self.mem.phys().add(SCRATCH_OFF as u64);
        self.exec_internal(
            H2dFis::read_log_ext(LOG_NCQ_ERROR, 1),
            Some((scratch, 512)),
            false,
        )
        .ok()?;
        let mut page = [0u8; 512];
        for (i, b) in page.iter_mut().enumerate() {
            *b = self.mem.read8(SCRATCH_OFF + i);
        }
        match parse_ncq_error_log(&page) {
            NcqErrorLog::Tag { tag, .. } if inner.tracker.active() & (1 << tag) != 0 => {
                self.stats.log_reads.fetch_add(1, Ordering::Relaxed);
                Some(1 << tag)
            }
            _ => None,
        }
    }

    /// Error recovery: name the failed command, reset the port, fail it, replay the rest.
    /// `timed_out` is a tag the block layer took back (forgotten, not completed here).
    fn recover(&self, inner: &mut Inner, timed_out: Option<u8>, done: &mut DoneList) {
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        // The internal command below reuses slot 0's header: every slot is written afresh
        // before it is issued again.
        inner.loaded = 0;
        // Queued commands that finished before the error complete normally.
        let sact = self.pread(px::SACT);
        let ok = if inner.tracker.stopped() || timed_out.is_some() {
            inner.tracker.reap_ncq(sact)
        } else {
            0
        };
        let failed = match timed_out {
            Some(t) => {
                inner.tracker.forget(t);
                Some(0)
            }
            None => inner
                .tracker
                .obvious_culprit()
                .or_else(|| self.read_ncq_log(inner)),
        };
        if failed.is_none() {
            self.stats.isolations.fetch_add(1, Ordering::Relaxed);
        }
        let reset_ok = self.port_reset();
        inner.tracker.stop();
        let r = inner.tracker.recover(failed);
        self.stats.replays.fetch_add(
            (r.replayed | r.suspects).count_ones() as u64,
            Ordering::Relaxed,
        );
        if !reset_ok {
            inner.dead = true;
        }
        done.ok |= ok;
        done.io |= r.failed;
        done.pt |= (ok | r.failed) & inner.pt;
        if inner.dead {
            let mut rest = inner.tracker.busy();
            done.dead |= rest;
            done.pt |= rest & inner.pt;
            while rest != 0 {
                let tag = rest.trailing_zeros() as u8;
                rest &= rest - 1;
                inner.tracker.forget(tag);
            }
            return;
        }
        self.issue_ready(inner);
    }

    fn poll_once(&self) -> usize {
        let Some(mut g) = self.inner.try_lock() else {
            return 0;
        };
        let s = self.pread(px::IS);
        if s != 0 {
            self.pwrite(px::IS, s);
        }
        self.pending_is.fetch_or(s, Ordering::AcqRel);
        let mut done = DoneList::new();
        self.reap_locked(&mut g, &mut done);
        let n = done.all().count_ones() as usize;
        self.unlock_and_deliver(g, done);
        n
    }

    /// Builds the command for `rq` in its slot; `Ok(ncq, steps)`.
    fn build(&self, inner: &mut Inner, rq: &Request) -> Result<(bool, u8), QueueRqError> {
        let tag = rq.tag() as usize;
        let table = Self::table_off(tag);
        let shift = self.lbs_shift;
        let wc = self.info.identify.write_cache;
        let b = 1u32 << tag;
        // Set again below only when this request's first step is written here.
        inner.loaded &= !b;
        if let Some(pt) = rq.passthrough() {
            return self.build_pt(inner, tag, pt);
        }
        inner.pt &= !b;
        match rq.op() {
            Op::Read | Op::Write => {
                let write = rq.op() == Op::Write;
                let (np, bytes) = self.map_prdt(rq, table)?;
                let lbs_mask = (1u32 << shift) - 1;
                if bytes != rq.bytes() || bytes & lbs_mask != 0 || bytes == 0 {
                    return Err(QueueRqError::Fatal(BlkError::Misaligned));
                }
                if np as u64 > self.stats.max_prdt_entries.load(Ordering::Relaxed) {
                    self.stats
                        .max_prdt_entries
                        .fetch_max(np as u64, Ordering::Relaxed);
                }
                let lba = (rq.sector() << 9) >> shift;
                let blocks = bytes >> shift;
                let flags = rq.flags();
                let pre = write && wc && flags.contains(BioFlags::PREFLUSH);
                let post = write && wc && flags.contains(BioFlags::FUA);
                let ncq = self.info.ncq && (tag as u8) < self.info.ncq_depth && !pre && !post;
                let c = &mut inner.cmds[tag];
                c.fis = if ncq {
                    H2dFis::fpdma(write, lba, blocks, tag as u8, false)
                } else {
                    H2dFis::dma_ext(write, lba, blocks)
                };
                c.dw0 = header_dw0(write, np as u16);
                let mut k = 0;
                if pre {
                    c.steps[k] = Step::Flush;
                    k += 1;
                }
                c.steps[k] = Step::Main;
                k += 1;
                if post {
                    c.steps[k] = Step::Flush;
                    k += 1;
                }
                c.nsteps = k as u8;
                if !pre {
                    // The first step is the data command: its FIS and header go out now, so
                    // issuing is only the register writes.
                    self.write_cfis(table, &c.fis);
                    self.write_header(tag, c.dw0, table);
                    inner.loaded |= b;
                }
                Ok((ncq, k as u8))
            }
            Op::Flush => {
                let c = &mut inner.cmds[tag];
                c.steps[0] = Step::Flush;
                c.nsteps = 1;
                Ok((false, 1))
            }
            Op::Discard if self.info.identify.trim => {
                let lba = (rq.sector() << 9) >> shift;
                let blocks = rq.bytes() as u64 >> shift;
                let mut ranges = [0u64; 64];
                let n = trim_ranges(lba, blocks, &mut ranges)
                    .ok_or(QueueRqError::Fatal(BlkError::Misaligned))?;
                for (i, r) in ranges.iter().enumerate() {
                    let v = if i < n { *r } else { 0 };
                    self.mem.write64(table + TRIM_OFFSET + 8 * i, v);
                }
                let a = self.mem.phys().0 + (table + TRIM_OFFSET) as u64;
                write_prdt(&self.mem, table, &[Prd { dba: a, bytes: 512 }]);
                let c = &mut inner.cmds[tag];
                c.fis = H2dFis::trim(1);
                c.dw0 = header_dw0(true, 1);
                c.steps[0] = Step::Main;
                c.nsteps = 1;
                self.stats.trims.fetch_add(1, Ordering::Relaxed);
                Ok((false, 1))
            }
            _ => Err(QueueRqError::Fatal(BlkError::Unsupported)),
        }
    }

    /// The PRDT of a read or write, straight into the slot's table at `table`; (entries,
    /// bytes). Requests of a few segments (most of them) map into a small list; the full
    /// 128-entry list is only built for the others.
    #[inline]
    fn map_prdt(&self, rq: &Request, table: usize) -> Result<(usize, u32), QueueRqError> {
        const SMALL: usize = 4;
        if rq.nr_segments() as usize <= SMALL {
            let mut sg = [SgEntry::default(); SMALL];
            if let Ok(n) = rq.map_sg(&self.limits, &mut sg) {
                return write_prdt_sg(&self.mem, table, &sg[..n], self.limits.dma_limit)
                    .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned));
            }
        }
        self.map_prdt_large(rq, table)
    }

    #[inline(never)]
    fn map_prdt_large(&self, rq: &Request, table: usize) -> Result<(usize, u32), QueueRqError> {
        let mut sg = [SgEntry::default(); PRDT_ENTRIES];
        let n = rq
            .map_sg(&self.limits, &mut sg)
            .map_err(QueueRqError::Fatal)?;
        write_prdt_sg(&self.mem, table, &sg[..n], self.limits.dma_limit)
            .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned))
    }

    fn build_pt(
        &self,
        inner: &mut Inner,
        tag: usize,
        pt: &PtCmd,
    ) -> Result<(bool, u8), QueueRqError> {
        let table = Self::table_off(tag);
        let mut n = 0u16;
        if let Some(v) = pt.data {
            let sg = [SgEntry {
                addr: v.addr(),
                len: v.len(),
            }];
            let mut prds = [Prd::default(); 1];
            build_prdt(&sg, self.limits.dma_limit, &mut prds)
                .map_err(|_| QueueRqError::Fatal(BlkError::Misaligned))?;
            write_prdt(&self.mem, table, &prds);
            n = 1;
        }
        let device = if pt.args[3] == 0 {
            crate::cmd::DEVICE_LBA
        } else {
            pt.args[3] as u8
        };
        inner.pt |= 1 << tag;
        let c = &mut inner.cmds[tag];
        c.fis = H2dFis {
            command: pt.opcode as u8,
            features: pt.args[2] as u16,
            lba: pt.args[0] & 0xffff_ffff_ffff,
            device,
            count: pt.args[1] as u16,
        };
        c.dw0 = header_dw0(pt.write, n);
        c.steps[0] = Step::Main;
        c.nsteps = 1;
        Ok((false, 1))
    }
}

impl HwQueue for Ahci {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let tag = rq.tag();
        if tag as usize >= SLOTS {
            return Err(QueueRqError::Fatal(BlkError::Io));
        }
        let mut g = self.inner.lock();
        if g.dead {
            return Err(QueueRqError::Fatal(BlkError::DeviceError(
                device_error::DEAD,
            )));
        }
        if g.tracker.busy() & (1 << tag) != 0 {
            // A block-layer bug: the slot's table belongs to the command in it.
            return Err(QueueRqError::Busy);
        }
        let (ncq, steps) = self.build(&mut g, rq)?;
        let accepted = g.tracker.accept(tag as u8, ncq, steps);
        debug_assert!(accepted);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if last {
            // The last request of a batch goes out now; `commit` then has nothing to do.
            self.issue_ready(&mut g);
        } else {
            self.unissued.store(true, Ordering::Relaxed);
        }
        // An interrupt that came while the lock was held left its reaping here.
        self.unlock_and_deliver(g, DoneList::new());
        Ok(())
    }

    fn commit(&self) {
        if !self.unissued.load(Ordering::Relaxed) {
            return;
        }
        let mut g = self.inner.lock();
        self.issue_ready(&mut g);
        self.unlock_and_deliver(g, DoneList::new());
    }

    fn poll(&self) -> usize {
        if self.mode == Mode::Polling {
            self.poll_once()
        } else {
            0
        }
    }

    fn timeout(&self, rq: &Request) -> TimeoutAction {
        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock();
        let mut done = DoneList::new();
        if g.tracker.busy() & (1 << rq.tag()) != 0 {
            self.recover(&mut g, Some(rq.tag() as u8), &mut done);
        }
        self.unlock_and_deliver(g, done);
        TimeoutAction::Retry
    }
}

impl hal::IrqHandler for Ahci {
    fn handle(&self) {
        self.handle_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_commands_complete_as_their_sact_bits_clear() {
        let mut t = Tracker::new();
        for tag in 0..32 {
            assert!(t.accept(tag, true, 1));
        }
        assert!(!t.accept(3, true, 1), "a busy tag is refused");
        let iss = t.next_issue();
        assert_eq!(iss.ncq, u32::MAX);
        assert_eq!(t.next_issue(), Issue::default());
        // The device finishes tags 0 and 5: their SACT bits clear.
        assert_eq!(t.reap_ncq(!0b10_0001), 0b10_0001);
        assert_eq!(t.reap_ncq(!0b10_0001), 0, "never completed twice");
        assert_eq!(t.reap_ncq(0), !0b10_0001);
        assert_eq!(t.busy(), 0);
    }

    #[test]
    fn exclusive_commands_wait_for_the_queue_to_drain_and_run_their_steps() {
        let mut t = Tracker::new();
        t.accept(1, true, 1);
        assert_eq!(t.next_issue().ncq, 0b10);
        t.accept(2, false, 3); // PREFLUSH + write + FUA flush
        t.accept(4, true, 1);
        assert_eq!(
            t.next_issue(),
            Issue::default(),
            "NCQ in flight: the flush waits"
        );
        assert_eq!(t.reap_ncq(0), 0b10);
        assert_eq!(
            t.next_issue(),
            Issue {
                ncq: 0,
                exclusive: Some(2)
            }
        );
        assert_eq!(
            t.next_issue(),
            Issue::default(),
            "nothing beside an exclusive command"
        );
        assert_eq!(t.reap_exclusive(1 << 2), None, "still in PxCI");
        assert_eq!(t.reap_exclusive(0), Some((2, false)));
        assert_eq!(t.step(2), 1);
        assert_eq!(t.reap_exclusive(0), Some((2, false)));
        assert_eq!(t.reap_exclusive(0), Some((2, true)));
        assert_eq!(t.reap_exclusive(0), None);
        assert_eq!(t.next_issue().ncq, 0b1_0000);
    }

    #[test]
    fn recovery_fails_the_known_culprit_and_replays_the_rest() {
        let mut t = Tracker::new();
        for tag in [0, 1, 2] {
            t.accept(tag, true, 1);
        }
        t.next_issue();
        t.stop();
        assert_eq!(t.next_issue(), Issue::default(), "stopped");
        assert_eq!(t.obvious_culprit(), None);
        let r = t.recover(Some(0b10));
        assert_eq!(
            r,
            Recovery {
                failed: 0b10,
                replayed: 0b101,
                suspects: 0
            }
        );
        assert_eq!(t.next_issue().ncq, 0b101);
        assert_eq!(t.reap_ncq(0), 0b101);
        assert_eq!(t.busy(), 0);
    }

    #[test]
    fn unknown_culprit_replays_suspects_one_at_a_time() {
        let mut t = Tracker::new();
        for tag in [3, 7, 9] {
            t.accept(tag, true, 1);
        }
        t.next_issue();
        t.stop();
        let r = t.recover(None);
        assert_eq!(r.suspects, 1 << 3 | 1 << 7 | 1 << 9);
        t.accept(12, true, 1);
        assert_eq!(t.next_issue().ncq, 1 << 3, "one suspect alone");
        assert_eq!(t.next_issue(), Issue::default());
        assert_eq!(t.reap_ncq(0), 1 << 3);
        assert_eq!(t.next_issue().ncq, 1 << 7);
        // Tag 7 fails again: alone in the port, so it is the culprit.
        t.stop();
        assert_eq!(t.obvious_culprit(), Some(1 << 7));
        let r = t.recover(Some(1 << 7));
        assert_eq!(r.failed, 1 << 7);
        assert_eq!(t.next_issue().ncq, 1 << 9);
        assert_eq!(t.reap_ncq(0), 1 << 9);
        assert_eq!(t.next_issue().ncq, 1 << 12, "new work after the suspects");
    }

    #[test]
    fn replays_are_bounded_and_timeouts_forget() {
        let mut t = Tracker::new();
        t.accept(0, true, 1);
        t.accept(1, true, 1);
        for _ in 0..MAX_REPLAYS {
            t.next_issue();
            t.stop();
            let r = t.recover(Some(0));
            assert_eq!(r.failed, 0);
        }
        t.next_issue();
        t.stop();
        let r = t.recover(Some(0));
        assert_eq!(r.failed, 0b11, "past the replay bound both fail");
        assert_eq!(t.busy(), 0);
        t.accept(5, false, 1);
        assert_eq!(t.next_issue().exclusive, Some(5));
        assert!(t.forget(5));
        assert!(!t.forget(5));
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn limits_follow_the_controller_and_the_disk() {
        let id = IdentifyInfo::parse(&crate::spec::tests_support::qemu_words()).unwrap();
        let mut info = DeviceInfo {
            port: 0,
            identify: id,
            cap: 0,
            version: 0,
            ports_implemented: 1,
            addr64: true,
            ncq: true,
            ncq_depth: 32,
            bios_handoff: false,
        };
        let l = info.queue_limits();
        l.validate().unwrap();
        assert_eq!(l.dma_limit, u64::MAX);
        assert_eq!(l.max_segments, 128);
        assert!(l.max_discard_sectors > 0);
        info.addr64 = false;
        assert_eq!(info.queue_limits().dma_limit, 0xffff_ffff);
    }
}
