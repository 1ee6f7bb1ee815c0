//! Bios, chains, requests, merging, completion, errors, timeouts, passthrough, bounce, waits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hal::PhysAddr;

use super::harness::phys_of;
use super::harness::*;
use crate::bio::{BioFlags, BioIter, BioVec, Op, bio_endio};
use crate::bioset::{BioSet, BioSlab};
use crate::bounce::{BouncePad, BouncePage, Bouncer};
use crate::device::{CpuCtx, submit_bio};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::ramdisk::{CompletionMode, PT_FLUSH, PT_IDENTIFY, RamDisk};
use crate::request::MAX_ABORTS;
use crate::request::{PtCmd, PtResult, Queue, QueueConfig, TimeoutAction};
use crate::slab::{Mempool, Slab, Wait};
use crate::split::bio_split;
use crate::wait::{submit_bio_async, submit_bio_wait};

#[test]
fn iterator_advances_by_bytes() {
    let vecs = [
        // SAFETY: never submitted: only the iterator's arithmetic looks at it.
        unsafe { BioVec::new(PhysAddr(0x1000), 1024) },
        // SAFETY: never submitted: only the iterator's arithmetic looks at it.
        unsafe { BioVec::new(PhysAddr(0x9000), 512) },
        // SAFETY: never submitted: only the iterator's arithmetic looks at it.
        unsafe { BioVec::new(PhysAddr(0x20000), 2048) },
    ];
    let mut it = BioIter {
        sector: 10,
        size: 3584,
        idx: 0,
        done: 0,
    };
    it.advance(&vecs, 512);
    assert_eq!((it.sector, it.size, it.idx, it.done), (11, 3072, 0, 512));
    it.advance(&vecs, 1024);
    assert_eq!((it.sector, it.size, it.idx, it.done), (13, 2048, 2, 0));
    let segs: Vec<_> = crate::bio::Segments::new(&vecs, it)
        .map(|v| (v.addr(), v.len()))
        .collect();
    assert_eq!(segs, vec![(PhysAddr(0x20000), 2048)]);
    it.advance(&vecs, 1536);
    let segs: Vec<_> = crate::bio::Segments::new(&vecs, it)
        .map(|v| (v.addr(), v.len()))
        .collect();
    assert_eq!(segs, vec![(PhysAddr(0x20000 + 1536), 512)]);
}

