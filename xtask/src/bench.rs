//! `cargo xtask bench`: boots the kernel with `mode=bench` on a benchmark profile from
//! `qemu/bench/` and turns its `BENCH` lines into a table (and optionally JSON).
//!
//! The profiles live in their own directory so that `run` and `test` never pick them.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};

use crate::boot::{self, Accel, BootSpec, Limits};
use crate::console::Console;
use crate::guest::Guest;
use crate::ktest::Ending;
use crate::profile::{Arch, Disk, Profile};
use crate::workspace::{self, BuildProfile};

/// Block backend behind the virtio disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// `null-co`: no data, no host I/O; measures the guest stack and QEMU's device model.
    Null,
    /// A raw 256 MiB image file, `cache=none,aio=threads`.
    File,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Null => "null",
            Backend::File => "file",
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Guest architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    arch: Arch,
    /// Disk controller.
    #[arg(long, value_enum, default_value_t = Disk::Virtio)]
    disk: Disk,
    /// virtio transport on riscv64 (x86_64, NVMe and AHCI always use PCI).
    #[arg(long, value_enum, default_value_t = Transport::Mmio)]
    transport: Transport,
    /// Block backend.
    #[arg(long, value_enum, default_value_t = Backend::Null)]
    backend: Backend,
    /// Use this profile from qemu/bench/ (file stem) instead of choosing by the options above.
    #[arg(long, conflicts_with_all = ["arch", "disk", "transport", "backend"])]
    profile: Option<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run QEMU with `-icount shift=0` (guest clock = executed instructions) and report busy
    /// guest instructions per I/O.
    #[arg(long)]
    icount: bool,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    /// CPUs QEMU starts (`-smp N`, given after the profile's `-smp 1`). The JSON's `cpus` is
    /// what the kernel reports online.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    smp: u32,
    /// Build the kernel with the dev profile (default: release).
    #[arg(long)]
    debug: bool,
    /// Print the whole kernel console.
    #[arg(long, short)]
    verbose: bool,
    /// Also run the filesystem's directory jobs at 100,000 entries (`benchfs_large=1`; disk
    /// image backends only): filling the directory makes the run about 25 s longer (twice as long).
    #[arg(long)]
    fs_large: bool,
    /// Run the jobs on this device over the disk instead of the raw disk: `linear` (a window
    /// of the disk from sector 2048 to its end, as a partition made by the Linux tools) or a
    /// registered device's name (`vda1`, ...).
    #[arg(long)]
    dev: Option<String>,
}

/// virtio transport on riscv64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Mmio,
    Pci,
}

/// The profile file stem in `qemu/bench/` for these options.
fn profile_name(arch: Arch, disk: Disk, transport: Transport, backend: Backend) -> String {
    let transport = match (arch, disk, transport) {
        (Arch::Riscv64, Disk::Virtio, Transport::Pci) => "-pci",
        _ => "",
    };
    format!("{arch}-{disk}{transport}-{}", backend.name())
}

fn load(dir: &Path, name: &str) -> Result<Profile> {
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        let mut have: Vec<String> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        have.sort();
        bail!(
            "no benchmark profile {name:?} in qemu/bench/ (have: {})",
            have.join(", ")
        );
    }
    let text = fs::read_to_string(&path)?;
    Profile::parse(name, &text).with_context(|| format!("in {}", path.display()))
}

