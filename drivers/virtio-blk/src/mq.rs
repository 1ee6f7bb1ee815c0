//! Host tests of multi-queue (`VIRTIO_BLK_F_MQ`): bios from several (pretend) CPUs through a
//! real `blk::Queue` mapped onto the driver's queues and the device model's rings. Each request
//! goes on the ring of its hardware context, each queue's interrupt reaps only its own ring,
//! a device offering fewer queues than CPUs is shared, `num_queues` of 0 or past the queues the
//! device has falls back (and says so), and a reset, by a protocol violation on one queue or a
//! timeout, takes every queue's requests with it and sets every ring up again.

use core::sync::atomic::Ordering::{Relaxed, SeqCst};

use blk::{BioFlags, Op};

use crate::fake::Device;
use crate::queue::{DriverStats, QueueFallback};
use crate::stack::{BIO_DONE, BIO_ERR, Setup, Stack, reset_counters, serial};

/// `VIRTIO_BLK_F_MQ` (virtio 1.2, 5.2.3), spelled out here rather than taken from the driver.
const F_MQ: u64 = 1 << 12;

/// The device offers `VIRTIO_BLK_F_MQ` with `num_queues` and has `exist` queues.
fn mq(num_queues: u16, exist: u16) -> impl FnOnce(&mut Device) {
    move |d: &mut Device| {
        d.offered |= F_MQ;
        d.set_num_queues(num_queues);
        d.queues = exist;
    }
}

fn stack(want: usize, cpus: usize, dev: impl FnOnce(&mut Device)) -> &'static Stack {
    reset_counters();
    Setup::plain(256, 64)
        .stack_mq(want, cpus, dev)
        .expect("bring-up")
}

/// A one-page read by bio `i` from CPU `cpu`, at its own sector.
fn read_on(s: &Stack, cpu: usize, i: usize) {
    let b = s.bio(
        i,
        Op::Read,
        BioFlags::empty(),
        8 * i as u64,
        &[(2 * i, 4096)],
    );
    s.submit_on(cpu, b).expect("submit");
}

fn done(i: usize) -> u32 {
    BIO_DONE[i].load(SeqCst)
}

#[test]
fn each_cpu_submits_on_its_own_ring_and_its_interrupt_reaps_only_that_ring() {
    let _g = serial();
    let s = stack(4, 4, mq(4, 4));
    let info = *s.hw.info();
    assert_eq!((info.queues_offered, info.queues), (4, 4));
    assert_eq!(info.queue_fallback, None);
    assert_ne!(s.dev().driver_features & F_MQ, 0, "MQ not negotiated");
    assert_eq!((s.hw.nr_queues(), s.q.nr_hw_contexts()), (4, 4));
    let before = s.hw.stats().snapshot();
    let rung = || {
        (0..4)
            .map(|q| s.dev().queue_notifies[q] as u64)
            .sum::<u64>()
    };
    let rung0 = rung();
    for cpu in 0..4 {
        assert!(!s.q.hw_context_shared(cpu));
        read_on(s, cpu, cpu);
    }
    for q in 0..4 {
        assert_eq!(s.hw.queue_in_flight(q), 1, "queue {q}");
        assert!(s.dev().queue_notifies[q] >= 1, "queue {q} never notified");
    }
    // The device finishes queue 2 only: its interrupt completes CPU 2's read and nothing else.
    assert_eq!(s.dev().run_queue(2), 1);
    for q in [0, 1, 3] {
        assert_eq!(s.hw.handle_queue_irq(q), 0, "queue {q} reaped another ring");
    }
    assert_eq!(s.hw.handle_queue_irq(2), 1);
    assert_eq!((done(0), done(1), done(2), done(3)), (0, 0, 1, 0));
    assert_eq!(s.hw.queue_completions(2), 1);
    // Then the rest, each from its own ring.
    for q in [3, 0, 1] {
        assert_eq!(s.dev().run_queue(q), 1);
        assert_eq!(s.hw.handle_queue_irq(q), 1);
        assert_eq!(done(q), 1);
    }
    for q in 0..4 {
        assert_eq!(s.hw.queue_completions(q), 1, "queue {q}");
        assert_eq!(s.dev().queue_served[q], 1, "queue {q}");
    }
    assert_eq!(BIO_ERR.iter().map(|e| e.load(SeqCst)).sum::<u32>(), 0);
    // Each queue counted its own I/O path; the totals add every queue's up.
    let t = s.hw.stats();
    let delta = |name: &str| {
        let k = DriverStats::NAMES.iter().position(|n| *n == name).unwrap();
        t.snapshot()[k] - before[k]
    };
    assert_eq!(delta("requests"), 4);
    assert_eq!(delta("reaped"), 4);
    assert_eq!(delta("completions"), 4);
    assert_eq!(delta("errors"), 0);
    // Seven handler runs: three that found their ring empty, four that reaped one each.
    assert_eq!(delta("interrupts"), 7);
    // One doorbell decision per read (each the last of its batch), every doorbell counted.
    assert_eq!(delta("notifies") + delta("notifies_suppressed"), 4);
    assert_eq!(delta("notifies"), rung() - rung0);
    s.check_idle(4).unwrap();
}

