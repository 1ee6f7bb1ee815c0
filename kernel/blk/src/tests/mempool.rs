use crate::slab::{Mempool, PoolBox, Slab, Wait};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

#[test]
fn alloc_free_and_counters() {
    let slab = leak(Slab::<u64, 8>::new());
    let pool = leak(Mempool::new(slab, 2));
    pool.init().unwrap();
    assert_eq!(pool.stats().reserve_len, 2);
    let mut held: Vec<PoolBox<u64>> = Vec::new();
    for i in 0..8 {
        held.push(pool.try_alloc(i).map_err(|_| ()).expect("alloc"));
    }
    // 6 from the slab, 2 from the reserve.
    assert!(pool.try_alloc(99).is_err());
    let st = pool.stats();
    assert_eq!(st.allocs, 8);
    assert_eq!(st.reserve_hits, 2);
    assert_eq!(st.failures, 1);
    assert_eq!(st.high_water, 8);
    for (i, b) in held.iter().enumerate() {
        assert_eq!(**b, i as u64);
    }
    // Free refills the reserve first.
    held.pop();
    assert_eq!(pool.stats().reserve_len, 1);
    held.pop();
    assert_eq!(pool.stats().reserve_len, 2);
    held.pop();
    assert_eq!(pool.stats().reserve_len, 2);
    drop(held);
    let st = pool.stats();
    assert_eq!(st.in_use, 0);
    assert_eq!(st.frees, 8);
}

#[test]
fn pools_share_a_slab_with_own_reserves() {
    let slab = leak(Slab::<[u8; 32], 10>::new());
    let a = leak(Mempool::new(slab, 3));
    let b = leak(Mempool::new(slab, 3));
    a.init().unwrap();
    b.init().unwrap();
    // 4 shared + 3 + 3 reserved.
    let mut ha = Vec::new();
    while let Ok(x) = a.try_alloc([1; 32]) {
        ha.push(x);
    }
    assert_eq!(
        ha.len(),
        4 + 3,
        "a takes the shared slab and its own reserve"
    );
    let mut hb = Vec::new();
    while let Ok(x) = b.try_alloc([2; 32]) {
        hb.push(x);
    }
    assert_eq!(hb.len(), 3, "b still has its reserve");
    assert_eq!(b.stats().reserve_hits, 3);
    for x in &ha {
        assert_eq!(**x, [1; 32]);
    }
    drop(hb);
    assert_eq!(b.stats().reserve_len, 3);
    // A's shared elements go back to the shared slab once its reserve is full.
    drop(ha);
    assert_eq!(a.stats().reserve_len, 3);
    let mut all = Vec::new();
    while let Ok(x) = a.try_alloc([3; 32]) {
        all.push(x);
    }
    assert_eq!(all.len(), 7);
}

