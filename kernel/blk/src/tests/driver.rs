//! The shared driver plumbing in `blk::driver`: `with_sg`, completion batches and the sink,
//! `block_range`.

use std::sync::Mutex;

use hal::PhysAddr;

use super::harness::split_set;
use crate::bio::{Bio, BioList, BioVec, Op};
use crate::driver::{
    Completion, CompletionBatch, CompletionSink, Deliver, Delivered, TagComplete, TagMaskBatch,
    block_range, with_sg,
};
use crate::error::{BlkError, BlkStatus};
use crate::limits::QueueLimits;
use crate::map_sg::SgEntry;
use crate::request::Request;
use crate::slab::Wait;

fn bio(op: Op, sector: u64, segs: &[(u64, u32)]) -> Bio {
    let mut b = split_set()
        .alloc((), op, segs.len(), Wait::Spin)
        .expect("bio");
    for &(a, l) in segs {
        // SAFETY: these bios only go through `map_sg`, `with_sg` and the batches, which read
        // segment addresses and lengths and never reach the memory; no device or copy sees them.
        b.add_vec(unsafe { BioVec::new(PhysAddr(a), l) })
            .expect("add_vec");
    }
    b.set_sector(sector);
    b
}

fn request(op: Op, sector: u64, segs: &[(u64, u32)]) -> Request {
    let mut l = BioList::new();
    l.push_back(bio(op, sector, segs));
    Request::standalone(l)
}

fn entries(v: &[SgEntry]) -> Vec<(u64, u32)> {
    v.iter().map(|e| (e.addr.0, e.len)).collect()
}

#[test]
fn with_sg_small_and_large_paths_give_the_same_map_as_map_sg() {
    let l = QueueLimits::new();
    // Two contiguous segments: the small path, merged into one entry.
    let rq = request(Op::Read, 8, &[(0x1000, 512), (0x1200, 512)]);
    assert_eq!(
        with_sg::<2, 8, _>(&rq, &l, entries).unwrap(),
        [(0x1000, 1024)]
    );
    // Six separate segments: more than SMALL, the large path.
    let segs = [
        (0x1000, 512),
        (0x3000, 512),
        (0x5000, 512),
        (0x7000, 512),
        (0x9000, 512),
        (0xb000, 512),
    ];
    let rq = request(Op::Write, 0, &segs);
    assert_eq!(with_sg::<2, 8, _>(&rq, &l, entries).unwrap(), segs);
    let mut out = [SgEntry::default(); 8];
    let n = rq.map_sg(&l, &mut out).unwrap();
    assert_eq!(entries(&out[..n]), segs);
}

#[test]
fn with_sg_too_many_entries_is_an_error_and_f_is_not_called() {
    let l = QueueLimits::new();
    let rq = request(Op::Read, 0, &[(0x1000, 512), (0x3000, 512), (0x5000, 512)]);
    let mut called = false;
    assert_eq!(
        with_sg::<1, 2, _>(&rq, &l, |_| called = true),
        Err(BlkError::InvalidArgument)
    );
    assert!(!called);
    // The limits cap the entries too, not just the array.
    let narrow = QueueLimits {
        max_segments: 2,
        ..QueueLimits::new()
    };
    assert_eq!(
        with_sg::<4, 8, _>(&rq, &narrow, |s| s.len()),
        Err(BlkError::InvalidArgument)
    );
    assert_eq!(with_sg::<4, 8, _>(&rq, &l, |s| s.len()), Ok(3));
}

/// One call on the recorder: tag, status, done bytes (`complete`), result (`complete_pt`).
type Call = (u16, BlkStatus, Option<u32>, Option<u64>);

/// A `TagComplete` that records what it is told.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    kicks: Mutex<u32>,
}

impl TagComplete for Recorder {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        self.calls
            .lock()
            .unwrap()
            .push((tag, status, done_bytes, None));
    }
    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        self.calls
            .lock()
            .unwrap()
            .push((tag, status, None, Some(result)));
    }
    fn kick(&self) {
        *self.kicks.lock().unwrap() += 1;
    }
}

