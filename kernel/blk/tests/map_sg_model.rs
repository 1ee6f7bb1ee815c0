//! `map_sg` against a reference model: random requests (several bios, random physical layouts
//! with segments contiguous inside and across bios, partly advanced first bio) under random
//! limits (max segments, max segment size, segment boundary, virt boundary, output room).
//!
//! The model walks the request byte by byte and builds the merged scatter-gather list
//! greedily: a byte joins the current entry when it is physically next, the entry stays within
//! `max_segment_size` and does not cross a segment boundary. Greedy merging gives the fewest
//! entries any valid list can have, so a request the model needs more than the room for must
//! be refused (never truncated), and an accepted list must carry the same bytes in the same
//! order with every entry within the limits.

use blk::bioset::{BioSet, BioSlab, BvecPools, BvecSlabs};
use blk::{Bio, BioList, BioVec, Op, QueueLimits, Request, SgEntry, Wait};
use hal::PhysAddr;
use proptest::prelude::*;

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

fn bio_set() -> &'static BioSet<()> {
    let slabs: &'static BvecSlabs<64, 64, 64, 64, 8, 8> = leak(BvecSlabs::new());
    let pools: &'static BvecPools = leak(BvecPools::new(slabs, 2));
    let slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    leak(BioSet::new(slab, 4, Some(pools)))
}

thread_local! {
    static SET: &'static BioSet<()> = bio_set();
}

#[derive(Clone, Debug)]
struct Case {
    limits: QueueLimits,
    room: usize,
    /// Segments per bio.
    bios: Vec<Vec<BioVec>>,
    /// Bytes the first bio is advanced by (already transferred).
    skip: u32,
}

fn boundary_end(l: &QueueLimits, start: u64) -> u64 {
    if l.seg_boundary_mask == u64::MAX {
        u64::MAX
    } else {
        start | l.seg_boundary_mask
    }
}

/// The reference: a byte-by-byte walk over the request's bytes in order.
fn model(l: &QueueLimits, segs: &[BioVec]) -> Vec<SgEntry> {
    let mut out: Vec<SgEntry> = Vec::new();
    for v in segs {
        for a in v.addr().0..v.addr().0 + v.len() as u64 {
            let joins = out.last().is_some_and(|c| {
                c.addr.0 + c.len as u64 == a
                    && c.len < l.max_segment_size
                    && a <= boundary_end(l, c.addr.0)
            });
            if joins {
                if let Some(c) = out.last_mut() {
                    c.len += 1;
                }
            } else {
                out.push(SgEntry {
                    addr: PhysAddr(a),
                    len: 1,
                });
            }
        }
    }
    out
}

/// The bytes a list covers, as maximal physically contiguous runs in order.
fn runs(entries: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, n) in entries {
        if n == 0 {
            continue;
        }
        match out.last_mut() {
            Some((s, len)) if *s + *len == a => *len += n,
            _ => out.push((a, n)),
        }
    }
    out
}

/// Segments of the request after the first bio was advanced by `skip` bytes.
fn remaining(bios: &[Vec<BioVec>], skip: u32) -> Vec<BioVec> {
    let mut left = skip as u64;
    let mut out = Vec::new();
    for (i, b) in bios.iter().enumerate() {
        for v in b {
            let mut v = *v;
            if i == 0 && left > 0 {
                let cut = left.min(v.len() as u64);
                left -= cut;
                // SAFETY: never submitted: only map_sg's arithmetic looks at it.
                v = unsafe { BioVec::new(PhysAddr(v.addr().0 + cut), v.len() - cut as u32) };
            }
            if !v.is_empty() {
                out.push(v);
            }
        }
    }
    out
}

fn limits_strategy() -> impl Strategy<Value = (QueueLimits, usize)> {
    (
        1u16..20,
        prop_oneof![
            Just(u32::MAX),
            (1u32..32).prop_map(|k| k * 512),
            Just(65536u32)
        ],
        prop_oneof![Just(u64::MAX), Just(4095u64), Just(8191), Just(65535)],
        any::<bool>(),
        1usize..24,
    )
        .prop_map(|(segs, segsz, bound, virt, room)| {
            let mut l = QueueLimits::new();
            l.max_segments = segs;
            l.max_segment_size = segsz;
            l.seg_boundary_mask = bound;
            if virt {
                l.virt_boundary_mask = 4095;
                l.max_segment_size = u32::MAX;
                if l.seg_boundary_mask <= 4095 {
                    l.seg_boundary_mask = 65535;
                }
            }
            (l, room)
        })
        .prop_filter("valid limits", |(l, _)| l.validate().is_ok())
}

/// Raw segments per bio: (address in 512-byte units, length in bytes, contiguous with the
/// previous segment, which may sit in the previous bio).
type Raw = Vec<Vec<(u64, u32, bool)>>;

fn raw_strategy() -> impl Strategy<Value = Raw> {
    let seg = (
        0u64..8192,
        prop_oneof![1u32..600, (1u32..17).prop_map(|k| k * 512), 1u32..9000],
        prop::bool::weighted(0.4),
    );
    prop::collection::vec(prop::collection::vec(seg, 1..7), 1..5)
}

