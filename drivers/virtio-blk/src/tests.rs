//! Host tests of the driver against the device model in `fake.rs`: bring-up, I/O through the
//! interrupt path, flush, device errors, and recovery from a corrupt used ring.

use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;
use std::boxed::Box;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

use blk::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use blk::{
    BioFlags, BioList, BioVec, BlkError, BlkStatus, CpuCtx, HwQueue, Op, Queue, QueueConfig,
    Request, TagComplete, Wait, submit_bio,
};

use crate::fake::{Device, FakeTransport, Fault};
use crate::queue::device_error;
use crate::{Mode, QUEUE_DEPTH, RING_SIZE, VirtioBlk};

/// Feature bits (virtio 1.2, 5.2.3 and 6), spelled out here rather than taken from the driver.
const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_RING_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;
/// Offered but never taken by this driver.
const F_RING_INDIRECT_DESC: u64 = 1 << 28;

const SECTORS: u64 = 2048;

/// Completions as the block layer would see them.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u16, BlkStatus)>>);

impl Recorder {
    fn take(&self) -> Vec<(u16, BlkStatus)> {
        core::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl TagComplete for Recorder {
    fn complete(&self, tag: u16, status: BlkStatus, _done_bytes: Option<u32>) {
        self.0.lock().unwrap().push((tag, status));
    }
    fn complete_pt(&self, _tag: u16, _status: BlkStatus, _result: u64) {
        panic!("no passthrough here");
    }
    fn kick(&self) {}
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// One test at a time: the driver learns its used area through a process-wide slot that
/// queue creation fills.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

struct Rig {
    blk: &'static VirtioBlk,
    dev: Arc<Mutex<Device>>,
    done: &'static Recorder,
    set: &'static BioSet<()>,
}

fn rig(features: u64) -> Rig {
    hal::dma::host::init_test_region();
    let t = FakeTransport::new(SECTORS, features, 16, 64 * 1024, 512);
    let dev = t.device();
    let blk = leak(VirtioBlk::new(t, Mode::Interrupt).expect("bring-up"));
    let done = leak(Recorder::default());
    blk.attach(done);
    let slabs: &'static BvecSlabs<64, 64, 64, 64, 8, 8> = leak(BvecSlabs::new());
    let pools: &'static BvecPools = leak(BvecPools::new(slabs, 2));
    let slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let set = leak(BioSet::new(slab, 4, Some(pools)));
    Rig {
        blk,
        dev,
        done,
        set,
    }
}

impl Rig {
    fn dev(&self) -> MutexGuard<'_, Device> {
        self.dev.lock().unwrap()
    }

    /// A request (tag 0) of `op` at `sector` over `bufs`.
    fn request(&self, op: Op, sector: u64, bufs: &mut [&mut [u8]]) -> Request {
        self.request_with(op, BioFlags::empty(), sector, bufs)
    }

    /// A request (tag 0) of `op` with `flags` at `sector` over `bufs`.
    fn request_with(
        &self,
        op: Op,
        flags: BioFlags,
        sector: u64,
        bufs: &mut [&mut [u8]],
    ) -> Request {
        let mut b = self.set.alloc((), op, bufs.len(), Wait::Spin).expect("bio");
        b.set_sector(sector);
        b.set_flags(flags);
        for buf in bufs.iter_mut() {
            let phys = hal::mem::virt_to_phys(buf.as_mut_ptr() as usize);
            // SAFETY: host memory, reachable at `phys` through hal's identity translation;
            // `io`, the only caller, keeps `bufs` borrowed until the device model has served
            // the request and the handler has completed it, and touches nothing meanwhile.
            #[allow(unsafe_code)]
            let seg = unsafe { BioVec::new(phys, buf.len() as u32) };
            b.add_vec(seg).expect("add_vec");
        }
        let mut list = BioList::new();
        list.push_back(b);
        Request::standalone(list)
    }

    /// Lets the device serve what is on the ring, then runs the interrupt handler; returns the
    /// completions delivered.
    fn device_completes(&self) -> Vec<(u16, BlkStatus)> {
        let served = self.dev().run();
        assert!(served > 0, "nothing on the available ring");
        self.blk.handle_irq();
        self.done.take()
    }

    fn io(&self, op: Op, sector: u64, bufs: &mut [&mut [u8]]) -> Vec<(u16, BlkStatus)> {
        let rq = self.request(op, sector, bufs);
        self.blk.queue_rq(&rq, true).expect("queued");
        self.blk.commit();
        assert!(
            self.done.take().is_empty(),
            "completed before the device ran"
        );
        self.device_completes()
    }
}

fn dma_vec(n: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; n].into_boxed_slice())
}

