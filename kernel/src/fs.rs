//! tinyfs on named block devices: the registered device `root=<name>` on the command line
//! names (`vda`, `sda3`, `nvme0n1p2`, a mapped device, ...; [`crate::block::registry`]) is the
//! root filesystem's, else the virtio disk. Here: the filesystem's bio set (its own slab,
//! reserve and 256-entry vector pools), the memory of [`INSTANCES`] filesystem instances (each
//! its node cache, free-space cache and 1 MiB data buffer, DMA memory taken once and kept: no
//! heap), an [`Instance`] over any device ([`with_fs_on`]; calls nest, so several filesystems
//! are mounted at once), the kernel's mount policy ([`Instance::mount_kernel`]: mkfs on a blank
//! disk), and the filesystem half of the `mode=run` demo.
//!
//! The filesystem is tinyfs format version 2 ([`KernelFs`], any size up to 16 TiB: nothing in
//! memory grows with the disk or the file count). Version 1 ([`V1Fs`]) stays available on the
//! same instance for side-by-side benchmarks.
//!
//! A disk counts as blank only when both superblock slots (blocks 0 and 1) are all zeros; a
//! disk with anything else there that does not mount is reported, never reformatted. A
//! read-only disk is mounted read-only. A mount that fell back to the older commit record is
//! logged with the reason: a torn newest record (the lost commit was never reported durable)
//! as a warning, a newest tree that does not validate as an error, and then the older tree is
//! mounted read-only so the newer tree's blocks stay intact for a check.

use blk::mem::DmaRegion;
use blk::{
    BioSet, BioSlab, BioVec, BlkError, BlockDevice, BvecPools, BvecSlabs, Op, Wait, submit_bio_wait,
};
use hal::DmaBuf;
use spin::Mutex;
use tinyfs::blkdev::{BlkDisk, FsIo};
use tinyfs::v2::check::{self, Problem, Report};
use tinyfs::v2::volume::volume_frames;
use tinyfs::{BLOCK_SIZE, FsError, Ino, IoErrorKind, IoOp, Kind, MountInfo};

use crate::block::{self, cpu_ctx, registry, virtio};
use crate::config::{
    FS_BIO_RESERVE, FS_BIO_SLAB, FS_BVEC_256, FS_BVEC_RESERVE, FS_BVEC_SMALL, FS_DATA_BYTES,
    FS_GROUPS, FS_NODE_FRAMES,
};

/// Node frames of an instance's B+tree cache ([`crate::config::FS_NODE_FRAMES`]).
pub const N: usize = FS_NODE_FRAMES;
/// Free-space groups an instance caches ([`crate::config::FS_GROUPS`]).
pub const G: usize = FS_GROUPS;
/// Blocks per free-space group mkfs chooses: the most one bitmap block covers (fewest
/// bitmaps; 2^32 blocks are 132,235 groups).
pub const GROUP_BLOCKS: u32 = tinyfs::v2::superblock::GROUP_BLOCKS_MAX;
/// The filesystem type the kernel uses: format version 2 over an instance's device.
pub type KernelFs<'b> = tinyfs::Fs<'b, &'b mut BlkDisk, N, G>;

/// Inode-table blocks of a version-1 instance (15 inodes each).
pub const IB: usize = 8;
/// Bitmap words of a version-1 instance: filesystems of up to `64 * BW` blocks (64 MiB).
pub const BW: usize = 256;
/// Format version 1 on an instance's device (benchmarks compare it with [`KernelFs`]).
pub type V1Fs<'b> = tinyfs::v1::Fs<'b, &'b mut BlkDisk, IB, BW>;

/// Bytes of an instance's memory: the node cache and free-space cache of [`volume_frames`]
/// (less its one-block data buffer) plus the data buffer of [`FS_DATA_BYTES`] (the largest
/// data I/O: 256 blocks, one 1 MiB bio). Version 1 uses the first 1 MiB as its I/O buffer,
/// fsck the whole of it as scratch.
pub const MEM_BYTES: usize = (volume_frames(N, G) - 1) * BLOCK_SIZE + FS_DATA_BYTES;
/// Bytes of version 1's I/O buffer.
pub const IO_BUF_BYTES: usize = 1 << 20;
const _: () = assert!(MEM_BYTES >= IO_BUF_BYTES && N >= tinyfs::v2::MIN_FRAMES);
const _: () = assert!(MEM_BYTES >= check::MIN_SCRATCH_BLOCKS * BLOCK_SIZE);

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
/// partitions and a mapped device mounted together), [`MEM_BYTES`] each.
pub const INSTANCES: usize = crate::config::FS_INSTANCES;

/// The instances' memory, each allocated on first use and never freed; whoever holds a lock
/// owns that memory.
static MEMS: [Mutex<Option<DmaRegion>>; INSTANCES] = [const { Mutex::new(None) }; INSTANCES];

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

