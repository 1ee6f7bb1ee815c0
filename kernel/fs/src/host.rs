//! Host side (feature `std`): in-memory and image-file devices ([`MemDisk`], [`FileDisk`]:
//! any version), and format version 1's image tools (`mkfs`, `fsck`, `ls`, `put`, `get`),
//! kept for version 1's tests (`cargo xtask`'s image tools run format version 2).

extern crate std;

use std::boxed::Box;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::error::FsError;
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, IoError, IoErrorKind, Run, WriteFlags, check_range};
use crate::v1::{Fs, FsckStatus, Ino, Kind, MkfsOptions, Problem};

/// Inode-table blocks of a host instance (the format maximum).
pub const HOST_IB: usize = 64;
/// Bitmap words of a host instance: filesystems up to 4 GiB.
pub const HOST_BW: usize = 16384;
/// I/O buffer of the host tools.
pub const HOST_BUF: usize = 1 << 20;

/// A host instance over any device.
pub type HostFs<'b, D> = Fs<'b, D, HOST_IB, HOST_BW>;

/// A RAM device.
#[derive(Clone, Debug)]
pub struct MemDisk {
    /// The bytes.
    pub data: Vec<u8>,
}

impl MemDisk {
    /// A zeroed device of `blocks` blocks.
    pub fn new(blocks: u64) -> Self {
        MemDisk {
            data: vec![0; blocks as usize * BLOCK_SIZE],
        }
    }
}

