//! Host tests of the whole driver against the fake HBA ([`crate::fake`]): bring-up, NCQ
//! reads and writes completed by the interrupt handler, flush and FUA, error recovery and
//! timeouts, with a real `blk::Queue` on top and every completion recorded.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

use blk::{
    Bio, BioFlags, BioSet, BioSlab, BioVec, BlkError, BlkStatus, CpuCtx, Op, Queue, QueueConfig,
    TagComplete, Wait, submit_bio,
};
use hal::DmaBuf;

use crate::fake::{BLOCKS, FakeHba, Fault, FaultKind};
use crate::spec::ata;
use crate::{Ahci, Mode, QUEUE_DEPTH};

pub(crate) fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

thread_local! {
    pub(crate) static NOW: Cell<u64> = const { Cell::new(0) };
}

fn now() -> u64 {
    NOW.with(|c| c.get())
}

/// The driver's completions, forwarded to the queue.
pub(crate) struct Recorder {
    q: OnceLock<&'static Queue<QUEUE_DEPTH>>,
    pub(crate) log: Mutex<Vec<(u16, BlkStatus)>>,
}

impl TagComplete for Recorder {
    fn complete(&self, tag: u16, status: BlkStatus, done_bytes: Option<u32>) {
        self.log.lock().unwrap().push((tag, status));
        self.q.get().unwrap().complete(tag, status, done_bytes);
    }

    fn complete_pt(&self, tag: u16, status: BlkStatus, result: u64) {
        self.log.lock().unwrap().push((tag, status));
        self.q.get().unwrap().complete_pt(tag, status, result);
    }

    fn kick(&self) {
        self.q.get().unwrap().kick();
    }
}

/// Front pad of the test bios: which I/O, and where its end goes.
struct Io {
    id: usize,
    ends: &'static Mutex<Vec<(usize, BlkStatus)>>,
}

fn io_end(bio: Bio) {
    if let Some(io) = bio.front::<Io>() {
        io.ends.lock().unwrap().push((io.id, bio.status()));
    }
}

pub(crate) struct Env {
    pub(crate) fake: &'static FakeHba,
    pub(crate) hw: &'static Ahci,
    pub(crate) q: &'static Queue<QUEUE_DEPTH>,
    pub(crate) rec: &'static Recorder,
    set: &'static BioSet<Io>,
    ctx: CpuCtx,
    pub(crate) ends: &'static Mutex<Vec<(usize, BlkStatus)>>,
}

fn env() -> Env {
    env_with(true)
}

/// The fake HBA, the driver on it and a queue; `ncq: false` takes NCQ out of the disk's
/// IDENTIFY data (every read and write is then a non-queued command).
pub(crate) fn env_with(ncq: bool) -> Env {
    let fake = FakeHba::new();
    if !ncq {
        fake.set_identify_word(76, 0);
    }
    let hw: &'static Ahci = leak(Ahci::new(fake.abar(), Mode::Interrupt).expect("bring-up"));
    let split_slab: &'static BioSlab<(), 64> = leak(BioSlab::new());
    let split = leak(BioSet::new(split_slab, 4, None));
    let mut cfg = QueueConfig::new(hw.info().identify.sectors());
    cfg.clock = now;
    cfg.timeout_ns = 1_000;
    let q = leak(Queue::new(hw, hw.limits(), cfg, split));
    let rec = leak(Recorder {
        q: OnceLock::new(),
        log: Mutex::new(Vec::new()),
    });
    let _ = rec.q.set(q);
    hw.attach(rec);
    let slab: &'static BioSlab<Io, 256> = leak(BioSlab::new());
    Env {
        fake,
        hw,
        q,
        rec,
        set: leak(BioSet::new(slab, 4, None)),
        ctx: CpuCtx::new(0),
        ends: leak(Mutex::new(Vec::new())),
    }
}

/// A page of DMA memory filled with `seed`-dependent bytes (0 for none).
pub(crate) fn page(seed: u8) -> DmaBuf {
    let mut b = DmaBuf::alloc(4096, 4096).unwrap();
    for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
        *v = if seed == 0 {
            0
        } else {
            (i as u8).wrapping_mul(seed) ^ seed
        };
    }
    b
}