fn recorder() -> &'static Recorder {
    Box::leak(Box::default())
}

#[test]
fn completion_batch_fills_delivers_in_order_and_counts() {
    let mut b = CompletionBatch::<3>::new();
    assert!(b.is_empty() && !b.is_full());
    assert!(b.push(7, Ok(())));
    assert!(b.push_pt(2, Err(BlkError::Io), 0xabcd));
    assert!(b.push(5, Err(BlkError::DeviceError(3))));
    assert!(b.is_full());
    assert!(!b.push(9, Ok(())), "a full batch refuses");
    assert_eq!(b.len(), 3);
    let r = recorder();
    let d = b.deliver(r);
    assert_eq!(
        d,
        Delivered {
            completed: 3,
            errors: 2
        }
    );
    assert_eq!(
        *r.calls.lock().unwrap(),
        [
            (7, Ok(()), None, None),
            (2, Err(BlkError::Io), None, Some(0xabcd)),
            (5, Err(BlkError::DeviceError(3)), Some(0), None),
        ]
    );
    b.clear();
    assert!(b.is_empty());
    assert_eq!(b.deliver(r), Delivered::default());
    assert_eq!(r.calls.lock().unwrap().len(), 3);
}

#[test]
fn completion_batch_shows_only_what_was_pushed() {
    // The unused slots hold a placeholder error; none of it may show through.
    let mut b = CompletionBatch::<4>::new();
    assert!(b.as_slice().is_empty());
    let r = recorder();
    assert_eq!(b.deliver(r), Delivered::default());
    assert!(b.push(0, Ok(())));
    assert_eq!(
        b.as_slice(),
        [Completion {
            tag: 0,
            pt: false,
            status: Ok(()),
            result: 0
        }]
    );
    assert_eq!(
        b.deliver(r),
        Delivered {
            completed: 1,
            errors: 0
        }
    );
    b.clear();
    assert!(b.as_slice().is_empty());
    assert_eq!(*r.calls.lock().unwrap(), [(0, Ok(()), None, None)]);
}

#[test]
fn tag_mask_batch_delivers_by_tag_with_each_error_kind() {
    const DEAD: BlkError = BlkError::DeviceError(0xdead);
    let mut b = TagMaskBatch::new([BlkError::Io, DEAD]);
    assert!(b.is_empty());
    b.ok(1 << 3 | 1 << 40);
    b.fail(0, 1 << 1);
    b.fail(1, 1 << 63);
    b.fail(2, 1 << 9); // no such kind: ignored
    b.mark_pt(1 << 40);
    assert_eq!(b.all(), 1 << 1 | 1 << 3 | 1 << 40 | 1 << 63);
    assert_eq!(b.status(1), Some(Err(BlkError::Io)));
    assert_eq!(b.status(63), Some(Err(DEAD)));
    assert_eq!(b.status(9), None);
    assert_eq!(b.status(64), None);
    let r = recorder();
    let d = b.deliver(r);
    assert_eq!(
        d,
        Delivered {
            completed: 4,
            errors: 2
        }
    );
    assert_eq!(
        *r.calls.lock().unwrap(),
        [
            (1, Err(BlkError::Io), Some(0), None),
            (3, Ok(()), None, None),
            (40, Ok(()), None, Some(0)),
            (63, Err(DEAD), Some(0), None),
        ]
    );
    b.clear();
    assert!(b.is_empty());
    assert_eq!(b.status(3), None);
}

