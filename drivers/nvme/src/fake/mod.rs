//! A device model of an NVMe controller for host tests and host programs (feature `fake`,
//! which needs `std` and `hal`'s host DMA region; the kernel never enables it).
//!
//! BAR0 is host memory (two pages from the DMA region) that the driver gets as its `Mmio`; the
//! model reads the registers and doorbells the driver wrote when it runs: when the test calls
//! [`FakeCtrl::step`], or on every call of the test [`clock`] (which the driver calls while it
//! waits). It follows `CC.EN` with `CSTS.RDY`, fetches commands from the submission queues in
//! DMA memory up to their tail doorbells, runs them (Identify, queue creation and deletion,
//! Set Features, Abort; Read, Write, Flush, Write Zeroes and Deallocate against a disk in a
//! `Vec`, or one per namespace in `Model::ns_disks`; data moved by walking PRPs or SGLs) and posts completions with the right phase.
//!
//! Injection: an error status for the next commands of an opcode, commands that are fetched
//! and never completed (until an Abort that takes, a Delete SQ or a disable), an Abort that
//! does not take, `CSTS.CFS`. Everything the driver does wrong (a bad PRP, a completion queue
//! overflow, an access outside DMA memory) is a status or a panic, so a test fails.

mod hostile;

pub use hostile::{Entry, Hostile, KINDS, Kind, Rng};

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hal::{DmaBuf, Mmio};

use crate::cmd::Command;
use crate::prp::PAGE;
use crate::regs::{self, Cap, Cc, Csts, cq_head_doorbell, sq_tail_doorbell};
use crate::spec::{Status, admin, cns, feature, nvm, sc, sct};
use crate::test_support::dma_init;

/// Bytes of the fake BAR0: registers and the doorbells of queues 0 and 1 (and more).
const BAR_BYTES: usize = 2 * 4096;

/// Command specific status codes (type 1) the model returns.
mod csc {
    pub const COMPLETION_QUEUE_INVALID: u8 = 0x00;
    pub const INVALID_QUEUE_ID: u8 = 0x01;
    pub const INVALID_QUEUE_SIZE: u8 = 0x02;
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
}

/// Generic status codes the driver does not name.
mod gsc {
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    pub const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
    pub const DATA_SGL_LENGTH_INVALID: u8 = 0x0f;
    pub const SGL_DESCRIPTOR_TYPE_INVALID: u8 = 0x11;
    pub const PRP_OFFSET_INVALID: u8 = 0x13;
}

fn generic(code: u8) -> Status {
    Status::new(sct::GENERIC, code)
}

struct Sq {
    base: u64,
    entries: u16,
    head: u16,
    cqid: u16,
}

struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    phase: bool,
    ien: bool,
    vector: u16,
}

/// A command fetched and held back (never completed unless aborted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// Submission queue it came from.
    pub sqid: u16,
    /// Its command id.
    pub cid: u16,
    /// Its opcode.
    pub opcode: u8,
}

