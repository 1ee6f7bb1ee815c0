//! Host-test harness for the whole path: bios → `blk::Queue` → driver → device model, with a
//! shim between queue and driver that checks the driver's side of the completion contract
//! (a tag completes only while the driver holds it, and once), per-bio completion counters,
//! a test clock for the block layer's timeouts and a wait hook that lets the device run. The
//! tests here run large multi-segment I/O at every ring size and check a read-only device;
//! `hostile.rs` drives the same stacks against a hostile device.

use core::cell::Cell;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};
use core::sync::atomic::{AtomicU32, AtomicU64};
use std::boxed::Box;
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use blk::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use blk::{
    Bio, BioFlags, BioVec, BlkError, BlkStatus, CpuCtx, HwQueue, Op, Queue, QueueConfig,
    QueueRqError, Request, TagComplete, TimeoutAction, Wait, submit_bio,
};

use crate::fake::{Device, FakeTransport};
use crate::{InitError, Mode, QUEUE_DEPTH, VirtioBlk};

/// Feature bits (virtio 1.2, 5.2.3 and 6), spelled out here rather than taken from the driver.
pub(crate) const F_SIZE_MAX: u64 = 1 << 1;
pub(crate) const F_SEG_MAX: u64 = 1 << 2;
pub(crate) const F_RO: u64 = 1 << 5;
pub(crate) const F_FLUSH: u64 = 1 << 9;
pub(crate) const F_DISCARD: u64 = 1 << 13;
pub(crate) const F_WRITE_ZEROES: u64 = 1 << 14;
pub(crate) const F_RING_EVENT_IDX: u64 = 1 << 29;
pub(crate) const F_VERSION_1: u64 = 1 << 32;

pub(crate) const PAGE: usize = 4096;
/// Disk of each device model (512 KiB).
pub(crate) const SECTORS: u64 = 1024;
/// Most bios per hostile case, and segments per bio.
pub(crate) const MAX_BIOS: usize = 6;
pub(crate) const MAX_SEGS: usize = 24;
/// Test buffers: every other page, so that no two segments merge into one.
pub(crate) const POOL_PAGES: usize = 2 * MAX_BIOS * MAX_SEGS;

pub(crate) fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// One test at a time: the driver learns its used area through a process-wide slot that
/// queue creation fills (shared with `tests.rs`).
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    crate::tests::serial()
}

/// xorshift64*: small, seeded, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    pub(crate) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The kernel's clock, as the tests move it.
pub(crate) static CLOCK: AtomicU64 = AtomicU64::new(0);

pub(crate) fn clock() -> u64 {
    CLOCK.load(Relaxed)
}

/// Sits between the block layer and the driver, in both directions, and checks the driver's
/// side of the contract: a tag completes only while the driver holds it, once.
pub(crate) struct Shim {
    pub(crate) hw: &'static VirtioBlk,
    pub(crate) q: spin::Once<&'static Queue<QUEUE_DEPTH>>,
    /// Tags the driver holds (accepted by `queue_rq`, not completed yet).
    held: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shim {
    pub(crate) fn error(&self, e: String) {
        self.errors.lock().unwrap().push(e);
    }
}

impl HwQueue for Shim {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let bit = 1u64 << rq.tag();
        if self.held.fetch_or(bit, SeqCst) & bit != 0 {
            self.error(format!(
                "tag {} dispatched while the driver held it",
                rq.tag()
            ));
        }
        let r = self.hw.queue_rq(rq, last);
        if r.is_err() && self.held.fetch_and(!bit, SeqCst) & bit == 0 {
            self.error(format!("tag {} completed and refused", rq.tag()));
        }
        r
    }
    fn commit(&self) {
        self.hw.commit();
    }
    fn commit_hctx(&self, hctx: usize) {
        self.hw.commit_hctx(hctx);
    }
    fn poll(&self) -> usize {
        self.hw.poll()
    }
    fn poll_hctx(&self, hctx: usize) -> usize {
        self.hw.poll_hctx(hctx)
    }
    fn timeout(&self, rq: &Request) -> TimeoutAction {
        let a = self.hw.timeout(rq);
        if a != TimeoutAction::Extend && self.held.load(SeqCst) & (1 << rq.tag()) != 0 {
            self.error(format!("tag {} still held after its timeout", rq.tag()));
        }
        a
    }
}

