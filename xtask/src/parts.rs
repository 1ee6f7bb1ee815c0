//! Partitioned test images, made by the standard Linux tools (`sfdisk` from util-linux's
//! `fdisk` package, `sgdisk` from `gdisk`), not by this project's own code.
//!
//! A profile's `image.partition` lists disks laid end to end in its image, each `KIND:MIB`
//! (the profile's drives cut the image into the disks with the raw driver's `offset`/`size`).
//! Each kind is one fixed layout, below; the kernel's partition tests
//! (`kernel/src/tests/partitions.rs`) expect exactly these values, so a change here is a change
//! there.
//!
//! - `mbr`: an MBR (DOS) table written by `sfdisk`: primary 1 (type 0x83) and 2 (type 0x0c),
//!   an extended partition 3 holding logical partitions 5 (type 0x83) and 6 (type 0x82).
//! - `mbr-nested`: `mbr`, and in the first sector of partition 1 a second MBR written by
//!   `sfdisk` (on a file of partition 1's size) with primaries 1 (sectors 2048+4096, type 0x83)
//!   and 2 (6144+8192, type 0x83): a partition table that a mapped device whose first sectors
//!   are partition 1's (a striped device with partition 1 as its first leg, a mirror of that)
//!   finds, as Linux's kpartx would.
//! - `gpt`: a GPT written by `sgdisk` with three named partitions: 1 `root` (Linux
//!   filesystem, 8300), 2 `swap space` (Linux swap, 8200), 3 `EFI system` (EF00).
//! - `gpt-damaged`: `gpt`, then a byte of the primary header (its first-usable field)
//!   changed, so that its CRC no longer matches: the backup header at the end of the disk
//!   must be used.
//! - `mbr-bad`: an MBR by `sfdisk` with primaries 1 (sectors 2048+8192) and 2 (10240+8192),
//!   then slots 3 and 4 filled in by hand: 3 overlaps 1 (4096+2048) and 4 reaches past the
//!   end of the disk (60000+10000 on a 32 MiB disk). Both must be refused, 1 and 2 kept.
//! - `gpt-tinyfs`: the disk of `cargo xtask run`: a GPT written by `sgdisk` with partition 1
//!   `tinyfs` (8300, sectors 2048..100351, 48 MiB) holding an empty tinyfs filesystem over the
//!   whole partition (as `cargo xtask mkfs` makes, and the kernel's own mkfs)
//!   and partition 2 `scratch` (8300, 100352..129023, 14 MiB, left zeroed).
//! - `gpt-4k`: a disk of 4096-byte logical blocks (QEMU's `logical_block_size=4096`) with a
//!   GPT in 4 KiB sectors: the header in block 1, the entry array in blocks 2..5, the backup at
//!   the end. `sgdisk` takes an image file's sectors to be 512 bytes (it asks the kernel only
//!   for block devices, and a loop device would need root), so this table is written by
//!   [`write_gpt`], this module's own writer (the one layout not made by the Linux tools; its
//!   512-byte output is checked with `sgdisk --verify` in the tests below). Partition 1
//!   `tinyfs` (8300, blocks 256..4351, 16 MiB), partition 2 `data` (8300, blocks 4352 to the
//!   last usable), both left zeroed.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// One disk of a partitioned image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRecipe {
    /// Its layout.
    pub kind: Layout,
    /// Its size in MiB.
    pub size_mib: u64,
}

/// The fixed layouts (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// sfdisk: primaries, an extended partition, two logical ones.
    Mbr,
    /// `Mbr` with a second sfdisk MBR in partition 1's first sector.
    MbrNested,
    /// sgdisk: three named GPT partitions.
    Gpt,
    /// `Gpt` with its primary header damaged.
    GptDamaged,
    /// An MBR with an overlapping and an out-of-disk entry added by hand.
    MbrBad,
    /// sgdisk: a `tinyfs` partition holding an empty filesystem and a `scratch` one.
    GptTinyfs,
    /// [`write_gpt`] in 4096-byte sectors: `tinyfs` and `data`.
    Gpt4k,
}

/// The sfdisk script of [`Layout::Mbr`] (sectors of 512 bytes): what the kernel test expects.
const MBR_SCRIPT: &str = "label: dos
label-id: 0x5ca1ab1e
start=2048, size=16384, type=83
start=18432, size=8192, type=c
start=26624, size=65536, type=5
start=28672, size=20480, type=83
start=51200, size=40960, type=82
";