impl Env {
    /// Submits a bio (`buf` its one segment) and lets the device see the registers the
    /// driver wrote.
    pub(crate) fn submit(
        &self,
        id: usize,
        op: Op,
        flags: BioFlags,
        lba: u64,
        buf: Option<&DmaBuf>,
    ) {
        let mut b = self
            .set
            .alloc(
                Io {
                    id,
                    ends: self.ends,
                },
                op,
                1,
                Wait::Spin,
            )
            .unwrap();
        if let Some(buf) = buf {
            // SAFETY: `buf` is a DMA buffer of the host test region (reachable at its physical
            // address through hal's identity translation) that the test keeps alive and does
            // not touch until every bio it submitted has ended (each test steps the device
            // until `ends` records the completion before reading the buffer or dropping it).
            #[allow(unsafe_code)]
            let seg = unsafe { BioVec::new(buf.phys(), buf.len() as u32) };
            b.add_vec(seg).unwrap();
        }
        b.set_sector(lba);
        b.set_flags(flags);
        b.set_dev(self.q);
        b.set_end_io(io_end);
        assert!(submit_bio(&self.ctx, b).is_ok());
        self.fake.step();
    }

    /// Runs device, interrupt handler, deferred work and requeues until nothing moves; the
    /// device steps after each driver call (it sees register writes one call at a time).
    pub(crate) fn settle(&self) {
        for _ in 0..20 {
            self.fake.step();
            if self.fake.take_irq() {
                self.hw.handle_irq();
                self.fake.step();
            }
            self.hw.deferred();
            self.fake.step();
            self.q.kick();
        }
    }

    pub(crate) fn ends(&self) -> Vec<(usize, BlkStatus)> {
        let mut v = self.ends.lock().unwrap().clone();
        v.sort_by_key(|e| e.0);
        v
    }

    pub(crate) fn completions(&self, tag: u16) -> Vec<BlkStatus> {
        let log = self.rec.log.lock().unwrap();
        log.iter().filter(|e| e.0 == tag).map(|e| e.1).collect()
    }

    /// Nothing left anywhere: driver, device, queue.
    pub(crate) fn idle(&self) {
        assert_eq!(self.hw.in_flight(), 0, "driver holds requests");
        assert_eq!(self.fake.outstanding(), 0, "device holds commands");
        assert_eq!(self.q.tags_in_use(), 0, "queue holds tags");
    }
}

#[test]
fn bring_up_resets_the_hba_starts_the_port_and_identifies_the_disk() {
    let e = env();
    let (resets, starts) = e.fake.resets_and_starts();
    assert_eq!((resets, starts), (1, 1));
    let i = e.hw.info();
    assert_eq!(i.identify.blocks, BLOCKS);
    assert_eq!(i.identify.sectors(), BLOCKS);
    assert!(i.ncq && i.addr64);
    assert_eq!(i.ncq_depth, 32);
    assert_eq!(e.hw.model_serial(), ("QEMU HARDDISK", "QM00001"));
    let l = e.hw.limits();
    assert_eq!(l.logical_block_size, 512);
    assert!(l.max_discard_sectors > 0, "TRIM from IDENTIFY word 169");
    let log = e.fake.log();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].slot, log[0].opcode), (0, ata::IDENTIFY_DEVICE));
    assert!(!e.hw.is_dead());
}

