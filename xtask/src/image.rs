//! tinyfs image tools (`mkfs`, `fsck`, `ls`, `put`, `get`) over the host API of the `tinyfs`
//! crate, and the tinyfs disk images of QEMU profiles.

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Subcommand;
use tinyfs::host::{self, FileDisk, HOST_BW, ToolError};
use tinyfs::{
    BLOCK_SIZE, BlockIo, Fallback, FsError, FsckStatus, Kind, MkfsOptions, MountOptions, NAME_MAX,
};

use crate::profile::{ImageFormat, ImageSpec};
use crate::workspace;

/// Blocks of the largest filesystem the host tools handle (their bitmap's size).
const MAX_BLOCKS: u64 = HOST_BW as u64 * 64;
/// A read-only mount.
const RO: MountOptions = MountOptions {
    read_only: true,
    accept_rollback: false,
};
/// Bytes of the largest filesystem the host tools handle (4 GiB).
pub const MAX_BYTES: u64 = MAX_BLOCKS * BLOCK_SIZE as u64;
/// Blocks besides the inode table that the smallest filesystem needs: two superblock slots and
/// one data block.
const OVERHEAD_BLOCKS: u64 = 3;

/// The tinyfs image tools. `IMAGE` is a host file holding a filesystem; `PATH` is a
/// `/`-separated path inside it.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Create (or resize) IMAGE and write an empty tinyfs filesystem to it.
    Mkfs {
        /// Image file.
        image: PathBuf,
        /// Size: bytes, or a number with K, M or G (binary multiples, e.g. 64M); rounded down to
        /// 4096-byte blocks, at most 4G.
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Inode-table blocks (15 inodes each, the root included).
        #[arg(long, default_value_t = MkfsOptions::default().inode_blocks,
              value_parser = clap::value_parser!(u32).range(1..=64))]
        inode_blocks: u32,
    },
    /// Check every invariant of the filesystem in IMAGE and print each problem. Exit status: 0
    /// clean, 1 corrupt (or the image cannot be read), 2 the newest superblock is torn and the
    /// previous generation is used, 3 the newest generation's tree is corrupt and the previous
    /// one is used (read-only until a rollback is accepted).
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
    /// Copy a host file into IMAGE as PATH, creating missing parent directories; an existing
    /// file is replaced atomically.
    Put {
        /// Image file.
        image: PathBuf,
        /// File to copy in.
        host_file: PathBuf,
        /// Destination in the image.
        path: String,
        /// Write even when the newest generation is corrupt and the previous one is used
        /// (fsck exit status 3): the newest commit is then lost for good.
        #[arg(long)]
        accept_rollback: bool,
    },
    /// Copy the file PATH of IMAGE out to a host file.
    Get {
        /// Image file.
        image: PathBuf,
        /// File in the image.
        path: String,
        /// Destination on the host (created or overwritten).
        host_file: PathBuf,
    },
}

