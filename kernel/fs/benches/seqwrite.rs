//! Sequential write on a RAM device, version 1 against version 2 in the same run: the kernel
//! bench's `fs-seqwrite` jobs (a new 32 MiB file written in 128 KiB pieces, zero-copy with
//! `write_buffer` + `commit` or copying with `write`, then one `fsync`) on the host, with the
//! kernel instance's sizes (a 1 MiB data buffer, 64 node frames, 8 cached groups of the
//! largest size).
//!
//! Prints, per run, the blocks and I/Os written, the flushes and the wall time per 128 KiB
//! piece; the file is read back and checked after the timed part. Instructions per piece come from callgrind, counting only the
//! pieces' loop and the `fsync` (`ops_*`) and subtracting the RAM device's copies
//! (`ram_read` / `ram_write`, which stand for the block driver) and the zero-copy caller's
//! filling of its regions (`fill`; under callgrind a `rep movsb` copy counts one instruction
//! per byte, so the copying runs' figures are dominated by their copy):
//!
//! ```text
//! cargo bench -p tinyfs --bench seqwrite --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out --toggle-collect='*ops_*' \
//!     target/release/deps/seqwrite-HASH v1 v1copy v2 v2copy
//! callgrind_annotate --inclusive=yes cg.out | grep -E 'ops_|ram_|fill'
//! ```
//!
//! Arguments pick the runs (`v1`, `v1copy`, `v2`, `v2copy`); none runs all four. The zero-copy
//! runs fill a lent region only the first time its address comes up, as the kernel bench does
//! (the data buffer holds 8 such regions).

mod ram;

use ram::Ram;

use std::time::Instant;

use tinyfs::BLOCK_SIZE;
use tinyfs::v1::MkfsOptions;
use tinyfs::v2::volume::volume_frames;

/// The kernel bench's disk: 256 MiB.
const DISK_BLOCKS: u64 = 65_536;
/// Version 1's kernel instance: 64 MiB.
const V1_BLOCKS: u64 = 16_384;
const FILE_BYTES: usize = 32 << 20;
const PIECE: usize = 128 << 10;
const PIECES: usize = FILE_BYTES / PIECE;
/// Version 2's node frames, cached groups, data-buffer blocks and group size (the kernel's).
const N: usize = 64;
const G: usize = 8;
const DATA_BLOCKS: usize = 256;
const GROUP_BLOCKS: u32 = tinyfs::v2::superblock::GROUP_BLOCKS_MAX;

/// The caller producing its data into a lent region (the first time it comes up).
#[inline(never)]
fn fill(buf: &mut [u8], src: &[u8]) {
    buf.copy_from_slice(src);
}

/// Addresses of lent regions already holding the data.
#[derive(Default)]
struct Filled(Vec<usize>);

impl Filled {
    fn first_time(&mut self, addr: usize) -> bool {
        if self.0.contains(&addr) {
            return false;
        }
        self.0.push(addr);
        true
    }
}

fn report(name: &str, ram: &Ram, w0: (u64, u64, u64), ns: u128) {
    println!(
        "{name:>7}: {PIECES} x 128 KiB + fsync: {} blocks in {} writes, {} flushes, {:.1} us per piece (host wall clock)",
        ram.writes - w0.0,
        ram.ios - w0.1,
        ram.flushes - w0.2,
        ns as f64 / PIECES as f64 / 1000.0
    );
}

/// `$name(fs, ino, src, copy)`: the timed part on filesystem type `$fs` with inode type
/// `$ino` (both versions have the same write API).
macro_rules! ops {
    ($name:ident, $fs:ty, $ino:ty) => {
        #[inline(never)]
        fn $name(fs: &mut $fs, ino: $ino, src: &[u8], copy: bool) {
            let mut filled = Filled::default();
            for i in 0..PIECES {
                let off = (i * PIECE) as u64;
                if copy {
                    assert_eq!(fs.write(ino, off, src).unwrap(), PIECE);
                    continue;
                }
                let mut done = 0;
                while done < PIECE {
                    let mut w = fs
                        .write_buffer(ino, off + done as u64, PIECE - done)
                        .unwrap();
                    let n = w.len();
                    let buf = w.buf();
                    if done != 0 || n != PIECE || filled.first_time(buf.as_ptr() as usize) {
                        fill(buf, &src[done..done + n]);
                    }
                    w.commit().unwrap();
                    done += n;
                }
            }
            fs.fsync(ino).unwrap();
        }
    };
}

type V1<'b> = tinyfs::v1::Fs<'b, &'b mut Ram, 8, 256>;
ops!(ops_v1, V1<'_>, tinyfs::v1::Ino);
type V2<'b> = tinyfs::v2::Fs<'b, &'b mut Ram, N, G>;
ops!(ops_v2, V2<'_>, tinyfs::v2::Ino);

fn v1(src: &[u8], copy: bool) {
    let mut ram = Ram::new(DISK_BLOCKS);
    let mut buf = vec![0u8; 1 << 20];
    let (w0, ns);
    {
        let mut fs = V1::new(&mut ram, &mut buf);
        fs.mkfs(MkfsOptions {
            blocks: Some(V1_BLOCKS),
            inode_blocks: 8,
        })
        .unwrap();
        fs.mount(false).unwrap();
        let ino = fs.create("/seq.bin").unwrap();
        let dev = fs.device();
        w0 = (dev.writes, dev.ios, dev.flushes);
        let t = Instant::now();
        ops_v1(&mut fs, ino, src, copy);
        ns = t.elapsed().as_nanos();
        check_v1(&mut fs, ino, src);
    }
    report(if copy { "v1copy" } else { "v1" }, &ram, w0, ns);
}

fn check_v1(fs: &mut V1<'_>, ino: tinyfs::v1::Ino, src: &[u8]) {
    let mut back = vec![0u8; PIECE];
    for i in 0..PIECES {
        assert_eq!(fs.read(ino, (i * PIECE) as u64, &mut back).unwrap(), PIECE);
        assert!(back == src, "piece {i} reads back different");
    }
}

fn v2(src: &[u8], copy: bool) {
    let mut ram = Ram::new(DISK_BLOCKS);
    let mut mem = vec![0u8; (volume_frames(N, G) + DATA_BLOCKS - 1) * BLOCK_SIZE];
    V2::mkfs(&mut &mut ram, &mut mem, GROUP_BLOCKS, 0).unwrap();
    let (w0, ns);
    {
        let (mut fs, _) = V2::mount(&mut ram, &mut mem, false).unwrap();
        let ino = fs.create("/seq.bin").unwrap();
        let dev = fs.device();
        w0 = (dev.writes, dev.ios, dev.flushes);
        let t = Instant::now();
        ops_v2(&mut fs, ino, src, copy);
        ns = t.elapsed().as_nanos();
        let mut back = vec![0u8; PIECE];
        for i in 0..PIECES {
            assert_eq!(fs.read(ino, (i * PIECE) as u64, &mut back).unwrap(), PIECE);
            assert!(back == src, "piece {i} reads back different");
        }
    }
    report(if copy { "v2copy" } else { "v2" }, &ram, w0, ns);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let src: Vec<u8> = (0..PIECE).map(|i| (i * 7 + 3) as u8).collect();
    if want("v1") {
        v1(&src, false);
    }
    if want("v1copy") {
        v1(&src, true);
    }
    if want("v2") {
        v2(&src, false);
    }
    if want("v2copy") {
        v2(&src, true);
    }
}
