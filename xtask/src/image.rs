//! tinyfs image tools (`mkfs`, `fsck`, `ls`, `put`, `get`) over format version 2
//! ([`tinyfs::Fs`], [`tinyfs::v2::check`]) on image files, and the tinyfs disk images of QEMU
//! profiles.
//!
//! Images are sparse: `mkfs` sizes the file and writes only the superblocks, group 0's bitmap
//! and the root (4 KiB blocks, up to 2^32 of them: 16 TiB), and `fsck` reads only metadata, so
//! both take time and memory bounded by the metadata, not the image's size. Every tool mounts
//! with the same bounded memory ([`MEM_BYTES`]). `put` and `get` copy a file or a whole
//! directory tree; `put` commits once at the end, so an image changes only when the whole copy
//! succeeded.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Subcommand;
use tinyfs::host::FileDisk;
use tinyfs::v2::check::{self, Problem};
use tinyfs::v2::volume::volume_frames;
use tinyfs::{BLOCK_SIZE, BlockIo, FsError, Ino, IoError, IoErrorKind, Kind, Run, WriteFlags};

use crate::profile::{ImageFormat, ImageSpec};
use crate::workspace;

/// Node frames of the tools' instance.
const N: usize = 64;
/// Free-space groups the tools' instance caches.
const G: usize = 16;
/// Blocks of the tools' data buffer (the largest data I/O: 1 MiB).
const DATA_BLOCKS: usize = 256;
/// Bytes of memory one mount (or one fsck, as scratch) of the tools uses, whatever the image.
pub const MEM_BYTES: usize = (volume_frames(N, G) - 1 + DATA_BLOCKS) * BLOCK_SIZE;
/// The filesystem type of the tools.
type HostFs<'b, D> = tinyfs::Fs<'b, D, N, G>;
/// Blocks per free-space group mkfs chooses (as the kernel's mkfs does).
pub const GROUP_BLOCKS: u32 = tinyfs::v2::superblock::GROUP_BLOCKS_MAX;
/// Blocks of the largest filesystem (the format's limit).
const MAX_BLOCKS: u64 = tinyfs::v2::superblock::MAX_BLOCKS;
/// Bytes of the largest filesystem (16 TiB).
pub const MAX_BYTES: u64 = MAX_BLOCKS * BLOCK_SIZE as u64;
/// Blocks of the smallest filesystem mkfs writes.
const MIN_BLOCKS: u64 = 16;
/// Longest name.
const NAME_MAX: usize = tinyfs::v2::volume::NAME_MAX;

/// The tinyfs image tools. `IMAGE` is a host file holding a filesystem; `PATH` is a
/// `/`-separated path inside it.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Create (or resize) IMAGE as a sparse file and write an empty tinyfs filesystem
    /// (format version 2) over all of it.
    Mkfs {
        /// Image file.
        image: PathBuf,
        /// Size: bytes, or a number with K, M, G or T (binary multiples, e.g. 64M, 16T);
        /// rounded down to 4096-byte blocks, at most 16T.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Record a CRC32C of every data block, verified on every read.
        #[arg(long)]
        data_checksums: bool,
    },
    /// Check every structure of the filesystem in IMAGE and print each problem with its block.
    /// Exit status: 0 clean, 1 any problem (or the image cannot be read).
    Fsck {
        /// Image file.
        image: PathBuf,
    },
    /// List a directory of IMAGE (or show one file) with kinds and sizes.
    Ls {
        /// Image file.
        image: PathBuf,
        /// Directory or file in the image.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Copy a host directory tree (or one file) into IMAGE as PATH, creating missing parent
    /// directories; existing files are replaced, existing directories merged. The image changes
    /// only if the whole copy succeeds (one commit at the end).
    Put {
        /// Image file.
        image: PathBuf,
        /// Directory or file to copy in.
        host_path: PathBuf,
        /// Destination in the image.
        path: String,
    },
    /// Copy the file or directory tree PATH of IMAGE out to the host: a file to HOST_PATH (or
    /// into it, when it is an existing directory), a directory's contents into HOST_PATH
    /// (created if missing).
    Get {
        /// Image file.
        image: PathBuf,
        /// File or directory in the image.
        path: String,
        /// Destination on the host.
        host_path: PathBuf,
    },
}

