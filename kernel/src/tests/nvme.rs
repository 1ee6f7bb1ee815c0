//! NVMe: the block-device conformance suite on the first NVMe namespace, a request whose PRP
//! list needs a second list page, Identify through passthrough, a controller reset in the
//! middle of a QD32 workload, and the namespaces the profile sets up (`nvme_nsid`,
//! `nvme_attached`, `nvme_active` on the command line): each attached one its own disk. Every
//! CPU's I/O on its own queue pair, completed on that CPU (`nvme_pairs` on the command line:
//! how many pairs the profile must get).

use core::sync::atomic::{AtomicU32, Ordering};

use blk::{Bio, BioFlags, BioSet, BioSlab, BioVec, Op, PtCmd, Wait, submit_bio};
use hal::{DmaBuf, PhysAddr};

use super::blockdev::{
    Target, async_reset, async_wait, completion_accounting, dma, fill, flush_and_fua,
    full_depth_in_flight, io_ok, multi_segment_scattered, past_end_refused, plug_merges,
    readback_start_middle_end, single_sector_and_1mib, split_by_limits, submit_async,
};
use crate::block::{self, IO_SET, MAX_CPUS, cpu_ctx, nvme::NvmeDisk};
use crate::ktest::{Outcome, TestResult};

fn disk() -> Result<&'static NvmeDisk, Outcome> {
    block::nvme::disk().ok_or(Outcome::NoDisk(block::DiskKind::Nvme))
}

fn target() -> Result<Target, Outcome> {
    let d = disk()?;
    Ok(Target {
        dev: d.queue,
        stats: || {
            block::nvme::disk()
                .map(|d| d.queue.stats().snapshot())
                .unwrap_or_default()
        },
        tags_in_use: || block::nvme::disk().map_or(0, |d| d.queue.tags_in_use()),
        depth: cpu_depth(d.queue),
        max_request_bytes: d.queue.limits().max_bytes(),
        irq_count: block::nvme::interrupts,
    })
}

/// The tags one CPU can have in flight on `q`: those of its hardware context (the queue's
/// depth split between the I/O queue pairs).
fn cpu_depth(q: &blk::Queue<{ nvme::QUEUE_DEPTH }>) -> usize {
    nvme::QUEUE_DEPTH / q.nr_hw_contexts().max(1)
}

ktest! { fn nvme_readback_start_middle_end() -> TestResult { readback_start_middle_end(&target()?) } }
ktest! { fn nvme_past_end_refused() -> TestResult { past_end_refused(&target()?) } }
ktest! { fn nvme_single_sector_and_1mib() -> TestResult { single_sector_and_1mib(&target()?) } }
ktest! { fn nvme_multi_segment_scattered() -> TestResult { multi_segment_scattered(&target()?) } }
ktest! { fn nvme_split_by_limits() -> TestResult { split_by_limits(&target()?) } }
ktest! { fn nvme_plug_merges() -> TestResult { plug_merges(&target()?) } }
ktest! { fn nvme_full_depth_in_flight() -> TestResult { full_depth_in_flight(&target()?) } }
ktest! { fn nvme_flush_and_fua() -> TestResult { flush_and_fua(&target()?) } }

ktest! {
    fn nvme_completion_accounting_and_interrupts() -> TestResult {
        let t = target()?;
        let d = disk()?;
        let s = d.hw.stats();
        let irq0 = s.interrupts.load(Ordering::Relaxed);
        let bad0 = s.bad_cids.load(Ordering::Relaxed);
        completion_accounting(&t)?;
        check_eq!(d.hw.in_flight(), 0);
        check_eq!(d.hw.stats().bad_cids.load(Ordering::Relaxed), bad0);
        if d.irq.is_some() {
            check!(
                d.hw.stats().interrupts.load(Ordering::Relaxed) > irq0,
                "no interrupt for 32 reads"
            );
        }
        Ok(())
    }
}

