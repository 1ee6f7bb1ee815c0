//! Property tests of split, merge and map_sg against simple reference models.

use std::sync::atomic::Ordering;

use hal::PhysAddr;
use proptest::prelude::*;

use super::harness::*;
use crate::bio::{Bio, BioVec, Op};
use crate::device::submit_bio;
use crate::error::BlkError;
use crate::limits::{QueueLimits, split_point};
use crate::slab::Wait;
use crate::split::bio_split;

fn limits_strategy() -> impl Strategy<Value = QueueLimits> {
    (
        prop_oneof![Just(512u32), Just(1024), Just(4096)],
        1u32..48,
        1u16..12,
        1u32..24,
        prop_oneof![Just(u64::MAX), Just(4095u64), Just(8191), Just(65535)],
        any::<bool>(),
        prop_oneof![Just(0u32), Just(8), Just(16), Just(64)],
    )
        .prop_map(|(lbs, ms, segs, segsz, bound, virt, chunk)| {
            let mut l = QueueLimits::new();
            l.logical_block_size = lbs;
            l.max_sectors = ms * (lbs / 512);
            l.max_segments = segs;
            l.max_segment_size = segsz * 512;
            l.seg_boundary_mask = bound;
            l.dma_alignment = 512;
            if virt {
                l.virt_boundary_mask = 4095;
                l.max_segment_size = u32::MAX;
                if l.seg_boundary_mask <= 4095 {
                    l.seg_boundary_mask = 65535;
                }
            }
            l.chunk_sectors = if chunk != 0 { chunk.max(lbs / 512) } else { 0 };
            l
        })
        .prop_filter("valid", |l| l.validate().is_ok())
}

/// Segments as (offset, len) in 512-byte units over an address space, some contiguous.
fn segs_strategy() -> impl Strategy<Value = Vec<(u64, u32, bool)>> {
    prop::collection::vec((0u64..2048, 1u32..17, prop::bool::weighted(0.35)), 1..12)
}

fn layout(raw: &[(u64, u32, bool)], base: u64, lbs: u32) -> Vec<BioVec> {
    let mut out: Vec<BioVec> = Vec::new();
    for &(off, len, contig) in raw {
        let addr = match out.last() {
            Some(p) if contig => p.end(),
            _ => base + off * 512,
        };
        // SAFETY: the segments lie inside the test's leaked buffer, which it leaves alone until every bio completes (or only the arithmetic is checked).
        out.push(unsafe { BioVec::new(PhysAddr(addr), len * 512) });
    }
    let total: u64 = out.iter().map(|v| v.len() as u64).sum();
    let pad = (lbs as u64 - total % lbs as u64) % lbs as u64;
    if let Some(last) = out.last_mut() {
        // SAFETY: as above: the padded segment still lies inside the test's buffer.
        *last = unsafe { BioVec::new(last.addr(), last.len() + pad as u32) };
    }
    out
}

/// Reference: does this list of segments at `sector` fit the limits as one request?
fn fits(l: &QueueLimits, sector: u64, segs: &[BioVec]) -> bool {
    let bytes: u64 = segs.iter().map(|v| v.len() as u64).sum();
    if bytes == 0
        || !bytes.is_multiple_of(l.logical_block_size as u64)
        || bytes > l.max_sectors as u64 * 512
    {
        return false;
    }
    if l.chunk_sectors != 0 {
        let c = l.chunk_sectors as u64;
        if sector / c != (sector + bytes / 512 - 1) / c {
            return false;
        }
    }
    let mut count = 0u64;
    for (i, v) in segs.iter().enumerate() {
        if l.virt_boundary_mask != 0 && i > 0 {
            let page = l.virt_boundary_mask + 1;
            if !segs[i - 1].end().is_multiple_of(page) || v.addr().0 % page != 0 {
                return false;
            }
        }
        let mut pos = v.addr().0;
        let end = v.end();
        while pos < end {
            let mut next = end.min(pos + l.max_segment_size as u64);
            if l.seg_boundary_mask != u64::MAX {
                let w = l.seg_boundary_mask + 1;
                next = next.min((pos / w + 1) * w);
            }
            count += 1;
            pos = next;
        }
    }
    count <= l.max_segments as u64
}

/// The first `bytes` of `segs` (cut segments).
fn prefix(segs: &[BioVec], mut bytes: u64) -> Vec<BioVec> {
    let mut out = Vec::new();
    for v in segs {
        if bytes == 0 {
            break;
        }
        let n = (v.len() as u64).min(bytes);
        // SAFETY: the segments lie inside the test's leaked buffer, which it leaves alone until every bio completes (or only the arithmetic is checked).
        out.push(unsafe { BioVec::new(v.addr(), n as u32) });
        bytes -= n;
    }
    out
}

