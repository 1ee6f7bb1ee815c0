//! Booting through real firmware: the boot media xtask builds (`cargo xtask image --boot ...`)
//! and the QEMU firmware arguments of a profile that names a boot path.
//!
//! - `grub-bios`: a hybrid ISO from `grub-mkrescue` (El Torito for BIOS, an EFI system partition
//!   image for UEFI, and an MBR so that it also boots written raw to a USB stick), holding the
//!   kernel and a `grub.cfg` that loads it with `multiboot2`.
//! - `grub-uefi`: a GPT disk image with one EFI system partition (FAT) holding
//!   `EFI/BOOT/BOOTX64.EFI`, a standalone GRUB with the kernel and `grub.cfg` built in.
//! - `uboot`: an MBR disk image with one FAT partition holding the flat `Image` and
//!   `extlinux/extlinux.conf`, which U-Boot's distro boot finds and boots with `booti`.
//!
//! The GRUB media carry the kernel ELF stripped of debug information (`llvm-objcopy
//! --strip-debug`, which keeps the symbols and the `.defmt` section); logs are decoded with the
//! unstripped ELF. The kernel command line is baked into `grub.cfg` or `extlinux.conf`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::profile::Arch;
use crate::workspace;

/// A firmware boot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BootPath {
    /// SeaBIOS, GRUB 2 (i386-pc), Multiboot2.
    GrubBios,
    /// OVMF, GRUB 2 (x86_64-efi), Multiboot2.
    GrubUefi,
    /// OpenSBI, U-Boot (S-mode), extlinux, `booti`.
    Uboot,
}

impl BootPath {
    /// The name used in profiles and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BootPath::GrubBios => "grub-bios",
            BootPath::GrubUefi => "grub-uefi",
            BootPath::Uboot => "uboot",
        }
    }

    /// The architecture the path boots.
    pub fn arch(self) -> Arch {
        match self {
            BootPath::GrubBios | BootPath::GrubUefi => Arch::X86_64,
            BootPath::Uboot => Arch::Riscv64,
        }
    }

    /// File extension of the medium.
    fn extension(self) -> &'static str {
        match self {
            BootPath::GrubBios => "iso",
            BootPath::GrubUefi | BootPath::Uboot => "img",
        }
    }
}

/// The Debian packages the boot media and firmware come from.
pub const PACKAGES: &str = "grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools ovmf \
                            u-boot-qemu fdisk gdisk";

/// The Debian command that installs them.
pub fn install_command() -> String {
    format!("apt-get update && apt-get install -y --no-install-recommends {PACKAGES}")
}

/// OVMF code and variable store templates (the 4 MiB pair).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// U-Boot for QEMU `virt`, S-mode (OpenSBI is QEMU's `-bios default`).
pub const UBOOT: &str = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";
/// GRUB's module directories: `grub-mkrescue` builds an image for each one present.
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// RAM base of QEMU `virt` (and the default for `--ram-base`).
pub const RISCV_VIRT_RAM: u64 = 0x8000_0000;

/// What `path` needs on the host: programs and files.
fn needs(path: BootPath) -> (&'static [&'static str], &'static [&'static str]) {
    match path {
        BootPath::GrubBios => (
            &["grub-mkrescue", "xorriso", "mformat"],
            &[GRUB_BIOS_DIR, GRUB_EFI_DIR],
        ),
        BootPath::GrubUefi => (
            &["grub-mkstandalone", "mformat", "mcopy", "mmd", "sgdisk"],
            &[GRUB_EFI_DIR, OVMF_CODE, OVMF_VARS],
        ),
        BootPath::Uboot => (&["mformat", "mcopy", "mmd", "sfdisk"], &[UBOOT]),
    }
}