#[test]
fn bring_up_negotiates_and_reads_limits() {
    let _s = serial();
    let offered = F_VERSION_1 | F_SEG_MAX | F_SIZE_MAX | F_BLK_SIZE | F_FLUSH;
    let r = rig(offered | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC);
    let info = *r.blk.info();
    let dev = r.dev();
    assert!(dev.driver_ok(), "DRIVER_OK not set");
    assert_eq!(
        dev.driver_features,
        offered | F_RING_EVENT_IDX,
        "indirect descriptors are not taken"
    );
    assert_eq!(info.features, dev.driver_features);
    assert_eq!(info.capacity, SECTORS);
    assert_eq!((info.block_size, info.max_segments), (512, 16));
    assert_eq!(info.max_segment_size, 64 * 1024);
    assert!(info.flush && info.event_idx && !info.read_only);
    assert_eq!(info.ring_size as usize, RING_SIZE);
    assert_eq!(info.queue_depth as usize, QUEUE_DEPTH);
    let l = r.blk.limits();
    assert_eq!((l.max_segments, l.max_segment_size), (16, 64 * 1024));
}

#[test]
fn legacy_device_is_refused() {
    let _s = serial();
    hal::dma::host::init_test_region();
    let t = FakeTransport::new(SECTORS, F_SEG_MAX | F_FLUSH, 16, 4096, 512);
    assert!(matches!(
        VirtioBlk::new(t, Mode::Interrupt),
        Err(crate::InitError::Legacy)
    ));
}

#[test]
fn legacy_mmio_device_attaches_and_round_trips() {
    let _s = serial();
    hal::dma::host::init_test_region();
    // virtio-mmio version 1: no VERSION_1 bit, one contiguous queue layout.
    let t = FakeTransport::new(SECTORS, F_SEG_MAX | F_FLUSH, 16, 64 * 1024, 512);
    let dev = t.device();
    dev.lock().unwrap().legacy_layout = true;
    let blk = leak(VirtioBlk::new(t, Mode::Interrupt).expect("legacy bring-up"));
    assert_eq!(blk.info().features & F_VERSION_1, 0);
    let done = leak(Recorder::default());
    blk.attach(done);
    let slabs: &'static BvecSlabs<64, 64, 64, 64, 8, 8> = leak(BvecSlabs::new());
    let pools: &'static BvecPools = leak(BvecPools::new(slabs, 2));
    let slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let set = leak(BioSet::new(slab, 4, Some(pools)));
    let r = Rig {
        blk,
        dev,
        done,
        set,
    };
    let a = dma_vec(4096);
    a.fill(0x3c);
    assert_eq!(r.io(Op::Write, 8, &mut [a]), [(0, Ok(()))]);
    assert!(
        r.dev().disk[8 * 512..8 * 512 + 4096]
            .iter()
            .all(|&x| x == 0x3c)
    );
    let b = dma_vec(4096);
    assert_eq!(r.io(Op::Read, 8, &mut [b]), [(0, Ok(()))]);
    assert!(
        b.iter().all(|&x| x == 0x3c),
        "read back through the legacy used ring"
    );
}