/// What the model is and what it saw. Tests set the identity and the injections before the
/// driver comes up (through [`FakeCtrl::with`]) and read the counters afterwards.
pub struct Model {
    /// The namespaces' contents (every active namespace not in `ns_disks` reads and writes
    /// this disk).
    pub disk: Vec<u8>,
    /// Namespaces with contents of their own (same block size; the size is the length).
    pub ns_disks: BTreeMap<u32, Vec<u8>>,
    /// Logical block size of the namespaces.
    pub block_size: u32,
    /// Active namespace ids, increasing (`[1]` unless a test says otherwise); NN is the last.
    pub nsids: Vec<u32>,
    /// Namespaces whose format has 8 bytes of metadata per block (unusable for the driver).
    pub metadata_ns: Vec<u32>,
    /// Identify CNS 02h (active namespace list) is supported.
    pub active_list: bool,
    /// Identify Namespace `NSATTR` bit 0: write protected.
    pub nsattr_wp: bool,
    /// Identify Controller `NWPC` bit 0: the write protection config feature exists.
    pub nwpc: bool,
    /// The write protection config feature's state (0: none; 1, 2, 3: write protected).
    pub wp_state: u32,
    /// Identify Controller: MDTS (power of two of 4 KiB pages; 0 = no limit).
    pub mdts: u8,
    /// Identify Controller: volatile write cache present.
    pub vwc: bool,
    /// Identify Controller: ONCS.
    pub oncs: u16,
    /// Identify Controller: SGLS.
    pub sgls: u32,
    /// `CAP.MQES + 1`.
    pub max_queue_entries: u32,
    /// Volatile write cache enabled by Set Features.
    pub vwc_enabled: bool,
    /// Abort takes a held-back command (completes it with "abort requested").
    pub abort_takes: bool,
    /// The next commands of an opcode on an I/O queue complete with a status: `(opcode,
    /// status)`, first match first.
    pub fail: Vec<(u8, Status)>,
    /// The next commands of an opcode on an I/O queue are held back: `(opcode, count)`.
    pub stall: Vec<(u8, u32)>,
    /// Commands held back now.
    pub stalled: Vec<Stalled>,
    /// Every command fetched: `(queue id, command)`.
    pub log: Vec<(u16, Command)>,
    /// Completions posted to a queue with interrupts enabled.
    pub irqs: u64,
    /// The same, by interrupt vector (the completion queue's `IV`).
    pub irqs_by_vector: BTreeMap<u16, u64>,
    /// I/O submission and completion queues the controller grants at most (Set Features /
    /// Number of Queues answers the smaller of this and what was asked; queue ids above
    /// the grant are refused).
    pub max_io_queues: u16,
    /// I/O queues granted since the last enable (0: Number of Queues not set yet: one).
    pub granted: u16,
    /// `INTMS`/`INTMC` state (vector 0).
    pub masked: bool,
    /// Times `CC.EN` went 0 -> 1.
    pub enables: u32,
    /// PRP list pages walked (chain pointers followed count as pages).
    pub prp_list_pages: u32,
    /// SGL segments (lists) walked.
    pub sgl_segments: u32,
    /// Flushes run.
    pub flushes: u32,
    /// Aborts received.
    pub aborts: u32,
    /// Queues deleted (SQ and CQ).
    pub deletions: u32,
    /// Completions go through a hostile controller (and a full completion queue drops them
    /// instead of failing the test).
    pub hostile: Option<Hostile>,
    /// Identify data gets this many random bytes (half of them on the fields the driver
    /// reads), from this generator.
    pub identify_noise: Option<(Rng, u32)>,
    enabled: bool,
    fatal: bool,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
}

impl Model {
    fn blocks(&self) -> u64 {
        (self.disk.len() / self.block_size as usize) as u64
    }
    /// Blocks of namespace `nsid`.
    fn ns_blocks(&self, nsid: u32) -> u64 {
        match self.ns_disks.get(&nsid) {
            Some(d) => (d.len() / self.block_size as usize) as u64,
            None => self.blocks(),
        }
    }
    /// Commands of `opcode` fetched from the I/O queues (`io`) or the admin queue.
    pub fn fetched(&self, opcode: u8, io: bool) -> usize {
        self.log
            .iter()
            .filter(|(q, c)| (*q != 0) == io && c.opcode() == opcode)
            .count()
    }
}

/// The controller model.
pub struct FakeCtrl {
    bar: Mmio,
    mem: &'static Mmio,
    _bar_pages: DmaBuf,
    model: Mutex<Model>,
}

/// What running one command gives.
enum Outcome {
    Complete(Status, u32),
    Stall,
}

impl FakeCtrl {
    /// A controller with a namespace of `blocks` blocks of `block_size` bytes (filled with a
    /// pattern), 2048-entry queues, MDTS 10 (4 MiB), a volatile write cache, write zeroes and
    /// deallocate, no SGLs.
    ///
    /// The first model of a process sets up the host DMA region
    /// (`hal::dma::host::init_test_region`) and finds it by allocating all of it, so it must be
    /// made before anything else allocates DMA memory.
    pub fn new(blocks: u64, block_size: u32) -> Arc<FakeCtrl> {
        let mem = dma_init();
        let pages = DmaBuf::alloc(BAR_BYTES, 4096).expect("BAR pages");
        let off = (pages.phys().0 - mem.phys().0) as usize;
        let bar = mem
            .subregion(off, BAR_BYTES)
            .expect("BAR inside the region");
        let disk = (0..blocks as usize * block_size as usize)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let f = FakeCtrl {
            bar,
            mem,
            _bar_pages: pages,
            model: Mutex::new(Model {
                disk,
                ns_disks: BTreeMap::new(),
                block_size,
                nsids: vec![1],
                metadata_ns: Vec::new(),
                active_list: true,
                nsattr_wp: false,
                nwpc: false,
                wp_state: 0,
                mdts: 10,
                vwc: true,
                oncs: 1 << 2 | 1 << 3,
                sgls: 0,
                max_queue_entries: 2048,
                vwc_enabled: false,
                abort_takes: true,
                fail: Vec::new(),
                stall: Vec::new(),
                stalled: Vec::new(),
                log: Vec::new(),
                irqs: 0,
                irqs_by_vector: BTreeMap::new(),
                max_io_queues: 64,
                granted: 0,
                masked: false,
                enables: 0,
                prp_list_pages: 0,
                sgl_segments: 0,
                flushes: 0,
                aborts: 0,
                deletions: 0,
                hostile: None,
                identify_noise: None,
                enabled: false,
                fatal: false,
                sqs: BTreeMap::new(),
                cqs: BTreeMap::new(),
            }),
        };
        f.write_cap();
        f.bar.write32(regs::VS, 0x0001_0400);
        Arc::new(f)
    }

