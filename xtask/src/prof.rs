//! `cargo xtask prof`: an exact instruction profile of one benchmark job.
//!
//! Boots a bench profile with `benchprof=JOB:IOS` (the kernel runs only that job, between calls
//! of its `profile_mark_begin` and `profile_mark_end` functions) under
//! `-icount shift=0 -singlestep -d exec,nochain`: QEMU then logs every executed guest
//! instruction's address. The addresses between the two marks are counted, attributed to the
//! kernel's function symbols and divided by the job's I/Os: instructions per I/O per function,
//! the same quantity `cargo xtask bench --icount` reports as a total.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use object::{Object, ObjectSymbol, SymbolKind};

use crate::boot::{Accel, BootSpec};
use crate::profile::{Arch, Disk, Profile};
use crate::workspace::{self, BuildProfile};

#[derive(Args)]
pub struct ProfArgs {
    /// Guest architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    arch: Arch,
    /// Disk controller (null backend).
    #[arg(long, value_enum, default_value_t = Disk::Virtio)]
    disk: Disk,
    /// Use this profile from qemu/bench/ (file stem) instead of `ARCH-DISK-null`.
    #[arg(long, conflicts_with_all = ["arch", "disk"])]
    profile: Option<String>,
    /// Job index in the kernel's bench table (0: randread 4k QD1, 1: randread 4k QD32,
    /// 2: randwrite 4k QD32, 3: seqread 128k QD8, 4: seqwrite 128k QD8, 5: seqwrite 128k QD8
    /// ending with a flush; with a file-backend profile, the filesystem's jobs: 6: zero-copy
    /// sequential write, 256 writes of 128 KiB (`--ios 256`); 7: random 4 KiB overwrite +
    /// fsync (`--ios 512`); 8: small files, the first round of create + 4 KiB write + fsync
    /// (`--ios 100`); 9: `stat` by path of 1,000 names in a directory of 10,000 (`--ios 1000`)).
    #[arg(long, default_value_t = 0)]
    job: u32,
    /// I/Os of the profiled job (the trace has one line per guest instruction).
    #[arg(long, default_value_t = 200)]
    ios: u32,
    /// Functions to list.
    #[arg(long, default_value_t = 40)]
    top: usize,
    /// Also write `address count` for every executed address here (for annotating a
    /// disassembly).
    #[arg(long)]
    pcs: Option<PathBuf>,
    /// Profile the job on this device over the disk (`linear` or a registered name), as
    /// `cargo xtask bench --dev`.
    #[arg(long)]
    dev: Option<String>,
}

/// A function symbol of the kernel.
struct Func {
    start: u64,
    size: u64,
    name: String,
}

fn functions(elf: &[u8]) -> Result<Vec<Func>> {
    let file = object::File::parse(elf).context("parsing the kernel ELF")?;
    let mut out: Vec<Func> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            Some(Func {
                start: s.address(),
                size: s.size(),
                name: format!("{:#}", rustc_demangle::demangle(s.name().ok()?)),
            })
        })
        .collect();
    out.sort_by_key(|f| f.start);
    Ok(out)
}

fn find<'a>(funcs: &'a [Func], name: &str) -> Result<&'a Func> {
    funcs
        .iter()
        .find(|f| f.name == name)
        .with_context(|| format!("symbol {name} not in the kernel (is this a bench build?)"))
}

/// The guest address of one `-d exec` line: `Trace N: HOSTPTR [CSBASE/PC/FLAGS/CFLAGS] ...`.
fn trace_pc(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("Trace ")?;
    let open = rest.find('[')?;
    let mut fields = rest[open + 1..].split('/');
    fields.next()?;
    u64::from_str_radix(fields.next()?, 16).ok()
}