ktest! {
    fn nvme_prp_list_needs_two_pages() -> TestResult {
        let t = target()?;
        let d = disk()?;
        if d.hw.info().sgl {
            return Err(Outcome::Skip("SGLs in use"));
        }
        // 640 pages from an offset: 640 PRP entries, 639 in lists (a page holds 512).
        const BYTES: usize = 640 * 4096;
        check!(
            t.max_request_bytes as usize >= BYTES,
            "max request {} bytes: the controller's MDTS is too small for this test",
            t.max_request_bytes
        );
        let mut buf = dma(BYTES + 4096)?;
        let off = 512usize;
        fill(&mut buf.as_mut_slice()[off..off + BYTES], 77);
        let chained0 = d.hw.stats().chained_lists.load(Ordering::Relaxed);
        let seg = [(buf.phys().add(off as u64), BYTES as u32)];
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Write, 30000, &seg, BioFlags::empty()) }?;
        check_eq!(d.hw.stats().chained_lists.load(Ordering::Relaxed), chained0 + 1);
        buf.as_mut_slice().fill(0);
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Read, 30000, &seg, BioFlags::empty()) }?;
        check_eq!(d.hw.stats().chained_lists.load(Ordering::Relaxed), chained0 + 2);
        let mut want = [0u8; 4096];
        for (k, chunk) in buf.as_slice()[off..off + BYTES].chunks(4096).enumerate() {
            fill(&mut want, 77);
            let _ = &want;
            let _ = k;
            check!(chunk.iter().any(|&b| b != 0), "page {} read back empty", k);
        }
        let mut again = dma(BYTES)?;
        fill(again.as_mut_slice(), 77);
        check!(
            buf.as_slice()[off..off + BYTES] == again.as_slice()[..],
            "two-page PRP list read back wrong"
        );
        Ok(())
    }
}

ktest! {
    fn nvme_identify_through_passthrough() -> TestResult {
        let d = disk()?;
        let buf = dma(4096)?;
        let cmd = PtCmd {
            opcode: nvme::pt::ADMIN,
            // Identify (0x06), CNS 1 (controller).
            args: [0x06, 1, 0, 0],
            // SAFETY: `buf` is this test's DMA buffer, alive until after `passthrough_wait`
            // below returns (the command has completed) and not touched meanwhile.
            data: Some(unsafe { BioVec::new(buf.phys(), 4096) }),
            write: false,
        };
        let before = d.hw.stats().passthrough.load(Ordering::Relaxed);
        let r = d
            .queue
            .passthrough_wait(cmd, block::wait)
            .map_err(|(e, _)| crate::ktest::fail(format_args!("passthrough: {:?}", e)))?;
        check!(r.status.is_ok(), "identify failed: {:?}", r.status);
        check_eq!(d.hw.stats().passthrough.load(Ordering::Relaxed), before + 1);
        let b = buf.as_slice();
        check_eq!(u16::from_le_bytes([b[0], b[1]]), d.hw.info().vendor);
        check_eq!(u16::from_le_bytes([b[0], b[1]]), 0x1b36);
        check!(b[4..24] == d.hw.info().serial, "serial differs from bring-up Identify");
        check!(b[4..13] == *b"stack0001", "serial is not the profile's");
        // An invalid opcode is refused with an error, not lost.
        let bad = PtCmd { opcode: nvme::pt::ADMIN, args: [0xef, 0, 0, 0], data: None, write: false };
        let r = d
            .queue
            .passthrough_wait(bad, block::wait)
            .map_err(|(e, _)| crate::ktest::fail(format_args!("passthrough: {:?}", e)))?;
        check!(r.status.is_err(), "invalid admin opcode succeeded");
        check_eq!(d.hw.in_flight(), 0);
        Ok(())
    }
}