#[test]
fn tag_mask_batch_one_completion_path_counts_and_delivers_like_the_loop() {
    let r = recorder();
    let mut b = TagMaskBatch::new([BlkError::Io]);
    assert_eq!(b.deliver(r), Delivered::default());
    // One completion: tag 0 and tag 63 (the ends of the mask), ok and failed.
    for (tag, fail) in [(0u32, false), (63, false), (0, true), (63, true)] {
        b.clear();
        if fail {
            b.fail(0, 1 << tag);
        } else {
            b.ok(1 << tag);
        }
        let d = b.deliver(r);
        assert_eq!(
            d,
            Delivered {
                completed: 1,
                errors: u32::from(fail)
            },
            "tag {tag}, failed {fail}"
        );
    }
    b.clear();
    b.ok(!1);
    b.fail(0, 1);
    assert_eq!(
        b.deliver(r),
        Delivered {
            completed: 64,
            errors: 1
        }
    );
    assert_eq!(r.calls.lock().unwrap().len(), 4 + 64);
    assert_eq!(
        r.calls.lock().unwrap()[..4],
        [
            (0, Ok(()), None, None),
            (63, Ok(()), None, None),
            (0, Err(BlkError::Io), Some(0), None),
            (63, Err(BlkError::Io), Some(0), None),
        ]
    );
    // One passthrough command, with the second error kind.
    let r = recorder();
    let mut b = TagMaskBatch::new([BlkError::Io, BlkError::Timeout]);
    b.fail(1, 1 << 5);
    b.mark_pt(1 << 5);
    assert_eq!(
        b.deliver(r),
        Delivered {
            completed: 1,
            errors: 1
        }
    );
    assert_eq!(
        *r.calls.lock().unwrap(),
        [(5, Err(BlkError::Timeout), None, Some(0))]
    );
}

#[test]
fn completion_sink_drops_until_attached_then_forwards() {
    let s = CompletionSink::new();
    let mut b = CompletionBatch::<4>::new();
    b.push(1, Ok(()));
    assert!(s.get().is_none());
    assert!(!s.complete(0, Ok(())));
    assert_eq!(s.deliver(&b), Delivered::default());
    s.kick();
    let r = recorder();
    s.attach(r);
    s.attach(recorder()); // the first attach wins
    assert!(s.complete(4, Err(BlkError::Timeout)));
    assert_eq!(s.deliver(&b).completed, 1);
    s.kick();
    assert_eq!(
        *r.calls.lock().unwrap(),
        [
            (4, Err(BlkError::Timeout), Some(0), None),
            (1, Ok(()), None, None)
        ]
    );
    assert_eq!(*r.kicks.lock().unwrap(), 1);
}

#[test]
fn block_range_in_device_blocks() {
    // 4 KiB blocks: sector 16 is block 2, 8 KiB is two blocks.
    let rq = request(Op::Write, 16, &[(0x10000, 8192)]);
    let r = block_range(&rq, 12, 65536).unwrap();
    assert_eq!((r.lba, r.blocks), (2, 2));
    // 512-byte blocks: one per sector.
    let r = block_range(&rq, 9, 65536).unwrap();
    assert_eq!((r.lba, r.blocks), (16, 16));
    // Too many blocks for one command.
    assert_eq!(block_range(&rq, 9, 15), Err(BlkError::InvalidArgument));
    // A start that is not on a 4 KiB block.
    let rq = request(Op::Read, 9, &[(0x10000, 4096)]);
    assert_eq!(block_range(&rq, 12, 65536), Err(BlkError::Misaligned));
    // A size that is not whole blocks.
    let rq = request(Op::Read, 8, &[(0x10000, 1024)]);
    assert_eq!(block_range(&rq, 12, 65536), Err(BlkError::Misaligned));
    // Nothing to transfer.
    let rq = Request::standalone(BioList::new());
    assert_eq!(block_range(&rq, 9, 65536), Err(BlkError::InvalidArgument));
}

#[test]
fn queue_rq_error_from_blk_error_is_fatal() {
    use crate::driver::QueueRqError;
    let e: QueueRqError = BlkError::Misaligned.into();
    assert_eq!(e, QueueRqError::Fatal(BlkError::Misaligned));
}
