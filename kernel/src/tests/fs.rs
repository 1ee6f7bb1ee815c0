//! tinyfs on the root device (the virtio disk, or the registered device `root=<name>` names):
//! namespace and file operations with remount and fsck, a 4 MiB file
//! byte for byte, zero-copy writes (`write_buffer`) across a remount, a fallback to the
//! previous generation (torn commit record, corrupt newest tree) that mount and fsck report,
//! the two phases of the reboot test (`fs_phase=write`, then `fs_phase=verify` on the same
//! image after a reboot; `cargo xtask test` runs them with `ktest=gated` and checks the image
//! on the host afterwards), and a read-only disk (`fs_ro=1`, profile `x86_64-virtio-ro`).

use blk::{BioVec, Op, Wait, submit_bio_wait};
use hal::DmaBuf;
use tinyfs::format::Superblock;
use tinyfs::{
    BLOCK_SIZE, Fallback, FsError, FsckStatus, Ino, Kind, Mode, MountOptions, MountReport,
};

use crate::block;
use crate::fs::{self, KernelFs, Setup, fill_pattern, pattern_mismatch, with_fs};
use crate::ktest::{Outcome, TestResult, fail};

/// Runs `body` on an unmounted instance; no disk is a skip.
fn on_disk(body: impl FnOnce(&mut KernelFs<'_>) -> TestResult) -> TestResult {
    match with_fs(body) {
        Ok(r) => r,
        Err(Setup::NoDisk) => Err(Outcome::NoDisk(block::DiskKind::Virtio)),
        Err(e) => Err(fail(format_args!("no filesystem instance: {:?}", e))),
    }
}

/// Unwraps a filesystem result, failing the test with the operation and the error.
fn ok<T>(r: Result<T, FsError>, what: &str) -> Result<T, Outcome> {
    r.map_err(|e| fail(format_args!("{}: {}", what, e)))
}

/// Expects a specific error.
fn err_is<T: core::fmt::Debug>(r: Result<T, FsError>, want: FsError, what: &str) -> TestResult {
    match r {
        Err(e) if e == want => Ok(()),
        other => Err(fail(format_args!(
            "{}: {:?}, expected Err({:?})",
            what, other, want
        ))),
    }
}

fn scratch(len: usize) -> Result<DmaBuf, Outcome> {
    DmaBuf::alloc(len, 4096).map_err(|e| fail(format_args!("no memory for {} bytes: {:?}", len, e)))
}

/// Names in `dir`, sorted into `out`; returns how many.
fn list(fs: &KernelFs<'_>, dir: Ino, out: &mut [[u8; 16]; 8]) -> Result<usize, Outcome> {
    let (mut n, mut cookie) = (0, 0);
    while let Some((e, next)) = ok(fs.readdir(dir, cookie), "readdir")? {
        cookie = next;
        if n == out.len() {
            return Err(fail(format_args!("more than {} entries", out.len())));
        }
        out[n] = [0; 16];
        let name = e.name();
        out[n][..name.len().min(16)].copy_from_slice(&name[..name.len().min(16)]);
        n += 1;
    }
    out[..n].sort_unstable();
    Ok(n)
}

fn names_are(fs: &KernelFs<'_>, path: &str, want: &[&str]) -> TestResult {
    let dir = ok(fs.open(path), "open directory")?;
    let mut got = [[0u8; 16]; 8];
    let n = list(fs, dir, &mut got)?;
    let mut expect = [[0u8; 16]; 8];
    for (i, w) in want.iter().enumerate() {
        expect[i][..w.len()].copy_from_slice(w.as_bytes());
    }
    expect[..want.len()].sort_unstable();
    check!(
        n == want.len() && got[..n] == expect[..n],
        "{} lists {} entries, expected {:?}",
        path,
        n,
        want
    );
    Ok(())
}

pub(super) fn fsck_clean(fs: &mut KernelFs<'_>) -> TestResult {
    let status = fsck_status(fs)?;
    check_eq!(status, FsckStatus::Clean);
    Ok(())
}

/// fsck's verdict; a clean verdict must come with no problem.
fn fsck_status(fs: &mut KernelFs<'_>) -> Result<FsckStatus, Outcome> {
    let mut first = None;
    let stats = ok(
        fs.fsck(&mut |p| {
            first.get_or_insert(p);
        }),
        "fsck",
    )?;
    check!(
        (stats.problems == 0) == (stats.status == FsckStatus::Clean),
        "fsck: {:?} with {} problems, first {:?}",
        stats.status,
        stats.problems,
        first
    );
    Ok(stats.status)
}

/// Checks that file `path` holds exactly `size` bytes of the pattern of `seed`.
fn verify_file(
    fs: &mut KernelFs<'_>,
    path: &str,
    seed: u64,
    size: u64,
    buf: &mut [u8],
) -> TestResult {
    let st = ok(fs.stat_path(path), path)?;
    check_eq!(st.kind, Kind::File);
    check!(
        st.size == size,
        "{}: size {}, expected {}",
        path,
        st.size,
        size
    );
    let mut off = 0u64;
    while off < size {
        let n = ok(fs.read(st.ino, off, buf), "read")?;
        let want = (size - off).min(buf.len() as u64) as usize;
        check!(
            n == want,
            "{}: read {} bytes at {}, expected {}",
            path,
            n,
            off,
            want
        );
        if let Some(at) = pattern_mismatch(&buf[..n], seed, off) {
            return Err(fail(format_args!(
                "{}: content differs at byte {}",
                path, at
            )));
        }
        off += n as u64;
    }
    let mut past = [0u8; 16];
    check_eq!(ok(fs.read(st.ino, size, &mut past), "read at EOF")?, 0);
    Ok(())
}

/// Writes `size` bytes of the pattern of `seed` to `ino`, `buf.len()` bytes per call.
fn write_pattern(
    fs: &mut KernelFs<'_>,
    ino: Ino,
    seed: u64,
    size: u64,
    buf: &mut [u8],
) -> TestResult {
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..n], seed, off);
        let w = ok(fs.write(ino, off, &buf[..n]), "write")?;
        check_eq!(w, n);
        off += n as u64;
    }
    Ok(())
}

