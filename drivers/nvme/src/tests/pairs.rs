//! Several I/O queue pairs: one per hardware context of the block layer's queue (one per CPU
//! in the kernel), each completion queue on its own interrupt vector; what the controller
//! grants; a reset with commands in flight on several pairs.

use std::collections::BTreeMap;

use super::*;
use crate::DriverStats;

/// The driver asking for `queues` pairs, under a queue whose `cpus` CPUs are mapped onto the
/// pairs granted, one submission context per CPU.
struct Mq {
    fake: Arc<FakeCtrl>,
    nvme: &'static Nvme,
    q: &'static Queue<QUEUE_DEPTH>,
    rec: &'static Recorder,
    set: &'static BioSet<Counts>,
    ctxs: Vec<&'static CpuCtx>,
}

fn mq(queues: u16, cpus: usize, setup: impl FnOnce(&mut fake::Model)) -> Mq {
    let mut cfg = config(Mode::Interrupt, false);
    cfg.queues = queues;
    let (fake, nvme) = bring_up(8192, 512, setup, cfg);
    let nvme: &'static Nvme = leak(nvme.expect("bring-up"));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split: &'static BioSet<()> = leak(BioSet::new(split_slab, 4, None));
    let mut qc = QueueConfig::new(nvme.info().capacity);
    qc.clock = fake::clock;
    qc.timeout_ns = 1_000_000_000;
    qc.wait = Wait::Never;
    let q: &'static Queue<QUEUE_DEPTH> = leak(Queue::new(nvme, nvme.limits(), qc, split));
    assert_eq!(
        q.map_hw_contexts(nvme.io_queues(), cpus),
        Ok(nvme.io_queues().min(cpus))
    );
    let rec: &'static Recorder = leak(Recorder::default());
    rec.next.call_once(|| q);
    nvme.attach(rec);
    let ctxs = (0..cpus).map(|c| leak(CpuCtx::new(c as u32))).collect();
    Mq {
        fake,
        nvme,
        q,
        rec,
        set: bio_set(),
        ctxs,
    }
}

impl Mq {
    /// A 4 KiB read of sector `sector` submitted on CPU `cpu`.
    fn read(&self, cpu: usize, sector: u64, buf: &DmaBuf) -> Counts {
        let c = Counts::new();
        let mut b = bio(self.set, Op::Read, sector, &[seg(buf, 0, 4096)], c);
        b.set_dev(self.q);
        assert!(submit_bio(self.ctxs[cpu], b).is_ok());
        c
    }
    /// The I/O submission queue each read of `sectors` was fetched from.
    fn sq_of_reads(&self, sectors: &[u64]) -> Vec<u16> {
        self.fake.with(|m| {
            sectors
                .iter()
                .map(|&s| {
                    let found = m.log.iter().find(|(q, c)| {
                        *q != 0
                            && c.opcode() == nvm::READ
                            && (c.dw[10] as u64 | (c.dw[11] as u64) << 32) == s
                    });
                    found.map_or(0, |(q, _)| *q)
                })
                .collect()
        })
    }
    /// Interrupts signalled per vector since `before` (a snapshot of the model's counts).
    fn irqs_since(&self, before: &BTreeMap<u16, u64>) -> Vec<(u16, u64)> {
        self.fake.with(|m| {
            m.irqs_by_vector
                .iter()
                .map(|(v, n)| (*v, n - before.get(v).copied().unwrap_or(0)))
                .filter(|(_, n)| *n != 0)
                .collect()
        })
    }
    fn irqs_now(&self) -> BTreeMap<u16, u64> {
        self.fake.with(|m| m.irqs_by_vector.clone())
    }
}

/// `(queue id, vector)` of every I/O completion queue created, in order.
fn created_cqs(f: &FakeCtrl) -> Vec<(u16, u16)> {
    f.with(|m| {
        m.log
            .iter()
            .filter(|(q, c)| *q == 0 && c.opcode() == admin::CREATE_CQ)
            .map(|(_, c)| ((c.dw[10] & 0xffff) as u16, (c.dw[11] >> 16) as u16))
            .collect()
    })
}

