//! tinyfs on the root device: the registered device `root=<name>` on the command line names
//! (`vda`, `sda3`, `nvme0n1p2`, ...; [`crate::block::registry`]), else the virtio disk. Here:
//! the filesystem's bio set (its own slab, reserve and 256-entry
//! vector pools), its 1 MiB DMA I/O buffers (one per instance: [`INSTANCES`] filesystems can be
//! mounted at once, each over its own device, [`with_fs_on`]), an instance over the disk,
//! mounting (with mkfs on a blank disk), and the filesystem half of the `mode=run` demo.
//!
//! A disk counts as blank only when both superblock slots (blocks 0 and 1) are all zeros; a
//! disk with anything else there that does not mount is reported, never reformatted. A
//! read-only disk is mounted read-only, and a mount that fell back to an older generation is
//! logged with the reason (read-only when the newest tree is corrupt: see
//! [`tinyfs::MountReport`]).

use blk::mem::DmaRegion;
use blk::{
    BioSet, BioSlab, BioVec, BlkError, BlockDevice, BvecPools, BvecSlabs, Op, Wait, submit_bio_wait,
};
use hal::DmaBuf;
use spin::Mutex;
use tinyfs::blkdev::{BlkDisk, FsIo};
use tinyfs::{
    BLOCK_SIZE, Fallback, FsError, Ino, IoErrorKind, IoOp, Kind, MkfsOptions, Mode, MountOptions,
    MountReport,
};

use crate::block::{self, cpu_ctx, registry, virtio};
use crate::config::{FS_BIO_RESERVE, FS_BIO_SLAB, FS_BVEC_256, FS_BVEC_RESERVE, FS_BVEC_SMALL};

/// Inode-table blocks an instance holds (15 inodes each).
pub const IB: usize = 8;
/// Bitmap words: filesystems of up to `64 * BW` blocks (64 MiB).
pub const BW: usize = 256;
/// The filesystem type the kernel uses.
pub type KernelFs<'b> = tinyfs::Fs<'b, BlkDisk, IB, BW>;

/// Bytes of the I/O buffer: the largest single filesystem I/O (256 blocks, one 1 MiB bio).
pub const IO_BUF_BYTES: usize = 1 << 20;
/// The disk's last MiB is left outside the filesystem: the raw-I/O demo uses it as scratch.
const TAIL_RESERVED_BLOCKS: u64 = (1 << 20) / BLOCK_SIZE as u64;

/// Filesystem bios: one slab, a reserve of 8, and vector pools whose 256-entry class covers
/// every bio of a full batch (at most 32 in flight).
/// Sizes: [`crate::config`].
static FS_SLAB: BioSlab<FsIo, FS_BIO_SLAB> = BioSlab::new();
static FS_BVEC_SLABS: BvecSlabs<
    FS_BVEC_SMALL,
    FS_BVEC_SMALL,
    FS_BVEC_SMALL,
    FS_BVEC_SMALL,
    FS_BVEC_SMALL,
    FS_BVEC_256,
> = BvecSlabs::new();
static FS_BVECS: BvecPools = BvecPools::new(&FS_BVEC_SLABS, FS_BVEC_RESERVE);
/// The filesystem's bio set.
pub static FS_SET: BioSet<FsIo> = BioSet::new(&FS_SLAB, FS_BIO_RESERVE, Some(&FS_BVECS));

/// Filesystem instances that can exist at once (each over its own device, e.g. two
/// partitions mounted together), one I/O buffer each.
pub const INSTANCES: usize = 2;

/// The I/O buffers, each allocated on first use and never freed; whoever holds a lock owns that
/// buffer.
static IO_BUFS: [Mutex<Option<DmaRegion>>; INSTANCES] = [const { Mutex::new(None) }; INSTANCES];

/// Why no filesystem instance could be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// No root device: no virtio disk, or `root=` names no registered device.
    NoDisk,
    /// The disk's block size does not divide 4 KiB.
    BlockSize,
    /// No DMA memory (or bio pools) for the filesystem.
    NoMemory,
    /// Every instance is in use ([`INSTANCES`] at once).
    Busy,
}