/// The bench image, written out in full (no holes) and synced, as fio lays out its files before
/// a run: on a sparse image the raw jobs' writes make the host allocate blocks as they go, which
/// slows the first run after the image is made (the raw sequential write most) and leaves the
/// allocation metadata to the first flush. An image of the right size with every block
/// allocated is kept.
fn preallocate_image(path: &Path, size_mib: u64) -> Result<()> {
    use std::io::Write as _;
    let bytes = size_mib << 20;
    if let Ok(m) = fs::metadata(path) {
        #[cfg(unix)]
        let allocated = std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= bytes;
        #[cfg(not(unix))]
        let allocated = true;
        if m.len() == bytes && allocated {
            return Ok(());
        }
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size_mib {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    Ok(())
}

/// One `BENCH job=...` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub job: String,
    pub bs: u64,
    pub qd: u64,
    pub ios: u64,
    pub ns: u64,
    pub halted_ns: u64,
    pub cycles: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub errors: u64,
    pub irqs: u64,
    pub notifies: u64,
    /// Sum over the CPUs of each one's own elapsed minus its own halted time (`busy_ns=`;
    /// kernels before it: `ns - halted_ns`).
    pub busy_ns: u64,
    /// CPUs the job ran on at once (`cpus=`, 1 if absent).
    pub cpus: u64,
    /// Completed I/Os of each CPU (`cpu_ios=a,b,...`; `[ios]` if absent).
    pub cpu_ios: Vec<u64>,
}

impl Row {
    /// Parses `BENCH job=NAME key=value ...`; `None` for other lines.
    pub fn parse(line: &str) -> Option<Result<Row>> {
        let rest = line.strip_prefix("BENCH job=")?;
        Some(Self::parse_fields(rest).with_context(|| format!("malformed bench line {line:?}")))
    }

    fn parse_fields(rest: &str) -> Result<Row> {
        let mut words = rest.split_whitespace();
        let job = words.next().context("no job name")?.to_owned();
        let mut row = Row {
            job,
            bs: 0,
            qd: 0,
            ios: 0,
            ns: 0,
            halted_ns: 0,
            cycles: 0,
            p50_ns: 0,
            p99_ns: 0,
            errors: 0,
            irqs: 0,
            notifies: 0,
            busy_ns: 0,
            cpus: 1,
            cpu_ios: Vec::new(),
        };
        let mut seen = 0u32;
        let mut busy = None;
        for word in words {
            let (key, value) = word.split_once('=').context("word without '='")?;
            if key == "cpu_ios" {
                row.cpu_ios = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("cpu_ios is not a list of numbers")?;
                continue;
            }
            let value: u64 = value
                .parse()
                .with_context(|| format!("{key} is not a number"))?;
            let (field, bit) = match key {
                "bs" => (&mut row.bs, 0),
                "qd" => (&mut row.qd, 1),
                "ios" => (&mut row.ios, 2),
                "ns" => (&mut row.ns, 3),
                "halted_ns" => (&mut row.halted_ns, 4),
                "cycles" => (&mut row.cycles, 5),
                "p50_ns" => (&mut row.p50_ns, 6),
                "p99_ns" => (&mut row.p99_ns, 7),
                "errors" => (&mut row.errors, 8),
                "irqs" => (&mut row.irqs, 9),
                "notifies" => (&mut row.notifies, 10),
                "cpus" => (&mut row.cpus, 11),
                "busy_ns" => {
                    busy = Some(value);
                    continue;
                }
                _ => continue, // newer kernels may add keys
            };
            *field = value;
            seen |= 1 << bit;
        }
        ensure!(seen & 0xff == 0xff, "missing fields");
        ensure!(row.ios > 0 && row.ns > 0, "empty job");
        row.busy_ns = busy.unwrap_or(row.ns.saturating_sub(row.halted_ns));
        if row.cpu_ios.is_empty() {
            row.cpu_ios.push(row.ios);
        }
        ensure!(
            row.cpu_ios.len() as u64 == row.cpus && row.cpu_ios.iter().sum::<u64>() == row.ios,
            "cpu_ios does not add up to ios over cpus"
        );
        Ok(row)
    }

    pub fn iops(&self) -> f64 {
        self.ios as f64 * 1e9 / self.ns as f64
    }

    pub fn mib_s(&self) -> f64 {
        self.iops() * self.bs as f64 / (1 << 20) as f64
    }

    pub fn cycles_per_io(&self) -> f64 {
        self.cycles as f64 / self.ios as f64
    }

    /// (elapsed - time all CPUs were halted at once) / I/Os: guest instructions per I/O of
    /// all CPUs together under `-icount shift=0` (the guest clock counts every CPU's
    /// instructions, and real time only while all are halted).
    pub fn busy_per_io(&self) -> f64 {
        self.ns.saturating_sub(self.halted_ns) as f64 / self.ios as f64
    }

    /// Sum of the CPUs' own busy times / I/Os: busy ns per I/O in plain TCG, where each CPU
    /// is a host thread with its own time (under `-icount` this over-counts on several CPUs:
    /// a CPU waiting for its turn to run is not halted).
    pub fn busy_ns_per_io(&self) -> f64 {
        self.busy_ns as f64 / self.ios as f64
    }

    /// `a/b/c`: each CPU's I/Os.
    fn split(&self) -> String {
        self.cpu_ios
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("/")
    }

    fn label(&self) -> String {
        let bs = if self.bs.is_multiple_of(1024) {
            format!("{}k", self.bs / 1024)
        } else {
            format!("{}", self.bs)
        };
        format!("{}-{bs}", self.job)
    }
}

/// Where and how the numbers were taken.
struct Setup {
    profile: String,
    arch: Arch,
    qemu: String,
    accel: &'static str,
    icount: bool,
    attach: String,
    /// The device the jobs ran on: `raw`, `linear` or a registered name.
    dev: String,
    /// CPUs online in the guest (the `cpus=` of the kernel's `BENCH start` line).
    cpus: u32,
}

fn table(setup: &Setup, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}), {}, accel {}{}, {} CPU(s), attach {}, device {}",
        setup.profile,
        setup.arch,
        setup.qemu,
        setup.accel,
        if setup.icount {
            ", -icount shift=0"
        } else {
            ""
        },
        setup.cpus,
        setup.attach,
        setup.dev
    );
    let insn = if setup.icount {
        "  insn/io"
    } else {
        " busy ns/io"
    };
    let split = if setup.cpus > 1 { "  I/Os per CPU" } else { "" };
    let _ = writeln!(
        out,
        "{:<14} {:>3} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10}{insn}{split}",
        "job", "qd", "ios", "IOPS", "MiB/s", "p50 us", "p99 us", "cycles/io"
    );
    for r in rows {
        let _ = write!(
            out,
            "{:<14} {:>3} {:>6} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>10.0}",
            r.label(),
            r.qd,
            r.ios,
            r.iops(),
            r.mib_s(),
            r.p50_ns as f64 / 1e3,
            r.p99_ns as f64 / 1e3,
            r.cycles_per_io()
        );
        if setup.icount {
            let _ = write!(out, " {:>8.0}", r.busy_per_io());
        } else {
            let _ = write!(out, " {:>11.0}", r.busy_ns_per_io());
        }
        if setup.cpus > 1 {
            let _ = write!(out, "  {}", r.split());
        }
        out.push('\n');
    }
    if setup.cpus > 1 {
        out.push_str(
            "each job ran on every CPU at once (qd per CPU, each CPU in its own part of the disk); \
             IOPS, MiB/s and per-I/O figures are of all CPUs together\n",
        );
    }
    if setup.icount {
        out.push_str(
            "under -icount shift=0 the guest clock counts executed instructions (1 ns each) and \
             real time while halted: us figures are not wall-clock times; insn/io = \
             (elapsed - halted) / I/Os\n",
        );
    }
    out
}