impl TagComplete for Shim {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        if tag >= 64 || self.held.fetch_and(!(1 << tag), SeqCst) & (1 << tag) == 0 {
            self.error(format!(
                "completion of tag {tag}, not in flight ({status:?})"
            ));
            return;
        }
        if let Some(q) = self.q.get() {
            q.complete(tag, status, done_bytes);
        }
    }
    fn complete_pt(&self, tag: u16, _status: BlkStatus, _result: u64) {
        self.error(format!("passthrough completion of tag {tag}"));
    }
    fn kick(&self) {
        if let Some(q) = self.q.get() {
            q.kick();
        }
    }
}

/// Completions of the bios of one case, by index.
pub(crate) static BIO_DONE: [AtomicU32; MAX_BIOS + 4] = [const { AtomicU32::new(0) }; MAX_BIOS + 4];
pub(crate) static BIO_ERR: [AtomicU32; MAX_BIOS + 4] = [const { AtomicU32::new(0) }; MAX_BIOS + 4];

pub(crate) struct Io(usize);

pub(crate) fn io_end(bio: Bio) {
    if let Some(&Io(i)) = bio.front::<Io>() {
        BIO_DONE[i].fetch_add(1, SeqCst);
        if bio.status().is_err() {
            BIO_ERR[i].fetch_add(1, SeqCst);
        }
    }
}

/// What every stack shares: bio memory, the submission context, the data pages.
pub(crate) struct Shared {
    set: &'static BioSet<Io>,
    split: &'static BioSet<()>,
    ctx: &'static CpuCtx,
    /// One submission context per CPU the multi-queue tests pretend to run on.
    cpus: Vec<&'static CpuCtx>,
    pool: usize,
}

pub(crate) fn shared() -> &'static Shared {
    static S: std::sync::OnceLock<&'static Shared> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        hal::dma::host::init_test_region();
        let slabs: &'static BvecSlabs<64, 64, 64, 64, 8, 8> = leak(BvecSlabs::new());
        let pools: &'static BvecPools = leak(BvecPools::new(slabs, 2));
        let slab: &'static BioSlab<Io, 64> = leak(BioSlab::new());
        let split_slab: &'static BioSlab<(), 256> = leak(BioSlab::new());
        let mem = Box::leak(vec![0u8; (POOL_PAGES + 1) * PAGE].into_boxed_slice());
        leak(Shared {
            set: leak(BioSet::new(slab, 4, Some(pools))),
            split: leak(BioSet::new(split_slab, 8, Some(pools))),
            ctx: leak(CpuCtx::new(0)),
            cpus: (0..8).map(|c| leak(CpuCtx::new(c))).collect(),
            pool: (mem.as_mut_ptr() as usize).next_multiple_of(PAGE),
        })
    })
}

/// A driver, its block-layer queue and the device model behind it.
pub(crate) struct Stack {
    pub(crate) hw: &'static VirtioBlk,
    pub(crate) shim: &'static Shim,
    pub(crate) q: &'static Queue<QUEUE_DEPTH>,
    pub(crate) dev: Arc<Mutex<Device>>,
    pub(crate) mode: Mode,
}

/// How a device model is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Setup {
    pub(crate) max_queue: u32,
    pub(crate) features: u64,
    pub(crate) seg_max: u32,
    pub(crate) size_max: u32,
    pub(crate) polled: bool,
}

impl Setup {
    pub(crate) fn plain(max_queue: u32, seg_max: u32) -> Setup {
        Setup {
            max_queue,
            features: F_VERSION_1 | F_SEG_MAX | F_FLUSH | F_RING_EVENT_IDX,
            seg_max,
            size_max: PAGE as u32,
            polled: false,
        }
    }

    pub(crate) fn transport(&self) -> FakeTransport {
        let t = FakeTransport::new(SECTORS, self.features, self.seg_max, self.size_max, 512);
        {
            let dev = t.device();
            let mut d = dev.lock().unwrap();
            d.max_queue = self.max_queue;
            // max_discard_sectors, max_write_zeroes_sectors.
            d.config[36..40].copy_from_slice(&64u32.to_le_bytes());
            d.config[48..52].copy_from_slice(&64u32.to_le_bytes());
        }
        t
    }

