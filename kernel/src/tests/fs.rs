//! tinyfs (format version 2) on the root device (the virtio disk, or the registered device
//! `root=<name>` names): namespace and file operations with remount and fsck, a 4 MiB file
//! byte for byte, zero-copy writes (`write_buffer`) across a remount, names of 255 bytes, a
//! directory of thousands of entries, a file of a thousand extents, renames across
//! directories, a data checksum mismatch reported as its typed error, a fallback to the
//! previous commit (torn commit record; corrupt newest tree, mounted read-only) that mount and
//! fsck report, the two phases of the reboot test (`fs_phase=write`, then `fs_phase=verify` on
//! the same image after a reboot; `cargo xtask test` runs them with `ktest=gated` and checks
//! the image on the host afterwards), a read-only disk (`fs_ro=1`, profile
//! `x86_64-virtio-ro`), and two filesystems mounted at once ([`two_filesystems_at_once`]).

use blk::{BioVec, Op, Wait, submit_bio_wait};
use hal::DmaBuf;
use tinyfs::v2::Superblock;
use tinyfs::v2::check::Problem;
use tinyfs::{BLOCK_SIZE, FsError, Ino, Kind};

use crate::block;
use crate::fs::{self, Instance, KernelFs, Setup, fill_pattern, pattern_mismatch, with_fs};
use crate::ktest::{Outcome, TestResult, fail};