/// `(queue id, its completion queue)` of every I/O submission queue created, in order.
fn created_sqs(f: &FakeCtrl) -> Vec<(u16, u16)> {
    f.with(|m| {
        m.log
            .iter()
            .filter(|(q, c)| *q == 0 && c.opcode() == admin::CREATE_SQ)
            .map(|(_, c)| ((c.dw[10] & 0xffff) as u16, (c.dw[11] >> 16) as u16))
            .collect()
    })
}

#[test]
fn one_pair_per_cpu_each_request_on_its_own_sq_and_cq() {
    let e = mq(4, 4, |_| {});
    assert_eq!(e.nvme.io_queues(), 4);
    let i = *e.nvme.info();
    assert_eq!((i.queues_wanted, i.queues_granted), (4, 4));
    assert_eq!(created_cqs(&e.fake), [(1, 0), (2, 1), (3, 2), (4, 3)]);
    assert_eq!(created_sqs(&e.fake), [(1, 1), (2, 2), (3, 3), (4, 4)]);
    // Number of Queues asked for four of each (zero-based).
    let nq = e.fake.with(|m| {
        m.log
            .iter()
            .find(|(q, c)| *q == 0 && c.opcode() == admin::SET_FEATURES && c.dw[10] == 7)
            .map(|(_, c)| c.dw[11])
    });
    assert_eq!(nq, Some(3 << 16 | 3));

    let bufs: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    // Two reads from each CPU.
    let sectors: Vec<u64> = (0..8).map(|k| 100 + 8 * k).collect();
    let irqs = e.irqs_now();
    let before = e.nvme.stats().snapshot();
    let counts: Vec<Counts> = (0..8)
        .map(|k| e.read(k % 4, sectors[k], &bufs[k]))
        .collect();
    e.fake.step();
    assert_eq!(e.sq_of_reads(&sectors), [1, 2, 3, 4, 1, 2, 3, 4]);
    assert_eq!(e.irqs_since(&irqs), [(0, 2), (1, 2), (2, 2), (3, 2)]);
    for k in 0..4 {
        assert_eq!(e.nvme.in_flight_on(k), 2);
    }
    // Vector 2's handler completes CPU 2's reads and nothing else.
    e.nvme.handle_vector(2);
    let done: Vec<u32> = counts.iter().map(|c| c.get().0).collect();
    assert_eq!(done, [0, 0, 1, 0, 0, 0, 1, 0]);
    assert_eq!(e.nvme.in_flight_on(2), 0);
    assert_eq!(e.nvme.in_flight(), 6);
    // A vector with no pair does nothing.
    e.nvme.handle_vector(7);
    assert_eq!(e.nvme.in_flight(), 6);
    for v in [0, 1, 3] {
        e.nvme.handle_vector(v);
    }
    for (k, c) in counts.iter().enumerate() {
        assert_eq!(c.get(), (1, 0), "read {k} ended once, successfully");
        assert_eq!(
            bufs[k].as_slice(),
            e.fake.disk(sectors[k] as usize * 512, 4096)
        );
    }
    assert_eq!(e.rec.take().len(), 8);
    assert_eq!(e.nvme.in_flight(), 0);
    assert_eq!(e.q.tags_in_use(), 0);
    // Each pair counted its own I/O path; the totals add every pair's up.
    let after = e.nvme.stats().snapshot();
    let delta = |name: &str| {
        let k = DriverStats::NAMES.iter().position(|n| *n == name).unwrap();
        after[k] - before[k]
    };
    assert_eq!(delta("requests"), 8);
    assert_eq!(delta("reaped"), 8);
    assert_eq!(delta("completions"), 8);
    assert_eq!(delta("errors"), 0);
    // Vectors 2, 0, 1 and 3 (7 has no pair and is not counted).
    assert_eq!(delta("interrupts"), 4);
    // Polling one context reaps only its pair.
    let c = e.read(1, 300, &bufs[0]);
    let d = e.read(3, 308, &bufs[1]);
    e.fake.step();
    assert_eq!(e.nvme.poll_hctx(1), 1);
    assert_eq!((c.get(), d.get()), ((1, 0), (0, 0)));
    e.nvme.handle_vector(3);
    assert_eq!(d.get(), (1, 0));
}

