//! `cargo xtask`: build, boot and test the storage stack.

mod bench;
mod boot;
mod console;
#[cfg(all(test, feature = "e2e"))]
mod e2e;
mod firmware;
mod guest;
mod host;
mod image;
mod ktest;
mod parts;
mod powercut;
mod prof;
mod profile;
mod reboot;
mod selfcheck;
mod workspace;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use boot::{Accel, BootSpec, Limits, Verbosity};
use ktest::Verdict;
use profile::{Arch, Disk, ImageFormat, Profile};
use workspace::{BuildProfile, Kernel};

/// Developer front door of the storage stack: builds the kernel, boots it in QEMU, runs the tests,
/// and reads and writes tinyfs images.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel and boot it in QEMU with a live, decoded console; exits with the
    /// kernel's status.
    Run(RunArgs),
    /// Run the host tests, then the in-kernel suite on every matching QEMU profile; ends with
    /// one line `N passed, N failed`.
    Test(TestArgs),
    /// Boot a bench build and run fixed device workloads (IOPS, MiB/s, latency, cost per I/O).
    Bench(bench::BenchArgs),
    /// Instruction profile of one bench job from a QEMU execution trace: guest instructions
    /// per I/O, per kernel function.
    Prof(prof::ProfArgs),
    /// Power cuts during filesystem writes: boot a tinyfs workload, kill QEMU at a seeded
    /// instant, check the image (and the states a lost write cache leaves) on the host; ends
    /// with one line `N cuts, N acknowledged writes lost, N/N fsck-clean`.
    Powercut(powercut::PowercutArgs),
    /// Build a bootable medium for real firmware (GRUB BIOS or UEFI, U-Boot) and say what it
    /// holds.
    #[command(name = "image")]
    BootImage(firmware::ImageArgs),
    #[command(flatten)]
    Image(image::ImageCmd),
}

#[derive(Args)]
struct RunArgs {
    /// Guest architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    arch: Arch,
    /// Disk controller to attach (`none`: the machine without a disk). Without it (and without
    /// --profile), the run profile `ARCH-run`: a partitioned disk with tinyfs on a partition.
    #[arg(long, value_enum)]
    disk: Option<Disk>,
    /// Boot this profile from qemu/ (file stem, e.g. riscv64-virtio-mmio) instead of choosing
    /// by --arch and --disk.
    #[arg(long, conflicts_with_all = ["arch", "disk"])]
    profile: Option<String>,
    /// The disk image to boot with instead of the profile's own under target/qemu/: used as it
    /// is when it exists (never overwritten), created as the profile's image says otherwise.
    #[arg(long)]
    image: Option<PathBuf>,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Start QEMU halted with a gdb server on :1234 and print how to attach.
    #[arg(long)]
    gdb: bool,
    #[command(flatten)]
    build: BuildArgs,
    /// Arguments passed to QEMU unchanged (after `--`).
    #[arg(last = true)]
    qemu_args: Vec<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Only profiles of this architecture.
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Only profiles with this disk controller (includes profiles not in the default set).
    #[arg(long, value_enum)]
    disk: Option<Disk>,
    /// Only this profile from qemu/.
    #[arg(long, conflicts_with_all = ["arch", "disk"])]
    profile: Option<String>,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// Add a deliberately failing or hanging test to the suite; the run must then fail.
    #[arg(long, value_enum)]
    selftest: Option<SelfTest>,
    /// Skip the host tests.
    #[arg(long)]
    no_host: bool,
    /// Print the whole kernel console, not only the test results.
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args)]
struct BuildArgs {
    /// Build the kernel with the release profile (the default).
    #[arg(long, conflicts_with = "debug")]
    release: bool,
    /// Build the kernel with the dev profile.
    #[arg(long)]
    debug: bool,
}