#[test]
fn ncq_writes_and_reads_round_trip_through_one_interrupt() {
    let e = env();
    let n = 8;
    let data: Vec<DmaBuf> = (0..n).map(|i| page(i as u8 + 1)).collect();
    e.fake.hold();
    for (i, d) in data.iter().enumerate() {
        e.submit(i, Op::Write, BioFlags::empty(), 64 + 8 * i as u64, Some(d));
    }
    assert_eq!(
        e.fake.outstanding().count_ones(),
        n as u32,
        "all queued at once"
    );
    assert!(e.ends().is_empty());
    e.fake.release();
    assert!(e.fake.take_irq(), "one interrupt edge");
    let irqs =
        e.hw.stats()
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed);
    e.hw.handle_irq();
    assert_eq!(
        e.ends(),
        (0..n).map(|i| (i, Ok(()))).collect::<Vec<_>>(),
        "one handler call completes them all"
    );
    assert_eq!(
        e.hw.stats()
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed),
        irqs + 1
    );
    for (i, d) in data.iter().enumerate() {
        assert_eq!(
            e.fake.disk(64 + 8 * i as u64, 4096),
            d.as_slice(),
            "write {i}"
        );
    }
    let log = e.fake.log();
    assert!(
        log[1..]
            .iter()
            .all(|c| c.opcode == ata::WRITE_FPDMA_QUEUED && c.tag == Some(c.slot) && c.prds == 1)
    );
    // Read them back into other buffers.
    e.ends.lock().unwrap().clear();
    let back: Vec<DmaBuf> = (0..n).map(|_| page(0)).collect();
    for (i, b) in back.iter().enumerate() {
        e.submit(i, Op::Read, BioFlags::empty(), 64 + 8 * i as u64, Some(b));
    }
    e.settle();
    assert_eq!(e.ends(), (0..n).map(|i| (i, Ok(()))).collect::<Vec<_>>());
    for (b, d) in back.iter().zip(&data) {
        assert_eq!(b.as_slice(), d.as_slice());
    }
    assert_eq!(
        e.fake
            .log()
            .iter()
            .filter(|c| c.opcode == ata::READ_FPDMA_QUEUED)
            .count(),
        n
    );
    e.idle();
}

#[test]
fn flush_and_fua_writes_are_exclusive_commands() {
    let e = env();
    e.submit(0, Op::Flush, BioFlags::empty(), 0, None);
    e.settle();
    let d = page(7);
    e.submit(1, Op::Write, BioFlags::FUA, 100, Some(&d));
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(())), (1, Ok(()))]);
    let ops: Vec<u8> = e.fake.log()[1..].iter().map(|c| c.opcode).collect();
    assert_eq!(
        ops,
        vec![
            ata::FLUSH_CACHE_EXT,
            ata::WRITE_DMA_EXT,
            ata::FLUSH_CACHE_EXT
        ],
        "flush; FUA write as DMA EXT then a flush"
    );
    assert_eq!(e.fake.disk(100, 4096), d.as_slice());
    e.idle();
}

#[test]
fn a_failed_flush_step_ends_the_bio_with_the_error() {
    let e = env();
    // The FUA write's flush fails once; the device would take a second one.
    e.fake.inject(Fault {
        opcode: Some(ata::FLUSH_CACHE_EXT),
        lba: None,
        kind: FaultKind::TaskFile,
        times: 1,
    });
    let d = page(9);
    e.submit(0, Op::Write, BioFlags::FUA, 100, Some(&d));
    e.settle();
    assert_eq!(
        e.ends(),
        vec![(0, Err(BlkError::Io))],
        "the flush error reaches the bio, no retry"
    );
    let flushes = e
        .fake
        .log()
        .iter()
        .filter(|c| c.opcode == ata::FLUSH_CACHE_EXT)
        .count();
    assert_eq!(flushes, 1, "the flush went out once");
    e.idle();
}

/// Four queued reads, the third fails in the device: the first two complete, the port is
/// reset, the third fails with `Io` (and the block layer retries it), the fourth is replayed.
fn ncq_error(ncq_log: bool) -> Env {
    let e = env();
    e.fake.set_ncq_log(ncq_log);
    e.fake.inject(Fault {
        opcode: Some(ata::READ_FPDMA_QUEUED),
        lba: Some(200 + 2 * 8),
        kind: FaultKind::TaskFile,
        times: 1,
    });
    for i in 0..4u64 {
        e.fake.set_disk(200 + 8 * i, &[i as u8 + 1; 4096]);
    }
    let bufs: Vec<DmaBuf> = (0..4).map(|_| page(0)).collect();
    e.fake.hold();
    for (i, b) in bufs.iter().enumerate() {
        e.submit(i, Op::Read, BioFlags::empty(), 200 + 8 * i as u64, Some(b));
    }
    e.fake.release();
    e.settle();
    assert_eq!(
        e.ends(),
        (0..4).map(|i| (i, Ok(()))).collect::<Vec<_>>(),
        "every bio ends once, all well (the failed one after a retry)"
    );
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b.as_slice(), &[i as u8 + 1; 4096], "read {i}");
    }
    let s = e.hw.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&s.recoveries), 1);
    assert_eq!(get(&s.port_resets), 1);
    assert_eq!(get(&s.task_file_errors), 1);
    e.idle();
    e
}

