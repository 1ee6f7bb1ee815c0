//! The filesystem half of `mode=bench`: tinyfs workloads on the bench disk, run after the raw
//! jobs when the command line has `benchfs=1` (xtask adds it for disk-image backends only: the
//! `null` backend keeps no data, so a filesystem on it cannot be read back).
//!
//! The raw jobs have overwritten the disk, so the filesystem is made afresh (mkfs, mount) and
//! each job prints a line in the raw jobs' format. The jobs run twice in one run: on format
//! version 2 (the kernel's filesystem, job names `fs-*`), then on version 1 (`fs-v1-*`, its
//! kernel instance: 64 MiB, 119 inodes), so the two compare on the same disk and boot;
//! `benchfs=v2` or `benchfs=v1` runs one version only.
//!
//! - `fs-seqwrite`: one new file of [`SEQ_BYTES`] written in [`SEQ_BS`] zero-copy writes
//!   (`write_buffer` + `commit`: the data goes out from the filesystem's own I/O buffer), then
//!   one `fsync` (all inside the timed span); `ios` counts the writes, latencies are per write
//!   (the `fsync` is in `ns` but not in the percentiles); `fs-seqwrite-nosync` is the same run
//!   up to the point where the data writes have completed, before the `fsync` (no commit, no
//!   flush: like the raw jobs, which never flush). The data is the same 128 KiB pattern the
//!   copying job writes; like the raw jobs' buffer, it is produced once: a lent region is
//!   filled only the first time its address comes up (the I/O buffer holds 8 such regions and
//!   nothing else uses it during the job); the file is read back and checked afterwards,
//!   outside the timed span;
//! - `fs-seqwrite-copy`, `fs-seqwrite-copy-nosync`: the same with the copying `write` (every
//!   call copies its 128 KiB from the caller's buffer into the I/O buffer);
//! - `fs-randwrite`: [`RAND_OPS`] 4 KiB overwrites at random block offsets of a
//!   [`RAND_FILE_BYTES`] file, each followed by `fsync(ino)` (latency = write + fsync);
//! - `fs-smallfiles`: [`SMALL_FILES`] files, each `create` + 4 KiB `write` + `fsync`
//!   (latency per file), in rounds of [`SMALL_ROUND`] (version 1's kernel instance has 120
//!   inodes; version 2 runs the same rounds to compare): after each round its files are
//!   unlinked and the removal committed; the unlinks and their commit are outside the timed
//!   spans (`ns` is the sum of the rounds' create/write/fsync spans);
//! - `fs-dir{100,1k,10k,100k}-{create,stat,unlink}` (version 2 only: version 1 holds 119
//!   files): one directory, filled with empty files (untimed, one `sync`) to each size of
//!   [`DIR_SIZES`] in turn; at each size [`DIR_OPS`] new names (as many as the directory
//!   holds at 100) are created (one `sync` at the end, inside the span), looked up and
//!   stat'ed by path, and unlinked (one `sync` at the end): per-operation cost in a directory
//!   of 100 to 100,000 entries. The 100,000 size runs only with `benchfs_large=1` on the
//!   command line (`cargo xtask bench --fs-large`): filling it adds about 25 s under TCG,
//!   as long as the rest of the run.
//! - `fs-dirsmall-{create,stat,unlink}` and `fs-v1-dirsmall-*`: the same at version 1's own
//!   size, on both versions: a directory of 10 files, 100 new names created, stat'ed and
//!   unlinked.

use blk::BlockDevice;
use hal::DmaBuf;
use tinyfs::FsError;
use tinyfs::io::BlockIo;

use crate::bench_profile::{profile_mark_begin, profile_mark_end, profile_request};
use crate::block;
use crate::fs::{self, Instance};
use crate::{arch, boot};