/// Runs `body` on a filesystem instance over the root device; no disk is a skip.
fn on_disk(body: impl FnOnce(&mut Instance<'_>) -> TestResult) -> TestResult {
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

/// mkfs and a read-write mount of the instance's device.
fn fresh<'a>(inst: &'a mut Instance<'_>) -> Result<KernelFs<'a>, Outcome> {
    ok(inst.mkfs(), "mkfs")?;
    Ok(ok(inst.mount(false), "mount")?.0)
}

/// Unmounts (commits).
fn unmount(fs: KernelFs<'_>) -> TestResult {
    ok(fs.unmount().map(|_| ()), "unmount")
}

/// Names in `dir`, sorted into `out`; returns how many.
fn list(fs: &mut KernelFs<'_>, dir: Ino, out: &mut [[u8; 16]; 8]) -> Result<usize, Outcome> {
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

fn names_are(fs: &mut KernelFs<'_>, path: &str, want: &[&str]) -> TestResult {
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

/// fsck of the unmounted instance ([`tinyfs::v2::check::check`]): no problem at all.
pub(super) fn fsck_clean(inst: &mut Instance<'_>) -> TestResult {
    let (problems, first) = fsck(inst)?;
    check!(
        problems == 0,
        "fsck: {} problems, first {:?}",
        problems,
        first
    );
    Ok(())
}

/// fsck's problem count and first problem.
fn fsck(inst: &mut Instance<'_>) -> Result<(u64, Option<Problem>), Outcome> {
    let mut first = None;
    let r = ok(
        inst.check(&mut |p| {
            first.get_or_insert(*p);
        }),
        "fsck",
    )?;
    check!(
        (r.problems == 0) == first.is_none(),
        "fsck counted {} problems, reported {:?}",
        r.problems,
        first
    );
    Ok((r.problems, first))
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
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            let s0 = ok(fs.statfs(), "statfs")?;
            let disk_blocks = fs::root_device().map_or(0, |d| d.capacity() / 8);
            check_eq!(s0.blocks, fs::fs_blocks(disk_blocks));
            check_eq!(s0.block_size, 4096);
            check_eq!(s0.name_max, 255);
            check_eq!(s0.inodes_used, 1);
            names_are(&mut fs, "/", &[])?;

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
            let d = ok(fs.open("/d"), "open /d")?;
            err_is(fs.read(d, 0, &mut out), FsError::IsDir, "read a directory")?;
            check_eq!(ok(fs.stat(d), "stat /d")?.nlink, 3);

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
            names_are(&mut fs, "/", &["d"])?;
            names_are(&mut fs, "/d", &["b.txt", "e"])?;
            names_are(&mut fs, "/d/e", &["f"])?;

            // fsync commits (a new file's fsync is logged only in a directory of the last
            // commit with nothing but creations since; /d/e is new and names were removed):
            // a new generation, blocks in use; inode numbers are never reused.
            let g = fs.generation();
            ok(fs.fsync(f), "fsync")?;
            let s1 = ok(fs.statfs(), "statfs")?;
            check!(s1.generation > g, "fsync left generation {} (was {})", s1.generation, g);
            check!(s1.free_blocks < s0.free_blocks, "no blocks used: {} free", s1.free_blocks);
            check_eq!(s1.inodes_used, 1 + 7);
            err_is(fs.fsync(d), FsError::IsDir, "fsync a directory")?;

            // Remount: everything is there; fsck finds nothing.
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            names_are(&mut fs, "/d", &["b.txt", "e"])?;
            let f = ok(fs.open("/d/e/f"), "open after remount")?;
            back.fill(0xff);
            check_eq!(ok(fs.read(f, 0, &mut back), "read after remount")?, 15_000);
            check!(back[..5000].iter().all(|&b| b == 0), "hole after remount");
            check!(pattern_mismatch(&back[5000..], 7, 5000).is_none(), "data after remount");
            let b = ok(fs.open("/d/b.txt"), "open /d/b.txt")?;
            let n = ok(fs.read(b, 0, &mut out), "read /d/b.txt")?;
            check!(out[..n] == *b"replacement", "renamed-over file reads {:?}", &out[..n]);
            check_eq!(ok(fs.statfs(), "statfs")?.free_blocks, s1.free_blocks);
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

const BIG: u64 = 4 << 20;
const BIG_SEED: u64 = 0xb16;

ktest! {
    fn fs_4mib_file_byte_exact_across_remount() -> TestResult {
        on_disk(|inst| {
            let disk = fs::root_entry().ok_or(Outcome::NoDisk(block::DiskKind::Virtio))?;
            let mut fs = fresh(inst)?;
            let mut buf = scratch(1 << 20)?;
            let buf = buf.as_mut_slice();
            let ino = ok(fs.create("/big.bin"), "create")?;
            let s0 = disk.queue_stats.snapshot();
            let t0 = block::clock();
            write_pattern(&mut fs, ino, BIG_SEED, BIG, buf)?;
            ok(fs.fsync(ino), "fsync")?;
            let write_ns = block::clock() - t0;
            let s1 = disk.queue_stats.snapshot();
            let st = ok(fs.stat(ino), "stat")?;
            check_eq!(st.size, BIG);
            check_eq!(st.blocks, BIG / 4096);
            let t1 = block::clock();
            verify_file(&mut fs, "/big.bin", BIG_SEED, BIG, buf)?;
            let read_ns = block::clock() - t1;
            let s2 = disk.queue_stats.snapshot();
            // An unaligned read across a 1 MiB boundary.
            let mut odd = [0u8; 10_000];
            let at = (1 << 20) - 4097;
            check_eq!(ok(fs.read(ino, at, &mut odd), "unaligned read")?, odd.len());
            check!(pattern_mismatch(&odd, BIG_SEED, at).is_none(), "unaligned read differs");
            // The zero-copy read lends the filesystem's buffer.
            let lent = ok(fs.read_buffer(ino, at, 10_000), "read_buffer")?;
            check!(!lent.is_empty() && pattern_mismatch(lent, BIG_SEED, at).is_none(), "zero-copy read differs");
            defmt::println!(
                "fs: 4 MiB written and fsynced in {=u64} us ({=u64} requests), read back in {=u64} us ({=u64} requests)",
                write_ns / 1000,
                s1.requests_dispatched - s0.requests_dispatched,
                read_ns / 1000,
                s2.requests_dispatched - s1.requests_dispatched
            );
            unmount(fs)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            verify_file(&mut fs, "/big.bin", BIG_SEED, BIG, buf)?;
            unmount(fs)?;
            fsck_clean(inst)
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
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            let mut buf = scratch(1 << 20)?;
            let buf = buf.as_mut_slice();
            let ino = ok(fs.create("/zc.bin"), "create")?;
            // Streaming 128 KiB appends, then an unaligned tail.
            let aligned = ZC_SIZE & !0xfff;
            write_zero_copy(&mut fs, ino, ZC_SEED, 0, aligned - (1 << 20), 128 << 10)?;
            let tail_from = aligned - (1 << 20);
            write_zero_copy(&mut fs, ino, ZC_SEED, tail_from, ZC_SIZE - tail_from, 100_000)?;
            // An overwrite inside the file (partial blocks read in first) with the same
            // pattern, and a region dropped uncommitted, which must change nothing.
            write_zero_copy(&mut fs, ino, ZC_SEED, 3 * 4096 + 17, 70_000, 1 << 20)?;
            let free = ok(fs.statfs(), "statfs")?.free_blocks;
            {
                let mut w = ok(fs.write_buffer(ino, 4096, 8192), "write_buffer")?;
                w.buf().fill(0xa5);
            }
            check_eq!(ok(fs.statfs(), "statfs")?.free_blocks, free);
            verify_file(&mut fs, "/zc.bin", ZC_SEED, ZC_SIZE, buf)?;
            ok(fs.fsync(ino), "fsync")?;
            unmount(fs)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            verify_file(&mut fs, "/zc.bin", ZC_SEED, ZC_SIZE, buf)?;
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

/// A name of `len` bytes made of `c`, with `tag` in front.
fn long_name(tag: u8, c: u8, len: usize) -> heapless::String<300> {
    let mut s = heapless::String::new();
    let _ = s.push('/');
    let _ = s.push(char::from(tag));
    for _ in 1..len {
        let _ = s.push(char::from(c));
    }
    s
}

ktest! {
    fn fs_names_up_to_255_bytes() -> TestResult {
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            let n255 = long_name(b'a', b'x', 255);
            let d255 = long_name(b'd', b'y', 255);
            let f = ok(fs.create(&n255), "create a 255-byte name")?;
            ok(fs.write(f, 0, b"long"), "write")?;
            ok(fs.mkdir(&d255), "mkdir a 255-byte name")?;
            let mut inner: heapless::String<600> = heapless::String::new();
            let _ = inner.push_str(&d255);
            let _ = inner.push_str(&long_name(b'i', b'z', 255));
            ok(fs.create(&inner), "create a 255-byte name in a 255-byte directory")?;
            err_is(fs.create(&long_name(b'b', b'x', 256)), FsError::NameTooLong, "256 bytes")?;
            unmount(fs)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            let mut seen = 0;
            let mut cookie = 0;
            while let Some((e, next)) = ok(fs.readdir(Ino::ROOT, cookie), "readdir")? {
                cookie = next;
                check_eq!(e.name().len(), 255);
                let want = if e.kind == Kind::Dir { &d255[1..] } else { &n255[1..] };
                check!(e.name() == want.as_bytes(), "a 255-byte name read back differs");
                seen += 1;
            }
            check_eq!(seen, 2);
            let f = ok(fs.open(&n255), "open")?;
            let mut out = [0u8; 8];
            check_eq!(ok(fs.read(f, 0, &mut out), "read")?, 4);
            ok(fs.stat_path(&inner), "stat the nested long name")?;
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

/// Entries of the large directory.
const MANY: usize = 2000;

fn many_name(i: usize) -> heapless::String<32> {
    let mut s = heapless::String::new();
    let _ = core::fmt::Write::write_fmt(&mut s, format_args!("/many/entry-{i:05}"));
    s
}

/// Lists `/many`: every name must be `entry-N` with `N < MANY`, seen once; returns the count
/// and fails if an entry that `want(N)` says is there is missing or one it says is gone is
/// listed.
fn list_many(fs: &mut KernelFs<'_>, want: impl Fn(usize) -> bool) -> Result<usize, Outcome> {
    let dir = ok(fs.open("/many"), "open /many")?;
    let mut seen = [0u64; MANY.div_ceil(64)];
    let (mut n, mut cookie) = (0, 0);
    while let Some((e, next)) = ok(fs.readdir(dir, cookie), "readdir")? {
        cookie = next;
        let i = core::str::from_utf8(e.name())
            .ok()
            .and_then(|s| s.strip_prefix("entry-"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&i| i < MANY)
            .ok_or_else(|| fail(format_args!("unexpected entry {:?}", e.name())))?;
        check!(
            seen[i / 64] & (1 << (i % 64)) == 0,
            "entry {} listed twice",
            i
        );
        check!(want(i), "entry {} listed but removed", i);
        seen[i / 64] |= 1 << (i % 64);
        n += 1;
    }
    for i in 0..MANY {
        check!(
            seen[i / 64] & (1 << (i % 64)) != 0 || !want(i),
            "entry {} missing",
            i
        );
    }
    Ok(n)
}

ktest! {
    fn fs_directory_of_thousands_of_entries() -> TestResult {
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            ok(fs.mkdir("/many"), "mkdir")?;
            for i in 0..MANY {
                let f = ok(fs.create(&many_name(i)), "create")?;
                if i % 100 == 0 {
                    ok(fs.write(f, 0, &(i as u64).to_le_bytes()), "write")?;
                }
            }
            ok(fs.sync(), "sync")?;
            check_eq!(list_many(&mut fs, |_| true)?, MANY);
            unmount(fs)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            check_eq!(list_many(&mut fs, |_| true)?, MANY);
            for i in (0..MANY).step_by(100) {
                let st = ok(fs.stat_path(&many_name(i)), "stat")?;
                check_eq!(st.size, 8);
                let mut v = [0u8; 8];
                ok(fs.read(st.ino, 0, &mut v), "read")?;
                check_eq!(u64::from_le_bytes(v), i as u64);
            }
            err_is(fs.create(&many_name(17)), FsError::Exists, "create an existing entry")?;
            err_is(fs.rmdir("/many"), FsError::NotEmpty, "rmdir")?;
            for i in (0..MANY).filter(|i| i % 2 == 1) {
                ok(fs.unlink(&many_name(i)), "unlink")?;
            }
            check_eq!(list_many(&mut fs, |i| i % 2 == 0)?, MANY / 2);
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            check_eq!(list_many(&mut fs, |i| i % 2 == 0)?, MANY / 2);
            for i in (0..MANY).filter(|i| i % 2 == 0) {
                ok(fs.unlink(&many_name(i)), "unlink")?;
            }
            ok(fs.rmdir("/many"), "rmdir the emptied directory")?;
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

/// Blocks of the fragmented file: every other one written, one extent each.
const FRAG_BLOCKS: u64 = 1600;
const FRAG_SEED: u64 = 0xf7a9;

/// Checks the fragmented file: even blocks hold the pattern, odd ones are holes (zeros) or,
/// once `filled`, the pattern too.
fn frag_is(fs: &mut KernelFs<'_>, ino: Ino, filled: bool, buf: &mut [u8]) -> TestResult {
    let bs = BLOCK_SIZE as u64;
    let mut off = 0;
    while off < FRAG_BLOCKS * bs {
        let n = ok(fs.read(ino, off, buf), "read")?;
        check!(n > 0, "short file at {}", off);
        for (k, b) in buf[..n].chunks(BLOCK_SIZE).enumerate() {
            let at = off + k as u64 * bs;
            if (at / bs).is_multiple_of(2) || filled {
                check!(
                    pattern_mismatch(b, FRAG_SEED, at).is_none(),
                    "block {} differs",
                    at / bs
                );
            } else {
                check!(
                    b.iter().all(|&x| x == 0),
                    "hole at block {} is not zeros",
                    at / bs
                );
            }
        }
        off += n as u64;
    }
    Ok(())
}

ktest! {
    fn fs_file_of_many_extents() -> TestResult {
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            let mut buf = scratch(256 << 10)?;
            let buf = buf.as_mut_slice();
            let ino = ok(fs.create("/frag.bin"), "create")?;
            // Every even block, from the end backwards: each write lands in its own extent
            // (holes between them), well past version 1's 11 extents.
            let bs = BLOCK_SIZE as u64;
            let mut block = [0u8; BLOCK_SIZE];
            for b in (0..FRAG_BLOCKS).rev().filter(|b| b % 2 == 0) {
                fill_pattern(&mut block, FRAG_SEED, b * bs);
                check_eq!(ok(fs.write(ino, b * bs, &block), "write")?, BLOCK_SIZE);
            }
            let st = ok(fs.stat(ino), "stat")?;
            check_eq!((st.size, st.blocks), ((FRAG_BLOCKS - 1) * bs, FRAG_BLOCKS / 2));
            // The size ends at the last written block; write the last (odd) block to make the
            // file FRAG_BLOCKS long.
            fill_pattern(&mut block, FRAG_SEED, (FRAG_BLOCKS - 1) * bs);
            ok(fs.write(ino, (FRAG_BLOCKS - 1) * bs, &block), "write the last block")?;
            ok(fs.fsync(ino), "fsync")?;
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            // Check, then fill the holes and check again.
            let ino = ok(fs.open("/frag.bin"), "open")?;
            fill_pattern(&mut block, FRAG_SEED, (FRAG_BLOCKS - 1) * bs);
            for b in (1..FRAG_BLOCKS - 1).filter(|b| b % 2 == 1) {
                let mut one = [0u8; BLOCK_SIZE];
                check_eq!(ok(fs.read(ino, b * bs, &mut one), "read a hole")?, BLOCK_SIZE);
                check!(one.iter().all(|&x| x == 0), "hole {} is not zeros", b);
                fill_pattern(&mut one, FRAG_SEED, b * bs);
                ok(fs.write(ino, b * bs, &one), "fill a hole")?;
            }
            frag_is(&mut fs, ino, true, buf)?;
            check_eq!(ok(fs.stat(ino), "stat")?.blocks, FRAG_BLOCKS);
            // Shrink to the middle: the blocks past the end are freed at the commit.
            let free = ok(fs.statfs(), "statfs")?.free_blocks;
            ok(fs.truncate(ino, FRAG_BLOCKS / 2 * bs), "truncate")?;
            ok(fs.sync(), "sync")?;
            let after = ok(fs.statfs(), "statfs")?.free_blocks;
            // The tree's nodes change too (copied, merged): a few blocks either way.
            check!(after + 16 >= free + FRAG_BLOCKS / 2, "truncate freed {} blocks", after as i64 - free as i64);
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, _) = ok(inst.mount(true), "read-only remount")?;
            let ino = ok(fs.open("/frag.bin"), "open")?;
            check_eq!(ok(fs.stat(ino), "stat")?.size, FRAG_BLOCKS / 2 * bs);
            let n = ok(fs.read(ino, 0, buf), "read")?;
            check!(pattern_mismatch(&buf[..n], FRAG_SEED, 0).is_none(), "start of the file differs");
            unmount(fs)
        })
    }
}

ktest! {
    fn fs_rename_across_directories() -> TestResult {
        on_disk(|inst| {
            let mut fs = fresh(inst)?;
            for d in ["/x", "/x/sub", "/y"] {
                ok(fs.mkdir(d), "mkdir")?;
            }
            let f = ok(fs.create("/x/sub/file"), "create")?;
            ok(fs.write(f, 0, b"moved"), "write")?;
            // A file across directories, then a directory (with its subtree) across.
            ok(fs.rename("/x/sub/file", "/y/file2"), "rename a file across directories")?;
            check_eq!(ok(fs.open("/y/file2"), "open the moved file")?, f);
            ok(fs.rename("/x/sub", "/y/sub2"), "rename a directory across")?;
            check_eq!(ok(fs.stat_path("/x"), "stat /x")?.nlink, 2);
            check_eq!(ok(fs.stat_path("/y"), "stat /y")?.nlink, 3);
            ok(fs.rename("/y/file2", "/y/sub2/file"), "into the moved directory")?;
            // Refusals: below itself, a file over a directory, a directory over a file, a
            // directory over a non-empty one, a missing source.
            err_is(fs.rename("/y", "/y/sub2/y"), FsError::InvalidArgument, "a directory below itself")?;
            ok(fs.mkdir("/x/full"), "mkdir")?;
            ok(fs.create("/x/full/f"), "create")?;
            ok(fs.create("/x/plain"), "create")?;
            err_is(fs.rename("/x/plain", "/y/sub2"), FsError::IsDir, "a file over a directory")?;
            err_is(fs.rename("/y/sub2", "/x/plain"), FsError::NotDir, "a directory over a file")?;
            err_is(fs.rename("/y/sub2", "/x/full"), FsError::NotEmpty, "over a non-empty directory")?;
            err_is(fs.rename("/x/none", "/y/none"), FsError::NotFound, "a missing source")?;
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            names_are(&mut fs, "/x", &["full", "plain"])?;
            names_are(&mut fs, "/y", &["sub2"])?;
            names_are(&mut fs, "/y/sub2", &["file"])?;
            let f = ok(fs.open("/y/sub2/file"), "open")?;
            let mut out = [0u8; 8];
            let n = ok(fs.read(f, 0, &mut out), "read")?;
            check!(out[..n] == *b"moved", "moved file reads {:?}", &out[..n]);
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

/// Reads or writes `buf.len() / 4096` blocks of the disk from `block` directly, under the
/// filesystem.
fn raw(op: Op, block: u64, buf: &mut DmaBuf) -> TestResult {
    let disk = fs::root_device().ok_or(Outcome::Skip("no filesystem device"))?;
    let mut bio = block::IO_SET
        .alloc((), op, 1, Wait::Hook(block::wait))
        .map_err(|e| fail(format_args!("bio: {}", e)))?;
    bio.set_dev(disk);
    bio.set_sector(block * 8);
    // SAFETY: the segment contract: `buf` is DMA memory the caller lends for the call, and this
    // function waits for the bio (`submit_bio_wait`) before returning on every path.
    let seg = unsafe { BioVec::new(buf.phys(), buf.len() as u32) };
    bio.add_vec(seg)
        .map_err(|e| fail(format_args!("segment: {}", e)))?;
    submit_bio_wait(block::cpu_ctx(), bio, block::wait)
        .0
        .map_err(|e| fail(format_args!("raw {:?} of block {}: {}", op, block, e)))
}

const CSUM_SEED: u64 = 0xc5c5;

ktest! {
    fn fs_data_checksum_mismatch_is_a_typed_error() -> TestResult {
        on_disk(|inst| {
            ok(inst.mkfs_with(true), "mkfs with data checksums")?;
            let (mut fs, _) = ok(inst.mount(false), "mount")?;
            let mut data = [0u8; 8 * BLOCK_SIZE];
            fill_pattern(&mut data, CSUM_SEED, 0);
            let f = ok(fs.create("/sum.bin"), "create")?;
            ok(fs.write(f, 0, &data), "write")?;
            unmount(fs)?;
            // Find file block 3 on the disk (the pattern depends on the offset, so it is the
            // only block holding these bytes) among the first blocks a fresh filesystem uses,
            // and flip a byte in it.
            let mut win = scratch(64 * BLOCK_SIZE)?;
            let mut found = None;
            for w in 0..16u64 {
                raw(Op::Read, w * 64, &mut win)?;
                if let Some(k) = win
                    .as_slice()
                    .chunks(BLOCK_SIZE)
                    .position(|b| b == &data[3 * BLOCK_SIZE..4 * BLOCK_SIZE])
                {
                    found = Some(w * 64 + k as u64);
                    break;
                }
            }
            let at = found.ok_or_else(|| fail(format_args!("file block 3 not found on the disk")))?;
            let mut one = scratch(BLOCK_SIZE)?;
            raw(Op::Read, at, &mut one)?;
            one.as_mut_slice()[100] ^= 0x08;
            raw(Op::Write, at, &mut one)?;
            let (mut fs, _) = ok(inst.mount(false), "remount")?;
            let f = ok(fs.open("/sum.bin"), "open")?;
            let mut back = [0u8; 8 * BLOCK_SIZE];
            err_is(fs.read(f, 0, &mut back), FsError::DataChecksum { block: at }, "read over the flipped byte")?;
            err_is(
                fs.read_buffer(f, 3 * BLOCK_SIZE as u64, 10).map(|b| b.len()),
                FsError::DataChecksum { block: at },
                "zero-copy read of the block",
            )?;
            err_is(
                fs.write(f, 3 * BLOCK_SIZE as u64 + 5, b"patch"),
                FsError::DataChecksum { block: at },
                "a partial overwrite reads the block first",
            )?;
            // The other blocks read fine; a whole-block overwrite replaces the bad one.
            check_eq!(ok(fs.read(f, 0, &mut back[..3 * BLOCK_SIZE]), "read before")?, 3 * BLOCK_SIZE);
            check!(back[..3 * BLOCK_SIZE] == data[..3 * BLOCK_SIZE], "blocks 0-2 differ");
            ok(fs.write(f, 3 * BLOCK_SIZE as u64, &data[3 * BLOCK_SIZE..4 * BLOCK_SIZE]), "rewrite")?;
            check_eq!(ok(fs.read(f, 0, &mut back), "read after the rewrite")?, back.len());
            check!(back == data, "contents after the rewrite differ");
            unmount(fs)?;
            fsck_clean(inst)
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
        on_disk(|inst| {
            let (mut fs, how, info) = ok(inst.mount_kernel(), "mount (mkfs if blank)")?;
            check_eq!(how, fs::Mounted::Formatted);
            check!(!info.fell_back, "{:?}", info);
            ok(fs.mkdir("/reboot"), "mkdir")?;
            ok(fs.mkdir("/reboot/sub"), "mkdir")?;
            let mut buf = scratch(256 << 10)?;
            let buf = buf.as_mut_slice();
            for (path, seed, size) in REBOOT_FILES {
                let ino = ok(fs.create(path), path)?;
                write_pattern(&mut fs, ino, seed, size, buf)?;
                ok(fs.fsync(ino), "fsync")?;
            }
            let ino = ok(fs.create(REBOOT_UNSYNCED), "create")?;
            write_pattern(&mut fs, ino, 9, 64 << 10, buf)?;
            // No sync, no unmount: the machine goes down with the last fsync as the state.
            Ok(())
        })
    }
}

ktest! {
    #[only_with = "fs_phase=verify"]
    fn fs_reboot_phase_verify() -> TestResult {
        on_disk(|inst| {
            // A plain mount: a blank or corrupt disk here is a failure, not a reason to mkfs.
            let (mut fs, info) = ok(inst.mount(false), "mount")?;
            check!(!info.fell_back && !info.rolled_back, "mount after the reboot: {:?}", info);
            let mut buf = scratch(256 << 10)?;
            let buf = buf.as_mut_slice();
            for (path, seed, size) in REBOOT_FILES {
                verify_file(&mut fs, path, seed, size, buf)?;
            }
            err_is(fs.stat_path(REBOOT_UNSYNCED), FsError::NotFound, "unsynced file")?;
            names_are(&mut fs, "/reboot", &["big.bin", "small.txt", "sub"])?;
            names_are(&mut fs, "/reboot/sub", &["deep.bin"])?;
            unmount(fs)?;
            fsck_clean(inst)
        })
    }
}

/// The superblock in `slot`, read under the filesystem.
fn superblock(slot: u64, buf: &mut DmaBuf) -> Result<Superblock, Outcome> {
    raw(Op::Read, slot, buf)?;
    Superblock::decode(&buf.as_slice()[..BLOCK_SIZE], slot)
        .map_err(|e| fail(format_args!("slot {}: {}", slot, e)))
}

/// A filesystem whose last two commits are `g - 1` (`/a`) and `g` (`/a`, `/b`). Returns `g`
/// and the newest superblock.
fn two_generations(
    inst: &mut Instance<'_>,
    buf: &mut DmaBuf,
) -> Result<(u64, Superblock), Outcome> {
    let mut fs = fresh(inst)?;
    ok(fs.create("/a"), "create /a")?;
    ok(fs.sync(), "sync")?;
    let b = ok(fs.create("/b"), "create /b")?;
    ok(fs.write(b, 0, b"newest"), "write /b")?;
    ok(fs.sync(), "sync")?;
    // Not unmounted: dropped as a machine that goes down (with no change since, an unmount
    // would write nothing).
    let g = fs.generation();
    let new = superblock(Superblock::slot_of(g), buf)?;
    let old = superblock(Superblock::slot_of(g - 1), buf)?;
    check_eq!((old.generation, new.generation), (g - 1, g));
    check!(
        old.root != new.root,
        "the newest commit did not copy the root"
    );
    Ok((g, new))
}

ktest! {
    fn fs_corrupt_newest_tree_mounts_read_only() -> TestResult {
        on_disk(|inst| {
            let mut buf = scratch(BLOCK_SIZE)?;
            let (g, new) = two_generations(inst, &mut buf)?;
            // The newest tree's root (no older tree references it) no longer validates.
            raw(Op::Read, new.root, &mut buf)?;
            buf.as_mut_slice()[300] ^= 0x40;
            raw(Op::Write, new.root, &mut buf)?;
            let (problems, first) = fsck(inst)?;
            check!(
                problems >= 1 && matches!(first, Some(Problem::Superblock { block, .. }) if block == Superblock::slot_of(g)),
                "fsck of the rolled-back disk: {} problems, first {:?}",
                problems,
                first
            );
            // The kernel's mount announces it (logged) and stays read-only.
            let (mut fs, how, info) = ok(inst.mount_kernel(), "mount")?;
            check_eq!(how, fs::Mounted::Existing);
            check!(
                info.rolled_back && info.fell_back && info.generation == g - 1,
                "{:?}",
                info
            );
            err_is(fs.stat_path("/b"), FsError::NotFound, "the newest file")?;
            ok(fs.stat_path("/a"), "/a of the older commit")?;
            err_is(fs.create("/c"), FsError::ReadOnly, "create")?;
            err_is(fs.sync(), FsError::ReadOnly, "sync")?;
            unmount(fs)?;
            // Asking for read-write changes nothing: still the older tree, read-only.
            let (mut fs, info) = ok(inst.mount(false), "mount read-write")?;
            check!(info.rolled_back, "{:?}", info);
            err_is(fs.create("/c"), FsError::ReadOnly, "create")?;
            // The newest root is still there, untouched.
            raw(Op::Read, new.root, &mut buf)?;
            buf.as_mut_slice()[300] ^= 0x40;
            raw(Op::Write, new.root, &mut buf)?;
            fsck_clean(inst)?;
            let (mut fs, info) = ok(inst.mount(false), "mount after the repair")?;
            check!(!info.fell_back && info.generation == g, "{:?}", info);
            ok(fs.stat_path("/b"), "/b is back")?;
            unmount(fs)
        })
    }
}

ktest! {
    fn fs_torn_commit_record_falls_back_and_says_so() -> TestResult {
        on_disk(|inst| {
            let mut buf = scratch(BLOCK_SIZE)?;
            let (g, _) = two_generations(inst, &mut buf)?;
            let slot = Superblock::slot_of(g);
            // The commit record of generation g cut after its first sector.
            raw(Op::Read, slot, &mut buf)?;
            buf.as_mut_slice()[512..BLOCK_SIZE].fill(0);
            raw(Op::Write, slot, &mut buf)?;
            // A legal crash state: fsck finds nothing wrong.
            fsck_clean(inst)?;
            let (mut fs, _, info) = ok(inst.mount_kernel(), "mount")?;
            check!(
                info.fell_back && !info.rolled_back && info.generation == g - 1,
                "{:?}",
                info
            );
            err_is(fs.stat_path("/b"), FsError::NotFound, "the lost commit's file")?;
            ok(fs.create("/c"), "create /c")?;
            unmount(fs)?;
            fsck_clean(inst)?;
            let (mut fs, info) = ok(inst.mount(false), "remount")?;
            check!(!info.fell_back, "{:?}", info);
            ok(fs.stat_path("/c"), "/c")?;
            unmount(fs)
        })
    }
}

ktest! {
    #[only_with = "fs_ro=1"]
    fn fs_read_only_disk_mounts_read_only() -> TestResult {
        on_disk(|inst| {
            let disk = fs::root_device().ok_or(Outcome::Skip("no filesystem device"))?;
            check!(
                disk.read_only(),
                "the profile's disk is read-only, but the queue is not"
            );
            err_is(inst.mount(false).map(|_| ()), FsError::DeviceReadOnly, "read-write mount")?;
            let (mut fs, how, info) = ok(inst.mount_kernel(), "mount")?;
            check_eq!(how, fs::Mounted::Existing);
            check!(!info.fell_back, "{:?}", info);
            names_are(&mut fs, "/", &[])?;
            err_is(fs.create("/x"), FsError::ReadOnly, "create")?;
            unmount(fs)?;
            fsck_clean(inst)
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
fn mount_blank<'a>(
    inst: &'a mut Instance<'_>,
    dev: &'static dyn blk::BlockDevice,
) -> Result<KernelFs<'a>, Outcome> {
    let (mut fs, how, _) = ok(inst.mount_kernel(), "mount (mkfs on the blank device)")?;
    check_eq!(how, fs::Mounted::Formatted);
    check_eq!(
        ok(fs.statfs(), "statfs")?.blocks,
        fs::fs_blocks(dev.capacity() / 8)
    );
    Ok(fs)
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
/// both unmounted and fsck-clean; then both remounted together and every file read back; an
/// instance past [`fs::INSTANCES`] is refused with [`Setup::Busy`]. Each disk's queue must
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
    fs::with_fs_on(da.dev, |ia| -> TestResult {
        fs::with_fs_on(db.dev, |ib| -> TestResult {
            // The remaining instances are free; one more than that is refused.
            let more = more_instances(da.dev, fs::INSTANCES - 2);
            check!(
                matches!(more, Ok(Err(Setup::Busy))),
                "instances past the limit: {:?}",
                more
            );
            let mut fa = mount_blank(ia, da.dev)?;
            let mut fb = mount_blank(ib, db.dev)?;
            for k in 0..TWO_FS_FILES.len() {
                write_two_fs_file(&mut fa, 0, k, buf.as_mut_slice())?;
                write_two_fs_file(&mut fb, 1, k, buf.as_mut_slice())?;
            }
            unmount(fa)?;
            unmount(fb)?;
            fsck_clean(ia)?;
            fsck_clean(ib)
        })
        .map_err(setup)?
    })
    .map_err(setup)??;
    // Phase 2: both remounted together, every file read back, fsck-clean again.
    fs::with_fs_on(da.dev, |ia| -> TestResult {
        fs::with_fs_on(db.dev, |ib| -> TestResult {
            let (mut fa, how, _) = ok(ia.mount_kernel(), "remount a")?;
            check_eq!(how, fs::Mounted::Existing);
            let (mut fb, how, _) = ok(ib.mount_kernel(), "remount b")?;
            check_eq!(how, fs::Mounted::Existing);
            for (k, &(path, size)) in TWO_FS_FILES.iter().enumerate() {
                verify_file(&mut fa, path, two_fs_seed(0, k), size, buf.as_mut_slice())?;
                verify_file(&mut fb, path, two_fs_seed(1, k), size, buf.as_mut_slice())?;
            }
            unmount(fa)?;
            unmount(fb)?;
            fsck_clean(ia)?;
            fsck_clean(ib)
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

/// Takes `n` more instances over `dev` (none mounted), then asks for one more: `Ok(r)` is
/// that last request's outcome.
fn more_instances(
    dev: &'static dyn blk::BlockDevice,
    n: usize,
) -> Result<Result<(), Setup>, Setup> {
    if n == 0 {
        return Ok(fs::with_fs_on(dev, |_| ()));
    }
    fs::with_fs_on(dev, |_| more_instances(dev, n - 1))?
}

/// Files [`fs_large_sparse_disk`] writes: path, size.
const BIG_DISK_FILES: [(&str, u64); 3] = [
    ("/big/a.bin", 4 << 20),
    ("/big/sub/b.bin", 100_001),
    ("/big/sub/c.bin", 1),
];

/// Writes [`BIG_DISK_FILES`] and 200 empty files, remounts, reads them back and runs fsck.
fn fill_and_check(inst: &mut Instance<'_>, buf: &mut [u8]) -> TestResult {
    let (mut fs, _) = ok(inst.mount(false), "mount")?;
    ok(fs.mkdir("/big"), "mkdir")?;
    ok(fs.mkdir("/big/sub"), "mkdir")?;
    for (k, &(path, size)) in BIG_DISK_FILES.iter().enumerate() {
        let ino = ok(fs.create(path), path)?;
        write_pattern(&mut fs, ino, 0xb19 + k as u64, size, buf)?;
    }
    let mut name: heapless::String<32> = heapless::String::new();
    for i in 0..200 {
        name.clear();
        let _ = core::fmt::Write::write_fmt(&mut name, format_args!("/big/e{i}"));
        ok(fs.create(&name), "create")?;
    }
    unmount(fs)?;
    let (mut fs, _) = ok(inst.mount(false), "remount")?;
    for (k, &(path, size)) in BIG_DISK_FILES.iter().enumerate() {
        verify_file(&mut fs, path, 0xb19 + k as u64, size, buf)?;
    }
    check_eq!(ok(fs.stat_path("/big"), "stat")?.nlink, 3);
    unmount(fs)?;
    fsck_clean(inst)
}

ktest! {
    #[only_with = "fs_big=1"]
    fn fs_large_sparse_disk() -> TestResult {
        on_disk(|inst| {
            let disk = fs::root_device().ok_or(Outcome::Skip("no filesystem device"))?;
            let blocks = disk.capacity() / 8;
            check!(blocks >= 1 << 28, "the profile's disk is {} blocks, not 1 TiB", blocks);
            let mut buf = scratch(1 << 20)?;
            let buf = buf.as_mut_slice();
            // The filesystem the host made, as it is: the whole disk.
            let (mut fs, how, info) = ok(inst.mount_kernel(), "mount the host's filesystem")?;
            check_eq!(how, fs::Mounted::Existing);
            check!(!info.fell_back, "{:?}", info);
            let s = ok(fs.statfs(), "statfs")?;
            check_eq!(s.blocks, fs::fs_blocks(blocks));
            // Used: the two bitmap slots of every group, the superblocks, the root.
            let groups = s.blocks.div_ceil(u64::from(fs::GROUP_BLOCKS));
            check!(
                s.free_blocks + 2 * groups + 64 > s.blocks && s.free_blocks + 2 * groups <= s.blocks,
                "{} of {} blocks free on an empty filesystem of {} groups",
                s.free_blocks,
                s.blocks,
                groups
            );
            unmount(fs)?;
            fill_and_check(inst, buf)?;
            // The kernel's own mkfs over the whole terabyte, then the same.
            ok(inst.mkfs(), "mkfs")?;
            fill_and_check(inst, buf)
        })
    }
}