#[test]
fn write_then_read_round_trips_through_the_interrupt_path() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX | F_FLUSH);
    let (a, b) = (dma_vec(4096), dma_vec(512));
    for (i, x) in a.iter_mut().enumerate() {
        *x = i as u8 ^ 0x5a;
    }
    b.fill(0xc3);
    assert_eq!(r.io(Op::Write, 8, &mut [a, b]), [(0, Ok(()))]);
    assert!(
        r.dev().disk[8 * 512..8 * 512 + 4096] == *a,
        "write did not land"
    );
    assert!(r.dev().disk[16 * 512..17 * 512].iter().all(|&x| x == 0xc3));
    let (c, d) = (dma_vec(512), dma_vec(4096));
    assert_eq!(r.io(Op::Read, 8, &mut [c, d]), [(0, Ok(()))]);
    assert_eq!(c[..], a[..512]);
    assert_eq!(d[..3584], a[512..]);
    assert!(d[3584..].iter().all(|&x| x == 0xc3));
    let s = r.blk.stats();
    assert_eq!(s.requests.load(Relaxed), 2);
    assert_eq!(s.completions.load(Relaxed), 2);
    assert_eq!(s.interrupts.load(Relaxed), 2);
    assert_eq!(r.blk.in_flight(), 0);
}

#[test]
fn flush_reaches_the_device() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_FLUSH);
    assert_eq!(r.io(Op::Flush, 0, &mut []), [(0, Ok(()))]);
    assert_eq!(r.dev().flushes, 1);
}

#[test]
fn a_failed_flush_step_fails_the_write() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX | F_FLUSH);
    // PREFLUSH: the pre-flush fails, the write is never sent.
    let buf = dma_vec(4096);
    buf.fill(0x5a);
    let rq = r.request_with(Op::Write, BioFlags::PREFLUSH, 8, &mut [&mut *buf]);
    r.dev().inject(Fault::IoErr);
    r.blk.queue_rq(&rq, true).expect("queued");
    r.blk.commit();
    assert_eq!(r.device_completes(), [(0, Err(BlkError::Io))]);
    assert!(
        r.dev().disk[8 * 512..9 * 512].iter().all(|&b| b == 0),
        "write not sent"
    );
    // FUA: the write goes through, its post-flush fails: the request fails, not succeeds.
    let rq = r.request_with(Op::Write, BioFlags::FUA, 8, &mut [&mut *buf]);
    r.dev().inject(Fault::Pass);
    r.dev().inject(Fault::IoErr);
    r.blk.queue_rq(&rq, true).expect("queued");
    r.blk.commit();
    assert_eq!(r.device_completes(), [], "the post-flush is still to run");
    assert_eq!(r.blk.stats().fua_flushes.load(Relaxed), 1);
    assert_eq!(r.device_completes(), [(0, Err(BlkError::Io))]);
    assert_eq!(r.blk.in_flight(), 0);
}

#[test]
fn io_error_status_reaches_the_completion() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    r.dev().inject(Fault::IoErr);
    assert_eq!(
        r.io(Op::Read, 0, &mut [dma_vec(512)]),
        [(0, Err(BlkError::Io))]
    );
    // The device is still fine: no reset for an error the device reported properly.
    assert_eq!(r.io(Op::Read, 0, &mut [dma_vec(512)]), [(0, Ok(()))]);
    assert_eq!(
        r.blk.stats().resets.load(Relaxed),
        0,
        "a reported error is no protocol violation"
    );
}

#[test]
fn short_length_is_a_device_error_without_reset() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    r.dev().inject(Fault::ShortLength);
    assert_eq!(
        r.io(Op::Read, 0, &mut [dma_vec(4096)]),
        [(0, Err(BlkError::DeviceError(device_error::SHORT_LENGTH)))]
    );
    assert_eq!(r.blk.stats().short_lengths.load(Relaxed), 1);
}

#[test]
fn bad_used_id_resets_and_fails_the_request_once() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    let resets = r.dev().resets;
    r.dev().inject(Fault::BadId(RING_SIZE as u32 + 3));
    assert_eq!(
        r.io(Op::Write, 4, &mut [dma_vec(512)]),
        [(0, Err(BlkError::Aborted))],
        "the request in flight fails exactly once, with Aborted"
    );
    assert!(r.dev().resets > resets, "the device was not reset");
    assert_eq!(r.blk.stats().resets.load(Relaxed), 1);
    assert!(r.dev().driver_ok() && !r.blk.is_dead());
    assert_eq!(r.blk.in_flight(), 0);
    // The reset device works.
    assert_eq!(r.io(Op::Write, 4, &mut [dma_vec(512)]), [(0, Ok(()))]);
    assert!(r.done.take().is_empty());
}

