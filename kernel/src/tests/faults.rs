//! Injected device faults and real timeouts, on whichever disk the profile attached (virtio-blk,
//! NVMe or AHCI: the first found, in that order).
//!
//! The faults come from QEMU's blkdebug driver below the raw format node; the profile names its
//! rules and tells these tests where they are with command-line words:
//!
//! | word | blkdebug rule | what the test expects |
//! |---|---|---|
//! | `fault_read=S` | `read_aio`, EIO, sector `S` | the bio covering `S` ends with `Io` after the block layer's retries, its neighbours read correct data |
//! | `fault_read_once=S` | the same with `once=on` | every bio succeeds: the failed read was retried (by the block layer, or by the driver's own recovery on AHCI) |
//! | `fault_write=S` | `write_aio`, EIO, sector `S` | the bio covering `S` ends with `Io` (no false success), its neighbours read back what was written |
//! | `fault_write_once=S` | the same with `once=on` | every write succeeds after a retry and reads back |
//! | `fault_flush_once=N` | `N` rules `flush_to_disk`, EIO, `once=on` | the first `N` flushes that reach the medium fail, each at once (never retried to success); the last one under a tinyfs commit, which then fails the filesystem until remount |
//! | `fault_flush=always` | `flush_to_disk`, EIO | every flush fails; tinyfs refuses to commit |
//! | `fault_commit_write=S` | `write_aio`, EIO, sector `S` (0 or 8: superblock slot A or B) | after the flush faults, the next tinyfs commit to that slot fails, the filesystem refuses changes until remount, and the remount finds the previous commit, fsck-clean |
//!
//! A flush reaches blkdebug only when something was written since the previous one, so each
//! test writes before it flushes (`flush_to_disk` and `flush_to_os` both fire for virtio-blk's
//! flush, NVMe Flush and ATA FLUSH CACHE EXT in QEMU 7.2). These tests run gated
//! (`ktest=gated faults`): nothing else touches the disk, and only the flush test flushes, so
//! the flushes counted are its own whatever order the tests run in. It needs a tinyfs image
//! (`image.format = "tinyfs"`); the read and write fault sectors lie in its free space, and the
//! tests write raw blocks only there and at [`SCRATCH_SECTOR`]. A persistent fault on a
//! superblock slot leaves only every other commit possible, so the slot must be the one the
//! image's next-but-one commit uses: the profiles fault slot A (sector 0), since the image's
//! mkfs leaves generation 2 durable; the commit after the flush faults (3, slot B) succeeds and
//! the next (4, slot A) fails.
//!
//! Timeouts (`ktest=gated fault_timeout`): the profile throttles the drive
//! (`throttling.iops-total`) and shortens the block timeouts (`blk_timeout_ms`, see
//! [`crate::config::block_timeout_ns`]), so that a full queue of writes holds requests back
//! longer than the timeout and the driver's recovery runs (NVMe Abort then controller reset,
//! virtio device reset, AHCI COMRESET).
//!
//! Every batch checks the accounting: each bio ends exactly once, the queue's tags and the
//! driver's slots are all free afterwards, and every dispatch of a request was either
//! completed or put back for another dispatch.

use core::sync::atomic::{AtomicU32, Ordering};

use blk::{
    Bio, BioVec, BlkError, BlockDevice, Op, StatsSnapshot, Wait, submit_bio, submit_bio_wait,
};
use hal::DmaBuf;
use tinyfs::FsError;

use crate::block::{self, IO_SET, cpu_ctx};
use crate::fs::{Instance, KernelFs, fill_pattern, pattern_mismatch};
use crate::ktest::{Outcome, TestResult, fail};

/// A raw block the flush tests write before each flush, in the free space of the image's
/// filesystem and away from every fault window.
pub const SCRATCH_SECTOR: u64 = 120_000;
/// Bytes of each bio of the batches.
const BIO_BYTES: usize = 4096;
/// Most bios in one batch (NVMe's queue depth).
const MAX_BIOS: usize = 128;
/// How long a batch may take before the test gives up (throttled drives are slow).
const BATCH_DEADLINE_NS: u64 = 90_000_000_000;
/// How long the timeout test leaves a throttled drive idle after the storm of retries.
const THROTTLE_CATCH_UP_NS: u64 = 3_000_000_000;