ktest! {
    fn nvme_reset_during_qd32_completes_each_once() -> TestResult {
        let t = target()?;
        let d = disk()?;
        let s = d.hw.stats();
        let resets0 = s.resets.load(Ordering::Relaxed);
        let before = (t.stats)();
        let mut buf = dma(32 * 4096)?;
        fill(buf.as_mut_slice(), 91);
        async_reset();
        let mut in_flight = 0;
        let res = crate::arch::without_interrupts(|| -> TestResult {
            for i in 0..32usize {
                let op = if i % 2 == 0 { Op::Write } else { Op::Read };
                // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
                unsafe { submit_async(
                    &t,
                    i,
                    op,
                    100_000 + (i as u64) * 16,
                    &[(PhysAddr(buf.phys().0 + (i * 4096) as u64), 4096)],
                ) }?;
            }
            in_flight = d.hw.in_flight();
            check!(d.hw.force_reset(), "controller did not come back after reset");
            Ok(())
        });
        res?;
        defmt::println!("reset ({}) with {=usize} commands in flight", d.attach, in_flight);
        async_wait(32)?;
        check_eq!(d.hw.stats().resets.load(Ordering::Relaxed), resets0 + 1);
        check!(!d.hw.is_dead(), "controller dead");
        let after = (t.stats)();
        check_eq!(after.late_completions, before.late_completions);
        check_eq!((t.tags_in_use)(), 0);
        check_eq!(d.hw.in_flight(), 0);
        // The controller still works.
        let r = dma(4096)?;
        // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
        unsafe { io_ok(&t, Op::Read, 100_000, &[(r.phys(), 4096)], BioFlags::empty()) }?;
        check!(r.as_slice() == &buf.as_slice()[..4096], "write before the reset lost");
        Ok(())
    }
}

/// Reads of `nvme_interrupts_survive_polled_admin_commands` completed, and the first error.
static PROBE_DONE: AtomicU32 = AtomicU32::new(0);
static PROBE_ERR: AtomicU32 = AtomicU32::new(0);

fn probe_end_io(bio: Bio) {
    if let Err(e) = bio.status() {
        let _ = PROBE_ERR.compare_exchange(0, e.code(), Ordering::AcqRel, Ordering::Relaxed);
    }
    PROBE_DONE.fetch_add(1, Ordering::Release);
}

ktest! {
    fn nvme_interrupts_survive_polled_admin_commands() -> TestResult {
        // Passthrough waits reap with the driver's `poll` while the admin completion may
        // arrive (and interrupt) at the same time. After each one a read must still complete
        // by interrupt, well before the block layer's 5 s timeout would reap it (3 s: room
        // for a loaded host, where the guest clock is wall time).
        let t = target()?;
        let d = disk()?;
        if d.irq.is_none() {
            return Err(Outcome::Skip("polled"));
        }
        let id = dma(4096)?;
        let r = dma(4096)?;
        PROBE_DONE.store(0, Ordering::Relaxed);
        PROBE_ERR.store(0, Ordering::Relaxed);
        const ROUNDS: u32 = 1000;
        for round in 0..ROUNDS {
            let cmd = PtCmd {
                opcode: nvme::pt::ADMIN,
                args: [0x06, 1, 0, 0],
                // SAFETY: `id` is this test's DMA buffer, alive for the whole loop; each
                // command is waited for (`passthrough_wait`) before the next one reuses it.
                data: Some(unsafe { BioVec::new(id.phys(), 4096) }),
                write: false,
            };
            let res = d
                .queue
                .passthrough_wait(cmd, block::wait)
                .map_err(|(e, _)| crate::ktest::fail(format_args!("passthrough: {:?}", e)))?;
            check!(res.status.is_ok(), "identify failed: {:?}", res.status);
            let mut bio = IO_SET
                .alloc((), Op::Read, 1, Wait::Hook(block::wait))
                .map_err(|e| crate::ktest::fail(format_args!("bio: {:?}", e)))?;
            bio.set_dev(t.dev);
            bio.set_sector(40_000 + (round as u64 % 64) * 8);
            // SAFETY: `r` is this test's DMA buffer, alive for the whole loop; the loop waits
            // for this bio's completion before it submits the next one or returns.
            bio.add_vec(unsafe { BioVec::new(r.phys(), 4096) })
                .map_err(|e| crate::ktest::fail(format_args!("bio: {:?}", e)))?;
            bio.set_end_io(probe_end_io);
            submit_bio(cpu_ctx(), bio)
                .map_err(|(e, _)| crate::ktest::fail(format_args!("submit: {:?}", e)))?;
            let start = block::clock();
            let mut late = false;
            while PROBE_DONE.load(Ordering::Acquire) <= round {
                if !late && block::clock() - start > 3_000_000_000 {
                    late = true;
                }
                // The block layer retries and finally fails the read: wait for that before
                // the buffer goes away.
                check!(
                    block::clock() - start < 100_000_000_000,
                    "read after admin command {} never completed",
                    round
                );
                block::wait();
            }
            check!(
                !late,
                "read after admin command {}: irq lost ({} irqs, {} masks, {} unmasks)",
                round,
                d.hw.stats().interrupts.load(Ordering::Relaxed),
                d.hw.stats().masks.load(Ordering::Relaxed),
                d.hw.stats().unmasks.load(Ordering::Relaxed)
            );
            let e = PROBE_ERR.load(Ordering::Relaxed);
            check!(e == 0, "read failed: {:?}", blk::BlkError::from_code(e));
        }
        check_eq!(d.hw.in_flight(), 0);
        Ok(())
    }
}