fn instance_memory() -> Result<DmaRegion, Setup> {
    FS_SET.init().map_err(|_| Setup::NoMemory)?;
    let buf = DmaBuf::alloc(MEM_BYTES, BLOCK_SIZE).map_err(|_| Setup::NoMemory)?;
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

/// A filesystem instance over one device: the device as the filesystem sees it and the
/// instance's memory. Nothing is mounted; [`Instance::mount`] lends both to a [`KernelFs`]
/// for as long as it lives.
pub struct Instance<'m> {
    disk: BlkDisk,
    dev: &'static dyn BlockDevice,
    mem: &'m mut [u8],
}

/// Runs `f` on an instance over the root device ([`root_device`]); see [`with_fs_on`].
pub fn with_fs<R>(f: impl FnOnce(&mut Instance<'_>) -> R) -> Result<R, Setup> {
    with_fs_on(root_device().ok_or(Setup::NoDisk)?, f)
}

/// Runs `f` on an instance over the registered device `name` (`vda`, `nvme0n1p2`, a mapped
/// device, ...; [`Setup::NoDisk`] when no device has that name); see [`with_fs_on`].
pub fn with_fs_named<R>(name: &str, f: impl FnOnce(&mut Instance<'_>) -> R) -> Result<R, Setup> {
    with_fs_on(registry::find(name).ok_or(Setup::NoDisk)?.dev, f)
}

/// Runs `f` on an instance over `dev` with the first free instance memory (locked for the
/// duration; [`Setup::Busy`] when all [`INSTANCES`] are in use). Calls nest: inside `f`,
/// another call over another device gives a second instance, both mounted at once.
pub fn with_fs_on<R>(
    dev: &'static dyn BlockDevice,
    f: impl FnOnce(&mut Instance<'_>) -> R,
) -> Result<R, Setup> {
    let mut guard = MEMS.iter().find_map(|m| m.try_lock()).ok_or(Setup::Busy)?;
    if guard.is_none() {
        *guard = Some(instance_memory()?);
    }
    let region = guard.as_mut().ok_or(Setup::NoMemory)?;
    let span = region.span();
    let disk = BlkDisk::new(dev, cpu_ctx(), &FS_SET, block::wait, span).ok_or(Setup::BlockSize)?;
    let mut inst = Instance {
        disk,
        dev,
        mem: region.as_mut_slice(),
    };
    Ok(f(&mut inst))
}

/// How [`Instance::mount_kernel`] found the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounted {
    /// An existing filesystem.
    Existing,
    /// The disk was blank; a new filesystem was written first.
    Formatted,
}

impl<'m> Instance<'m> {
    /// The block device under the instance.
    pub fn block_device(&self) -> &'static dyn BlockDevice {
        self.dev
    }

    /// Writes an empty version-2 filesystem over the whole device (groups of
    /// [`GROUP_BLOCKS`], no data checksums; the clock is [`block::clock`], which also
    /// seeds the filesystem's identity: two mkfs on a disk whose superblocks were blanked
    /// in between get different identities).
    pub fn mkfs(&mut self) -> Result<(), FsError> {
        self.mkfs_with(false)
    }

    /// [`Instance::mkfs`], with data checksums when `data_checksums` (a data block that does
    /// not match is [`FsError::DataChecksum`] when read).
    pub fn mkfs_with(&mut self, data_checksums: bool) -> Result<(), FsError> {
        KernelFs::mkfs_with(
            &mut &mut self.disk,
            self.mem,
            GROUP_BLOCKS,
            block::clock(),
            data_checksums,
        )
    }

    /// Mounts the device's filesystem as it is (no mkfs, nothing logged): read-only as asked
    /// or as [`MountInfo::rolled_back`] forces; [`FsError::DeviceReadOnly`] for a read-write
    /// mount of a read-only device.
    pub fn mount(&mut self, read_only: bool) -> Result<(KernelFs<'_>, MountInfo), FsError> {
        if !read_only && self.dev.read_only() {
            return Err(FsError::DeviceReadOnly);
        }
        KernelFs::mount(&mut self.disk, self.mem, read_only)
    }

    /// The kernel's mount, logging what it did: read-write; read-only on a disk that refuses
    /// writes; on a blank writable disk (both superblocks all zeros) writes a filesystem
    /// first. Anything else that does not mount is an error (never reformatted). A fallback
    /// to the older commit record is logged ([`log_mount`]); a corrupt newest tree mounts the
    /// older one read-only. A read-only mount does not replay the fsync log: a pending log is
    /// announced.
    pub fn mount_kernel(&mut self) -> Result<(KernelFs<'_>, Mounted, MountInfo), FsError> {
        let read_only = self.dev.read_only();
        if read_only {
            defmt::warn!("fs: the disk is read-only: mounting tinyfs read-only");
        }
        // Blank (both superblock slots all zeros, which never mount) is decided first, so the
        // filesystem is mounted once: its log replay and its fallback are the ones reported.
        let how = if !read_only && superblocks_blank_on(Some(self.dev))? {
            self.mkfs()?;
            Mounted::Formatted
        } else {
            Mounted::Existing
        };
        let (mut fs, info) = KernelFs::mount(&mut self.disk, self.mem, read_only)?;
        log_mount(&info);
        if read_only && fs.volume().superblock().log_root != 0 {
            // A read-only mount shows the last commit: what was fsynced after it is in the
            // log, which only a read-write mount replays.
            defmt::warn!(
                "fs: read-only: the fsync log after generation {=u64} is NOT replayed: files fsynced since show their contents as of that commit (a read-write mount replays the log)",
                info.generation
            );
        }
        Ok((fs, how, info))
    }

    /// Checks the unmounted filesystem ([`tinyfs::v2::check::check`], the instance's memory
    /// as scratch): every problem goes to `report`, naming its block.
    pub fn check(&mut self, report: &mut dyn FnMut(&Problem)) -> Result<Report, FsError> {
        check::check(&mut self.disk, self.mem, report)
    }

    /// A version-1 instance over the device (unmounted; its I/O buffer is the first
    /// [`IO_BUF_BYTES`] of the instance's memory).
    pub fn v1(&mut self) -> V1Fs<'_> {
        V1Fs::new(&mut self.disk, &mut self.mem[..IO_BUF_BYTES])
    }
}