/// Sequential file size and write size.
const SEQ_BYTES: usize = 32 << 20;
const SEQ_BS: usize = 128 << 10;
/// Random overwrites: file size and count.
const RAND_FILE_BYTES: usize = 4 << 20;
const RAND_OPS: usize = 512;
/// Small files: total, per round (live at once), bytes each.
const SMALL_FILES: usize = 1000;
const SMALL_ROUND: usize = 100;
const SMALL_BYTES: usize = 4096;
/// Directory jobs: the directory's sizes, in order (each filled up from the one before), and
/// the job names (create, stat, unlink) of each.
const DIR_SIZES: [(usize, [&str; 3]); 4] = [
    (
        100,
        ["fs-dir100-create", "fs-dir100-stat", "fs-dir100-unlink"],
    ),
    (
        1_000,
        ["fs-dir1k-create", "fs-dir1k-stat", "fs-dir1k-unlink"],
    ),
    (
        10_000,
        ["fs-dir10k-create", "fs-dir10k-stat", "fs-dir10k-unlink"],
    ),
    (
        100_000,
        ["fs-dir100k-create", "fs-dir100k-stat", "fs-dir100k-unlink"],
    ),
];
/// Sizes from this one on run only with `benchfs_large=1` on the command line.
const DIR_LARGE: usize = 100_000;
/// Operations timed at each size (at most the directory's size).
const DIR_OPS: usize = 1000;
/// The small-directory job's files before its operations, and its operations: version 1's
/// kernel instance holds 119 files and directories (this job's: 1 + 10 + 100).
const SMALL_DIR_FILL: usize = 10;
const SMALL_DIR_OPS: usize = 100;
/// Most latencies recorded per job.
const MAX_OPS: usize = 1024;

/// Timing of one job.
#[derive(Default)]
struct Span {
    ns: u64,
    halted_ns: u64,
    cycles: u64,
    /// Bios submitted to the virtio disk's queue (reads, writes and flushes).
    bios: u64,
}

/// Start marks of a [`Span`].
struct Mark(u64, u64, u64, u64);

/// Bios submitted to the virtio disk so far (0 without one).
fn bios() -> u64 {
    block::virtio::disk().map_or(0, |d| d.queue.stats().snapshot().bios_submitted)
}

impl Mark {
    fn now() -> Mark {
        Mark(arch::now_ns(), block::halted_ns(), arch::cycles(), bios())
    }

    fn add_to(&self, s: &mut Span) {
        s.ns += arch::now_ns() - self.0;
        s.halted_ns += block::halted_ns() - self.1;
        s.cycles += arch::cycles() - self.2;
        s.bios += bios() - self.3;
    }
}

fn report(name: &str, bs: usize, ios: usize, span: &Span, lat: &mut [u32]) {
    lat.sort_unstable();
    let n = lat.len().max(1);
    let pct = |p: usize| lat.get((n * p / 100).min(n - 1)).copied().unwrap_or(0);
    defmt::println!(
        "BENCH job={=str} bs={=u32} qd=1 ios={=u32} ns={=u64} halted_ns={=u64} cycles={=u64} p50_ns={=u32} p99_ns={=u32} errors=0 bios={=u64}",
        name,
        bs as u32,
        ios as u32,
        span.ns,
        span.halted_ns,
        span.cycles,
        pct(50),
        pct(99),
        span.bios
    );
}

fn since(t0: u64) -> u32 {
    (arch::now_ns() - t0).min(u64::from(u32::MAX)) as u32
}

/// Runs the filesystem jobs if the command line asks for them; `false` if one failed.
pub fn run() -> bool {
    let which = boot::cmdline_arg(crate::boot_info().cmdline, "benchfs");
    let (v2, v1) = match which {
        Some("1") => (true, true),
        Some("v2") => (true, false),
        Some("v1") => (false, true),
        _ => {
            defmt::println!("BENCH fs skipped (no benchfs=1: the backend keeps no data)");
            return true;
        }
    };
    let Ok(mut src) = DmaBuf::alloc(SEQ_BS, 4096) else {
        defmt::error!("benchfs: no memory for the source buffer");
        return false;
    };
    fs::fill_pattern(src.as_mut_slice(), 0x6265_6e63, 0);
    let r = fs::with_fs(|inst| -> Result<(), FsError> {
        if v2 {
            jobs_v2(inst, src.as_slice())?;
        }
        if v1 && profile_request().is_none() {
            jobs_v1(inst, src.as_slice())?;
        }
        Ok(())
    });
    match r {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            defmt::error!("benchfs: {}", defmt::Display2Format(&e));
            false
        }
        Err(fs::Setup::NoDisk) => {
            defmt::println!("BENCH fs skipped (the filesystem runs on a virtio disk only)");
            true
        }
        Err(e) => {
            defmt::error!("benchfs: cannot set up: {}", defmt::Debug2Format(&e));
            false
        }
    }
}