    pub(crate) fn stack(&self) -> Result<&'static Stack, InitError> {
        self.stack_mq(1, 1, |_| {})
    }

    /// [`Setup::stack`] with up to `want` request queues, the device model changed by `dev`
    /// first (offer `VIRTIO_BLK_F_MQ`, `num_queues`, queues that exist), and the block layer's
    /// queue mapped for `cpus` CPUs onto the queues the driver set up.
    pub(crate) fn stack_mq(
        &self,
        want: usize,
        cpus: usize,
        dev: impl FnOnce(&mut Device),
    ) -> Result<&'static Stack, InitError> {
        let sh = shared();
        let t = self.transport();
        dev(&mut t.device().lock().unwrap());
        let dev = t.device();
        let mode = if self.polled {
            Mode::Polling
        } else {
            Mode::Interrupt
        };
        let hw = leak(VirtioBlk::with_queues(t, mode, want, None)?);
        let shim = leak(Shim {
            hw,
            q: spin::Once::new(),
            held: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        });
        let mut cfg = QueueConfig::new(hw.info().capacity);
        cfg.read_only = hw.info().read_only;
        cfg.clock = clock;
        cfg.timeout_ns = 50_000;
        cfg.wait = Wait::Hook(wait_hook);
        let depth = hw.info().queue_depth as usize;
        let q: &'static Queue<QUEUE_DEPTH> =
            leak(Queue::new(shim, hw.limits(), cfg, sh.split).with_depth(depth));
        shim.q.call_once(|| q);
        q.map_hw_contexts(hw.nr_queues(), cpus)
            .expect("nothing in flight at attach");
        hw.attach(shim);
        let (lo, hi) = hw.cmd_range();
        dev.lock().unwrap().dma_ok = vec![
            (sh.pool as u64, (sh.pool + POOL_PAGES * PAGE) as u64),
            (lo, hi),
        ];
        Ok(leak(Stack {
            hw,
            shim,
            q,
            dev,
            mode,
        }))
    }
}

std::thread_local! {
    /// The stack the wait hook drives, and how many times it ran in this case.
    pub(crate) static ACTIVE: Cell<Option<&'static Stack>> = const { Cell::new(None) };
    static WAITS: Cell<u64> = const { Cell::new(0) };
}

/// The block layer waits (for a tag or bio memory): let a well-behaved device and the clock
/// move on, as the kernel's wait hook does with real time and interrupts.
pub(crate) fn wait_hook() {
    let n = WAITS.get() + 1;
    WAITS.set(n);
    assert!(n < 200_000, "no progress while the block layer waits");
    if let Some(s) = ACTIVE.get() {
        s.serve_all();
        s.tick();
    }
}

impl Stack {
    pub(crate) fn dev(&self) -> MutexGuard<'_, Device> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves every available chain properly and lets the driver see the completions.
    pub(crate) fn serve_all(&self) {
        self.dev().run();
        self.reap();
    }

    /// The driver's interrupt handler or poll.
    pub(crate) fn reap(&self) {
        match self.mode {
            Mode::Interrupt => self.hw.handle_irq(),
            Mode::Polling => {
                self.hw.poll();
            }
        }
    }

    /// Time passes: timeouts fire, requeued requests go out again.
    pub(crate) fn tick(&self) {
        let now = CLOCK.fetch_add(5_000, Relaxed) + 5_000;
        self.q.check_timeouts(now);
        self.q.kick();
    }

    /// A bio of `op` at `sector` over `segs` (page index, bytes) of the shared pool.
    pub(crate) fn bio(
        &self,
        i: usize,
        op: Op,
        flags: BioFlags,
        sector: u64,
        segs: &[(usize, u32)],
    ) -> Bio {
        let sh = shared();
        let mut b = sh
            .set
            .alloc(Io(i), op, segs.len(), Wait::Spin)
            .expect("bio");
        for &(page, len) in segs {
            assert!(page < POOL_PAGES && len as usize <= PAGE);
            let phys = hal::mem::virt_to_phys(sh.pool + page * PAGE);
            // SAFETY: a page of the leaked pool, reachable at `phys` through hal's identity
            // translation; the device model alone touches it until the bio completes, and the
            // tests wait for every bio before reusing a page.
            #[allow(unsafe_code)]
            let seg = unsafe { BioVec::new(phys, len) };
            b.add_vec(seg).expect("add_vec");
        }
        b.set_sector(sector);
        b.set_flags(flags);
        b.set_dev(self.q);
        b.set_end_io(io_end);
        b
    }

    pub(crate) fn submit(&self, b: Bio) -> Result<(), BlkError> {
        self.submit_on(0, b)
    }

    /// [`Stack::submit`] through CPU `cpu`'s submission context (its hardware context).
    pub(crate) fn submit_on(&self, cpu: usize, b: Bio) -> Result<(), BlkError> {
        let idx = b.front::<Io>().map(|io| io.0);
        let ctx = if cpu == 0 {
            shared().ctx
        } else {
            shared().cpus[cpu]
        };
        match submit_bio(ctx, b) {
            Ok(()) => Ok(()),
            Err((e, _)) => {
                // Refused before it was queued: it never completes.
                if let Some(i) = idx {
                    BIO_DONE[i].fetch_add(1, SeqCst);
                    BIO_ERR[i].fetch_add(1, SeqCst);
                }
                Err(e)
            }
        }
    }

