//! Host tests of the whole driver against the device model in `fake`: bring-up, the request
//! path, completion by interrupt, PRP lists and SGLs, flushes, error statuses, abort and
//! controller reset.

mod hostile;
mod pairs;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use blk::{
    Bio, BioFlags, BioList, BioSet, BioSlab, BioVec, BlkError, BlkStatus, CpuCtx, HwQueue, Op,
    PtCmd, Queue, QueueConfig, Request, TagComplete, TimeoutAction, Wait, submit_bio,
};
use hal::DmaBuf;

use crate::fake::{self, FakeCtrl};
use crate::spec::{Status, admin, nvm, sc, sct};
use crate::{Config, InitError, MAX_NS_QUEUES, Mode, Namespace, NsState, Nvme, QUEUE_DEPTH, pt};

/// One completion the driver handed to the block layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Completion {
    tag: u16,
    status: BlkStatus,
    /// The result word of a passthrough completion.
    pt: Option<u64>,
}

/// A `TagComplete` that records every completion (and hands it on to a queue, if one is
/// connected).
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Completion>>,
    next: spin::Once<&'static dyn TagComplete>,
}

impl Recorder {
    fn take(&self) -> Vec<Completion> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl TagComplete for Recorder {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        self.log.lock().unwrap().push(Completion {
            tag,
            status,
            pt: None,
        });
        if let Some(q) = self.next.get() {
            q.complete(tag, status, done_bytes);
        }
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        self.log.lock().unwrap().push(Completion {
            tag,
            status,
            pt: Some(result),
        });
        if let Some(q) = self.next.get() {
            q.complete_pt(tag, status, result);
        }
    }
    fn kick(&self) {
        if let Some(q) = self.next.get() {
            q.kick();
        }
    }
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// Per-bio completion counters (the front pad of the tests' bios).
#[derive(Clone, Copy)]
struct Counts {
    done: &'static AtomicU32,
    errors: &'static AtomicU32,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            done: leak(AtomicU32::new(0)),
            errors: leak(AtomicU32::new(0)),
        }
    }
    fn get(&self) -> (u32, u32) {
        (
            self.done.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
        )
    }
}

fn end_io(bio: Bio) {
    if let Some(c) = bio.front::<Counts>() {
        if bio.status().is_err() {
            c.errors.fetch_add(1, Ordering::SeqCst);
        }
        c.done.fetch_add(1, Ordering::SeqCst);
    }
}

fn bio_set() -> &'static BioSet<Counts> {
    let slab: &'static BioSlab<Counts, 64> = leak(BioSlab::new());
    leak(BioSet::new(slab, 4, None))
}

/// A bio of `op` at `sector` over `segs`, counting into `counts`.
fn bio(set: &'static BioSet<Counts>, op: Op, sector: u64, segs: &[BioVec], counts: Counts) -> Bio {
    let mut b = set.alloc(counts, op, segs.len(), Wait::Never).unwrap();
    for s in segs {
        b.add_vec(*s).unwrap();
    }
    b.set_sector(sector);
    b.set_end_io(end_io);
    b
}