/// The filesystem jobs (`fs-*`) as ratios to the raw 128 KiB sequential write of the same run.
fn fs_ratios(rows: &[Row]) -> String {
    let mut out = String::new();
    let Some(raw) = rows
        .iter()
        .find(|r| r.job == "seqwrite" && r.bs == 128 << 10)
    else {
        return out;
    };
    // The raw write of the same size ended by a flush: durable bandwidth on both sides, for the
    // jobs that end with an fsync.
    let durable = rows
        .iter()
        .find(|r| r.job == "seqwrite-flush" && r.bs == 128 << 10);
    // (Jobs that move no bytes, the directory operations, have no bandwidth to compare.)
    for r in rows.iter().filter(|r| r.job.starts_with("fs-") && r.bs > 0) {
        let _ = writeln!(
            out,
            "{:<18} {:>9.1} MiB/s = {:>6.1}% of raw seqwrite-128k qd{} ({:.1} MiB/s); {:.0} ops/s",
            r.label(),
            r.mib_s(),
            100.0 * r.mib_s() / raw.mib_s(),
            raw.qd,
            raw.mib_s(),
            r.iops()
        );
        if let Some(d) = durable
            && r.job.starts_with("fs-seqwrite")
            && !r.job.ends_with("-nosync")
        {
            let _ = writeln!(
                out,
                "{:<18} {:>9.1} MiB/s = {:>6.1}% of raw seqwrite-flush-128k qd{} ({:.1} MiB/s, 32 MiB then a flush)",
                r.label(),
                r.mib_s(),
                100.0 * r.mib_s() / d.mib_s(),
                d.qd,
                d.mib_s()
            );
        }
    }
    // A job and its `-nosync` twin (the same run timed up to the end of its data writes):
    // the difference is what the final fsync (commit and flush) cost.
    for r in rows.iter().filter(|r| r.job.starts_with("fs-")) {
        let twin = format!("{}-nosync", r.job);
        if let Some(d) = rows.iter().find(|d| d.job == twin && d.bs == r.bs) {
            let _ = writeln!(
                out,
                "{:<18} fsync after the data: {:.1} ms",
                r.label(),
                r.ns.saturating_sub(d.ns) as f64 / 1e6
            );
        }
    }
    out
}