impl BuildArgs {
    fn profile(&self) -> BuildProfile {
        if self.debug {
            BuildProfile::Debug
        } else {
            BuildProfile::Release
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SelfTest {
    Fail,
    Hang,
}

impl SelfTest {
    fn word(self) -> &'static str {
        match self {
            SelfTest::Fail => "selftest=fail",
            SelfTest::Hang => "selftest=hang",
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            SelfTest::Fail => "selftest_fail",
            SelfTest::Hang => "selftest_hang",
        }
    }
}

/// Per-test limit while a deliberately hanging test is in the suite.
const HANG_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Test(args) => test(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Prof(args) => prof::run(args),
        Cmd::Powercut(args) => powercut::run(args),
        Cmd::BootImage(args) => firmware::image(args),
        Cmd::Image(cmd) => image::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn profiles() -> Result<Vec<Profile>> {
    profile::load_all(&workspace::root().join("qemu"))
}

fn by_name(all: &[Profile], name: &str) -> Result<Profile> {
    match all.iter().find(|p| p.name == name) {
        Some(p) => Ok(p.clone()),
        None => {
            let names: Vec<_> = all.iter().map(|p| p.name.as_str()).collect();
            bail!("no profile {name:?} in qemu/ (have: {})", names.join(", "))
        }
    }
}

/// The profile `cargo xtask run` boots: `--profile`, else by `--arch` and `--disk`, else (no
/// `--disk`) the run profile `ARCH-run`.
fn run_profile(all: &[Profile], args: &RunArgs) -> Result<Profile> {
    match (&args.profile, args.disk) {
        (Some(name), _) => by_name(all, name),
        (None, Some(disk)) => profile::select_for_run(all, args.arch, disk),
        (None, None) => by_name(all, &format!("{}-run", args.arch)),
    }
}

/// The disk image of a run-mode boot of `profile`: `chosen` (`--image`) or the profile's own
/// under `target/qemu/`, created when missing (as the profile's `image` says) and kept
/// otherwise, never overwritten. Says on stderr where it is and whether it was made now.
pub(crate) fn run_image(profile: &Profile, chosen: Option<&Path>) -> Result<Option<PathBuf>> {
    let Some(spec) = &profile.image else {
        if let Some(path) = chosen {
            bail!(
                "--image {}: profile {} has no disk image",
                path.display(),
                profile.name
            );
        }
        return Ok(None);
    };
    let path = match chosen {
        Some(p) => p.to_owned(),
        None => boot::image_path(profile, false).context("image path")?,
    };
    if path.exists() {
        eprintln!(
            "disk image: {} (kept from an earlier run; delete it to start over)",
            path.display()
        );
        return Ok(Some(path));
    }
    let what = match (spec.partition.is_empty(), spec.format_for(false)) {
        (false, _) => format!(
            "{} MiB raw, partitioned ({})",
            spec.size_mib,
            spec.partition.join(", ")
        ),
        (true, ImageFormat::Tinyfs) => format!("{} MiB, an empty tinyfs filesystem", spec.size_mib),
        (true, ImageFormat::Raw) => format!("{} MiB of zeros", spec.size_mib),
    };
    eprintln!(
        "disk image: {} (created now: {what}; kept for the next run)",
        path.display()
    );
    image::prepare_spec(&path, spec, false, false)
        .with_context(|| format!("disk image for {}", profile.name))?;
    Ok(Some(path))
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let all = profiles()?;
    let profile = run_profile(&all, &args)?;
    workspace::ensure_toolchain(&[profile.arch])?;
    workspace::ensure_qemu(&[profile.arch])?;
    let kernel = workspace::build_kernel(profile.arch, args.build.profile(), &profile.features)?;
    let image = run_image(&profile, args.image.as_deref())?;
    let spec = BootSpec {
        profile: &profile,
        kernel: &kernel,
        accel: args.accel,
        words: vec!["mode=run".into()],
        gdb: args.gdb,
        extra: args.qemu_args,
        image,
    };
    let code = boot::run(&spec)?;
    Ok(match code {
        Some(c) if c == profile.exit.success => ExitCode::SUCCESS,
        Some(c) if c == profile.exit.failure => {
            eprintln!("the kernel reported failure");
            ExitCode::FAILURE
        }
        Some(c) => {
            eprintln!("QEMU exited with status {c}");
            ExitCode::from(u8::try_from(c).unwrap_or(1).max(1))
        }
        None => {
            eprintln!("QEMU was killed by a signal");
            ExitCode::FAILURE
        }
    })
}

/// Totals for the final line, and why tests were skipped.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
    /// Skip reason -> (tests skipped for it, where: profile names or "host").
    reasons: BTreeMap<String, (usize, BTreeSet<String>)>,
}

impl Tally {
    fn add(&mut self, profile: &str, verdict: &Verdict) {
        self.passed += verdict.passed.len();
        self.failed += verdict.failures();
        for (_, reason) in &verdict.skipped {
            self.skip(profile, reason, 1);
        }
    }

    /// Counts `n` tests skipped in `place` (a profile, or the host tests) for `reason`.
    fn skip(&mut self, place: &str, reason: &str, n: usize) {
        if n == 0 {
            return;
        }
        self.skipped += n;
        let reason = if reason.is_empty() {
            "no reason given"
        } else {
            reason
        };
        let entry = self.reasons.entry(reason.to_owned()).or_default();
        entry.0 += n;
        entry.1.insert(place.to_owned());
    }

    /// The skips grouped by reason, most frequent first: `  120  needs an NVMe disk (x86_64,
    /// riscv64)`.
    fn skipped_by_reason(&self) -> Vec<String> {
        let mut groups: Vec<_> = self.reasons.iter().collect();
        groups.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        groups
            .into_iter()
            .map(|(reason, (n, places))| {
                let places: Vec<&str> = places.iter().map(String::as_str).collect();
                format!("  {n:>5}  {reason} ({})", places.join(", "))
            })
            .collect()
    }

    fn summary(&self) -> String {
        let mut line = format!("{} passed, {} failed", self.passed, self.failed);
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        line
    }

    /// The closing lines: the skips by reason (when there are any), then the summary line.
    fn report(&self) -> String {
        let mut out = String::new();
        if self.skipped > 0 {
            out.push_str(&format!("{} skipped, by reason:\n", self.skipped));
            for line in self.skipped_by_reason() {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out.push_str(&self.summary());
        out
    }
}

fn test(args: TestArgs) -> Result<ExitCode> {
    let all = profiles()?;
    let selected = match &args.profile {
        Some(name) => vec![by_name(&all, name)?],
        None => profile::select_for_test(&all, args.arch, args.disk),
    };
    if selected.is_empty() {
        bail!("no QEMU profile matches the filters");
    }
    let mut tally = Tally::default();

    if !args.no_host {
        println!("== host tests");
        let host = host::run()?;
        tally.passed += host.passed;
        tally.failed += host.failed;
        tally.skip("host", "marked #[ignore]", host.ignored);
        println!("== loom models (blk)");
        let started = Instant::now();
        let loom = host::run_loom()?;
        println!(
            "[host] loom: {} models passed, {} failed in {:.1}s",
            loom.passed,
            loom.failed,
            started.elapsed().as_secs_f64()
        );
        tally.passed += loom.passed;
        tally.failed += loom.failed;
        tally.skip("host", "marked #[ignore]", loom.ignored);
    }

    let mut arches: Vec<Arch> = selected.iter().map(|p| p.arch).collect();
    arches.sort();
    arches.dedup();
    workspace::ensure_toolchain(&arches)?;
    workspace::ensure_qemu(&arches)?;

    let build = args.build.profile();
    let mut kernels: HashMap<(Arch, Vec<String>), Result<Kernel, String>> = HashMap::new();
    let verbosity = if args.verbose {
        Verbosity::Console
    } else {
        Verbosity::Tests
    };
    let logs = workspace::target_dir().join("qemu").join("logs");

    for profile in &selected {
        let label = &profile.name;
        println!("== {label}: {}", profile.description);
        let kernel = kernels
            .entry((profile.arch, profile.features.clone()))
            .or_insert_with(|| {
                workspace::build_test_kernel(profile.arch, build, &profile.features)
                    .map_err(|e| format!("{e:#}"))
            });
        let kernel = match kernel {
            Ok(k) => &*k,
            Err(e) => {
                println!("[{label}] FAIL build: {e}");
                tally.failed += 1;
                continue;
            }
        };
        let mut words = test_words(profile);
        let mut limits = Limits {
            timeout: Duration::from_secs(profile.timeout),
            test_timeout: Duration::from_secs(profile.test_timeout),
        };
        if let Some(selftest) = args.selftest {
            words.push(selftest.word().into());
            if selftest == SelfTest::Hang {
                limits.test_timeout = limits.test_timeout.min(HANG_TIMEOUT);
            }
        }
        let started = Instant::now();
        let spec = test_spec(profile, kernel, args.accel, words)?;
        let verdict = boot::test(&spec, limits, verbosity, &logs.join(format!("{label}.log")))?;
        println!(
            "[{label}] {} passed, {} failed, {} skipped in {:.1}s",
            verdict.passed.len(),
            verdict.failures(),
            verdict.skipped.len(),
            started.elapsed().as_secs_f64()
        );
        tally.add(label, &verdict);
        if args.selftest.is_none() {
            let (passed, failed) = reboot::run(profile, kernel, args.accel, &logs)?;
            tally.passed += passed;
            tally.failed += failed;
        }
    }

    // Power cuts on the plain x86_64 profile of each disk controller in the set, with the
    // kernel already built for it.
    if args.selftest.is_none() {
        let seed = powercut::test_seed();
        for profile in selected.iter().filter(|p| powercut::in_test(p)) {
            let key = (profile.arch, profile.features.clone());
            let Some(Ok(kernel)) = kernels.get(&key) else {
                continue;
            };
            let results = powercut::cuts(profile, kernel, args.accel, seed, powercut::TEST_CUTS)?;
            for r in &results {
                if r.ok() {
                    tally.passed += 1;
                } else {
                    tally.failed += 1;
                }
            }
        }
    }

    // Prove that the harness notices a failing and a hanging test.
    let base = selected.iter().find(|p| p.name == "x86_64");
    if let (None, Some(profile)) = (args.selftest, base) {
        let key = (profile.arch, profile.features.clone());
        if let Some(Ok(kernel)) = kernels.get(&key) {
            let label = &profile.name;
            for check in selfcheck::run_all(profile, kernel, args.accel, &logs)? {
                match check.outcome {
                    Ok(seen) => {
                        println!("[{label}] ok   harness {} ({seen})", check.title);
                        tally.passed += 1;
                    }
                    Err(wrong) => {
                        println!(
                            "[{label}] FAIL harness self-check ({}): {wrong}",
                            check.title
                        );
                        tally.failed += 1;
                    }
                }
            }
        }
    }

    println!("{}", tally.report());
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn test_words(profile: &Profile) -> Vec<String> {
    let mut words = vec!["mode=test".to_owned()];
    words.extend(profile.expect_pci_word());
    words
}

fn test_spec<'a>(
    profile: &'a Profile,
    kernel: &'a Kernel,
    accel: Accel,
    words: Vec<String>,
) -> Result<BootSpec<'a>> {
    let image = boot::image_path(profile, true);
    if let (Some(path), Some(spec)) = (&image, &profile.image) {
        image::prepare_spec(path, spec, true, true)
            .with_context(|| format!("disk image for {}", profile.name))?;
    }
    Ok(BootSpec {
        profile,
        kernel,
        accel,
        words,
        gdb: false,
        extra: Vec::new(),
        image,
    })
}

/// Whether the kernel's test `full` (possibly a module path) is the test `name`.
fn is_test(full: &str, name: &str) -> bool {
    full == name
        || full
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_match_by_last_segment() {
        assert!(is_test("selftest_fail", "selftest_fail"));
        assert!(is_test(
            "kernel::tests::selftest::selftest_fail",
            "selftest_fail"
        ));
        assert!(!is_test(
            "kernel::tests::not_selftest_fail",
            "selftest_fail"
        ));
        assert!(!is_test("selftest_hang", "selftest_fail"));
    }

    #[test]
    fn summary_line() {
        let mut tally = Tally::default();
        assert_eq!(tally.summary(), "0 passed, 0 failed");
        assert_eq!(tally.report(), "0 passed, 0 failed");
        tally.passed = 7;
        tally.failed = 1;
        tally.skip("x86_64", "needs an NVMe disk", 1);
        tally.skip("riscv64", "needs an NVMe disk", 1);
        tally.skip("x86_64", "needs an NVMe disk", 1);
        tally.skip("host", "marked #[ignore]", 1);
        tally.skip("host", "marked #[ignore]", 0);
        assert_eq!(tally.summary(), "7 passed, 1 failed, 4 skipped");
        assert_eq!(
            tally.report(),
            "4 skipped, by reason:\n\
             \x20     3  needs an NVMe disk (riscv64, x86_64)\n\
             \x20     1  marked #[ignore] (host)\n\
             7 passed, 1 failed, 4 skipped"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "xtask", "run", "--arch", "riscv64", "--gdb", "--debug", "--", "-d", "int",
        ])
        .unwrap();
        let Cmd::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.arch, Arch::Riscv64);
        assert!(run.gdb);
        assert_eq!(run.build.profile(), BuildProfile::Debug);
        assert_eq!(run.qemu_args, ["-d", "int"]);
        assert!(Cli::try_parse_from(["xtask", "test", "--selftest", "hang"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "run", "--profile", "riscv64-nvme"]).is_ok());
        let all = profiles().unwrap();
        let plain = |argv: &[&str]| {
            let Cmd::Run(run) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not run")
            };
            run_profile(&all, &run).unwrap().name
        };
        assert_eq!(plain(&["xtask", "run"]), "x86_64-run");
        assert_eq!(plain(&["xtask", "run", "--arch", "riscv64"]), "riscv64-run");
        assert_eq!(plain(&["xtask", "run", "--disk", "none"]), "x86_64");
        assert_eq!(plain(&["xtask", "run", "--disk", "nvme"]), "x86_64-nvme");
        assert!(
            Cli::try_parse_from(["xtask", "run", "--profile", "x", "--arch", "riscv64"]).is_err()
        );
        assert!(Cli::try_parse_from(["xtask", "run", "--release", "--debug"]).is_err());
        let cli = Cli::try_parse_from(["xtask", "mkfs", "a.img", "--size", "64M"]).unwrap();
        assert!(Cli::try_parse_from(["xtask", "mkfs", "a.img", "--size", "16T"]).is_ok());
        assert!(matches!(
            cli.command,
            Cmd::Image(image::ImageCmd::Mkfs {
                size: 0x400_0000,
                data_checksums: false,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["xtask", "mkfs", "a.img", "--size", "0"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "mkfs", "a.img", "--size", "lots"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "mkfs", "a.img"]).is_err());
        let cli = Cli::try_parse_from(["xtask", "ls", "a.img"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Image(image::ImageCmd::Ls { ref path, .. }) if path == "/")
        );
        assert!(Cli::try_parse_from(["xtask", "fsck", "a.img"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "put", "a.img", "in", "/x"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "get", "a.img", "/x", "out"]).is_ok());
        assert!(Cli::try_parse_from(["xtask", "get", "a.img", "/x"]).is_err());
    }
}