/// Recovery counters of a driver (0 where it has no such action).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Recovery {
    /// Requests the driver saw time out.
    timeouts: u64,
    /// NVMe Abort commands.
    aborts: u64,
    /// Controller resets (NVMe), device resets (virtio), COMRESETs (AHCI).
    resets: u64,
    /// Errors the device reported (virtio, NVMe: requests completed with an error status;
    /// AHCI: task-file and interface errors, some of which its own recovery retries).
    errors: u64,
}

/// The disk under test, whatever its driver.
#[derive(Clone, Copy)]
struct Disk {
    kind: &'static str,
    dev: &'static dyn BlockDevice,
    depth: usize,
    stats: fn() -> StatsSnapshot,
    tags_in_use: fn() -> usize,
    in_flight: fn() -> usize,
    dead: fn() -> bool,
    recovery: fn() -> Recovery,
    /// The error a request in flight gets from device or controller resets once the block
    /// layer has dispatched it again `blk::MAX_ABORTS` times (none: the driver replays such
    /// requests itself).
    reset_error: Option<BlkError>,
}

fn disk() -> Result<Disk, Outcome> {
    if let Some(d) = block::virtio::disk() {
        return Ok(Disk {
            kind: "virtio",
            reset_error: Some(BlkError::Aborted),
            dev: d.queue,
            depth: virtio_blk::QUEUE_DEPTH,
            stats: || {
                block::virtio::disk()
                    .map(|d| d.queue.stats().snapshot())
                    .unwrap_or_default()
            },
            tags_in_use: || block::virtio::disk().map_or(0, |d| d.queue.tags_in_use()),
            in_flight: || block::virtio::disk().map_or(0, |d| d.hw.in_flight() as usize),
            dead: || block::virtio::disk().is_some_and(|d| d.hw.is_dead()),
            recovery: || {
                block::virtio::disk().map_or(Recovery::default(), |d| {
                    let s = d.hw.stats();
                    Recovery {
                        timeouts: s.timeouts.load(Ordering::Relaxed),
                        aborts: 0,
                        resets: s.resets.load(Ordering::Relaxed),
                        errors: s.errors.load(Ordering::Relaxed),
                    }
                })
            },
        });
    }
    if let Some(d) = block::nvme::disk() {
        return Ok(Disk {
            kind: "nvme",
            reset_error: Some(BlkError::Aborted),
            dev: d.queue,
            depth: nvme::QUEUE_DEPTH,
            stats: || {
                block::nvme::disk()
                    .map(|d| d.queue.stats().snapshot())
                    .unwrap_or_default()
            },
            tags_in_use: || block::nvme::disk().map_or(0, |d| d.queue.tags_in_use()),
            in_flight: || block::nvme::disk().map_or(0, |d| d.hw.in_flight()),
            dead: || block::nvme::disk().is_some_and(|d| d.hw.is_dead()),
            recovery: || {
                block::nvme::disk().map_or(Recovery::default(), |d| {
                    let s = d.hw.stats();
                    Recovery {
                        timeouts: s.timeouts.load(Ordering::Relaxed),
                        aborts: s.aborts.load(Ordering::Relaxed),
                        resets: s.resets.load(Ordering::Relaxed),
                        errors: s.errors.load(Ordering::Relaxed),
                    }
                })
            },
        });
    }
    if let Some(d) = block::ahci::disk() {
        return Ok(Disk {
            kind: "ahci",
            reset_error: None,
            dev: d.queue,
            depth: ahci::QUEUE_DEPTH,
            stats: || {
                block::ahci::disk()
                    .map(|d| d.queue.stats().snapshot())
                    .unwrap_or_default()
            },
            tags_in_use: || block::ahci::disk().map_or(0, |d| d.queue.tags_in_use()),
            in_flight: || block::ahci::disk().map_or(0, |d| d.hw.in_flight() as usize),
            dead: || block::ahci::disk().is_some_and(|d| d.hw.is_dead()),
            recovery: || {
                block::ahci::disk().map_or(Recovery::default(), |d| {
                    let s = d.hw.stats();
                    Recovery {
                        timeouts: s.timeouts.load(Ordering::Relaxed),
                        aborts: 0,
                        resets: s.port_resets.load(Ordering::Relaxed),
                        errors: s.task_file_errors.load(Ordering::Relaxed)
                            + s.interface_errors.load(Ordering::Relaxed),
                    }
                })
            },
        });
    }
    Err(Outcome::Skip("no disk"))
}

