//! Stacking: bounded stack through 16 linear devices, striping, partitions.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::harness::*;
use crate::bio::Op;
use crate::device::{BlockDevice, CpuCtx, submit_bio};
use crate::error::BlkError;
use crate::limits::QueueLimits;
use crate::partition::{PartKind, crc32, parse_gpt_entries, parse_gpt_header, parse_mbr};
use crate::ramdisk::{CompletionMode, RamDisk};
use crate::request::{HwQueue, Queue, QueueConfig, QueueRqError, Request};
use crate::slab::Wait;
use crate::stack::{Linear, Striped};

/// A RAM disk that records the deepest stack address seen in `queue_rq`.
struct Probe {
    inner: &'static RamDisk,
    low: AtomicUsize,
}

impl HwQueue for Probe {
    fn queue_rq(&self, rq: &Request, last: bool) -> Result<(), QueueRqError> {
        let marker = 0u8;
        let sp = std::hint::black_box(&marker) as *const u8 as usize;
        self.low.fetch_min(sp, Ordering::SeqCst);
        self.inner.queue_rq(rq, last)
    }
}

fn stack_depth_for(levels: usize) -> (usize, u64) {
    let disk: &'static RamDisk = leak(RamDisk::new(
        buf(1 << 20),
        QueueLimits::new(),
        CompletionMode::Inline,
    ));
    let probe: &'static Probe = leak(Probe {
        inner: disk,
        low: AtomicUsize::new(usize::MAX),
    });
    let q: &'static Queue<8> = leak(Queue::new(
        probe,
        QueueLimits::new(),
        QueueConfig::new(disk.capacity()),
        split_set(),
    ));
    disk.attach(q);
    let mut top: &'static dyn BlockDevice = q;
    for _ in 0..levels {
        top = leak(Linear::new(top, 8, top.capacity() - 8).expect("linear"));
    }
    let e = env(8, QueueLimits::new());
    let ctx: &'static CpuCtx = leak(CpuCtx::new(0));
    let mem = buf(4096);
    mem.fill(0x5a);
    let marker = 0u8;
    let top_sp = std::hint::black_box(&marker) as *const u8 as usize;
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Write, 0, &[unsafe { seg(mem) }]);
    b.set_dev(top);
    submit_bio(ctx, b).expect("submit");
    assert_eq!(e.done(), 1);
    let mut on_disk = vec![0u8; 4096];
    assert!(
        disk.store()
            .read_bytes(levels as u64 * 8 * 512, &mut on_disk),
        "landed at the summed offset"
    );
    assert!(on_disk.iter().all(|&x| x == 0x5a));
    (
        top_sp - probe.low.load(Ordering::SeqCst),
        ctx.loop_iterations(),
    )
}

#[test]
fn sixteen_linear_devices_bounded_stack() {
    let (d1, it1) = stack_depth_for(1);
    let (d2, _) = stack_depth_for(2);
    let (d16, it16) = stack_depth_for(16);
    // One level takes the fast path of `submit_bio` (no loop frame), two or more the loop.
    assert!(d1 <= d2 + 256, "one level deeper than two: {d1} -> {d2}");
    // One loop turn per level, except the level right above the queue, which hands its bio
    // to the queue directly (`is_leaf`).
    assert_eq!(it1, 1);
    assert_eq!(it16, 16, "one loop turn per level above the bottom one");
    // Recursion would add a submit frame per level; the loop adds nothing.
    assert!(
        d16 <= d2 + 256,
        "stack grew with stacking depth: {d2} -> {d16}"
    );
}