/// The sfdisk script of the table [`Layout::MbrNested`] puts in partition 1 (sectors of 512
/// bytes, counted from partition 1's start): what the kernel's stack test expects.
const MBR_NESTED_SCRIPT: &str = "label: dos
label-id: 0x0dd1ab1e
start=2048, size=4096, type=83
start=6144, size=8192, type=83
";

/// Partition 1 of [`MBR_SCRIPT`]: first sector and sectors.
const MBR_P1: (u64, u64) = (2048, 16384);

/// The sfdisk script of [`Layout::MbrBad`], before the bad entries are added.
const MBR_BAD_SCRIPT: &str = "label: dos
start=2048, size=8192, type=83
start=10240, size=8192, type=83
";

/// The entries [`Layout::MbrBad`] adds in slots 3 and 4: (type, start, sectors).
const MBR_BAD_ENTRIES: [(u8, u32, u32); 2] = [(0x83, 4096, 2048), (0x83, 60000, 10000)];

/// The sgdisk arguments of [`Layout::Gpt`] (sectors of 512 bytes): what the kernel test
/// expects.
const GPT_ARGS: &[&str] = &[
    "--clear",
    "--new=1:2048:18431",
    "--typecode=1:8300",
    "--change-name=1:root",
    "--new=2:18432:26623",
    "--typecode=2:8200",
    "--change-name=2:swap space",
    "--new=3:26624:59391",
    "--typecode=3:ef00",
    "--change-name=3:EFI system",
];

/// The sgdisk arguments of [`Layout::GptTinyfs`] (sectors of 512 bytes).
const GPT_TINYFS_ARGS: &[&str] = &[
    "--clear",
    "--new=1:2048:100351",
    "--typecode=1:8300",
    "--change-name=1:tinyfs",
    "--new=2:100352:129023",
    "--typecode=2:8300",
    "--change-name=2:scratch",
];

/// Where [`Layout::GptTinyfs`]'s partition 1 starts and how long it is, in bytes.
pub const GPT_TINYFS_P1: (u64, u64) = (2048 * 512, 98304 * 512);

/// Smallest disk the layouts fit on, in MiB.
const MIN_MIB: u64 = 32;

impl Layout {
    /// Smallest disk this layout fits on, in MiB.
    fn min_mib(self) -> u64 {
        match self {
            Layout::GptTinyfs => 64,
            _ => MIN_MIB,
        }
    }
}

impl DiskRecipe {
    /// Parses `KIND:MIB`.
    pub fn parse(s: &str) -> Result<DiskRecipe> {
        let (kind, size) = s
            .split_once(':')
            .with_context(|| format!("partition entry {s:?} is not KIND:MIB"))?;
        let kind = match kind {
            "mbr" => Layout::Mbr,
            "mbr-nested" => Layout::MbrNested,
            "gpt" => Layout::Gpt,
            "gpt-damaged" => Layout::GptDamaged,
            "mbr-bad" => Layout::MbrBad,
            "gpt-tinyfs" => Layout::GptTinyfs,
            "gpt-4k" => Layout::Gpt4k,
            other => bail!(
                "unknown partition layout {other:?} (mbr, mbr-nested, gpt, gpt-damaged, mbr-bad, \
                 gpt-tinyfs, gpt-4k)"
            ),
        };
        let size_mib: u64 = size
            .parse()
            .with_context(|| format!("partition entry {s:?}: size is not a number of MiB"))?;
        let min = kind.min_mib();
        ensure!(
            size_mib >= min,
            "partition entry {s:?}: a disk of this layout needs at least {min} MiB"
        );
        Ok(DiskRecipe { kind, size_mib })
    }
}

/// The Debian command that installs sfdisk and sgdisk.
pub const TOOLS_INSTALL: &str =
    "apt-get update && apt-get install -y --no-install-recommends fdisk gdisk";

/// Makes sure `sfdisk` and `sgdisk` run; installs them as root on Debian.
pub fn ensure_tools() -> Result<()> {
    crate::workspace::ensure_installed(
        "the partitioning tools",
        " (the partitioned test images are made with them)",
        TOOLS_INSTALL,
        &|| crate::workspace::programs_missing(&["sfdisk", "sgdisk"]),
    )
}