/// Runs one image tool.
pub fn run(cmd: ImageCmd) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Mkfs {
            image,
            size,
            data_checksums,
        } => {
            let blocks = mkfs_with(&image, size, data_checksums)?;
            let mut line = format!(
                "{}: tinyfs (format version 2) with {blocks} blocks of {BLOCK_SIZE} bytes ({}), \
                 sparse{}",
                image.display(),
                human(blocks * BLOCK_SIZE as u64),
                if data_checksums {
                    ", data checksums"
                } else {
                    ""
                }
            );
            if !size.is_multiple_of(BLOCK_SIZE as u64) {
                line.push_str(&format!(" (size {size} rounded down to whole blocks)"));
            }
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Fsck { image } => {
            let report = fsck(&image)?;
            for line in &report.lines {
                println!("{line}");
            }
            println!("{}", report.summary);
            Ok(ExitCode::from(report.status.code()))
        }
        ImageCmd::Ls { image, path } => {
            for entry in ls(&image, &path)? {
                let size = match entry.kind {
                    Kind::Dir => "-".to_owned(),
                    _ => entry.size.to_string(),
                };
                let slash = if entry.kind == Kind::Dir { "/" } else { "" };
                println!(
                    "{:<4} {size:>12}  {}{slash}",
                    kind_name(entry.kind),
                    entry.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Put {
            image,
            host_path,
            path,
        } => {
            let c = put(&image, &host_path, &path)?;
            println!(
                "{} -> {}:{path} ({} files, {} directories, {} bytes)",
                host_path.display(),
                image.display(),
                c.files,
                c.dirs,
                c.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Get {
            image,
            path,
            host_path,
        } => {
            let c = get(&image, &path, &host_path)?;
            println!(
                "{}:{path} -> {} ({} files, {} directories, {} bytes)",
                image.display(),
                host_path.display(),
                c.files,
                c.dirs,
                c.bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses `64M`, `1G`, `512K` (binary multiples, case-insensitive, optionally followed by `iB`
/// or `B`) or a plain number of bytes. Zero is refused.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let bad = || format!("{text:?} is not a size (examples: 64M, 1G, 512K, 1048576)");
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{text:?}: the size must not be zero"));
    }
    Ok(bytes)
}

/// `bytes` as the largest binary unit that divides it, e.g. `64 MiB`.
fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Free => "free",
    }
}

/// A readable message for a tinyfs error.
pub fn describe(e: FsError) -> String {
    let text = match e {
        FsError::NotFound => "no such file or directory",
        FsError::Exists => "already exists",
        FsError::NotEmpty => "directory not empty",
        FsError::NotDir => "not a directory",
        FsError::IsDir => "is a directory",
        FsError::NoSpace => "no space left in the filesystem",
        FsError::NameTooLong => return format!("name longer than {NAME_MAX} bytes"),
        FsError::InvalidName => "invalid name (empty, `.`, `..`, or containing NUL)",
        FsError::FileTooLarge => "file too large for tinyfs",
        FsError::Io { .. } => return format!("{e} (on the image)"),
        FsError::ReadOnly => "the filesystem is read-only",
        FsError::DeviceReadOnly => "the image is read-only",
        FsError::InvalidArgument => "invalid argument",
        FsError::Corrupt { .. } | FsError::DataChecksum { .. } => {
            return format!("{e} (run fsck)");
        }
        other => return other.to_string(),
    };
    text.to_owned()
}

fn fs_err(what: impl Display) -> impl FnOnce(FsError) -> anyhow::Error {
    move |e| anyhow!("{what}: {}", describe(e))
}

fn open(image: &Path, writable: bool) -> Result<FileDisk> {
    FileDisk::open(image, writable).with_context(|| format!("opening image {}", image.display()))
}

/// A window of blocks of another device (a partition of a disk image).
pub struct Window<D> {
    dev: D,
    start: u64,
    blocks: u64,
}

impl<D: BlockIo> Window<D> {
    /// `blocks` blocks of `dev` from block `start`.
    pub fn new(dev: D, start: u64, blocks: u64) -> Self {
        Window { dev, start, blocks }
    }

    fn range(&self, block: u64, bytes: usize) -> Result<u64, IoError> {
        let n = (bytes / BLOCK_SIZE) as u64;
        if block.checked_add(n).is_none_or(|end| end > self.blocks) {
            return Err(IoError::new(block, IoErrorKind::OutOfRange));
        }
        Ok(self.start + block)
    }
}

impl<D: BlockIo> BlockIo for Window<D> {
    fn block_count(&self) -> u64 {
        self.blocks
    }
    fn read_only(&self) -> bool {
        self.dev.read_only()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let at = self.range(block, buf.len())?;
        self.dev.read(at, buf)
    }
    fn write(&mut self, runs: &[Run<'_>], flags: WriteFlags) -> Result<(), IoError> {
        let mut moved = Vec::with_capacity(runs.len());
        for r in runs {
            moved.push(Run {
                block: self.range(r.block, r.data.len())?,
                data: r.data,
            });
        }
        self.dev.write(&moved, flags)
    }
}

/// A device whose writes stay in memory: reads see them, the device under it is only read.
/// The read-only tools mount through it read-write, so that the filesystem is shown as the
/// kernel's next mount would show it (the fsync log replayed, unfinished orphans freed) while
/// the image is not changed.
pub struct Overlay<D> {
    dev: D,
    written: HashMap<u64, Box<[u8]>>,
}

impl<D: BlockIo> Overlay<D> {
    /// `dev`, with no block written yet.
    pub fn new(dev: D) -> Self {
        Overlay {
            dev,
            written: HashMap::new(),
        }
    }

    fn range(&self, block: u64, bytes: usize) -> Result<(), IoError> {
        let n = bytes.div_ceil(BLOCK_SIZE) as u64;
        if block
            .checked_add(n)
            .is_none_or(|end| end > self.dev.block_count())
        {
            return Err(IoError::new(block, IoErrorKind::OutOfRange));
        }
        Ok(())
    }
}

impl<D: BlockIo> BlockIo for Overlay<D> {
    fn block_count(&self) -> u64 {
        self.dev.block_count()
    }
    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.range(block, buf.len())?;
        for (i, out) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            let b = block + i as u64;
            match self.written.get(&b) {
                Some(data) => out.copy_from_slice(&data[..out.len()]),
                None => self.dev.read(b, out)?,
            }
        }
        Ok(())
    }
    fn write(&mut self, runs: &[Run<'_>], _flags: WriteFlags) -> Result<(), IoError> {
        for r in runs {
            self.range(r.block, r.data.len())?;
            for (i, data) in r.data.chunks(BLOCK_SIZE).enumerate() {
                self.written.insert(r.block + i as u64, data.into());
            }
        }
        Ok(())
    }
}

/// The memory of one mount.
fn memory() -> Vec<u8> {
    vec![0; MEM_BYTES]
}

/// Writes an empty filesystem of `size` bytes (rounded down to blocks) to `image`, creating or
/// resizing the file (sparse). Returns the filesystem's blocks.
pub fn mkfs(image: &Path, size: u64) -> Result<u64> {
    mkfs_with(image, size, false)
}

/// [`mkfs`], with data checksums when `data_checksums`.
pub fn mkfs_with(image: &Path, size: u64, data_checksums: bool) -> Result<u64> {
    let blocks = size / BLOCK_SIZE as u64;
    ensure!(
        blocks >= MIN_BLOCKS,
        "size {size} is too small: a filesystem needs at least {} bytes",
        MIN_BLOCKS * BLOCK_SIZE as u64
    );
    ensure!(
        blocks <= MAX_BLOCKS,
        "size {size} is too large: tinyfs filesystems hold at most {}",
        human(MAX_BYTES)
    );
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .with_context(|| format!("creating {}", image.display()))?;
    let sized = file
        .set_len(0)
        .and_then(|()| file.set_len(blocks * BLOCK_SIZE as u64));
    if let Err(e) = sized {
        drop(file);
        let _ = fs::remove_file(image);
        return Err(e).with_context(|| {
            format!(
                "sizing {} to {} (the host filesystem may not hold files that large)",
                image.display(),
                human(blocks * BLOCK_SIZE as u64)
            )
        });
    }
    drop(file);
    let mut dev = open(image, true)?;
    mkfs_on(&mut dev, data_checksums).with_context(|| format!("mkfs {}", image.display()))
}

/// Writes an empty filesystem over the whole of `dev`; returns its blocks.
pub fn mkfs_on<D: BlockIo>(dev: &mut D, data_checksums: bool) -> Result<u64> {
    let mut mem = memory();
    HostFs::<&mut D>::mkfs_with(
        &mut &mut *dev,
        &mut mem,
        GROUP_BLOCKS,
        now(),
        data_checksums,
    )
    .map_err(|e| anyhow!("{}", describe(e)))?;
    let (mut fs, _) =
        HostFs::mount(&mut *dev, &mut mem, true).map_err(|e| anyhow!("{}", describe(e)))?;
    Ok(fs.statfs().map_err(|e| anyhow!("{}", describe(e)))?.blocks)
}

/// Writes an empty filesystem into the partition of `disk` at bytes `start..start + len`.
pub fn mkfs_into(disk: &Path, start: u64, len: u64) -> Result<u64> {
    let bs = BLOCK_SIZE as u64;
    ensure!(
        start.is_multiple_of(bs),
        "partition at byte {start}: not on a 4 KiB boundary"
    );
    let dev = open(disk, true)?;
    let mut win = Window::new(dev, start / bs, len / bs);
    mkfs_on(&mut win, false).with_context(|| format!("mkfs in {}", disk.display()))
}

/// Seconds since the Unix epoch: the timestamps of what the tools create.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// fsck's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No problem.
    Clean,
    /// At least one problem (each printed with its block).
    Problems,
}

impl Status {
    /// The exit status of `cargo xtask fsck`.
    pub fn code(self) -> u8 {
        match self {
            Status::Clean => 0,
            Status::Problems => 1,
        }
    }
}

/// The outcome of [`fsck`], ready to print.
#[derive(Debug)]
pub struct Fsck {
    /// The verdict; its code is the exit status.
    pub status: Status,
    /// Every problem, as reported.
    pub problems: Vec<Problem>,
    /// One line per problem, then notes (a fallback to the older commit record).
    pub lines: Vec<String>,
    /// The last line: counts, or the number of problems.
    pub summary: String,
    /// What the check saw.
    pub report: check::Report,
}

impl Fsck {
    /// No problem.
    pub fn is_clean(&self) -> bool {
        self.status == Status::Clean
    }
}

/// One problem as a line naming its block.
pub fn problem_line(p: &Problem) -> String {
    match *p {
        Problem::Superblock { block, what } => format!("block {block}: superblock: {what}"),
        Problem::Node { block, what } => format!("block {block}: tree node: {what}"),
        Problem::Item { block, key, what } => format!(
            "block {block}: item ({}, {}, {}): {what}",
            key.id, key.kind, key.offset
        ),
        Problem::Inode { ino, block, what } => format!("block {block}: inode {ino}: {what}"),
        Problem::FreeSpace { block, what } => format!("block {block}: free space: {what}"),
        Problem::Shared { block } => format!("block {block}: referenced twice"),
        Problem::Leaked { block } => {
            format!("block {block}: marked used, referenced by nothing (leaked)")
        }
        Problem::MarkedFree { block } => format!("block {block}: referenced but marked free"),
        Problem::Log { block, what } => format!("block {block}: fsync log: {what}"),
        Problem::FreeCount { recorded, counted } => {
            format!("superblock: free count {recorded}, the bitmaps count {counted}")
        }
    }
}

/// Checks the filesystem on `dev` ([`tinyfs::v2::check::check`]): the report and every
/// problem. Memory is [`MEM_BYTES`], whatever the device's size.
pub fn check_device<D: BlockIo>(dev: &mut D) -> Result<(check::Report, Vec<Problem>)> {
    let mut mem = memory();
    let mut problems = Vec::new();
    let report = check::check(dev, &mut mem, &mut |p| problems.push(*p))
        .map_err(|e| anyhow!("fsck could not run: {}", describe(e)))?;
    Ok((report, problems))
}

/// Checks every structure of the filesystem in `image`. An image that cannot be checked at all
/// (garbage, no valid superblock) is reported as problems, not as an error; errors are for
/// images that cannot be opened or read.
pub fn fsck(image: &Path) -> Result<Fsck> {
    let mut dev = open(image, false)?;
    let (report, problems) = check_device(&mut dev)?;
    let name = image.display();
    let mut lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{name}: {}", problem_line(p)))
        .collect();
    if problems.is_empty() {
        // A torn newest commit record is a legal crash state, not a problem: say which
        // commit is in use.
        let mut mem = memory();
        if let Ok((_, info)) = HostFs::mount(&mut dev, &mut mem, true)
            && info.fell_back
        {
            lines.push(format!(
                "{name}: note: the newest commit record is torn; generation {} is in use (the \
                 lost commit was never reported durable)",
                info.generation
            ));
        }
    }
    let status = if problems.is_empty() {
        Status::Clean
    } else {
        Status::Problems
    };
    let summary = match status {
        Status::Clean => format!(
            "{name}: clean, generation {}, {} inodes, {} items in {} tree nodes, {} blocks used",
            report.generation, report.inodes, report.items, report.nodes, report.used_blocks
        ),
        Status::Problems => {
            let n = problems.len();
            format!("{name}: {n} problem{}", if n == 1 { "" } else { "s" })
        }
    };
    Ok(Fsck {
        status,
        problems,
        lines,
        summary,
        report,
    })
}

/// Mounts `dev` for a tool that only reads: read-write over an [`Overlay`], so that what it
/// shows includes the fsync log and finished orphans (a read-only mount does not replay the
/// log), while `dev` is only read.
fn mount_view<'b, D: BlockIo>(
    dev: D,
    mem: &'b mut [u8],
    image: &Path,
) -> Result<HostFs<'b, Overlay<D>>> {
    mount_with(Overlay::new(dev), mem, image, false, false)
}

/// Mounts `dev` for a tool; a fallback to the older commit is printed on stderr, and a write
/// mount of a rolled-back filesystem (the newest tree corrupt: read-only) is refused.
fn mount<'b, D: BlockIo>(
    dev: D,
    mem: &'b mut [u8],
    image: &Path,
    write: bool,
) -> Result<HostFs<'b, D>> {
    mount_with(dev, mem, image, write, !write)
}