#[test]
fn may_wait_alloc_waits_for_a_free() {
    let slab = leak(Slab::<u32, 2>::new());
    let pool = leak(Mempool::new(slab, 0));
    let x = pool.try_alloc(1).ok().unwrap();
    let y = pool.try_alloc(2).ok().unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    let t = std::thread::spawn(move || {
        s2.store(true, Ordering::SeqCst);
        let z = pool
            .alloc(3, Wait::Hook(std::thread::yield_now))
            .ok()
            .unwrap();
        *z
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    drop(x);
    assert_eq!(t.join().unwrap(), 3);
    assert_eq!(*y, 2);
    assert!(pool.stats().waits >= 1);
}

/// Two threads hammer one pool (shared slab plus reserve); every element has one owner at a
/// time (marker check), and none is lost at the end.
#[test]
fn two_thread_stress_no_loss_no_dup() {
    const N: usize = 16;
    let slab = leak(Slab::<(u32, u32), N>::new());
    let pool = leak(Mempool::new(slab, 4));
    let owner: &'static [AtomicU32] =
        leak((0..N).map(|_| AtomicU32::new(0)).collect::<Vec<_>>()).as_slice();
    let threads: Vec<_> = (1..=2u32)
        .map(|me| {
            std::thread::spawn(move || {
                let mut held: Vec<PoolBox<(u32, u32)>> = Vec::new();
                for i in 0..100_000u32 {
                    if i % 3 != 2 {
                        if let Ok(b) = pool.try_alloc((me, i)) {
                            let idx = b.index() as usize;
                            assert_eq!(
                                owner[idx].swap(me, Ordering::SeqCst),
                                0,
                                "slot handed out twice"
                            );
                            held.push(b);
                        }
                    } else if let Some(b) = held.pop() {
                        assert_eq!(b.0, me, "value overwritten by another owner");
                        owner[b.index() as usize].store(0, Ordering::SeqCst);
                        drop(b);
                    }
                    if held.len() > 6 {
                        let b = held.remove(0);
                        owner[b.index() as usize].store(0, Ordering::SeqCst);
                    }
                }
                for b in held {
                    owner[b.index() as usize].store(0, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut boxes = Vec::new();
    while let Ok(b) = pool.try_alloc((0, 0)) {
        boxes.push(b);
    }
    let mut all: Vec<u32> = boxes.iter().map(|b| b.index()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), N, "an element was lost or duplicated");
    assert_eq!(pool.stats().in_use, N as u64);
}

/// Per-CPU magazines: a free on a CPU goes to its magazine and the next allocation there takes
/// it back; counters add up across magazines and the shared part; the reserve is refilled
/// before any magazine.
#[test]
fn per_cpu_magazine_reuse_and_counters() {
    let slab = leak(Slab::<u64, 32>::new());
    let pool = leak(Mempool::new(slab, 2));
    let a = pool.try_alloc_on(0, 1).ok().unwrap();
    let ia = a.index();
    drop(a);
    assert_eq!(pool.cached(), 1);
    let b = pool.try_alloc_on(0, 2).ok().unwrap();
    assert_eq!(
        b.index(),
        ia,
        "the magazine hands back the element just freed"
    );
    assert_eq!(pool.cached(), 0);
    let c = pool.try_alloc_on(1, 3).ok().unwrap();
    c.free_on(0);
    assert_eq!(pool.cached(), 1);
    let s = pool.stats();
    assert_eq!((s.allocs, s.frees, s.in_use), (3, 2, 1));
    drop(b);
    // CPU ids past the magazines use the shared stack.
    let d = pool.try_alloc_on(1000, 4).ok().unwrap();
    drop(d);
    let s = pool.stats();
    assert_eq!((s.allocs, s.frees, s.in_use), (4, 4, 0));
    assert_eq!(s.reserve_len, 2);
}

/// With the shared slab and the reserve empty, elements parked in another CPU's magazine are
/// still found (stolen), so nothing is lost to a cache.
#[test]
fn per_cpu_magazines_are_stolen_when_empty() {
    const N: usize = 12;
    let slab = leak(Slab::<u32, N>::new());
    let pool = leak(Mempool::new(slab, 2));
    let held: Vec<_> = (0..N as u32)
        .map(|i| pool.try_alloc_on(1, i).ok().unwrap())
        .collect();
    assert!(pool.try_alloc_on(0, 0).is_err());
    drop(held);
    assert!(pool.cached() > 0);
    let all: Vec<_> = (0..N as u32)
        .map(|i| {
            pool.try_alloc_on(0, i)
                .map_err(|_| ())
                .expect("stolen from CPU 1's magazine")
        })
        .collect();
    let mut idx: Vec<u32> = all.iter().map(|b| b.index()).collect();
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), N);
    assert_eq!(pool.stats().in_use, N as u64);
    assert_eq!(pool.stats().high_water, N as u64);
}

/// Two mempools over one slab (the kernel's split and I/O bio sets): elements one pool parked
/// in a CPU's magazine are found by the other, through its own CPU's magazine or by a steal,
/// so an allocation never fails while the slab has a free element anywhere.
#[test]
fn pools_sharing_a_slab_reach_each_others_magazines() {
    const N: usize = 6;
    let slab = leak(Slab::<u32, N>::new());
    let a = leak(Mempool::new(slab, 1));
    let b = leak(Mempool::new(slab, 1));
    a.init().unwrap();
    b.init().unwrap();
    // Pool `a` takes everything but `b`'s reserve and frees it all into CPU 0's magazine.
    let held: Vec<_> = (0..N as u32 - 1)
        .map(|i| a.try_alloc_on(0, i).ok().unwrap())
        .collect();
    assert!(a.try_alloc_on(0, 0).is_err());
    drop(held);
    assert_eq!(a.stats().reserve_len, 1);
    assert_eq!(a.cached(), N - 2, "the rest parked in CPU 0's magazine");
    // Pool `b` on another CPU (and with no CPU at all) gets every one of them, then its
    // reserve: N - 1 in all, none twice.
    let mut got: Vec<PoolBox<u32>> = Vec::new();
    for i in 0..N as u32 - 1 {
        let r = if i % 2 == 0 {
            b.try_alloc_on(3, i)
        } else {
            b.try_alloc(i)
        };
        got.push(
            r.map_err(|_| ())
                .expect("an element parked by the other pool"),
        );
    }
    assert!(b.try_alloc(9).is_err(), "only `a`'s reserve is left");
    let mut idx: Vec<u32> = got.iter().map(|x| x.index()).collect();
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), N - 1);
    assert!(b.exhausted());
    drop(got);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.in_use, sb.in_use), (0, 0));
    assert_eq!((sa.reserve_len, sb.reserve_len), (1, 1));
}

/// Two CPUs hammer their magazines while a third thread plays an interrupt handler on CPU 0
/// (same magazine as the first thread) and a fourth uses the plain API: one owner per element
/// at a time, values intact, nothing lost or duplicated, counters consistent.
#[test]
fn per_cpu_stress_with_interrupt_and_plain_users() {
    const N: usize = 24;
    let slab = leak(Slab::<(u32, u32), N>::new());
    let pool = leak(Mempool::new(slab, 4));
    let owner: &'static [AtomicU32] =
        leak((0..N).map(|_| AtomicU32::new(0)).collect::<Vec<_>>()).as_slice();
    // (thread marker, cpu id; None = plain API)
    let roles = [(1u32, Some(0u32)), (2, Some(1)), (3, Some(0)), (4, None)];
    let threads: Vec<_> = roles
        .into_iter()
        .map(|(me, cpu)| {
            std::thread::spawn(move || {
                let mut held: Vec<PoolBox<(u32, u32)>> = Vec::new();
                for i in 0..60_000u32 {
                    if i % 3 != 2 {
                        let r = match cpu {
                            Some(c) => pool.try_alloc_on(c, (me, i)),
                            None => pool.try_alloc((me, i)),
                        };
                        if let Ok(b) = r {
                            let idx = b.index() as usize;
                            assert_eq!(
                                owner[idx].swap(me, Ordering::SeqCst),
                                0,
                                "handed out twice"
                            );
                            held.push(b);
                        }
                    } else if let Some(b) = held.pop() {
                        assert_eq!(b.0, me, "value overwritten by another owner");
                        owner[b.index() as usize].store(0, Ordering::SeqCst);
                        drop(b);
                    }
                    if held.len() > 4 {
                        let b = held.remove(0);
                        owner[b.index() as usize].store(0, Ordering::SeqCst);
                        // Sometimes free on the other CPU (a bio completed elsewhere).
                        if i % 5 == 0 {
                            b.free_on(1);
                        }
                    }
                }
                for b in held {
                    owner[b.index() as usize].store(0, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.in_use, 0);
    assert_eq!(s.allocs, s.frees);
    let mut boxes = Vec::new();
    while let Ok(b) = pool.try_alloc((0, 0)) {
        boxes.push(b);
    }
    let mut all: Vec<u32> = boxes.iter().map(|b| b.index()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), N, "an element was lost or duplicated");
    assert_eq!(pool.cached(), 0);
}