#[test]
fn linear_refuses_outside_window() {
    let e = env(256, QueueLimits::new());
    let lin: &'static Linear = leak(Linear::new(e.q, 64, 64).expect("linear"));
    assert_eq!(Linear::new(e.q, 250, 64).err(), Some(BlkError::OutOfRange));
    let mem = buf(8192);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Write, 60, &[unsafe { seg(mem) }]);
    b.set_dev(lin);
    let (err, _) = submit_bio(e.ctx, b).expect_err("crosses the end");
    assert_eq!(err, BlkError::OutOfRange);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Write, u64::MAX - 3, &[unsafe { seg(mem) }]);
    b.set_dev(lin);
    assert_eq!(
        submit_bio(e.ctx, b).err().map(|x| x.0),
        Some(BlkError::OutOfRange)
    );
    assert_eq!(e.disk.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn striped_maps_chunks_and_flushes_every_leg() {
    let legs: Vec<crate::tests::harness::Env> =
        (0..3).map(|_| env(512, QueueLimits::new())).collect();
    let split = split_set();
    let st: &'static Striped<3> = leak(
        Striped::new([legs[0].q, legs[1].q, legs[2].q], 8, split, Wait::Spin).expect("striped"),
    );
    assert_eq!(st.capacity(), 3 * 512);
    let e = env(8, QueueLimits::new());
    let mem = buf(20 * 4096);
    mem.copy_from_slice(&pattern(11, 20 * 4096));
    // Starts mid-chunk: crosses many chunk boundaries.
    let mut b = e.bio(
        Op::Write,
        4,
        &[
            // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
            unsafe { seg(&mut mem[..12 * 4096]) },
            // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
            unsafe { seg(&mut mem[12 * 4096..]) },
        ],
    );
    b.set_dev(st);
    submit_bio(e.ctx, b).expect("submit");
    assert_eq!((e.done(), e.errors()), (1, 0));
    let data = pattern(11, 20 * 4096);
    for s in 0..160u64 {
        let (leg, ls) = st.map(4 + s);
        let got = legs[leg].disk_bytes(ls, 512);
        assert_eq!(&got[..], &data[s as usize * 512..][..512], "sector {s}");
    }
    assert!(st.stats().snapshot().splits >= 19);
    let mut f = e.bio(Op::Flush, 0, &[]);
    f.set_dev(st);
    submit_bio(e.ctx, f).expect("flush");
    assert_eq!(e.done(), 2);
    for l in &legs {
        assert_eq!(l.disk.flushes.load(Ordering::SeqCst), 1);
    }
    // Read back through the stripes.
    let back = buf(20 * 4096);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut r = e.bio(Op::Read, 4, &[unsafe { seg(back) }]);
    r.set_dev(st);
    submit_bio(e.ctx, r).expect("read");
    assert_eq!(back.to_vec(), data);
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn mbr_partitions() {
    let e = env(2048, QueueLimits::new());
    let mut s0 = [0u8; 512];
    s0[510] = 0x55;
    s0[511] = 0xaa;
    for (i, (ty, start, len)) in [(0x83u8, 64u32, 512u32), (0x0c, 1024, 1000)]
        .into_iter()
        .enumerate()
    {
        let at = 446 + 16 * i;
        s0[at + 4] = ty;
        put32(&mut s0, at + 8, start);
        put32(&mut s0, at + 12, len);
    }
    assert!(e.disk.store().write_bytes(0, &s0));
    let mut read = [0u8; 512];
    assert!(e.disk.store().read_bytes(0, &mut read));
    let t = parse_mbr(&read, 2048).expect("mbr");
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[1].start, t[1].sectors, t[1].kind),
        (1024, 1000, PartKind::Mbr(0x0c))
    );
    let p: &'static Linear = leak(Linear::partition(e.q, &t[0]).expect("part"));
    let mem = buf(4096);
    mem.fill(7);
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Write, 504, &[unsafe { seg(mem) }]);
    b.set_dev(p);
    submit_bio(e.ctx, b).expect("write");
    assert!(e.disk_bytes(64 + 504, 4096).iter().all(|&x| x == 7));
    // SAFETY: the buffer outlives the bio and the test leaves it alone until the bio completes.
    let mut b = e.bio(Op::Write, 508, &[unsafe { seg(mem) }]);
    b.set_dev(p);
    assert_eq!(
        submit_bio(e.ctx, b).err().map(|x| x.0),
        Some(BlkError::OutOfRange)
    );
    // Overlap, bad signature and past-the-end tables are refused.
    let mut bad = s0;
    put32(&mut bad, 446 + 16 + 8, 100);
    assert_eq!(parse_mbr(&bad, 2048), Err(BlkError::BadPartitionTable));
    let mut bad = s0;
    bad[510] = 0;
    assert_eq!(parse_mbr(&bad, 2048), Err(BlkError::BadPartitionTable));
    assert_eq!(parse_mbr(&s0, 1500), Err(BlkError::BadPartitionTable));
}

#[test]
fn gpt_partitions() {
    let disk = 4096u64;
    let mut entries = vec![0u8; 128 * 128];
    for (i, (first, last)) in [(34u64, 1033u64), (2048, 4000)].into_iter().enumerate() {
        let e = &mut entries[i * 128..];
        e[0] = 0xaf;
        e[16] = i as u8 + 1;
        put64(e, 32, first);
        put64(e, 40, last);
    }
    let mut h = [0u8; 512];
    h[..8].copy_from_slice(b"EFI PART");
    put32(&mut h, 8, 0x0001_0000);
    put32(&mut h, 12, 92);
    put64(&mut h, 24, 1);
    put64(&mut h, 32, disk - 1);
    put64(&mut h, 40, 34);
    put64(&mut h, 48, disk - 34);
    put64(&mut h, 72, 2);
    put32(&mut h, 80, 128);
    put32(&mut h, 84, 128);
    put32(&mut h, 88, crc32(&entries));
    let c = crc32(&h[..92]);
    put32(&mut h, 16, c);
    let hdr = parse_gpt_header(&h, disk).expect("header");
    let t = parse_gpt_entries(&hdr, &entries, disk).expect("entries");
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].start, t[0].sectors), (34, 1000));
    assert!(matches!(t[1].kind, PartKind::Gpt { unique_guid, .. } if unique_guid[0] == 2));
    // A flipped bit anywhere is caught by a CRC.
    let mut bad = h;
    bad[40] ^= 1;
    assert_eq!(
        parse_gpt_header(&bad, disk),
        Err(BlkError::BadPartitionTable)
    );
    let mut bad_entries = entries.clone();
    bad_entries[200] ^= 1;
    assert_eq!(
        parse_gpt_entries(&hdr, &bad_entries, disk),
        Err(BlkError::BadPartitionTable)
    );
    // A disk too small for the header's claims.
    assert_eq!(parse_gpt_header(&h, 1000), Err(BlkError::BadPartitionTable));
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