#[test]
fn a_task_file_error_named_by_the_ncq_log_fails_one_command_and_replays_the_others() {
    let e = ncq_error(true);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&e.hw.stats().log_reads), 1);
    assert_eq!(get(&e.hw.stats().isolations), 0);
    // Tags follow submission order here: tag 2 failed once, then went again.
    assert_eq!(e.completions(2), vec![Err(BlkError::Io), Ok(())]);
    for t in [0, 1, 3] {
        assert_eq!(
            e.completions(t),
            vec![Ok(())],
            "tag {t} completes exactly once"
        );
    }
    let log = e.fake.log();
    assert!(log.iter().any(|c| c.opcode == ata::READ_LOG_EXT));
    let at = |f: &dyn Fn(&crate::fake::Executed) -> bool| {
        log.iter()
            .enumerate()
            .filter(|(_, c)| f(c))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let log_read = at(&|c| c.opcode == ata::READ_LOG_EXT);
    let tag3 = at(&|c| c.opcode == ata::READ_FPDMA_QUEUED && c.tag == Some(3));
    assert_eq!(log_read.len(), 1);
    assert_eq!(
        tag3.len(),
        1,
        "tag 3 did not run before the error stopped the port"
    );
    assert!(
        tag3[0] > log_read[0],
        "tag 3 was replayed after the recovery"
    );
}

#[test]
fn without_the_ncq_log_the_suspects_are_replayed_one_at_a_time() {
    let e = ncq_error(false);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&e.hw.stats().log_reads), 0);
    assert_eq!(get(&e.hw.stats().isolations), 1);
    // Nobody was named: tags 2 and 3 go again one at a time, and succeed.
    for t in 0..4 {
        assert_eq!(
            e.completions(t),
            vec![Ok(())],
            "tag {t} completes exactly once"
        );
    }
}

#[test]
fn an_interface_error_resets_the_port_and_the_command_goes_again() {
    let e = env();
    e.fake.inject(Fault {
        opcode: None,
        lba: Some(300),
        kind: FaultKind::Interface,
        times: 1,
    });
    let d = page(9);
    e.submit(0, Op::Write, BioFlags::empty(), 300, Some(&d));
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(()))]);
    assert_eq!(e.completions(0), vec![Err(BlkError::Io), Ok(())]);
    let s = e.hw.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&s.interface_errors), 1);
    assert_eq!(get(&s.port_resets), 1);
    assert_eq!(e.fake.disk(300, 4096), d.as_slice());
    e.idle();
}

#[test]
fn a_command_that_never_completes_times_out_and_goes_again() {
    let e = env();
    e.fake.inject(Fault {
        opcode: None,
        lba: Some(400),
        kind: FaultKind::Hang,
        times: 1,
    });
    e.fake.set_disk(400, &[0x5a; 4096]);
    let b = page(0);
    e.submit(0, Op::Read, BioFlags::empty(), 400, Some(&b));
    e.settle();
    assert!(e.ends().is_empty(), "the command hangs");
    assert_eq!(e.hw.in_flight(), 1);
    assert_eq!(e.q.check_timeouts(now()), 0, "not yet due");
    NOW.with(|c| c.set(1_000_000));
    assert_eq!(e.q.check_timeouts(now()), 1);
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(()))]);
    assert_eq!(b.as_slice(), &[0x5a; 4096]);
    // The timed-out try was taken back by the block layer, not completed by the driver.
    assert_eq!(e.completions(0), vec![Ok(())]);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&e.hw.stats().timeouts), 1);
    assert_eq!(get(&e.hw.stats().port_resets), 1);
    let reads = e.fake.log().iter().filter(|c| c.lba == 400).count();
    assert_eq!(reads, 2);
    e.idle();
}