/// Runs one image tool.
pub fn run(cmd: ImageCmd) -> Result<ExitCode> {
    match cmd {
        ImageCmd::Mkfs {
            image,
            size,
            inode_blocks,
        } => {
            let blocks = mkfs(&image, size, inode_blocks)?;
            let mut line = format!(
                "{}: tinyfs with {blocks} blocks of {BLOCK_SIZE} bytes ({}), {} inodes",
                image.display(),
                human(blocks * BLOCK_SIZE as u64),
                inode_blocks * 15,
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
            host_file,
            path,
            accept_rollback,
        } => {
            let n = put(&image, &host_file, &path, accept_rollback)?;
            println!(
                "{} -> {}:{path} ({n} bytes)",
                host_file.display(),
                image.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ImageCmd::Get {
            image,
            path,
            host_file,
        } => {
            let n = get(&image, &path, &host_file)?;
            println!(
                "{}:{path} -> {} ({n} bytes)",
                image.display(),
                host_file.display()
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
        FsError::NoInodes => "no free inodes (the inode table is full; see mkfs --inode-blocks)",
        FsError::NameTooLong => return format!("name longer than {NAME_MAX} bytes"),
        FsError::InvalidName => "invalid name (empty, `.`, `..`, or containing NUL)",
        FsError::FileTooLarge => "file too large for tinyfs",
        FsError::TooFragmented => "file too fragmented",
        FsError::Io { .. } => return format!("{e} (on the image)"),
        FsError::ReadOnly => "the filesystem is read-only",
        FsError::DeviceReadOnly => "the image is read-only",
        FsError::InvalidArgument => "invalid argument",
        FsError::Corrupt { .. } => return format!("{e} (run fsck)"),
        other => return other.to_string(),
    };
    text.to_owned()
}

fn fs_err(what: impl Display) -> impl FnOnce(FsError) -> anyhow::Error {
    move |e| anyhow!("{what}: {}", describe(e))
}

fn tool_err(what: impl Display) -> impl FnOnce(ToolError) -> anyhow::Error {
    move |e| match e {
        ToolError::Fs(e) => anyhow!("{what}: {}", describe(e)),
        ToolError::Host(e) => anyhow!("{what}: {e}"),
    }
}

fn open(image: &Path, writable: bool) -> Result<FileDisk> {
    let dev = FileDisk::open(image, writable)
        .with_context(|| format!("opening image {}", image.display()))?;
    ensure!(
        dev.block_count() <= MAX_BLOCKS,
        "{}: images larger than {} are not supported",
        image.display(),
        human(MAX_BYTES)
    );
    Ok(dev)
}

/// Writes an empty filesystem of `size` bytes (rounded down to blocks) to `image`, creating or
/// resizing the file. Returns the filesystem's blocks.
pub fn mkfs(image: &Path, size: u64, inode_blocks: u32) -> Result<u64> {
    let blocks = size / BLOCK_SIZE as u64;
    let min = OVERHEAD_BLOCKS + u64::from(inode_blocks);
    ensure!(
        blocks >= min,
        "size {size} is too small: a filesystem with {inode_blocks} inode-table blocks needs at \
         least {} bytes",
        min * BLOCK_SIZE as u64
    );
    ensure!(
        blocks <= MAX_BLOCKS,
        "size {size} is too large: the tools handle filesystems of at most {}",
        human(MAX_BYTES)
    );
    host::mkfs(image, size, inode_blocks)
        .map_err(tool_err(format_args!("mkfs {}", image.display())))?;
    Ok(blocks)
}

/// The outcome of [`fsck`], ready to print.
#[derive(Debug)]
pub struct Fsck {
    /// The verdict; its code is the exit status.
    pub status: FsckStatus,
    /// One line per problem, then one for a fallback.
    pub lines: Vec<String>,
    /// The last line: counts, or the number of problems.
    pub summary: String,
}

/// Checks every invariant of the filesystem in `image`. An image that cannot be checked at all
/// (garbage, no valid superblock) is reported as problems, not as an error; errors are for
/// images that cannot be opened.
pub fn fsck(image: &Path) -> Result<Fsck> {
    let dev = open(image, false)?;
    let report = host::fsck_device(dev);
    let name = image.display();
    let mut lines: Vec<String> = report
        .problems
        .iter()
        .map(|p| match p.ino {
            Some(ino) => format!("{name}: block {}, inode {ino}: {}", p.block, p.what),
            None => format!("{name}: block {}: {}", p.block, p.what),
        })
        .collect();
    let s = report.stats;
    if let Some(fb) = s.fell_back_from {
        lines.push(format!(
            "{name}: FELL BACK to generation {}: {fb}{}",
            s.generation,
            match fb {
                Fallback::CorruptTree { .. } =>
                    "; mounts read-only unless the rollback is accepted (put --accept-rollback)",
                Fallback::TornSuperblock(_) => "; the lost commit was never reported durable",
            }
        ));
    }
    if let Some(slot) = s.damaged_older {
        lines.push(format!(
            "{name}: older superblock (slot {}) damaged: {}",
            slot.slot, slot.what
        ));
    }
    let counts = format!(
        "generation {}, {} files, {} directories, {} of {} blocks used",
        s.generation, s.files, s.dirs, s.used_blocks, s.block_count
    );
    let summary = match s.status {
        FsckStatus::Clean => format!("{name}: clean, {counts}"),
        FsckStatus::RolledBackTorn | FsckStatus::RolledBackCorrupt => {
            format!(
                "{name}: rolled back (exit status {}), {counts}",
                s.status.code()
            )
        }
        _ => {
            let n = report.problems.len();
            format!("{name}: {n} problem{}", if n == 1 { "" } else { "s" })
        }
    };
    Ok(Fsck {
        status: s.status,
        lines,
        summary,
    })
}

/// Mounts for the tools; a fallback to an older generation is printed on stderr.
fn mount(
    fs: &mut host::HostFs<'_, FileDisk>,
    image: &Path,
    opts: MountOptions,
) -> Result<(), FsError> {
    let r = fs.mount_with(opts)?;
    if r.fell_back_from.is_some() || r.damaged_older.is_some() {
        eprintln!("warning: {}: mounted {r}", image.display());
    }
    if r.rollback_refused(opts) {
        return Err(FsError::ReadOnly);
    }
    Ok(())
}

/// The entries of directory `path` (or the file itself), sorted by name.
pub fn ls(image: &Path, path: &str) -> Result<Vec<host::LsEntry>> {
    let dev = open(image, false)?;
    host::with_fs(dev, |fs| -> Result<Vec<host::LsEntry>, ToolError> {
        mount(fs, image, RO)?;
        host::ls_fs(fs, path)
    })
    .map_err(tool_err(format_args!("ls {}:{path}", image.display())))
}

/// Copies `host_file` into `image` as `path`, creating missing parent directories, and commits.
/// Returns the bytes copied. Nothing changes in the image unless the whole copy succeeds. An
/// image whose newest generation is corrupt is refused unless `accept_rollback`.
pub fn put(image: &Path, host_file: &Path, path: &str, accept_rollback: bool) -> Result<usize> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let Some((_, parents)) = parts.split_last() else {
        bail!("put: {path:?} names the root directory, not a file");
    };
    let data = fs::read(host_file).with_context(|| format!("reading {}", host_file.display()))?;
    let dev = open(image, true)?;
    let what = format!("put {}:{path}", image.display());
    host::with_fs(dev, |fs| -> Result<()> {
        let opts = MountOptions {
            read_only: false,
            accept_rollback,
        };
        mount(fs, image, opts).map_err(|e| match e {
            FsError::ReadOnly => anyhow!(
                "{what}: the newest generation is corrupt and the previous one was mounted \
                 read-only; run fsck, and pass --accept-rollback to write over it"
            ),
            e => fs_err(&what)(e),
        })?;
        let mut dir = String::new();
        for part in parents {
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
        host::put_bytes(fs, path, &data).map_err(fs_err(&what))?;
        fs.unmount().map_err(fs_err(&what))?;
        Ok(())
    })?;
    Ok(data.len())
}

/// Copies the file `path` of `image` to `host_file`. Returns the bytes copied.
pub fn get(image: &Path, path: &str, host_file: &Path) -> Result<usize> {
    let dev = open(image, false)?;
    let what = format!("get {}:{path}", image.display());
    let data = host::with_fs(dev, |fs| -> Result<Vec<u8>> {
        mount(fs, image, RO).map_err(fs_err(&what))?;
        let st = fs.stat_path(path).map_err(fs_err(&what))?;
        if st.kind == Kind::Dir {
            return Err(fs_err(&what)(FsError::IsDir));
        }
        host::get_bytes(fs, path).map_err(fs_err(&what))
    })?;
    fs::write(host_file, &data).with_context(|| format!("writing {}", host_file.display()))?;
    Ok(data.len())
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
            // The filesystem leaves the disk's last MiB out, as the kernel's own mkfs does: the
            // raw-I/O demo of `cargo xtask run` uses it as scratch space.
            let fs_bytes = if size_mib > 1 {
                (size_mib - 1) << 20
            } else {
                size_mib << 20
            };
            mkfs(&tmp, fs_bytes, MkfsOptions::default().inode_blocks)?;
            fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .and_then(|f| f.set_len(size_mib << 20))
                .with_context(|| format!("sizing {}", tmp.display()))?;
            fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinyfs::format::Superblock;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
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
        assert!(mkfs(&img, 4096 * 10, 8).is_err());
        assert!(mkfs(&img, MAX_BYTES + 4096, 8).is_err());
        assert!(!img.exists(), "a refused mkfs creates nothing");
        assert_eq!(mkfs(&img, 4096 * 11 + 100, 8).unwrap(), 11);
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

    fn superblock(image: &[u8], slot: u64) -> Superblock {
        let at = slot as usize * BLOCK_SIZE;
        let block: &[u8; BLOCK_SIZE] = image[at..at + BLOCK_SIZE].try_into().unwrap();
        Superblock::decode(block, slot).unwrap()
    }

    #[test]
    fn round_trip_then_corruption() {
        let dir = TempDir::new("roundtrip");
        let img = dir.path.join("fs.img");
        let big: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let big_src = dir.path.join("big.bin");
        let empty_src = dir.path.join("empty.bin");
        fs::write(&big_src, &big).unwrap();
        fs::write(&empty_src, b"").unwrap();

        assert_eq!(mkfs(&img, 16 << 20, 8).unwrap(), 4096);
        assert_eq!(fs::metadata(&img).unwrap().len(), 16 << 20);
        assert!((fsck(&img).unwrap().status == FsckStatus::Clean));
        assert!(ls(&img, "/").unwrap().is_empty());

        assert_eq!(put(&img, &big_src, "/big.bin", false).unwrap(), big.len());
        assert_eq!(put(&img, &empty_src, "/empty", false).unwrap(), 0);
        assert_eq!(
            put(&img, &big_src, "/a/b/deep.bin", false).unwrap(),
            big.len()
        );
        // Replacing keeps one entry.
        assert_eq!(put(&img, &big_src, "/big.bin", false).unwrap(), big.len());

        let root = ls(&img, "/").unwrap();
        let summary: Vec<_> = root
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.size))
            .collect();
        assert_eq!(
            summary,
            [
                ("a", Kind::Dir, 0),
                ("big.bin", Kind::File, big.len() as u64),
                ("empty", Kind::File, 0),
            ]
        );
        let deep = ls(&img, "/a/b").unwrap();
        assert_eq!(deep.len(), 1);
        assert_eq!(deep[0].name, "deep.bin");
        assert_eq!(deep[0].size, big.len() as u64);
        let one = ls(&img, "/a/b/deep.bin").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].kind, Kind::File);

        for (path, want) in [
            ("/big.bin", &big[..]),
            ("/empty", &[][..]),
            ("/a/b/deep.bin", &big[..]),
        ] {
            let out = dir.path.join("out.bin");
            assert_eq!(get(&img, path, &out).unwrap(), want.len());
            assert!(fs::read(&out).unwrap() == want, "{path} differs");
        }

        // Errors are reported, not panics, and leave the image clean.
        let err = get(&img, "/missing", &dir.path.join("x")).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = get(&img, "/a", &dir.path.join("x")).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(put(&img, &big_src, "/big.bin/x", false).is_err());
        assert!(put(&img, &big_src, "/", false).is_err());
        assert!(put(&img, &dir.path.join("nope"), "/x", false).is_err());
        assert!(ls(&img, "/nope").is_err());
        assert!(fsck(&dir.path.join("no.img")).is_err());

        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::Clean, "{:?}", report.lines);
        assert!(report.lines.is_empty());
        assert!(
            report.summary.contains("3 files, 3 directories"),
            "{}",
            report.summary
        );

        // Corrupt one byte of an inode-table block both superblocks reference, so that neither
        // generation's tree validates: fsck must report it.
        let mut bytes = fs::read(&img).unwrap();
        let (a, b) = (superblock(&bytes, 0), superblock(&bytes, 1));
        let shared = a.table[..a.inode_blocks as usize]
            .iter()
            .copied()
            .find(|blk| b.table[..b.inode_blocks as usize].contains(blk))
            .expect("an inode-table block shared by both generations");
        bytes[shared as usize * BLOCK_SIZE + 200] ^= 0x5a;
        fs::write(&img, &bytes).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::Corrupt);
        assert!(!report.lines.is_empty());
        assert!(
            report
                .lines
                .iter()
                .any(|l| l.contains(&format!("block {shared}"))),
            "{:?}",
            report.lines
        );
        assert!(report.summary.contains("problem"), "{}", report.summary);

        // Both superblocks broken: still a report, not an error.
        bytes[100] ^= 1;
        bytes[BLOCK_SIZE + 100] ^= 1;
        fs::write(&img, &bytes).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::Corrupt);
        assert!(report.lines.len() >= 2, "{:?}", report.lines);
        assert!(ls(&img, "/").is_err());
    }

    #[test]
    fn profile_images() {
        let dir = TempDir::new("profile");
        let img = dir.path.join("qemu").join("p.img");
        prepare(&img, 8, ImageFormat::Tinyfs, false).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 8 << 20);
        assert!((fsck(&img).unwrap().status == FsckStatus::Clean));
        let src = dir.path.join("f");
        fs::write(&src, b"kept").unwrap();
        put(&img, &src, "/f", false).unwrap();
        // Kept when it exists, made anew when fresh.
        prepare(&img, 8, ImageFormat::Tinyfs, false).unwrap();
        assert_eq!(ls(&img, "/").unwrap().len(), 1);
        prepare(&img, 8, ImageFormat::Tinyfs, true).unwrap();
        assert!(ls(&img, "/").unwrap().is_empty());
        prepare(&img, 8, ImageFormat::Raw, true).unwrap();
        assert!(fs::read(&img).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn fsck_counts_the_filesystems_blocks_not_the_images() {
        let dir = TempDir::new("count");
        let img = dir.path.join("p.img");
        // A profile image: the filesystem leaves the last MiB of the file out.
        prepare(&img, 8, ImageFormat::Tinyfs, true).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::Clean);
        assert!(
            report.summary.ends_with(" of 1792 blocks used"),
            "{}",
            report.summary
        );
    }

    /// An image of two generations: `/a` in the older, `/b` added by the newest, which
    /// rewrote one inode-table block; returns the image's bytes and that block.
    fn two_generations(dir: &TempDir) -> (PathBuf, Vec<u8>, u64) {
        let img = dir.path.join("fs.img");
        let src = dir.path.join("src");
        fs::write(&src, b"data").unwrap();
        mkfs(&img, 1 << 20, 2).unwrap();
        put(&img, &src, "/a", false).unwrap();
        put(&img, &src, "/b", false).unwrap();
        let bytes = fs::read(&img).unwrap();
        let (s0, s1) = (superblock(&bytes, 0), superblock(&bytes, 1));
        let (old, new) = if s0.generation > s1.generation {
            (s1, s0)
        } else {
            (s0, s1)
        };
        let only_new = new.table[..2]
            .iter()
            .copied()
            .find(|b| !old.table[..2].contains(b))
            .unwrap();
        (img, bytes, only_new)
    }

    fn exit_status(img: &Path) -> ExitCode {
        run(ImageCmd::Fsck {
            image: img.to_owned(),
        })
        .unwrap()
    }

    #[test]
    fn fsck_exit_status_tells_a_torn_superblock_from_a_corrupt_tree() {
        let dir = TempDir::new("exit");
        let (img, bytes, only_new) = two_generations(&dir);
        assert_eq!(exit_status(&img), ExitCode::SUCCESS);
        let newest = (0..2)
            .max_by_key(|&s| superblock(&bytes, s).generation)
            .unwrap();

        // The newest commit record torn after its first sector.
        let mut torn = bytes.clone();
        let o = newest as usize * BLOCK_SIZE;
        torn[o + 512..o + BLOCK_SIZE].fill(0);
        fs::write(&img, &torn).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::RolledBackTorn);
        assert!(
            report.lines.iter().any(|l| l.contains("FELL BACK")),
            "{:?}",
            report.lines
        );
        assert!(report.summary.contains("rolled back"), "{}", report.summary);
        assert_eq!(exit_status(&img), ExitCode::from(2));
        assert_eq!(ls(&img, "/").unwrap().len(), 1, "only /a: generation 2");

        // A block of the newest tree corrupt.
        let mut bad = bytes.clone();
        bad[only_new as usize * BLOCK_SIZE + 300] ^= 0x40;
        fs::write(&img, &bad).unwrap();
        let report = fsck(&img).unwrap();
        assert_eq!(report.status, FsckStatus::RolledBackCorrupt);
        assert!(
            report
                .lines
                .iter()
                .any(|l| l.contains(&format!("block {only_new}"))),
            "{:?}",
            report.lines
        );
        assert_eq!(exit_status(&img), ExitCode::from(3));
        // Reading works (the older generation); writing needs the rollback accepted.
        assert_eq!(ls(&img, "/").unwrap().len(), 1);
        let src = dir.path.join("src");
        let err = put(&img, &src, "/c", false).unwrap_err();
        assert!(err.to_string().contains("--accept-rollback"), "{err}");
        assert!(
            fs::read(&img).unwrap() == bad,
            "a refused put writes nothing"
        );
        put(&img, &src, "/c", true).unwrap();
        assert_eq!(exit_status(&img), ExitCode::SUCCESS);

        // A damaged older superblock: corrupt (1), and the newest still mounts.
        let mut old = bytes.clone();
        let o = (1 - newest) as usize * BLOCK_SIZE;
        old[o + 100] ^= 1;
        fs::write(&img, &old).unwrap();
        assert_eq!(fsck(&img).unwrap().status, FsckStatus::Corrupt);
        assert_eq!(exit_status(&img), ExitCode::FAILURE);
        assert_eq!(ls(&img, "/").unwrap().len(), 2);
    }
}
