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
