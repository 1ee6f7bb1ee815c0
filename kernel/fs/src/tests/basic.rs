use crate::host::MemDisk;
use crate::*;

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