fn missing(path: BootPath) -> Vec<String> {
    let (programs, files) = needs(path);
    let mut out: Vec<String> = programs
        .iter()
        .filter(|p| !on_path(p))
        .map(|p| (*p).to_owned())
        .collect();
    out.extend(
        files
            .iter()
            .filter(|f| !Path::new(f).exists())
            .map(|f| (*f).to_owned()),
    );
    out
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Makes sure the tools and firmware of `path` are there; installs them as root on Debian.
pub fn ensure_tools(path: BootPath) -> Result<()> {
    workspace::ensure_installed(
        "the boot tools",
        &format!(" (needed for {} media)", path.name()),
        &install_command(),
        &|| missing(path),
    )
}

/// `llvm-objcopy` from the toolchain's `llvm-tools` component (else from `PATH`).
fn objcopy() -> PathBuf {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(workspace::root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let host = Command::new("rustc")
        .args(["-vV"])
        .current_dir(workspace::root())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        });
    if let (Some(sysroot), Some(host)) = (sysroot, host) {
        let tool = sysroot
            .join("lib/rustlib")
            .join(host)
            .join("bin/llvm-objcopy");
        if tool.is_file() {
            return tool;
        }
    }
    PathBuf::from("llvm-objcopy")
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The `grub.cfg` that loads the kernel with `words` as its command line, console on COM1.
pub fn grub_cfg(words: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial\n\
         terminal_output serial\n\
         multiboot2 /boot/kernel {words}\n\
         boot\n"
    )
}

/// The `extlinux.conf` that boots `/Image` with `words` as its command line.
pub fn extlinux_conf(words: &str) -> String {
    format!("default storage\ntimeout 0\nlabel storage\n  kernel /Image\n  append {words}\n")
}

/// What was built.
#[derive(Debug)]
pub struct Medium {
    pub path: PathBuf,
    pub summary: String,
}

/// Builds the boot medium for `path` at `out` from the kernel ELF `elf`, with the kernel
/// command line `words`. `ram_base` (riscv64) sets the Image's `text_offset` so that `booti`
/// places it where it is linked.
pub fn build(path: BootPath, elf: &Path, words: &str, out: &Path, ram_base: u64) -> Result<Medium> {
    ensure_tools(path)?;
    let work = out.with_extension("d");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let _ = fs::remove_file(out);
    let summary = match path {
        BootPath::GrubBios => grub_iso(elf, words, &work, out)?,
        BootPath::GrubUefi => grub_esp(elf, words, &work, out)?,
        BootPath::Uboot => uboot_disk(elf, words, &work, out, ram_base)?,
    };
    fs::remove_dir_all(&work)?;
    Ok(Medium {
        path: out.to_path_buf(),
        summary,
    })
}

fn stripped(elf: &Path, to: &Path) -> Result<u64> {
    run(Command::new(objcopy())
        .arg("--strip-debug")
        .arg(elf)
        .arg(to))?;
    Ok(fs::metadata(to)?.len())
}

fn grub_iso(elf: &Path, words: &str, work: &Path, out: &Path) -> Result<String> {
    let root = work.join("iso");
    fs::create_dir_all(root.join("boot/grub"))?;
    let kernel_len = stripped(elf, &root.join("boot/kernel"))?;
    fs::write(root.join("boot/grub/grub.cfg"), grub_cfg(words))?;
    run(Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .args(["--compress=xz", "--locales=", "--fonts=", "--themes="])
        .arg(&root))?;
    Ok(format!(
        "hybrid ISO (BIOS El Torito + UEFI ESP + MBR for a USB stick), {}, GRUB 2 + Multiboot2; \
         kernel stripped of debug info ({}), cmdline \"{words}\"",
        size(fs::metadata(out)?.len()),
        size(kernel_len)
    ))
}

/// Size of the ESP image and of the partition in it (1 MiB in, to the end less the backup GPT).
const ESP_IMAGE_MIB: u64 = 16;