/// Write-protected media: four queued writes and a read in flight; every write ends with
/// `ReadOnly` exactly once and is sent to the device at most once (the failing one, plus those
/// the error cut off while several were in the port), the read succeeds, and a later write
/// fails at once without reaching the device.
fn write_protected(wp: crate::fake::WriteProtect, ncq_log: bool) -> Env {
    let e = env();
    e.fake.set_ncq_log(ncq_log);
    e.fake.set_write_protect(Some(wp));
    e.fake.set_disk(600, &[0x77; 4096]);
    let data: Vec<DmaBuf> = (0..4).map(|i| page(i as u8 + 1)).collect();
    let rd = page(0);
    e.fake.hold();
    for (i, d) in data.iter().enumerate() {
        e.submit(i, Op::Write, BioFlags::empty(), 500 + 8 * i as u64, Some(d));
    }
    e.submit(4, Op::Read, BioFlags::empty(), 600, Some(&rd));
    e.fake.release();
    e.settle();
    let mut want: Vec<(usize, BlkStatus)> = (0..4).map(|i| (i, Err(BlkError::ReadOnly))).collect();
    want.push((4, Ok(())));
    assert_eq!(
        e.ends(),
        want,
        "writes fail ReadOnly once, the read is served"
    );
    assert_eq!(rd.as_slice(), &[0x77; 4096]);
    assert!(e.hw.is_read_only());
    let writes = |f: &FakeHba| {
        f.log()
            .iter()
            .filter(|c| c.opcode == ata::WRITE_FPDMA_QUEUED || c.opcode == ata::WRITE_DMA_EXT)
            .count()
    };
    let sent = writes(e.fake);
    assert!((1..=4).contains(&sent), "{sent} writes reached the device");
    for t in 0..4 {
        assert_eq!(
            e.completions(t).iter().filter(|s| s.is_err()).count(),
            1,
            "tag {t}: one failure, no retry"
        );
    }
    // From now on a write fails at once; reads and flushes still run.
    e.ends.lock().unwrap().clear();
    e.submit(10, Op::Write, BioFlags::empty(), 900, Some(&data[0]));
    e.submit(11, Op::Flush, BioFlags::empty(), 0, None);
    e.submit(12, Op::Read, BioFlags::empty(), 600, Some(&rd));
    e.settle();
    assert_eq!(
        e.ends(),
        vec![(10, Err(BlkError::ReadOnly)), (11, Ok(())), (12, Ok(()))]
    );
    assert_eq!(
        writes(e.fake),
        sent,
        "the later write never reached the device"
    );
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&e.hw.stats().write_protected), 4);
    assert!(!e.hw.is_dead());
    e.idle();
    e
}

#[test]
fn write_protected_media_wp_bit_named_by_the_ncq_log_fails_writes_read_only() {
    write_protected(crate::fake::WriteProtect::WpBit, true);
}

#[test]
fn write_protected_media_sense_in_the_ncq_log_fails_writes_read_only() {
    write_protected(crate::fake::WriteProtect::Sense, true);
}

#[test]
fn write_protected_media_without_the_ncq_log_fails_writes_read_only() {
    // QEMU-like: no READ LOG EXT; the suspects go one at a time and the first write alone
    // in the port is named, with WP in PxTFD.
    write_protected(crate::fake::WriteProtect::WpBit, false);
}

#[test]
fn write_protected_media_on_a_non_queued_write_fails_read_only() {
    let e = env();
    e.fake
        .set_write_protect(Some(crate::fake::WriteProtect::WpBit));
    let d = page(3);
    // FUA: WRITE DMA EXT then a flush; the write step fails with WP in PxTFD.
    e.submit(0, Op::Write, BioFlags::FUA, 700, Some(&d));
    e.settle();
    assert_eq!(e.ends(), vec![(0, Err(BlkError::ReadOnly))]);
    assert_eq!(e.completions(0), vec![Err(BlkError::ReadOnly)]);
    assert!(e.hw.is_read_only());
    e.idle();
}