fn jobs_v2(inst: &mut Instance<'_>, src: &[u8]) -> Result<(), FsError> {
    // The raw jobs left garbage in both superblock slots: always format.
    inst.mkfs()?;
    let (mut f, _) = inst.mount(false)?;
    let s = f.statfs()?;
    defmt::println!(
        "BENCH fs mkfs version=2 blocks={=u64} node_frames={=u32} io_buf={=u32} capacity_sectors={=u64}",
        s.blocks,
        fs::N as u32,
        crate::config::FS_DATA_BYTES as u32,
        crate::block::virtio::disk().map_or(0, |d| d.queue.capacity())
    );
    if let Some((job, _)) = profile_request() {
        // `benchprof`: one job, its timed phase between the marks: the zero-copy sequential
        // write, the random overwrite + fsync, the small files, or the stats, creates or
        // unlinks in the directory of 10,000 entries.
        let r = match job - crate::bench::FS_PROFILE_JOB {
            0 => v2::seqwrite(&mut f, src, true, true),
            1 => v2::randwrite(&mut f, src, true),
            2 => v2::smallfiles(&mut f, src, true),
            3 => dir_jobs(&mut f, false, Some(DirOp::Stat)),
            4 => dir_jobs(&mut f, false, Some(DirOp::Create)),
            _ => dir_jobs(&mut f, false, Some(DirOp::Unlink)),
        };
        let u = f.unmount();
        r?;
        return u.map(|_| ());
    }
    let r = v2::seqwrite(&mut f, src, true, false)
        .and_then(|()| v2::seqwrite(&mut f, src, false, false))
        .and_then(|()| v2::randwrite(&mut f, src, false))
        .and_then(|()| v2::smallfiles(&mut f, src, false))
        .and_then(|()| v2::dirsmall(&mut f))
        .and_then(|()| {
            let large = boot::cmdline_arg(crate::boot_info().cmdline, "benchfs_large");
            dir_jobs(&mut f, large == Some("1"), None)
        });
    let u = f.unmount();
    r?;
    u.map(|_| ())
}

fn jobs_v1(inst: &mut Instance<'_>, src: &[u8]) -> Result<(), FsError> {
    let blocks = fs::v1_blocks(inst.block_device().capacity() / 8);
    let mut f = inst.v1();
    f.mkfs(tinyfs::v1::MkfsOptions {
        blocks: Some(blocks),
        inode_blocks: fs::IB as u32,
    })?;
    f.mount(false)?;
    let s = f.statfs()?;
    defmt::println!(
        "BENCH fs mkfs version=1 blocks={=u64} inodes={=u32} io_buf={=u32}",
        s.blocks,
        s.inodes,
        fs::IO_BUF_BYTES as u32,
    );
    let r = v1::seqwrite(&mut f, src, true, false)
        .and_then(|()| v1::seqwrite(&mut f, src, false, false))
        .and_then(|()| v1::randwrite(&mut f, src, false))
        .and_then(|()| v1::smallfiles(&mut f, src, false))
        .and_then(|()| v1::dirsmall(&mut f));
    let u = f.unmount();
    r?;
    u
}

/// Addresses of lent regions already holding the data (see the module comment).
struct Filled {
    at: [usize; 64],
    n: usize,
}

impl Filled {
    /// Whether the region at `addr` still needs the data; notes it as filled.
    fn first_time(&mut self, addr: usize) -> bool {
        if self.at[..self.n].contains(&addr) {
            return false;
        }
        if let Some(slot) = self.at.get_mut(self.n) {
            *slot = addr;
            self.n += 1;
        }
        true
    }
}