/// [`mount`], read-only when `read_only`.
fn mount_with<'b, D: BlockIo>(
    dev: D,
    mem: &'b mut [u8],
    image: &Path,
    write: bool,
    read_only: bool,
) -> Result<HostFs<'b, D>> {
    let what = format!("mounting {}", image.display());
    let (fs, info) = HostFs::mount(dev, mem, read_only).map_err(fs_err(&what))?;
    if info.rolled_back {
        eprintln!(
            "warning: {}: the newest commit's tree is corrupt: generation {} mounted read-only",
            image.display(),
            info.generation
        );
        if write {
            bail!(
                "{what}: the newest commit's tree is corrupt and the older one is read-only; \
                 run fsck"
            );
        }
    } else if info.fell_back {
        eprintln!(
            "warning: {}: torn commit record: generation {} in use",
            image.display(),
            info.generation
        );
    }
    Ok(fs)
}

/// One directory entry of [`ls`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name (lossy UTF-8).
    pub name: String,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for a directory).
    pub size: u64,
}

/// Entries of directory `dir`, sorted by name.
fn list<D: BlockIo>(fs: &mut HostFs<'_, D>, dir: Ino) -> Result<Vec<Entry>, FsError> {
    let mut out = Vec::new();
    let mut cookie = 0;
    while let Some((e, next)) = fs.readdir(dir, cookie)? {
        cookie = next;
        out.push(Entry {
            name: String::from_utf8_lossy(e.name()).into_owned(),
            kind: e.kind,
            size: if e.kind == Kind::Dir { 0 } else { e.size },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The entries of directory `path` (or the file itself), sorted by name.
pub fn ls(image: &Path, path: &str) -> Result<Vec<Entry>> {
    let mut mem = memory();
    let mut fs = mount_view(open(image, false)?, &mut mem, image)?;
    let what = format!("ls {}:{path}", image.display());
    let st = fs.stat_path(path).map_err(fs_err(&what))?;
    if st.kind == Kind::Dir {
        return list(&mut fs, st.ino).map_err(fs_err(&what));
    }
    let name = path.rsplit('/').find(|c| !c.is_empty()).unwrap_or(path);
    Ok(vec![Entry {
        name: name.to_owned(),
        kind: st.kind,
        size: st.size,
    }])
}

/// The whole contents of file `path` of `image`.
pub fn read_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    let mut mem = memory();
    let mut fs = mount_view(open(image, false)?, &mut mem, image)?;
    let what = format!("read {}:{path}", image.display());
    let st = fs.stat_path(path).map_err(fs_err(&what))?;
    if st.kind == Kind::Dir {
        return Err(fs_err(&what)(FsError::IsDir));
    }
    read_all(&mut fs, st.ino, st.size).map_err(fs_err(&what))
}

fn read_all<D: BlockIo>(fs: &mut HostFs<'_, D>, ino: Ino, size: u64) -> Result<Vec<u8>, FsError> {
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let part = fs.read_buffer(
            ino,
            out.len() as u64,
            (size - out.len() as u64).min(1 << 30) as usize,
        )?;
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// What a copy moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Files copied.
    pub files: u64,
    /// Directories created (or merged into).
    pub dirs: u64,
    /// Bytes of file data.
    pub bytes: u64,
}

/// Makes `path` a directory of `fs` (and its missing parents); refuses a file in the way.
fn make_dirs<D: BlockIo>(fs: &mut HostFs<'_, D>, path: &str, what: &str) -> Result<()> {
    let mut dir = String::new();
    for part in path.split('/').filter(|c| !c.is_empty()) {
        dir.push('/');
        dir.push_str(part);
        match fs.stat_path(&dir) {
            Ok(st) if st.kind == Kind::Dir => {}
            Ok(_) => bail!("{what}: {dir} is not a directory"),
            Err(FsError::NotFound) => {
                fs.mkdir(&dir)
                    .map_err(fs_err(format_args!("{what}: mkdir {dir}")))?;
            }
            Err(e) => return Err(fs_err(format_args!("{what}: {dir}"))(e)),
        }
    }
    Ok(())
}

/// Writes `data` as file `path` of `fs`, replacing a file there.
fn put_file<D: BlockIo>(fs: &mut HostFs<'_, D>, path: &str, data: &[u8]) -> Result<(), FsError> {
    let ino = match fs.create(path) {
        Ok(ino) => ino,
        Err(FsError::Exists) => {
            let ino = fs.open(path)?;
            if fs.stat(ino)?.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            fs.truncate(ino, 0)?;
            ino
        }
        Err(e) => return Err(e),
    };
    let mut done = 0;
    while done < data.len() {
        let n = fs.write(ino, done as u64, &data[done..])?;
        if n == 0 {
            return Err(FsError::NoSpace);
        }
        done += n;
    }
    Ok(())
}

/// `parent/name` in the image.
fn join(parent: &str, name: &str) -> String {
    format!("{}/{name}", parent.trim_end_matches('/'))
}

fn put_tree<D: BlockIo>(
    fs: &mut HostFs<'_, D>,
    host: &Path,
    path: &str,
    what: &str,
    c: &mut Copied,
) -> Result<()> {
    let meta = fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
    if meta.is_dir() {
        make_dirs(fs, path, what)?;
        c.dirs += 1;
        let mut entries: Vec<_> = fs::read_dir(host)
            .with_context(|| format!("reading {}", host.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", host.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{}: a name that is not UTF-8", e.path().display()))?;
            put_tree(fs, &e.path(), &join(path, name), what, c)?;
        }
    } else if meta.is_file() {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        put_file(fs, path, &data).map_err(fs_err(format_args!("{what}: {path}")))?;
        c.files += 1;
        c.bytes += data.len() as u64;
    } else {
        bail!(
            "{}: neither a file nor a directory (symbolic links and devices are not copied)",
            host.display()
        );
    }
    Ok(())
}

/// Copies `host` (a file, or a directory tree) into `image` as `path`, creating missing parent
/// directories, and commits once at the end: nothing changes in the image unless the whole
/// copy succeeds.
pub fn put(image: &Path, host: &Path, path: &str) -> Result<Copied> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let what = format!("put {}:{path}", image.display());
    let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
    let Some((_, parents)) = parts.split_last() else {
        if meta.is_dir() {
            // A tree into the root directory.
            let mut mem = memory();
            let mut fs = mount(open(image, true)?, &mut mem, image, true)?;
            let mut c = Copied::default();
            put_tree(&mut fs, host, "/", &what, &mut c)?;
            fs.unmount().map_err(fs_err(&what))?;
            return Ok(c);
        }
        bail!("put: {path:?} names the root directory, not a file");
    };
    let mut mem = memory();
    let mut fs = mount(open(image, true)?, &mut mem, image, true)?;
    make_dirs(&mut fs, &parents.join("/"), &what)?;
    let mut c = Copied::default();
    put_tree(&mut fs, host, path, &what, &mut c)?;
    fs.unmount().map_err(fs_err(&what))?;
    Ok(c)
}

fn get_tree<D: BlockIo>(
    fs: &mut HostFs<'_, D>,
    ino: Ino,
    kind: Kind,
    size: u64,
    host: &Path,
    what: &str,
    c: &mut Copied,
) -> Result<()> {
    if kind == Kind::Dir {
        fs::create_dir_all(host).with_context(|| format!("creating {}", host.display()))?;
        c.dirs += 1;
        for e in list_inos(fs, ino).map_err(fs_err(what))? {
            let (name, child, kind, size) = e;
            ensure!(
                !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']),
                "{what}: a name the host cannot hold: {name:?}"
            );
            get_tree(fs, child, kind, size, &host.join(&name), what, c)?;
        }
    } else {
        let data = read_all(fs, ino, size).map_err(fs_err(what))?;
        fs::write(host, &data).with_context(|| format!("writing {}", host.display()))?;
        c.files += 1;
        c.bytes += data.len() as u64;
    }
    Ok(())
}

/// `(name, ino, kind, size)` of every entry of directory `dir`.
fn list_inos<D: BlockIo>(
    fs: &mut HostFs<'_, D>,
    dir: Ino,
) -> Result<Vec<(String, Ino, Kind, u64)>, FsError> {
    let mut out = Vec::new();
    let mut cookie = 0;
    while let Some((e, next)) = fs.readdir(dir, cookie)? {
        cookie = next;
        out.push((
            String::from_utf8_lossy(e.name()).into_owned(),
            e.ino,
            e.kind,
            e.size,
        ));
    }
    Ok(out)
}

/// Copies `path` of `image` out: a file to `host` (or into it when it is an existing
/// directory), a directory's whole tree into `host` (created if missing).
pub fn get(image: &Path, path: &str, host: &Path) -> Result<Copied> {
    let mut mem = memory();
    let mut fs = mount_view(open(image, false)?, &mut mem, image)?;
    let what = format!("get {}:{path}", image.display());
    let st = fs.stat_path(path).map_err(fs_err(&what))?;
    let mut c = Copied::default();
    let mut dest = host.to_owned();
    if st.kind == Kind::File && host.is_dir() {
        let name = path
            .rsplit('/')
            .find(|c| !c.is_empty())
            .context("a file path without a name")?;
        dest = host.join(name);
    }
    get_tree(&mut fs, st.ino, st.kind, st.size, &dest, &what, &mut c)?;
    Ok(c)
}

/// Creates the disk image of a profile at `path` as `spec` describes (for a test boot, or for
/// `run`): [`prepare`], then the partitioned disks of `spec.partition` when the image was
/// (re)made.
pub fn prepare_spec(path: &Path, spec: &ImageSpec, for_test: bool, fresh: bool) -> Result<()> {
    let new = fresh || !path.exists();
    let disks = spec.disks()?;
    if !new || disks.is_empty() {
        return prepare(path, spec.size_mib, spec.format_for(for_test), fresh);
    }
    // Made under a temporary name and renamed when complete, so that an interrupted or failed
    // run of the partitioning tools never leaves a half-made image to be kept.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    prepare(&tmp, spec.size_mib, spec.format_for(for_test), true)?;
    crate::parts::write(&tmp, &disks)?;
    fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))
}