ktest! {
    fn fs_namespace_and_file_ops() -> TestResult {
        on_disk(|fs| {
            ok(fs::mkfs(fs), "mkfs")?;
            ok(fs.mount(false), "mount")?;
            let s0 = ok(fs.statfs(), "statfs")?;
            let disk_blocks = fs::root_device().map_or(0, |d| d.capacity() / 8);
            check_eq!(s0.blocks, fs::fs_blocks(disk_blocks));
            check_eq!(s0.block_size, 4096);
            check_eq!(s0.free_inodes, s0.inodes - 1);
            names_are(fs, "/", &[])?;

            // A small file.
            let a = ok(fs.create("/a.txt"), "create /a.txt")?;
            check_eq!(ok(fs.write(a, 0, b"hello"), "write")?, 5);
            check_eq!(ok(fs.append(a, b", world"), "append")?, 5);
            let mut out = [0u8; 32];
            let n = ok(fs.read(a, 0, &mut out), "read")?;
            check!(out[..n] == *b"hello, world", "read back {:?}", &out[..n]);
            err_is(fs.create("/a.txt"), FsError::Exists, "create twice")?;

            // Directories, a file with a hole in front of its data.
            ok(fs.mkdir("/d"), "mkdir /d")?;
            ok(fs.mkdir("/d/e"), "mkdir /d/e")?;
            let f = ok(fs.create("/d/e/f"), "create /d/e/f")?;
            let mut data = [0u8; 10_000];
            fill_pattern(&mut data, 7, 5000);
            check_eq!(ok(fs.write(f, 5000, &data), "write after a hole")?, data.len());
            let mut back = [0xffu8; 15_000];
            check_eq!(ok(fs.read(f, 0, &mut back), "read with hole")?, 15_000);
            check!(back[..5000].iter().all(|&b| b == 0), "hole does not read as zeros");
            check!(pattern_mismatch(&back[5000..], 7, 5000).is_none(), "data after the hole differs");
            err_is(fs.create("/nope/x"), FsError::NotFound, "create in a missing directory")?;
            err_is(fs.create("/a.txt/x"), FsError::NotDir, "create under a file")?;
            err_is(fs.read(ok(fs.open("/d"), "open /d")?, 0, &mut out), FsError::IsDir, "read a directory")?;

            // Rename (also over an existing file), unlink, rmdir.
            ok(fs.rename("/a.txt", "/d/b.txt"), "rename")?;
            err_is(fs.stat_path("/a.txt"), FsError::NotFound, "old name after rename")?;
            check_eq!(ok(fs.stat_path("/d/b.txt"), "stat renamed")?.size, 12);
            let c = ok(fs.create("/c.txt"), "create /c.txt")?;
            ok(fs.write(c, 0, b"replacement"), "write /c.txt")?;
            ok(fs.rename("/c.txt", "/d/b.txt"), "rename over a file")?;
            check_eq!(ok(fs.stat_path("/d/b.txt"), "stat replaced")?.size, 11);
            ok(fs.create("/gone"), "create /gone")?;
            ok(fs.unlink("/gone"), "unlink")?;
            err_is(fs.stat_path("/gone"), FsError::NotFound, "unlinked file")?;
            err_is(fs.rmdir("/d"), FsError::NotEmpty, "rmdir non-empty")?;
            err_is(fs.unlink("/d"), FsError::IsDir, "unlink a directory")?;
            ok(fs.mkdir("/empty"), "mkdir /empty")?;
            ok(fs.rmdir("/empty"), "rmdir /empty")?;
            names_are(fs, "/", &["d"])?;
            names_are(fs, "/d", &["b.txt", "e"])?;
            names_are(fs, "/d/e", &["f"])?;

            // fsync commits: a new generation, blocks in use.
            let g = fs.generation();
            ok(fs.fsync(f), "fsync")?;
            let s1 = ok(fs.statfs(), "statfs")?;
            check!(s1.generation > g, "fsync left generation {} (was {})", s1.generation, g);
            check!(s1.free_blocks < s0.free_blocks, "no blocks used: {} free", s1.free_blocks);
            check_eq!(s1.free_inodes, s0.free_inodes - 4);

            // Remount: everything is there; fsck finds nothing.
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)?;
            ok(fs.mount(false), "remount")?;
            names_are(fs, "/d", &["b.txt", "e"])?;
            let f = ok(fs.open("/d/e/f"), "open after remount")?;
            back.fill(0xff);
            check_eq!(ok(fs.read(f, 0, &mut back), "read after remount")?, 15_000);
            check!(back[..5000].iter().all(|&b| b == 0), "hole after remount");
            check!(pattern_mismatch(&back[5000..], 7, 5000).is_none(), "data after remount");
            let b = ok(fs.open("/d/b.txt"), "open /d/b.txt")?;
            let n = ok(fs.read(b, 0, &mut out), "read /d/b.txt")?;
            check!(out[..n] == *b"replacement", "renamed-over file reads {:?}", &out[..n]);
            check_eq!(ok(fs.statfs(), "statfs")?.free_blocks, s1.free_blocks);
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

const BIG: u64 = 4 << 20;
const BIG_SEED: u64 = 0xb16;

ktest! {
    fn fs_4mib_file_byte_exact_across_remount() -> TestResult {
        on_disk(|fs| {
            let disk = fs::root_entry().ok_or(Outcome::NoDisk(block::DiskKind::Virtio))?;
            ok(fs::mkfs(fs), "mkfs")?;
            ok(fs.mount(false), "mount")?;
            let mut buf = scratch(1 << 20)?;
            let buf = buf.as_mut_slice();
            let ino = ok(fs.create("/big.bin"), "create")?;
            let s0 = disk.queue_stats.snapshot();
            let t0 = block::clock();
            write_pattern(fs, ino, BIG_SEED, BIG, buf)?;
            ok(fs.fsync(ino), "fsync")?;
            let write_ns = block::clock() - t0;
            let s1 = disk.queue_stats.snapshot();
            let st = ok(fs.stat(ino), "stat")?;
            check_eq!(st.size, BIG);
            check_eq!(st.blocks, BIG / 4096);
            let t1 = block::clock();
            verify_file(fs, "/big.bin", BIG_SEED, BIG, buf)?;
            let read_ns = block::clock() - t1;
            let s2 = disk.queue_stats.snapshot();
            // An unaligned read across a 1 MiB boundary.
            let mut odd = [0u8; 10_000];
            let at = (1 << 20) - 4097;
            check_eq!(ok(fs.read(ino, at, &mut odd), "unaligned read")?, odd.len());
            check!(pattern_mismatch(&odd, BIG_SEED, at).is_none(), "unaligned read differs");
            defmt::println!(
                "fs: 4 MiB written and fsynced in {=u64} us ({=u64} requests), read back in {=u64} us ({=u64} requests)",
                write_ns / 1000,
                s1.requests_dispatched - s0.requests_dispatched,
                read_ns / 1000,
                s2.requests_dispatched - s1.requests_dispatched
            );
            ok(fs.unmount(), "unmount")?;
            ok(fs.mount(false), "remount")?;
            verify_file(fs, "/big.bin", BIG_SEED, BIG, buf)?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

const ZC_SIZE: u64 = (6 << 20) + 12_345;
const ZC_SEED: u64 = 0x2c0;

/// Writes `size` bytes of the pattern of `seed` from `off` through lent regions of the
/// filesystem's buffer (zero-copy), asking for `chunk` bytes at a time.
fn write_zero_copy(
    fs: &mut KernelFs<'_>,
    ino: Ino,
    seed: u64,
    off: u64,
    size: u64,
    chunk: usize,
) -> TestResult {
    let mut at = off;
    while at < off + size {
        let want = (off + size - at).min(chunk as u64) as usize;
        let mut w = ok(fs.write_buffer(ino, at, want), "write_buffer")?;
        check!(
            w.offset() == at && !w.is_empty() && w.len() <= want,
            "lent {} bytes at {} for {} at {}",
            w.len(),
            w.offset(),
            want,
            at
        );
        fill_pattern(w.buf(), seed, at);
        let n = ok(w.commit(), "commit")?;
        at += n as u64;
    }
    Ok(())
}

ktest! {
    fn fs_zero_copy_writes_across_remount() -> TestResult {
        on_disk(|fs| {
            ok(fs::mkfs(fs), "mkfs")?;
            ok(fs.mount(false), "mount")?;
            let mut buf = scratch(1 << 20)?;
            let buf = buf.as_mut_slice();
            let ino = ok(fs.create("/zc.bin"), "create")?;
            // Streaming 128 KiB appends (written behind; the lent regions go round the 1 MiB
            // buffer several times), then an unaligned tail.
            let aligned = ZC_SIZE & !0xfff;
            write_zero_copy(fs, ino, ZC_SEED, 0, aligned - (1 << 20), 128 << 10)?;
            let tail_from = aligned - (1 << 20);
            write_zero_copy(fs, ino, ZC_SEED, tail_from, ZC_SIZE - tail_from, 100_000)?;
            // An overwrite inside the file (waited path, partial blocks read in first) with the
            // same pattern, and a region dropped uncommitted, which must change nothing.
            write_zero_copy(fs, ino, ZC_SEED, 3 * 4096 + 17, 70_000, 1 << 20)?;
            let free = ok(fs.statfs(), "statfs")?.free_blocks;
            {
                let mut w = ok(fs.write_buffer(ino, 4096, 8192), "write_buffer")?;
                w.buf().fill(0xa5);
            }
            check_eq!(ok(fs.statfs(), "statfs")?.free_blocks, free);
            verify_file(fs, "/zc.bin", ZC_SEED, ZC_SIZE, buf)?;
            ok(fs.fsync(ino), "fsync")?;
            ok(fs.unmount(), "unmount")?;
            ok(fs.mount(false), "remount")?;
            verify_file(fs, "/zc.bin", ZC_SEED, ZC_SIZE, buf)?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

/// The reboot test's files: path, seed, size. `xtask/src/reboot.rs` checks the same list on
/// the host; keep the two identical.
const REBOOT_FILES: [(&str, u64, u64); 3] = [
    ("/reboot/small.txt", 1, 1000),
    ("/reboot/big.bin", 2, 1_572_987),
    ("/reboot/sub/deep.bin", 3, 70_001),
];
/// Written after the last fsync and never committed: must be gone after the reboot.
const REBOOT_UNSYNCED: &str = "/reboot/unsynced.bin";

ktest! {
    #[only_with = "fs_phase=write"]
    fn fs_reboot_phase_write() -> TestResult {
        on_disk(|fs| {
            let (how, report) = ok(fs::mount(fs), "mount (mkfs if blank)")?;
            check_eq!(how, fs::Mounted::Formatted);
            check_eq!(report.mode, Mode::ReadWrite);
            ok(fs.mkdir("/reboot"), "mkdir")?;
            ok(fs.mkdir("/reboot/sub"), "mkdir")?;
            let mut buf = scratch(256 << 10)?;
            let buf = buf.as_mut_slice();
            for (path, seed, size) in REBOOT_FILES {
                let ino = ok(fs.create(path), path)?;
                write_pattern(fs, ino, seed, size, buf)?;
                ok(fs.fsync(ino), "fsync")?;
            }
            let ino = ok(fs.create(REBOOT_UNSYNCED), "create")?;
            write_pattern(fs, ino, 9, 64 << 10, buf)?;
            // No sync, no unmount: the machine goes down with the last fsync as the state.
            Ok(())
        })
    }
}

ktest! {
    #[only_with = "fs_phase=verify"]
    fn fs_reboot_phase_verify() -> TestResult {
        on_disk(|fs| {
            // A plain mount: a blank or corrupt disk here is a failure, not a reason to mkfs.
            let r = ok(fs.mount(false), "mount")?;
            check!(
                r.fell_back_from.is_none() && r.mode == Mode::ReadWrite,
                "mount after the reboot: {:?}",
                r
            );
            let mut buf = scratch(256 << 10)?;
            let buf = buf.as_mut_slice();
            for (path, seed, size) in REBOOT_FILES {
                verify_file(fs, path, seed, size, buf)?;
            }
            err_is(fs.stat_path(REBOOT_UNSYNCED), FsError::NotFound, "unsynced file")?;
            names_are(fs, "/reboot", &["big.bin", "small.txt", "sub"])?;
            names_are(fs, "/reboot/sub", &["deep.bin"])?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

/// Reads or writes one block of the disk directly, under the filesystem.
fn raw(op: Op, block: u64, buf: &mut DmaBuf) -> TestResult {
    let disk = fs::root_device().ok_or(Outcome::Skip("no filesystem device"))?;
    let mut bio = block::IO_SET
        .alloc((), op, 1, Wait::Hook(block::wait))
        .map_err(|e| fail(format_args!("bio: {}", e)))?;
    bio.set_dev(disk);
    bio.set_sector(block * 8);
    // SAFETY: the segment contract: `buf` is DMA memory the caller lends for the call, and this
    // function waits for the bio (`submit_bio_wait`) before returning on every path.
    let seg = unsafe { BioVec::new(buf.phys(), BLOCK_SIZE as u32) };
    bio.add_vec(seg)
        .map_err(|e| fail(format_args!("segment: {}", e)))?;
    submit_bio_wait(block::cpu_ctx(), bio, block::wait)
        .0
        .map_err(|e| fail(format_args!("raw {:?} of block {}: {}", op, block, e)))
}

/// The superblock in `slot`, read under the filesystem.
fn superblock(slot: u64, buf: &mut DmaBuf) -> Result<Superblock, Outcome> {
    raw(Op::Read, slot, buf)?;
    let b: &[u8; BLOCK_SIZE] = buf.as_slice()[..BLOCK_SIZE]
        .try_into()
        .map_err(|_| fail(format_args!("short buffer")))?;
    Superblock::decode(b, slot).map_err(|e| fail(format_args!("slot {}: {}", slot, e)))
}

/// A filesystem of generations 2 (`/a`) and 3 (`/a`, `/b`). Returns the newest superblock's
/// slot and an inode-table block only it references.
fn two_generations(fs: &mut KernelFs<'_>, buf: &mut DmaBuf) -> Result<(u64, u64), Outcome> {
    ok(fs::mkfs(fs), "mkfs")?;
    ok(fs.mount(false), "mount")?;
    ok(fs.create("/a"), "create /a")?;
    ok(fs.sync(), "sync")?;
    let b = ok(fs.create("/b"), "create /b")?;
    ok(fs.write(b, 0, b"newest"), "write /b")?;
    ok(fs.sync(), "sync")?;
    check_eq!(fs.generation(), 3);
    ok(fs.unmount(), "unmount")?;
    let (old, new) = (superblock(0, buf)?, superblock(1, buf)?);
    check_eq!((old.generation, new.generation), (2, 3));
    let n = new.inode_blocks as usize;
    let only_new = new.table[..n]
        .iter()
        .copied()
        .find(|b| !old.table[..n].contains(b))
        .ok_or_else(|| fail(format_args!("no table block of generation 3 alone")))?;
    Ok((1, only_new))
}

fn fell_back(r: &MountReport) -> Result<Fallback, Outcome> {
    r.fell_back_from
        .ok_or_else(|| fail(format_args!("mount did not report the fallback: {:?}", r)))
}

ktest! {
    fn fs_corrupt_newest_tree_mounts_read_only() -> TestResult {
        on_disk(|fs| {
            let mut buf = scratch(BLOCK_SIZE)?;
            let (_, block) = two_generations(fs, &mut buf)?;
            raw(Op::Read, block, &mut buf)?;
            buf.as_mut_slice()[300] ^= 0x40;
            raw(Op::Write, block, &mut buf)?;
            let (_, r) = ok(fs::mount(fs), "mount")?;
            check_eq!((r.generation, r.mode), (2, Mode::ReadOnly));
            match fell_back(&r)? {
                Fallback::CorruptTree { generation: 3, block: b, .. } if b == block => {}
                other => return Err(fail(format_args!("{:?}", other))),
            }
            err_is(fs.stat_path("/b"), FsError::NotFound, "the newest file")?;
            ok(fs.stat_path("/a"), "/a of generation 2")?;
            err_is(fs.create("/c"), FsError::ReadOnly, "create")?;
            ok(fs.unmount(), "unmount")?;
            check_eq!(fsck_status(fs)?, FsckStatus::RolledBackCorrupt);
            // Accepted: read-write at generation 2; the next commit makes it permanent.
            let opts = MountOptions { read_only: false, accept_rollback: true };
            let r = ok(fs.mount_with(opts), "mount accepting the rollback")?;
            check_eq!((r.generation, r.mode), (2, Mode::ReadWrite));
            ok(fs.create("/c"), "create /c")?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

ktest! {
    fn fs_torn_commit_record_falls_back_and_says_so() -> TestResult {
        on_disk(|fs| {
            let mut buf = scratch(BLOCK_SIZE)?;
            let (slot, _) = two_generations(fs, &mut buf)?;
            // The commit record of generation 3 cut after its first sector.
            raw(Op::Read, slot, &mut buf)?;
            buf.as_mut_slice()[512..BLOCK_SIZE].fill(0);
            raw(Op::Write, slot, &mut buf)?;
            check_eq!(fsck_status(fs)?, FsckStatus::RolledBackTorn);
            let (_, r) = ok(fs::mount(fs), "mount")?;
            check_eq!((r.generation, r.mode), (2, Mode::ReadWrite));
            match fell_back(&r)? {
                Fallback::TornSuperblock(s) if s.slot == slot && s.claimed == Some(3) => {}
                other => return Err(fail(format_args!("{:?}", other))),
            }
            err_is(fs.stat_path("/b"), FsError::NotFound, "the lost commit's file")?;
            ok(fs.create("/c"), "create /c")?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

ktest! {
    #[only_with = "fs_ro=1"]
    fn fs_read_only_disk_mounts_read_only() -> TestResult {
        on_disk(|fs| {
            let disk = fs::root_device().ok_or(Outcome::Skip("no filesystem device"))?;
            check!(
                disk.read_only(),
                "the profile's disk is read-only, but the queue is not"
            );
            err_is(fs.mount(false), FsError::DeviceReadOnly, "read-write mount")?;
            let (how, r) = ok(fs::mount(fs), "mount")?;
            check_eq!(how, fs::Mounted::Existing);
            check_eq!(r.mode, Mode::ReadOnly);
            check!(r.fell_back_from.is_none(), "{:?}", r);
            names_are(fs, "/", &[])?;
            err_is(fs.create("/x"), FsError::ReadOnly, "create")?;
            ok(fs.unmount(), "unmount")?;
            fsck_clean(fs)
        })
    }
}

/// Files each filesystem of [`two_filesystems_at_once`] gets: name, size. The same names on
/// both, with different contents (seeds), so that a block of one landing in the other shows.
const TWO_FS_FILES: [(&str, u64); 3] =
    [("/a.bin", 200_003), ("/b.bin", 4096), ("/c.bin", 1_000_001)];

/// The pattern seed of file `k` on filesystem `which` (0 or 1).
fn two_fs_seed(which: u64, k: usize) -> u64 {
    0x2f5_0000 + which * 0x100 + k as u64
}

/// Mounts the instance over the blank device `dev`: formatted first, the filesystem mkfs
/// makes on it.
fn mount_blank(fs: &mut KernelFs<'_>, dev: &'static dyn blk::BlockDevice) -> TestResult {
    let (how, _) = ok(
        fs::mount_on(fs, Some(dev)),
        "mount (mkfs on the blank device)",
    )?;
    check_eq!(how, fs::Mounted::Formatted);
    check_eq!(
        ok(fs.statfs(), "statfs")?.blocks,
        fs::fs_blocks(dev.capacity() / 8)
    );
    Ok(())
}

/// Writes file `k` of [`TWO_FS_FILES`] on filesystem `which` and fsyncs it.
fn write_two_fs_file(fs: &mut KernelFs<'_>, which: u64, k: usize, buf: &mut [u8]) -> TestResult {
    let (path, size) = TWO_FS_FILES[k];
    let ino = ok(fs.create(path), "create")?;
    write_pattern(fs, ino, two_fs_seed(which, k), size, buf)?;
    ok(fs.fsync(ino), "fsync")
}

/// tinyfs on the registered devices `a` and `b` at once (two instances, [`fs::with_fs_on`]):
/// both formatted (blank) and mounted together, files written to one and the other in turn,
/// both unmounted and fsck-clean; then both remounted together and every file read back; a
/// third instance while both are held is refused with [`Setup::Busy`]. Each disk's queue must
/// see the I/O of its own filesystem.
pub(super) fn two_filesystems_at_once(a: &str, b: &str) -> TestResult {
    use crate::block::registry;
    let find = |name: &str| {
        registry::find(name).ok_or_else(|| fail(format_args!("no device {} in the registry", name)))
    };
    let (da, db) = (find(a)?, find(b)?);
    let (qa, qb) = (da.queue_stats.snapshot(), db.queue_stats.snapshot());
    let mut buf = scratch(64 * 1024)?;
    let setup = |e: Setup| fail(format_args!("filesystem instance: {:?}", e));
    // Phase 1: format and write both, mounted together.
    fs::with_fs_on(da.dev, |fa| -> TestResult {
        fs::with_fs_on(db.dev, |fb| -> TestResult {
            let third = fs::with_fs_on(da.dev, |_| ());
            check!(
                matches!(third, Err(Setup::Busy)),
                "a third instance: {:?}",
                third
            );
            mount_blank(fa, da.dev)?;
            mount_blank(fb, db.dev)?;
            for k in 0..TWO_FS_FILES.len() {
                write_two_fs_file(fa, 0, k, buf.as_mut_slice())?;
                write_two_fs_file(fb, 1, k, buf.as_mut_slice())?;
            }
            ok(fa.unmount(), "unmount a")?;
            ok(fb.unmount(), "unmount b")?;
            fsck_clean(fa)?;
            fsck_clean(fb)
        })
        .map_err(setup)?
    })
    .map_err(setup)??;
    // Phase 2: both remounted together, every file read back, fsck-clean again.
    fs::with_fs_on(da.dev, |fa| -> TestResult {
        fs::with_fs_on(db.dev, |fb| -> TestResult {
            let (how, _) = ok(fs::mount_on(fa, Some(da.dev)), "remount a")?;
            check_eq!(how, fs::Mounted::Existing);
            let (how, _) = ok(fs::mount_on(fb, Some(db.dev)), "remount b")?;
            check_eq!(how, fs::Mounted::Existing);
            for (k, &(path, size)) in TWO_FS_FILES.iter().enumerate() {
                verify_file(fa, path, two_fs_seed(0, k), size, buf.as_mut_slice())?;
                verify_file(fb, path, two_fs_seed(1, k), size, buf.as_mut_slice())?;
            }
            ok(fa.unmount(), "unmount a")?;
            ok(fb.unmount(), "unmount b")?;
            fsck_clean(fa)?;
            fsck_clean(fb)
        })
        .map_err(setup)?
    })
    .map_err(setup)??;
    let (qa2, qb2) = (da.queue_stats.snapshot(), db.queue_stats.snapshot());
    check!(
        qa2.requests_dispatched > qa.requests_dispatched
            && qb2.requests_dispatched > qb.requests_dispatched,
        "{} or {}: no I/O reached its disk's queue",
        a,
        b
    );
    Ok(())
}
