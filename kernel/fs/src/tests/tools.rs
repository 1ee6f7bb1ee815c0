//! The host tools on an image file.

use crate::host;

#[test]
fn mkfs_put_ls_get_fsck_on_an_image_file() {
    let dir = std::env::temp_dir().join(format!("tinyfs-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("fs.img");
    let src = dir.join("in.bin");
    let dst = dir.join("out.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    host::mkfs(&img, 8 << 20, 4).unwrap();
    assert!(host::fsck(&img).unwrap().is_clean());
    host::put(&img, &src, "/hello.bin").unwrap();
    host::put(&img, &src, "/hello.bin").unwrap(); // replace
    let ls = host::ls(&img, "/").unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].name, "hello.bin");
    assert_eq!(ls[0].size, data.len() as u64);
    host::get(&img, "/hello.bin", &dst).unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    let r = host::fsck(&img).unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    // A flipped bit in the newest superblock is caught by fsck's mount of the tree or falls back.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[4096 * 2 + 100] ^= 0x10; // block 2: the first inode-table block of mkfs
    std::fs::write(&img, &bytes).unwrap();
    let _ = host::fsck(&img).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