fn io_buffer() -> Result<DmaRegion, Setup> {
    FS_SET.init().map_err(|_| Setup::NoMemory)?;
    let buf = DmaBuf::alloc(IO_BUF_BYTES, BLOCK_SIZE).map_err(|_| Setup::NoMemory)?;
    // Given up for good: the filesystem's block device builds its segments from the region's
    // span, so they can only ever name this memory.
    Ok(DmaRegion::from_dma_buf(buf))
}

/// The filesystem's device: the registered device `root=<name>` names, else (no `root=`) the
/// virtio disk; `None` when that is missing.
pub fn root_device() -> Option<&'static dyn BlockDevice> {
    match root_name() {
        Some(name) => registry::find(name).map(|d| d.dev),
        None => virtio::disk().map(|d| {
            let q: &'static dyn BlockDevice = d.queue;
            q
        }),
    }
}

/// The registry entry of the root device (`root=<name>`, else `vda`).
pub fn root_entry() -> Option<&'static registry::Device> {
    registry::find(root_name().unwrap_or("vda"))
}

/// The device `root=` names on the command line, if it names one.
pub fn root_name() -> Option<&'static str> {
    crate::boot::cmdline_arg(crate::boot_info().cmdline, "root")
}

/// Runs `f` on an unmounted filesystem instance over the root device ([`root_device`]); see
/// [`with_fs_on`].
pub fn with_fs<R>(f: impl FnOnce(&mut KernelFs<'_>) -> R) -> Result<R, Setup> {
    with_fs_on(root_device().ok_or(Setup::NoDisk)?, f)
}

/// Runs `f` on an unmounted filesystem instance over `dev`, with the first free I/O buffer
/// (locked for the duration; [`Setup::Busy`] when all [`INSTANCES`] are in use). Calls nest:
/// inside `f`, another call over another device gives a second instance, both mounted at once.
/// `f` should unmount before returning.
pub fn with_fs_on<R>(
    dev: &'static dyn BlockDevice,
    f: impl FnOnce(&mut KernelFs<'_>) -> R,
) -> Result<R, Setup> {
    let mut guard = IO_BUFS
        .iter()
        .find_map(|m| m.try_lock())
        .ok_or(Setup::Busy)?;
    if guard.is_none() {
        *guard = Some(io_buffer()?);
    }
    let region = guard.as_mut().ok_or(Setup::NoMemory)?;
    let span = region.span();
    let dev = BlkDisk::new(dev, cpu_ctx(), &FS_SET, block::wait, span).ok_or(Setup::BlockSize)?;
    let mut fs = KernelFs::new(dev, region.as_mut_slice());
    Ok(f(&mut fs))
}

/// The filesystem size mkfs uses on a device of `dev_blocks` blocks.
pub fn fs_blocks(dev_blocks: u64) -> u64 {
    dev_blocks
        .saturating_sub(TAIL_RESERVED_BLOCKS)
        .min(64 * BW as u64)
}

/// Writes an empty filesystem on the root device (the instance stays unmounted).
pub fn mkfs(fs: &mut KernelFs<'_>) -> Result<(), FsError> {
    mkfs_on(fs, root_device())
}

/// Writes an empty filesystem of [`fs_blocks`] on `dev`, the instance's device (the instance
/// stays unmounted).
pub fn mkfs_on(
    fs: &mut KernelFs<'_>,
    dev: Option<&'static dyn BlockDevice>,
) -> Result<(), FsError> {
    let blocks = fs_blocks(dev.map_or(0, |d| d.capacity() / 8));
    fs.mkfs(MkfsOptions {
        blocks: Some(blocks),
        inode_blocks: IB as u32,
    })
}

/// Whether both superblock slots of `dev` are all zeros (read straight from the disk).
pub fn superblocks_blank_on(dev: Option<&'static dyn BlockDevice>) -> Result<bool, FsError> {
    let failed = |error: IoErrorKind| FsError::Io {
        op: IoOp::ReadSuperblock,
        block: 0,
        error,
    };
    let dev = dev.ok_or(failed(IoErrorKind::Device))?;
    let no_memory = |_| failed(IoErrorKind::Blk(BlkError::NoMemory));
    let buf = DmaBuf::alloc(2 * BLOCK_SIZE, BLOCK_SIZE).map_err(no_memory)?;
    let mut bio = block::IO_SET
        .alloc((), Op::Read, 1, Wait::Hook(block::wait))
        .map_err(|e| failed(e.into()))?;
    bio.set_dev(dev);
    bio.set_sector(0);
    // SAFETY: the segment contract: `buf` is DMA memory of this function, which waits for the
    // bio (`submit_bio_wait`) before it reads the buffer or lets it drop, on every path.
    let seg = unsafe { BioVec::new(buf.phys(), 2 * BLOCK_SIZE as u32) };
    bio.add_vec(seg).map_err(|e| failed(e.into()))?;
    submit_bio_wait(cpu_ctx(), bio, block::wait)
        .0
        .map_err(|e| failed(e.into()))?;
    Ok(buf.as_slice().iter().all(|&b| b == 0))
}

/// How [`mount`] found the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounted {
    /// An existing filesystem.
    Existing,
    /// The disk was blank; a new filesystem was written first.
    Formatted,
}

/// Mounts the disk's filesystem, logging what the mount did: read-write; read-only on a disk
/// that refuses writes; on a blank writable disk (both superblocks all zeros) writes a
/// filesystem first. Anything else that does not mount is an error (never reformatted). A
/// fallback to an older generation is logged as an error with its reason; when the newest
/// tree is corrupt the mount is read-only (the rollback is not accepted here).
pub fn mount(fs: &mut KernelFs<'_>) -> Result<(Mounted, MountReport), FsError> {
    mount_on(fs, root_device())
}

/// [`mount`] for an instance over `dev` (its device, from [`with_fs_on`]).
pub fn mount_on(
    fs: &mut KernelFs<'_>,
    dev: Option<&'static dyn BlockDevice>,
) -> Result<(Mounted, MountReport), FsError> {
    let read_only = dev.is_some_and(|d| d.read_only());
    if read_only {
        defmt::warn!("fs: the disk is read-only: mounting tinyfs read-only");
    }
    let opts = MountOptions {
        read_only,
        accept_rollback: false,
    };
    let (how, report) = match fs.mount_with(opts) {
        Ok(r) => (Mounted::Existing, r),
        Err(FsError::Corrupt { block, what }) => {
            if read_only || !superblocks_blank_on(dev)? {
                return Err(FsError::Corrupt { block, what });
            }
            mkfs_on(fs, dev)?;
            (Mounted::Formatted, fs.mount_with(opts)?)
        }
        Err(e) => return Err(e),
    };
    log_mount(&report, opts);
    Ok((how, report))
}

/// Logs a mount that did not simply use the newest generation.
pub fn log_mount(report: &MountReport, opts: MountOptions) {
    if let Some(fb) = &report.fell_back_from {
        defmt::error!(
            "fs: FELL BACK to generation {=u64}: {}",
            report.generation,
            defmt::Display2Format(fb)
        );
        if report.rollback_refused(opts) {
            defmt::error!(
                "fs: mounted read-only so that the newer generation's blocks stay intact; \
                 check the disk (cargo xtask fsck) before accepting the rollback"
            );
        } else if matches!(fb, Fallback::TornSuperblock(_)) {
            defmt::warn!("fs: the lost commit was never reported durable (torn commit record)");
        }
    }
    if let Some(s) = &report.damaged_older {
        defmt::warn!(
            "fs: the older superblock (slot {=u64}) is damaged: {=str}; the next commit rewrites it",
            s.slot,
            s.what
        );
    }
}

/// Deterministic file contents: byte `i` of the file made from `seed`.
///
/// The host side of the reboot test (`xtask/src/reboot.rs`) carries the same formula; keep the
/// two identical.
pub fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ n.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 29)
}

