//! Mounts arbitrary bytes as an image (read-only and read-write), walks whatever mounts, runs a
//! few changes and fsck. Any panic, hang or out-of-bounds access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyfs::host::MemDisk;
use tinyfs::v1::{Fs, Ino, Kind};

type FuzzFs<'b, D> = Fs<'b, D, 8, 64>;

fuzz_target!(|data: &[u8]| {
    // Round the input up to whole blocks (at most 256 blocks).
    let blocks = data.len().div_ceil(4096).min(256);
    let mut img = vec![0u8; blocks * 4096];
    let n = img.len().min(data.len());
    img[..n].copy_from_slice(&data[..n]);
    for ro in [true, false] {
        let mut disk = MemDisk { data: img.clone() };
        let mut buf = vec![0u8; 16 * 1024];
        let mut fs = FuzzFs::new(&mut disk, &mut buf);
        if fs.mount(ro).is_err() {
            continue;
        }
        let mut stack = vec![Ino::ROOT];
        let mut out = vec![0u8; 32 * 1024];
        while let Some(d) = stack.pop() {
            let mut cookie = 0;
            while let Ok(Some((e, next))) = fs.readdir(d, cookie) {
                cookie = next;
                if e.kind == Kind::Dir {
                    stack.push(e.ino);
                } else {
                    let _ = fs.read(e.ino, 0, &mut out);
                }
            }
        }
        if !ro {
            if let Ok(f) = fs.create("/new") {
                let _ = fs.write(f, 1000, &[1u8; 5000]);
            }
            let _ = fs.sync();
        }
    }
    let mut disk = MemDisk { data: img };
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = FuzzFs::new(&mut disk, &mut buf);
    let _ = fs.fsck(&mut |_| {});
});