impl BlockIo for MemDisk {
    fn block_count(&self) -> u64 {
        (self.data.len() / BLOCK_SIZE) as u64
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(self.block_count(), block, buf.len())?;
        let o = block as usize * BLOCK_SIZE;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write(&mut self, runs: &[Run<'_>], _flags: WriteFlags) -> Result<(), IoError> {
        for r in runs {
            check_range(self.block_count(), r.block, r.data.len())?;
        }
        for r in runs {
            let o = r.block as usize * BLOCK_SIZE;
            self.data[o..o + r.data.len()].copy_from_slice(r.data);
        }
        Ok(())
    }
}

/// An image file as a device; FUA and PREFLUSH become `sync_data`.
#[derive(Debug)]
pub struct FileDisk {
    file: File,
    blocks: u64,
    writable: bool,
}

impl FileDisk {
    /// Opens an image (its size is rounded down to whole blocks).
    pub fn open(path: &Path, writable: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let blocks = file.metadata()?.len() / BLOCK_SIZE as u64;
        Ok(FileDisk {
            file,
            blocks,
            writable,
        })
    }
}

impl BlockIo for FileDisk {
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn read_only(&self) -> bool {
        !self.writable
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(self.blocks, block, buf.len())?;
        let failed = |_| IoError::new(block, IoErrorKind::Device);
        self.file
            .seek(SeekFrom::Start(block * BLOCK_SIZE as u64))
            .map_err(failed)?;
        self.file.read_exact(buf).map_err(failed)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        let first = runs.first().map_or(0, |r| r.block);
        if !self.writable {
            return Err(IoError::new(first, IoErrorKind::ReadOnly));
        }
        if flags.preflush {
            self.file
                .sync_data()
                .map_err(|_| IoError::new(first, IoErrorKind::Device))?;
        }
        for r in runs {
            check_range(self.blocks, r.block, r.data.len())?;
            let failed = |_| IoError::new(r.block, IoErrorKind::Device);
            self.file
                .seek(SeekFrom::Start(r.block * BLOCK_SIZE as u64))
                .map_err(failed)?;
            self.file.write_all(r.data).map_err(failed)?;
        }
        if flags.fua {
            self.file
                .sync_data()
                .map_err(|_| IoError::new(first, IoErrorKind::Device))?;
        }
        Ok(())
    }
}

/// Errors of the host tools.
#[derive(Debug)]
pub enum ToolError {
    /// Host file system error.
    Host(std::io::Error),
    /// tinyfs error.
    Fs(FsError),
}

impl From<std::io::Error> for ToolError {
    fn from(e: std::io::Error) -> Self {
        ToolError::Host(e)
    }
}
impl From<FsError> for ToolError {
    fn from(e: FsError) -> Self {
        ToolError::Fs(e)
    }
}

impl core::fmt::Display for ToolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ToolError::Host(e) => write!(f, "{e}"),
            ToolError::Fs(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ToolError {}

/// Runs `f` on a host instance over `dev`, built on the heap.
pub fn with_fs<D: BlockIo, R>(dev: D, f: impl FnOnce(&mut HostFs<'_, D>) -> R) -> R {
    let mut buf = vec![0u8; HOST_BUF];
    let mut fs = Box::new(HostFs::new(dev, &mut buf));
    f(&mut fs)
}

/// `cargo xtask mkfs IMAGE --size N`: creates (or resizes) `image` to `size` bytes (rounded
/// down to blocks) and writes an empty filesystem with `inode_blocks` inode-table blocks.
pub fn mkfs(image: &Path, size: u64, inode_blocks: u32) -> Result<(), ToolError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(image)?;
    f.set_len(size / BLOCK_SIZE as u64 * BLOCK_SIZE as u64)?;
    drop(f);
    let dev = FileDisk::open(image, true)?;
    with_fs(dev, |fs| {
        fs.mkfs(MkfsOptions {
            blocks: None,
            inode_blocks,
        })
    })?;
    Ok(())
}

/// The outcome of [`fsck`].
#[derive(Debug, Default)]
pub struct FsckReport {
    /// Every problem found (empty: clean).
    pub problems: Vec<Problem>,
    /// Counts.
    pub stats: crate::v1::FsckStats,
}

impl FsckReport {
    /// True when no problem was found (no fallback either).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.stats.status == FsckStatus::Clean
    }

    /// The verdict; its [`FsckStatus::code`] is the tool's exit status.
    pub fn status(&self) -> FsckStatus {
        self.stats.status
    }
}

/// `cargo xtask fsck IMAGE`: checks every invariant. Exit status [`FsckReport::status`]'s code.
pub fn fsck(image: &Path) -> Result<FsckReport, ToolError> {
    let dev = FileDisk::open(image, false)?;
    Ok(fsck_device(dev))
}

/// fsck of any device; a check that cannot run at all is reported as a problem.
pub fn fsck_device<D: BlockIo>(dev: D) -> FsckReport {
    with_fs(dev, |fs| {
        let mut problems = Vec::new();
        let stats = match fs.fsck(&mut |p| problems.push(p)) {
            Ok(s) => s,
            Err(e) => {
                if problems.is_empty() {
                    let what = match e {
                        FsError::Corrupt { what, .. } => what,
                        FsError::Io { .. } => "I/O error",
                        _ => "check could not run",
                    };
                    problems.push(Problem {
                        block: 0,
                        ino: None,
                        what,
                    });
                }
                crate::v1::FsckStats {
                    status: FsckStatus::Corrupt,
                    problems: problems.len() as u32,
                    ..Default::default()
                }
            }
        };
        FsckReport { problems, stats }
    })
}

/// One line of [`ls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsEntry {
    /// Name (lossy UTF-8).
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Inode.
    pub ino: u32,
}

/// `cargo xtask ls IMAGE [PATH]`: the entries of a directory (or the file itself), read-only.
pub fn ls(image: &Path, path: &str) -> Result<Vec<LsEntry>, ToolError> {
    let dev = FileDisk::open(image, false)?;
    with_fs(dev, |fs| ls_fs(fs, path))
}

/// [`ls`] on a mounted-or-not instance (mounts read-only if needed).
pub fn ls_fs<D: BlockIo>(fs: &mut HostFs<'_, D>, path: &str) -> Result<Vec<LsEntry>, ToolError> {
    if fs.mode() == crate::v1::Mode::Unmounted {
        fs.mount(true)?;
    }
    let ino = fs.open(path)?;
    let st = fs.stat(ino)?;
    let mut out = Vec::new();
    if st.kind == Kind::File {
        let name = path.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
        out.push(LsEntry {
            name: name.into(),
            kind: Kind::File,
            size: st.size,
            ino: ino.0,
        });
        return Ok(out);
    }
    let mut cookie = 0;
    while let Some((e, next)) = fs.readdir(ino, cookie)? {
        out.push(LsEntry {
            name: String::from_utf8_lossy(e.name()).into_owned(),
            kind: e.kind,
            size: e.size,
            ino: e.ino.0,
        });
        cookie = next;
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `cargo xtask put IMAGE HOSTFILE PATH`: copies a host file in (replacing `path` atomically
/// if it exists: written under a temporary name, then renamed) and syncs.
pub fn put(image: &Path, host_file: &Path, path: &str) -> Result<(), ToolError> {
    let data = std::fs::read(host_file)?;
    let dev = FileDisk::open(image, true)?;
    with_fs(dev, |fs| {
        fs.mount(false)?;
        put_bytes(fs, path, &data)?;
        fs.unmount()?;
        Ok(())
    })
}

/// Writes `data` as file `path` (atomic replace) and syncs.
pub fn put_bytes<D: BlockIo>(
    fs: &mut HostFs<'_, D>,
    path: &str,
    data: &[u8],
) -> Result<(), FsError> {
    let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    };
    let mut tmp = String::from(dir);
    tmp.push_str("/.put-");
    tmp.push_str(&name[..name.len().min(40)]);
    let ino: Ino = match fs.create(&tmp) {
        Ok(i) => i,
        Err(FsError::Exists) => {
            let i = fs.open(&tmp)?;
            fs.truncate(i, 0)?;
            i
        }
        Err(e) => return Err(e),
    };
    fs.write(ino, 0, data)?;
    fs.rename(&tmp, path)?;
    fs.sync()
}

/// `cargo xtask get IMAGE PATH HOSTFILE`: copies a file out.
pub fn get(image: &Path, path: &str, host_file: &Path) -> Result<(), ToolError> {
    let dev = FileDisk::open(image, false)?;
    let data = with_fs(dev, |fs| -> Result<Vec<u8>, FsError> {
        fs.mount(true)?;
        get_bytes(fs, path)
    })?;
    std::fs::write(host_file, data)?;
    Ok(())
}

/// Reads a whole file.
pub fn get_bytes<D: BlockIo>(fs: &mut HostFs<'_, D>, path: &str) -> Result<Vec<u8>, FsError> {
    let ino = fs.open(path)?;
    let size = fs.stat(ino)?.size;
    let mut out = vec![0u8; size as usize];
    let n = fs.read(ino, 0, &mut out)?;
    out.truncate(n);
    Ok(out)
}