/// A word of the kernel command line.
fn arg(key: &str) -> Option<&'static str> {
    crate::boot::cmdline_arg(crate::boot_info().cmdline, key)
}

/// The namespace ids in a comma-separated command-line value.
fn ids(key: &str, value: &'static str) -> impl Iterator<Item = Result<u32, Outcome>> {
    value.split(',').map(move |id| {
        id.parse()
            .map_err(|_| crate::ktest::fail(format_args!("{}={}", key, value)))
    })
}

/// The namespaces the profile attaches (`nvme_attached=A,B,..`; `nvme_nsid` alone, or 1, when
/// it says nothing).
fn attached_arg() -> &'static str {
    arg("nvme_attached").or(arg("nvme_nsid")).unwrap_or("1")
}

ktest! {
    fn nvme_every_active_namespace_is_accounted_for() -> TestResult {
        // The profile's namespaces: `nvme_nsid=N` the first attached, `nvme_attached=A,B,..`
        // all attached ones, `nvme_active=A,B,..` all active ones (namespace 1 alone when the
        // profile says nothing). Each attached one has a queue of its own, in id order.
        let d = disk()?;
        let want: u32 = arg("nvme_nsid").and_then(|v| v.parse().ok()).unwrap_or(1);
        let ns = d.hw.namespaces();
        check_eq!(d.hw.info().nsid, want);
        check_eq!(ns.attached(), Some(want));
        let attached = attached_arg();
        let mut queues = 0;
        for (k, id) in ids("nvme_attached", attached).enumerate() {
            let id = id?;
            let q = d.hw.ns_queue_info(k);
            check!(q.map(|q| q.nsid) == Some(id), "namespace queue {}: {:?}, want namespace {}", k, q, id);
            check!(block::nvme::namespace(k).is_some(), "no block-layer queue for namespace {}", id);
            queues += 1;
        }
        check_eq!(d.hw.ns_queues(), queues);
        check!(block::nvme::namespace(queues).is_none(), "a queue for a namespace not attached");
        let active = arg("nvme_active").unwrap_or("1");
        let mut seen = ns.iter();
        for id in ids("nvme_active", active) {
            let id = id?;
            let Some(n) = seen.next() else {
                return Err(crate::ktest::fail(format_args!("namespace {} not found", id)));
            };
            check_eq!(n.nsid, id);
            let is_attached = ids("nvme_attached", attached).any(|a| a.ok() == Some(id));
            let state = if is_attached { nvme::NsState::Attached } else { nvme::NsState::NotAttached };
            check!(n.state == state, "namespace {}: {:?}", id, n.state);
        }
        check!(seen.next().is_none(), "more active namespaces than the profile set up");
        check_eq!(ns.unlisted, 0);
        check!(!ns.scanned, "QEMU has the active namespace list");
        Ok(())
    }
}