/// Fills `buf` with the pattern of `seed` from file offset `off`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, off: u64) {
    let mut i = 0usize;
    while i < buf.len() {
        let pos = off + i as u64;
        let word = pattern_word(seed, pos / 8).to_le_bytes();
        let from = (pos % 8) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
    }
}

/// Offset of the first byte of `buf` that differs from the pattern of `seed` at `off`.
pub fn pattern_mismatch(buf: &[u8], seed: u64, off: u64) -> Option<u64> {
    let mut want = [0u8; 512];
    for (k, chunk) in buf.chunks(want.len()).enumerate() {
        let at = off + (k * want.len()) as u64;
        fill_pattern(&mut want[..chunk.len()], seed, at);
        if let Some(j) = chunk.iter().zip(&want).position(|(a, b)| a != b) {
            return Some(at + j as u64);
        }
    }
    None
}

/// Prints the tree under `dir` (whose path is `path`), one line per entry.
pub fn print_tree(fs: &KernelFs<'_>, dir: Ino, path: &str, depth: usize) -> Result<(), FsError> {
    let mut cookie = 0;
    while let Some((e, next)) = fs.readdir(dir, cookie)? {
        cookie = next;
        let name = core::str::from_utf8(e.name()).unwrap_or("?");
        let mut full: heapless::String<256> = heapless::String::new();
        let _ = full.push_str(path.trim_end_matches('/'));
        let _ = full.push('/');
        let _ = full.push_str(name);
        match e.kind {
            Kind::Dir => {
                defmt::println!("  {=str}/", full.as_str());
                if depth < 8 {
                    print_tree(fs, e.ino, full.as_str(), depth + 1)?;
                }
            }
            _ => defmt::println!("  {=str}  {=u64} bytes", full.as_str(), e.size),
        }
    }
    Ok(())
}