#[test]
fn abrt_on_a_write_without_write_protection_stays_an_io_error() {
    // Sense-only write protection is only in the NCQ log: a non-queued write that fails with
    // ABRT alone is an I/O error, not ReadOnly.
    let e = env();
    e.fake
        .set_write_protect(Some(crate::fake::WriteProtect::Sense));
    let d = page(3);
    e.submit(0, Op::Write, BioFlags::FUA, 700, Some(&d));
    e.settle();
    assert_eq!(e.ends(), vec![(0, Err(BlkError::Io))]);
    assert!(!e.hw.is_read_only());
    e.idle();
}

#[test]
fn a_short_non_queued_transfer_is_never_a_success() {
    // The device reports every non-queued read and write finished, with fewer bytes in PRDBC
    // than asked (before the check, the driver completed them as successes).
    let e = env();
    let d = page(5);
    e.fake.set_chaos(Some(crate::fake::Chaos {
        seed: 7,
        short: 1000,
        ..Default::default()
    }));
    // FUA: WRITE DMA EXT then a flush, never retried after an error.
    e.submit(0, Op::Write, BioFlags::FUA, 800, Some(&d));
    e.settle();
    e.fake.set_chaos(None);
    assert_eq!(e.ends(), vec![(0, Err(BlkError::Io))]);
    assert_eq!(e.fake.shorted(), 1);
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&e.hw.stats().short_transfers), 1);
    let flushes = e
        .fake
        .log()
        .iter()
        .filter(|c| c.opcode == ata::FLUSH_CACHE_EXT)
        .count();
    assert_eq!(flushes, 0, "no flush step after the short write");
    e.idle();
}

#[test]
fn a_short_non_queued_read_is_retried_and_succeeds_only_in_full() {
    let e = env_with(false);
    assert!(!e.hw.info().ncq);
    e.fake.set_disk(808, &[0x3c; 4096]);
    let b = page(0);
    e.fake.set_chaos(Some(crate::fake::Chaos {
        seed: 9,
        short: 1000,
        ..Default::default()
    }));
    e.submit(0, Op::Read, BioFlags::empty(), 808, Some(&b));
    // One short try, then a well-behaved device.
    e.fake.step();
    e.fake.set_chaos(None);
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(()))]);
    assert_eq!(e.completions(0), vec![Err(BlkError::Io), Ok(())]);
    assert_eq!(b.as_slice(), &[0x3c; 4096]);
    e.idle();
}

#[test]
fn write_protected_removable_media_is_read_only_from_bring_up() {
    // A disk with removable-media status notification (IDENTIFY word 127): GET MEDIA STATUS
    // at bring-up fails with WP, so the driver says write-protected before any write.
    let fake = FakeHba::new();
    fake.set_identify_word(127, 1);
    fake.set_write_protect(Some(crate::fake::WriteProtect::WpBit));
    let hw = Ahci::new(fake.abar(), Mode::Interrupt).expect("bring-up");
    assert!(hw.info().identify.media_status);
    assert!(hw.info().write_protected);
    assert!(hw.is_read_only());
    let ops: Vec<u8> = fake.log().iter().map(|c| c.opcode).collect();
    assert_eq!(ops, vec![ata::IDENTIFY_DEVICE, ata::GET_MEDIA_STATUS]);
    assert!(!hw.is_dead());
    // Writable media: the same question, no write protection.
    let fake = FakeHba::new();
    fake.set_identify_word(127, 1);
    let hw = Ahci::new(fake.abar(), Mode::Interrupt).expect("bring-up");
    assert!(!hw.info().write_protected && !hw.is_read_only());
    // Without the feature set the command is not sent.
    let fake = FakeHba::new();
    let hw = Ahci::new(fake.abar(), Mode::Interrupt).expect("bring-up");
    assert!(!hw.info().write_protected);
    assert_eq!(fake.log().len(), 1);
}