/// The directory sizes of the filesystem's directory jobs (`fs-dir{TAG}-{OP}`): tag, entries.
const DIR_SIZES: [(&str, u64); 4] = [
    ("100", 100),
    ("1k", 1_000),
    ("10k", 10_000),
    ("100k", 100_000),
];
/// The directory jobs' operations.
const DIR_OPS: [&str; 3] = ["create", "stat", "unlink"];

/// How flat the directory jobs are over the directory sizes run.
#[derive(Debug, PartialEq)]
struct DirFlat {
    /// The sizes with all three jobs, ascending.
    sizes: Vec<u64>,
    /// For each of [`DIR_OPS`]: the largest busy time per operation over `sizes` divided by
    /// the smallest (under `-icount`, busy guest instructions).
    ratios: [f64; 3],
}

/// The directory jobs' flatness, if at least two sizes ran.
fn dir_flat(rows: &[Row]) -> Option<DirFlat> {
    let per_op = |tag: &str, op: &str| {
        let job = format!("fs-dir{tag}-{op}");
        rows.iter().find(|r| r.job == job).map(Row::busy_per_io)
    };
    let mut sizes = Vec::new();
    let mut costs: [Vec<f64>; 3] = Default::default();
    for (tag, n) in DIR_SIZES {
        let got: Vec<f64> = DIR_OPS.iter().filter_map(|op| per_op(tag, op)).collect();
        if got.len() == DIR_OPS.len() {
            sizes.push(n);
            for (c, v) in costs.iter_mut().zip(got) {
                c.push(v);
            }
        }
    }
    if sizes.len() < 2 {
        return None;
    }
    let ratios = costs.map(|c| {
        let max = c.iter().copied().fold(f64::MIN, f64::max);
        let min = c.iter().copied().fold(f64::MAX, f64::min);
        if min > 0.0 { max / min } else { f64::INFINITY }
    });
    Some(DirFlat { sizes, ratios })
}