    /// Runs the device properly until the first `n` bios completed (or `steps` pass).
    pub(crate) fn settle(&self, n: usize, steps: usize) -> bool {
        for _ in 0..steps {
            if (0..n).all(|i| BIO_DONE[i].load(SeqCst) > 0) {
                return true;
            }
            self.serve_all();
            self.tick();
        }
        (0..n).all(|i| BIO_DONE[i].load(SeqCst) > 0)
    }

    /// Everything the stack must look like between cases.
    pub(crate) fn check_idle(&self, n: usize) -> Result<(), String> {
        let errs = core::mem::take(&mut *self.shim.errors.lock().unwrap());
        if !errs.is_empty() {
            return Err(format!("driver broke the completion contract: {errs:?}"));
        }
        for (i, c) in BIO_DONE.iter().enumerate() {
            let (d, want) = (c.load(SeqCst), u32::from(i < n));
            if d != want {
                return Err(format!("bio {i} completed {d} times, not {want}"));
            }
        }
        let held = self.shim.held.load(SeqCst);
        if held != 0 {
            return Err(format!("driver still holds tags {held:#x}"));
        }
        if self.hw.in_flight() != 0 || self.q.tags_in_use() != 0 {
            return Err(format!(
                "left in flight: {} chains, {} tags",
                self.hw.in_flight(),
                self.q.tags_in_use()
            ));
        }
        let d = self.dev();
        if d.dma_violations != 0 {
            return Err(format!(
                "{} descriptors outside the request's buffers (last: {})",
                d.dma_violations, d.dma_detail
            ));
        }
        Ok(())
    }
}

pub(crate) fn reset_counters() {
    for c in BIO_DONE.iter().chain(BIO_ERR.iter()) {
        c.store(0, SeqCst);
    }
    WAITS.set(0);
}

pub(crate) fn fill(page: usize, len: usize, seed: u8) {
    let p = shared().pool + page * PAGE;
    // SAFETY: a page of the leaked pool that no bio in flight uses (between I/Os).
    #[allow(unsafe_code)]
    let s = unsafe { core::slice::from_raw_parts_mut(p as *mut u8, len) };
    for (k, b) in s.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(31) ^ seed;
    }
}

pub(crate) fn page_bytes(page: usize, len: usize) -> Vec<u8> {
    let p = shared().pool + page * PAGE;
    // SAFETY: as in `fill`.
    #[allow(unsafe_code)]
    let s = unsafe { core::slice::from_raw_parts(p as *const u8, len) };
    s.to_vec()
}