#[test]
fn repeated_used_entry_resets_and_completes_once() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    let resets = r.dev().resets;
    r.dev().inject(Fault::Repeat);
    // Two used entries for one chain in flight: the index ran ahead of what is in flight, so
    // neither entry is trusted; the request fails once, with the reset.
    assert_eq!(
        r.io(Op::Read, 0, &mut [dma_vec(512)]),
        [(0, Err(BlkError::Aborted))],
    );
    assert!(
        r.dev().resets > resets,
        "the repeat is a protocol violation"
    );
    assert_eq!(r.blk.stats().bad_used_idx.load(Relaxed), 1);
    assert_eq!(r.io(Op::Read, 0, &mut [dma_vec(512)]), [(0, Ok(()))]);
    assert!(r.done.take().is_empty());
}

/// Per-bio completion counters (a bio's end hook is a plain `fn`).
struct Io {
    done: &'static AtomicU64,
    errors: &'static AtomicU64,
}

fn io_end(bio: blk::Bio) {
    if let Some(io) = bio.front::<Io>() {
        if bio.status().is_err() {
            io.errors.fetch_add(1, Relaxed);
        }
        io.done.fetch_add(1, Relaxed);
    }
}

/// The driver's completions, logged, then passed on to the block layer's queue.
struct Forward {
    log: Recorder,
    queue: spin::Once<&'static Queue<QUEUE_DEPTH>>,
}

impl TagComplete for Forward {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        self.log.complete(tag, status, done_bytes);
        if let Some(q) = self.queue.get() {
            q.complete(tag, status, done_bytes);
        }
    }
    fn complete_pt(&self, _tag: u16, _status: BlkStatus, _result: u64) {
        panic!("no passthrough here");
    }
    fn kick(&self) {
        if let Some(q) = self.queue.get() {
            q.kick();
        }
    }
}

#[test]
fn corrupt_used_entry_resets_and_every_request_completes_once() {
    const N: usize = 4;
    let _s = serial();
    hal::dma::host::init_test_region();
    let t = FakeTransport::new(SECTORS, F_VERSION_1 | F_SEG_MAX | F_FLUSH, 16, 4096, 512);
    let dev = t.device();
    let hw = leak(VirtioBlk::new(t, Mode::Interrupt).expect("bring-up"));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split = leak(BioSet::new(split_slab, 4, None));
    let cfg = QueueConfig::new(hw.info().capacity);
    let q: &'static Queue<QUEUE_DEPTH> = leak(Queue::new(hw, hw.limits(), cfg, split));
    let fwd = leak(Forward {
        log: Recorder::default(),
        queue: spin::Once::new(),
    });
    fwd.queue.call_once(|| q);
    hw.attach(fwd);
    let slabs: &'static BvecSlabs<64, 64, 64, 64, 8, 8> = leak(BvecSlabs::new());
    let pools: &'static BvecPools = leak(BvecPools::new(slabs, 2));
    let slab: &'static BioSlab<Io, 64> = leak(BioSlab::new());
    let set = leak(BioSet::new(slab, 4, Some(pools)));
    let (done, errors) = (leak(AtomicU64::new(0)), leak(AtomicU64::new(0)));
    let ctx = leak(CpuCtx::new(0));

    for i in 0..N {
        let buf = dma_vec(4096);
        buf.fill(0x10 + i as u8);
        let mut b = set
            .alloc(Io { done, errors }, Op::Write, 1, Wait::Spin)
            .expect("bio");
        let seg = blk::mem::DmaRegion::from_static(buf)
            .segment(0, 4096)
            .expect("segment");
        b.add_vec(seg).expect("add_vec");
        b.set_sector(64 * i as u64);
        b.set_dev(q);
        b.set_end_io(io_end);
        submit_bio(ctx, b).map_err(|(e, _)| e).expect("submit");
    }
    assert_eq!(hw.in_flight() as usize, N);
    // The device serves all of them, but the first used entry names no chain.
    dev.lock().unwrap().inject(Fault::BadId(7777));
    assert_eq!(dev.lock().unwrap().run(), N);
    hw.handle_irq();
    let first = fwd.log.take();
    let mut tags: Vec<u16> = first.iter().map(|&(t, _)| t).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags.len(),
        N,
        "each request completed once by the reset: {first:?}"
    );
    assert_eq!(first.len(), N);
    assert!(
        first.iter().all(|&(_, s)| s == Err(BlkError::Aborted)),
        "{first:?}"
    );
    assert_eq!(hw.stats().resets.load(Relaxed), 1);
    assert_eq!(hw.stats().bad_used_ids.load(Relaxed), 1);
    assert!(!hw.is_dead());

    // The block layer retries them on the reset device.
    for _ in 0..8 {
        if done.load(Relaxed) == N as u64 {
            break;
        }
        q.kick();
        if dev.lock().unwrap().run() > 0 {
            hw.handle_irq();
        }
    }
    let second = fwd.log.take();
    assert_eq!(second.len(), N, "{second:?}");
    assert!(second.iter().all(|&(_, s)| s.is_ok()), "{second:?}");
    assert_eq!((done.load(Relaxed), errors.load(Relaxed)), (N as u64, 0));
    for i in 0..N {
        let d = dev.lock().unwrap();
        let at = 64 * i * 512;
        assert!(
            d.disk[at..at + 4096].iter().all(|&x| x == 0x10 + i as u8),
            "write {i} did not land"
        );
    }
    assert_eq!(hw.in_flight(), 0);
}