struct Other(#[allow(dead_code)] u8);

#[test]
fn front_pad_is_typed() {
    let e = env(64, QueueLimits::new());
    let mut b = e.bio(Op::Read, 0, &[]);
    assert_eq!(b.front::<Io>().map(|io| io.tag), Some(0));
    b.front_mut::<Io>().expect("pad").tag = 77;
    assert_eq!(e.set.front(&b).map(|io| io.tag), Some(77));
    assert!(b.front::<Other>().is_none());
    assert!(b.front::<()>().is_none());
    // Inline vectors, then pooled ones up to 256, never more.
    assert_eq!(b.max_vecs(), 4);
    for n in [5usize, 16, 17, 64, 100, 200, 256] {
        let b = e
            .set
            .alloc(
                Io {
                    done: e.done,
                    errors: e.errors,
                    tag: 0,
                },
                Op::Read,
                n,
                Wait::Never,
            )
            .expect("bio");
        assert!(b.max_vecs() >= n);
    }
    assert_eq!(
        e.set
            .alloc(
                Io {
                    done: e.done,
                    errors: e.errors,
                    tag: 0
                },
                Op::Read,
                257,
                Wait::Never
            )
            .err(),
        Some(BlkError::InvalidArgument)
    );
}

#[test]
fn chain_parent_completes_once_after_children_with_first_error() {
    let e = env(64, QueueLimits::new());
    let parent = e.bio(Op::Read, 0, &[]);
    let mut kids = Vec::new();
    for _ in 0..3 {
        let mut k = e.bio(Op::Read, 0, &[]);
        k.clear_end_io();
        k.chain_to(&parent);
        kids.push(k);
    }
    assert_eq!(parent.remaining(), 4);
    bio_endio(parent);
    assert_eq!(e.done(), 0, "parent waits for its children");
    let k2 = kids.pop().unwrap();
    k2.fail(BlkError::Io);
    bio_endio(k2);
    let k1 = kids.pop().unwrap();
    k1.fail(BlkError::Timeout);
    bio_endio(k1);
    assert_eq!(e.done(), 0);
    bio_endio(kids.pop().unwrap());
    assert_eq!(e.done(), 1);
    assert_eq!(e.errors(), 1);
}

#[test]
fn split_front_and_rest() {
    let e = env(64, QueueLimits::new());
    let data = buf(8192);
    let (a, b) = data.split_at_mut(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut bio = e.bio(Op::Write, 8, &[unsafe { seg(a) }, unsafe { seg(b) }]);
    let front = bio_split(&mut bio, 6144, e.split, Wait::Never).expect("split");
    assert_eq!(
        (front.sector(), front.size(), front.vecs().len()),
        (8, 6144, 2)
    );
    assert_eq!((bio.sector(), bio.size()), (20, 2048));
    assert_eq!(bio.segments().next().map(|v| v.len()), Some(2048));
    bio_endio(bio);
    assert_eq!(e.done(), 0);
    bio_endio(front);
    assert_eq!(e.done(), 1);
}

#[test]
fn write_then_read_round_trip() {
    let e = env(256, QueueLimits::new());
    let src = buf(16384);
    src.copy_from_slice(&pattern(1, 16384));
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let bio = e.bio(Op::Write, 16, &[unsafe { seg(src) }]);
    submit_bio(e.ctx, bio).expect("submit");
    assert_eq!(e.done(), 1);
    assert_eq!(e.disk_bytes(16, 16384), pattern(1, 16384));
    let dst = buf(16384);
    let (x, y) = dst.split_at_mut(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(
        e.ctx,
        e.bio(Op::Read, 16, &[unsafe { seg(x) }, unsafe { seg(y) }]),
    )
    .expect("submit");
    assert_eq!(e.done(), 2);
    assert_eq!(dst.to_vec(), pattern(1, 16384));
    assert_eq!(e.errors(), 0);
    assert_eq!(e.disk.violations.load(Ordering::SeqCst), 0);
}

#[test]
fn refused_bios_come_back_with_typed_errors() {
    let l = QueueLimits {
        logical_block_size: 4096,
        ..QueueLimits::new()
    };
    let e = env(64, l);
    let b = buf(8192);
    let (a, rest) = b.split_at_mut(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let bio = e.bio(Op::Write, 1, &[unsafe { seg(a) }]);
    let (err, bio) = submit_bio(e.ctx, bio).expect_err("misaligned sector");
    assert_eq!(err, BlkError::Misaligned);
    assert_eq!(bio.sector(), 1, "the bio is handed back unchanged");
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let (err, _) =
        submit_bio(e.ctx, e.bio(Op::Write, 64, &[unsafe { seg(rest) }])).expect_err("past the end");
    assert_eq!(err, BlkError::OutOfRange);
    let (err, _) = submit_bio(e.ctx, e.bio(Op::Discard, 0, &[])).expect_err("no discard");
    assert_eq!(err, BlkError::Unsupported);
    // Misaligned buffer: caught by the queue's DMA alignment check, reported through end_io.
    // SAFETY: only its address is used below, for a 512-byte segment inside `rest`.
    let odd = unsafe { BioVec::new(PhysAddr(phys_of(rest).0 + 2), 4096) };
    let l2 = QueueLimits {
        dma_alignment: 512,
        ..QueueLimits::new()
    };
    let e2 = env(64, l2);
    // SAFETY: 512 bytes inside `rest`, left alone until the bio completes; the queue fails it
    // on alignment before any copy.
    submit_bio(
        e2.ctx,
        e2.bio(Op::Read, 0, &[unsafe { BioVec::new(odd.addr(), 512) }]),
    )
    .expect("accepted up front");
    assert_eq!((e2.done(), e2.errors()), (1, 1));
    assert_eq!(
        e2.disk.requests.load(Ordering::SeqCst),
        0,
        "never reached the driver"
    );
    let ro = env_with(64, QueueLimits::new(), CompletionMode::Inline, |c| {
        c.read_only = true
    });
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let (err, _) =
        submit_bio(ro.ctx, ro.bio(Op::Write, 0, &[unsafe { seg(a) }])).expect_err("read-only");
    assert_eq!(err, BlkError::ReadOnly);
}

#[test]
fn plug_merges_back_and_front_into_one_batch() {
    let e = env(1024, QueueLimits::new());
    let mem = buf(8 * 4096);
    mem.copy_from_slice(&pattern(2, 8 * 4096));
    let chunks: Vec<&mut [u8]> = mem.chunks_mut(4096).collect();
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let segs: Vec<BioVec> = chunks.into_iter().map(|c| unsafe { seg(c) }).collect();
    {
        let _plug = e.ctx.plug();
        // 4..8 ascending (back merges), then 3,2,1,0 descending (front merges).
        for i in 4..8u64 {
            submit_bio(e.ctx, e.bio(Op::Write, 100 + i * 8, &[segs[i as usize]])).expect("submit");
        }
        for i in (0..4u64).rev() {
            submit_bio(e.ctx, e.bio(Op::Write, 100 + i * 8, &[segs[i as usize]])).expect("submit");
        }
        assert_eq!(
            e.disk.requests.load(Ordering::SeqCst),
            0,
            "held by the plug"
        );
    }
    let s = e.q.stats().snapshot();
    assert_eq!(s.merges_back, 3);
    assert_eq!(s.merges_front, 4);
    assert_eq!(s.requests_dispatched, 1);
    assert_eq!(e.done(), 8);
    assert_eq!(e.disk_bytes(100, 8 * 4096), pattern(2, 8 * 4096));
    // Contiguous memory: map_sg merged everything into one entry.
    assert_eq!(e.disk.sg_entries.load(Ordering::SeqCst), 1);
}

#[test]
fn merges_respect_limits() {
    let l = QueueLimits {
        max_sectors: 16,
        ..QueueLimits::new()
    };
    let e = env(1024, l);
    let mem = buf(8 * 4096);
    {
        let _plug = e.ctx.plug();
        for (i, c) in mem.chunks_mut(4096).enumerate() {
            // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
            submit_bio(e.ctx, e.bio(Op::Read, i as u64 * 8, &[unsafe { seg(c) }])).expect("submit");
        }
        // Different op never merges.
        submit_bio(e.ctx, e.bio(Op::Flush, 0, &[])).expect("flush");
    }
    let s = e.q.stats().snapshot();
    assert_eq!(s.requests_dispatched, 4 + 1);
    assert_eq!(s.merges_back, 4);
    assert_eq!(e.done(), 9);
    assert_eq!(e.disk.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(e.disk.violations.load(Ordering::SeqCst), 0);
}

#[test]
fn large_bio_is_split_to_limits() {
    let l = QueueLimits {
        max_sectors: 24,
        max_segments: 4,
        max_segment_size: 4096,
        ..QueueLimits::new()
    };
    let e = env(2048, l);
    let mem = buf(64 * 1024);
    mem.copy_from_slice(&pattern(3, 64 * 1024));
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let segs: Vec<BioVec> = mem.chunks_mut(8192).map(|c| unsafe { seg(c) }).collect();
    submit_bio(e.ctx, e.bio(Op::Write, 0, &segs)).expect("submit");
    assert_eq!(e.done(), 1, "the parent completes once");
    assert_eq!(e.errors(), 0);
    let s = e.q.stats().snapshot();
    assert!(s.splits >= 4, "{s:?}");
    assert_eq!(s.requests_dispatched, s.splits + 1);
    assert_eq!(e.disk.violations.load(Ordering::SeqCst), 0);
    assert_eq!(e.disk_bytes(0, 64 * 1024), pattern(3, 64 * 1024));
}

#[test]
fn error_mid_request_partial_success_and_bounded_retries() {
    let e = env(256, QueueLimits::new());
    e.disk.fail_at(Some(20));
    let mem = buf(4 * 4096);
    mem.copy_from_slice(&pattern(4, 4 * 4096));
    {
        let _plug = e.ctx.plug();
        for (i, c) in mem.chunks_mut(4096).enumerate() {
            submit_bio(
                e.ctx,
                // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
                e.bio(Op::Write, i as u64 * 8, &[unsafe { seg(c) }]),
            )
            .expect("submit");
        }
    }
    // Bios for sectors 0..8 and 8..16 succeeded; 16..24 holds the bad sector; 24..32 fails too.
    assert_eq!(e.done(), 4);
    assert_eq!(e.errors(), 2);
    let s = e.q.stats().snapshot();
    assert_eq!(s.retries, 3, "max_retries");
    assert_eq!(s.requests_completed, 1);
    assert_eq!(e.disk_bytes(0, 8192), pattern(4, 4 * 4096)[..8192].to_vec());
    e.disk.fail_at(None);
    assert_eq!(e.q.tags_in_use(), 0);
}

#[test]
fn requests_cut_off_by_a_reset_go_again_without_using_retries() {
    let e = env(256, QueueLimits::new());
    let mem = buf(4096);
    for (i, b) in mem.iter_mut().enumerate() {
        *b = i as u8;
    }
    // More resets in a row than `max_retries` (3): each cut-off goes again for free.
    let aborts = MAX_ABORTS as u32;
    e.disk.abort_next(aborts);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(e.ctx, e.bio(Op::Write, 0, &[unsafe { seg(mem) }])).unwrap();
    assert_eq!((e.done(), e.errors()), (1, 0), "the write succeeds");
    let s = e.q.stats().snapshot();
    assert_eq!(s.retries, 0, "a cut-off is not a retry");
    assert_eq!(s.requeues, aborts as u64);
    assert_eq!(e.disk.requests.load(Ordering::SeqCst), aborts as u64 + 1);
    assert_eq!(
        e.disk_bytes(0, 4096),
        mem.to_vec(),
        "the data is on the disk"
    );
    // A device that resets forever: the request ends with `Aborted` after `MAX_ABORTS`.
    e.disk.abort_next(u32::MAX);
    // SAFETY: as above.
    submit_bio(e.ctx, e.bio(Op::Write, 8, &[unsafe { seg(mem) }])).unwrap();
    assert_eq!((e.done(), e.errors()), (2, 1), "bounded: the write fails");
    assert_eq!(e.q.stats().snapshot().retries, 0);
    assert_eq!(
        e.disk.requests.load(Ordering::SeqCst),
        2 * (aborts as u64 + 1),
        "dispatched MAX_ABORTS more times, then failed"
    );
    // A flush cut off by a reset is not known to have happened: it fails at once.
    e.disk.abort_next(1);
    submit_bio(e.ctx, e.bio(Op::Flush, 0, &[])).unwrap();
    assert_eq!((e.done(), e.errors()), (3, 2), "the cut-off flush fails");
    e.disk.abort_next(0);
    assert_eq!(e.q.tags_in_use(), 0);
}

#[test]
fn failed_flush_is_not_retried() {
    let e = env(256, QueueLimits::new());
    // The first flush fails, a second would succeed: the bio must still end with the error.
    e.disk.fail_flushes(0, 1);
    submit_bio(e.ctx, e.bio(Op::Flush, 0, &[])).expect("flush");
    assert_eq!(
        (e.done(), e.errors()),
        (1, 1),
        "the flush bio ends with the error"
    );
    assert_eq!(
        e.q.stats().snapshot().retries,
        0,
        "a failed flush is not retried"
    );
    assert_eq!(
        e.disk.flushes.load(Ordering::SeqCst),
        1,
        "one flush reached the disk"
    );
    assert_eq!(e.q.tags_in_use(), 0);
    // The device works again: a new flush succeeds.
    submit_bio(e.ctx, e.bio(Op::Flush, 0, &[])).expect("flush");
    assert_eq!((e.done(), e.errors()), (2, 1));
}

#[test]
fn failed_preflush_or_fua_write_is_not_retried() {
    let e = env(256, QueueLimits::new());
    let mem = buf(2 * 4096);
    let (a, b) = mem.split_at_mut(4096);
    // The pre-flush fails once.
    e.disk.fail_flushes(0, 1);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut w = e.bio(Op::Write, 0, &[unsafe { seg(a) }]);
    w.set_flags(BioFlags::FUA | BioFlags::PREFLUSH);
    submit_bio(e.ctx, w).unwrap();
    assert_eq!(
        (e.done(), e.errors()),
        (1, 1),
        "pre-flush failed: the write fails"
    );
    assert_eq!(e.q.stats().snapshot().retries, 0);
    assert_eq!(e.disk.flushes.load(Ordering::SeqCst), 1);
    // The pre-flush passes, the data reaches the medium, the FUA flush after it fails once.
    e.disk.fail_flushes(1, 1);
    // SAFETY: as above.
    let mut w = e.bio(Op::Write, 8, &[unsafe { seg(b) }]);
    w.set_flags(BioFlags::FUA | BioFlags::PREFLUSH);
    submit_bio(e.ctx, w).unwrap();
    assert_eq!(
        (e.done(), e.errors()),
        (2, 2),
        "FUA flush failed: the write fails"
    );
    assert_eq!(e.q.stats().snapshot().retries, 0);
    assert_eq!(
        e.disk.flushes.load(Ordering::SeqCst),
        3,
        "each flush step ran once"
    );
    assert_eq!(e.q.tags_in_use(), 0);
}

#[test]
fn partial_completion_requeues_the_rest() {
    struct Half;
    impl crate::request::HwQueue for Half {
        fn queue_rq(
            &self,
            rq: &crate::request::Request,
            _l: bool,
        ) -> Result<(), crate::request::QueueRqError> {
            let q = HALF_Q.get().expect("queue");
            let n = if rq.bytes() > 4096 {
                rq.bytes() / 2
            } else {
                rq.bytes()
            };
            q.complete(rq.tag(), Ok(()), Some(n));
            Ok(())
        }
    }
    static HALF_Q: std::sync::OnceLock<&'static Queue<8>> = std::sync::OnceLock::new();
    let split = split_set();
    let q: &'static Queue<8> = leak(Queue::new(
        leak(Half),
        QueueLimits::new(),
        QueueConfig::new(1024),
        split,
    ));
    let _ = HALF_Q.set(q);
    let e = env(64, QueueLimits::new());
    let mem = buf(16384);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Read, 0, &[unsafe { seg(mem) }]);
    b.set_dev(q);
    submit_bio(e.ctx, b).expect("submit");
    assert_eq!(e.done(), 1);
    let s = q.stats().snapshot();
    assert_eq!(s.requeues, 2, "16K -> 8K left -> 4K left -> done");
    assert_eq!(s.requests_dispatched, 3);
}

static CLOCK: AtomicU64 = AtomicU64::new(0);
fn clock() -> u64 {
    CLOCK.load(Ordering::SeqCst)
}

#[test]
fn timeouts_retry_then_fail() {
    let e = env_with(64, QueueLimits::new(), CompletionMode::Deferred, |c| {
        c.clock = clock;
        c.timeout_ns = 1000;
        c.max_retries = 1;
    });
    let mem = buf(4096);
    e.disk.drop_completions(1);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(e.ctx, e.bio(Op::Read, 0, &[unsafe { seg(mem) }])).expect("submit");
    assert_eq!(e.q.check_timeouts(clock() + 10), 0, "not yet");
    assert_eq!(e.q.check_timeouts(clock() + 5000), 1);
    // Retried: the second attempt's completion is delivered.
    e.disk.process_completions();
    assert_eq!((e.done(), e.errors()), (1, 0));
    let s = e.q.stats().snapshot();
    assert_eq!((s.timeouts, s.retries), (1, 1));
    // Two lost completions with one retry allowed: the bio fails with Timeout.
    e.disk.drop_completions(2);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(e.ctx, e.bio(Op::Read, 0, &[unsafe { seg(mem) }])).expect("submit");
    assert_eq!(e.q.check_timeouts(clock() + 5000), 1);
    assert_eq!(e.q.check_timeouts(clock() + 5000), 1);
    assert_eq!((e.done(), e.errors()), (2, 1));
    // A late completion for a tag no longer in flight is dropped.
    e.q.complete(0, Ok(()), None);
    assert!(e.q.stats().snapshot().late_completions >= 1);
    // Extend keeps it in flight.
    e.disk.set_timeout_action(TimeoutAction::Extend);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(e.ctx, e.bio(Op::Read, 0, &[unsafe { seg(mem) }])).expect("submit");
    assert_eq!(e.q.check_timeouts(clock() + 5000), 1);
    e.disk.process_completions();
    assert_eq!((e.done(), e.errors()), (3, 1));
    assert_eq!(e.q.tags_in_use(), 0);
}

#[test]
fn passthrough_travels_the_queue() {
    let e = env(128, QueueLimits::new());
    let out = buf(8);
    let r =
        e.q.passthrough_wait(
            PtCmd {
                opcode: PT_IDENTIFY,
                // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
                data: Some(unsafe { seg(out) }),
                ..PtCmd::default()
            },
            std::thread::yield_now,
        )
        .expect("identify");
    assert_eq!(r.status, Ok(()));
    assert_eq!(r.result, 128);
    assert_eq!(u64::from_le_bytes(out[..8].try_into().unwrap()), 128);
    static GOT: AtomicU64 = AtomicU64::new(0);
    fn done(r: PtResult) {
        assert_eq!(r.private, 5);
        GOT.fetch_add(if r.status.is_ok() { 1 } else { 100 }, Ordering::SeqCst);
    }
    e.q.passthrough(
        PtCmd {
            opcode: PT_FLUSH,
            ..PtCmd::default()
        },
        done,
        5,
    )
    .expect("flush");
    e.q.passthrough(
        PtCmd {
            opcode: 99,
            ..PtCmd::default()
        },
        done,
        5,
    )
    .expect("unknown");
    assert_eq!(GOT.load(Ordering::SeqCst), 101);
    assert_eq!(e.q.stats().snapshot().passthrough, 3);
    assert_eq!(e.q.tags_in_use(), 0);
}

static BOUNCE_SLAB: Slab<BouncePage, 32> = Slab::new();

#[test]
fn bounce_above_dma_limit() {
    let pages_slab: &'static Slab<BouncePage, 32> = &BOUNCE_SLAB;
    let pages: &'static Mempool<BouncePage> = leak(Mempool::new(pages_slab, 4));
    let pad_slab: &'static BioSlab<BouncePad, 32> = leak(BioSlab::new());
    let pads: &'static BioSet<BouncePad> = leak(BioSet::new(pad_slab, 2, Some(bvecs())));
    let bouncer: &'static Bouncer = leak(Bouncer::new(pages, pads));
    // The limit sits just above the bounce pages; test buffers live higher on the heap.
    let hi = pages_slab as *const _ as u64 + std::mem::size_of::<Slab<BouncePage, 32>>() as u64;
    let data = buf(48 * 1024);
    assert!(
        phys_of(data).0 > hi,
        "test layout: heap buffer above the bounce pages"
    );
    let l = QueueLimits {
        dma_limit: hi,
        ..QueueLimits::new()
    };
    let disk: &'static RamDisk = leak(RamDisk::new(buf(512 * 512), l, CompletionMode::Inline));
    let split = split_set();
    let q: &'static Queue<16> =
        leak(Queue::new(disk, l, QueueConfig::new(512), split).with_bounce(bouncer));
    disk.attach(q);
    let e = env(8, QueueLimits::new());
    data.copy_from_slice(&pattern(9, 48 * 1024));
    let mut b = e.bio(
        Op::Write,
        8,
        &[
            // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
            unsafe { seg(&mut data[..40 * 1024]) },
            // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
            unsafe { seg(&mut data[40 * 1024..]) },
        ],
    );
    b.set_dev(q);
    submit_bio(e.ctx, b).expect("submit");
    assert_eq!((e.done(), e.errors()), (1, 0));
    assert_eq!(
        disk.violations.load(Ordering::SeqCst),
        0,
        "no segment above the limit reached the driver"
    );
    let mut on_disk = vec![0u8; 48 * 1024];
    assert!(disk.store().read_bytes(8 * 512, &mut on_disk));
    assert_eq!(on_disk, pattern(9, 48 * 1024));
    let back = buf(48 * 1024);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut r = e.bio(Op::Read, 8, &[unsafe { seg(back) }]);
    r.set_dev(q);
    submit_bio(e.ctx, r).expect("submit");
    assert_eq!((e.done(), e.errors()), (2, 0));
    assert_eq!(back.to_vec(), pattern(9, 48 * 1024));
    assert!(q.stats().snapshot().bounces >= 2);
    assert_eq!(pages.stats().in_use, 0);
}

#[test]
fn discard_write_zeroes_flags() {
    let l = QueueLimits {
        max_discard_sectors: 64,
        max_write_zeroes_sectors: 8,
        ..QueueLimits::new()
    };
    let e = env(256, l);
    assert!(e.disk.store().write_bytes(0, &[0xff; 256 * 512]));
    let mut d = e.bio(Op::Discard, 0, &[]);
    d.set_size(100 * 512).unwrap();
    submit_bio(e.ctx, d).unwrap();
    let mut z = e.bio(Op::WriteZeroes, 128, &[]);
    z.set_size(20 * 512).unwrap();
    submit_bio(e.ctx, z).unwrap();
    assert_eq!((e.done(), e.errors()), (2, 0));
    assert_eq!(e.q.stats().snapshot().splits, 1 + 2);
    assert!(e.disk_bytes(0, 100 * 512).iter().all(|&b| b == 0));
    assert!(e.disk_bytes(100, 28 * 512).iter().all(|&b| b == 0xff));
    assert!(e.disk_bytes(128, 20 * 512).iter().all(|&b| b == 0));
    let mem = buf(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut w = e.bio(Op::Write, 0, &[unsafe { seg(mem) }]);
    w.set_flags(BioFlags::FUA | BioFlags::PREFLUSH);
    submit_bio(e.ctx, w).unwrap();
    assert_eq!(e.disk.flushes.load(Ordering::SeqCst), 2);
}

#[test]
fn blocking_wait_and_future_with_completion_thread() {
    let e = env_with(128, QueueLimits::new(), CompletionMode::Deferred, |_| {});
    let stop: &'static AtomicBool = leak(AtomicBool::new(false));
    let disk = e.disk;
    let q = e.q;
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            disk.process_completions();
            q.kick();
            std::thread::yield_now();
        }
    });
    let mem = buf(4096);
    mem.copy_from_slice(&pattern(5, 4096));
    let (st, bio) = submit_bio_wait(
        e.ctx,
        // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
        e.bio(Op::Write, 8, &[unsafe { seg(mem) }]),
        std::thread::yield_now,
    );
    assert_eq!(st, Ok(()));
    assert_eq!(bio.front::<Io>().map(|io| io.tag), Some(8));
    drop(bio);
    assert_eq!(e.done(), 0, "end_io was replaced by the waiter");
    let back = buf(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let fut = submit_bio_async(e.ctx, e.bio(Op::Read, 8, &[unsafe { seg(back) }]));
    let (st, bio) = block_on(fut);
    assert_eq!(st, Ok(()));
    assert!(bio.is_some());
    drop(bio);
    assert_eq!(back.to_vec(), pattern(5, 4096));
    // Refused up front: handed back through the future.
    let (st, bio) = block_on(submit_bio_async(
        e.ctx,
        // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
        e.bio(Op::Read, 1 << 40, &[unsafe { seg(back) }]),
    ));
    assert_eq!(st, Err(BlkError::OutOfRange));
    assert!(bio.is_some());
    drop(bio);
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(e.set.stats().in_use, 0, "every bio returned to its pool");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct W(std::thread::Thread);
    impl std::task::Wake for W {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(W(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(5));
    }
}

/// Only the reserves are left (another user holds the whole shared slab): 10,000 I/Os still
/// complete, each may-wait allocation waiting for a completion to return a bio.
#[test]
fn forward_progress_on_reserves_only() {
    let e = env_with(256, QueueLimits::new(), CompletionMode::Deferred, |_| {});
    let slab: &'static BioSlab<Io, 64> = leak(BioSlab::new());
    let hog: &'static BioSet<Io> = leak(BioSet::new(slab, 0, None));
    let set: &'static BioSet<Io> = leak(BioSet::new(slab, 4, None));
    set.init().unwrap();
    let mut held = Vec::new();
    while let Ok(b) = hog.alloc(
        Io {
            done: e.done,
            errors: e.errors,
            tag: 0,
        },
        Op::Read,
        1,
        Wait::Never,
    ) {
        held.push(b);
    }
    assert_eq!(held.len(), 60, "the shared part is exhausted");
    let stop: &'static AtomicBool = leak(AtomicBool::new(false));
    let (disk, q) = (e.disk, e.q);
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            disk.process_completions();
            q.kick();
            std::thread::yield_now();
        }
    });
    let mem = buf(4096);
    for i in 0..10_000u64 {
        let mut b = set
            .alloc(
                Io {
                    done: e.done,
                    errors: e.errors,
                    tag: i,
                },
                Op::Write,
                1,
                Wait::Hook(std::thread::yield_now),
            )
            .expect("may-wait alloc never fails");
        // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
        b.add_vec(unsafe { seg(mem) }).unwrap();
        b.set_sector((i % 32) * 8);
        b.set_dev(e.q);
        b.set_end_io(io_end);
        submit_bio(e.ctx, b).expect("submit");
    }
    while e.done() < 10_000 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    assert_eq!(e.errors(), 0);
    let st = set.stats();
    assert_eq!(st.allocs, 10_000);
    assert_eq!(st.reserve_hits, 10_000, "every bio came from the reserve");
    assert!(st.waits > 0);
    assert!(st.high_water <= 4);
    assert_eq!(st.in_use, 0);
}