fn build(raw: &Raw, l: &QueueLimits) -> Vec<Vec<BioVec>> {
    let virt = l.virt_boundary_mask != 0;
    let page = 4096u64;
    let total: usize = raw.iter().map(|b| b.len()).sum();
    let mut k = 0usize;
    let mut prev_end: Option<u64> = None;
    let mut out = Vec::new();
    for b in raw {
        let mut bio = Vec::new();
        for &(off, len, contig) in b {
            let mut addr = match prev_end {
                Some(e) if contig => e,
                _ => off * 512 + (len as u64 % 7),
            };
            let mut len = len as u64;
            if virt {
                // Inside a request every interior edge sits on the virt boundary.
                if k > 0 {
                    addr = addr.div_ceil(page) * page;
                }
                if k + 1 < total {
                    len = (addr + len).div_ceil(page) * page - addr;
                }
            }
            // SAFETY: never submitted: only map_sg's arithmetic looks at it.
            let v = unsafe { BioVec::new(PhysAddr(addr), len as u32) };
            prev_end = Some(v.end());
            bio.push(v);
            k += 1;
        }
        out.push(bio);
    }
    out
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (limits_strategy(), raw_strategy(), 0u32..4096).prop_map(|((limits, room), raw, skip)| {
        let bios = build(&raw, &limits);
        let first: u32 = bios[0].iter().map(|v| v.len()).sum();
        // Leave at least one byte of the first bio; no skip under a virt boundary (the
        // remaining first segment then starts mid-page, which is allowed only at the front).
        let skip = if limits.virt_boundary_mask != 0 {
            0
        } else {
            skip % first
        };
        Case {
            limits,
            room,
            bios,
            skip,
        }
    })
}

fn make_bio(set: &'static BioSet<()>, segs: &[BioVec]) -> Bio {
    let mut b = set
        .alloc((), Op::Write, segs.len(), Wait::Spin)
        .expect("bio");
    for v in segs {
        b.add_vec(*v).expect("add_vec");
    }
    b
}

fn request(case: &Case) -> Request {
    SET.with(|set| {
        let mut list = BioList::new();
        for (i, segs) in case.bios.iter().enumerate() {
            let mut b = make_bio(set, segs);
            if i == 0 && case.skip > 0 {
                b.advance(case.skip);
            }
            list.push_back(b);
        }
        Request::standalone(list)
    })
}

fn check_entry_limits(l: &QueueLimits, e: &SgEntry) -> Result<(), TestCaseError> {
    prop_assert!(e.len > 0, "empty entry");
    prop_assert!(
        e.len <= l.max_segment_size,
        "entry over max segment size: {e:?}"
    );
    prop_assert!(
        e.addr.0 + e.len as u64 - 1 <= boundary_end(l, e.addr.0),
        "entry crosses a segment boundary: {e:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn map_sg_matches_the_byte_model(case in case_strategy()) {
        let l = case.limits;
        let rq = request(&case);
        let segs = remaining(&case.bios, case.skip);
        let expect = model(&l, &segs);
        let cap = case.room.min(l.max_segments as usize);
        let mut out = vec![SgEntry::default(); case.room];
        match rq.map_sg(&l, &mut out) {
            Err(_) => prop_assert!(
                expect.len() > cap,
                "refused although {} entries fit in {}",
                expect.len(),
                cap
            ),
            Ok(n) => {
                prop_assert!(expect.len() <= cap, "accepted an over-limit request (truncated?)");
                prop_assert!(n <= cap);
                let got = &out[..n];
                if got != expect.as_slice() {
                    // A valid alternative: same bytes in the same order, entries within limits.
                    for e in got {
                        check_entry_limits(&l, e)?;
                    }
                    prop_assert_eq!(
                        runs(got.iter().map(|e| (e.addr.0, e.len as u64))),
                        runs(expect.iter().map(|e| (e.addr.0, e.len as u64)))
                    );
                }
                for e in got {
                    check_entry_limits(&l, e)?;
                }
                let total: u64 = got.iter().map(|e| e.len as u64).sum();
                prop_assert_eq!(total, rq.bytes() as u64);
                let vb = l.virt_boundary_mask;
                if vb != 0 {
                    for (i, e) in got.iter().enumerate() {
                        prop_assert!(i == 0 || e.addr.0 & vb == 0, "virt gap before {e:?}");
                        prop_assert!(
                            i + 1 == n || (e.addr.0 + e.len as u64) & vb == 0,
                            "virt gap after {e:?}"
                        );
                    }
                }
            }
        }
    }
}

/// A request whose minimal list exceeds `max_segments` by one is refused, and the same request
/// fits once the limit allows one more entry.
#[test]
fn one_entry_over_the_limit_is_refused() {
    let segs: Vec<BioVec> = (0..5u64)
        // SAFETY: never submitted: only map_sg's arithmetic looks at it.
        .map(|i| unsafe { BioVec::new(PhysAddr(0x10_0000 + i * 0x2000), 4096) })
        .collect();
    let case = Case {
        limits: QueueLimits {
            max_segments: 4,
            ..QueueLimits::new()
        },
        room: 16,
        bios: vec![segs[..2].to_vec(), segs[2..].to_vec()],
        skip: 0,
    };
    let rq = request(&case);
    let mut out = [SgEntry::default(); 16];
    assert!(rq.map_sg(&case.limits, &mut out).is_err());
    let l5 = QueueLimits {
        max_segments: 5,
        ..QueueLimits::new()
    };
    assert_eq!(rq.map_sg(&l5, &mut out), Ok(5));
    let mut small = [SgEntry::default(); 4];
    assert!(rq.map_sg(&l5, &mut small).is_err());
}
