//! QEMU profiles: one TOML file per architecture and disk controller in `qemu/`.
//!
//! A profile is data only. xtask adds what every boot needs (`-serial stdio`, `-kernel`,
//! `-append`, the accelerator, gdb flags); the profile names the machine, its devices, its drives
//! and what the in-kernel test suite should find.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use serde::Deserialize;

/// A guest architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    Riscv64,
}

impl Arch {
    /// The Rust target the kernel is built for.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Riscv64 => "riscv64gc-unknown-none-elf",
        }
    }

    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Riscv64 => "qemu-system-riscv64",
        }
    }

    pub fn gdb(self) -> &'static str {
        match self {
            Arch::X86_64 => "gdb",
            Arch::Riscv64 => "gdb-multiarch",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Riscv64 => "riscv64",
        })
    }
}

/// The disk controller a profile attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Disk {
    None,
    Virtio,
    Ahci,
    Nvme,
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disk::None => "none",
            Disk::Virtio => "virtio",
            Disk::Ahci => "ahci",
            Disk::Nvme => "nvme",
        })
    }
}

/// QEMU exit statuses that mean the kernel reported success or failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitCodes {
    pub success: i32,
    pub failure: i32,
}

/// A disk image xtask creates for the `{image}` placeholder.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Size of the image in MiB.
    pub size_mib: u64,
    /// What a new image holds; without it, `run` makes a tinyfs image and `test` a zeroed one.
    pub format: Option<ImageFormat>,
    /// Disks laid end to end in a raw image, each `KIND:MIB` with a partition table made by
    /// the Linux tools (`crate::parts`).
    #[serde(default)]
    pub partition: Vec<String>,
}

impl ImageSpec {
    /// The disks of `partition`, parsed.
    pub fn disks(&self) -> Result<Vec<crate::parts::DiskRecipe>> {
        self.partition
            .iter()
            .map(|s| crate::parts::DiskRecipe::parse(s))
            .collect()
    }

    /// The format of an image made for `run` (`for_test == false`) or for a test boot.
    pub fn format_for(&self, for_test: bool) -> ImageFormat {
        match self.format {
            Some(format) => format,
            None if for_test => ImageFormat::Raw,
            None => ImageFormat::Tinyfs,
        }
    }
}

/// The contents of a new disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// All zeros.
    Raw,
    /// An empty tinyfs filesystem (`cargo xtask mkfs`).
    Tinyfs,
}

/// One `qemu/<name>.toml` file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// File stem, e.g. `x86_64-virtio`; used as the label of every output line.
    #[serde(skip)]
    pub name: String,
    pub description: String,
    pub arch: Arch,
    pub disk: Disk,
    /// Disk kinds that must attach (`expect=` on the kernel command line); without the key,
    /// `disk` (nothing for `none`). The boot fails when one does not attach, and tests of
    /// these kinds never count as skipped.
    pub expect: Option<Vec<Disk>>,
    /// Machine, memory, firmware and display arguments, one option with its value per entry.
    pub machine: Vec<String>,
    /// Devices (exit device, PCI test devices, disk controllers).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Block backends; may use `{image}`.
    #[serde(default)]
    pub drives: Vec<String>,
    /// Present when the drives use `{image}`.
    pub image: Option<ImageSpec>,
    /// PCI `vendor:device` pairs (hex) the test suite must find.
    #[serde(default)]
    pub expect_pci: Vec<String>,
    /// Extra kernel command-line words, in every mode.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Cargo features of the kernel build.
    #[serde(default)]
    pub features: Vec<String>,
    /// Seconds a whole test boot may take before the guest is killed.
    pub timeout: u64,
    /// Seconds one in-kernel test may run before the guest is killed.
    pub test_timeout: u64,
    pub exit: ExitCodes,
    /// Whether `cargo xtask test` boots this profile without an explicit `--disk`.
    #[serde(default = "yes")]
    pub test: bool,
    /// Boot through this firmware path instead of QEMU's direct kernel load: xtask builds the
    /// medium (with the command line in it) for `{boot}` and adds the firmware's arguments.
    pub boot: Option<crate::firmware::BootPath>,
    /// CPUs of the guest (`-smp N`); 1 when absent.
    #[serde(default = "one")]
    pub smp: u32,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// Most CPUs a profile may ask for (the kernel brings up at most this many).
