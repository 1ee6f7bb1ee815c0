//! `mode=powercut seed=S`: the guest half of the power-cut test (`cargo xtask powercut`).
//!
//! Mounts the tinyfs filesystem (format version 2) the host made on the first disk (virtio-blk, NVMe or AHCI, in
//! that order), then runs a seeded workload on up to [`FILES`] files under `/pc` until QEMU is
//! killed: whole-file writes of varied sizes, appends, truncations, overwrites of a range with
//! other contents, renames over other files and unlinks, each followed by `fsync` (or `sync`
//! for renames and unlinks, which change only the directory). Before each operation it prints
//! what it is about to do, and after the `fsync` returned, an acknowledgement:
//!
//! ```text
//! PC start seed=7 disk=virtio
//! PC ready
//! PC op 1 write path=/pc/f3 seed=0x1234 size=70001
//! PC ack 1 path=/pc/f3 size=70001 sum=0x9f2c...
//! PC op 2 patch path=/pc/f3 off=512 len=4096 seed=0x77
//! PC op 3 rename from=/pc/f3 to=/pc/f1
//! PC op 4 unlink path=/pc/f1
//! PC ack 4 path=/pc/f1 gone
//! ```
//!
//! File contents are derivable from the printed words: byte `p` of a file is byte `p` of the
//! pattern of its `seed` ([`crate::fs::fill_pattern`]), except in the range a `patch` rewrote,
//! which holds the patch seed's pattern at the same positions. `sum` is a 64-bit FNV-1a hash of
//! the whole contents, computed from this model (not read back), which the host compares with
//! its own reconstruction. The host kills QEMU at a seeded instant and checks the image.

use blk::BlockDevice;
use hal::DmaBuf;
use heapless::String;
use tinyfs::{BLOCK_SIZE, FsError, Ino};

use crate::block::{ahci, nvme, virtio};
use crate::fs::{KernelFs, fill_pattern, with_fs_on};

/// Files the workload keeps (`/pc/f0` ..).
pub const FILES: usize = 8;
/// Operations before the workload stops by itself (the host normally kills it long before).
const MAX_OPS: u32 = 5000;
/// Bytes written per `write` call.
const CHUNK: usize = 64 * 1024;

/// What a file holds: the pattern of `seed` over `size` bytes, with `patch` = `(offset, len,
/// seed)` rewritten from another seed's pattern (clipped to `size`).
#[derive(Clone, Copy)]
struct FileState {
    seed: u64,
    size: u64,
    patch: Option<(u64, u64, u64)>,
}

impl FileState {
    /// Fills `buf` with the contents from file offset `off`.
    fn fill(&self, buf: &mut [u8], off: u64) {
        fill_pattern(buf, self.seed, off);
        if let Some((p_off, p_len, p_seed)) = self.patch {
            let (lo, hi) = (off.max(p_off), (off + buf.len() as u64).min(p_off + p_len));
            if lo < hi {
                let part = &mut buf[(lo - off) as usize..(hi - off) as usize];
                fill_pattern(part, p_seed, lo);
            }
        }
    }

    /// 64-bit FNV-1a over the contents.
    fn sum(&self, scratch: &mut [u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut off = 0;
        while off < self.size {
            let n = (self.size - off).min(scratch.len() as u64) as usize;
            self.fill(&mut scratch[..n], off);
            for &b in &scratch[..n] {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
            off += n as u64;
        }
        h
    }
}

/// splitmix64: the workload's random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A file size: often small or block-sized, sometimes up to 1 MiB.
    fn size(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 | 2 => 1 + self.below(4096),
            3 => BLOCK_SIZE as u64 * (1 + self.below(16)),
            4..=6 => 1 + self.below(256 * 1024),
            _ => 1 + self.below(1 << 20),
        }
    }
}

fn path(i: usize) -> String<16> {
    let mut p = String::new();
    let _ = p.push_str("/pc/f");
    let _ = p.push(char::from(b'0' + i as u8));
    p
}