#[test]
fn a_smaller_grant_maps_several_cpus_to_a_pair() {
    let e = mq(4, 4, |m| m.max_io_queues = 2);
    let i = *e.nvme.info();
    assert_eq!((i.queues_wanted, i.queues_granted), (4, 2));
    assert_eq!(e.nvme.io_queues(), 2);
    assert_eq!(e.q.nr_hw_contexts(), 2);
    assert_eq!(created_cqs(&e.fake), [(1, 0), (2, 1)]);
    assert_eq!(created_sqs(&e.fake), [(1, 1), (2, 2)]);
    let bufs: Vec<DmaBuf> = (0..4).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    let sectors = [200, 208, 216, 224];
    let irqs = e.irqs_now();
    let counts: Vec<Counts> = (0..4).map(|k| e.read(k, sectors[k], &bufs[k])).collect();
    e.fake.step();
    // CPUs 0 and 1 share pair 0, CPUs 2 and 3 pair 1.
    assert_eq!(e.sq_of_reads(&sectors), [1, 1, 2, 2]);
    assert_eq!(e.irqs_since(&irqs), [(0, 2), (1, 2)]);
    e.nvme.handle_vector(1);
    let done: Vec<u32> = counts.iter().map(|c| c.get().0).collect();
    assert_eq!(done, [0, 0, 1, 1]);
    e.nvme.handle_irq();
    assert!(counts.iter().all(|c| c.get() == (1, 0)));
    assert_eq!(e.q.tags_in_use(), 0);

    // INTx, polling and a single vector ask for one pair.
    for (mode, intx) in [(Mode::Interrupt, true), (Mode::Polling, false)] {
        let mut cfg = config(mode, false);
        cfg.queues = 4;
        cfg.intx = intx;
        let (f, n) = bring_up(64, 512, |_| {}, cfg);
        let n = n.expect("bring-up");
        assert_eq!((n.io_queues(), n.info().queues_wanted), (1, 1));
        assert_eq!(created_sqs(&f), [(1, 1)]);
    }
}

#[test]
fn a_reset_with_commands_in_flight_on_every_pair_recreates_them_all() {
    // The first eight reads are fetched and never completed.
    let e = mq(4, 4, |m| m.stall = vec![(nvm::READ, 8)]);
    let bufs: Vec<DmaBuf> = (0..8).map(|_| DmaBuf::alloc(4096, 4096).unwrap()).collect();
    let sectors: Vec<u64> = (0..8).map(|k| 400 + 8 * k).collect();
    let counts: Vec<Counts> = (0..8)
        .map(|k| e.read(k % 4, sectors[k], &bufs[k]))
        .collect();
    e.fake.step();
    assert_eq!(e.fake.with(|m| m.stalled.len()), 8);
    for k in 0..4 {
        assert_eq!(e.nvme.in_flight_on(k), 2);
    }
    assert!(e.nvme.force_reset());
    e.fake.with(|m| {
        assert_eq!(m.enables, 2);
        // Four SQs, then four CQs.
        assert_eq!(m.deletions, 8);
        assert!(m.stalled.is_empty());
    });
    // Created again, each with its vector.
    assert_eq!(
        created_cqs(&e.fake),
        [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3),
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3)
        ]
    );
    let aborted = e.rec.take();
    assert_eq!(aborted.len(), 8);
    assert!(aborted.iter().all(|c| c.status == Err(BlkError::Aborted)));
    // The block layer sends them again, each to its own pair; now they complete.
    e.q.kick();
    e.fake.step();
    for v in 0..4 {
        e.nvme.handle_vector(v);
    }
    for (k, c) in counts.iter().enumerate() {
        assert_eq!(c.get(), (1, 0), "read {k} ended exactly once, successfully");
    }
    let sqs: Vec<u16> = e.fake.with(|m| {
        m.log
            .iter()
            .filter(|(q, c)| *q != 0 && c.opcode() == nvm::READ)
            .map(|(q, _)| *q)
            .collect()
    });
    assert_eq!(sqs.len(), 16);
    let mut again = sqs[8..].to_vec();
    again.sort_unstable();
    assert_eq!(again, [1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(e.nvme.in_flight(), 0);
    assert_eq!(e.q.tags_in_use(), 0);

    // A reset whose controller now grants fewer pairs than the queue maps fails: the
    // controller is dead, and I/O fails at once.
    e.fake.with(|m| m.max_io_queues = 2);
    assert!(!e.nvme.force_reset());
    assert!(e.nvme.is_dead());
    let c = e.read(3, 500, &bufs[0]);
    assert_eq!(c.get(), (1, 1));
}