pub const MAX_SMP: u32 = 8;

/// The CPU model of x86_64 profiles that name none: QEMU's default `qemu64` plus SSE4.2, whose
/// `crc32` instruction the kernel uses for the filesystem's checksums (every x86_64 CPU since
/// 2008 has it). A profile that wants the bare model (the software checksum) says `-cpu qemu64`.
pub const X86_64_CPU: &str = "qemu64,+sse4.2";

/// Values substituted into profile arguments.
#[derive(Debug, Default)]
pub struct Placeholders {
    pub image: Option<PathBuf>,
    /// The boot medium of a profile with `boot`.
    pub boot: Option<PathBuf>,
}

const PLACEHOLDERS: &[&str] = &["image", "boot"];

impl Profile {
    pub fn parse(name: &str, text: &str) -> Result<Profile> {
        let mut profile: Profile = toml::from_str(text)?;
        profile.name = name.to_owned();
        profile.validate()?;
        Ok(profile)
    }

    fn validate(&self) -> Result<()> {
        for pair in &self.expect_pci {
            parse_pci_id(pair)?;
        }
        if let Some(expect) = &self.expect {
            ensure!(
                !expect.contains(&Disk::None),
                "expect lists disk kinds (virtio, ahci, nvme); leave \"none\" out"
            );
        }
        let (mut uses_image, mut uses_boot) = (false, false);
        for arg in self.all_args() {
            for key in placeholders_in(arg)? {
                ensure!(
                    PLACEHOLDERS.contains(&key),
                    "unknown placeholder {{{key}}} in {arg:?} (known: {PLACEHOLDERS:?})"
                );
                uses_image |= key == "image";
                uses_boot |= key == "boot";
            }
        }
        ensure!(
            uses_boot == self.boot.is_some(),
            "a profile names a boot path (`boot`) exactly when its arguments place the medium {{boot}}"
        );
        if let Some(path) = self.boot {
            ensure!(
                self.arch == path.arch(),
                "boot path {} is for {}, not {}",
                path.name(),
                path.arch(),
                self.arch
            );
            ensure!(
                self.name.is_empty() || self.name.ends_with(&format!("-{}", path.name())),
                "a profile booting through {0} is named *-{0}",
                path.name()
            );
        }
        ensure!(
            uses_image == self.image.is_some(),
            "a profile has an [image] table exactly when its arguments use {{image}}"
        );
        if let Some(image) = &self.image {
            ensure!(image.size_mib > 0, "image size_mib must be positive");
            let tinyfs_max = crate::image::MAX_BYTES >> 20;
            ensure!(
                image.format == Some(ImageFormat::Raw) || image.size_mib <= tinyfs_max,
                "image size_mib = {} is larger than a tinyfs image can be ({tinyfs_max}); \
                 use format = \"raw\" for a bigger disk",
                image.size_mib
            );
            let disks = image.disks()?;
            if !disks.is_empty() {
                ensure!(
                    image.format == Some(ImageFormat::Raw),
                    "an image with `partition` disks must have format = \"raw\""
                );
                let total: u64 = disks.iter().map(|d| d.size_mib).sum();
                ensure!(
                    total <= image.size_mib,
                    "the partitioned disks take {total} MiB, more than the image's {}",
                    image.size_mib
                );
            }
        }
        ensure!(
            self.timeout > 0 && self.test_timeout > 0,
            "timeouts must be positive"
        );
        ensure!(
            (1..=MAX_SMP).contains(&self.smp),
            "smp = {} is out of range (1..={MAX_SMP})",
            self.smp
        );
        ensure!(
            self.smp == 1
                || !self
                    .all_args()
                    .any(|a| a.split_whitespace().any(|w| w == "-smp")),
            "smp = {} and -smp in the arguments: give the CPU count once",
            self.smp
        );
        for word in &self.cmdline {
            ensure!(
                !word.is_empty() && !word.contains(char::is_whitespace),
                "cmdline entries are single words: {word:?}"
            );
        }
        Ok(())
    }