#[test]
pub(crate) fn every_ring_size_down_to_the_minimum_splits_large_io() {
    let _s = serial();
    // A ring of two entries carries no request: refused with its size.
    assert!(matches!(
        Setup::plain(2, 128).stack(),
        Err(InitError::RingTooSmall(2))
    ));
    for ring in [4u32, 8, 16, 32, 64, 128, 256] {
        // QEMU sets seg_max to queue-size - 2; offer more to check the driver's own cap too.
        let s = Setup::plain(ring, 254).stack().expect("bring-up");
        let info = *s.hw.info();
        assert_eq!(info.ring_size as u32, ring);
        assert_eq!(
            info.queue_depth as usize,
            crate::depth_for_ring(ring as usize)
        );
        assert_eq!(
            info.max_segments as u32,
            (ring - 2).min(crate::MAX_SEGMENTS as u32),
            "a request of n segments takes n + 2 descriptors"
        );
        assert_eq!(s.q.limits().max_segments, info.max_segments);
        assert_eq!(
            s.dev().ring_size() as u32,
            ring,
            "the device was told the size"
        );
        ACTIVE.set(Some(s));
        reset_counters();
        // Two writes of 24 scattered 4 KiB pages each (96 KiB: split into requests of at most
        // `max_segments` segments), then two reads of the same into other pages.
        let segs = |first: usize| -> Vec<(usize, u32)> {
            (0..MAX_SEGS)
                .map(|k| (first + 2 * k, PAGE as u32))
                .collect()
        };
        for k in 0..MAX_SEGS {
            fill(2 * k, PAGE, ring as u8);
            fill(2 * MAX_SEGS + 2 * k, PAGE, !(ring as u8));
        }
        s.submit(s.bio(0, Op::Write, BioFlags::empty(), 0, &segs(0)))
            .expect("submit");
        s.submit(s.bio(1, Op::Write, BioFlags::FUA, 192, &segs(2 * MAX_SEGS)))
            .expect("submit");
        assert!(s.settle(2, 1000), "writes at ring {ring} never completed");
        for k in 0..MAX_SEGS {
            fill(4 * MAX_SEGS + 2 * k, PAGE, 0);
            fill(6 * MAX_SEGS + 2 * k, PAGE, 0);
        }
        s.submit(s.bio(2, Op::Read, BioFlags::empty(), 0, &segs(4 * MAX_SEGS)))
            .expect("submit");
        s.submit(s.bio(3, Op::Read, BioFlags::empty(), 192, &segs(6 * MAX_SEGS)))
            .expect("submit");
        assert!(s.settle(4, 1000), "reads at ring {ring} never completed");
        s.check_idle(4)
            .unwrap_or_else(|e| panic!("ring {ring}: {e}"));
        for (i, e) in BIO_ERR.iter().take(4).enumerate() {
            assert_eq!(e.load(SeqCst), 0, "ring {ring}: bio {i} failed");
        }
        for k in 0..MAX_SEGS {
            assert!(
                page_bytes(4 * MAX_SEGS + 2 * k, PAGE) == page_bytes(2 * k, PAGE)
                    && page_bytes(6 * MAX_SEGS + 2 * k, PAGE)
                        == page_bytes(2 * MAX_SEGS + 2 * k, PAGE),
                "ring {ring}: page {k} read back wrong"
            );
        }
        let st = s.q.stats().snapshot();
        assert!(
            st.splits > 0 || info.max_segments >= MAX_SEGS as u16,
            "ring {ring}: {MAX_SEGS} segments over a limit of {} must split: {st:?}",
            info.max_segments
        );
        ACTIVE.set(None);
    }
}

#[test]
pub(crate) fn read_only_device_refuses_changes_at_submission() {
    let _s = serial();
    let mut setup = Setup::plain(256, 16);
    setup.features |= F_RO | F_DISCARD | F_WRITE_ZEROES;
    let s = setup.stack().expect("bring-up");
    assert!(s.hw.info().read_only);
    ACTIVE.set(Some(s));
    reset_counters();
    let served = s.dev().served;
    let seg = [(0usize, PAGE as u32)];
    for (i, op) in [Op::Write, Op::Discard, Op::WriteZeroes]
        .into_iter()
        .enumerate()
    {
        let segs: &[(usize, u32)] = if op == Op::Write { &seg } else { &[] };
        let mut b = s.bio(i, op, BioFlags::empty(), 8, segs);
        if op != Op::Write {
            b.set_size(4096).expect("size");
        }
        assert_eq!(
            s.submit(b),
            Err(BlkError::ReadOnly),
            "{op:?} is refused at once with the typed error"
        );
    }
    for flags in [BioFlags::FUA, BioFlags::PREFLUSH] {
        let b = s.bio(3, Op::Write, flags, 8, &seg);
        assert_eq!(s.submit(b), Err(BlkError::ReadOnly));
        BIO_DONE[3].store(0, SeqCst);
        BIO_ERR[3].store(0, SeqCst);
    }
    assert_eq!(s.dev().served, served, "nothing reached the device");
    assert_eq!(s.hw.stats().requests.load(Relaxed), 0, "nor the driver");
    let st = s.q.stats().snapshot();
    assert_eq!((st.retries, st.requests_dispatched), (0, 0), "{st:?}");
    // The driver refuses a change too, should one reach it.
    let mut l = blk::BioList::new();
    l.push_back(s.bio(4, Op::Write, BioFlags::empty(), 8, &seg));
    let rq = Request::standalone(l);
    assert_eq!(
        s.hw.queue_rq(&rq, true),
        Err(QueueRqError::Fatal(BlkError::ReadOnly))
    );
    // Reads and flushes still work.
    reset_counters();
    s.submit(s.bio(0, Op::Read, BioFlags::empty(), 8, &seg))
        .expect("read");
    s.submit(s.bio(1, Op::Flush, BioFlags::empty(), 0, &[]))
        .expect("flush");
    assert!(s.settle(2, 100));
    assert_eq!(BIO_ERR[0].load(SeqCst) + BIO_ERR[1].load(SeqCst), 0);
    assert_eq!(s.dev().modifying, 0, "no write reached the device");
    assert_eq!(s.dev().flushes, 1);
    drop(rq);
    ACTIVE.set(None);
}