#[test]
fn every_implemented_port_is_told_apart() {
    use crate::regs::{hba, port as px, sig};
    use crate::{Hba, PortStatus};
    let fake = FakeHba::new();
    // Ports 0 to 6 implemented, 7 not: the fake's disk on port 0; the others' registers are
    // plain memory the test fills (after the HBA reset, which only touches port 0).
    let abar = fake.abar();
    abar.write32(hba::PI, 0x7f);
    let set = |p: usize, ssts: u32, s: u32| {
        let base = hba::PORT_BASE + p * hba::PORT_STRIDE;
        abar.write32(base + px::SSTS, ssts);
        abar.write32(base + px::SIG, s);
    };
    set(1, 0x000, sig::NONE);
    set(2, 0x123, sig::ATAPI);
    set(3, 0x001, sig::NONE);
    set(4, 0x123, sig::PORT_MULTIPLIER);
    set(5, 0x123, sig::SEMB);
    set(6, 0x123, sig::ATA);
    set(7, 0x123, sig::ATA);
    let h = Hba::new(fake.abar()).expect("HBA");
    assert_eq!(h.port_status(0), PortStatus::Disk);
    assert_eq!(h.port_status(1), PortStatus::NoDevice);
    assert_eq!(h.port_status(2), PortStatus::Atapi);
    assert_eq!(h.port_status(3), PortStatus::LinkDown(1));
    assert_eq!(h.port_status(4), PortStatus::PortMultiplier);
    assert_eq!(h.port_status(5), PortStatus::Other(sig::SEMB));
    assert_eq!(h.port_status(6), PortStatus::Disk);
    assert_eq!(h.port_status(7), PortStatus::NotImplemented, "not in PI");
    assert_eq!(h.port_status(40), PortStatus::NotImplemented);
    assert_eq!(h.disk_ports(), 0b100_0001);
    // A port without a disk is refused before anything is touched; port 0 comes up.
    assert_eq!(
        Ahci::on_port(&h, 2, Mode::Interrupt).err(),
        Some(crate::InitError::NoDevice)
    );
    let hw = Ahci::on_port(&h, 0, Mode::Interrupt).expect("port 0");
    assert_eq!((hw.port(), hw.info().port), (0, 0));
    assert_eq!(fake.log().len(), 1, "only port 0's IDENTIFY ran");
}

#[test]
fn a_command_finished_but_not_reaped_when_it_times_out_is_not_completed_by_the_recovery() {
    // The device finished the read (PxSACT bit clear, interrupt pending) but the handler has
    // not run when the block layer's timeout takes the tag back: the recovery the timeout
    // runs must not complete it (that tag is no longer in flight).
    let e = env();
    e.fake.set_disk(440, &[0x6b; 4096]);
    let b = page(0);
    e.submit(0, Op::Read, BioFlags::empty(), 440, Some(&b));
    e.fake.step();
    assert_eq!(e.fake.outstanding(), 0, "the device finished it");
    assert!(e.ends().is_empty(), "not reaped yet");
    NOW.with(|c| c.set(c.get() + 1_000_000));
    assert_eq!(e.q.check_timeouts(now()), 1);
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(()))]);
    assert_eq!(e.q.stats().snapshot().late_completions, 0);
    assert_eq!(
        e.completions(0),
        vec![Ok(())],
        "completed once, by the retry"
    );
    assert_eq!(b.as_slice(), &[0x6b; 4096]);
    e.idle();
}