/// Writes the disks of `recipes` end to end into the image at `path` (which must be large
/// enough): each is made in a file of its own by the tool, then copied in at its offset.
pub fn write(path: &Path, recipes: &[DiskRecipe]) -> Result<()> {
    ensure_tools()?;
    let mut image = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut offset = 0u64;
    for (k, r) in recipes.iter().enumerate() {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".disk{k}"));
        let tmp = Path::new(&tmp);
        let _ = fs::remove_file(tmp);
        fs::File::create(tmp)?.set_len(r.size_mib << 20)?;
        match r.kind {
            Layout::Mbr => sfdisk(tmp, MBR_SCRIPT)?,
            Layout::MbrNested => {
                sfdisk(tmp, MBR_SCRIPT)?;
                nested_mbr_into(tmp)?;
            }
            Layout::Gpt => sgdisk(tmp, GPT_ARGS)?,
            Layout::Gpt4k => {
                let blocks = (r.size_mib << 20) / 4096;
                let parts = [
                    GptPart::linux(256, 4351, "tinyfs"),
                    GptPart::linux(4352, last_usable(blocks, 4096), "data"),
                ];
                write_gpt(tmp, 4096, &parts)?;
            }
            Layout::GptTinyfs => {
                sgdisk(tmp, GPT_TINYFS_ARGS)?;
                tinyfs_into(tmp, GPT_TINYFS_P1)?;
            }
            Layout::GptDamaged => {
                sgdisk(tmp, GPT_ARGS)?;
                damage_primary_gpt(tmp)?;
            }
            Layout::MbrBad => {
                sfdisk(tmp, MBR_BAD_SCRIPT)?;
                add_bad_mbr_entries(tmp)?;
            }
        }
        let bytes = fs::read(tmp)?;
        fs::remove_file(tmp)?;
        image.seek(SeekFrom::Start(offset))?;
        image.write_all(&bytes)?;
        offset += r.size_mib << 20;
    }
    Ok(())
}

/// Writes [`MBR_NESTED_SCRIPT`] with sfdisk on a file of partition 1's size and copies its
/// first sector (the MBR) to partition 1's first sector of `disk`.
fn nested_mbr_into(disk: &Path) -> Result<()> {
    let mut inner = disk.as_os_str().to_owned();
    inner.push(".p1");
    let inner = Path::new(&inner);
    fs::File::create(inner)?.set_len(MBR_P1.1 * 512)?;
    let made = sfdisk(inner, MBR_NESTED_SCRIPT).and_then(|()| Ok(fs::read(inner)?));
    let _ = fs::remove_file(inner);
    let bytes = made?;
    let mut f = fs::OpenOptions::new().write(true).open(disk)?;
    f.seek(SeekFrom::Start(MBR_P1.0 * 512))?;
    f.write_all(&bytes[..512])?;
    Ok(())
}

fn sfdisk(disk: &Path, script: &str) -> Result<()> {
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running sfdisk")?;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(script.as_bytes())?;
    let status = child.wait()?;
    ensure!(status.success(), "sfdisk failed on {}", disk.display());
    Ok(())
}