    fn write_cap(&self) {
        let mqes = self.with(|m| m.max_queue_entries) as u64 - 1;
        // MQES, CQR, TO = 1 (500 ms), DSTRD 0, the NVM command set, MPSMIN 0, MPSMAX 4.
        let cap = Cap::from_bits_retain(mqes | 1 << 24 | 4 << 52) | Cap::CQR | Cap::CSS_NVM;
        self.bar.write64(regs::CAP, cap.bits());
    }

    /// Another handle on BAR0, for the driver.
    pub fn bar(&self) -> Mmio {
        self.bar.subregion(0, BAR_BYTES).expect("BAR")
    }

    /// Runs `f` on the model (settings before bring-up, counters after).
    pub fn with<R>(&self, f: impl FnOnce(&mut Model) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the version register (`VS`, e.g. `0x0001_0000` for NVMe 1.0).
    pub fn set_version(&self, vs: u32) {
        self.bar.write32(regs::VS, vs);
    }

    /// Sets `CAP` again after the test changed `max_queue_entries`.
    pub fn refresh_cap(&self) {
        self.write_cap();
    }

    /// Raises `CSTS.CFS`: the controller stops answering until it is disabled.
    pub fn set_fatal(&self) {
        self.lock().fatal = true;
        let csts = Csts::from_bits_retain(self.bar.read32(regs::CSTS)) | Csts::CFS;
        self.bar.write32(regs::CSTS, csts.bits());
    }

    /// Bytes `off..off + len` of the disk.
    pub fn disk(&self, off: usize, len: usize) -> Vec<u8> {
        self.lock().disk[off..off + len].to_vec()
    }

    /// Bytes `off..off + len` of namespace `nsid`'s contents (its own, or the shared disk).
    pub fn ns_disk(&self, nsid: u32, off: usize, len: usize) -> Vec<u8> {
        let m = self.lock();
        m.ns_disks.get(&nsid).unwrap_or(&m.disk)[off..off + len].to_vec()
    }

    /// Makes this model the one [`clock`] runs on this thread.
    pub fn install(self: &Arc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
    }

    /// Lets the controller react to what the driver wrote: `CC`, the interrupt mask, and the
    /// submission queue doorbells (every command up to each tail runs). Returns the commands
    /// fetched.
    pub fn step(&self) -> usize {
        let mut m = self.lock();
        let ms = self.bar.read32(regs::INTMS);
        if ms != 0 {
            m.masked = true;
            self.bar.write32(regs::INTMS, 0);
        }
        let mc = self.bar.read32(regs::INTMC);
        if mc != 0 {
            m.masked = false;
            self.bar.write32(regs::INTMC, 0);
        }
        let cc = Cc::from_bits_retain(self.bar.read32(regs::CC));
        if cc.contains(Cc::EN) && !m.enabled {
            self.enable(&mut m, cc);
        } else if !cc.contains(Cc::EN) && m.enabled {
            self.disable(&mut m);
        }
        if !m.enabled || m.fatal {
            return 0;
        }
        let mut n = 0;
        let ids: Vec<u16> = m.sqs.keys().copied().collect();
        for qid in ids {
            while let Some(sq) = m.sqs.get(&qid) {
                let tail = self.bar.read32(sq_tail_doorbell(qid, 0));
                assert!(
                    tail < sq.entries as u32,
                    "fake nvme: SQ {qid} tail {tail} out of range"
                );
                if sq.head as u32 == tail {
                    break;
                }
                let addr = sq.base + sq.head as u64 * 64;
                let mut cmd = Command { dw: [0; 16] };
                for (i, d) in cmd.dw.iter_mut().enumerate() {
                    *d = self.read32(addr + 4 * i as u64);
                }
                let head = (sq.head + 1) % sq.entries;
                let cqid = sq.cqid;
                if let Some(sq) = m.sqs.get_mut(&qid) {
                    sq.head = head;
                }
                m.log.push((qid, cmd));
                n += 1;
                let out = if qid == 0 {
                    self.admin(&mut m, &cmd)
                } else {
                    self.io(&mut m, qid, &cmd)
                };
                if let Outcome::Complete(st, result) = out {
                    self.post(&mut m, cqid, qid, head, cmd.cid(), st, result);
                }
                if m.fatal {
                    return n;
                }
            }
        }
        n
    }

    fn enable(&self, m: &mut Model, cc: Cc) {
        m.enables += 1;
        if cc.io_sq_entry_shift() != 6 || cc.io_cq_entry_shift() != 4 || m.fatal {
            self.set_csts(Csts::CFS);
            m.fatal = true;
            m.enabled = true;
            return;
        }
        let aqa = self.bar.read32(regs::AQA);
        let asq = self.read_reg64(regs::ASQ);
        let acq = self.read_reg64(regs::ACQ);
        let (sqe, cqe) = ((aqa & 0xfff) as u16 + 1, ((aqa >> 16) & 0xfff) as u16 + 1);
        assert!(
            asq.is_multiple_of(PAGE) && acq.is_multiple_of(PAGE),
            "fake nvme: admin queues unaligned"
        );
        m.sqs.insert(
            0,
            Sq {
                base: asq,
                entries: sqe,
                head: 0,
                cqid: 0,
            },
        );
        m.cqs.insert(
            0,
            Cq {
                base: acq,
                entries: cqe,
                tail: 0,
                phase: true,
                ien: true,
                vector: 0,
            },
        );
        m.granted = 0;
        m.enabled = true;
        self.set_csts(Csts::RDY);
    }

    /// `CC.EN` cleared: a controller reset. Queues, held-back commands, the interrupt mask
    /// and `CFS` are gone; the doorbells read 0 again.
    fn disable(&self, m: &mut Model) {
        m.enabled = false;
        m.fatal = false;
        m.masked = false;
        m.sqs.clear();
        m.cqs.clear();
        m.stalled.clear();
        for off in (regs::DOORBELLS..BAR_BYTES).step_by(4) {
            self.bar.write32(off, 0);
        }
        self.set_csts(Csts::empty());
    }

    fn set_csts(&self, v: Csts) {
        self.bar.write32(regs::CSTS, v.bits());
    }

    fn read_reg64(&self, off: usize) -> u64 {
        self.bar.read32(off) as u64 | (self.bar.read32(off + 4) as u64) << 32
    }

    #[allow(clippy::too_many_arguments)]
    fn post(
        &self,
        m: &mut Model,
        cqid: u16,
        sqid: u16,
        sq_head: u16,
        cid: u16,
        st: Status,
        r: u32,
    ) {
        let e = Entry {
            result: r,
            sq_head,
            sq_id: sqid,
            cid,
            status: st.bits(),
            flip_phase: false,
        };
        let sq_entries = m.sqs.get(&sqid).map_or(2, |q| q.entries);
        let (entries, fatal) = match m.hostile.as_mut() {
            Some(h) if cqid != 0 || h.admin => h.tamper(e, sq_entries),
            _ => ([Some(e), None], false),
        };
        for e in entries.into_iter().flatten() {
            self.write_entry(m, cqid, e);
        }
        if fatal {
            m.fatal = true;
            let csts = Csts::from_bits_retain(self.bar.read32(regs::CSTS)) | Csts::CFS;
            self.bar.write32(regs::CSTS, csts.bits());
        }
    }

    /// Writes `e` at the tail of completion queue `cqid`. A full queue is a driver bug
    /// (panic), except on a hostile controller, where entries the driver could not see (a
    /// wrong phase) fill it: the entry is dropped then, as a controller waiting for room
    /// would never post it before a reset.
    fn write_entry(&self, m: &mut Model, cqid: u16, e: Entry) {
        let hostile = m.hostile.is_some();
        let head = self.bar.read32(cq_head_doorbell(cqid, 0));
        let Some(cq) = m.cqs.get_mut(&cqid) else {
            panic!("fake nvme: completion for missing CQ {cqid}");
        };
        assert!(
            head < cq.entries as u32,
            "fake nvme: CQ {cqid} head {head} out of range"
        );
        if (cq.tail + 1) % cq.entries == head as u16 {
            assert!(hostile, "fake nvme: CQ {cqid} overflow");
            return;
        }
        let addr = cq.base + cq.tail as u64 * 16;
        let (phase, ien, vector) = (cq.phase ^ e.flip_phase, cq.ien, cq.vector);
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        self.write32(addr, e.result);
        self.write32(addr + 4, 0);
        self.write32(addr + 8, (e.sq_id as u32) << 16 | e.sq_head as u32);
        // The dword with the phase bit last.
        self.write32(
            addr + 12,
            ((e.status & 0x7fff) as u32) << 17 | (phase as u32) << 16 | e.cid as u32,
        );
        if ien {
            m.irqs += 1;
            *m.irqs_by_vector.entry(vector).or_default() += 1;
        }
    }

    fn admin(&self, m: &mut Model, c: &Command) -> Outcome {
        let ok = Outcome::Complete(Status::empty(), 0);
        let qid = (c.dw[10] & 0xffff) as u16;
        let entries = (c.dw[10] >> 16) + 1;
        let prp1 = c.dw[6] as u64 | (c.dw[7] as u64) << 32;
        let specific = |code| Outcome::Complete(Status::new(sct::COMMAND_SPECIFIC, code), 0);
        match c.opcode() {
            admin::IDENTIFY => {
                let mut page = vec![0u8; 4096];
                match c.dw[10] & 0xff {
                    cns::CONTROLLER => {
                        page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        page[4..24].copy_from_slice(b"FAKE-0001           ");
                        page[77] = m.mdts;
                        let nn = m.nsids.last().copied().unwrap_or(0);
                        page[516..520].copy_from_slice(&nn.to_le_bytes());
                        page[520..522].copy_from_slice(&m.oncs.to_le_bytes());
                        page[525] = m.vwc as u8;
                        page[531] = m.nwpc as u8;
                        page[536..540].copy_from_slice(&m.sgls.to_le_bytes());
                    }
                    cns::ACTIVE_NAMESPACES if m.active_list => {
                        let above = m.nsids.iter().filter(|&&n| n > c.dw[1]);
                        for (k, n) in above.take(1024).enumerate() {
                            page[4 * k..4 * k + 4].copy_from_slice(&n.to_le_bytes());
                        }
                    }
                    cns::NAMESPACE if m.nsids.contains(&c.dw[1]) => {
                        let blocks = m.ns_blocks(c.dw[1]);
                        page[0..8].copy_from_slice(&blocks.to_le_bytes());
                        page[8..16].copy_from_slice(&blocks.to_le_bytes());
                        // Two formats: 512-byte blocks and the namespace's, the second in use.
                        page[25] = 1;
                        page[26] = 1;
                        page[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
                        let lbads = m.block_size.trailing_zeros();
                        let ms = if m.metadata_ns.contains(&c.dw[1]) {
                            8
                        } else {
                            0
                        };
                        page[132..136].copy_from_slice(&(lbads << 16 | ms).to_le_bytes());
                        page[99] = m.nsattr_wp as u8;
                    }
                    // An inactive id below NN: a zeroed structure (the page as it is).
                    cns::NAMESPACE if c.dw[1] != 0 && c.dw[1] <= *m.nsids.last().unwrap_or(&0) => {}
                    cns::NAMESPACE => {
                        return Outcome::Complete(generic(gsc::INVALID_NAMESPACE), 0);
                    }
                    _ => return Outcome::Complete(generic(sc::INVALID_FIELD), 0),
                }
                if let Some((rng, n)) = m.identify_noise.as_mut() {
                    hostile::garble_identify(rng, *n, &mut page);
                }
                match self.segments(m, c, 4096) {
                    Ok(segs) => self.scatter(&segs, &page),
                    Err(st) => return Outcome::Complete(st, 0),
                }
                ok
            }
            admin::SET_FEATURES => match c.dw[10] & 0xff {
                feature::NUMBER_OF_QUEUES => {
                    // Zero-based counts, asked and granted; not after queues exist.
                    if m.sqs.len() > 1 || !m.cqs.keys().all(|&q| q == 0) {
                        return Outcome::Complete(generic(gsc::COMMAND_SEQUENCE_ERROR), 0);
                    }
                    let ask = (c.dw[11] & 0xffff).max(c.dw[11] >> 16) as u16;
                    let g = ask.saturating_add(1).min(m.max_io_queues).max(1);
                    m.granted = g;
                    Outcome::Complete(Status::empty(), (g as u32 - 1) << 16 | (g as u32 - 1))
                }
                feature::VOLATILE_WRITE_CACHE if m.vwc => {
                    m.vwc_enabled = c.dw[11] & 1 != 0;
                    ok
                }
                _ => Outcome::Complete(generic(sc::INVALID_FIELD), 0),
            },
            admin::GET_FEATURES => match c.dw[10] & 0xff {
                feature::NAMESPACE_WRITE_PROTECT if m.nwpc && m.nsids.contains(&c.dw[1]) => {
                    Outcome::Complete(Status::empty(), m.wp_state)
                }
                _ => Outcome::Complete(generic(sc::INVALID_FIELD), 0),
            },
            admin::CREATE_CQ => {
                if qid == 0 || m.cqs.contains_key(&qid) || qid > m.granted.max(1) {
                    return specific(csc::INVALID_QUEUE_ID);
                }
                if entries < 2 || entries > m.max_queue_entries || !prp1.is_multiple_of(PAGE) {
                    return specific(csc::INVALID_QUEUE_SIZE);
                }
                assert!(c.dw[11] & 1 != 0, "fake nvme: only contiguous queues");
                m.cqs.insert(
                    qid,
                    Cq {
                        base: prp1,
                        entries: entries as u16,
                        tail: 0,
                        phase: true,
                        ien: c.dw[11] & 2 != 0,
                        vector: (c.dw[11] >> 16) as u16,
                    },
                );
                ok
            }
            admin::CREATE_SQ => {
                let cqid = (c.dw[11] >> 16) as u16;
                if qid == 0 || m.sqs.contains_key(&qid) || qid > m.granted.max(1) {
                    return specific(csc::INVALID_QUEUE_ID);
                }
                if !m.cqs.contains_key(&cqid) {
                    return specific(csc::COMPLETION_QUEUE_INVALID);
                }
                if entries < 2 || entries > m.max_queue_entries || !prp1.is_multiple_of(PAGE) {
                    return specific(csc::INVALID_QUEUE_SIZE);
                }
                m.sqs.insert(
                    qid,
                    Sq {
                        base: prp1,
                        entries: entries as u16,
                        head: 0,
                        cqid,
                    },
                );
                ok
            }
            admin::DELETE_SQ => {
                if qid == 0 || m.sqs.remove(&qid).is_none() {
                    return specific(csc::INVALID_QUEUE_ID);
                }
                // Held-back commands of the queue are cancelled without a completion.
                m.stalled.retain(|s| s.sqid != qid);
                m.deletions += 1;
                ok
            }
            admin::DELETE_CQ => {
                if qid == 0 || !m.cqs.contains_key(&qid) {
                    return specific(csc::INVALID_QUEUE_ID);
                }
                if m.sqs.values().any(|s| s.cqid == qid) {
                    return specific(csc::INVALID_QUEUE_DELETION);
                }
                m.cqs.remove(&qid);
                m.deletions += 1;
                ok
            }
            admin::ABORT => {
                m.aborts += 1;
                let (sqid, cid) = ((c.dw[10] & 0xffff) as u16, (c.dw[10] >> 16) as u16);
                let held = m
                    .stalled
                    .iter()
                    .position(|s| s.sqid == sqid && s.cid == cid);
                match held {
                    Some(i) if m.abort_takes => {
                        let s = m.stalled.remove(i);
                        let (cqid, head) = m.sqs.get(&s.sqid).map_or((0, 0), |q| (q.cqid, q.head));
                        self.post(
                            m,
                            cqid,
                            s.sqid,
                            head,
                            s.cid,
                            generic(sc::ABORT_REQUESTED),
                            0,
                        );
                        ok
                    }
                    // Not aborted.
                    _ => Outcome::Complete(Status::empty(), 1),
                }
            }
            _ => Outcome::Complete(generic(sc::INVALID_OPCODE), 0),
        }
    }

    /// Runs an I/O command on its namespace's contents.
    fn io(&self, m: &mut Model, sqid: u16, c: &Command) -> Outcome {
        let nsid = c.dw[1];
        let Some(own) = m.ns_disks.remove(&nsid) else {
            return self.io_on_disk(m, sqid, c);
        };
        let shared = std::mem::replace(&mut m.disk, own);
        let o = self.io_on_disk(m, sqid, c);
        let own = std::mem::replace(&mut m.disk, shared);
        m.ns_disks.insert(nsid, own);
        o
    }

    /// Runs an I/O command on `m.disk`.
    fn io_on_disk(&self, m: &mut Model, sqid: u16, c: &Command) -> Outcome {
        let op = c.opcode();
        if let Some(i) = m.fail.iter().position(|(o, _)| *o == op) {
            let (_, st) = m.fail.remove(i);
            return Outcome::Complete(st, 0);
        }
        if let Some(s) = m.stall.iter_mut().find(|(o, n)| *o == op && *n > 0) {
            s.1 -= 1;
            m.stalled.push(Stalled {
                sqid,
                cid: c.cid(),
                opcode: op,
            });
            return Outcome::Stall;
        }
        if !m.nsids.contains(&c.dw[1]) {
            return Outcome::Complete(generic(gsc::INVALID_NAMESPACE), 0);
        }
        let protected = m.nsattr_wp || m.wp_state != 0;
        if protected && matches!(op, nvm::WRITE | nvm::WRITE_ZEROES | nvm::DSM) {
            return Outcome::Complete(generic(sc::NS_WRITE_PROTECTED), 0);
        }
        let slba = c.dw[10] as u64 | (c.dw[11] as u64) << 32;
        let nlb = (c.dw[12] & 0xffff) as u64 + 1;
        let bs = m.block_size as usize;
        let in_range = slba.checked_add(nlb).is_some_and(|end| end <= m.blocks());
        let range = slba as usize * bs..(slba + nlb) as usize * bs;
        let st = match op {
            nvm::READ | nvm::WRITE => {
                if !in_range {
                    return Outcome::Complete(generic(sc::LBA_OUT_OF_RANGE), 0);
                }
                let len = range.len();
                if m.mdts != 0 && len > (PAGE as usize) << m.mdts {
                    return Outcome::Complete(generic(sc::INVALID_FIELD), 0);
                }
                let segs = match self.segments(m, c, len) {
                    Ok(s) => s,
                    Err(st) => return Outcome::Complete(st, 0),
                };
                if op == nvm::READ {
                    let data = m.disk[range].to_vec();
                    self.scatter(&segs, &data);
                } else {
                    let data = self.gather(&segs);
                    m.disk[range].copy_from_slice(&data);
                }
                Status::empty()
            }
            nvm::FLUSH => {
                m.flushes += 1;
                Status::empty()
            }
            nvm::WRITE_ZEROES if in_range => {
                m.disk[range].fill(0);
                Status::empty()
            }
            nvm::WRITE_ZEROES => generic(sc::LBA_OUT_OF_RANGE),
            nvm::DSM => {
                let n = (c.dw[10] & 0xff) as usize + 1;
                let segs = match self.segments(m, c, n * 16) {
                    Ok(s) => s,
                    Err(st) => return Outcome::Complete(st, 0),
                };
                let ranges = self.gather(&segs);
                for r in ranges.chunks_exact(16) {
                    let len = u32::from_le_bytes(r[4..8].try_into().unwrap_or_default()) as u64;
                    let start = u64::from_le_bytes(r[8..16].try_into().unwrap_or_default());
                    if start + len > m.blocks() {
                        return Outcome::Complete(generic(sc::LBA_OUT_OF_RANGE), 0);
                    }
                    m.disk[start as usize * bs..(start + len) as usize * bs].fill(0);
                }
                Status::empty()
            }
            _ => generic(sc::INVALID_OPCODE),
        };
        Outcome::Complete(st, 0)
    }

    /// The memory segments of a command's data (`len` bytes), from its PRPs or SGL.
    fn segments(
        &self,
        m: &mut Model,
        c: &Command,
        len: usize,
    ) -> Result<Vec<(u64, usize)>, Status> {
        let a = c.dw[6] as u64 | (c.dw[7] as u64) << 32;
        match (c.dw[0] >> 14) & 3 {
            0 => self.prp_segments(m, a, c.dw[8] as u64 | (c.dw[9] as u64) << 32, len),
            1 => self.sgl_segments(m, (a, c.dw[8], (c.dw[9] >> 24) as u8), len),
            _ => Err(generic(sc::INVALID_FIELD)),
        }
    }

    fn prp_segments(
        &self,
        m: &mut Model,
        prp1: u64,
        prp2: u64,
        len: usize,
    ) -> Result<Vec<(u64, usize)>, Status> {
        let bad = generic(gsc::PRP_OFFSET_INVALID);
        if !prp1.is_multiple_of(4) {
            return Err(bad);
        }
        let first = len.min((PAGE - prp1 % PAGE) as usize);
        let mut segs = vec![(prp1, first)];
        let mut left = len - first;
        if left == 0 {
            return Ok(segs);
        }
        if left <= PAGE as usize {
            if !prp2.is_multiple_of(PAGE) {
                return Err(bad);
            }
            segs.push((prp2, left));
            return Ok(segs);
        }
        if !prp2.is_multiple_of(8) {
            return Err(bad);
        }
        m.prp_list_pages += 1;
        let mut entry = prp2;
        while left > 0 {
            let last_slot = entry % PAGE == PAGE - 8;
            let e = self.read64(entry);
            if last_slot && left > PAGE as usize {
                // The last entry of a full list page points to the next list page.
                if !e.is_multiple_of(PAGE) {
                    return Err(bad);
                }
                m.prp_list_pages += 1;
                entry = e;
                continue;
            }
            if !e.is_multiple_of(PAGE) {
                return Err(bad);
            }
            let n = left.min(PAGE as usize);
            segs.push((e, n));
            left -= n;
            entry += 8;
        }
        Ok(segs)
    }

    fn sgl_segments(
        &self,
        m: &mut Model,
        first: (u64, u32, u8),
        len: usize,
    ) -> Result<Vec<(u64, usize)>, Status> {
        const DATA_BLOCK: u8 = 0x0;
        const SEGMENT: u8 = 0x2;
        const LAST_SEGMENT: u8 = 0x3;
        let bad_type = generic(gsc::SGL_DESCRIPTOR_TYPE_INVALID);
        let mut segs = Vec::new();
        let (mut addr, mut dlen, mut ty) = first;
        loop {
            match ty >> 4 {
                DATA_BLOCK => {
                    segs.push((addr, dlen as usize));
                    break;
                }
                SEGMENT | LAST_SEGMENT => {
                    m.sgl_segments += 1;
                    let n = dlen as u64 / 16;
                    if dlen % 16 != 0 || n == 0 {
                        return Err(generic(gsc::DATA_SGL_LENGTH_INVALID));
                    }
                    let mut next = None;
                    for i in 0..n {
                        let d = addr + 16 * i;
                        let (a, l, t) = (
                            self.read64(d),
                            self.read32(d + 8),
                            (self.read32(d + 12) >> 24) as u8,
                        );
                        match t >> 4 {
                            DATA_BLOCK => segs.push((a, l as usize)),
                            SEGMENT | LAST_SEGMENT if ty >> 4 == SEGMENT && i + 1 == n => {
                                next = Some((a, l, t));
                            }
                            _ => return Err(bad_type),
                        }
                    }
                    match next {
                        Some(d) => (addr, dlen, ty) = d,
                        None if ty >> 4 == LAST_SEGMENT => break,
                        None => return Err(bad_type),
                    }
                }
                _ => return Err(bad_type),
            }
        }
        if segs.iter().map(|s| s.1).sum::<usize>() != len {
            return Err(generic(gsc::DATA_SGL_LENGTH_INVALID));
        }
        Ok(segs)
    }

    fn off(&self, addr: u64) -> usize {
        addr.checked_sub(self.mem.phys().0)
            .unwrap_or_else(|| panic!("fake nvme: DMA address {addr:#x} below the region"))
            as usize
    }
    fn read32(&self, addr: u64) -> u32 {
        self.mem.read32(self.off(addr))
    }
    fn read64(&self, addr: u64) -> u64 {
        self.mem.read64(self.off(addr))
    }
    fn write32(&self, addr: u64, v: u32) {
        self.mem.write32(self.off(addr), v)
    }

    /// Copies `data` into the segments (a read's data, Identify).
    fn scatter(&self, segs: &[(u64, usize)], data: &[u8]) {
        let mut pos = 0;
        for &(a, n) in segs {
            let off = self.off(a);
            for (i, b) in data[pos..pos + n].iter().enumerate() {
                self.mem.write8(off + i, *b);
            }
            pos += n;
        }
    }

    /// The bytes of the segments (a write's data).
    fn gather(&self, segs: &[(u64, usize)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(a, n) in segs {
            let off = self.off(a);
            v.extend((0..n).map(|i| self.mem.read8(off + i)));
        }
        v
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<FakeCtrl>>> = const { RefCell::new(None) };
    static NOW: Cell<u64> = const { Cell::new(0) };
    static TICK: Cell<u64> = const { Cell::new(TICK_NS) };
}

/// Nanoseconds of test time each [`clock`] call takes (unless [`set_tick_ns`] changed it).
pub const TICK_NS: u64 = 10_000;

/// Makes each [`clock`] call on this thread `ns` later (long waits on a hostile controller
/// take fewer model steps).
pub fn set_tick_ns(ns: u64) {
    TICK.with(|t| t.set(ns));
}

/// The test clock (`Config::clock`): every call is [`TICK_NS`] later and lets the model
/// installed on this thread run, so the driver's bounded waits see the controller work.
pub fn clock() -> u64 {
    let now = NOW.with(|n| {
        n.set(n.get() + TICK.with(Cell::get));
        n.get()
    });
    if let Some(f) = CURRENT.with(|c| c.borrow().clone()) {
        f.step();
    }
    now
}