pub fn run(args: ProfArgs) -> Result<ExitCode> {
    ensure!(args.ios > 0, "--ios must be at least 1");
    let name = args
        .profile
        .clone()
        .unwrap_or_else(|| format!("{}-{}-null", args.arch, args.disk));
    let path = workspace::root()
        .join("qemu")
        .join("bench")
        .join(format!("{name}.toml"));
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let profile = Profile::parse(&name, &text).with_context(|| format!("in {}", path.display()))?;
    // A disk-image profile (file backend) also runs the filesystem jobs: `--job 6` to 11
    // profile the filesystem's sequential write, random overwrite + fsync, small files and
    // directory stats, creates and unlinks.
    let image = match &profile.image {
        Some(spec) => {
            let path = workspace::target_dir()
                .join("qemu")
                .join(format!("prof-{name}.img"));
            workspace::prepare_image(&path, spec.size_mib, false)
                .with_context(|| format!("disk image for {name}"))?;
            Some(path)
        }
        None => None,
    };
    workspace::ensure_toolchain(&[profile.arch])?;
    workspace::ensure_qemu(&[profile.arch])?;
    let kernel = workspace::build_kernel(profile.arch, BuildProfile::Release, &profile.features)?;
    let elf = fs::read(&kernel.elf)?;
    let funcs = functions(&elf)?;
    let begin = find(&funcs, "profile_mark_begin")?.start;
    let end = find(&funcs, "profile_mark_end")?.start;

    let spec = BootSpec {
        profile: &profile,
        kernel: &kernel,
        accel: Accel::Tcg,
        words: {
            let mut w = vec![
                "mode=bench".to_owned(),
                format!("benchprof={}:{}", args.job, args.ios),
            ];
            if image.is_some() {
                w.push("benchfs=1".into());
            }
            w.extend(args.dev.as_ref().map(|d| format!("bench_dev={d}")));
            w
        },
        gdb: false,
        extra: ["-icount", "shift=0", "-singlestep", "-d", "exec,nochain"]
            .map(String::from)
            .to_vec(),
        image,
    };
    let mut cmd = spec.command()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!(
        "tracing job {} ({} I/Os) on {name}: one log line per guest instruction, this takes a while",
        args.job, args.ios
    );
    let mut child = cmd.spawn().context("starting QEMU")?;
    let stderr = child.stderr.take().context("QEMU stderr")?;
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let (mut on, mut seen_end) = (false, false);
    let mut other = Vec::new();
    for line in BufReader::with_capacity(1 << 20, stderr).lines() {
        let line = line?;
        let Some(pc) = trace_pc(&line) else {
            if other.len() < 20 {
                other.push(line);
            }
            continue;
        };
        if pc == begin {
            on = true;
        } else if pc == end {
            on = false;
            seen_end = true;
        } else if on {
            *counts.entry(pc).or_default() += 1;
        }
    }
    let status = child.wait()?;
    if !seen_end {
        bail!(
            "the guest never reached profile_mark_end (QEMU {status}); its stderr began:\n{}",
            other.join("\n")
        );
    }

    let ios = f64::from(args.ios);
    let total: u64 = counts.values().sum();
    let mut per_func: HashMap<&str, u64> = HashMap::new();
    for (&pc, &n) in &counts {
        let i = funcs.partition_point(|f| f.start <= pc);
        let name = match i.checked_sub(1).map(|i| &funcs[i]) {
            Some(f) if pc < f.start + f.size.max(1) => f.name.as_str(),
            _ => "(no symbol)",
        };
        *per_func.entry(name).or_default() += n;
    }
    let mut rows: Vec<(&str, u64)> = per_func.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!(
        "{name}, job {}: {} instructions over {} I/Os = {:.1} per I/O (kernel {})",
        args.job,
        total,
        args.ios,
        total as f64 / ios,
        kernel.elf.display()
    );
    println!("{:>9}  {:>6}  function", "insn/io", "share");
    for (f, n) in rows.iter().take(args.top) {
        println!(
            "{:>9.1}  {:>5.1}%  {f}",
            *n as f64 / ios,
            100.0 * *n as f64 / total.max(1) as f64
        );
    }
    if let Some(p) = &args.pcs {
        let mut pcs: Vec<_> = counts.into_iter().collect();
        pcs.sort_unstable();
        let mut out = std::io::BufWriter::new(fs::File::create(p)?);
        for (pc, n) in pcs {
            writeln!(out, "{pc:x} {n}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_give_the_guest_pc() {
        let l = "Trace 0: 0x7fe29001c2c0 [0000000000000000/ffffffff8010a4e0/000000b0/ff020201] ";
        assert_eq!(trace_pc(l), Some(0xffff_ffff_8010_a4e0));
        assert_eq!(trace_pc("Trace 0: 0x1 [0/zz/0/0]"), None);
        assert_eq!(trace_pc("qemu-system-x86_64: warning"), None);
    }
}
