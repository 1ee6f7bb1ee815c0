//! The workspace on disk: where things are, the tools it needs, and the kernel build.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use defmt_decoder::{Locations, Table};

use crate::profile::Arch;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` when set (relative to the workspace root),
/// else the workspace's `target/`. Kernel builds, disk images and boot logs go there, so two
/// checkouts' or two users' runs with different target directories never share an ELF.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

/// The cargo that runs us, so the pinned toolchain is used for everything.
pub fn cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

const COMPONENTS: [&str; 2] = ["rust-src", "llvm-tools"];

/// Adds missing rustup targets for `arches` and the components the kernel build needs.
pub fn ensure_toolchain(arches: &[Arch]) -> Result<()> {
    let Some(targets) = rustup_list(&["target", "list", "--installed"]) else {
        eprintln!("note: rustup not found; assuming the bare-metal targets are installed");
        return Ok(());
    };
    let missing: Vec<&str> = arches
        .iter()
        .map(|a| a.triple())
        .filter(|t| !targets.iter().any(|have| have == t))
        .collect();
    if !missing.is_empty() {
        rustup(&[&["target", "add"][..], &missing].concat())?;
    }
    let components = rustup_list(&["component", "list", "--installed"]).unwrap_or_default();
    let missing: Vec<&str> = COMPONENTS
        .into_iter()
        .filter(|c| !components.iter().any(|have| have.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        rustup(&[&["component", "add"][..], &missing].concat())?;
    }
    Ok(())
}

fn rustup_list(args: &[&str]) -> Option<Vec<String>> {
    let out = Command::new("rustup")
        .args(args)
        .current_dir(root())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    })
}

fn rustup(args: &[&str]) -> Result<()> {
    eprintln!("running: rustup {}", args.join(" "));
    let status = Command::new("rustup")
        .args(args)
        .current_dir(root())
        .status()?;
    ensure!(status.success(), "rustup {} failed", args.join(" "));
    Ok(())
}

/// The Debian command that installs both QEMU system emulators.
pub const QEMU_INSTALL: &str =
    "apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 qemu-system-misc";

/// Makes sure the QEMU binaries for `arches` run; installs them as root on Debian.
pub fn ensure_qemu(arches: &[Arch]) -> Result<()> {
    let bins: Vec<&str> = arches.iter().map(|a| a.qemu_binary()).collect();
    ensure_installed("QEMU", "", QEMU_INSTALL, &|| programs_missing(&bins))
}

/// The programs of `bins` that do not run (`BIN --version` cannot be started).
pub fn programs_missing(bins: &[&str]) -> Vec<String> {
    bins.iter()
        .filter(|bin| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|bin| (*bin).to_owned())
        .collect()
}

/// Makes sure nothing is `missing()`: as root on Debian runs `install` (a shell command) and
/// checks again, else fails with the command to run. `what` names the tools in messages, `why`
/// (may be empty) says what needs them.
pub fn ensure_installed(
    what: &str,
    why: &str,
    install: &str,
    missing: &dyn Fn() -> Vec<String>,
) -> Result<()> {
    let absent = missing();
    if absent.is_empty() {
        return Ok(());
    }
    let debian = Path::new("/etc/debian_version").exists();
    if debian && is_root() {
        eprintln!("{} missing; running: {install}", absent.join(", "));
        let status = Command::new("sh").args(["-c", install]).status()?;
        ensure!(status.success(), "installing {what} failed: {install}");
        let still = missing();
        ensure!(
            still.is_empty(),
            "still missing after install: {}",
            still.join(", ")
        );
        return Ok(());
    }
    bail!(
        "{} not found{why}. Install {what}{}:\n    {install}",
        absent.join(", "),
        if debian {
            " as root"
        } else {
            " (Debian command shown)"
        }
    )
}

pub fn is_root() -> bool {
    // Uid line of /proc/self/status: real, effective, saved, filesystem.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

/// Optimisation of the kernel build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildProfile {
    Release,
    Debug,
}

/// A built kernel and what the console needs to decode its logs.
pub struct Kernel {
    pub elf: PathBuf,
    pub table: Option<Table>,
    pub locations: Option<Locations>,
}

/// Kernel cargo features every `mode=test` build has on top of its profile's: the drivers'
/// fault-injection hooks that the in-kernel suite drives. `run`, `bench` and `prof` builds
/// leave them out, so those kernels carry no test hooks.
pub const TEST_FEATURES: &[&str] = &["fault-injection"];

/// The features of a test kernel: `profile`'s, then each of [`TEST_FEATURES`] it lacks.
pub fn test_features(profile: &[String]) -> Vec<String> {
    let mut all = profile.to_vec();
    for f in TEST_FEATURES {
        if !all.iter().any(|p| p == f) {
            all.push((*f).to_owned());
        }
    }
    all
}

/// [`build_kernel`] for `mode=test` boots: with [`test_features`].
pub fn build_test_kernel(arch: Arch, build: BuildProfile, features: &[String]) -> Result<Kernel> {
    build_kernel(arch, build, &test_features(features))
}

/// Builds the `kernel` package for `arch` into the workspace's `target/`.
pub fn build_kernel(arch: Arch, build: BuildProfile, features: &[String]) -> Result<Kernel> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "kernel",
        "--bin",
        "kernel",
        "--target",
    ])
    .arg(arch.triple())
    .arg("--target-dir")
    .arg(target_dir())
    .env_remove("CARGO_TARGET_DIR");
    if build == BuildProfile::Release {
        cmd.arg("--release");
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let status = cmd.status().context("running cargo build")?;
    ensure!(status.success(), "building the kernel for {arch} failed");

    let dir = match build {
        BuildProfile::Release => "release",
        BuildProfile::Debug => "debug",
    };
    let built = target_dir().join(arch.triple()).join(dir).join("kernel");
    // Cargo writes every feature set's kernel to the same path; a build with other features
    // (a later profile) would replace this one under a caller still holding it. Each feature
    // set boots from a copy of its own.
    let elf = built.with_file_name(elf_name(features));
    if elf != built {
        fs::copy(&built, &elf).with_context(|| format!("copying {}", built.display()))?;
    }
    let bytes = fs::read(&elf).with_context(|| format!("reading {}", elf.display()))?;
    let table = Table::parse(&bytes).unwrap_or_else(|e| {
        eprintln!(
            "warning: cannot read the defmt table of {}: {e:#}",
            elf.display()
        );
        None
    });
    let locations = match &table {
        Some(table) => match table.get_locations(&bytes) {
            Ok(locs) if !locs.is_empty() => Some(locs),
            Ok(_) => None,
            Err(e) => {
                eprintln!("note: no source locations for log lines: {e}");
                None
            }
        },
        None => {
            eprintln!("note: no defmt table; showing the kernel's output as text");
            None
        }
    };
    Ok(Kernel {
        elf,
        table,
        locations,
    })
}

/// File name of the kernel built with `features`: `kernel` without any, else
/// `kernel+FEATURE+...` (sorted), next to cargo's own output.
fn elf_name(features: &[String]) -> String {
    let mut sorted: Vec<&str> = features.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    std::iter::once("kernel")
        .chain(sorted)
        .collect::<Vec<_>>()
        .join("+")
}

/// Creates (or, with `fresh`, recreates) a zero-filled raw image of `size_mib` MiB.
pub fn prepare_image(path: &Path, size_mib: u64, fresh: bool) -> Result<()> {
    if path.exists() && !fresh {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size_mib * 1024 * 1024)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_feature_set_has_its_own_kernel_file() {
        assert_eq!(elf_name(&[]), "kernel");
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            elf_name(&f(&["min-pools", "fault-injection"])),
            "kernel+fault-injection+min-pools"
        );
        assert_eq!(
            elf_name(&f(&["fault-injection", "min-pools"])),
            elf_name(&f(&["min-pools", "fault-injection"]))
        );
        assert_ne!(elf_name(&f(&["fault-injection"])), elf_name(&[]));
    }

    #[test]
    fn test_kernels_get_the_fault_injection_hooks_once() {
        assert_eq!(test_features(&[]), ["fault-injection"]);
        let profile = vec!["x".to_owned(), "fault-injection".to_owned()];
        assert_eq!(test_features(&profile), profile);
        assert_eq!(test_features(&["x".to_owned()]), ["x", "fault-injection"]);
    }
}