    fn all_args(&self) -> impl Iterator<Item = &String> {
        self.machine.iter().chain(&self.devices).chain(&self.drives)
    }

    /// The profile's QEMU arguments with placeholders filled in, `-smp N` first when the profile
    /// has more than one CPU, then on x86_64 [`X86_64_CPU`] unless the profile names a `-cpu`. Each entry is split on whitespace before substitution, so
    /// substituted paths may contain spaces.
    pub fn qemu_args(&self, values: &Placeholders) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if self.smp > 1 {
            out.extend(["-smp".to_owned(), self.smp.to_string()]);
        }
        if self.arch == Arch::X86_64
            && !self
                .all_args()
                .any(|a| a.split_whitespace().any(|w| w == "-cpu"))
        {
            out.extend(["-cpu".to_owned(), X86_64_CPU.to_owned()]);
        }
        for entry in self.all_args() {
            for word in entry.split_whitespace() {
                out.push(substitute(word, values)?);
            }
        }
        Ok(out)
    }

    /// The disk kinds that must attach: `expect`, or else the profile's `disk`.
    pub fn expected_disks(&self) -> Vec<Disk> {
        match &self.expect {
            Some(kinds) => kinds.clone(),
            None if self.disk == Disk::None => Vec::new(),
            None => vec![self.disk],
        }
    }

    /// `expect=KIND,...`, or nothing when no disk must attach.
    pub fn expect_word(&self) -> Option<String> {
        let kinds = self.expected_disks();
        if kinds.is_empty() {
            return None;
        }
        let words: Vec<String> = kinds.iter().map(ToString::to_string).collect();
        Some(format!("expect={}", words.join(",")))
    }

    /// `expect_pci=VVVV:DDDD,...`, or nothing when the profile expects no devices.
    pub fn expect_pci_word(&self) -> Option<String> {
        if self.expect_pci.is_empty() {
            None
        } else {
            Some(format!("expect_pci={}", self.expect_pci.join(",")))
        }
    }
}

fn parse_pci_id(pair: &str) -> Result<(u16, u16)> {
    let parse = || {
        let (vendor, device) = pair.split_once(':')?;
        if vendor.len() != 4 || device.len() != 4 {
            return None;
        }
        Some((
            u16::from_str_radix(vendor, 16).ok()?,
            u16::from_str_radix(device, 16).ok()?,
        ))
    };
    parse().with_context(|| format!("expect_pci entry {pair:?} is not VVVV:DDDD in hex"))
}

fn placeholders_in(arg: &str) -> Result<Vec<&str>> {
    let mut keys = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            bail!("unclosed '{{' in {arg:?}");
        };
        keys.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    Ok(keys)
}

fn substitute(word: &str, values: &Placeholders) -> Result<String> {
    let mut out = word.to_owned();
    for key in placeholders_in(word)? {
        let value = match key {
            "image" => values
                .image
                .as_deref()
                .context("the profile uses {image} but no image was prepared")?
                .to_str()
                .context("image path is not UTF-8")?
                .to_owned(),
            "boot" => values
                .boot
                .as_deref()
                .context("the profile uses {boot} but no boot medium was built")?
                .to_str()
                .context("boot medium path is not UTF-8")?
                .to_owned(),
            other => bail!("unknown placeholder {{{other}}}"),
        };
        out = out.replace(&format!("{{{key}}}"), &value);
    }
    Ok(out)
}

/// Every profile in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Profile>> {
    let mut found = BTreeMap::new();
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .context("profile file name is not UTF-8")?
            .to_owned();
        let text = fs::read_to_string(&path)?;
        let profile =
            Profile::parse(&name, &text).with_context(|| format!("in {}", path.display()))?;
        found.insert(name, profile);
    }
    Ok(found.into_values().collect())
}

/// Profiles a `test` run boots: all that match the filters; without `--disk`, only those
/// marked `test = true`.
pub fn select_for_test(all: &[Profile], arch: Option<Arch>, disk: Option<Disk>) -> Vec<Profile> {
    all.iter()
        .filter(|p| arch.is_none_or(|a| p.arch == a))
        .filter(|p| match disk {
            Some(d) => p.disk == d,
            None => p.test,
        })
        .cloned()
        .collect()
}