/// Creates the disk image of a profile at `path` in `format`; an existing image is kept unless
/// `fresh`. A tinyfs image is written under a temporary name first, so an interrupted mkfs never
/// leaves a half-made image behind.
pub fn prepare(path: &Path, size_mib: u64, format: ImageFormat, fresh: bool) -> Result<()> {
    match format {
        ImageFormat::Raw => workspace::prepare_image(path, size_mib, fresh),
        ImageFormat::Tinyfs => {
            if path.exists() && !fresh {
                return Ok(());
            }
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let _ = fs::remove_file(&tmp);
            // The filesystem covers the whole disk, as the kernel's own mkfs does.
            mkfs(&tmp, size_mib << 20)?;
            fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tinyfs::v2::{Superblock, node};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("16T"), Ok(16 << 40));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        for bad in [
            "", "0", "0M", "M", "-1", "1.5G", "64 X", "64MM", "12abc", "G1", " ",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
        assert!(parse_size("0K").unwrap_err().contains("zero"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(
            parse_size("20000000000T")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn mkfs_refuses_sizes_out_of_range() {
        let dir = TempDir::new("sizes");
        let img = dir.path.join("fs.img");
        assert!(mkfs(&img, 4096 * 10).is_err());
        assert!(mkfs(&img, MAX_BYTES + 4096).is_err());
        assert!(!img.exists(), "a refused mkfs creates nothing");
        assert_eq!(mkfs(&img, 4096 * 17 + 100).unwrap(), 17);
        assert_eq!(fs::metadata(&img).unwrap().len(), 4096 * 17);
        assert!(fsck(&img).unwrap().is_clean());
    }

    /// A temporary directory, removed on drop.
    struct TempDir {
        path: PathBuf,
    }

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let path = std::env::temp_dir()
                .join(format!("xtask-image-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    /// Bytes `i` of test file `seed`.
    fn content(seed: u32, len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// A host tree: nested directories, an empty one, files of 0 bytes to 1.2 MB, a name of
    /// 255 bytes. Returns the number of files and directories (the top included).
    fn make_tree(root: &Path) -> (u64, u64) {
        let long = "n".repeat(255);
        let files: [(&str, usize); 7] = [
            ("empty", 0),
            ("one", 1),
            ("block.bin", 4096),
            ("big.bin", 1_200_001),
            ("a/b/deep.txt", 70_001),
            ("a/side", 12_345),
            ("a/b/c/d/e/leaf", 333),
        ];
        for (k, (path, len)) in files.iter().enumerate() {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content(k as u32, *len)).unwrap();
        }
        fs::write(root.join(&long), b"a long name").unwrap();
        fs::create_dir_all(root.join("a/hollow")).unwrap();
        // Top, a, a/b, a/b/c, a/b/c/d, a/b/c/d/e, a/hollow.
        (files.len() as u64 + 1, 7)
    }

    /// Every file and directory under `a` and `b` (relative paths) and files' bytes equal.
    fn same_tree(a: &Path, b: &Path) {
        let mut left = Vec::new();
        walk(a, a, &mut left);
        let mut right = Vec::new();
        walk(b, b, &mut right);
        assert_eq!(left.len(), right.len(), "{left:?}\n{right:?}");
        for (l, r) in left.iter().zip(&right) {
            assert_eq!(l.0, r.0);
            assert!(l.1 == r.1, "{} differs", l.0.display());
        }
    }

    fn walk(root: &Path, at: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
        let mut entries: Vec<_> = fs::read_dir(at)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_owned();
            if p.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(fs::read(&p).unwrap())));
            }
        }
    }

    #[test]
    fn a_tree_round_trips_through_put_and_get() {
        let dir = TempDir::new("tree");
        let img = dir.path.join("fs.img");
        let src = dir.path.join("src");
        let (files, dirs) = make_tree(&src);
        assert_eq!(mkfs(&img, 64 << 20).unwrap(), 16384);
        assert!(fsck(&img).unwrap().is_clean());
        assert!(ls(&img, "/").unwrap().is_empty());

        // The tree below a new directory, its parents made on the way.
        let c = put(&img, &src, "/x/in").unwrap();
        assert_eq!((c.files, c.dirs), (files, dirs));
        assert_eq!(c.bytes, 1_200_001 + 70_001 + 12_345 + 333 + 4096 + 1 + 11);
        let report = fsck(&img).unwrap();
        assert!(report.is_clean(), "{:?}", report.lines);
        let out = dir.path.join("out");
        let g = get(&img, "/x/in", &out).unwrap();
        assert_eq!((g.files, g.dirs, g.bytes), (c.files, c.dirs, c.bytes));
        same_tree(&src, &out);

        // A single file, in and out, and into an existing host directory.
        let one = dir.path.join("one.bin");
        fs::write(&one, content(9, 300_000)).unwrap();
        assert_eq!(put(&img, &one, "/single.bin").unwrap().bytes, 300_000);
        let back = dir.path.join("back.bin");
        assert_eq!(get(&img, "/single.bin", &back).unwrap().files, 1);
        assert!(fs::read(&back).unwrap() == content(9, 300_000));
        get(&img, "/x/in/a/side", &out).unwrap();
        assert!(fs::read(out.join("side")).unwrap() == content(5, 12_345));
        assert!(read_file(&img, "/x/in/big.bin").unwrap() == content(3, 1_200_001));

        // Putting again replaces files and merges directories.
        fs::write(src.join("big.bin"), b"shorter now").unwrap();
        put(&img, &src, "/x/in").unwrap();
        assert_eq!(read_file(&img, "/x/in/big.bin").unwrap(), b"shorter now");
        let listing = ls(&img, "/x/in").unwrap();
        assert_eq!(listing.len(), 6, "{listing:?}");
        assert!(listing.iter().any(|e| e.name.len() == 255));
        let big = listing.iter().find(|e| e.name == "big.bin").unwrap();
        assert_eq!((big.kind, big.size), (Kind::File, 11));
        assert_eq!(ls(&img, "/x/in/one").unwrap()[0].size, 1);

        // Errors are reported, not panics, and leave the image clean.
        let before = fs::read(&img).unwrap();
        let err = get(&img, "/missing", &dir.path.join("m")).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        assert!(put(&img, &one, "/single.bin/x").is_err());
        assert!(
            put(&img, &src, "/single.bin").is_err(),
            "a tree over a file"
        );
        assert!(put(&img, &one, "/").is_err());
        assert!(put(&img, &dir.path.join("nope"), "/x").is_err());
        assert!(ls(&img, "/nope").is_err());
        assert!(fsck(&dir.path.join("no.img")).is_err());
        assert!(
            fs::read(&img).unwrap() == before,
            "a failed put changed the image"
        );
        let report = fsck(&img).unwrap();
        assert!(report.is_clean(), "{:?}", report.lines);
        assert_eq!(exit_status(&img), ExitCode::SUCCESS);
    }

    fn exit_status(img: &Path) -> ExitCode {
        run(ImageCmd::Fsck {
            image: img.to_owned(),
        })
        .unwrap()
    }

    /// Allocated bytes of a (sparse) file.
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_16_tib_sparse_image_makes_and_checks_fast() {
        let dir = TempDir::new("16t");
        let img = dir.path.join("fs.img");
        let t0 = Instant::now();
        // 16 TiB; a host filesystem that cannot hold a file that large (ext4 stops 4 KiB
        // short) gets the largest it can.
        let blocks = match mkfs(&img, 16 << 40) {
            Ok(b) => b,
            Err(e) => {
                assert!(format!("{e:#}").contains("sizing"), "{e:#}");
                mkfs(&img, (16 << 40) - 4096).unwrap()
            }
        };
        assert!(blocks > MAX_BLOCKS - u64::from(GROUP_BLOCKS), "{blocks}");
        let src = dir.path.join("src");
        make_tree(&src);
        put(&img, &src, "/t").unwrap();
        let report = fsck(&img).unwrap();
        let took = t0.elapsed();
        assert!(report.is_clean(), "{:?}", report.lines);
        assert!(report.summary.contains("clean"), "{}", report.summary);
        let out = dir.path.join("out");
        get(&img, "/t", &out).unwrap();
        same_tree(&src, &out);
        // Metadata only: a few MiB on the host, and seconds, not the image's size.
        let used = allocated(&img);
        assert!(
            used < 32 << 20,
            "{used} bytes allocated for a sparse 16 TiB image"
        );
        assert!(
            took.as_secs() < 60,
            "mkfs + put + fsck of 16 TiB took {took:?}"
        );
        eprintln!(
            "16 TiB: {blocks} blocks, mkfs + put + fsck in {took:?}, {used} bytes on the host"
        );
    }

    /// The newest superblock of an image.
    fn newest(bytes: &[u8]) -> Superblock {
        (0..2u64)
            .filter_map(|s| {
                let at = s as usize * BLOCK_SIZE;
                Superblock::decode(&bytes[at..at + BLOCK_SIZE], s).ok()
            })
            .max_by_key(|s| s.generation)
            .unwrap()
    }

    #[test]
    fn reading_tools_show_fsynced_data_and_leave_the_image_alone() {
        let dir = TempDir::new("fsynced");
        let img = dir.path.join("fs.img");
        mkfs(&img, 32 << 20).unwrap();
        let one = dir.path.join("one");
        fs::write(&one, vec![1u8; 8192]).unwrap();
        put(&img, &one, "/f").unwrap();
        // Overwrite and fsync, then stop without a commit (a power cut): the new data is
        // only in the fsync log.
        {
            let mut mem = memory();
            let (mut fs, _) = HostFs::mount(open(&img, true).unwrap(), &mut mem, false).unwrap();
            let ino = fs.open("/f").unwrap();
            fs.write(ino, 4096, &[2u8; 4096]).unwrap();
            fs.fsync(ino).unwrap();
        }
        let before = fs::read(&img).unwrap();
        let mut want = vec![1u8; 4096];
        want.extend_from_slice(&[2u8; 4096]);
        assert_eq!(
            read_file(&img, "/f").unwrap(),
            want,
            "the fsync log is not replayed"
        );
        assert_eq!(ls(&img, "/f").unwrap()[0].size, 8192);
        assert!(
            fs::read(&img).unwrap() == before,
            "a reading tool wrote the image"
        );
        assert_eq!(exit_status(&img), ExitCode::SUCCESS);
    }

    #[test]
    fn fsck_names_the_block_of_a_corrupt_node() {
        let dir = TempDir::new("corrupt");
        let img = dir.path.join("fs.img");
        mkfs(&img, 32 << 20).unwrap();
        // Enough entries for a tree of two levels, then one more commit.
        let src = dir.path.join("src");
        fs::create_dir_all(&src).unwrap();
        for i in 0..400 {
            fs::write(src.join(format!("file-with-a-longish-name-{i:04}")), b"x").unwrap();
        }
        put(&img, &src, "/many").unwrap();
        let one = dir.path.join("one");
        fs::write(&one, b"last").unwrap();
        put(&img, &one, "/last").unwrap();
        assert_eq!(exit_status(&img), ExitCode::SUCCESS);

        // A leaf both commits share (written before the newest commit).
        let mut bytes = fs::read(&img).unwrap();
        let sb = newest(&bytes);
        let node_at = |b: u64| &bytes[b as usize * BLOCK_SIZE..(b as usize + 1) * BLOCK_SIZE];
        let root = node_at(sb.root);
        assert!(node::level(root) >= 1, "a tree of one level");
        let leaf = (0..node::nitems(root))
            .map(|i| node::child(root, i))
            .find(|&c| node::generation(node_at(c)) < sb.generation)
            .expect("a leaf older than the newest commit");
        bytes[leaf as usize * BLOCK_SIZE + 200] ^= 0x5a;
        fs::write(&img, &bytes).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, Status::Problems);
        assert!(
            report
                .lines
                .iter()
                .any(|l| l.contains(&format!("block {leaf}:"))),
            "{:?}",
            report.lines
        );
        assert!(report.summary.contains("problem"), "{}", report.summary);
        assert_eq!(exit_status(&img), ExitCode::from(1));

        // Both superblocks broken: still a report (each slot named), not an error.
        bytes[100] ^= 1;
        bytes[BLOCK_SIZE + 100] ^= 1;
        fs::write(&img, &bytes).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, Status::Problems);
        assert!(
            report.lines.iter().any(|l| l.contains("block ")),
            "{:?}",
            report.lines
        );
        assert!(ls(&img, "/").is_err());
    }

    #[test]
    fn a_torn_commit_record_is_clean_with_a_note() {
        let dir = TempDir::new("torn");
        let img = dir.path.join("fs.img");
        mkfs(&img, 8 << 20).unwrap();
        let src = dir.path.join("f");
        fs::write(&src, b"data").unwrap();
        put(&img, &src, "/a").unwrap();
        put(&img, &src, "/b").unwrap();
        let mut bytes = fs::read(&img).unwrap();
        let slot = Superblock::slot_of(newest(&bytes).generation) as usize;
        bytes[slot * BLOCK_SIZE + 512..(slot + 1) * BLOCK_SIZE].fill(0);
        fs::write(&img, &bytes).unwrap();
        let report = fsck(&img).unwrap();
        assert!(report.is_clean(), "{:?}", report.lines);
        assert!(
            report.lines.iter().any(|l| l.contains("torn")),
            "{:?}",
            report.lines
        );
        assert_eq!(ls(&img, "/").unwrap().len(), 1, "only /a");
    }

    #[test]
    fn profile_images() {
        let dir = TempDir::new("profile");
        let img = dir.path.join("qemu").join("p.img");
        prepare(&img, 8, ImageFormat::Tinyfs, false).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 8 << 20);
        let report = fsck(&img).unwrap();
        assert!(report.is_clean());
        assert!(
            report.summary.ends_with(" blocks used"),
            "{}",
            report.summary
        );
        let src = dir.path.join("f");
        fs::write(&src, b"kept").unwrap();
        put(&img, &src, "/f").unwrap();
        // Kept when it exists, made anew when fresh.
        prepare(&img, 8, ImageFormat::Tinyfs, false).unwrap();
        assert_eq!(ls(&img, "/").unwrap().len(), 1);
        prepare(&img, 8, ImageFormat::Tinyfs, true).unwrap();
        assert!(ls(&img, "/").unwrap().is_empty());
        prepare(&img, 8, ImageFormat::Raw, true).unwrap();
        assert!(fs::read(&img).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn mkfs_into_a_partition_window() {
        let dir = TempDir::new("window");
        let disk = dir.path.join("disk.img");
        fs::write(&disk, vec![0xeeu8; 4 << 20]).unwrap();
        assert_eq!(mkfs_into(&disk, 1 << 20, 2 << 20).unwrap(), 512);
        let bytes = fs::read(&disk).unwrap();
        assert!(
            bytes[..1 << 20].iter().all(|&b| b == 0xee),
            "wrote before the window"
        );
        assert!(
            bytes[3 << 20..].iter().all(|&b| b == 0xee),
            "wrote past the window"
        );
        let part = dir.path.join("p1.img");
        fs::write(&part, &bytes[1 << 20..3 << 20]).unwrap();
        assert!(fsck(&part).unwrap().is_clean());
    }
}