/// A conformance target on the second attached namespace's queue ([`target`] is the first's).
fn second_target() -> Result<Target, Outcome> {
    let q = block::nvme::namespace(1).ok_or(Outcome::Skip("one namespace queue"))?;
    Ok(Target {
        dev: q,
        stats: || {
            block::nvme::namespace(1)
                .map(|q| q.stats().snapshot())
                .unwrap_or_default()
        },
        tags_in_use: || block::nvme::namespace(1).map_or(0, |q| q.tags_in_use()),
        depth: cpu_depth(q),
        max_request_bytes: q.limits().max_bytes(),
        irq_count: block::nvme::interrupts,
    })
}

ktest! {
    fn nvme_namespaces_are_distinct_disks() -> TestResult {
        // Distinct data at the same sectors of the first two attached namespaces, each
        // flushed, read back from each: each namespace holds its own, so they are two disks
        // (on one controller and one I/O queue pair).
        let d = disk()?;
        let want = ids("nvme_attached", attached_arg()).count();
        if want < 2 {
            return Err(Outcome::Skip("the profile attaches one namespace"));
        }
        check!(d.hw.ns_queues() >= 2, "{} namespace queues, the profile attaches {}", d.hw.ns_queues(), want);
        let t = [target()?, second_target()?];
        const BYTES: usize = 64 * 1024;
        const SECTORS: [u64; 3] = [0, 4096, 60_000];
        let mut bufs = [dma(BYTES)?, dma(BYTES)?];
        for (k, b) in bufs.iter_mut().enumerate() {
            check!(t[k].dev.capacity() > SECTORS[2] + 128, "namespace {} too small", k);
            fill(b.as_mut_slice(), 0x600d + k as u32);
        }
        let before = d.hw.stats().completions.load(Ordering::Relaxed);
        for &sector in &SECTORS {
            for (k, b) in bufs.iter().enumerate() {
                // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
                unsafe { io_ok(&t[k], Op::Write, sector, &[(b.phys(), BYTES as u32)], BioFlags::empty()) }?;
            }
        }
        for tk in &t {
            // SAFETY: no segments.
            unsafe { io_ok(tk, Op::Flush, 0, &[], BioFlags::empty()) }?;
        }
        let mut back = dma(BYTES)?;
        for &sector in &SECTORS {
            for (k, b) in bufs.iter().enumerate() {
                back.as_mut_slice().fill(0);
                // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
                unsafe { io_ok(&t[k], Op::Read, sector, &[(back.phys(), BYTES as u32)], BioFlags::empty()) }?;
                check!(
                    back.as_slice() == b.as_slice(),
                    "namespace queue {} at sector {}: read back another namespace's data or garbage",
                    k,
                    sector
                );
            }
        }
        // 3 x 2 writes, 2 flushes, 3 x 2 reads, each one command (64 KiB fits one request).
        check!(d.hw.stats().completions.load(Ordering::Relaxed) >= before + 14, "fewer completions than commands");
        for tk in &t {
            check_eq!((tk.tags_in_use)(), 0);
        }
        check_eq!(d.hw.in_flight(), 0);
        Ok(())
    }
}