#[test]
fn a_stale_ncq_log_entry_is_not_believed() {
    // The NCQ log still holds an older failure (a read's UNC, the bit that means WP on a
    // write) when a task-file error with no command to blame stops two queued writes, one of
    // them on the tag the old entry names: the entry's LBA is not that write's, so nobody is
    // blamed (the writes go again one at a time) and nothing fails as write-protected.
    let e = env();
    e.fake.set_ncq_log(false);
    e.fake.inject(Fault {
        opcode: Some(ata::READ_FPDMA_QUEUED),
        lba: Some(200),
        kind: FaultKind::TaskFile,
        times: 1,
    });
    let b = page(0);
    e.submit(0, Op::Read, BioFlags::empty(), 200, Some(&b));
    e.settle();
    assert_eq!(e.ends(), vec![(0, Ok(()))], "failed once, retried");
    e.ends.lock().unwrap().clear();
    // A seed whose first draws post TFES (see `FakeHba::chaos_step`).
    let seed = (1u64..)
        .find(|s| {
            let mut x = s | 1;
            crate::fake::xorshift(&mut x);
            crate::fake::xorshift(&mut x).is_multiple_of(6)
        })
        .unwrap();
    e.fake.set_ncq_log(true);
    e.fake.hold();
    let w: Vec<DmaBuf> = (0..2).map(|i| page(i + 1)).collect();
    e.submit(1, Op::Write, BioFlags::empty(), 500, Some(&w[0]));
    e.submit(2, Op::Write, BioFlags::empty(), 508, Some(&w[1]));
    e.fake.set_chaos(Some(crate::fake::Chaos {
        seed,
        error_is: 1000,
        ..Default::default()
    }));
    e.fake.step();
    e.fake.set_chaos(None);
    e.fake.release();
    e.settle();
    assert_eq!(e.ends(), vec![(1, Ok(())), (2, Ok(()))]);
    assert!(!e.hw.is_read_only());
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        get(&e.hw.stats().log_reads),
        0,
        "the log named nobody in the port"
    );
    assert_eq!(get(&e.hw.stats().isolations), 1);
    assert_eq!(e.fake.disk(500, 4096), w[0].as_slice());
    assert_eq!(e.fake.disk(508, 4096), w[1].as_slice());
    e.idle();
}

#[test]
fn limit_dma_pretends_the_controller_has_no_64_bit_addressing() {
    let fake = FakeHba::new();
    let mut hw = Ahci::new(fake.abar(), Mode::Interrupt).expect("bring-up");
    assert!(hw.info().addr64);
    assert_eq!(hw.limits().dma_limit, u64::MAX);
    hw.limit_dma(0x10_0000 - 1);
    assert!(!hw.info().addr64);
    assert_eq!(hw.limits().dma_limit, 0x10_0000 - 1);
    hw.limits().validate().unwrap();
    // Never above what 32-bit addressing reaches.
    hw.limit_dma(u64::MAX);
    assert_eq!(hw.limits().dma_limit, 0xffff_ffff);
}

thread_local! {
    /// Whether the test thread plays the CPU that owns the port's interrupt.
    static ON_OWNER: Cell<bool> = const { Cell::new(true) };
    /// Kicks the driver sent to the owner.
    static KICKS: Cell<u32> = const { Cell::new(0) };
}

#[test]
fn a_reap_handed_to_another_cpu_goes_back_to_the_interrupts_cpu() {
    let e = env();
    e.hw.set_owner(crate::Owner {
        here: || ON_OWNER.with(Cell::get),
        kick: || KICKS.with(|k| k.set(k.get() + 1)),
    });
    let bufs: Vec<DmaBuf> = (0..4).map(|_| page(0)).collect();
    for (i, b) in bufs.iter().enumerate() {
        e.submit(i, Op::Read, BioFlags::empty(), 64 * i as u64, Some(b));
    }
    e.fake.step();
    assert!(e.fake.take_irq());
    // The interrupt comes while a submitter on another CPU holds the port's lock: that CPU
    // does not reap when it lets go, it kicks the owner.
    ON_OWNER.with(|o| o.set(false));
    e.hw.with_lock_held(|| e.hw.handle_irq());
    assert_eq!(KICKS.with(Cell::get), 1);
    assert!(e.ends().is_empty(), "completed off the interrupt's CPU");
    assert_eq!(
        e.hw.stats()
            .kicks
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The owner runs its handler again (the kick): everything completes there, once.
    ON_OWNER.with(|o| o.set(true));
    e.hw.handle_irq();
    let ends = e.ends();
    assert_eq!(ends.len(), 4);
    assert!(ends.iter().enumerate().all(|(i, x)| *x == (i, Ok(()))));
    // A lock holder on the owner's CPU (the handler interrupted it) reaps itself.
    e.submit(9, Op::Read, BioFlags::empty(), 512, Some(&bufs[0]));
    e.fake.step();
    assert!(e.fake.take_irq());
    e.hw.with_lock_held(|| e.hw.handle_irq());
    assert_eq!(KICKS.with(Cell::get), 1);
    assert_eq!(e.ends().len(), 5);
    e.idle();
}