fn cmdline_word(key: &str) -> Option<&'static str> {
    crate::boot::cmdline_arg(crate::boot_info().cmdline, key)
}

fn cmdline_u64(key: &str) -> Result<Option<u64>, Outcome> {
    match cmdline_word(key) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| fail(format_args!("{}={}: not a number", key, v))),
    }
}

fn dma(len: usize) -> Result<DmaBuf, Outcome> {
    DmaBuf::alloc(len, 4096)
        .map_err(|e| fail(format_args!("no DMA memory for {} bytes: {:?}", len, e)))
}

fn pattern(buf: &mut [u8], seed: u32) {
    for (i, w) in buf.chunks_exact_mut(4).enumerate() {
        let v = seed.wrapping_mul(0x2545_f491) ^ (i as u32).wrapping_mul(0x9e37_79b9);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Batches: many bios in flight at once, each counted when it ends.

/// Bios ended in the current batch.
static DONE: AtomicU32 = AtomicU32::new(0);
/// Times each bio of the batch ended (by `private`).
static ENDS: [AtomicU32; MAX_BIOS] = [const { AtomicU32::new(0) }; MAX_BIOS];
/// Each bio's status: 0 for success, else `BlkError::code`.
static CODES: [AtomicU32; MAX_BIOS] = [const { AtomicU32::new(0) }; MAX_BIOS];
/// Completions for a bio that is not part of the batch.
static STRAY: AtomicU32 = AtomicU32::new(0);

fn batch_end_io(bio: Bio) {
    let i = bio.private();
    match ENDS.get(i) {
        Some(n) => {
            n.fetch_add(1, Ordering::AcqRel);
            CODES[i].store(
                bio.status().err().map_or(0, BlkError::code),
                Ordering::Release,
            );
        }
        None => {
            STRAY.fetch_add(1, Ordering::Relaxed);
        }
    }
    DONE.fetch_add(1, Ordering::Release);
}

/// What one batch did.
struct Batch {
    /// Each bio's result, in submission order.
    results: heapless::Vec<Result<(), BlkError>, MAX_BIOS>,
    /// The queue's counters before and after.
    before: StatsSnapshot,
    after: StatsSnapshot,
}

impl Batch {
    fn failed(&self) -> impl Iterator<Item = (usize, BlkError)> + '_ {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| (i, e)))
    }
}

/// Submits one 4 KiB bio per sector in `sectors` (bio `i` on page `i` of `buf`), all before
/// any completion is taken, waits for every one, and checks the accounting.
fn batch(d: &Disk, op: Op, sectors: &[u64], buf: &DmaBuf) -> Result<Batch, Outcome> {
    let n = sectors.len();
    check!(
        n <= MAX_BIOS && buf.len() >= n * BIO_BYTES,
        "batch of {} bios too big",
        n
    );
    DONE.store(0, Ordering::Relaxed);
    STRAY.store(0, Ordering::Relaxed);
    for i in 0..MAX_BIOS {
        ENDS[i].store(0, Ordering::Relaxed);
        CODES[i].store(0, Ordering::Relaxed);
    }
    let before = (d.stats)();
    crate::arch::without_interrupts(|| -> TestResult {
        for (i, &sector) in sectors.iter().enumerate() {
            // Never wait: interrupts are off (the set holds far more than a batch anyway).
            let mut bio = IO_SET
                .alloc((), op, 1, Wait::Never)
                .map_err(|e| fail(format_args!("bio {}: {:?}", i, e)))?;
            bio.set_dev(d.dev);
            bio.set_sector(sector);
            // SAFETY: page `i` of `buf`, this test's DMA buffer, which outlives the wait below
            // for every bio of the batch; each bio has its own page and the CPU does not touch
            // the buffer until then.
            bio.add_vec(unsafe {
                BioVec::new(buf.phys().add((i * BIO_BYTES) as u64), BIO_BYTES as u32)
            })
            .map_err(|e| fail(format_args!("vec: {:?}", e)))?;
            bio.set_end_io(batch_end_io);
            bio.set_private(i);
            submit_bio(cpu_ctx(), bio).map_err(|(e, _)| fail(format_args!("submit: {:?}", e)))?;
        }
        Ok(())
    })?;
    let start = block::clock();
    while (DONE.load(Ordering::Acquire) as usize) < n {
        check!(
            block::clock() - start < BATCH_DEADLINE_NS,
            "{}: only {} of {} bios ended",
            d.kind,
            DONE.load(Ordering::Acquire),
            n
        );
        block::wait();
    }
    // Give a completion that would come twice the time to arrive.
    let settle = block::clock();
    while block::clock() - settle < 20_000_000 {
        block::wait();
    }
    let after = (d.stats)();
    check_eq!(DONE.load(Ordering::Acquire) as usize, n);
    check_eq!(STRAY.load(Ordering::Relaxed), 0);
    let mut results = heapless::Vec::new();
    for i in 0..n {
        let ends = ENDS[i].load(Ordering::Acquire);
        check!(ends == 1, "{}: bio {} ended {} times", d.kind, i, ends);
        let r = match BlkError::from_code(CODES[i].load(Ordering::Acquire)) {
            None => Ok(()),
            Some(e) => Err(e),
        };
        let _ = results.push(r);
    }
    accounting(d, &before, &after, n as u64)?;
    Ok(Batch {
        results,
        before,
        after,
    })
}

/// The queue is idle and every request dispatched was completed or dispatched again.
fn accounting(d: &Disk, before: &StatsSnapshot, after: &StatsSnapshot, bios: u64) -> TestResult {
    check_eq!((d.tags_in_use)(), 0);
    check_eq!((d.in_flight)(), 0);
    check_eq!(after.bios_submitted - before.bios_submitted, bios);
    let dispatched = after.requests_dispatched - before.requests_dispatched;
    let completed = after.requests_completed - before.requests_completed;
    let requeued = after.requeues - before.requeues;
    check!(
        dispatched == completed + requeued,
        "{}: {} dispatches, {} completed + {} requeued",
        d.kind,
        dispatched,
        completed,
        requeued
    );
    check!(!(d.dead)(), "{}: the driver gave the device up", d.kind);
    Ok(())
}

/// One bio, waited for. `buf` is `None` for a flush.
fn one(
    d: &Disk,
    op: Op,
    sector: u64,
    buf: Option<&DmaBuf>,
) -> Result<Result<(), BlkError>, Outcome> {
    let before = (d.stats)();
    let mut bio = IO_SET
        .alloc((), op, 1, Wait::Hook(block::wait))
        .map_err(|e| fail(format_args!("bio: {:?}", e)))?;
    bio.set_dev(d.dev);
    bio.set_sector(sector);
    if let Some(buf) = buf {
        // SAFETY: `buf` is the caller's DMA buffer, which outlives this call: it returns only
        // after `submit_bio_wait` has seen the bio complete; nothing touches it meanwhile.
        bio.add_vec(unsafe { BioVec::new(buf.phys(), BIO_BYTES as u32) })
            .map_err(|e| fail(format_args!("vec: {:?}", e)))?;
    }
    let r = submit_bio_wait(cpu_ctx(), bio, block::wait).0;
    accounting(d, &before, &(d.stats)(), 1)?;
    Ok(r)
}

/// 32 sectors, one per other 4 KiB block, the 17th block holding `bad`: nothing merges.
fn window(bad: u64) -> [u64; 32] {
    let first = (bad & !7).saturating_sub(16 * 16);
    core::array::from_fn(|i| first + i as u64 * 16)
}

/// Writes the pattern of `seed` to every sector of `sectors` (a batch that must succeed).
fn write_all(d: &Disk, sectors: &[u64], buf: &mut DmaBuf, seed: u32) -> TestResult {
    pattern(buf.as_mut_slice(), seed);
    let b = batch(d, Op::Write, sectors, buf)?;
    if let Some((i, e)) = b.failed().next() {
        return Err(fail(format_args!(
            "{}: write of sector {}: {:?}",
            d.kind, sectors[i], e
        )));
    }
    Ok(())
}

/// Bio `i` of `got` equals bio `i` of `want`.
fn same_page(got: &DmaBuf, want: &DmaBuf, i: usize) -> bool {
    let r = i * BIO_BYTES..(i + 1) * BIO_BYTES;
    got.as_slice()[r.clone()] == want.as_slice()[r]
}

fn only_bad_failed(d: &Disk, b: &Batch, bad_bio: usize, what: &str) -> TestResult {
    let mut n = 0;
    for (i, e) in b.failed() {
        n += 1;
        check!(
            i == bad_bio && e == BlkError::Io,
            "{} {}: bio {} ended with {:?}; expected Io on bio {} only",
            d.kind,
            what,
            i,
            e,
            bad_bio
        );
    }
    check!(
        n == 1,
        "{} {}: the bad sector's bio succeeded",
        d.kind,
        what
    );
    check_eq!(b.after.bio_errors - b.before.bio_errors, 1);
    check!(
        b.after.retries > b.before.retries,
        "{} {}: the error was not retried",
        d.kind,
        what
    );
    Ok(())
}

/// Every bio succeeded although the device failed one command: the driver or the block layer
/// retried it.
fn all_ok_after_retry(d: &Disk, b: &Batch, rec0: &Recovery, what: &str) -> TestResult {
    if let Some((i, e)) = b.failed().next() {
        return Err(fail(format_args!(
            "{} {}: bio {} ended with {:?}",
            d.kind, what, i, e
        )));
    }
    check_eq!(b.after.bio_errors, b.before.bio_errors);
    check!(
        (d.recovery)().errors > rec0.errors,
        "{} {}: the device reported no error",
        d.kind,
        what
    );
    Ok(())
}

ktest! {
    #[only_with = "faults"]
    fn faults_read_errors_reach_only_their_bio() -> TestResult {
        let d = disk()?;
        let (bad, once) = (cmdline_u64("fault_read")?, cmdline_u64("fault_read_once")?);
        if bad.is_none() && once.is_none() {
            return Err(Outcome::Skip("no read fault in this profile"));
        }
        let mut data = dma(32 * BIO_BYTES)?;
        let back = dma(32 * BIO_BYTES)?;
        let rec0 = (d.recovery)();
        if let Some(bad) = bad {
            let w = window(bad);
            write_all(&d, &w, &mut data, 11)?;
            let b = batch(&d, Op::Read, &w, &back)?;
            only_bad_failed(&d, &b, 16, "persistent read error")?;
            for i in (0..32).filter(|&i| i != 16) {
                check!(same_page(&back, &data, i), "{}: sector {} read wrong data", d.kind, w[i]);
            }
            // Persistent: the same read fails again.
            check_eq!(one(&d, Op::Read, w[16], Some(&back))?, Err(BlkError::Io));
        }
        if let Some(once) = once {
            let w = window(once);
            write_all(&d, &w, &mut data, 12)?;
            let rec1 = (d.recovery)();
            let b = batch(&d, Op::Read, &w, &back)?;
            all_ok_after_retry(&d, &b, &rec1, "read error once")?;
            for (i, s) in w.iter().enumerate() {
                check!(same_page(&back, &data, i), "{}: sector {} read wrong data", d.kind, s);
            }
            check_eq!(one(&d, Op::Read, w[16], Some(&back))?, Ok(()));
        }
        let rec = (d.recovery)();
        check!(rec.errors > rec0.errors, "{}: the driver saw no error", d.kind);
        defmt::println!(
            "faults {=str}: read errors ok; driver errors {=u64}, resets {=u64}",
            d.kind,
            rec.errors - rec0.errors,
            rec.resets - rec0.resets
        );
        Ok(())
    }
}

ktest! {
    #[only_with = "faults"]
    fn faults_write_errors_are_never_reported_as_success() -> TestResult {
        let d = disk()?;
        let (bad, once) = (cmdline_u64("fault_write")?, cmdline_u64("fault_write_once")?);
        if bad.is_none() && once.is_none() {
            return Err(Outcome::Skip("no write fault in this profile"));
        }
        let mut data = dma(32 * BIO_BYTES)?;
        let back = dma(32 * BIO_BYTES)?;
        let rec0 = (d.recovery)();
        if let Some(bad) = bad {
            let w = window(bad);
            pattern(data.as_mut_slice(), 21);
            let b = batch(&d, Op::Write, &w, &data)?;
            only_bad_failed(&d, &b, 16, "persistent write error")?;
            let r = batch(&d, Op::Read, &w, &back)?;
            check!(r.failed().next().is_none(), "{}: read-back failed", d.kind);
            for i in (0..32).filter(|&i| i != 16) {
                check!(same_page(&back, &data, i), "{}: sector {} lost its write", d.kind, w[i]);
            }
            let page = dma(BIO_BYTES)?;
            check_eq!(one(&d, Op::Write, w[16], Some(&page))?, Err(BlkError::Io));
        }
        if let Some(once) = once {
            let w = window(once);
            pattern(data.as_mut_slice(), 22);
            let rec1 = (d.recovery)();
            let b = batch(&d, Op::Write, &w, &data)?;
            all_ok_after_retry(&d, &b, &rec1, "write error once")?;
            let r = batch(&d, Op::Read, &w, &back)?;
            check!(r.failed().next().is_none(), "{}: read-back failed", d.kind);
            for (i, s) in w.iter().enumerate() {
                check!(same_page(&back, &data, i), "{}: sector {} lost its write", d.kind, s);
            }
        }
        let rec = (d.recovery)();
        check!(rec.errors > rec0.errors, "{}: the driver saw no error", d.kind);
        defmt::println!(
            "faults {=str}: write errors ok; driver errors {=u64}, resets {=u64}",
            d.kind,
            rec.errors - rec0.errors,
            rec.resets - rec0.resets
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Flush errors, raw and under tinyfs

/// Runs `f` on a filesystem instance over the disk under test ([`crate::fs::with_fs_on`]).
fn with_fs<R>(
    d: &Disk,
    f: impl FnOnce(&mut Instance<'_>) -> Result<R, Outcome>,
) -> Result<R, Outcome> {
    crate::fs::with_fs_on(d.dev, f)
        .map_err(|e| fail(format_args!("{}: no filesystem instance: {:?}", d.kind, e)))?
}

fn fs_ok<T>(r: Result<T, FsError>, what: &str) -> Result<T, Outcome> {
    r.map_err(|e| fail(format_args!("{}: {:?}", what, e)))
}

/// fsck of the unmounted instance finds nothing; returns the generation checked.
fn fsck_clean(inst: &mut Instance<'_>) -> Result<u64, Outcome> {
    let mut first = None;
    let st = fs_ok(
        inst.check(&mut |p| {
            first.get_or_insert(*p);
        }),
        "fsck",
    )?;
    check!(
        st.problems == 0,
        "fsck: {} problems, first {:?}",
        st.problems,
        first
    );
    Ok(st.generation)
}

/// Creates `path` with 8 KiB of the pattern of `seed`.
fn make_file(fs: &mut KernelFs<'_>, path: &str, seed: u64) -> Result<(), FsError> {
    let ino = fs.create(path)?;
    let mut data = [0u8; 8192];
    fill_pattern(&mut data, seed, 0);
    fs.write(ino, 0, &data)?;
    Ok(())
}

fn file_is(fs: &mut KernelFs<'_>, path: &str, seed: u64) -> TestResult {
    let ino = fs_ok(fs.open(path), path)?;
    let mut data = [0u8; 8192];
    let n = fs_ok(fs.read(ino, 0, &mut data), path)?;
    check_eq!(n, data.len());
    check!(
        pattern_mismatch(&data, seed, 0).is_none(),
        "{}: wrong contents",
        path
    );
    Ok(())
}

/// A raw write to [`SCRATCH_SECTOR`], then a flush; returns the flush's result and checks it
/// was not retried.
fn write_then_flush(d: &Disk, page: &DmaBuf) -> Result<Result<(), BlkError>, Outcome> {
    check_eq!(one(d, Op::Write, SCRATCH_SECTOR, Some(page))?, Ok(()));
    let before = (d.stats)();
    let r = one(d, Op::Flush, 0, None)?;
    let after = (d.stats)();
    check!(
        after.retries == before.retries,
        "{}: the flush was retried {} times",
        d.kind,
        after.retries - before.retries
    );
    Ok(r)
}

/// What makes a commit fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// A cache flush.
    Flush,
    /// The write of the commit record (the superblock).
    RecordWrite,
}

impl Cause {
    fn what(self) -> &'static str {
        match self {
            Cause::Flush => "flush",
            Cause::RecordWrite => "superblock write",
        }
    }
}

/// With `fault_commit_write=S` (a persistent write error on sector `S`, 0 or 8: the first
/// sector of superblock slot A or B): commits until the next commit writes that slot, then
/// checks that this commit fails as [`commit_fails`] says.
fn record_write_fails(d: &Disk, sector: u64) -> TestResult {
    check!(
        sector == 0 || sector == 8,
        "fault_commit_write={}: not the start of a superblock slot",
        sector
    );
    let slot = sector / 8;
    with_fs(d, |inst| {
        let (mut fs, _) = fs_ok(inst.mount(false), "mount")?;
        if (fs.generation() + 1) % 2 != slot {
            fs_ok(make_file(&mut fs, "/pad", 9), "create /pad")?;
            fs_ok(fs.sync(), "commit to the other slot")?;
        }
        // Not unmounted: nothing changed since, so an unmount would write nothing; dropped
        // all the same, as a machine that goes down.
        Ok(())
    })?;
    commit_fails(d, Cause::RecordWrite)
}

/// A commit whose cache flush (or record write) fails: the error reaches the caller, every later change is
/// refused with `Failed`, and after a remount the filesystem is consistent and holds the last
/// durable commit (or the failed one, if its record reached the medium).
fn commit_fails(d: &Disk, cause: Cause) -> TestResult {
    with_fs(d, |inst| {
        let (mut fs, _) = fs_ok(inst.mount(false), "mount")?;
        let durable = fs.generation();
        fs_ok(make_file(&mut fs, "/lost", 7), "create /lost")?;
        match fs.sync() {
            Err(FsError::Io { .. } | FsError::Failed { .. }) => {}
            other => {
                return Err(fail(format_args!(
                    "{}: sync with a failing {}: {:?}",
                    d.kind,
                    cause.what(),
                    other
                )));
            }
        }
        check_eq!(fs.create("/after"), Err(FsError::Failed { durable }));
        check_eq!(fs.sync(), Err(FsError::Failed { durable }));
        check_eq!(fs.unmount().map(|_| ()), Err(FsError::Failed { durable }));
        let g = fsck_clean(inst)?;
        // A failed flush may leave the record on the medium; a failed record write cannot.
        check!(
            g == durable || (g == durable + 1 && cause == Cause::Flush),
            "{}: remount finds generation {}, durable was {}",
            d.kind,
            g,
            durable
        );
        let (mut fs, _) = fs_ok(inst.mount(true), "remount read-only")?;
        if g == durable {
            check_eq!(fs.open("/lost").err(), Some(FsError::NotFound));
        }
        fs_ok(fs.unmount().map(|_| ()), "unmount")?;
        defmt::println!(
            "faults {=str}: tinyfs commit {=u64} failed on a {=str} error; remount: generation {=u64}, fsck clean",
            d.kind,
            durable + 1,
            cause.what(),
            g
        );
        Ok(())
    })
}

ktest! {
    #[only_with = "faults"]
    fn faults_flush_errors_reach_the_caller_and_tinyfs() -> TestResult {
        let d = disk()?;
        let once = cmdline_u64("fault_flush_once")?;
        let always = cmdline_word("fault_flush") == Some("always");
        let mut page = dma(BIO_BYTES)?;
        pattern(page.as_mut_slice(), 31);
        let rec0 = (d.recovery)();
        if let Some(n) = once {
            check!(n >= 2, "fault_flush_once={}: the test needs at least 2", n);
            // The first n - 1 injected failures on raw flushes, each failing at once...
            for k in 0..n - 1 {
                check!(
                    write_then_flush(&d, &page)? == Err(BlkError::Io),
                    "{}: flush {} did not fail",
                    d.kind,
                    k
                );
            }
            // ...the last under a tinyfs commit.
            commit_fails(&d, Cause::Flush)?;
            // The rules are used up: flushes and commits work again.
            check_eq!(write_then_flush(&d, &page)?, Ok(()));
            with_fs(&d, |inst| {
                let (mut fs, _) = fs_ok(inst.mount(false), "mount")?;
                fs_ok(make_file(&mut fs, "/kept", 8), "create /kept")?;
                fs_ok(fs.sync(), "sync after the faults")?;
                // Not unmounted: an unmount commits once more, to the faulty slot when the
                // profile has one.
                let _ = fs;
                fsck_clean(inst)?;
                let (mut fs, _) = fs_ok(inst.mount(true), "mount read-only")?;
                file_is(&mut fs, "/kept", 8)?;
                fs_ok(fs.unmount().map(|_| ()), "unmount")
            })?;
            // A commit whose record write fails (a persistent error on a superblock slot).
            if let Some(sector) = cmdline_u64("fault_commit_write")? {
                record_write_fails(&d, sector)?;
                with_fs(&d, |inst| {
                    let (mut fs, _) = fs_ok(inst.mount(true), "mount read-only")?;
                    file_is(&mut fs, "/kept", 8)?;
                    fs_ok(fs.unmount().map(|_| ()), "unmount")
                })?;
            }
        } else if always {
            for k in 0..3 {
                check!(
                    write_then_flush(&d, &page)? == Err(BlkError::Io),
                    "{}: flush {} did not fail",
                    d.kind,
                    k
                );
            }
            commit_fails(&d, Cause::Flush)?;
            // Still failing: a new commit after the remount fails the same way.
            commit_fails(&d, Cause::Flush)?;
        } else {
            return Err(Outcome::Skip("no flush fault in this profile"));
        }
        let rec = (d.recovery)();
        defmt::println!(
            "faults {=str}: flush errors ok; driver errors {=u64}, resets {=u64}",
            d.kind,
            rec.errors - rec0.errors,
            rec.resets - rec0.resets
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Real timeouts

ktest! {
    #[only_with = "fault_timeout"]
    fn faults_timeouts_at_full_depth_complete_every_request_once() -> TestResult {
        let d = disk()?;
        let n = d.depth.min(MAX_BIOS);
        let mut data = dma(n * BIO_BYTES)?;
        pattern(data.as_mut_slice(), 41);
        let rec0 = (d.recovery)();
        let t0 = block::clock();
        // One 4 KiB write per other block from sector 4096: the whole queue at once.
        let mut sectors = [0u64; MAX_BIOS];
        for (i, s) in sectors.iter_mut().enumerate() {
            *s = 4096 + i as u64 * 16;
        }
        let sectors = &sectors[..n];
        let b = batch(&d, Op::Write, sectors, &data)?;
        let took = block::clock() - t0;
        let rec = (d.recovery)();
        let (mut ok, mut timed_out, mut reset) = (0u32, 0u32, 0u32);
        for (i, r) in b.results.iter().enumerate() {
            match r {
                Ok(()) => ok += 1,
                Err(BlkError::Timeout) => timed_out += 1,
                Err(e) if Some(*e) == d.reset_error => reset += 1,
                Err(e) => {
                    return Err(fail(format_args!("{}: write {} ended with {:?}", d.kind, i, e)));
                }
            }
        }
        let queue_timeouts = b.after.timeouts - b.before.timeouts;
        defmt::println!(
            "faults {=str}: {=usize} writes in flight took {=u64} ms: {=u32} ok, {=u32} timed out, {=u32} failed by a reset; queue timeouts {=u64}, retries {=u64}; driver timeouts {=u64}, aborts {=u64}, resets {=u64}",
            d.kind,
            n,
            took / 1_000_000,
            ok,
            timed_out,
            reset,
            queue_timeouts,
            b.after.retries - b.before.retries,
            rec.timeouts - rec0.timeouts,
            rec.aborts - rec0.aborts,
            rec.resets - rec0.resets
        );
        check!(queue_timeouts > 0, "{}: no request timed out", d.kind);
        check!(rec.resets > rec0.resets, "{}: the driver did not reset", d.kind);
        if d.kind == "nvme" {
            check!(rec.aborts > rec0.aborts, "nvme: no Abort before the reset");
        }
        // Later I/O works: what was written reads back, and a write-read round trip works.
        // First let the throttled drive catch up: every retried request counted against its
        // budget, so for a while it still holds requests back past the short timeout.
        let idle = block::clock();
        while block::clock() - idle < THROTTLE_CATCH_UP_NS {
            block::wait();
        }
        for (i, &s) in sectors.iter().enumerate() {
            if b.results[i].is_err() {
                continue;
            }
            let page = dma(BIO_BYTES)?;
            check_eq!(one(&d, Op::Read, s, Some(&page))?, Ok(()));
            check!(
                page.as_slice() == &data.as_slice()[i * BIO_BYTES..(i + 1) * BIO_BYTES],
                "{}: sector {} reads back wrong after the recovery",
                d.kind,
                s
            );
        }
        pattern(data.as_mut_slice(), 42);
        let page = {
            let mut p = dma(BIO_BYTES)?;
            p.as_mut_slice().copy_from_slice(&data.as_slice()[..BIO_BYTES]);
            p
        };
        check_eq!(one(&d, Op::Write, sectors[0], Some(&page))?, Ok(()));
        let check_page = dma(BIO_BYTES)?;
        check_eq!(one(&d, Op::Read, sectors[0], Some(&check_page))?, Ok(()));
        check!(check_page.as_slice() == page.as_slice(), "{}: round trip after recovery", d.kind);
        Ok(())
    }
}
