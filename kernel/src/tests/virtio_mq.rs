//! virtio-blk multi-queue: over PCI with MSI-X on several CPUs the device has one request queue
//! per CPU (as many as it offers), each with its own interrupt vector; every CPU reads through
//! its own queue, and each queue's completions arrive on the used ring of that queue; its
//! interrupt is taken on the CPU that owns it, never on another, and so are the completions
//! it delivers (a reap the handler hands to the code it interrupted runs on that CPU too). Where the
//! device shares one queue (virtio-mmio, INTx, polled, one CPU, no `VIRTIO_BLK_F_MQ`), the test
//! checks that exactly one queue is used.

use core::sync::atomic::{AtomicU32, Ordering};

use blk::{BlockDevice, Op, Wait, submit_bio_wait};
use hal::DmaBuf;

use crate::arch;
use crate::block::virtio::{queue_completions_on, queue_interrupts_on, queue_line, queue_vectors};
use crate::block::{self, Attach, DiskKind, IO_SET, MAX_CPUS, cpu_ctx};
use crate::ktest::{Outcome, fail};
use crate::smp::on_each_cpu;
use virtio_blk::queue::MAX_QUEUES;

/// Reads per CPU (one at a time: each is completed before the next is submitted).
const READS: u32 = 16;

/// CPUs whose reads failed.
static ERRORS: AtomicU32 = AtomicU32::new(0);

/// One CPU's reads: 4 KiB each, in its own 64 KiB region.
fn read_own(cpu: usize) {
    let Some(d) = block::virtio::disk() else {
        return;
    };
    let Ok(buf) = DmaBuf::alloc(4096, 4096) else {
        ERRORS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sectors = d.queue.capacity();
    for i in 0..READS {
        let sector = (cpu as u64 * 128 + u64::from(i) * 8) % sectors.saturating_sub(8).max(1);
        let Ok(mut bio) = IO_SET.alloc((), Op::Read, 1, Wait::Hook(block::wait)) else {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            return;
        };
        bio.set_dev(d.queue);
        bio.set_sector(sector);
        // SAFETY: `buf` is DMA memory that stays allocated and is not touched by the CPU until
        // the bio has completed (`submit_bio_wait` returns only then).
        let vec = unsafe { blk::BioVec::new(buf.phys(), 4096) };
        if bio.add_vec(vec).is_err() {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if submit_bio_wait(cpu_ctx(), bio, block::wait).0.is_err() {
            ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

ktest! {
    fn virtio_each_cpu_completes_on_its_own_queue_and_cpu() -> TestResult {
        let d = block::virtio::disk().ok_or(Outcome::NoDisk(DiskKind::Virtio))?;
        let hw = d.hw;
        let info = hw.info();
        let cpus = arch::cpus_online().min(MAX_CPUS);
        let n = hw.nr_queues();
        check_eq!(usize::from(info.queues), n);
        check_eq!(d.queue.nr_hw_contexts(), n);
        let offered = if info.features & virtio_blk::spec::feature::MQ != 0 {
            usize::from(info.queues_offered)
        } else {
            1
        };
        if d.attach != Attach::Msix || cpus < 2 || offered < 2 {
            // One queue, shared by every CPU, with one interrupt.
            check_eq!(n, 1);
            check_eq!(queue_vectors(), 0);
            return Ok(());
        }
        check_eq!(n, cpus.min(offered).min(MAX_QUEUES));
        check_eq!(queue_vectors(), n);
        for q in 0..n {
            let Some(l) = queue_line(q) else {
                return Err(fail(format_args!("queue {} has no vector", q)));
            };
            for r in 0..q {
                check!(
                    queue_line(r).map(|m| m.number()) != Some(l.number()),
                    "queues {} and {} share vector {}",
                    r,
                    q,
                    l.number()
                );
            }
        }
        // Each queue's owner: the first CPU that submits to it.
        let owner = |q: usize| (0..cpus).find(|&c| d.queue.hw_context_of(c as u32) == q);
        // (completions delivered by the handler, handler runs) per queue and CPU.
        let mut before = [[(0u64, 0u64); MAX_CPUS]; MAX_QUEUES];
        let mut ring_before = [0u64; MAX_QUEUES];
        for q in 0..n {
            ring_before[q] = hw.queue_completions(q);
            for (c, b) in before[q].iter_mut().enumerate() {
                *b = (queue_completions_on(q, c), queue_interrupts_on(q, c));
            }
        }
        ERRORS.store(0, Ordering::Relaxed);
        on_each_cpu(read_own);
        check_eq!(ERRORS.load(Ordering::Relaxed), 0);
        for q in 0..n {
            let sharers = (0..cpus)
                .filter(|&c| d.queue.hw_context_of(c as u32) == q)
                .count() as u64;
            let Some(own) = owner(q) else {
                return Err(fail(format_args!("no CPU submits to queue {}", q)));
            };
            // Every read of the CPUs on this queue came back on this queue's used ring.
            check_eq!(hw.queue_completions(q) - ring_before[q], sharers * u64::from(READS));
            let mut on_owner = 0;
            let mut delivered = 0;
            for (c, b) in before[q].iter().enumerate() {
                let done = queue_completions_on(q, c) - b.0;
                let runs = queue_interrupts_on(q, c) - b.1;
                if c == own {
                    on_owner = runs;
                    delivered = done;
                } else {
                    check!(
                        runs == 0 && done == 0,
                        "queue {} (CPU {}'s) interrupt ran {} times on CPU {}, delivering {}",
                        q,
                        own,
                        runs,
                        c,
                        done
                    );
                }
            }
            check!(on_owner > 0, "queue {}'s interrupt never ran on CPU {}", q, own);
            defmt::println!(
                "virtio queue {=usize}: CPU {=usize}, {=u64} reads on its ring, {=u64} interrupts there, {=u64} completions delivered by them",
                q,
                own,
                hw.queue_completions(q) - ring_before[q],
                on_owner,
                delivered
            );
        }
        Ok(())
    }
}