/// `12345` as `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line: the directory jobs' ratios (largest over smallest cost per operation).
fn dir_flat_line(d: &DirFlat, icount: bool) -> String {
    format!(
        "dir ops {} -> {}: create {:.2}, stat {:.2}, unlink {:.2} (max/min of busy {} per op over {} sizes)\n",
        thousands(d.sizes[0]),
        thousands(d.sizes[d.sizes.len() - 1]),
        d.ratios[0],
        d.ratios[1],
        d.ratios[2],
        if icount { "instructions" } else { "ns" },
        d.sizes.len()
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(setup: &Setup, rows: &[Row]) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"profile\": {},", json_str(&setup.profile));
    let _ = writeln!(out, "  \"arch\": {},", json_str(&setup.arch.to_string()));
    let _ = writeln!(out, "  \"qemu\": {},", json_str(&setup.qemu));
    let _ = writeln!(out, "  \"accel\": {},", json_str(setup.accel));
    let _ = writeln!(out, "  \"icount\": {},", setup.icount);
    let _ = writeln!(out, "  \"attach\": {},", json_str(&setup.attach));
    let _ = writeln!(out, "  \"dev\": {},", json_str(&setup.dev));
    let _ = writeln!(out, "  \"cpus\": {},", setup.cpus);
    out.push_str("  \"rows\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            out,
            "    {{\"job\": {}, \"bs\": {}, \"qd\": {}, \"ios\": {}, \"iops\": {:.1}, \
             \"mib_s\": {:.2}, \"p50_us\": {:.2}, \"p99_us\": {:.2}, \"cycles_per_io\": {:.1}, \
             \"elapsed_ns\": {}, \"halted_ns\": {}, \"irqs\": {}, \"notifies\": {}, \
             \"busy_ns\": {}, \"busy_ns_per_io\": {:.1}, \"cpus\": {}, \"cpu_ios\": [{}]",
            json_str(&r.label()),
            r.bs,
            r.qd,
            r.ios,
            r.iops(),
            r.mib_s(),
            r.p50_ns as f64 / 1e3,
            r.p99_ns as f64 / 1e3,
            r.cycles_per_io(),
            r.ns,
            r.halted_ns,
            r.irqs,
            r.notifies,
            r.busy_ns,
            r.busy_ns_per_io(),
            r.cpus,
            r.cpu_ios
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if setup.icount {
            let _ = write!(out, ", \"insn_per_io\": {:.1}", r.busy_per_io());
        }
        out.push('}');
        if i + 1 < rows.len() {
            out.push(',');
        }
        out.push('\n');
    }
    out.push_str("  ],\n");
    match dir_flat(rows) {
        Some(d) => {
            let _ = writeln!(
                out,
                "  \"dir_flat\": {{\"sizes\": [{}], \"create\": {:.3}, \"stat\": {:.3}, \"unlink\": {:.3}}}",
                d.sizes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                d.ratios[0],
                d.ratios[1],
                d.ratios[2]
            );
        }
        None => out.push_str("  \"dir_flat\": null\n"),
    }
    out.push_str("}\n");
    out
}