fn sgdisk(disk: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("sgdisk")
        .args(args)
        .arg(disk)
        .output()
        .context("running sgdisk")?;
    ensure!(
        out.status.success(),
        "sgdisk failed on {}: {}",
        disk.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One partition for [`write_gpt`]: first and last logical block (inclusive), type, name.
#[derive(Clone, Copy, Debug)]
pub struct GptPart {
    pub first: u64,
    pub last: u64,
    pub type_guid: &'static str,
    pub name: &'static str,
}

/// The Linux filesystem data type (sgdisk's 8300).
const LINUX_FS_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

impl GptPart {
    /// A Linux filesystem partition.
    pub fn linux(first: u64, last: u64, name: &'static str) -> GptPart {
        GptPart {
            first,
            last,
            type_guid: LINUX_FS_GUID,
            name,
        }
    }
}

/// Entries of the GPT entry array [`write_gpt`] writes, and their size in bytes.
const GPT_ENTRIES: u64 = 128;
const GPT_ENTRY_BYTES: u64 = 128;

/// Blocks of the entry array in `sector`-byte blocks.
fn entry_blocks(sector: u64) -> u64 {
    (GPT_ENTRIES * GPT_ENTRY_BYTES).div_ceil(sector)
}

/// The last usable block of a GPT on a disk of `blocks` blocks of `sector` bytes: before the
/// backup entry array and header.
pub fn last_usable(blocks: u64, sector: u64) -> u64 {
    blocks - 2 - entry_blocks(sector)
}

/// The 16 bytes of a GUID written as text (`0FC63DAF-8483-...`): the first three fields little
/// endian, the last two as written.
fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    ensure!(hex.len() == 32, "GUID {text:?} is not 32 hex digits");
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("GUID {text:?}"))?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xedb88320) as the GPT uses it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// A GPT header for the copy at `my_lba` (the other at `alternate`, entries at `entries_lba`).
fn gpt_header(
    my_lba: u64,
    alternate: u64,
    entries_lba: u64,
    (first_usable, last_usable): (u64, u64),
    entries_crc: u32,
) -> [u8; 92] {
    let mut h = [0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    // A fixed disk GUID: the test images are reproducible.
    h[56..72].copy_from_slice(&[
        0x5c, 0xa1, 0xab, 0x1e, 0x4b, 0x1c, 0x4b, 0x40, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04,
        0x0b,
    ]);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(GPT_ENTRY_BYTES as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes a GPT in `sector`-byte logical blocks on `disk` (its whole length): a protective MBR
/// in block 0, the header in block 1 and the entry array after it, the backup entry array and
/// header at the end, `parts` as entries 1, 2, ...
pub fn write_gpt(disk: &Path, sector: u64, parts: &[GptPart]) -> Result<()> {
    ensure!(
        sector.is_power_of_two() && (512..=65536).contains(&sector),
        "sector size {sector} is not a power of two in 512..=65536"
    );
    let bytes = fs::metadata(disk)?.len();
    let blocks = bytes / sector;
    let eb = entry_blocks(sector);
    let usable = (2 + eb, last_usable(blocks, sector));
    ensure!(
        blocks > 2 * (2 + eb),
        "{} is too small for a GPT",
        disk.display()
    );
    let mut entries = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_BYTES) as usize];
    ensure!(parts.len() <= GPT_ENTRIES as usize, "too many partitions");
    for (i, p) in parts.iter().enumerate() {
        ensure!(
            usable.0 <= p.first && p.first <= p.last && p.last <= usable.1,
            "partition {} ({}..={}) is outside the usable blocks {}..={}",
            i + 1,
            p.first,
            p.last,
            usable.0,
            usable.1
        );
        let e = &mut entries[i * GPT_ENTRY_BYTES as usize..(i + 1) * GPT_ENTRY_BYTES as usize];
        e[0..16].copy_from_slice(&guid_bytes(p.type_guid)?);
        // A unique GUID per partition, derived from its number (reproducible images).
        let mut unique = guid_bytes("6E0B51A2-7C1D-4B6E-9F00-000000000000")?;
        unique[15] = i as u8 + 1;
        e[16..32].copy_from_slice(&unique);
        e[32..40].copy_from_slice(&p.first.to_le_bytes());
        e[40..48].copy_from_slice(&p.last.to_le_bytes());
        let name: Vec<u16> = p.name.encode_utf16().collect();
        ensure!(name.len() <= 36, "partition name {:?} is too long", p.name);
        for (k, c) in name.iter().enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
        }
    }
    let crc = crc32(&entries);
    let last = blocks - 1;
    let backup_entries = last - eb;
    let primary = gpt_header(1, last, 2, usable, crc);
    let backup = gpt_header(last, 1, backup_entries, usable, crc);

    let mut mbr = [0u8; 512];
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pe[4] = 0xee;
    pe[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let mut f = fs::OpenOptions::new().write(true).open(disk)?;
    for (at, data) in [
        (0, &mbr[..]),
        (sector, &primary[..]),
        (2 * sector, &entries[..]),
        (backup_entries * sector, &entries[..]),
        (last * sector, &backup[..]),
    ] {
        f.seek(SeekFrom::Start(at))?;
        f.write_all(data)?;
    }
    Ok(())
}

/// Writes an empty tinyfs filesystem (`cargo xtask mkfs`) over the whole partition at
/// `(start, len)` bytes of `disk`.
fn tinyfs_into(disk: &Path, (start, len): (u64, u64)) -> Result<()> {
    crate::image::mkfs_into(disk, start, len).map(|_| ())
}

/// Changes the primary GPT header's first-usable field (LBA 1, bytes 40..48) without fixing
/// its CRC.
fn damage_primary_gpt(disk: &Path) -> Result<()> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let mut sig = [0u8; 8];
    f.seek(SeekFrom::Start(512))?;
    std::io::Read::read_exact(&mut f, &mut sig)?;
    ensure!(
        &sig == b"EFI PART",
        "no primary GPT header in {}",
        disk.display()
    );
    f.seek(SeekFrom::Start(512 + 40))?;
    f.write_all(&[0x7f, 0, 0, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// Writes [`MBR_BAD_ENTRIES`] into MBR slots 3 and 4 (which sfdisk left empty).
fn add_bad_mbr_entries(disk: &Path) -> Result<()> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut f, &mut mbr)?;
    ensure!(mbr[510..] == [0x55, 0xaa], "no MBR in {}", disk.display());
    for (k, (ty, start, len)) in MBR_BAD_ENTRIES.into_iter().enumerate() {
        let e = 446 + 16 * (2 + k);
        ensure!(
            mbr[e + 4] == 0,
            "MBR slot {} of {} is not empty",
            3 + k,
            disk.display()
        );
        mbr[e + 4] = ty;
        mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        mbr[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    }
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_parse() {
        assert_eq!(
            DiskRecipe::parse("gpt-damaged:32").unwrap(),
            DiskRecipe {
                kind: Layout::GptDamaged,
                size_mib: 32
            }
        );
        assert_eq!(
            DiskRecipe::parse("gpt-tinyfs:64").unwrap().kind,
            Layout::GptTinyfs
        );
        assert_eq!(DiskRecipe::parse("gpt-4k:32").unwrap().kind, Layout::Gpt4k);
        assert_eq!(
            DiskRecipe::parse("mbr-nested:64").unwrap().kind,
            Layout::MbrNested
        );
        for bad in ["gpt", "mbr:x", "ext4:64", "gpt:8", "gpt-tinyfs:32"] {
            assert!(DiskRecipe::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            guid_bytes(LINUX_FS_GUID).unwrap()[..8],
            [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47]
        );
    }

    /// `mbr-nested`: the outer table as `mbr`, and sfdisk's inner MBR in partition 1's first
    /// sector with its two entries.
    #[test]
    fn nested_mbr_in_partition_1() {
        ensure_tools().unwrap();
        let dir = std::env::temp_dir().join(format!("xtask-nested-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        write(&img, &[DiskRecipe::parse("mbr-nested:64").unwrap()]).unwrap();
        let bytes = fs::read(&img).unwrap();
        let entry = |sector: usize, k: usize| {
            let e = sector * 512 + 446 + 16 * k;
            let le = |o: usize| u32::from_le_bytes(bytes[e + o..e + o + 4].try_into().unwrap());
            (bytes[e + 4], le(8), le(12))
        };
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(entry(0, 0), (0x83, 2048, 16384));
        let inner = MBR_P1.0 as usize;
        assert_eq!(&bytes[inner * 512 + 510..inner * 512 + 512], &[0x55, 0xaa]);
        assert_eq!(entry(inner, 0), (0x83, 2048, 4096));
        assert_eq!(entry(inner, 1), (0x83, 6144, 8192));
        assert_eq!(entry(inner, 2), (0, 0, 0));
        let _ = fs::remove_dir_all(&dir);
    }

    /// The own GPT writer in 512-byte sectors, checked by sgdisk (which reads image files in
    /// 512-byte sectors only), and its 4 KiB layout's blocks.
    #[test]
    fn own_gpt_passes_sgdisk_verify() {
        ensure_tools().unwrap();
        let dir = std::env::temp_dir().join(format!("xtask-gpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
        let blocks = (8u64 << 20) / 512;
        let parts = [
            GptPart::linux(2048, 4095, "tinyfs"),
            GptPart::linux(4096, last_usable(blocks, 512), "data"),
        ];
        write_gpt(&disk, 512, &parts).unwrap();
        let out = Command::new("sgdisk")
            .arg("--verify")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "{text}"
        );
        let out = Command::new("sgdisk")
            .arg("--info=2")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("First sector: 4096") && text.contains("'data'"),
            "{text}"
        );
        // 4 KiB sectors: header in block 1, backup header in the last block.
        fs::File::create(&disk).unwrap().set_len(32 << 20).unwrap();
        let parts = [GptPart::linux(256, 4351, "tinyfs")];
        write_gpt(&disk, 4096, &parts).unwrap();
        let bytes = fs::read(&disk).unwrap();
        assert_eq!(&bytes[4096..4104], b"EFI PART");
        assert_eq!(&bytes[(32 << 20) - 4096..(32 << 20) - 4088], b"EFI PART");
        assert_eq!(last_usable(8192, 4096), 8186);
        assert!(write_gpt(&disk, 4096, &[GptPart::linux(1, 10, "x")]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