/// The first disk: virtio-blk, NVMe or AHCI.
fn first_disk() -> Option<(&'static dyn BlockDevice, &'static str)> {
    if let Some(d) = virtio::disk() {
        return Some((d.queue, "virtio"));
    }
    if let Some(d) = nvme::disk() {
        return Some((d.queue, "nvme"));
    }
    ahci::disk().map(|d| (d.queue as &'static dyn BlockDevice, "ahci"))
}

/// Runs the workload; `false` when anything failed (the host then fails the cut). Returns only
/// after [`MAX_OPS`] operations or on an error.
pub fn run(cmdline: &str) -> bool {
    let seed = crate::boot::cmdline_arg(cmdline, "seed")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1);
    let Some((dev, name)) = first_disk() else {
        defmt::error!("PC error: no disk");
        return false;
    };
    defmt::println!("PC start seed={=u64} disk={=str}", seed, name);
    let Ok(mut scratch) = DmaBuf::alloc(CHUNK, BLOCK_SIZE) else {
        defmt::error!("PC error: no memory for the buffers");
        return false;
    };
    let r = with_fs_on(dev, |inst| {
        let (mut fs, _) = inst.mount(false).map_err(|e| (0, e))?;
        workload(&mut fs, seed, scratch.as_mut_slice())?;
        defmt::println!("PC done");
        fs.unmount().map(|_| ()).map_err(|e| (MAX_OPS, e))
    });
    match r {
        Ok(Ok(())) => true,
        Ok(Err((op, e))) => {
            defmt::error!("PC error op {=u32}: {}", op, defmt::Display2Format(&e));
            false
        }
        Err(e) => {
            defmt::error!(
                "PC error: no filesystem instance: {}",
                defmt::Debug2Format(&e)
            );
            false
        }
    }
}

/// Writes `st`'s contents over `[from, st.size)` of `ino`.
fn write_range(
    fs: &mut KernelFs<'_>,
    ino: Ino,
    st: &FileState,
    from: u64,
    to: u64,
    buf: &mut [u8],
) -> Result<(), FsError> {
    let mut off = from;
    while off < to {
        let n = (to - off).min(buf.len() as u64) as usize;
        st.fill(&mut buf[..n], off);
        fs.write(ino, off, &buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn workload(fs: &mut KernelFs<'_>, seed: u64, buf: &mut [u8]) -> Result<(), (u32, FsError)> {
    match fs.mkdir("/pc") {
        Ok(_) | Err(FsError::Exists) => {}
        Err(e) => return Err((0, e)),
    }
    fs.sync().map_err(|e| (0, e))?;
    // Files left by an earlier boot on the same image are taken as they are: the host starts
    // every cut on a fresh image, so there are none.
    let mut files: [Option<FileState>; FILES] = [None; FILES];
    defmt::println!("PC ready");
    let mut rng = Rng(seed ^ 0x7063_7574);
    for op in 1..=MAX_OPS {
        one_op(fs, &mut rng, &mut files, op, buf).map_err(|e| (op, e))?;
    }
    Ok(())
}

/// Picks and runs operation `op`, printing it first and its acknowledgement after.
fn one_op(
    fs: &mut KernelFs<'_>,
    rng: &mut Rng,
    files: &mut [Option<FileState>; FILES],
    op: u32,
    buf: &mut [u8],
) -> Result<(), FsError> {
    let i = rng.below(FILES as u64) as usize;
    let p = path(i);
    let kind = rng.below(10);
    match (kind, files[i]) {
        // Append to the file's own pattern.
        (0 | 1, Some(mut st)) => {
            let old = st.size;
            st.size += 1 + rng.below(64 * 1024);
            defmt::println!(
                "PC op {=u32} append path={=str} size={=u64}",
                op,
                p.as_str(),
                st.size
            );
            let ino = fs.open(&p)?;
            write_range(fs, ino, &st, old, st.size, buf)?;
            fs.fsync(ino)?;
            files[i] = Some(st);
            ack(op, &p, &st, buf);
        }
        // Shrink.
        (2, Some(mut st)) if st.size > 0 => {
            st.size = rng.below(st.size);
            defmt::println!(
                "PC op {=u32} truncate path={=str} size={=u64}",
                op,
                p.as_str(),
                st.size
            );
            let ino = fs.open(&p)?;
            fs.truncate(ino, st.size)?;
            fs.fsync(ino)?;
            files[i] = Some(st);
            ack(op, &p, &st, buf);
        }
        // Overwrite a range with another seed's pattern (once per file version).
        (3 | 4, Some(mut st)) if st.size > 0 && st.patch.is_none() => {
            let off = rng.below(st.size);
            let len = 1 + rng.below((st.size - off).min(128 * 1024));
            let pseed = rng.next();
            st.patch = Some((off, len, pseed));
            defmt::println!(
                "PC op {=u32} patch path={=str} off={=u64} len={=u64} seed={=u64:#x}",
                op,
                p.as_str(),
                off,
                len,
                pseed
            );
            let ino = fs.open(&p)?;
            write_range(fs, ino, &st, off, off + len, buf)?;
            fs.fsync(ino)?;
            files[i] = Some(st);
            ack(op, &p, &st, buf);
        }
        // Rename over another slot (which may hold a file: it is replaced).
        (5, Some(st)) => {
            let j = (i + 1 + rng.below(FILES as u64 - 1) as usize) % FILES;
            let to = path(j);
            defmt::println!(
                "PC op {=u32} rename from={=str} to={=str}",
                op,
                p.as_str(),
                to.as_str()
            );
            fs.rename(&p, &to)?;
            fs.sync()?;
            files[j] = Some(st);
            files[i] = None;
            ack(op, &to, &st, buf);
        }
        (6, Some(_)) => {
            defmt::println!("PC op {=u32} unlink path={=str}", op, p.as_str());
            fs.unlink(&p)?;
            fs.sync()?;
            files[i] = None;
            defmt::println!("PC ack {=u32} path={=str} gone", op, p.as_str());
        }
        // Write the whole file anew (creating it if needed).
        _ => {
            let st = FileState {
                seed: rng.next(),
                size: rng.size(),
                patch: None,
            };
            defmt::println!(
                "PC op {=u32} write path={=str} seed={=u64:#x} size={=u64}",
                op,
                p.as_str(),
                st.seed,
                st.size
            );
            let ino = match fs.open(&p) {
                Ok(ino) => {
                    fs.truncate(ino, 0)?;
                    ino
                }
                Err(FsError::NotFound) => fs.create(&p)?,
                Err(e) => return Err(e),
            };
            write_range(fs, ino, &st, 0, st.size, buf)?;
            fs.fsync(ino)?;
            files[i] = Some(st);
            ack(op, &p, &st, buf);
        }
    }
    Ok(())
}

/// Prints the acknowledgement of `op`: `path` now holds `st`, durably.
fn ack(op: u32, path: &str, st: &FileState, buf: &mut [u8]) {
    defmt::println!(
        "PC ack {=u32} path={=str} size={=u64} sum={=u64:#x}",
        op,
        path,
        st.size,
        st.sum(buf)
    );
}
