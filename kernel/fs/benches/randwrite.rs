//! Random 4 KiB overwrite + `fsync` on a RAM device, version 1 against version 2 in the same
//! run: the kernel bench's `fs-randwrite` job (a 4 MiB file written in 128 KiB pieces and
//! fsynced, then 512 overwrites at random block offsets, each followed by `fsync`) on the host.
//!
//! Prints, per filesystem, the blocks written, the flushes (`PREFLUSH` or `FUA` writes) and
//! the wall time per operation. Instructions per operation come from callgrind, counting only
//! the operations' loop (`ops_v1` / `ops_v2`) and subtracting the RAM device's copies
//! (`ram_read` / `ram_write`, which stand for the block driver):
//!
//! ```text
//! cargo bench -p tinyfs --bench randwrite --no-run
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     --toggle-collect='*ops_v1*' --toggle-collect='*ops_v2*' target/release/deps/randwrite-HASH v1 v2 v2csum
//! callgrind_annotate --inclusive=yes cg.out | grep -E 'ops_v|ram_'
//! ```
//!
//! Arguments pick the runs (`v1`, `v2`, `v2csum`: version 2 with data checksums); none runs
//! all three.

mod ram;

use ram::Ram;

use std::time::Instant;

use tinyfs::BLOCK_SIZE;
use tinyfs::v1::MkfsOptions;
use tinyfs::v2::volume::volume_frames;

const DISK_BLOCKS: u64 = 16_384;
const FILE_BYTES: usize = 4 << 20;
const PIECE: usize = 128 << 10;
const OPS: usize = 512;
/// Version 2's node frames, cached groups and data-buffer blocks.
const N: usize = 64;
const G: usize = 8;
const DATA_BLOCKS: usize = 32;

fn offsets() -> Vec<u64> {
    let blocks = (FILE_BYTES / 4096) as u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    (0..OPS)
        .map(|_| {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % blocks * 4096
        })
        .collect()
}

fn report(name: &str, ram: &Ram, w0: u64, f0: u64, ns: u128) {
    println!(
        "{name:>7}: {OPS} random 4 KiB overwrite + fsync: {:.2} blocks written/op, {:.2} flushes/op, {:.1} us/op (host wall clock)",
        (ram.writes - w0) as f64 / OPS as f64,
        (ram.flushes - f0) as f64 / OPS as f64,
        ns as f64 / OPS as f64 / 1000.0
    );
}

#[inline(never)]
fn ops_v1(
    fs: &mut tinyfs::v1::Fs<'_, &mut Ram, 8, 256>,
    ino: tinyfs::v1::Ino,
    offs: &[u64],
    src: &[u8],
) {
    for &o in offs {
        fs.write(ino, o, &src[..4096]).unwrap();
        fs.fsync(ino).unwrap();
    }
}

fn v1(src: &[u8], offs: &[u64]) {
    let mut ram = Ram::new(DISK_BLOCKS);
    let mut buf = vec![0u8; 1 << 20];
    let (w0, f0, ns);
    {
        let mut fs = tinyfs::v1::Fs::<&mut Ram, 8, 256>::new(&mut ram, &mut buf);
        fs.mkfs(MkfsOptions::default()).unwrap();
        fs.mount(false).unwrap();
        let ino = fs.create("/rand.bin").unwrap();
        for off in (0..FILE_BYTES).step_by(PIECE) {
            fs.write(ino, off as u64, &src[..PIECE]).unwrap();
        }
        fs.fsync(ino).unwrap();
        let dev = fs.device();
        (w0, f0) = (dev.writes, dev.flushes);
        let t = Instant::now();
        ops_v1(&mut fs, ino, offs, src);
        ns = t.elapsed().as_nanos();
    }
    report("v1", &ram, w0, f0, ns);
}

type V2<'b> = tinyfs::v2::Fs<'b, &'b mut Ram, N, G>;

#[inline(never)]
fn ops_v2(fs: &mut V2<'_>, ino: tinyfs::v2::Ino, offs: &[u64], src: &[u8]) {
    for &o in offs {
        fs.write(ino, o, &src[..4096]).unwrap();
        fs.fsync(ino).unwrap();
    }
}

fn v2(src: &[u8], offs: &[u64], csums: bool) {
    let mut ram = Ram::new(DISK_BLOCKS);
    let mut mem = vec![0u8; (volume_frames(N, G) + DATA_BLOCKS - 1) * BLOCK_SIZE];
    V2::mkfs_with(&mut &mut ram, &mut mem, 8192, 0, csums).unwrap();
    let (w0, f0, ns, logged, committed);
    {
        let (mut fs, _) = V2::mount(&mut ram, &mut mem, false).unwrap();
        let ino = fs.create("/rand.bin").unwrap();
        for off in (0..FILE_BYTES).step_by(PIECE) {
            fs.write(ino, off as u64, &src[..PIECE]).unwrap();
        }
        fs.fsync(ino).unwrap();
        let (l0, c0) = fs.volume().fsync_stats();
        let dev = fs.device();
        (w0, f0) = (dev.writes, dev.flushes);
        let t = Instant::now();
        ops_v2(&mut fs, ino, offs, src);
        ns = t.elapsed().as_nanos();
        let (l1, c1) = fs.volume().fsync_stats();
        (logged, committed) = (l1 - l0, c1 - c0);
    }
    report(if csums { "v2csum" } else { "v2" }, &ram, w0, f0, ns);
    println!("         {logged} fsyncs by a log block, {committed} by a commit");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let src: Vec<u8> = (0..PIECE).map(|i| (i * 7 + 3) as u8).collect();
    let offs = offsets();
    if want("v1") {
        v1(&src, &offs);
    }
    if want("v2") {
        v2(&src, &offs, false);
    }
    if want("v2csum") {
        v2(&src, &offs, true);
    }
}