/// `len` bytes at byte `off` of `buf`. The tests keep every buffer alive and untouched until
/// the bios over it have ended (they drive the fake until the completions are recorded).
fn seg(buf: &DmaBuf, off: usize, len: usize) -> BioVec {
    assert!(off + len <= buf.len(), "segment outside its buffer");
    // SAFETY: inside `buf` (checked above), DMA memory of the host test region reachable at its
    // physical address through hal's identity translation; the tests hold `buf` until the bio
    // ends and do not touch it meanwhile (see above).
    #[allow(unsafe_code)]
    unsafe {
        BioVec::new(buf.phys().add(off as u64), len as u32)
    }
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn config(mode: Mode, prefer_sgl: bool) -> Config {
    Config {
        mode,
        intx: false,
        prefer_sgl,
        clock: fake::clock,
        queues: 1,
    }
}

/// A model of `blocks` x `bs` bytes, `setup` applied, and the driver brought up on it.
fn bring_up(
    blocks: u64,
    bs: u32,
    setup: impl FnOnce(&mut fake::Model),
    cfg: Config,
) -> (Arc<FakeCtrl>, Result<Nvme, InitError>) {
    let f = FakeCtrl::new(blocks, bs);
    f.with(setup);
    f.refresh_cap();
    f.install();
    let n = Nvme::new(f.bar(), cfg);
    (f, n)
}

/// The driver on a 4 MiB namespace of 512-byte blocks, completions recorded.
struct Env {
    fake: Arc<FakeCtrl>,
    nvme: Nvme,
    rec: &'static Recorder,
    set: &'static BioSet<Counts>,
}

fn env_with(setup: impl FnOnce(&mut fake::Model), prefer_sgl: bool) -> Env {
    let (fake, nvme) = bring_up(8192, 512, setup, config(Mode::Interrupt, prefer_sgl));
    let nvme = nvme.expect("bring-up");
    let rec: &'static Recorder = leak(Recorder::default());
    nvme.attach(rec);
    Env {
        fake,
        nvme,
        rec,
        set: bio_set(),
    }
}

fn env() -> Env {
    env_with(|_| {}, false)
}

impl Env {
    /// A request of one bio (tag 0).
    fn request(&self, op: Op, flags: BioFlags, sector: u64, segs: &[BioVec]) -> Request {
        let mut b = bio(self.set, op, sector, segs, Counts::new());
        b.set_flags(flags);
        let mut l = BioList::new();
        l.push_back(b);
        Request::standalone(l)
    }

    /// Queues `rq`, lets the controller run, and takes the interrupt; returns what was
    /// completed.
    fn run(&self, rq: &Request) -> Vec<Completion> {
        self.nvme.queue_rq(rq, true).expect("queue_rq");
        self.nvme.commit();
        self.interrupt()
    }

    fn interrupt(&self) -> Vec<Completion> {
        self.fake.step();
        self.nvme.handle_irq();
        self.rec.take()
    }
}

fn ok(tag: u16) -> Completion {
    Completion {
        tag,
        status: Ok(()),
        pt: None,
    }
}

#[test]
fn bring_up_parses_identify_and_creates_the_queues() {
    let e = env();
    let i = *e.nvme.info();
    assert_eq!(i.vendor, 0x1b36);
    assert_eq!(&i.serial, b"FAKE-0001           ");
    assert_eq!(i.mdts_bytes, 4096 << 10);
    assert!(i.vwc && i.dsm && i.write_zeroes);
    assert!(!i.sgl_supported && !i.sgl);
    assert_eq!((i.namespaces, i.nsid, i.read_only), (1, 1, false));
    let ns: Vec<_> = e
        .nvme
        .namespaces()
        .iter()
        .map(|n| (n.nsid, n.state))
        .collect();
    assert_eq!(ns, [(1, NsState::Attached)]);
    assert_eq!((i.block_size, i.blocks, i.capacity), (512, 8192, 8192));
    assert_eq!((i.max_queue_entries, i.io_entries), (2048, 256));
    assert_eq!(i.version, 0x0001_0400);
    let l = e.nvme.limits();
    assert_eq!(l.logical_block_size, 512);
    // The list budget (two pages: 1 + 2 x 511 + 1 entries, minus two) is below MDTS.
    assert_eq!(l.max_sectors, (1022 * 4096 / 512) as u32);
    assert_eq!(l.virt_boundary_mask, 4095);
    assert_eq!(l.max_discard_sectors, 65536);
    assert_eq!(l.max_write_zeroes_sectors, 65536);
    e.fake.with(|m| {
        assert!(m.vwc_enabled, "volatile write cache turned on");
        assert_eq!(m.enables, 1);
        let admin_ops: Vec<u8> = m
            .log
            .iter()
            .filter(|(q, _)| *q == 0)
            .map(|(_, c)| c.opcode())
            .collect();
        assert_eq!(
            admin_ops,
            [
                admin::IDENTIFY,
                admin::IDENTIFY,
                admin::IDENTIFY,
                admin::SET_FEATURES,
                admin::SET_FEATURES,
                admin::CREATE_CQ,
                admin::CREATE_SQ
            ]
        );
        let cq = m.log.iter().find(|(_, c)| c.opcode() == admin::CREATE_CQ);
        let cq = cq.map(|(_, c)| c.dw).unwrap_or_default();
        assert_eq!(cq[10], 255 << 16 | 1, "CQ 1 of 256 entries");
        assert_eq!(cq[11] & 3, 3, "contiguous, interrupts enabled");
    });
    assert!(e.nvme.csts().contains(crate::regs::Csts::RDY));
}

#[test]
fn bring_up_follows_identify_and_refuses_what_it_cannot_use() {
    // 4 KiB blocks, no MDTS, no cache, no optional commands.
    let (_f, n) = bring_up(
        1024,
        4096,
        |m| {
            m.mdts = 0;
            m.vwc = false;
            m.oncs = 0;
        },
        config(Mode::Polling, false),
    );
    let n = n.expect("bring-up");
    let i = *n.info();
    assert_eq!((i.block_size, i.blocks, i.capacity), (4096, 1024, 8192));
    assert_eq!(i.mdts_bytes, 0);
    assert!(!i.vwc && !i.dsm && !i.write_zeroes);
    let l = n.limits();
    assert_eq!(l.logical_block_size, 4096);
    assert_eq!(l.max_discard_sectors, 0);
    assert_eq!(l.max_write_zeroes_sectors, 0);
    // Queues smaller than the driver accepts.
    let (_f, n) = bring_up(
        64,
        512,
        |m| m.max_queue_entries = 32,
        config(Mode::Polling, false),
    );
    assert_eq!(n.err(), Some(InitError::Unsupported));
    // A controller that reports a fatal status instead of ready.
    let f = FakeCtrl::new(64, 512);
    f.set_fatal();
    f.install();
    let n = Nvme::new(f.bar(), config(Mode::Polling, false));
    assert_eq!(n.err(), Some(InitError::NotReady));
}

#[test]
fn write_then_read_round_trip_by_interrupt() {
    let e = env();
    let data = pattern(1, 8192);
    let mut wbuf = DmaBuf::alloc(8192, 4096).unwrap();
    wbuf.as_mut_slice().copy_from_slice(&data);
    let irqs = e.fake.with(|m| m.irqs);
    let w = e.request(Op::Write, BioFlags::empty(), 16, &[seg(&wbuf, 0, 8192)]);
    assert_eq!(e.run(&w), [ok(0)]);
    assert_eq!(e.fake.disk(16 * 512, 8192), data);
    let rbuf = DmaBuf::alloc(8192, 4096).unwrap();
    let r = e.request(Op::Read, BioFlags::empty(), 16, &[seg(&rbuf, 0, 8192)]);
    assert_eq!(e.run(&r), [ok(0)]);
    assert_eq!(rbuf.as_slice(), &data[..]);
    // Two pages, one segment: PRP1 and PRP2, no list.
    e.fake.with(|m| {
        assert_eq!(m.prp_list_pages, 0);
        assert_eq!(m.irqs, irqs + 2);
        assert_eq!(m.fetched(nvm::WRITE, true), 1);
        assert_eq!(m.fetched(nvm::READ, true), 1);
    });
    let s = e.nvme.stats();
    assert_eq!(s.requests.load(Ordering::Relaxed), 2);
    assert_eq!(s.completions.load(Ordering::Relaxed), 2);
    assert_eq!(s.doorbells.load(Ordering::Relaxed), 2);
    assert_eq!(s.errors.load(Ordering::Relaxed), 0);
    assert_eq!(e.nvme.in_flight(), 0);
    // More commands than the rings hold: both wrap (the completion phase flips) and the
    // driver must ring the completion head doorbell, or the model's queue overflows.
    for k in 0..600u64 {
        let r = e.request(Op::Read, BioFlags::empty(), k % 64, &[seg(&rbuf, 0, 512)]);
        assert_eq!(e.run(&r), [ok(0)], "read {k}");
        assert_eq!(
            &rbuf.as_slice()[..512],
            &e.fake.disk((k % 64) as usize * 512, 512)[..]
        );
    }
}

#[test]
fn multi_page_requests_use_prp_lists() {
    let e = env();
    // 64 KiB from an unaligned start: 17 pages, PRP1 and a list of 16.
    let buf = DmaBuf::alloc(17 * 4096, 4096).unwrap();
    let r = e.request(Op::Read, BioFlags::empty(), 100, &[seg(&buf, 0x200, 65536)]);
    assert_eq!(e.run(&r), [ok(0)]);
    assert_eq!(
        &buf.as_slice()[0x200..0x200 + 65536],
        &e.fake.disk(100 * 512, 65536)[..]
    );
    assert_eq!(e.fake.with(|m| m.prp_list_pages), 1);
    assert_eq!(e.nvme.stats().prp_lists.load(Ordering::Relaxed), 1);
    // Eight separate pages in two bios: eight PRP entries, seven in the list.
    let pages: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    let mut l = BioList::new();
    for (k, chunk) in pages.chunks(4).enumerate() {
        let segs: Vec<BioVec> = chunk.iter().map(|p| seg(p, 0, 4096)).collect();
        l.push_back(bio(
            e.set,
            Op::Write,
            200 + 32 * k as u64,
            &segs,
            Counts::new(),
        ));
    }
    for (k, p) in pages.iter().enumerate() {
        for i in 0..4096 {
            p.write8(i, pattern(k as u8 + 10, 4096)[i]);
        }
    }
    let rq = Request::standalone(l);
    assert_eq!(rq.nr_segments(), 8);
    assert_eq!(e.run(&rq), [ok(0)]);
    for (k, _) in pages.iter().enumerate() {
        assert_eq!(
            e.fake.disk((200 * 512) + k * 4096, 4096),
            pattern(k as u8 + 10, 4096)
        );
    }
    assert_eq!(e.fake.with(|m| m.prp_list_pages), 2);
    // 2.5 MiB: 641 entries, the list chains over two pages.
    let big = DmaBuf::alloc(640 * 4096 + 4096, 4096).unwrap();
    let r = e.request(
        Op::Read,
        BioFlags::empty(),
        1024,
        &[seg(&big, 8, 640 * 4096)],
    );
    assert_eq!(e.run(&r), [ok(0)]);
    assert_eq!(
        &big.as_slice()[8..8 + 640 * 4096],
        &e.fake.disk(1024 * 512, 640 * 4096)[..]
    );
    assert_eq!(
        e.fake.with(|m| m.prp_list_pages),
        4,
        "two list pages for the last one"
    );
    assert_eq!(e.nvme.stats().chained_lists.load(Ordering::Relaxed), 1);
}

#[test]
fn sgls_when_the_controller_has_them() {
    let e = env_with(|m| m.sgls = 1, true);
    assert!(e.nvme.info().sgl);
    assert_eq!(e.nvme.limits().virt_boundary_mask, 0);
    let a = DmaBuf::alloc(4096, 4096).unwrap();
    let b = DmaBuf::alloc(4096, 4096).unwrap();
    for i in 0..1024 {
        a.write8(i, 0xa0 ^ i as u8);
        b.write8(i + 0x100, 0xb0 ^ i as u8);
    }
    // Two segments neither of which PRPs could express together (the second starts off a page).
    let w = e.request(
        Op::Write,
        BioFlags::empty(),
        40,
        &[seg(&a, 0, 1024), seg(&b, 0x100, 1024)],
    );
    assert_eq!(e.run(&w), [ok(0)]);
    let disk = e.fake.disk(40 * 512, 2048);
    assert!((0..1024).all(|i| disk[i] == 0xa0 ^ i as u8 && disk[1024 + i] == 0xb0 ^ i as u8));
    assert_eq!(e.fake.with(|m| m.sgl_segments), 1);
    assert_eq!(e.nvme.stats().sgls.load(Ordering::Relaxed), 1);
}

#[test]
fn flushes_and_preflush_writes() {
    let e = env();
    let f = e.request(Op::Flush, BioFlags::empty(), 0, &[]);
    assert_eq!(e.run(&f), [ok(0)]);
    assert_eq!(e.fake.with(|m| m.flushes), 1);
    // A PREFLUSH write: the flush goes first, the write when it completed, one completion.
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    for i in 0..4096 {
        buf.write8(i, i as u8 ^ 0x5a);
    }
    let w = e.request(
        Op::Write,
        BioFlags::PREFLUSH | BioFlags::FUA,
        8,
        &[seg(&buf, 0, 4096)],
    );
    assert_eq!(e.run(&w), [], "the write is still on its way");
    e.fake.with(|m| {
        assert_eq!(m.flushes, 2);
        assert_eq!(m.fetched(nvm::WRITE, true), 0);
    });
    assert_eq!(e.interrupt(), [ok(0)]);
    let cmd = e.fake.with(|m| m.log.last().map(|(_, c)| *c)).unwrap();
    assert_eq!(cmd.opcode(), nvm::WRITE);
    assert_ne!(cmd.dw[12] & 1 << 30, 0, "FUA");
    assert!((0..4096).all(|i| e.fake.disk(8 * 512 + i, 1)[0] == i as u8 ^ 0x5a));
    assert_eq!(e.nvme.stats().preflushes.load(Ordering::Relaxed), 1);
}

#[test]
fn a_failed_preflush_fails_the_write_without_sending_it() {
    let e = env_with(
        |m| m.fail = vec![(nvm::FLUSH, Status::new(sct::MEDIA, 0x81))],
        false,
    );
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let w = e.request(
        Op::Write,
        BioFlags::PREFLUSH | BioFlags::FUA,
        8,
        &[seg(&buf, 0, 4096)],
    );
    let got = e.run(&w);
    assert_eq!(got.len(), 1, "one completion");
    assert_eq!(
        got[0].status,
        Err(BlkError::Io),
        "the flush error, not success"
    );
    e.fake.with(|m| {
        assert_eq!(
            m.fetched(nvm::FLUSH, true),
            1,
            "the pre-flush went out once"
        );
        assert_eq!(m.fetched(nvm::WRITE, true), 0, "the write never went out");
    });
}

#[test]
fn error_statuses_reach_the_completion() {
    let e = env_with(
        |m| {
            m.fail = vec![
                (nvm::READ, Status::new(sct::MEDIA, 0x81)),
                (nvm::WRITE, Status::new(sct::COMMAND_SPECIFIC, 0x80)),
            ]
        },
        false,
    );
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let r = e.request(Op::Read, BioFlags::empty(), 0, &[seg(&buf, 0, 4096)]);
    let got = e.run(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, Err(BlkError::Io));
    let w = e.request(Op::Write, BioFlags::empty(), 0, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&w)[0].status, Err(BlkError::DeviceError(0x180)));
    // Past the end of the namespace: the controller's LBA out of range.
    let r = e.request(Op::Read, BioFlags::empty(), 8190, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&r)[0].status, Err(BlkError::OutOfRange));
    assert_eq!(e.nvme.stats().errors.load(Ordering::Relaxed), 3);
    // The next one works.
    let r = e.request(Op::Read, BioFlags::empty(), 0, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&r), [ok(0)]);
    assert_eq!(buf.as_slice(), &e.fake.disk(0, 4096)[..]);
    // What the driver cannot express never reaches the controller.
    let fetched = e.fake.with(|m| m.log.len());
    let bad = e.request(Op::Read, BioFlags::empty(), 0, &[seg(&buf, 2, 512)]);
    assert!(e.nvme.queue_rq(&bad, true).is_err());
    e.nvme.commit();
    assert_eq!(e.fake.step(), 0);
    assert_eq!(e.fake.with(|m| m.log.len()), fetched);
}