/// The jobs every version runs, over filesystem type `$fs` with inode type `$ino`, job names
/// prefixed by `$p`.
macro_rules! common_jobs {
    ($m:ident, $fs:ty, $ino:ty, $p:literal) => {
        mod $m {
            use super::*;

            type F<'a> = $fs;

            /// One `SEQ_BS` write at `off`: zero-copy (in as many lent regions as it takes)
            /// or copying.
            fn put(
                f: &mut F<'_>,
                ino: $ino,
                off: u64,
                src: &[u8],
                filled: Option<&mut Filled>,
            ) -> Result<(), FsError> {
                let Some(filled) = filled else {
                    return f.write(ino, off, src).map(|_| ());
                };
                let mut done = 0;
                while done < src.len() {
                    let mut w = f.write_buffer(ino, off + done as u64, src.len() - done)?;
                    let n = w.len();
                    let buf = w.buf();
                    if done != 0 || n != src.len() || filled.first_time(buf.as_ptr() as usize) {
                        buf.copy_from_slice(&src[done..done + n]);
                    }
                    w.commit()?;
                    done += n;
                }
                Ok(())
            }

            /// `profile`: the data phase runs between the bench's profile marks.
            pub(super) fn seqwrite(
                f: &mut F<'_>,
                src: &[u8],
                zero_copy: bool,
                profile: bool,
            ) -> Result<(), FsError> {
                let ino = f.create("/seq.bin")?;
                let ios = SEQ_BYTES / SEQ_BS;
                let mut lat = [0u32; MAX_OPS];
                let mut span = Span::default();
                let mut filled = Filled { at: [0; 64], n: 0 };
                let m = Mark::now();
                if profile {
                    profile_mark_begin();
                }
                for (i, l) in lat.iter_mut().enumerate().take(ios) {
                    let t = arch::now_ns();
                    let off = (i * SEQ_BS) as u64;
                    put(
                        f,
                        ino,
                        off,
                        &src[..SEQ_BS],
                        zero_copy.then_some(&mut filled),
                    )?;
                    *l = since(t);
                }
                // The data on the device (write-behind drained), before the commit:
                // comparable to the raw job, which never flushes.
                f.device()
                    .drain()
                    .map_err(|e| FsError::io(tinyfs::IoOp::WriteBehind, e))?;
                if profile {
                    profile_mark_end();
                }
                let mut data = Span::default();
                m.add_to(&mut data);
                f.fsync(ino)?;
                m.add_to(&mut span);
                let (name, nosync) = if zero_copy {
                    (concat!($p, "seqwrite"), concat!($p, "seqwrite-nosync"))
                } else {
                    (
                        concat!($p, "seqwrite-copy"),
                        concat!($p, "seqwrite-copy-nosync"),
                    )
                };
                report(nosync, SEQ_BS, ios, &data, &mut lat[..ios.min(MAX_OPS)]);
                report(name, SEQ_BS, ios, &span, &mut lat[..ios.min(MAX_OPS)]);
                verify(f, ino, src)?;
                f.unlink("/seq.bin")?;
                f.sync()
            }

            /// Reads the sequential file back (untimed): every `SEQ_BS` chunk must be `src`.
            fn verify(f: &mut F<'_>, ino: $ino, src: &[u8]) -> Result<(), FsError> {
                let Ok(mut back) = DmaBuf::alloc(SEQ_BS, 4096) else {
                    return Err(FsError::Unsupported("benchfs: no DMA memory to read back"));
                };
                let bad = FsError::Corrupt {
                    block: 0,
                    what: "benchfs: file read back differs from what was written",
                };
                for i in 0..SEQ_BYTES / SEQ_BS {
                    let n = f.read(ino, (i * SEQ_BS) as u64, back.as_mut_slice())?;
                    if n != SEQ_BS || back.as_slice() != &src[..SEQ_BS] {
                        return Err(bad);
                    }
                }
                if f.stat(ino)?.size != SEQ_BYTES as u64 {
                    return Err(bad);
                }
                Ok(())
            }

            /// `profile`: the timed loop runs between the bench's profile marks.
            pub(super) fn randwrite(
                f: &mut F<'_>,
                src: &[u8],
                profile: bool,
            ) -> Result<(), FsError> {
                let ino = f.create("/rand.bin")?;
                for off in (0..RAND_FILE_BYTES).step_by(SEQ_BS) {
                    f.write(ino, off as u64, &src[..SEQ_BS])?;
                }
                f.fsync(ino)?;
                let blocks = (RAND_FILE_BYTES / 4096) as u64;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64;
                let mut lat = [0u32; MAX_OPS];
                let mut span = Span::default();
                let m = Mark::now();
                if profile {
                    profile_mark_begin();
                }
                for l in lat.iter_mut().take(RAND_OPS) {
                    rng ^= rng >> 12;
                    rng ^= rng << 25;
                    rng ^= rng >> 27;
                    let b = rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks;
                    let t = arch::now_ns();
                    f.write(ino, b * 4096, &src[..4096])?;
                    f.fsync(ino)?;
                    *l = since(t);
                }
                if profile {
                    profile_mark_end();
                }
                m.add_to(&mut span);
                report(
                    concat!($p, "randwrite"),
                    4096,
                    RAND_OPS,
                    &span,
                    &mut lat[..RAND_OPS],
                );
                f.unlink("/rand.bin")?;
                f.sync()
            }

            /// `profile`: the timed rounds run between the bench's profile marks.
            pub(super) fn smallfiles(
                f: &mut F<'_>,
                src: &[u8],
                profile: bool,
            ) -> Result<(), FsError> {
                f.mkdir("/small")?;
                let mut lat = [0u32; MAX_OPS];
                let mut span = Span::default();
                let mut done = 0usize;
                while done < SMALL_FILES {
                    let round = SMALL_ROUND.min(SMALL_FILES - done);
                    let m = Mark::now();
                    // Profiled: the first round ([`SMALL_ROUND`] files).
                    let marks = profile && done == 0;
                    if marks {
                        profile_mark_begin();
                    }
                    for i in done..done + round {
                        let t = arch::now_ns();
                        let ino = f.create(name("/small/f", i).as_str())?;
                        f.write(ino, 0, &src[..SMALL_BYTES])?;
                        f.fsync(ino)?;
                        if let Some(l) = lat.get_mut(i) {
                            *l = since(t);
                        }
                    }
                    if marks {
                        profile_mark_end();
                    }
                    m.add_to(&mut span);
                    for i in done..done + round {
                        f.unlink(name("/small/f", i).as_str())?;
                    }
                    f.sync()?;
                    done += round;
                }
                report(
                    concat!($p, "smallfiles"),
                    SMALL_BYTES,
                    SMALL_FILES,
                    &span,
                    &mut lat[..SMALL_FILES.min(MAX_OPS)],
                );
                f.rmdir("/small")?;
                f.sync()
            }

            /// Directory operations at version 1's own size, the same job on both versions
            /// (`fs-dirsmall-*`, `fs-v1-dirsmall-*`): a directory of [`SMALL_DIR_FILL`] files,
            /// then [`SMALL_DIR_OPS`] new names created (one `sync`), stat'ed by path and
            /// unlinked (one `sync`).
            pub(super) fn dirsmall(f: &mut F<'_>) -> Result<(), FsError> {
                f.mkdir("/sdir")?;
                for i in 0..SMALL_DIR_FILL {
                    f.create(name("/sdir/entry-", i).as_str())?;
                }
                f.sync()?;
                let names = [
                    concat!($p, "dirsmall-create"),
                    concat!($p, "dirsmall-stat"),
                    concat!($p, "dirsmall-unlink"),
                ];
                dir_ops(f, "/sdir/new-", SMALL_DIR_OPS, names, None)?;
                for i in 0..SMALL_DIR_FILL {
                    f.unlink(name("/sdir/entry-", i).as_str())?;
                }
                f.rmdir("/sdir")?;
                f.sync()
            }

            /// Creates (one `sync` at the end), stats by path and unlinks (one `sync`) `ops`
            /// new names made from `prefix` (`/dir/new-` makes `/dir/new-00000`, ...),
            /// reported as the jobs `names` (create, stat, unlink); `profile`: the operation
            /// that runs between the bench's profile marks (its `sync` included).
            pub(super) fn dir_ops(
                f: &mut F<'_>,
                prefix: &str,
                ops: usize,
                names: [&str; 3],
                profile: Option<DirOp>,
            ) -> Result<(), FsError> {
                let begin = |op| {
                    if profile == Some(op) {
                        profile_mark_begin();
                    }
                };
                let end = |op| {
                    if profile == Some(op) {
                        profile_mark_end();
                    }
                };
                let mut lat = [0u32; MAX_OPS];
                let new = |i: usize| name(prefix, i);
                let mut span = Span::default();
                let m = Mark::now();
                begin(DirOp::Create);
                for (i, l) in lat.iter_mut().enumerate().take(ops) {
                    let t = arch::now_ns();
                    f.create(new(i).as_str())?;
                    *l = since(t);
                }
                f.sync()?;
                end(DirOp::Create);
                m.add_to(&mut span);
                report(names[0], 0, ops, &span, &mut lat[..ops]);
                let mut span = Span::default();
                let m = Mark::now();
                begin(DirOp::Stat);
                for (i, l) in lat.iter_mut().enumerate().take(ops) {
                    let t = arch::now_ns();
                    let st = f.stat_path(new(i).as_str())?;
                    if st.size != 0 {
                        return Err(FsError::Corrupt {
                            block: 0,
                            what: "benchfs: a new empty file is not empty",
                        });
                    }
                    *l = since(t);
                }
                end(DirOp::Stat);
                m.add_to(&mut span);
                report(names[1], 0, ops, &span, &mut lat[..ops]);
                let mut span = Span::default();
                let m = Mark::now();
                begin(DirOp::Unlink);
                for (i, l) in lat.iter_mut().enumerate().take(ops) {
                    let t = arch::now_ns();
                    f.unlink(new(i).as_str())?;
                    *l = since(t);
                }
                f.sync()?;
                end(DirOp::Unlink);
                m.add_to(&mut span);
                report(names[2], 0, ops, &span, &mut lat[..ops]);
                Ok(())
            }
        }
    };
}