/// The size in blocks of the filesystem [`Instance::mkfs`] writes on a device of `dev_blocks`
/// blocks: the whole device up to 2^32 blocks, less a last group too short for its bitmap
/// slots (as `tinyfs::v2::space::FreeSpace::mkfs` lays it out).
pub fn fs_blocks(dev_blocks: u64) -> u64 {
    let gb = u64::from(GROUP_BLOCKS);
    let b = dev_blocks.min(tinyfs::v2::superblock::MAX_BLOCKS);
    if !b.is_multiple_of(gb) && b % gb < 4 {
        b - b % gb
    } else {
        b
    }
}

/// The size of a version-1 filesystem on a device of `dev_blocks` blocks: the whole device up
/// to the instance's `64 * BW` blocks.
pub fn v1_blocks(dev_blocks: u64) -> u64 {
    dev_blocks.min(64 * BW as u64)
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

/// Logs a mount that did not simply use the newest commit record, and the fsync log blocks it
/// replayed.
pub fn log_mount(info: &MountInfo) {
    if info.replayed > 0 {
        defmt::info!(
            "fs: replayed {=u32} fsync log block(s) written after generation {=u64}",
            info.replayed,
            info.generation
        );
    }
    if info.rolled_back {
        defmt::error!(
            "fs: FELL BACK to generation {=u64}: the newest commit's tree is corrupt; mounted the older tree READ-ONLY so that the newer tree's blocks stay intact; check the disk (cargo xtask fsck)",
            info.generation
        );
    } else if info.fell_back {
        defmt::warn!(
            "fs: FELL BACK to generation {=u64}: torn commit record; the lost commit was never reported durable",
            info.generation
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
pub fn print_tree(
    fs: &mut KernelFs<'_>,
    dir: Ino,
    path: &str,
    depth: usize,
) -> Result<(), FsError> {
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
pub fn print_statfs(fs: &mut KernelFs<'_>) -> Result<(), FsError> {
    let s = fs.statfs()?;
    defmt::println!(
        "  statfs: {=u64} blocks of {=u32} bytes, {=u64} free; {=u64} inodes used; generation {=u64}; names up to {=u32} bytes",
        s.blocks,
        s.block_size,
        s.free_blocks,
        s.inodes_used,
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

fn demo_on(inst: &mut Instance<'_>) -> Result<(), FsError> {
    let dev_read_only = inst.block_device().read_only();
    let (mut fs, how, info) = inst.mount_kernel()?;
    let read_only = dev_read_only || info.rolled_back;
    defmt::println!(
        "fs: tinyfs mounted ({=str}), generation {=u64}, {=str}",
        match how {
            Mounted::Existing => "existing filesystem",
            Mounted::Formatted => "blank disk: formatted first",
        },
        info.generation,
        if read_only { "read-only" } else { "read-write" }
    );
    if read_only {
        defmt::println!("fs: read-only: the tree, no writes");
        print_tree(&mut fs, Ino::ROOT, "/", 0)?;
        print_statfs(&mut fs)?;
        return fs.unmount().map(|_| ());
    }
    let r = demo_files(&mut fs);
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