#[cfg(feature = "fault-injection")]
#[test]
fn fault_injection_hooks_reset_the_device() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    // A used entry in the idle ring: nothing in flight, so only the reset.
    assert!(r.blk.inject_corrupt_used(9999));
    assert!(r.done.take().is_empty());
    assert_eq!(r.blk.stats().resets.load(Relaxed), 1);
    assert!(!r.blk.is_dead());
    // The next real completion read with a wrong id: its request fails with the reset.
    r.blk.corrupt_next_used_id(77);
    assert_eq!(
        r.io(Op::Read, 0, &mut [dma_vec(512)]),
        [(0, Err(BlkError::Aborted))]
    );
    assert_eq!(r.blk.stats().bad_used_ids.load(Relaxed), 2);
    assert_eq!(r.io(Op::Read, 0, &mut [dma_vec(512)]), [(0, Ok(()))]);
}

#[test]
fn used_id_high_bits_are_not_dropped() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    // The chain's head is 0; 0x1_0000 names no descriptor, though its low 16 bits do.
    r.dev().inject(Fault::BadId(0x1_0000));
    assert_eq!(
        r.io(Op::Read, 0, &mut [dma_vec(512)]),
        [(0, Err(BlkError::Aborted))]
    );
    assert_eq!(r.blk.stats().bad_used_ids.load(Relaxed), 1);
    assert_eq!(r.io(Op::Read, 0, &mut [dma_vec(512)]), [(0, Ok(()))]);
}

#[test]
fn used_index_ahead_of_the_chains_in_flight_or_behind_resets() {
    let _s = serial();
    let r = rig(F_VERSION_1 | F_SEG_MAX);
    for (k, jump) in [2u16, 0u16.wrapping_sub(1)].into_iter().enumerate() {
        let buf = dma_vec(512);
        let rq = r.request(Op::Read, 0, &mut [&mut *buf]);
        r.blk.queue_rq(&rq, true).expect("queued");
        r.blk.commit();
        // One chain in flight, not served: the index moves without any element written
        // (ahead: stale entries; behind: going back).
        {
            let mut d = r.dev();
            let idx = d.used_idx();
            d.set_used_idx(idx.wrapping_add(jump));
            d.raise();
        }
        r.blk.handle_irq();
        assert_eq!(
            r.done.take(),
            [(0, Err(BlkError::Aborted))],
            "jump {jump:#x}"
        );
        assert_eq!(r.blk.stats().bad_used_idx.load(Relaxed), k as u64 + 1);
        assert_eq!(r.blk.in_flight(), 0);
    }
    assert_eq!(r.io(Op::Read, 0, &mut [dma_vec(512)]), [(0, Ok(()))]);
}
