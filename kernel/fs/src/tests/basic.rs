use crate::host::MemDisk;
use crate::v1::*;

type TestFs<'b, D> = Fs<'b, D, 4, 64>;

#[test]
fn mkfs_mount_create_write_read() {
    let mut disk = MemDisk::new(1024);
    let mut buf = vec![0u8; 64 * 1024];
    {
        let mut fs = TestFs::new(&mut disk, &mut buf);
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks: 2,
        })
        .unwrap();
        fs.mount(false).unwrap();
        let f = fs.create("/a").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs.write(f, 100, &data).unwrap();
        let mut out = vec![0u8; data.len() + 200];
        let n = fs.read(f, 0, &mut out).unwrap();
        assert_eq!(n, data.len() + 100);
        assert_eq!(&out[..100], &[0u8; 100]);
        assert_eq!(&out[100..n], &data[..]);
        fs.mkdir("/d").unwrap();
        fs.rename("/a", "/d/b").unwrap();
        fs.unmount().unwrap();
    }
    let mut fs = TestFs::new(&mut disk, &mut buf);
    fs.mount(true).unwrap();
    let f = fs.open("/d/b").unwrap();
    assert_eq!(fs.stat(f).unwrap().size, 300_100);
    assert_eq!(fs.create("/x"), Err(FsError::ReadOnly));
}

#[test]
fn fragmenting_overwrites_are_compacted() {
    let mut disk = MemDisk::new(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = TestFs::new(&mut disk, &mut buf);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 1,
    })
    .unwrap();
    fs.mount(false).unwrap();
    let f = fs.create("/f").unwrap();
    let other = fs.create("/g").unwrap();
    let mut model = vec![0u8; 40 * 4096];
    fs.write(f, 0, &model).unwrap();
    for i in 0..40u64 {
        // Interleave another file's allocations so nothing merges back.
        fs.write(other, i * 4096, &[1u8; 4096]).unwrap();
        let off = (i * 7 % 40) * 4096 + 10;
        let data = [i as u8 + 1; 100];
        fs.write(f, off, &data).unwrap();
        model[off as usize..off as usize + 100].copy_from_slice(&data);
        assert!(fs.stat(f).unwrap().blocks <= 40);
    }
    let mut out = vec![0u8; model.len()];
    fs.read(f, 0, &mut out).unwrap();
    assert!(out == model);
    fs.truncate(f, 5000).unwrap();
    fs.truncate(f, 9000).unwrap();
    let mut out = vec![0xffu8; 9000];
    fs.read(f, 0, &mut out).unwrap();
    assert_eq!(&out[..5000], &model[..5000]);
    assert!(out[5000..].iter().all(|&b| b == 0));
    fs.unmount().unwrap();
    assert_eq!(fs.fsck(&mut |p| panic!("{p:?}")).unwrap().problems, 0);
}

#[test]
fn name_rules_and_errors() {
    let mut disk = MemDisk::new(256);
    let mut buf = vec![0u8; 16 * 1024];
    let mut fs = TestFs::new(&mut disk, &mut buf);
    fs.mkfs(MkfsOptions {
        blocks: None,
        inode_blocks: 1,
    })
    .unwrap();
    fs.mount(false).unwrap();
    assert_eq!(fs.create(&"x".repeat(57)), Err(FsError::NameTooLong));
    assert!(fs.create(&"x".repeat(56)).is_ok());
    assert_eq!(fs.create("/a/../b"), Err(FsError::InvalidName));
    assert_eq!(fs.create("/."), Err(FsError::InvalidName));
    assert_eq!(fs.create("/"), Err(FsError::InvalidName));
    assert_eq!(fs.create("/a\0b"), Err(FsError::InvalidName));
    assert_eq!(fs.create("/nodir/x"), Err(FsError::NotFound));
    fs.mkdir("/d").unwrap();
    fs.create("/d/f").unwrap();
    assert_eq!(fs.rmdir("/d"), Err(FsError::NotEmpty));
    assert_eq!(fs.unlink("/d"), Err(FsError::IsDir));
    assert_eq!(fs.rename("/d", "/d/f2"), Err(FsError::InvalidArgument));
    for i in 0..20 {
        let r = fs.create(&format!("/n{i}"));
        if i >= 12 {
            assert_eq!(r, Err(FsError::NoInodes));
        }
    }
}