ktest! {
    fn nvme_reset_completes_both_namespaces_once() -> TestResult {
        // 16 writes in flight on each of two namespaces (the same sectors, different data),
        // then a controller reset: every bio of both queues completes exactly once (retried
        // after the reset), no tag is left on either queue, and each namespace reads back its
        // own data.
        let d = disk()?;
        if ids("nvme_attached", attached_arg()).count() < 2 {
            return Err(Outcome::Skip("the profile attaches one namespace"));
        }
        let t = [target()?, second_target()?];
        let s = d.hw.stats();
        let resets0 = s.resets.load(Ordering::Relaxed);
        let late0 = [(t[0].stats)().late_completions, (t[1].stats)().late_completions];
        const N: usize = 16;
        let mut bufs = [dma(N * 4096)?, dma(N * 4096)?];
        for (k, b) in bufs.iter_mut().enumerate() {
            fill(b.as_mut_slice(), 0xbeef + k as u32);
        }
        async_reset();
        let mut in_flight = 0;
        let res = crate::arch::without_interrupts(|| -> TestResult {
            for i in 0..N {
                for (k, b) in bufs.iter().enumerate() {
                    // SAFETY: the segments are this test's DMA buffers, which outlive the bios (the test waits for them) and which it leaves alone meanwhile.
                    unsafe { submit_async(
                        &t[k],
                        k * N + i,
                        Op::Write,
                        80_000 + (i as u64) * 8,
                        &[(PhysAddr(b.phys().0 + (i * 4096) as u64), 4096)],
                    ) }?;
                }
            }
            in_flight = d.hw.in_flight();
            check!(d.hw.force_reset(), "controller did not come back after reset");
            Ok(())
        });
        res?;
        defmt::println!("reset with {=usize} commands in flight on two namespaces", in_flight);
        async_wait(2 * N as u32)?;
        check_eq!(d.hw.stats().resets.load(Ordering::Relaxed), resets0 + 1);
        check!(!d.hw.is_dead(), "controller dead");
        for (k, tk) in t.iter().enumerate() {
            check_eq!((tk.stats)().late_completions, late0[k]);
            check_eq!((tk.tags_in_use)(), 0);
        }
        check_eq!(d.hw.in_flight(), 0);
        let r = dma(N * 4096)?;
        for (k, b) in bufs.iter().enumerate() {
            // SAFETY: the segments are this test's DMA buffers, which outlive the call (it waits for the bio) and are not touched meanwhile.
            unsafe { io_ok(&t[k], Op::Read, 80_000, &[(r.phys(), (N * 4096) as u32)], BioFlags::empty()) }?;
            check!(r.as_slice() == b.as_slice(), "namespace queue {}: data written across the reset", k);
        }
        Ok(())
    }
}

/// Reads per CPU in the per-CPU completion test, all in flight at once.
const PC_BIOS: u32 = 16;
static PC_SLAB: BioSlab<u32, { MAX_CPUS * 8 }> = BioSlab::new();
/// Bios of the per-CPU completion test; the front pad is the submitting CPU.
static PC_SET: BioSet<u32> = BioSet::new(&PC_SLAB, 4, None);
/// Bios of each submitting CPU ended so far.
static PC_ENDED: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Bios of each submitting CPU that ended on another CPU.
static PC_AWAY: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
static PC_ERRORS: AtomicU32 = AtomicU32::new(0);
/// CPUs that could not submit (the line of the first failure).
static PC_FAILED: AtomicU32 = AtomicU32::new(0);
static PC_FAIL_AT: AtomicU32 = AtomicU32::new(0);