#[test]
fn an_abort_that_takes_needs_no_reset() {
    let e = env_with(|m| m.stall = vec![(nvm::READ, 1)], false);
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let r = e.request(Op::Read, BioFlags::empty(), 0, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&r), [], "held back by the controller");
    assert_eq!(e.nvme.in_flight(), 1);
    assert_eq!(e.nvme.timeout(&r), TimeoutAction::Retry);
    // The controller completed the aborted command ("abort requested"); the block layer
    // drops that late completion of a timed-out request.
    assert_eq!(
        e.rec.take(),
        [Completion {
            tag: 0,
            status: Err(BlkError::DeviceError(sc::ABORT_REQUESTED as u16)),
            pt: None
        }]
    );
    let s = e.nvme.stats();
    assert_eq!(s.aborts.load(Ordering::Relaxed), 1);
    assert_eq!(s.resets.load(Ordering::Relaxed), 0);
    assert_eq!(e.fake.with(|m| (m.aborts, m.enables)), (1, 1));
    assert_eq!(e.nvme.in_flight(), 0);
    assert_eq!(e.run(&r), [ok(0)]);
}

#[test]
fn a_fatal_status_resets_from_deferred_work() {
    let e = env_with(|m| m.stall = vec![(nvm::WRITE, 1)], false);
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let w = e.request(Op::Write, BioFlags::empty(), 0, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&w), []);
    e.fake.set_fatal();
    e.nvme.deferred();
    assert_eq!(
        e.rec.take(),
        [Completion {
            tag: 0,
            status: Err(BlkError::Aborted),
            pt: None
        }]
    );
    assert!(!e.nvme.is_dead());
    let s = e.nvme.stats();
    assert_eq!(
        (
            s.fatal.load(Ordering::Relaxed),
            s.resets.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    assert_eq!(e.fake.with(|m| m.enables), 2);
    assert_eq!(e.run(&w), [ok(0)]);
}

/// The driver under the block layer's queue, as the kernel wires it.
struct QueueEnv {
    fake: Arc<FakeCtrl>,
    nvme: &'static Nvme,
    q: &'static Queue<QUEUE_DEPTH>,
    rec: &'static Recorder,
    set: &'static BioSet<Counts>,
    ctx: &'static CpuCtx,
}

fn queue_env(setup: impl FnOnce(&mut fake::Model)) -> QueueEnv {
    let (fake, nvme) = bring_up(8192, 512, setup, config(Mode::Interrupt, false));
    let nvme: &'static Nvme = leak(nvme.expect("bring-up"));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split: &'static BioSet<()> = leak(BioSet::new(split_slab, 4, None));
    let mut qc = QueueConfig::new(nvme.info().capacity);
    qc.read_only = nvme.info().read_only;
    qc.clock = fake::clock;
    qc.timeout_ns = 1_000_000_000;
    qc.wait = Wait::Never;
    let q: &'static Queue<QUEUE_DEPTH> = leak(Queue::new(nvme, nvme.limits(), qc, split));
    let rec: &'static Recorder = leak(Recorder::default());
    rec.next.call_once(|| q);
    nvme.attach(rec);
    QueueEnv {
        fake,
        nvme,
        q,
        rec,
        set: bio_set(),
        ctx: leak(CpuCtx::new(0)),
    }
}

impl QueueEnv {
    fn submit(&self, op: Op, sector: u64, segs: &[BioVec]) -> Counts {
        let c = Counts::new();
        let mut b = bio(self.set, op, sector, segs, c);
        b.set_dev(self.q);
        assert!(submit_bio(self.ctx, b).is_ok());
        c
    }
    fn interrupt(&self) {
        self.fake.step();
        self.nvme.handle_irq();
    }
}

#[test]
fn timeout_aborts_then_resets_and_every_request_completes_once() {
    // The first three writes are fetched and never completed; the Abort does not take.
    let e = queue_env(|m| {
        m.stall = vec![(nvm::WRITE, 3)];
        m.abort_takes = false;
    });
    let bufs: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    for (k, b) in bufs.iter().enumerate() {
        for (i, v) in pattern(k as u8 + 40, 4096).into_iter().enumerate() {
            b.write8(i, v);
        }
    }
    let counts: Vec<Counts> = bufs
        .iter()
        .enumerate()
        .map(|(k, b)| e.submit(Op::Write, 64 * k as u64, &[seg(b, 0, 4096)]))
        .collect();
    e.interrupt();
    let done: Vec<(u32, u32)> = counts.iter().map(Counts::get).collect();
    assert_eq!(done.iter().filter(|c| **c == (1, 0)).count(), 5);
    assert_eq!(done.iter().filter(|c| **c == (0, 0)).count(), 3);
    assert_eq!(e.fake.with(|m| m.stalled.len()), 3);
    assert_eq!(e.nvme.in_flight(), 3);

    // Past every deadline: the first held-back request times out, its abort fails, the
    // controller is reset; the other two fail with `Aborted` and go again
    // with the timed-out one.
    let timed_out = e.q.check_timeouts(u64::MAX / 2);
    assert_eq!(timed_out, 1);
    let s = e.nvme.stats();
    assert_eq!(s.timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(s.aborts.load(Ordering::Relaxed), 1);
    assert_eq!(s.resets.load(Ordering::Relaxed), 1);
    e.fake.with(|m| {
        assert_eq!(m.aborts, 1);
        assert_eq!(m.enables, 2);
        assert_eq!(m.deletions, 2, "I/O SQ and CQ deleted before the disable");
        assert!(m.stalled.is_empty());
    });
    let reset_errors = e
        .rec
        .take()
        .into_iter()
        .filter(|c| c.status == Err(BlkError::Aborted))
        .count();
    assert_eq!(reset_errors, 2);
    // The three were dispatched again; the controller completes them now.
    e.interrupt();
    for (k, c) in counts.iter().enumerate() {
        assert_eq!(
            c.get(),
            (1, 0),
            "write {k} completed exactly once, successfully"
        );
        assert_eq!(e.fake.disk(64 * 512 * k, 4096), pattern(k as u8 + 40, 4096));
    }
    assert_eq!(e.rec.take().len(), 3);
    assert_eq!(e.nvme.in_flight(), 0);
    assert_eq!(e.q.tags_in_use(), 0);
    assert!(!e.nvme.is_dead());

    // Later I/O works: read back what was written, and a passthrough Identify.
    let rbuf = DmaBuf::alloc(4096, 4096).unwrap();
    let c = e.submit(Op::Read, 64 * 7, &[seg(&rbuf, 0, 4096)]);
    e.interrupt();
    assert_eq!(c.get(), (1, 0));
    assert_eq!(rbuf.as_slice(), &pattern(47, 4096)[..]);
    let id = DmaBuf::alloc(4096, 4096).unwrap();
    let cmd = PtCmd {
        opcode: pt::ADMIN,
        args: [admin::IDENTIFY as u64, 1, 0, 0],
        data: Some(seg(&id, 0, 4096)),
        write: false,
    };
    // The wait between polls lets the controller run.
    let wait = || {
        fake::clock();
    };
    let r = e.q.passthrough_wait(cmd, wait).expect("passthrough");
    assert_eq!(r.status, Ok(()));
    assert_eq!(id.read16(0), 0x1b36);
    let bad = PtCmd {
        opcode: pt::ADMIN,
        args: [0xef, 0, 0, 0],
        data: None,
        write: false,
    };
    let r = e.q.passthrough_wait(bad, wait).expect("passthrough");
    assert_eq!(r.status, Err(BlkError::Unsupported));
    assert_eq!(e.nvme.stats().passthrough.load(Ordering::Relaxed), 2);
}

/// `(nsid, state)` of every recorded namespace.
fn ns_states(n: &Nvme) -> Vec<(u32, NsState)> {
    n.namespaces().iter().map(|n| (n.nsid, n.state)).collect()
}

#[test]
fn a_controller_whose_only_namespace_is_not_1_is_used() {
    let e = env_with(|m| m.nsids = vec![2], false);
    let i = *e.nvme.info();
    assert_eq!((i.namespaces, i.nsid, i.capacity), (2, 2, 8192));
    assert_eq!(ns_states(&e.nvme), [(2, NsState::Attached)]);
    assert!(!e.nvme.namespaces().scanned);
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    for i in 0..4096 {
        buf.write8(i, i as u8 ^ 0x3c);
    }
    let w = e.request(Op::Write, BioFlags::empty(), 8, &[seg(&buf, 0, 4096)]);
    assert_eq!(e.run(&w), [ok(0)]);
    let f = e.request(Op::Flush, BioFlags::empty(), 0, &[]);
    assert_eq!(e.run(&f), [ok(0)]);
    assert!((0..4096).all(|i| e.fake.disk(8 * 512 + i, 1)[0] == i as u8 ^ 0x3c));
    e.fake.with(|m| {
        let io: Vec<u32> = m
            .log
            .iter()
            .filter(|(q, _)| *q != 0)
            .map(|(_, c)| c.dw[1])
            .collect();
        assert_eq!(io, [2, 2], "every I/O command names namespace 2");
    });
}

#[test]
fn every_active_namespace_is_attached_or_has_a_reason() {
    // Namespace 1 has metadata (unusable), 3 and 7 are usable: two queues.
    let e = env_with(
        |m| {
            m.nsids = vec![1, 3, 7];
            m.metadata_ns = vec![1];
        },
        false,
    );
    assert_eq!(e.nvme.info().nsid, 3);
    assert_eq!(
        ns_states(&e.nvme),
        [
            (1, NsState::Metadata),
            (3, NsState::Attached),
            (7, NsState::Attached)
        ]
    );
    let ns = e.nvme.namespaces();
    assert_eq!((ns.active(), ns.attached(), ns.unlisted), (3, Some(3), 0));
    assert_eq!(ns.attached_ids().collect::<Vec<_>>(), [3, 7]);
    assert_eq!(e.nvme.ns_queues(), 2);
    assert_eq!(e.nvme.ns_queue_info(1).map(|i| i.nsid), Some(7));
    assert!(e.nvme.ns_queue_info(2).is_none() && e.nvme.ns_queue(2).is_none());
    // More usable namespaces than queues: the first MAX_NS_QUEUES attached, the others
    // recorded as not attached; more active namespaces than the driver records: counted.
    let many: Vec<u32> = (1..=20).map(|k| 2 * k).collect();
    let (_f, n) = bring_up(64, 512, |m| m.nsids = many, config(Mode::Polling, false));
    let n = n.expect("bring-up");
    let ns = n.namespaces();
    assert_eq!((ns.active(), ns.unlisted, ns.attached()), (20, 4, Some(2)));
    assert_eq!(ns.attached_ids().collect::<Vec<_>>(), [2, 4, 6, 8]);
    assert_eq!(n.ns_queues(), MAX_NS_QUEUES);
    assert_eq!(
        ns.iter()
            .filter(|n| n.state == NsState::NotAttached)
            .count(),
        16 - MAX_NS_QUEUES
    );
}

#[test]
fn controllers_without_the_active_list_are_scanned() {
    // An NVMe 1.0 controller: Identify Namespace of 1..=NN, inactive ids skipped.
    let f = FakeCtrl::new(64, 512);
    f.with(|m| {
        m.nsids = vec![2, 5];
        m.active_list = false;
    });
    f.set_version(0x0001_0000);
    f.install();
    let n = Nvme::new(f.bar(), config(Mode::Polling, false)).expect("bring-up");
    assert!(n.namespaces().scanned);
    assert_eq!(
        ns_states(&n),
        [(2, NsState::Attached), (5, NsState::Attached)]
    );
    assert_eq!(n.info().nsid, 2);
    assert_eq!(n.ns_queue_info(1).map(|i| i.nsid), Some(5));
    f.with(|m| {
        assert_eq!(
            m.fetched(admin::IDENTIFY, false),
            1 + 5,
            "controller, then ids 1..=5"
        );
        assert!(
            m.log
                .iter()
                .all(|(_, c)| c.opcode() != admin::IDENTIFY || c.dw[10] != 2)
        );
    });
    // A 1.4 controller that refuses the list is scanned as well.
    let (_f, n) = bring_up(
        64,
        512,
        |m| {
            m.nsids = vec![3];
            m.active_list = false;
        },
        config(Mode::Polling, false),
    );
    let n = n.expect("bring-up");
    assert!(n.namespaces().scanned);
    assert_eq!(ns_states(&n), [(3, NsState::Attached)]);
}

#[test]
fn no_usable_namespace_fails_bring_up_with_the_reason() {
    let (_f, n) = bring_up(
        64,
        512,
        |m| {
            m.nsids = vec![4];
            m.metadata_ns = vec![4];
        },
        config(Mode::Polling, false),
    );
    assert_eq!(
        n.err(),
        Some(InitError::NoNamespace {
            active: 1,
            first: Some(Namespace {
                nsid: 4,
                state: NsState::Metadata
            })
        })
    );
    let (_f, n) = bring_up(64, 512, |m| m.nsids = vec![], config(Mode::Polling, false));
    assert_eq!(n.err(), Some(InitError::BadIdentify), "NN = 0");
}

#[test]
fn a_write_protected_namespace_makes_a_read_only_queue() {
    // NSATTR bit 0.
    let e = queue_env(|m| m.nsattr_wp = true);
    assert!(e.nvme.info().read_only);
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let fetched = e.fake.with(|m| m.log.len());
    let c = Counts::new();
    let mut b = bio(e.set, Op::Write, 0, &[seg(&buf, 0, 4096)], c);
    b.set_dev(e.q);
    assert_eq!(
        submit_bio(e.ctx, b).err().map(|e| e.0),
        Some(BlkError::ReadOnly)
    );
    e.interrupt();
    assert_eq!(
        e.fake.with(|m| m.log.len()),
        fetched,
        "nothing reached the controller"
    );
    // Reads still work.
    let c = e.submit(Op::Read, 0, &[seg(&buf, 0, 4096)]);
    e.interrupt();
    assert_eq!(c.get(), (1, 0));
    // The write protection config feature, without NSATTR.
    let (_f, n) = bring_up(
        64,
        512,
        |m| {
            m.nwpc = true;
            m.wp_state = 1;
        },
        config(Mode::Polling, false),
    );
    assert!(n.expect("bring-up").info().read_only);
    let (_f, n) = bring_up(64, 512, |m| m.nwpc = true, config(Mode::Polling, false));
    assert!(!n.expect("bring-up").info().read_only);
}

#[test]
fn a_namespace_protected_after_bring_up_fails_writes_at_once() {
    let e = queue_env(|_| {});
    assert!(!e.nvme.info().read_only);
    e.fake.with(|m| m.wp_state = 1);
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let c = e.submit(Op::Write, 0, &[seg(&buf, 0, 4096)]);
    e.interrupt();
    assert_eq!(c.get(), (1, 1), "completed once, with an error");
    assert_eq!(
        e.rec.take().iter().map(|c| c.status).collect::<Vec<_>>(),
        [Err(BlkError::ReadOnly)]
    );
    assert_eq!(
        e.fake.with(|m| m.fetched(nvm::WRITE, true)),
        1,
        "not retried"
    );
}

/// A controller with namespaces 1 and 2 (2 with contents of its own, `blocks2` blocks), a
/// block-layer queue on each, completions recorded per queue.
struct TwoNs {
    fake: Arc<FakeCtrl>,
    nvme: &'static Nvme,
    qs: [&'static Queue<QUEUE_DEPTH>; 2],
    recs: [&'static Recorder; 2],
    set: &'static BioSet<Counts>,
    ctx: &'static CpuCtx,
}

fn two_ns(blocks2: u64, setup: impl FnOnce(&mut fake::Model)) -> TwoNs {
    let (fake, nvme) = bring_up(
        8192,
        512,
        |m| {
            m.nsids = vec![1, 2];
            m.ns_disks.insert(2, vec![0xee; blocks2 as usize * 512]);
            setup(m);
        },
        config(Mode::Interrupt, false),
    );
    let nvme: &'static Nvme = leak(nvme.expect("bring-up"));
    assert_eq!(nvme.ns_queues(), 2);
    let mk = |k: usize| {
        let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
        let split: &'static BioSet<()> = leak(BioSet::new(split_slab, 4, None));
        let info = nvme.ns_queue_info(k).expect("namespace queue");
        let mut qc = QueueConfig::new(info.capacity);
        qc.clock = fake::clock;
        qc.timeout_ns = 1_000_000_000;
        qc.wait = Wait::Never;
        let hw: &'static dyn HwQueue = leak(nvme.ns_queue(k).expect("namespace queue"));
        let limits = nvme.ns_limits(k).expect("limits");
        let q: &'static Queue<QUEUE_DEPTH> = leak(Queue::new(hw, limits, qc, split));
        let rec: &'static Recorder = leak(Recorder::default());
        rec.next.call_once(|| q);
        assert!(nvme.attach_ns(k, rec));
        (q, rec)
    };
    let (q0, r0) = mk(0);
    let (q1, r1) = mk(1);
    TwoNs {
        fake,
        nvme,
        qs: [q0, q1],
        recs: [r0, r1],
        set: bio_set(),
        ctx: leak(CpuCtx::new(0)),
    }
}

impl TwoNs {
    fn submit(&self, k: usize, op: Op, flags: BioFlags, sector: u64, segs: &[BioVec]) -> Counts {
        let c = Counts::new();
        let mut b = bio(self.set, op, sector, segs, c);
        b.set_flags(flags);
        b.set_dev(self.qs[k]);
        assert!(submit_bio(self.ctx, b).is_ok());
        c
    }
    fn interrupt(&self) {
        self.fake.step();
        self.nvme.handle_irq();
    }
    /// `nsid`s of the I/O commands the controller fetched of `opcode`.
    fn nsids_of(&self, opcode: u8) -> Vec<u32> {
        self.fake.with(|m| {
            m.log
                .iter()
                .filter(|(q, c)| *q != 0 && c.opcode() == opcode)
                .map(|(_, c)| c.dw[1])
                .collect()
        })
    }
}

#[test]
fn two_namespaces_on_one_controller() {
    // One controller for the three parts: the host DMA region is shared by the tests of the
    // process, and a controller leaked for its 'static queues keeps its list pages (1 MiB per
    // namespace).
    let e = two_ns(4096, |_| {});
    two_namespaces_are_two_disks(&e);
    completions_go_to_the_queue_that_sent_the_command(&e);
    a_reset_completes_every_namespaces_requests_once(&e);
}

fn two_namespaces_are_two_disks(e: &TwoNs) {
    let (a, b) = (
        *e.nvme.ns_queue_info(0).unwrap(),
        *e.nvme.ns_queue_info(1).unwrap(),
    );
    assert_eq!((a.nsid, a.capacity), (1, 8192));
    assert_eq!(
        (b.nsid, b.capacity),
        (2, 4096),
        "each namespace its own size"
    );
    assert_eq!(e.nvme.ns_queue(1).map(|q| q.index()), Some(1));
    // The same sector on each queue, different data.
    let bufs: Vec<DmaBuf> = (0..2).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    for (k, buf) in bufs.iter().enumerate() {
        for (i, v) in pattern(10 + k as u8, 4096).into_iter().enumerate() {
            buf.write8(i, v);
        }
    }
    let w: Vec<Counts> = (0..2)
        .map(|k| {
            e.submit(
                k,
                Op::Write,
                BioFlags::empty(),
                16,
                &[seg(&bufs[k], 0, 4096)],
            )
        })
        .collect();
    e.interrupt();
    assert!(w.iter().all(|c| c.get() == (1, 0)));
    assert_eq!(e.fake.ns_disk(1, 16 * 512, 4096), pattern(10, 4096));
    assert_eq!(e.fake.ns_disk(2, 16 * 512, 4096), pattern(11, 4096));
    assert_eq!(
        e.nsids_of(nvm::WRITE),
        [1, 2],
        "each write names its namespace"
    );
    // Flush per namespace: each queue's flush names its own.
    let f: Vec<Counts> = (0..2)
        .map(|k| e.submit(k, Op::Flush, BioFlags::empty(), 0, &[]))
        .collect();
    e.interrupt();
    assert!(f.iter().all(|c| c.get() == (1, 0)));
    assert_eq!(e.nsids_of(nvm::FLUSH), [1, 2]);
    // Read back through each queue: each gets its own namespace's data.
    for buf in &bufs {
        for i in 0..4096 {
            buf.write8(i, 0);
        }
    }
    let r: Vec<Counts> = (0..2)
        .map(|k| {
            e.submit(
                k,
                Op::Read,
                BioFlags::empty(),
                16,
                &[seg(&bufs[k], 0, 4096)],
            )
        })
        .collect();
    e.interrupt();
    assert!(r.iter().all(|c| c.get() == (1, 0)));
    for (k, buf) in bufs.iter().enumerate() {
        let got: Vec<u8> = (0..4096).map(|i| buf.read8(i)).collect();
        assert_eq!(got, pattern(10 + k as u8, 4096), "queue {k} read back");
    }
    // Past the end of namespace 2 (smaller than 1): refused by its queue, not the controller.
    let buf = DmaBuf::alloc(4096, 4096).unwrap();
    let mut past = bio(e.set, Op::Read, 4096, &[seg(&buf, 0, 4096)], Counts::new());
    past.set_dev(e.qs[1]);
    assert!(submit_bio(e.ctx, past).is_err());
    let ok = e.submit(0, Op::Read, BioFlags::empty(), 4096, &[seg(&buf, 0, 4096)]);
    e.interrupt();
    assert_eq!(ok.get(), (1, 0), "namespace 1 is bigger");
}

fn completions_go_to_the_queue_that_sent_the_command(e: &TwoNs) {
    // Both queues' requests carry tag 0 at once: their command ids differ, and each
    // completion reaches its own queue's sink with tag 0.
    e.recs.iter().for_each(|r| drop(r.take()));
    let set = bio_set();
    let rq = |sector: u64, buf: &DmaBuf| {
        let mut l = BioList::new();
        l.push_back(bio(
            set,
            Op::Read,
            sector,
            &[seg(buf, 0, 4096)],
            Counts::new(),
        ));
        Request::standalone(l)
    };
    let bufs: Vec<DmaBuf> = (0..2).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    let (r0, r1) = (rq(8, &bufs[0]), rq(24, &bufs[1]));
    assert_eq!((r0.tag(), r1.tag()), (0, 0));
    let q1 = e.nvme.ns_queue(1).unwrap();
    e.nvme.queue_rq(&r0, true).unwrap();
    q1.queue_rq(&r1, true).unwrap();
    q1.commit();
    let cids: Vec<u16> = e
        .fake
        .with(|m| m.log.iter().map(|(_, c)| c.cid()).collect());
    e.fake.step();
    let sent: Vec<(u16, u32)> = e.fake.with(|m| {
        m.log[cids.len()..]
            .iter()
            .map(|(_, c)| (c.cid(), c.dw[1]))
            .collect()
    });
    assert_eq!(sent.len(), 2);
    assert_ne!(
        sent[0].0 & 0x3ff,
        sent[1].0 & 0x3ff,
        "distinct command slots"
    );
    assert_eq!(
        (sent[0].1, sent[1].1),
        (1, 2),
        "each read names its namespace"
    );
    e.nvme.handle_irq();
    // The recorders hand on to queues that never issued these tags: count only the records.
    let (c0, c1) = (e.recs[0].take(), e.recs[1].take());
    assert_eq!(c0, [ok(0)]);
    assert_eq!(c1, [ok(0)]);
    assert_eq!(e.nvme.in_flight(), 0);
    // Namespace 2's data reached queue 1's buffer (its contents are 0xee).
    assert!((0..4096).all(|i| bufs[1].read8(i) == 0xee));
    assert!((0..4096).any(|i| bufs[0].read8(i) != 0xee));
}

fn a_reset_completes_every_namespaces_requests_once(e: &TwoNs) {
    // Writes on both queues held back by the controller; the abort does not take: the
    // timeout resets the controller, and every request of both queues completes exactly once
    // (the one that timed out retried, the others failed with RESET and retried), its data
    // on its own namespace.
    e.recs.iter().for_each(|r| drop(r.take()));
    e.fake.with(|m| {
        m.stall = vec![(nvm::WRITE, 4)];
        m.abort_takes = false;
    });
    let bufs: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    for (k, b) in bufs.iter().enumerate() {
        for (i, v) in pattern(k as u8 + 60, 4096).into_iter().enumerate() {
            b.write8(i, v);
        }
    }
    // Writes 0..8 alternate between the queues; 0..4 are held back.
    let counts: Vec<Counts> = bufs
        .iter()
        .enumerate()
        .map(|(k, b)| {
            e.submit(
                k % 2,
                Op::Write,
                BioFlags::empty(),
                8 * k as u64,
                &[seg(b, 0, 4096)],
            )
        })
        .collect();
    e.interrupt();
    let done: Vec<(u32, u32)> = counts.iter().map(Counts::get).collect();
    assert_eq!(&done[..4], [(0, 0); 4], "held back");
    assert_eq!(&done[4..], [(1, 0); 4]);
    assert_eq!(e.qs[0].tags_in_use() + e.qs[1].tags_in_use(), 4);
    let resets0 = e.nvme.stats().resets.load(Ordering::Relaxed);
    // Queue 0's deadline passes first: abort, reset; every held write of both queues fails
    // with RESET (retryable) or is the timed-out one, and is sent again.
    e.qs[0].check_timeouts(u64::MAX / 2);
    e.qs[1].check_timeouts(u64::MAX / 2);
    assert!(e.nvme.stats().resets.load(Ordering::Relaxed) > resets0);
    for _ in 0..20 {
        e.qs[0].kick();
        e.qs[1].kick();
        e.interrupt();
        if counts.iter().all(|c| c.get().0 == 1) {
            break;
        }
    }
    let done: Vec<(u32, u32)> = counts.iter().map(Counts::get).collect();
    assert_eq!(
        done,
        [(1, 0); 8],
        "every bio of both queues completed once, without error"
    );
    assert_eq!(e.nvme.in_flight(), 0);
    assert_eq!(e.qs[0].tags_in_use() + e.qs[1].tags_in_use(), 0);
    // The resets reached each queue's own sink only with its own tags, once each.
    let (c0, c1) = (e.recs[0].take(), e.recs[1].take());
    let reset = Err(BlkError::Aborted);
    assert!(
        c0.iter()
            .chain(&c1)
            .all(|c| c.status.is_ok() || c.status == reset),
        "{c0:?} {c1:?}"
    );
    for (k, b) in bufs.iter().enumerate() {
        let nsid = 1 + (k % 2) as u32;
        assert_eq!(
            e.fake.ns_disk(nsid, 8 * k * 512, 4096),
            pattern(k as u8 + 60, 4096),
            "write {k} on namespace {nsid}"
        );
        let _ = b;
    }
}