common_jobs!(v2, fs::KernelFs<'a>, tinyfs::Ino, "fs-");
common_jobs!(v1, fs::V1Fs<'a>, tinyfs::v1::Ino, "fs-v1-");

/// The operation of the directory jobs that runs between the bench's profile marks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DirOp {
    Create,
    Stat,
    Unlink,
}

/// The directory jobs (version 2): at each size of [`DIR_SIZES`] (the directory filled up
/// from the size before, untimed), create, stat and unlink up to [`DIR_OPS`] names.
/// `profile`: the operation whose run in the largest directory goes between the bench's
/// profile marks.
fn dir_jobs(f: &mut fs::KernelFs<'_>, large: bool, profile: Option<DirOp>) -> Result<(), FsError> {
    f.mkdir("/dir")?;
    let mut have = 0;
    for &(size, names) in DIR_SIZES.iter().filter(|d| large || d.0 < DIR_LARGE) {
        let m = Mark::now();
        let mut span = Span::default();
        for i in have..size {
            f.create(name("/dir/entry-", i).as_str())?;
        }
        f.sync()?;
        m.add_to(&mut span);
        have = size;
        defmt::println!(
            "BENCH fs dir filled entries={=u32} ns={=u64} halted_ns={=u64} bios={=u64} used_blocks={=u64}",
            size as u32,
            span.ns,
            span.halted_ns,
            span.bios,
            f.statfs().map(|s| s.blocks - s.free_blocks)?
        );
        let last = size
            == DIR_SIZES
                .iter()
                .rfind(|d| large || d.0 < DIR_LARGE)
                .map_or(0, |d| d.0);
        v2::dir_ops(
            f,
            "/dir/new-",
            DIR_OPS.min(size),
            names,
            profile.filter(|_| last),
        )?;
    }
    // The entries stay: the filesystem is unmounted next (and version 1's jobs format the
    // disk); removing 100,000 names would cost more than filling the directory.
    f.sync()
}

fn name(prefix: &str, i: usize) -> heapless::String<32> {
    let mut s = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut s, format_args!("{prefix}{i:05}"));
    s
}
