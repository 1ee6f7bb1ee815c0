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
//! - `gpt`: a GPT written by `sgdisk` with three named partitions: 1 `root` (Linux
//!   filesystem, 8300), 2 `swap space` (Linux swap, 8200), 3 `EFI system` (EF00).
//! - `gpt-damaged`: `gpt`, then a byte of the primary header (its first-usable field)
//!   changed, so that its CRC no longer matches: the backup header at the end of the disk
//!   must be used.
//! - `mbr-bad`: an MBR by `sfdisk` with primaries 1 (sectors 2048+8192) and 2 (10240+8192),
//!   then slots 3 and 4 filled in by hand: 3 overlaps 1 (4096+2048) and 4 reaches past the
//!   end of the disk (60000+10000 on a 32 MiB disk). Both must be refused, 1 and 2 kept.

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
    /// sgdisk: three named GPT partitions.
    Gpt,
    /// `Gpt` with its primary header damaged.
    GptDamaged,
    /// An MBR with an overlapping and an out-of-disk entry added by hand.
    MbrBad,
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

/// Smallest disk the layouts fit on, in MiB.
const MIN_MIB: u64 = 32;

impl DiskRecipe {
    /// Parses `KIND:MIB`.
    pub fn parse(s: &str) -> Result<DiskRecipe> {
        let (kind, size) = s
            .split_once(':')
            .with_context(|| format!("partition entry {s:?} is not KIND:MIB"))?;
        let kind = match kind {
            "mbr" => Layout::Mbr,
            "gpt" => Layout::Gpt,
            "gpt-damaged" => Layout::GptDamaged,
            "mbr-bad" => Layout::MbrBad,
            other => bail!("unknown partition layout {other:?} (mbr, gpt, gpt-damaged, mbr-bad)"),
        };
        let size_mib: u64 = size
            .parse()
            .with_context(|| format!("partition entry {s:?}: size is not a number of MiB"))?;
        ensure!(
            size_mib >= MIN_MIB,
            "partition entry {s:?}: a disk of these layouts needs at least {MIN_MIB} MiB"
        );
        Ok(DiskRecipe { kind, size_mib })
    }
}

/// The Debian command that installs sfdisk and sgdisk.
pub const TOOLS_INSTALL: &str =
    "apt-get update && apt-get install -y --no-install-recommends fdisk gdisk";

/// Makes sure `sfdisk` and `sgdisk` run; installs them as root on Debian.
pub fn ensure_tools() -> Result<()> {
    let missing = || -> Vec<&'static str> {
        ["sfdisk", "sgdisk"]
            .into_iter()
            .filter(|bin| {
                Command::new(bin)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_err()
            })
            .collect()
    };
    let absent = missing();
    if absent.is_empty() {
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists();
    if debian && crate::workspace::is_root() {
        eprintln!("{} missing; running: {TOOLS_INSTALL}", absent.join(", "));
        let status = Command::new("sh").args(["-c", TOOLS_INSTALL]).status()?;
        ensure!(
            status.success(),
            "installing the partitioning tools failed: {TOOLS_INSTALL}"
        );
        let still = missing();
        ensure!(
            still.is_empty(),
            "still missing after install: {}",
            still.join(", ")
        );
        return Ok(());
    }
    bail!(
        "{} not found (the partitioned test images are made with them). Install them{}:\n    {TOOLS_INSTALL}",
        absent.join(", "),
        if debian {
            " as root"
        } else {
            " (Debian command shown)"
        }
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
            Layout::Gpt => sgdisk(tmp)?,
            Layout::GptDamaged => {
                sgdisk(tmp)?;
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

fn sgdisk(disk: &Path) -> Result<()> {
    let out = Command::new("sgdisk")
        .args(GPT_ARGS)
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
        for bad in ["gpt", "mbr:x", "ext4:64", "gpt:8"] {
            assert!(DiskRecipe::parse(bad).is_err(), "{bad}");
        }
    }
}