#[test]
fn fewer_queues_than_cpus_are_shared_by_neighbours() {
    let _g = serial();
    let s = stack(4, 4, mq(2, 2));
    assert_eq!((s.hw.nr_queues(), s.q.nr_hw_contexts()), (2, 2));
    assert!(s.q.hw_context_shared(0) && s.q.hw_context_shared(1));
    for cpu in 0..4 {
        read_on(s, cpu, cpu);
    }
    // CPUs 0 and 1 on queue 0, 2 and 3 on queue 1.
    assert_eq!((s.hw.queue_in_flight(0), s.hw.queue_in_flight(1)), (2, 2));
    assert_eq!(s.dev().run_queue(1), 2);
    assert_eq!(s.hw.handle_queue_irq(1), 2);
    assert_eq!((done(0), done(1), done(2), done(3)), (0, 0, 1, 1));
    assert!(s.settle(4, 100));
    s.check_idle(4).unwrap();
}

#[test]
fn no_mq_or_one_queue_wanted_is_one_queue() {
    let _g = serial();
    // The device has no VIRTIO_BLK_F_MQ.
    let s = stack(4, 4, |_| {});
    let info = *s.hw.info();
    assert_eq!(
        (info.queues_offered, info.queues, info.queue_fallback),
        (1, 1, None)
    );
    assert_eq!(s.q.nr_hw_contexts(), 1);
    for cpu in 0..4 {
        read_on(s, cpu, cpu);
    }
    assert_eq!(s.hw.queue_in_flight(0), 4);
    assert!(s.settle(4, 100));
    s.check_idle(4).unwrap();
    // One queue asked for (MSI-X missing, polled, MMIO): MQ is not even negotiated.
    let s = stack(1, 4, mq(4, 4));
    assert_eq!(s.hw.nr_queues(), 1);
    assert_eq!(s.dev().driver_features & F_MQ, 0);
}

#[test]
fn num_queues_zero_falls_back_to_one_queue() {
    let _g = serial();
    let s = stack(4, 4, mq(0, 4));
    let info = *s.hw.info();
    assert_eq!((info.queues_offered, info.queues), (0, 1));
    assert_eq!(info.queue_fallback, Some(QueueFallback::NoQueues));
    for cpu in 0..4 {
        read_on(s, cpu, cpu);
    }
    assert!(s.settle(4, 100));
    s.check_idle(4).unwrap();
}

#[test]
fn num_queues_past_the_queues_that_exist_uses_those_that_do() {
    let _g = serial();
    // Garbage: 65535 queues offered, three exist.
    let s = stack(4, 4, mq(u16::MAX, 3));
    let info = *s.hw.info();
    assert_eq!((info.queues_offered, info.queues), (u16::MAX, 3));
    assert_eq!(info.queue_fallback, Some(QueueFallback::QueueMissing(3)));
    assert_eq!(s.q.nr_hw_contexts(), 3);
    for cpu in 0..4 {
        read_on(s, cpu, cpu);
    }
    assert!(s.settle(4, 100));
    s.check_idle(4).unwrap();
    // More CPUs than blk has contexts for: the driver asks for no more than it can map.
    let s = stack(64, 8, mq(64, 8));
    assert_eq!(s.hw.nr_queues(), crate::queue::MAX_QUEUES);
}

/// One read in flight on each of four queues.
fn four_in_flight() -> &'static Stack {
    let s = stack(4, 4, mq(4, 4));
    for cpu in 0..4 {
        read_on(s, cpu, cpu);
    }
    for q in 0..4 {
        assert_eq!(s.hw.queue_in_flight(q), 1);
    }
    s
}

/// After a reset: every ring set up again at full size, every read done once without error.
fn check_recovered(s: &Stack) {
    for q in 0..4 {
        let mut d = s.dev();
        d.select(q);
        assert_eq!(d.ring_size(), 256, "queue {q} not set up again");
    }
    assert!(s.settle(4, 200), "reads not done after the reset");
    assert_eq!(BIO_ERR.iter().map(|e| e.load(SeqCst)).sum::<u32>(), 0);
    assert!(!s.hw.is_dead());
    s.check_idle(4).unwrap();
}

#[test]
fn a_violation_on_one_queue_resets_every_queue_and_requeues_all_in_flight() {
    let _g = serial();
    let s = four_in_flight();
    // Queue 1's used ring names a chain that does not exist.
    {
        let mut d = s.dev();
        d.select(1);
        d.push_used(999, 1);
    }
    s.hw.handle_queue_irq(1);
    assert_eq!(s.hw.stats().resets.load(Relaxed), 1);
    assert_eq!(s.hw.stats().bad_used_ids.load(Relaxed), 1);
    // Nothing is left on any ring; the block layer dispatches the aborted reads again.
    check_recovered(s);
    assert_eq!(s.hw.stats().resets.load(Relaxed), 1);
    // Each came back through its own queue.
    for q in 0..4 {
        assert_eq!(s.hw.queue_completions(q), 1, "queue {q}");
    }
}

#[test]
fn a_timeout_resets_every_queue_and_requeues_all_in_flight() {
    let _g = serial();
    let s = four_in_flight();
    // The device never answers: the first deadline resets it with all four in flight.
    while s.hw.stats().timeouts.load(Relaxed) == 0 {
        s.tick();
    }
    assert_eq!(s.hw.stats().resets.load(Relaxed), 1);
    assert_eq!(s.hw.in_flight(), 4, "the reads were not dispatched again");
    check_recovered(s);
}