fn grub_esp(elf: &Path, words: &str, work: &Path, out: &Path) -> Result<String> {
    let kernel = work.join("kernel");
    let kernel_len = stripped(elf, &kernel)?;
    let cfg = work.join("grub.cfg");
    fs::write(&cfg, grub_cfg(words))?;
    let efi = work.join("BOOTX64.EFI");
    run(Command::new("grub-mkstandalone")
        .args(["-O", "x86_64-efi", "-o"])
        .arg(&efi)
        .args(["--compress=xz", "--locales=", "--fonts=", "--themes="])
        .arg(format!("boot/grub/grub.cfg={}", cfg.display()))
        .arg(format!("boot/kernel={}", kernel.display())))?;
    fs::File::create(out)?.set_len(ESP_IMAGE_MIB << 20)?;
    run(Command::new("sgdisk")
        .args([
            "-n",
            "1:2048:0",
            "-t",
            "1:EF00",
            "-c",
            "1:EFI system partition",
        ])
        .arg(out))?;
    let part = format!("{}@@1M", out.display());
    run(Command::new("mformat").args(["-i", &part, "-v", "ESP", "::"]))?;
    run(Command::new("mmd").args(["-i", &part, "::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .args(["-i", &part])
        .arg(&efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    Ok(format!(
        "GPT disk image with an EFI system partition, {}: EFI/BOOT/BOOTX64.EFI = standalone GRUB 2 \
         ({}) with grub.cfg and the kernel stripped of debug info ({}) built in; cmdline \"{words}\"",
        size(ESP_IMAGE_MIB << 20),
        size(fs::metadata(&efi)?.len()),
        size(kernel_len)
    ))
}

/// Size of the U-Boot disk image.
const UBOOT_IMAGE_MIB: u64 = 32;

fn uboot_disk(elf: &Path, words: &str, work: &Path, out: &Path, ram_base: u64) -> Result<String> {
    let image = work.join("Image");
    run(Command::new(objcopy())
        .args(["-O", "binary"])
        .arg(elf)
        .arg(&image))?;
    // The link address: the ELF's entry point, `_start`, the Image's first byte.
    let linked = {
        use object::Object;
        let elf_bytes = fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
        object::File::parse(&*elf_bytes)
            .with_context(|| format!("parsing {}", elf.display()))?
            .entry()
    };
    let mut bytes = fs::read(&image)?;
    let header = bootproto::riscv_image::Header::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("the flat Image has a bad header: {e:?}"))?;
    let header = if header.load_address(ram_base) == Some(linked) {
        header
    } else {
        let h = bootproto::riscv_image::set_load_address(&mut bytes, ram_base, linked).map_err(
            |e| {
                anyhow::anyhow!(
                    "RAM base {ram_base:#x}: the kernel is linked at {linked:#x}, \
                     which booti cannot reach from there ({e:?})"
                )
            },
        )?;
        fs::write(&image, &bytes)?;
        h
    };
    let conf = work.join("extlinux.conf");
    fs::write(&conf, extlinux_conf(words))?;
    fs::File::create(out)?.set_len(UBOOT_IMAGE_MIB << 20)?;
    let mut sfdisk = Command::new("sfdisk");
    sfdisk
        .arg("--quiet")
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = sfdisk.spawn().context("running sfdisk")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("sfdisk stdin")?;
        stdin.write_all(b"label: dos\nstart=2048, type=c, bootable\n")?;
    }
    ensure!(
        child.wait()?.success(),
        "sfdisk failed on {}",
        out.display()
    );
    let part = format!("{}@@1M", out.display());
    run(Command::new("mformat").args(["-i", &part, "-v", "BOOT", "::"]))?;
    run(Command::new("mmd").args(["-i", &part, "::/extlinux"]))?;
    run(Command::new("mcopy")
        .args(["-i", &part])
        .arg(&conf)
        .arg("::/extlinux/extlinux.conf"))?;
    run(Command::new("mcopy")
        .args(["-i", &part])
        .arg(&image)
        .arg("::/Image"))?;
    Ok(format!(
        "MBR disk image, {}, one FAT partition: /Image ({}, text_offset {:#x}: booti loads it at \
         {:#x} on RAM from {ram_base:#x}; image_size {:#x}) and /extlinux/extlinux.conf \
         (append \"{words}\")",
        size(UBOOT_IMAGE_MIB << 20),
        size(bytes.len() as u64),
        header.text_offset,
        header.load_address(ram_base).unwrap_or(0),
        header.image_size
    ))
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// QEMU arguments for the firmware of `path` (besides the medium, which the profile places).
/// `vars` is a fresh copy of the OVMF variable store for this boot.
pub fn qemu_args(path: BootPath, vars: &Path) -> Result<Vec<String>> {
    Ok(match path {
        BootPath::GrubBios => Vec::new(),
        BootPath::GrubUefi => {
            if let Some(dir) = vars.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::copy(OVMF_VARS, vars)
                .with_context(|| format!("copying {OVMF_VARS} to {}", vars.display()))?;
            vec![
                "-drive".into(),
                format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", vars.display()),
            ]
        }
        BootPath::Uboot => vec![
            "-bios".into(),
            "default".into(),
            "-kernel".into(),
            UBOOT.into(),
        ],
    })
}

/// Where the medium of a profile's boot goes: next to the disk images.
pub fn medium_path(profile: &str, path: BootPath) -> PathBuf {
    workspace::target_dir()
        .join("qemu")
        .join("boot")
        .join(format!("{profile}.{}", path.extension()))
}

/// `cargo xtask image --boot ...`.
#[derive(Args)]
pub struct ImageArgs {
    /// Firmware boot path the medium is for.
    #[arg(long, value_enum)]
    pub boot: BootPath,
    /// Where to write the medium.
    #[arg(long)]
    pub out: PathBuf,
    /// Kernel command line (default `mode=run`).
    #[arg(long, default_value = "mode=run")]
    pub cmdline: String,
    /// uboot: where the board's RAM starts (sets the Image's text_offset so that booti places
    /// the kernel at its link address, 0x80200000).
    #[arg(long, value_parser = parse_hex, default_value = "0x80000000")]
    pub ram_base: u64,
    /// Build the kernel with the dev profile.
    #[arg(long)]
    pub debug: bool,
}

fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex address: {e}"))
}

/// Builds the kernel and the medium, and says what it built.
pub fn image(args: ImageArgs) -> Result<std::process::ExitCode> {
    let arch = args.boot.arch();
    workspace::ensure_toolchain(&[arch])?;
    ensure_tools(args.boot)?;
    let build = if args.debug {
        workspace::BuildProfile::Debug
    } else {
        workspace::BuildProfile::Release
    };
    let kernel = workspace::build_kernel(arch, build, &[])?;
    let medium = build_medium(
        args.boot,
        &kernel.elf,
        &args.cmdline,
        &args.out,
        args.ram_base,
    )?;
    println!("{}: {}", medium.path.display(), medium.summary);
    println!(
        "decode its console with the unstripped ELF: {}",
        kernel.elf.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn build_medium(
    path: BootPath,
    elf: &Path,
    words: &str,
    out: &Path,
    ram_base: u64,
) -> Result<Medium> {
    build(path, elf, words, out, ram_base)
        .with_context(|| format!("building the {} medium {}", path.name(), out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_carry_the_command_line() {
        let cfg = grub_cfg("mode=test root=vda");
        assert!(cfg.contains("multiboot2 /boot/kernel mode=test root=vda\n"));
        assert!(cfg.starts_with("serial --unit=0 --speed=115200"));
        let conf = extlinux_conf("mode=run");
        assert!(conf.contains("  kernel /Image\n  append mode=run\n"));
    }

    #[test]
    fn boot_paths_parse_from_profiles() {
        #[derive(Deserialize)]
        struct T {
            boot: BootPath,
        }
        for (text, want) in [
            ("boot = \"grub-bios\"", BootPath::GrubBios),
            ("boot = \"grub-uefi\"", BootPath::GrubUefi),
            ("boot = \"uboot\"", BootPath::Uboot),
        ] {
            let t: T = toml::from_str(text).unwrap();
            assert_eq!(t.boot, want);
            assert_eq!(t.boot.name(), &text[8..text.len() - 1]);
        }
        assert!(toml::from_str::<T>("boot = \"grub\"").is_err());
        assert_eq!(parse_hex("0x40000000"), Ok(0x4000_0000));
        assert!(parse_hex("zz").is_err());
    }
}