/// Prints `statfs`.
pub fn print_statfs(fs: &KernelFs<'_>) -> Result<(), FsError> {
    let s = fs.statfs()?;
    defmt::println!(
        "  statfs: {=u64} blocks of {=u32} bytes, {=u64} free; {=u32} inodes, {=u32} free; generation {=u64}; names up to {=u32} bytes",
        s.blocks,
        s.block_size,
        s.free_blocks,
        s.inodes,
        s.free_inodes,
        s.generation,
        s.name_max
    );
    Ok(())
}

/// `mode=run`, after the raw-I/O demo: mount (mkfs a blank disk), write two files, read them
/// back, list the tree, statfs, sync, unmount. `false` if anything failed.
pub fn demo() -> bool {
    match with_fs(demo_on) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            defmt::error!("fs: {}", defmt::Display2Format(&e));
            false
        }
        Err(Setup::NoDisk) => true,
        Err(e) => {
            defmt::error!("fs: cannot set up: {}", defmt::Debug2Format(&e));
            false
        }
    }
}

/// Size of the demo's large file.
const DEMO_BIG: usize = 384 * 1024 + 123;
const DEMO_SEED: u64 = 0x7469_6e79;

fn demo_on(fs: &mut KernelFs<'_>) -> Result<(), FsError> {
    let (how, report) = mount(fs)?;
    defmt::println!(
        "fs: tinyfs mounted ({=str}), generation {=u64}, {=str}",
        match how {
            Mounted::Existing => "existing filesystem",
            Mounted::Formatted => "blank disk: formatted first",
        },
        report.generation,
        match report.mode {
            Mode::ReadOnly => "read-only",
            _ => "read-write",
        }
    );
    if report.mode == Mode::ReadOnly {
        defmt::println!("fs: read-only: the tree, no writes");
        print_tree(fs, Ino::ROOT, "/", 0)?;
        print_statfs(fs)?;
        return fs.unmount();
    }
    let r = demo_files(fs);
    let u = fs.unmount();
    r?;
    u?;
    defmt::println!("fs: unmounted cleanly");
    Ok(())
}

/// The demo's run counter: how many runs wrote their files into this filesystem.
const DEMO_RUNS: &str = "/demo/runs.txt";