fn pc_end_io(bio: Bio) {
    let here = crate::arch::cpu_id();
    if bio.status().is_err() {
        PC_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(&cpu) = bio.front::<u32>() {
        let cpu = cpu as usize & (MAX_CPUS - 1);
        if cpu != here {
            PC_AWAY[cpu].fetch_add(1, Ordering::Relaxed);
        }
        PC_ENDED[cpu].fetch_add(1, Ordering::AcqRel);
    }
}

fn pc_fail(line: u32) {
    PC_FAIL_AT.store(line, Ordering::Relaxed);
    PC_FAILED.fetch_add(1, Ordering::Relaxed);
}

/// One CPU's share: `PC_BIOS` 4 KiB reads of its own region, all submitted before any is
/// waited for.
fn pc_reads(cpu: usize) {
    let Ok(d) = disk() else { return };
    let Ok(buf) = DmaBuf::alloc(PC_BIOS as usize * 4096, 4096) else {
        return pc_fail(line!());
    };
    let base = cpu as u64 * PC_BIOS as u64 * 8;
    let mut submitted = 0;
    for i in 0..PC_BIOS {
        let w = Wait::Hook(block::wait);
        let Ok(mut b) = PC_SET.alloc_on(cpu as u32, cpu as u32, Op::Read, 1, w) else {
            pc_fail(line!());
            break;
        };
        let at = PhysAddr(buf.phys().0 + i as u64 * 4096);
        // SAFETY: inside `buf`, which is freed only after every bio of this CPU ended (the
        // wait below), and which the CPU does not touch meanwhile.
        if b.add_vec(unsafe { BioVec::new(at, 4096) }).is_err() {
            pc_fail(line!());
            break;
        }
        b.set_dev(d.queue);
        b.set_sector(base + i as u64 * 8);
        b.set_end_io(pc_end_io);
        if submit_bio(cpu_ctx(), b).is_err() {
            pc_fail(line!());
            break;
        }
        submitted += 1;
    }
    while PC_ENDED[cpu].load(Ordering::Acquire) < submitted {
        crate::arch::interrupts_disable();
        if PC_ENDED[cpu].load(Ordering::Acquire) < submitted {
            block::wait();
        }
        crate::arch::interrupts_enable();
    }
    drop(buf);
}

ktest! {
    fn nvme_each_cpu_completes_on_its_own_queue_pair() -> TestResult {
        // `nvme_pairs=N` on the command line: the I/O queue pairs (and vectors, with MSI-X)
        // the profile must get.
        let d = disk()?;
        let cpus = crate::arch::cpus_online().min(MAX_CPUS);
        let pairs = d.hw.io_queues();
        if let Some(want) = arg("nvme_pairs") {
            let want: usize = want
                .parse()
                .map_err(|_| crate::ktest::fail(format_args!("nvme_pairs={}", want)))?;
            check_eq!(pairs, want);
        }
        check_eq!(d.queue.nr_hw_contexts(), pairs);
        let msix = d.attach == block::Attach::Msix;
        if msix {
            for k in 0..pairs {
                check!(block::nvme::vector_line(k).is_some(), "no vector for pair {}", k);
            }
        } else {
            check_eq!(pairs, 1);
        }
        PC_SET.init().map_err(|e| crate::ktest::fail(format_args!("bio set: {:?}", e)))?;
        for (e, a) in PC_ENDED.iter().zip(&PC_AWAY) {
            e.store(0, Ordering::Relaxed);
            a.store(0, Ordering::Relaxed);
        }
        PC_ERRORS.store(0, Ordering::Relaxed);
        PC_FAILED.store(0, Ordering::Relaxed);
        let taken = |k: usize, c: usize| block::nvme::vector_taken_on(k, c);
        let mut before = [[0u64; MAX_CPUS]; MAX_CPUS];
        for (k, row) in before.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = taken(k, c);
            }
        }
        crate::smp::on_each_cpu(pc_reads);
        check!(
            PC_FAILED.load(Ordering::Relaxed) == 0,
            "{} CPU(s) could not submit (first at kernel/src/tests/nvme.rs:{})",
            PC_FAILED.load(Ordering::Relaxed),
            PC_FAIL_AT.load(Ordering::Relaxed)
        );
        check_eq!(PC_ERRORS.load(Ordering::Relaxed), 0);
        for (c, e) in PC_ENDED.iter().enumerate().take(cpus) {
            let n = e.load(Ordering::Relaxed);
            check!(n == PC_BIOS, "CPU {}: {} of {} reads ended", c, n, PC_BIOS);
        }
        if msix && pairs == cpus && cpus > 1 {
            // One pair per CPU: every completion ran on the CPU that submitted, and each
            // vector interrupted only its own CPU.
            for c in 0..cpus {
                let away = PC_AWAY[c].load(Ordering::Relaxed);
                check!(away == 0, "{} of CPU {}'s reads completed on another CPU", away, c);
                for (k, row) in before.iter().enumerate().take(pairs) {
                    let n = taken(k, c) - row[c];
                    if k == c {
                        check!(n > 0, "vector {} never interrupted CPU {}", k, c);
                    } else {
                        check!(n == 0, "vector {} interrupted CPU {} {} times", k, c, n);
                    }
                }
            }
        }
        check_eq!(d.hw.in_flight(), 0);
        check_eq!(d.queue.tags_in_use(), 0);
        Ok(())
    }
}