fn bytes_of(segs: &[BioVec]) -> Vec<u64> {
    segs.iter()
        .flat_map(|v| (0..v.len() as u64 / 512).map(move |k| v.addr().0 + k * 512))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Splitting to the limits yields fronts that fit, are as large as possible, and together
    /// cover exactly the original bytes in order.
    #[test]
    fn split_matches_reference(l in limits_strategy(), raw in segs_strategy(), sec in 0u64..4096) {
        let e = env(16, QueueLimits::new());
        let sector = sec / (l.logical_block_size as u64 / 512) * (l.logical_block_size as u64 / 512);
        let segs = layout(&raw, 1 << 30, l.logical_block_size);
        let mut bio: Bio = e.bio(Op::Write, sector, &segs);
        let mut covered: Vec<BioVec> = Vec::new();
        let mut fronts = Vec::new();
        let mut cur_sector = sector;
        loop {
            let rest: Vec<BioVec> = bio.segments().collect();
            match split_point(&l, &bio, None) {
                Ok(None) => {
                    prop_assert!(fits(&l, cur_sector, &rest), "whole rest must fit: {:?} {:?}", l, rest);
                    covered.extend(rest);
                    break;
                }
                Ok(Some(n)) => {
                    let front = bio_split(&mut bio, n, e.split, Wait::Never).expect("split");
                    let fsegs: Vec<BioVec> = front.segments().collect();
                    prop_assert_eq!(front.sector(), cur_sector);
                    prop_assert!(fits(&l, cur_sector, &fsegs), "front must fit: {:?} {:?}", l, fsegs);
                    let bigger = prefix(&rest, n as u64 + l.logical_block_size as u64);
                    prop_assert!(!fits(&l, cur_sector, &bigger), "front must be maximal");
                    cur_sector += n as u64 / 512;
                    covered.extend(fsegs);
                    fronts.push(front);
                }
                Err(err) => {
                    prop_assert_eq!(err, BlkError::Misaligned);
                    prop_assert!(!fits(&l, cur_sector, &prefix(&rest, l.logical_block_size as u64)));
                    covered.extend(rest);
                    break;
                }
            }
        }
        prop_assert_eq!(bytes_of(&covered), bytes_of(&segs));
        // The parent completes once, after every front.
        crate::bio::bio_endio(bio);
        let n = fronts.len();
        for (i, f) in fronts.into_iter().enumerate() {
            prop_assert_eq!(e.done(), 0, "after {} of {}", i, n);
            crate::bio::bio_endio(f);
        }
        prop_assert_eq!(e.done(), 1);
    }

    /// Random bios with random memory layouts under random limits, plugged or not, in random
    /// order: every request the RAM disk sees obeys the limits (its map_sg checks), and every
    /// byte lands where the bios said (model disk), and reads back.
    #[test]
    fn io_through_ramdisk_matches_model(
        l in limits_strategy(),
        bios in prop::collection::vec((segs_strategy(), 0u32..8), 1..10),
        plug in any::<bool>(),
        order in any::<u64>(),
    ) {
        const MEM: usize = 4 << 20;
        let e = env(4096, l);
        let mem = buf(MEM);
        mem.copy_from_slice(&pattern(order, MEM));
        let base = mem.as_ptr() as u64;
        let base = (base + 65535) & !65535;
        let lbs = l.logical_block_size as u64 / 512;
        // Non-overlapping extents in disk order, then shuffled.
        let mut extents = Vec::new();
        let mut next = 0u64;
        for (raw, gap) in &bios {
            let segs = layout(raw, base, l.logical_block_size);
            let sectors: u64 = segs.iter().map(|v| v.len() as u64 / 512).sum();
            next += *gap as u64 * lbs * (*gap % 2) as u64;
            extents.push((next, segs));
            next += sectors;
        }
        prop_assume!(next <= 4096);
        let mut idx: Vec<usize> = (0..extents.len()).collect();
        let mut x = order | 1;
        for i in (1..idx.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            idx.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut model = vec![0u8; 4096 * 512];
        {
            let _p = plug.then(|| e.ctx.plug());
            for &i in &idx {
                let (sector, segs) = &extents[i];
                let mut off = (*sector * 512) as usize;
                for v in segs {
                    let src = (v.addr().0 - mem.as_ptr() as u64) as usize;
                    model[off..off + v.len() as usize].copy_from_slice(&mem[src..src + v.len() as usize]);
                    off += v.len() as usize;
                }
                let b = e.bio(Op::Write, *sector, segs);
                match submit_bio(e.ctx, b) {
                    Ok(()) => {}
                    Err((err, _)) => prop_assert!(false, "refused: {:?}", err),
                }
            }
        }
        let total_bios = extents.len() as u64;
        prop_assert_eq!(e.done(), total_bios);
        prop_assert_eq!(e.disk.violations.load(Ordering::SeqCst), 0);
        let st = e.q.stats().snapshot();
        // Errors only where the limits make a bio impossible (Misaligned split).
        let impossible = e.errors();
        if impossible == 0 {
            prop_assert_eq!(e.disk_bytes(0, 4096 * 512), model.clone());
        }
        prop_assert_eq!(e.q.tags_in_use(), 0);
        prop_assert!(st.requests_dispatched >= 1 || impossible == total_bios);
        // Read everything back into a fresh buffer laid out like the writes.
        if impossible == 0 {
            let back = buf(MEM);
            let bbase = back.as_ptr() as u64;
            for (sector, segs) in &extents {
                // SAFETY: the segments lie inside the test's leaked buffer, which it leaves alone until every bio completes (or only the arithmetic is checked).
                let rsegs: Vec<BioVec> = segs.iter().map(|v| unsafe { BioVec::new(PhysAddr(v.addr().0 - base + ((bbase + 65535) & !65535)), v.len()) }).collect();
                submit_bio(e.ctx, e.bio(Op::Read, *sector, &rsegs)).expect("read");
                let mut off = (*sector * 512) as usize;
                for v in &rsegs {
                    let at = (v.addr().0 - bbase) as usize;
                    prop_assert_eq!(&back[at..at + v.len() as usize], &model[off..off + v.len() as usize]);
                    off += v.len() as usize;
                }
            }
            prop_assert_eq!(e.errors(), 0);
        }
    }
}