/// First line of `qemu-system-* --version`.
fn qemu_version(arch: Arch) -> Result<String> {
    let out = Command::new(arch.qemu_binary())
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", arch.qemu_binary()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .next()
        .unwrap_or("QEMU (unknown version)")
        .to_owned())
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let dir = workspace::root().join("qemu").join("bench");
    let name = args
        .profile
        .clone()
        .unwrap_or_else(|| profile_name(args.arch, args.disk, args.transport, args.backend));
    let profile = load(&dir, &name)?;
    workspace::ensure_toolchain(&[profile.arch])?;
    workspace::ensure_qemu(&[profile.arch])?;
    let build = if args.debug {
        BuildProfile::Debug
    } else {
        BuildProfile::Release
    };
    let kernel = workspace::build_kernel(profile.arch, build, &profile.features)?;
    let image = boot::image_path(&profile, false).map(|p| {
        p.with_file_name(format!(
            "bench-{}",
            p.file_name().unwrap().to_string_lossy()
        ))
    });
    if let (Some(path), Some(spec)) = (&image, &profile.image) {
        preallocate_image(path, spec.size_mib)
            .with_context(|| format!("disk image for {}", profile.name))?;
    }
    if args.icount && args.smp > 1 && profile.arch == Arch::Riscv64 {
        eprintln!(
            "warning: riscv64 with --icount and several CPUs: QEMU runs the harts one at a time, and \
             a hart spinning for another one runs to the end of its time slice; the figures are \
             not meaningful and a job can take minutes (see docs/bench.md)"
        );
    }
    let mut extra = Vec::new();
    if args.icount {
        extra.extend(["-icount".to_owned(), "shift=0".to_owned()]);
    }
    if args.smp != 1 {
        extra.extend(["-smp".to_owned(), args.smp.to_string()]);
    }
    let spec = BootSpec {
        profile: &profile,
        kernel: &kernel,
        accel: args.accel,
        // The filesystem jobs only where the disk keeps data (an image file, not null-co).
        words: {
            let mut w = vec!["mode=bench".to_owned()];
            if profile.image.is_some() {
                w.push("benchfs=1".into());
                if args.fs_large {
                    w.push("benchfs_large=1".into());
                }
            }
            w.extend(args.dev.as_ref().map(|d| format!("bench_dev={d}")));
            w
        },
        gdb: false,
        extra,
        image,
    };
    let qemu = qemu_version(profile.arch)?;
    eprintln!("booting {} ({})", profile.name, profile.description);

    let mut guest = Guest::spawn(spec.command()?, true)?;
    let mut console = match &kernel.table {
        Some(table) => Console::defmt(table, kernel.locations.as_ref(), Some(workspace::root())),
        None => Console::text(),
    };
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: Duration::from_secs(profile.test_timeout),
    };
    let mut rows = Vec::new();
    let mut transcript = Vec::new();
    let mut attach = String::from("?");
    let mut dev = String::from("raw");
    let mut cpus = 1u32;
    let mut problems = Vec::new();
    let verbose = args.verbose;
    let (_, ending) = boot::supervise(&mut guest, &mut console, Some(limits), |line, _| {
        transcript.push(line.to_string());
        if verbose {
            println!("  {line}");
        }
        let Some(msg) = line.message() else { return };
        if let Some(rest) = msg.strip_prefix("BENCH start ") {
            attach = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("attach="))
                .unwrap_or("?")
                .to_owned();
            if let Some(d) = rest.split_whitespace().find_map(|w| w.strip_prefix("dev=")) {
                d.clone_into(&mut dev);
            }
            // Kernels before the `cpus=` word ran on one CPU.
            cpus = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cpus=")?.parse().ok())
                .unwrap_or(1);
        }
        match Row::parse(msg) {
            Some(Ok(row)) => rows.push(row),
            Some(Err(e)) => problems.push(format!("{e:#}")),
            None => {}
        }
    })?;

    let log = workspace::target_dir()
        .join("qemu")
        .join("logs")
        .join(format!("bench-{}.log", profile.name));
    if let Some(d) = log.parent() {
        fs::create_dir_all(d)?;
    }
    let mut text = transcript.join("\n");
    text.push('\n');
    let stderr = guest.stderr();
    if !stderr.is_empty() {
        text.push_str("--- QEMU stderr ---\n");
        text.push_str(&stderr);
    }
    fs::write(&log, text)?;

    let setup = Setup {
        profile: profile.name.clone(),
        arch: profile.arch,
        qemu,
        accel: match args.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        },
        icount: args.icount,
        attach,
        dev,
        cpus,
    };
    if !rows.is_empty() {
        print!("{}", table(&setup, &rows));
        print!("{}", fs_ratios(&rows));
        if let Some(d) = dir_flat(&rows) {
            print!("{}", dir_flat_line(&d, args.icount));
        }
    }
    if let Some(path) = &args.json {
        fs::write(path, json(&setup, &rows))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match ending {
        Ending::Exited(Some(code)) if code == profile.exit.success => {}
        Ending::Exited(code) => problems.push(format!("QEMU exited with status {code:?}")),
        Ending::TimedOut(limit) => problems.push(format!("killed after {}s", limit.as_secs())),
    }
    if rows.iter().any(|r| r.errors > 0) {
        problems.push("I/O errors in some jobs".into());
    }
    if problems.is_empty() && rows.is_empty() {
        problems.push("the kernel printed no BENCH lines".into());
    }
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("bench: {p}");
    }
    let tail = transcript.len().saturating_sub(20);
    for line in &transcript[tail..] {
        eprintln!("    | {line}");
    }
    eprintln!("    full console: {}", log.display());
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "BENCH job=randread bs=4096 qd=32 ios=1000 ns=50000000 halted_ns=48000000 \
                        cycles=50000000 p50_ns=1000000 p99_ns=2000000 errors=0 irqs=900 notifies=10";

    #[test]
    fn parses_rows() {
        let row = Row::parse(LINE).unwrap().unwrap();
        assert_eq!(row.job, "randread");
        assert_eq!((row.bs, row.qd, row.ios), (4096, 32, 1000));
        assert!((row.iops() - 20_000.0).abs() < 1e-6);
        assert!((row.busy_per_io() - 2_000.0).abs() < 1e-6);
        assert_eq!(row.label(), "randread-4k");
        assert!(Row::parse("BENCH start arch=x").is_none());
        assert!(Row::parse("KTEST pass x").is_none());
        assert!(Row::parse("BENCH job=x bs=1").unwrap().is_err());
        assert!(
            Row::parse(&LINE.replace("qd=32", "qd=lots"))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn parses_several_cpus() {
        // Before `busy_ns=`/`cpus=`/`cpu_ios=`: one CPU, busy = elapsed - halted.
        let one = Row::parse(LINE).unwrap().unwrap();
        assert_eq!((one.cpus, one.cpu_ios.clone()), (1, vec![1000]));
        assert_eq!(one.busy_ns, 2_000_000);
        let line =
            LINE.replace("ios=1000", "ios=1001") + " busy_ns=9000000 cpus=3 cpu_ios=300,400,301";
        let row = Row::parse(&line).unwrap().unwrap();
        assert_eq!(row.cpus, 3);
        assert_eq!(row.cpu_ios, vec![300, 400, 301]);
        assert_eq!(row.split(), "300/400/301");
        assert!((row.busy_ns_per_io() - 9_000_000.0 / 1001.0).abs() < 1e-6);
        // The icount figure stays elapsed minus the time all CPUs were halted at once.
        assert!((row.busy_per_io() - 2_000_000.0 / 1001.0).abs() < 1e-6);
        // The per-CPU counts must add up to the total and name every CPU.
        assert!(
            Row::parse(&line.replace("cpu_ios=300", "cpu_ios=299"))
                .unwrap()
                .is_err()
        );
        assert!(
            Row::parse(&line.replace("cpus=3", "cpus=2"))
                .unwrap()
                .is_err()
        );
        assert!(Row::parse(&line.replace("400", "x")).unwrap().is_err());
        let setup = Setup {
            profile: "x86_64-nvme-null".into(),
            arch: Arch::X86_64,
            qemu: "QEMU".into(),
            accel: "tcg",
            icount: false,
            attach: "nvme-Msix".into(),
            dev: "raw".into(),
            cpus: 3,
        };
        let text = table(&setup, std::slice::from_ref(&row));
        assert!(
            text.contains("busy ns/io") && text.contains("300/400/301"),
            "{text}"
        );
        let text = json(&setup, &[row]);
        assert!(text.contains("\"cpu_ios\": [300, 400, 301]"), "{text}");
        assert!(text.contains("\"busy_ns\": 9000000"), "{text}");
    }

    #[test]
    fn json_has_the_fields() {
        let row = Row::parse(LINE).unwrap().unwrap();
        let setup = Setup {
            profile: "x86_64-virtio-null".into(),
            arch: Arch::X86_64,
            qemu: "QEMU emulator version 7.2.0 \"x\"".into(),
            accel: "tcg",
            icount: true,
            attach: "PciMsix".into(),
            dev: "linear".into(),
            cpus: 2,
        };
        let text = json(&setup, &[row.clone(), row]);
        assert!(text.contains("\"dev\": \"linear\""));
        assert!(text.contains("\"cpus\": 2,"));
        assert!(table(&setup, &[]).contains("device linear"));
        for key in [
            "\"job\"",
            "\"qd\"",
            "\"iops\"",
            "\"mib_s\"",
            "\"p50_us\"",
            "\"p99_us\"",
            "\"insn_per_io\"",
        ] {
            assert_eq!(text.matches(key).count(), 2, "{key}");
        }
        assert!(text.contains("7.2.0 \\\"x\\\""));
        assert!(table(&setup, &[]).contains("insn/io"));
    }

    #[test]
    fn fs_ratios_and_fsync_cost() {
        let raw = Row::parse(&LINE.replace("randread bs=4096 qd=32", "seqwrite bs=131072 qd=8"))
            .unwrap()
            .unwrap();
        let fs = |job: &str, ns: u64| {
            Row::parse(
                &LINE
                    .replace("randread", job)
                    .replace("ns=50000000", &format!("ns={ns}")),
            )
            .unwrap()
            .unwrap()
        };
        let text = fs_ratios(&[
            raw,
            fs("fs-seqwrite-nosync", 40_000_000),
            fs("fs-seqwrite", 50_000_000),
        ]);
        assert!(text.contains("fs-seqwrite-4k"), "{text}");
        assert!(text.contains("fsync after the data: 10.0 ms"), "{text}");
        assert_eq!(text.matches("fsync after").count(), 1, "{text}");
        assert!(!text.contains("seqwrite-flush"), "{text}");
        let durable =
            Row::parse(&LINE.replace("randread bs=4096 qd=32", "seqwrite-flush bs=131072 qd=8"))
                .unwrap()
                .unwrap();
        let text = fs_ratios(&[
            Row::parse(&LINE.replace("randread bs=4096 qd=32", "seqwrite bs=131072 qd=8"))
                .unwrap()
                .unwrap(),
            durable,
            fs("fs-seqwrite-nosync", 40_000_000),
            fs("fs-seqwrite", 50_000_000),
        ]);
        // Only the job with the fsync is compared with the flushed raw write.
        assert_eq!(text.matches("of raw seqwrite-flush").count(), 1, "{text}");
    }

    #[test]
    fn directory_jobs_flatness() {
        let row = |job: &str, ns: u64| {
            Row::parse(&format!(
                "BENCH job={job} bs=0 qd=1 ios=100 ns={ns} halted_ns=1000 cycles=1 p50_ns=1 \
                 p99_ns=1 errors=0"
            ))
            .unwrap()
            .unwrap()
        };
        let mut rows = Vec::new();
        for (tag, ns) in [("100", 10_000), ("10k", 16_000), ("100k", 31_000)] {
            for (op, k) in [("create", 1), ("stat", 2), ("unlink", 3)] {
                rows.push(row(&format!("fs-dir{tag}-{op}"), ns * k + 1000));
            }
        }
        // A size missing a job is left out.
        rows.push(row("fs-dir1k-create", 99_000_000));
        let d = dir_flat(&rows).unwrap();
        assert_eq!(d.sizes, [100, 10_000, 100_000]);
        for r in d.ratios {
            assert!((r - 3.1).abs() < 1e-9, "{r}");
        }
        assert_eq!(
            dir_flat_line(&d, true),
            "dir ops 100 -> 100,000: create 3.10, stat 3.10, unlink 3.10 (max/min of busy \
             instructions per op over 3 sizes)\n"
        );
        assert!(
            json(&setup_for_test(), &rows)
                .contains("\"dir_flat\": {\"sizes\": [100, 10000, 100000], \"create\": 3.100")
        );
        assert!(dir_flat(&rows[..3]).is_none());
        assert!(json(&setup_for_test(), &rows[..3]).contains("\"dir_flat\": null"));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(100), "100");
        // No bandwidth line for jobs without bytes.
        let raw = Row::parse(&LINE.replace("randread bs=4096 qd=32", "seqwrite bs=131072 qd=8"))
            .unwrap()
            .unwrap();
        rows.push(raw);
        assert!(!fs_ratios(&rows).contains("fs-dir"));
    }

    fn setup_for_test() -> Setup {
        Setup {
            profile: "x86_64-virtio-file".into(),
            arch: Arch::X86_64,
            qemu: "QEMU".into(),
            accel: "tcg",
            icount: true,
            attach: "PciMsix".into(),
            dev: "raw".into(),
            cpus: 1,
        }
    }

    #[test]
    fn profiles_exist_and_parse() {
        let dir = workspace::root().join("qemu").join("bench");
        for arch in [Arch::X86_64, Arch::Riscv64] {
            for backend in [Backend::Null, Backend::File] {
                for transport in [Transport::Mmio, Transport::Pci] {
                    let name = profile_name(arch, Disk::Virtio, transport, backend);
                    let p = load(&dir, &name).unwrap();
                    assert_eq!(p.arch, arch);
                    assert!(!p.test);
                    assert_eq!(p.image.is_some(), backend == Backend::File, "{name}");
                }
            }
        }
        for arch in [Arch::X86_64, Arch::Riscv64] {
            for disk in [Disk::Nvme, Disk::Ahci] {
                for transport in [Transport::Mmio, Transport::Pci] {
                    let name = profile_name(arch, disk, transport, Backend::Null);
                    assert_eq!(name, format!("{arch}-{disk}-null"));
                    let p = load(&dir, &name).unwrap();
                    assert_eq!((p.arch, p.disk), (arch, disk));
                    assert!(!p.test);
                    assert!(p.image.is_none(), "{name}");
                }
            }
        }
        assert!(load(&dir, "x86_64-nvme-file").is_err());
    }
}