/// The profile a `run` boots: the one named `ARCH-DISK` (`ARCH` for no disk) if there is one,
/// else the first (by name) matching arch and disk.
pub fn select_for_run(all: &[Profile], arch: Arch, disk: Disk) -> Result<Profile> {
    let plain = match disk {
        Disk::None => arch.to_string(),
        _ => format!("{arch}-{disk}"),
    };
    let mut matching: Vec<_> = all
        .iter()
        .filter(|p| p.arch == arch && p.disk == disk)
        .collect();
    matching.sort_by_key(|p| p.name != plain);
    match matching.first() {
        Some(first) => {
            if matching.len() > 1 {
                let others: Vec<_> = matching[1..].iter().map(|p| p.name.as_str()).collect();
                eprintln!(
                    "note: using profile {} (also matching: {}; pick one with --profile)",
                    first.name,
                    others.join(", ")
                );
            }
            Ok((*first).clone())
        }
        None => {
            let names: Vec<_> = all
                .iter()
                .filter(|p| p.arch == arch)
                .map(|p| format!("{} (disk {})", p.name, p.disk))
                .collect();
            bail!(
                "no profile in qemu/ for {arch} with disk {disk}; available for {arch}: {}",
                names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        description = "sample"
        arch = "riscv64"
        disk = "virtio"
        machine = ["-machine virt", "-m 128M"]
        devices = ["-device virtio-blk-device,drive=d0"]
        drives = ["-drive if=none,id=d0,format=raw,file={image}"]
        image = { size_mib = 16 }
        expect_pci = ["1234:11e8", "1b36:0008"]
        cmdline = ["log=debug"]
        timeout = 300
        test_timeout = 60
        exit = { success = 0, failure = 1 }
    "#;

    #[test]
    fn parses_and_substitutes() {
        let p = Profile::parse("riscv64-virtio-mmio", SAMPLE).unwrap();
        assert_eq!(p.arch, Arch::Riscv64);
        assert!(p.test);
        let values = Placeholders {
            image: Some(PathBuf::from("/tmp/a b/disk.img")),
            boot: None,
        };
        let args = p.qemu_args(&values).unwrap();
        assert_eq!(args[..4], ["-machine", "virt", "-m", "128M"]);
        assert_eq!(
            args.last().unwrap(),
            "if=none,id=d0,format=raw,file=/tmp/a b/disk.img"
        );
        assert_eq!(
            p.expect_pci_word().unwrap(),
            "expect_pci=1234:11e8,1b36:0008"
        );
    }

    #[test]
    fn expected_disks_follow_disk_unless_named() {
        let p = Profile::parse("x", SAMPLE).unwrap();
        assert_eq!(p.expected_disks(), [Disk::Virtio]);
        assert_eq!(p.expect_word().unwrap(), "expect=virtio");
        let none = SAMPLE.replace("disk = \"virtio\"", "disk = \"none\"");
        let p = Profile::parse("x", &none).unwrap();
        assert!(p.expected_disks().is_empty());
        assert_eq!(p.expect_word(), None);
        let two = SAMPLE.replace(
            "disk = \"virtio\"",
            "disk = \"virtio\"\nexpect = [\"virtio\", \"nvme\"]",
        );
        let p = Profile::parse("x", &two).unwrap();
        assert_eq!(p.expect_word().unwrap(), "expect=virtio,nvme");
        let nothing = SAMPLE.replace("disk = \"virtio\"", "disk = \"virtio\"\nexpect = []");
        assert_eq!(Profile::parse("x", &nothing).unwrap().expect_word(), None);
        let bad = SAMPLE.replace(
            "disk = \"virtio\"",
            "disk = \"virtio\"\nexpect = [\"none\"]",
        );
        assert!(Profile::parse("x", &bad).is_err());
        let unknown = SAMPLE.replace(
            "disk = \"virtio\"",
            "disk = \"virtio\"\nexpect = [\"scsi\"]",
        );
        assert!(Profile::parse("x", &unknown).is_err());
    }

    #[test]
    fn x86_64_gets_a_cpu_model_unless_it_names_one() {
        let values = Placeholders {
            image: Some(PathBuf::from("disk.img")),
            ..Placeholders::default()
        };
        let cpu = |text: &str| {
            let args = Profile::parse("x", text)
                .unwrap()
                .qemu_args(&values)
                .unwrap();
            let at = args.iter().position(|a| a == "-cpu");
            assert_eq!(
                args.iter().filter(|a| *a == "-cpu").count(),
                usize::from(at.is_some())
            );
            at.map(|i| args[i + 1].clone())
        };
        assert_eq!(cpu(SAMPLE), None);
        let x86 = SAMPLE
            .replace("riscv64", "x86_64")
            .replace("-machine virt", "-machine q35");
        assert_eq!(cpu(&x86).as_deref(), Some(X86_64_CPU));
        let named = x86.replace("\"-m 128M\"", "\"-m 128M\", \"-cpu qemu64\"");
        assert_eq!(cpu(&named).as_deref(), Some("qemu64"));
    }

    #[test]
    fn smp_adds_the_cpu_count() {
        let p = Profile::parse("x", SAMPLE).unwrap();
        assert_eq!(p.smp, 1);
        let values = Placeholders {
            image: Some(PathBuf::from("disk.img")),
            ..Placeholders::default()
        };
        assert!(!p.qemu_args(&values).unwrap().contains(&"-smp".to_owned()));
        let four = SAMPLE.replace("timeout = 300", "timeout = 300\nsmp = 4");
        let p = Profile::parse("x", &four).unwrap();
        assert_eq!(p.smp, 4);
        assert_eq!(p.qemu_args(&values).unwrap()[..2], ["-smp", "4"]);
        for bad in ["smp = 0", "smp = 9"] {
            let text = SAMPLE.replace("timeout = 300", &format!("timeout = 300\n{bad}"));
            assert!(Profile::parse("x", &text).is_err(), "{bad}");
        }
        let raw = SAMPLE.replace("\"-m 128M\"", "\"-m 128M\", \"-smp 2\"");
        assert!(Profile::parse("x", &raw).is_ok());
        let both = raw.replace("timeout = 300", "timeout = 300\nsmp = 4");
        assert!(Profile::parse("x", &both).is_err());
    }

    #[test]
    fn missing_image_is_an_error() {
        let p = Profile::parse("x", SAMPLE).unwrap();
        assert!(p.qemu_args(&Placeholders::default()).is_err());
    }

    #[test]
    fn rejects_bad_profiles() {
        let bad_pci = SAMPLE.replace("1b36:0008", "1b36-0008");
        assert!(Profile::parse("x", &bad_pci).is_err());
        let unknown = SAMPLE.replace("{image}", "{disk}");
        assert!(Profile::parse("x", &unknown).is_err());
        let no_image_table = SAMPLE.replace("image = { size_mib = 16 }", "");
        assert!(Profile::parse("x", &no_image_table).is_err());
        let typo = SAMPLE.replace("test_timeout", "test_timout");
        assert!(Profile::parse("x", &typo).is_err());
        for image in [
            "image = { size_mib = 0 }",
            "image = { size_mib = 16, format = \"ext4\" }",
            "image = { size_mib = 16, formt = \"raw\" }",
            "image = { size_mib = 33554432, format = \"tinyfs\" }",
            "image = { size_mib = 33554432 }",
        ] {
            let bad = SAMPLE.replace("image = { size_mib = 16 }", image);
            assert!(Profile::parse("x", &bad).is_err(), "{image}");
        }
    }

    #[test]
    fn partitioned_images() {
        let with = |image: &str| SAMPLE.replace("image = { size_mib = 16 }", image);
        let p = Profile::parse(
            "x",
            &with(r#"image = { size_mib = 96, format = "raw", partition = ["mbr:64", "gpt-damaged:32"] }"#),
        )
        .unwrap();
        let disks = p.image.unwrap().disks().unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[1].size_mib, 32);
        for bad in [
            r#"image = { size_mib = 64, format = "raw", partition = ["mbr:64", "gpt:32"] }"#,
            r#"image = { size_mib = 64, format = "tinyfs", partition = ["gpt:32"] }"#,
            r#"image = { size_mib = 64, partition = ["gpt:32"] }"#,
            r#"image = { size_mib = 64, format = "raw", partition = ["ext4:32"] }"#,
        ] {
            assert!(Profile::parse("x", &with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_formats() {
        let p = Profile::parse("x", SAMPLE).unwrap();
        let image = p.image.unwrap();
        assert_eq!(image.format_for(false), ImageFormat::Tinyfs);
        assert_eq!(image.format_for(true), ImageFormat::Raw);
        for (key, format) in [("raw", ImageFormat::Raw), ("tinyfs", ImageFormat::Tinyfs)] {
            let text = SAMPLE.replace(
                "image = { size_mib = 16 }",
                &format!("image = {{ size_mib = 16, format = \"{key}\" }}"),
            );
            let image = Profile::parse("x", &text).unwrap().image.unwrap();
            assert_eq!(image.format_for(false), format);
            assert_eq!(image.format_for(true), format);
        }
        let big = SAMPLE.replace(
            "image = { size_mib = 16 }",
            "image = { size_mib = 8192, format = \"raw\" }",
        );
        assert!(Profile::parse("x", &big).is_ok());
    }

    #[test]
    fn repository_profiles_are_valid() {
        let dir = crate::workspace::root().join("qemu");
        let all = load_all(&dir).unwrap();
        for arch in [Arch::X86_64, Arch::Riscv64] {
            let base = select_for_run(&all, arch, Disk::None).unwrap();
            assert_eq!(base.name, arch.to_string());
            assert!(base.test);
        }
        for p in &all {
            assert!(
                p.name.starts_with(&p.arch.to_string()),
                "{} is named after its arch",
                p.name
            );
        }
    }

    #[test]
    fn boot_paths() {
        let with = |name: &str, extra: &str, stick: bool| {
            let mut text = SAMPLE.replace(
                "arch = \"riscv64\"",
                &format!("arch = \"riscv64\"\n{extra}"),
            );
            if stick {
                text = text.replace(
                    "drives = [",
                    "drives = [\"-drive if=none,id=b,format=raw,file={boot}\", ",
                );
            }
            Profile::parse(name, &text)
        };
        let p = with("riscv64-virtio-uboot", "boot = \"uboot\"", true).unwrap();
        assert_eq!(p.boot, Some(crate::firmware::BootPath::Uboot));
        let values = Placeholders {
            image: Some(PathBuf::from("d.img")),
            boot: Some(PathBuf::from("b.img")),
        };
        assert!(
            p.qemu_args(&values)
                .unwrap()
                .iter()
                .any(|a| a.ends_with("file=b.img"))
        );
        // Named after its path, on the path's arch, and with the medium placed.
        assert!(with("riscv64-virtio", "boot = \"uboot\"", true).is_err());
        assert!(with("riscv64-virtio-uboot", "boot = \"uboot\"", false).is_err());
        assert!(with("riscv64-virtio-grub-bios", "boot = \"grub-bios\"", true).is_err());
        assert!(with("riscv64-virtio-uboot", "", true).is_err());
        assert!(with("riscv64-virtio-uboot", "boot = \"lilo\"", true).is_err());
    }

    #[test]
    fn selection() {
        let a = Profile::parse("riscv64-virtio-mmio", SAMPLE).unwrap();
        let mut b = a.clone();
        b.name = "riscv64-virtio-pci".into();
        b.test = false;
        let mut all = vec![a, b];
        assert_eq!(
            select_for_run(&all, Arch::Riscv64, Disk::Virtio)
                .unwrap()
                .name,
            "riscv64-virtio-mmio"
        );
        // A profile named ARCH-DISK comes first, whatever sorts before it.
        let mut plain = all[1].clone();
        plain.name = "riscv64-virtio".into();
        all.push(plain);
        assert_eq!(
            select_for_run(&all, Arch::Riscv64, Disk::Virtio)
                .unwrap()
                .name,
            "riscv64-virtio"
        );
        all.pop();
        assert!(select_for_run(&all, Arch::X86_64, Disk::Virtio).is_err());
        assert_eq!(select_for_test(&all, None, None).len(), 1);
        assert_eq!(select_for_test(&all, None, Some(Disk::Virtio)).len(), 2);
        assert_eq!(select_for_test(&all, Some(Arch::X86_64), None).len(), 0);
    }
}