#[test]
fn busy_driver_requeues() {
    let e = env(64, QueueLimits::new());
    e.disk.busy_next(2);
    let mem = buf(4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    submit_bio(e.ctx, e.bio(Op::Read, 0, &[unsafe { seg(mem) }])).unwrap();
    // The first try was refused and requeued; the submit path's kick retried it.
    for _ in 0..3 {
        e.q.kick();
    }
    assert_eq!(e.done(), 1);
    assert_eq!(e.q.stats().snapshot().requeues, 2);
}

#[test]
fn two_cpus_submit_concurrently() {
    let e = env_with(4096, QueueLimits::new(), CompletionMode::Inline, |_| {});
    let ctx2: &'static CpuCtx = leak(CpuCtx::new(1));
    let (q, set, done, errors) = (e.q, e.set, e.done, e.errors);
    let ts: Vec<_> = [e.ctx, ctx2]
        .into_iter()
        .enumerate()
        .map(|(n, ctx)| {
            std::thread::spawn(move || {
                let mem = buf(4096);
                for i in 0..2000u64 {
                    let mut b = set
                        .alloc(
                            Io {
                                done,
                                errors,
                                tag: i,
                            },
                            Op::Write,
                            1,
                            Wait::Spin,
                        )
                        .unwrap();
                    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
                    b.add_vec(unsafe { seg(mem) }).unwrap();
                    b.set_sector((n as u64 * 2000 + i) % 4000);
                    b.set_dev(q);
                    b.set_end_io(io_end);
                    let _p = (i % 7 == 0).then(|| ctx.plug());
                    submit_bio(ctx, b).unwrap();
                }
            })
        })
        .collect();
    for t in ts {
        t.join().unwrap();
    }
    assert_eq!((e.done(), e.errors()), (4000, 0));
    assert_eq!(e.q.tags_in_use(), 0);
}

#[test]
fn with_depth_keeps_tags_in_use_within_the_depth() {
    let limits = QueueLimits::new();
    let disk: &'static RamDisk = leak(RamDisk::new(
        buf(256 * 512),
        limits,
        CompletionMode::Deferred,
    ));
    let c = QueueConfig::new(disk.capacity());
    let q: &'static Queue<64> = leak(Queue::new(disk, limits, c, split_set()).with_depth(2));
    disk.attach(q);
    let set: &'static BioSet<Io> = leak(BioSet::new(
        leak(BioSlab::<Io, 64>::new()),
        8,
        Some(bvecs()),
    ));
    let (done, errors) = counters();
    let ctx = leak(CpuCtx::new(0));
    let mem = buf(6 * 512);
    let mut peak = 0;
    for (i, chunk) in mem.chunks_mut(512).enumerate() {
        let mut b = set
            .alloc(
                Io {
                    done,
                    errors,
                    tag: i as u64,
                },
                Op::Write,
                1,
                Wait::Spin,
            )
            .expect("bio");
        // SAFETY: the buffer is leaked and left alone until every bio completed.
        b.add_vec(unsafe { seg(chunk) }).expect("add_vec");
        // Far apart: nothing merges.
        b.set_sector(i as u64 * 16);
        b.set_dev(q);
        b.set_end_io(io_end);
        submit_bio(ctx, b).map_err(|(e, _)| e).expect("submit");
        peak = peak.max(q.tags_in_use());
    }
    assert_eq!(peak, 2, "the third request waited for a tag");
    while disk.process_completions() > 0 {}
    assert_eq!(
        (done.load(Ordering::SeqCst), errors.load(Ordering::SeqCst)),
        (6, 0)
    );
    assert_eq!(q.tags_in_use(), 0);
}