/// What an earlier run left in `/demo`: the number of earlier runs (0 on the first), after
/// checking that the earlier run's large file still holds its pattern. A missing counter is a
/// first run; a counter whose large file is gone or differs is an error.
fn demo_earlier(fs: &mut KernelFs<'_>) -> Result<u64, FsError> {
    let ino = match fs.open(DEMO_RUNS) {
        Ok(ino) => ino,
        Err(FsError::NotFound) => {
            defmt::println!("fs: no {=str}: the first run on this filesystem", DEMO_RUNS);
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let mut text = [0u8; 24];
    let n = fs.read(ino, 0, &mut text)?;
    let runs = core::str::from_utf8(&text[..n])
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or(FsError::Corrupt {
            block: 0,
            what: "the demo's run counter is not a number",
        })?;
    let big = fs.open("/demo/big.bin")?;
    let no_memory = |_| FsError::Unsupported("no DMA memory for the demo's buffers");
    let mut back = DmaBuf::alloc(DEMO_BIG, BLOCK_SIZE).map_err(no_memory)?;
    let got = fs.read(big, 0, back.as_mut_slice())?;
    let intact = got == DEMO_BIG && pattern_mismatch(back.as_slice(), DEMO_SEED, 0).is_none();
    defmt::println!(
        "fs: found the files of an earlier run: {=str} says {=u64} earlier run(s); /demo/big.bin {=usize} bytes, contents {=str}",
        DEMO_RUNS,
        runs,
        got,
        if intact { "intact" } else { "DIFFER" }
    );
    if intact {
        Ok(runs)
    } else {
        Err(FsError::Corrupt {
            block: 0,
            what: "the large file of an earlier run differs from what it wrote",
        })
    }
}

fn demo_files(fs: &mut KernelFs<'_>) -> Result<(), FsError> {
    match fs.mkdir("/demo") {
        Ok(_) | Err(FsError::Exists) => {}
        Err(e) => return Err(e),
    }
    let earlier = demo_earlier(fs)?;
    let text: &[u8] = b"hello from tinyfs\n";
    let small = recreate(fs, "/demo/hello.txt")?;
    fs.write(small, 0, text)?;

    // The large file in one call: the filesystem turns it into bios of up to 1 MiB.
    let no_memory = |_| FsError::Unsupported("no DMA memory for the demo's buffers");
    let mut src = DmaBuf::alloc(DEMO_BIG, BLOCK_SIZE).map_err(no_memory)?;
    fill_pattern(src.as_mut_slice(), DEMO_SEED, 0);
    let big = recreate(fs, "/demo/big.bin")?;
    let t0 = block::clock();
    fs.write(big, 0, src.as_slice())?;
    fs.fsync(big)?;
    let write_us = (block::clock() - t0) / 1000;

    let mut back = DmaBuf::alloc(DEMO_BIG, BLOCK_SIZE).map_err(no_memory)?;
    let t1 = block::clock();
    let n = fs.read(big, 0, back.as_mut_slice())?;
    let read_us = (block::clock() - t1) / 1000;
    let mut small_back = [0u8; 64];
    let m = fs.read(small, 0, &mut small_back)?;
    let big_ok = n == DEMO_BIG && pattern_mismatch(back.as_slice(), DEMO_SEED, 0).is_none();
    let small_ok = small_back[..m] == *text;
    defmt::println!(
        "fs: wrote and fsynced {=usize} bytes in {=u64} us, read back in {=u64} us: {=str}; {=usize}-byte text file: {=str}",
        DEMO_BIG,
        write_us,
        read_us,
        if big_ok { "match" } else { "MISMATCH" },
        m,
        if small_ok { "match" } else { "MISMATCH" }
    );
    let mut count: heapless::String<24> = heapless::String::new();
    let _ = core::fmt::write(&mut count, format_args!("{}\n", earlier + 1));
    let runs = recreate(fs, DEMO_RUNS)?;
    fs.write(runs, 0, count.as_bytes())?;
    fs.fsync(runs)?;
    defmt::println!(
        "fs: {=str} now says {=u64}: the next run finds these files",
        DEMO_RUNS,
        earlier + 1
    );
    defmt::println!("fs: tree");
    print_tree(fs, Ino::ROOT, "/", 0)?;
    print_statfs(fs)?;
    fs.sync()?;
    if big_ok && small_ok {
        Ok(())
    } else {
        Err(FsError::Corrupt {
            block: 0,
            what: "file read back differs from what was written",
        })
    }
}

/// Creates `path`, replacing a file of that name left by an earlier run.
fn recreate(fs: &mut KernelFs<'_>, path: &str) -> Result<Ino, FsError> {
    match fs.create(path) {
        Err(FsError::Exists) => {
            fs.unlink(path)?;
            fs.create(path)
        }
        r => r,
    }
}
