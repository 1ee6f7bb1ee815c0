//! `cargo xtask powercut`: power cuts during filesystem writes, checked on the host.
//!
//! Each cut boots a kernel in `mode=powercut seed=S` (`kernel/src/powercut.rs`) on a fresh
//! tinyfs image, lets it run its seeded workload until it has acknowledged a seeded number of
//! `fsync`s, waits a seeded extra delay, and kills QEMU (SIGKILL, mid-write).
//!
//! Killing QEMU alone loses nothing the guest wrote: QEMU's writes sit in the host's page
//! cache, which outlives it. So the disk is a `blklogwrites` node (`cache=writeback`): QEMU
//! writes the image as usual and also appends every write and every cache flush the guest
//! sends, in order, to a log. From the image as it was before the boot and that log, the host
//! builds the states a real disk with a volatile write cache could be left in:
//!
//! - **flushed**: only what a flush made durable (every write logged before the last flush,
//!   plus FUA writes): the whole write cache lost;
//! - **as left**: every write QEMU made (the image file itself);
//! - **partial**: the flushed state plus a seeded random subset of the later writes.
//!
//! On each: the host's fsck must find no problem, and `/pc` must hold exactly the files of
//! the newest acknowledged operation, or of a later one the guest had started (an `fsync`
//! that completed but whose acknowledgement never left the guest). A file whose state matches
//! neither is an acknowledged write lost. If the guest's `fsync` returned before its data was
//! flushed, the flushed state shows it.
//!
//! Ends with one line `N cuts, L acknowledged writes lost, C/N fsck-clean`; exits non-zero on
//! any loss, any unclean image, or a cut that went wrong (a guest error, no acknowledgement).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::boot::{Accel, BootSpec};
use crate::console::Console;
use crate::guest::{self, Guest};
use crate::profile::{Arch, Disk, Profile};
use crate::workspace::{self, BuildProfile, Kernel};

/// Options of `cargo xtask powercut`.
#[derive(Args)]
pub struct PowercutArgs {
    /// Disk controller.
    #[arg(long, value_enum, default_value_t = Disk::Virtio)]
    disk: Disk,
    /// Guest architecture.
    #[arg(long, value_enum, default_value_t = Arch::X86_64)]
    arch: Arch,
    /// Number of cuts.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// Seed of the first cut (cut `k` uses `seed + k`); everything a cut does follows from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
}

/// Size of the image each cut starts from (a fresh tinyfs filesystem).
const IMAGE_MIB: u64 = 64;
/// Most acknowledgements a cut waits for before its delay starts.
const MAX_ACKS: u64 = 24;
/// Longest extra delay after the last awaited acknowledgement.
const MAX_DELAY_MS: u64 = 400;
/// How long a cut may take before it counts as hung.
const CUT_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the power cuts.
pub fn run(args: PowercutArgs) -> Result<ExitCode> {
    let profile = profile_for(args.arch, args.disk)?;
    workspace::ensure_toolchain(&[profile.arch])?;
    workspace::ensure_qemu(&[profile.arch])?;
    let kernel = workspace::build_kernel(profile.arch, BuildProfile::Release, &profile.features)?;
    let results = cuts(&profile, &kernel, args.accel, args.seed, args.runs)?;
    let cuts = results.len();
    let lost: usize = results.iter().map(|r| r.lost).sum();
    let clean = results.iter().filter(|r| r.clean).count();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    println!("{}", summary(cuts, lost, clean, errors));
    Ok(if results.iter().all(CutResult::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Cuts `cargo xtask test` makes on each x86_64 disk profile of its set.
pub const TEST_CUTS: u32 = 10;

/// Whether `cargo xtask test` makes power cuts on `profile`: the plain x86_64 profile of each
/// disk controller (`x86_64-virtio`, `x86_64-nvme`, `x86_64-ahci`).
pub fn in_test(profile: &Profile) -> bool {
    profile.arch == Arch::X86_64
        && profile.disk != Disk::None
        && profile.name == format!("{}-{}", profile.arch, profile.disk)
}

/// A seed for the cuts of `cargo xtask test`: the time, so that runs explore different
/// workloads and kill points (each cut prints its seed; `cargo xtask powercut --seed` repeats
/// the workload).
pub fn test_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() % 1_000_000)
}

/// The final line.
fn summary(cuts: usize, lost: usize, clean: usize, errors: usize) -> String {
    let mut line =
        format!("{cuts} cuts, {lost} acknowledged writes lost, {clean}/{cuts} fsck-clean");
    if errors > 0 {
        line.push_str(&format!(", {errors} cuts failed to run"));
    }
    line
}

/// The outcome of one cut.
#[derive(Debug, Default)]
pub struct CutResult {
    /// Acknowledged file states missing or wrong (worst of the checked images).
    pub lost: usize,
    /// Every checked image passed fsck.
    pub clean: bool,
    /// The cut could not be run or judged (guest error, no acknowledgement, bad log).
    pub error: Option<String>,
    /// When it was cut and what each image held.
    pub what: String,
}

impl CutResult {
    /// Nothing lost, every image clean, the cut ran.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.clean && self.error.is_none()
    }
}

/// The profile for `arch` and `disk`: `ARCH-DISK` if there is one, else the first match.
fn profile_for(arch: Arch, disk: Disk) -> Result<Profile> {
    ensure!(
        disk != Disk::None,
        "a power cut needs a disk: --disk virtio|nvme|ahci"
    );
    let all = crate::profile::load_all(&workspace::root().join("qemu"))?;
    let exact = format!("{arch}-{disk}");
    match all.iter().find(|p| p.name == exact) {
        Some(p) => Ok(p.clone()),
        None => crate::profile::select_for_run(&all, arch, disk),
    }
}

/// The profile with its drive replaced by a write-logging one over `{image}` and `log`.
fn logging_profile(profile: &Profile, log: &Path) -> Result<Profile> {
    ensure!(
        profile.drives.len() == 1,
        "profile {} has {} drives; a power cut wants exactly one",
        profile.name,
        profile.drives.len()
    );
    let id = profile.drives[0]
        .split([',', ' '])
        .find_map(|w| w.strip_prefix("id="))
        .with_context(|| format!("profile {}: the drive has no id=", profile.name))?
        .to_owned();
    let log = log.to_str().context("log path is not UTF-8")?;
    ensure!(
        !log.contains([',', ' ']),
        "the log path {log:?} must not contain commas or spaces (QEMU option syntax)"
    );
    let mut p = profile.clone();
    p.drives = vec![format!(
        "-drive if=none,id={id},driver=blklogwrites,cache=writeback,\
         file.driver=file,file.filename={{image}},\
         log.driver=file,log.filename={log},log-sector-size=512"
    )];
    Ok(p)
}

/// Makes `runs` cuts on `profile` with `kernel` (any build with `mode=powercut`), seeds
/// `seed, seed + 1, ..`, printing one line per cut.
pub fn cuts(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    seed: u64,
    runs: u32,
) -> Result<Vec<CutResult>> {
    let dir = workspace::target_dir().join("qemu").join("powercut");
    fs::create_dir_all(&dir)?;
    println!(
        "== power cuts on {} ({}), {runs} cuts from seed {seed}",
        profile.name, profile.description
    );
    let mut results = Vec::new();
    for k in 0..runs {
        let seed = seed.wrapping_add(k as u64);
        let started = Instant::now();
        let r = match one_cut(profile, kernel, accel, &dir, seed) {
            Ok(r) => r,
            Err(e) => CutResult {
                error: Some(format!("{e:#}")),
                ..CutResult::default()
            },
        };
        let secs = started.elapsed().as_secs_f64();
        let label = &profile.name;
        match &r.error {
            Some(e) => println!("[{label}] FAIL powercut seed={seed}: {e} ({secs:.1}s)"),
            None if r.ok() => println!(
                "[{label}] ok   powercut seed={seed}: {} ({secs:.1}s)",
                r.what
            ),
            None => println!(
                "[{label}] FAIL powercut seed={seed}: {} acknowledged writes lost, fsck {}; {} ({secs:.1}s)",
                r.lost,
                if r.clean { "clean" } else { "NOT clean" },
                r.what
            ),
        }
        results.push(r);
    }
    Ok(results)
}

/// One cut: fresh image, boot, kill, check.
fn one_cut(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    dir: &Path,
    seed: u64,
) -> Result<CutResult> {
    let started = Instant::now();
    let label = &profile.name;
    let image = dir.join(format!("{label}.img"));
    let base = dir.join(format!("{label}-base.img"));
    let log = dir.join(format!("{label}-writes.log"));
    let console_log = dir.join(format!("{label}-console.log"));
    let _ = fs::remove_file(&image);
    crate::image::mkfs(&image, IMAGE_MIB << 20)?;
    fs::copy(&image, &base)?;
    fs::write(&log, b"")?;

    let mut rng = Rng(seed ^ 0x6375_7473);
    let acks_wanted = 1 + rng.below(MAX_ACKS);
    let delay = Duration::from_millis(rng.below(MAX_DELAY_MS + 1));
    let p = logging_profile(profile, &log)?;
    let spec = BootSpec {
        profile: &p,
        kernel,
        accel,
        words: vec!["mode=powercut".into(), format!("seed={seed}")],
        gdb: false,
        extra: Vec::new(),
        image: Some(image.clone()),
    };
    let mut guest = Guest::spawn(spec.command()?, true)?;
    let mut console = match &kernel.table {
        Some(t) => Console::defmt(t, kernel.locations.as_ref(), Some(workspace::root())),
        None => Console::text(),
    };
    let mut run = Run::default();
    let mut transcript = Vec::new();
    let mut kill_at: Option<Instant> = None;
    let deadline = started + CUT_TIMEOUT;
    let mut ending = None;
    loop {
        let at = kill_at.unwrap_or(deadline).min(deadline);
        match guest.next_event(Some(at))? {
            guest::Event::Output(bytes) => {
                for line in console.feed(&bytes) {
                    transcript.push(line.to_string());
                    if let Some(m) = line.message() {
                        run.observe(m);
                    }
                }
                if kill_at.is_none() && run.acks >= acks_wanted {
                    kill_at = Some(Instant::now() + delay);
                }
            }
            guest::Event::Exited(status) => {
                ending = Some(format!("QEMU exited by itself ({status})"));
                break;
            }
            guest::Event::Deadline => {
                guest.kill()?;
                if kill_at.is_none_or(|k| Instant::now() < k) {
                    ending = Some(format!("no kill point after {CUT_TIMEOUT:?}"));
                }
                break;
            }
        }
    }
    // What the guest wrote before it died is still in the pipe.
    while let Ok(guest::Event::Output(bytes)) = guest.next_event(Some(Instant::now())) {
        for line in console.feed(&bytes) {
            transcript.push(line.to_string());
            if let Some(m) = line.message() {
                run.observe(m);
            }
        }
    }
    for line in console.finish() {
        transcript.push(line.to_string());
        if let Some(m) = line.message() {
            run.observe(m);
        }
    }
    let mut text = transcript.join("\n");
    text.push_str("\n--- QEMU stderr ---\n");
    text.push_str(&guest.stderr());
    fs::write(&console_log, text)?;
    let see_log = format!("console: {}", console_log.display());
    if let Some(e) = &run.error {
        bail!("guest: {e} ({see_log})");
    }
    if let Some(e) = ending {
        bail!("{e} after {} acknowledgements ({see_log})", run.acks);
    }
    ensure!(run.ready, "the workload never started ({see_log})");
    ensure!(
        run.acks > 0,
        "no acknowledgement before the cut ({see_log})"
    );

    let writes = WriteLog::read(&log).with_context(|| format!("reading {}", log.display()))?;
    let commit_fua = profile.disk == Disk::Nvme;
    let variants = writes.variants(&mut rng, commit_fua);
    let mut result = CutResult {
        clean: true,
        ..CutResult::default()
    };
    let mut notes = Vec::new();
    for (name, keep) in &variants {
        let img = dir.join(format!("{label}-{name}.img"));
        if *name == "as-left" {
            fs::copy(&image, &img)?;
        } else {
            fs::copy(&base, &img)?;
            writes.apply(&log, &img, keep)?;
        }
        let check = check_image(&img, &run)?;
        result.clean &= check.clean;
        result.lost = result.lost.max(check.lost);
        if !check.clean || check.lost > 0 {
            println!(
                "[{label}]      powercut seed={seed}, {name} image: {}",
                check.detail.trim()
            );
        }
        notes.push(format!("{name} {}", check.state));
    }
    result.what = format!(
        "killed {} ms after ack {acks_wanted}, at op {} (last ack {}); {} writes logged, {} \
         volatile; images: {}",
        delay.as_millis(),
        run.ops.len(),
        run.last_ack,
        writes.entries.len(),
        writes.volatile(commit_fua),
        notes.join(", "),
    );
    Ok(result)
}

/// splitmix64, for the kill point and the partial state.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---- The guest's protocol and the file model ----

/// What a file holds (see `kernel/src/powercut.rs`): the pattern of `seed` over `size` bytes,
/// with `patch` = `(offset, len, seed)` from another seed's pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileState {
    seed: u64,
    size: u64,
    patch: Option<(u64, u64, u64)>,
}

impl FileState {
    fn contents(&self) -> Vec<u8> {
        let mut out = pattern(self.seed, 0, self.size);
        if let Some((off, len, seed)) = self.patch {
            let (lo, hi) = (off.min(self.size), (off + len).min(self.size));
            let part = pattern(seed, lo, hi - lo);
            out[lo as usize..hi as usize].copy_from_slice(&part);
        }
        out
    }
}

/// Word `n` of the contents made from `seed`: the formula of `pattern_word` in
/// `kernel/src/fs.rs` (and of `xtask/src/reboot.rs`); keep them identical.
fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ n.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 29)
}

/// `len` bytes of `seed`'s pattern from file offset `off`.
fn pattern(seed: u64, off: u64, len: u64) -> Vec<u8> {
    let (first, last) = (off / 8, (off + len).div_ceil(8));
    let bytes: Vec<u8> = (first..last)
        .flat_map(|n| pattern_word(seed, n).to_le_bytes())
        .collect();
    let skip = (off % 8) as usize;
    bytes[skip..skip + len as usize].to_vec()
}

/// 64-bit FNV-1a, as the guest's `sum`.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The files under `/pc` after some operation: name -> state.
type Tree = BTreeMap<String, FileState>;

/// What the guest reported.
#[derive(Debug, Default)]
struct Run {
    ready: bool,
    /// The tree after each operation begun: `trees[0]` is the empty `/pc`, `trees[k]` the tree
    /// after operation `k`.
    trees: Vec<Tree>,
    /// Operation lines seen (operation `k` is `ops[k - 1]`).
    ops: Vec<String>,
    /// Acknowledgements seen, and the newest acknowledged operation.
    acks: u64,
    last_ack: usize,
    error: Option<String>,
}

/// `key=value` words of a line.
fn words(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Run {
    /// Takes one console message.
    fn observe(&mut self, m: &str) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.observe_inner(m) {
            self.error = Some(e);
        }
    }

    fn observe_inner(&mut self, m: &str) -> Result<(), String> {
        let m = m.trim();
        if m.starts_with("PANIC") || m.starts_with("PC error") {
            return Err(m.to_owned());
        }
        if m == "PC ready" {
            self.ready = true;
            self.trees = vec![Tree::new()];
            return Ok(());
        }
        let Some(rest) = m.strip_prefix("PC ") else {
            return Ok(());
        };
        let mut it = rest.split_whitespace();
        let (Some(kind), Some(n)) = (it.next(), it.next().and_then(number)) else {
            return Ok(());
        };
        let w = words(rest);
        let get = |k: &str| {
            w.get(k)
                .and_then(|v| number(v))
                .ok_or_else(|| format!("no {k}= in {m:?}"))
        };
        let path = |k: &str| {
            w.get(k)
                .map(|s| s.to_string())
                .ok_or_else(|| format!("no {k}= in {m:?}"))
        };
        match kind {
            "op" => {
                if !self.ready || n as usize != self.ops.len() + 1 {
                    return Err(format!("operation {n} out of order: {m:?}"));
                }
                let mut tree = self.trees.last().cloned().unwrap_or_default();
                let verb = it.next().unwrap_or("");
                match verb {
                    "write" => {
                        let st = FileState {
                            seed: get("seed")?,
                            size: get("size")?,
                            patch: None,
                        };
                        tree.insert(path("path")?, st);
                    }
                    "append" | "truncate" => {
                        let p = path("path")?;
                        let st = tree.get_mut(&p).ok_or(format!("{verb} of absent {p}"))?;
                        st.size = get("size")?;
                    }
                    "patch" => {
                        let p = path("path")?;
                        let st = tree.get_mut(&p).ok_or(format!("patch of absent {p}"))?;
                        st.patch = Some((get("off")?, get("len")?, get("seed")?));
                    }
                    "rename" => {
                        let (from, to) = (path("from")?, path("to")?);
                        let st = tree
                            .remove(&from)
                            .ok_or(format!("rename of absent {from}"))?;
                        tree.insert(to, st);
                    }
                    "unlink" => {
                        let p = path("path")?;
                        tree.remove(&p).ok_or(format!("unlink of absent {p}"))?;
                    }
                    other => return Err(format!("unknown operation {other:?} in {m:?}")),
                }
                self.ops.push(m.to_owned());
                self.trees.push(tree);
            }
            "ack" => {
                if n as usize != self.ops.len() {
                    return Err(format!("ack {n} of an operation not the latest: {m:?}"));
                }
                let tree = &self.trees[n as usize];
                let p = path("path")?;
                if m.ends_with(" gone") {
                    if tree.contains_key(&p) {
                        return Err(format!("ack says {p} is gone, the model has it"));
                    }
                } else {
                    let st = tree
                        .get(&p)
                        .ok_or(format!("ack of {p}, absent in the model"))?;
                    let data = st.contents();
                    if data.len() as u64 != get("size")? || fnv1a(&data) != get("sum")? {
                        return Err(format!(
                            "the guest's checksum of {p} differs from the host's model: {m:?}"
                        ));
                    }
                }
                self.acks += 1;
                self.last_ack = n as usize;
            }
            _ => {}
        }
        Ok(())
    }
}

// ---- The write log (QEMU's blklogwrites, the dm-log-writes format) ----

const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const LOG_FLUSH: u64 = 1;
const LOG_FUA: u64 = 2;
const LOG_DISCARD: u64 = 4;
const LOG_MARK: u64 = 8;
const LOG_SECTOR: u64 = 512;
/// Sectors of tinyfs's two superblock slots (blocks 0 and 1).
const BLOCK_SECTORS: u64 = 8;

/// One logged write (or flush).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    sector: u64,
    sectors: u64,
    flags: u64,
    /// Byte offset of the data in the log.
    data: u64,
}

#[derive(Debug, Default)]
struct WriteLog {
    entries: Vec<Entry>,
}

impl WriteLog {
    /// Reads every complete entry. The superblock's count is only updated at flushes, so the
    /// entries after the last flush are found by walking on to the end of the file.
    fn read(path: &Path) -> Result<WriteLog> {
        let bytes = fs::read(path)?;
        Self::parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> Result<WriteLog> {
        let u64_at = |off: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                bytes.get(off..off + 8)?.try_into().ok()?,
            ))
        };
        if bytes.len() >= 8 {
            let magic = u64_at(0).unwrap_or(0);
            ensure!(
                magic == LOG_MAGIC || magic == 0,
                "not a write log (magic {magic:#x})"
            );
        }
        let mut log = WriteLog::default();
        let mut at = LOG_SECTOR;
        while let (Some(sector), Some(sectors), Some(flags)) = (
            u64_at(at as usize),
            u64_at(at as usize + 8),
            u64_at(at as usize + 16),
        ) {
            if flags & !(LOG_FLUSH | LOG_FUA | LOG_DISCARD | LOG_MARK) != 0
                || (sector == 0 && sectors == 0 && flags == 0)
            {
                break;
            }
            let data = at + LOG_SECTOR;
            let len = if flags & LOG_DISCARD != 0 {
                0
            } else {
                sectors * LOG_SECTOR
            };
            if data + len > bytes.len() as u64 {
                // Cut off mid-entry: that write never completed to the guest.
                break;
            }
            log.entries.push(Entry {
                sector,
                sectors,
                flags,
                data,
            });
            at = data + len;
        }
        Ok(log)
    }

    /// Index of the first entry after the last flush.
    fn durable_end(&self) -> usize {
        self.entries
            .iter()
            .rposition(|e| e.flags & LOG_FLUSH != 0)
            .map_or(0, |i| i + 1)
    }

    /// Whether entry `i` is durable by itself: logged as FUA, or (with `commit_fua`) the
    /// write of a `PREFLUSH | FUA` pair: a one-block write right after a flush. tinyfs writes
    /// exactly two such: a commit record (a superblock slot) and an fsync log block (anywhere).
    ///
    /// QEMU's NVMe model passes no FUA flag to its block backend (it completes a FUA write
    /// like any other), so the log cannot show one; the NVMe driver's host tests check that it
    /// sets FUA on the command. For NVMe the one-block write after a flush is therefore taken
    /// as the FUA write the driver sent. Everything else still needs a flush.
    fn self_durable(&self, i: usize, commit_fua: bool) -> bool {
        let e = &self.entries[i];
        e.flags & LOG_FUA != 0
            || (commit_fua
                && e.flags & LOG_FLUSH == 0
                && e.sectors > 0
                && e.sectors <= BLOCK_SECTORS
                && i > 0
                && self.entries[i - 1].flags & LOG_FLUSH != 0)
    }

    /// Writes after the last flush (volatile at the cut) that are not durable by themselves.
    fn volatile(&self, commit_fua: bool) -> usize {
        (self.durable_end()..self.entries.len())
            .filter(|&i| self.entries[i].sectors > 0 && !self.self_durable(i, commit_fua))
            .count()
    }

    /// The images to check: name and which entries it applies (`as-left` is the image file).
    fn variants(&self, rng: &mut Rng, commit_fua: bool) -> Vec<(&'static str, Vec<bool>)> {
        let end = self.durable_end();
        let flushed: Vec<bool> = (0..self.entries.len())
            .map(|i| i < end || self.self_durable(i, commit_fua))
            .collect();
        let partial: Vec<bool> = flushed.iter().map(|&f| f || rng.below(2) == 0).collect();
        vec![
            ("flushed", flushed),
            ("as-left", vec![true; self.entries.len()]),
            ("partial", partial),
        ]
    }

    /// Applies the kept writes, in log order, to `image`.
    fn apply(&self, log: &Path, image: &Path, keep: &[bool]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut src = fs::File::open(log)?;
        let mut dst = fs::OpenOptions::new().write(true).open(image)?;
        let mut buf = Vec::new();
        for (e, _) in self.entries.iter().zip(keep).filter(|(_, k)| **k) {
            if e.flags & (LOG_DISCARD | LOG_MARK) != 0 || e.sectors == 0 {
                continue;
            }
            buf.resize((e.sectors * LOG_SECTOR) as usize, 0);
            src.seek(SeekFrom::Start(e.data))?;
            src.read_exact(&mut buf)?;
            dst.seek(SeekFrom::Start(e.sector * LOG_SECTOR))?;
            dst.write_all(&buf)?;
        }
        Ok(())
    }
}

// ---- Checking an image ----

struct Check {
    clean: bool,
    lost: usize,
    /// Which operation's tree the image holds, for the summary line.
    state: String,
    /// What went wrong, when something did.
    detail: String,
}

/// The tree under `/pc` in `image`, contents included, as a mount sees it (the reading
/// tools replay the fsync log in memory; the image stays as the cut left it).
fn read_tree(image: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let entries = crate::image::ls(image, "/pc").map_err(|e| format!("ls /pc: {e:#}"))?;
    let mut out = BTreeMap::new();
    for e in entries {
        let path = format!("/pc/{}", e.name);
        let data =
            crate::image::read_file(image, &path).map_err(|e| format!("get {path}: {e:#}"))?;
        out.insert(path, data);
    }
    Ok(out)
}

fn check_image(image: &Path, run: &Run) -> Result<Check> {
    let report = crate::image::fsck(image)?;
    let clean = report.is_clean();
    let mut detail = String::new();
    if !clean {
        let problems: Vec<String> = report
            .problems
            .iter()
            .take(5)
            .map(crate::image::problem_line)
            .collect();
        detail = format!(
            "fsck: {} problems: {}",
            report.problems.len(),
            problems.join("; ")
        );
    }
    let found = match read_tree(image) {
        Ok(t) => t,
        Err(e) => {
            // Nothing under /pc can be read: every acknowledged file is lost.
            let lost = run.trees[run.last_ack].len().max(1);
            return Ok(Check {
                clean,
                lost,
                state: "unreadable".into(),
                detail: format!("{detail} {e}"),
            });
        }
    };
    let (lost, state, why) = judge(run, &found);
    if !why.is_empty() {
        detail.push_str(&why);
    }
    Ok(Check {
        clean,
        lost,
        state,
        detail,
    })
}

/// Compares what the image holds with the trees the guest may have left: the newest
/// acknowledged one or any later one begun. Returns the acknowledged file states lost (0 when
/// a candidate matches), which candidate matched, and what differed.
fn judge(run: &Run, found: &BTreeMap<String, Vec<u8>>) -> (usize, String, String) {
    let holds = |tree: &Tree, path: &str| -> bool {
        match (tree.get(path), found.get(path)) {
            (None, None) => true,
            (Some(st), Some(data)) => st.contents() == *data,
            _ => false,
        }
    };
    let candidates = run.last_ack..run.trees.len();
    for k in candidates.clone().rev() {
        let tree = &run.trees[k];
        let paths = tree.keys().chain(found.keys());
        if paths.clone().all(|p| holds(tree, p)) {
            let state = if k == run.last_ack {
                format!("= op {k} (acked)")
            } else {
                format!("= op {k} (begun, not acked)")
            };
            return (0, state, String::new());
        }
    }
    // No candidate matches: count the acknowledged paths whose state matches no candidate.
    let acked = &run.trees[run.last_ack];
    let mut lost = Vec::new();
    for p in acked.keys().chain(found.keys()) {
        if lost.contains(p) {
            continue;
        }
        if !candidates.clone().any(|k| holds(&run.trees[k], p)) {
            lost.push(p.clone());
        }
    }
    let why = format!(
        " files unlike op {} (acked) and every later one: {}",
        run.last_ack,
        lost.join(", ")
    );
    (lost.len().max(1), "LOST".into(), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_kernel_formula() {
        // The value `xtask/src/reboot.rs` pins for the same formula.
        assert_eq!(pattern_word(2, 0), 0xedd8_3f83_cb06_8cc1);
        let whole = pattern(9, 0, 100);
        assert_eq!(pattern(9, 13, 50), whole[13..63]);
        assert_eq!(pattern(9, 0, 0), Vec::<u8>::new());
    }

    #[test]
    fn patch_overlays_its_range() {
        let st = FileState {
            seed: 1,
            size: 100,
            patch: Some((90, 50, 2)),
        };
        let c = st.contents();
        assert_eq!(c.len(), 100);
        assert_eq!(c[..90], pattern(1, 0, 90));
        assert_eq!(c[90..], pattern(2, 90, 10));
    }

    fn feed(run: &mut Run, lines: &[&str]) {
        for l in lines {
            run.observe(l);
        }
    }

    fn ack_line(n: usize, path: &str, st: &FileState) -> String {
        let data = st.contents();
        format!(
            "PC ack {n} path={path} size={} sum={:#x}",
            data.len(),
            fnv1a(&data)
        )
    }

    #[test]
    fn protocol_builds_the_trees() {
        let a = FileState {
            seed: 0x10,
            size: 5000,
            patch: None,
        };
        let mut run = Run::default();
        feed(&mut run, &["PC start seed=1 disk=virtio", "PC ready"]);
        feed(&mut run, &["PC op 1 write path=/pc/f1 seed=0x10 size=5000"]);
        run.observe(&ack_line(1, "/pc/f1", &a));
        feed(
            &mut run,
            &["PC op 2 patch path=/pc/f1 off=10 len=20 seed=0x7"],
        );
        let b = FileState {
            patch: Some((10, 20, 7)),
            ..a
        };
        run.observe(&ack_line(2, "/pc/f1", &b));
        feed(&mut run, &["PC op 3 rename from=/pc/f1 to=/pc/f2"]);
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(run.acks, 2);
        assert_eq!(run.last_ack, 2);
        assert_eq!(run.trees.len(), 4);
        assert_eq!(run.trees[2]["/pc/f1"], b);
        assert_eq!(run.trees[3]["/pc/f2"], b);

        // The image holds op 2's tree (op 3 not durable): no loss.
        let mut found = BTreeMap::new();
        found.insert("/pc/f1".to_string(), b.contents());
        assert_eq!(judge(&run, &found).0, 0);
        // Op 3 did reach the disk: no loss either.
        let mut later = BTreeMap::new();
        later.insert("/pc/f2".to_string(), b.contents());
        assert_eq!(judge(&run, &later).0, 0);
        // Op 1's tree (the acknowledged patch is gone): a loss.
        let mut old = BTreeMap::new();
        old.insert("/pc/f1".to_string(), a.contents());
        assert_eq!(judge(&run, &old).0, 1);
        // Empty: a loss.
        assert_eq!(judge(&run, &BTreeMap::new()).0, 1);
    }

    #[test]
    fn a_wrong_guest_checksum_is_an_error() {
        let mut run = Run::default();
        feed(
            &mut run,
            &[
                "PC ready",
                "PC op 1 write path=/pc/f1 seed=0x10 size=5000",
                "PC ack 1 path=/pc/f1 size=5000 sum=0x1",
            ],
        );
        assert!(run.error.is_some());
    }

    fn entry(sector: u64, sectors: u64, flags: u64, fill: u8) -> Vec<u8> {
        let mut e = vec![0u8; LOG_SECTOR as usize];
        e[..8].copy_from_slice(&sector.to_le_bytes());
        e[8..16].copy_from_slice(&sectors.to_le_bytes());
        e[16..24].copy_from_slice(&flags.to_le_bytes());
        e.extend(vec![fill; (sectors * LOG_SECTOR) as usize]);
        e
    }

    #[test]
    fn write_log_replay() {
        let mut log = vec![0u8; LOG_SECTOR as usize];
        log[..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
        log.extend(entry(0, 1, 0, 0xaa)); // durable (before the flush)
        log.extend(entry(0, 0, LOG_FLUSH, 0));
        log.extend(entry(1, 2, 0, 0xbb)); // volatile
        log.extend(entry(3, 1, LOG_FUA, 0xcc)); // durable by itself
        let mut torn = entry(4, 4, 0, 0xdd);
        torn.truncate(LOG_SECTOR as usize * 2);
        log.extend(torn); // cut off: ignored
        let w = WriteLog::parse(&log).unwrap();
        assert_eq!(w.entries.len(), 4);
        assert_eq!(w.durable_end(), 2);
        assert_eq!(w.volatile(false), 1);
        let v = w.variants(&mut Rng(1), false);
        assert_eq!(v[0], ("flushed", vec![true, true, false, true]));
        assert_eq!(v[1].1, vec![true; 4]);

        let dir = std::env::temp_dir().join(format!("powercut-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (lp, ip) = (dir.join("log"), dir.join("img"));
        fs::write(&lp, &log).unwrap();
        fs::write(&ip, vec![0u8; 8 * LOG_SECTOR as usize]).unwrap();
        w.apply(&lp, &ip, &v[0].1).unwrap();
        let img = fs::read(&ip).unwrap();
        let s = |n: usize| img[n * 512];
        assert_eq!((s(0), s(1), s(2), s(3), s(4)), (0xaa, 0, 0, 0xcc, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_block_write_after_a_flush_counts_as_fua_only_when_asked() {
        let mut log = vec![0u8; LOG_SECTOR as usize];
        log.extend(entry(100, 8, 0, 1)); // data
        log.extend(entry(0, 0, LOG_FLUSH, 0));
        log.extend(entry(8, 8, 0, 2)); // commit record (block 1) right after the flush
        log.extend(entry(200, 8, 0, 3)); // data of the next operation
        log.extend(entry(0, 8, 0, 4)); // a superblock write not after a flush
        log.extend(entry(0, 0, LOG_FLUSH, 0));
        log.extend(entry(800, 8, 0, 5)); // an fsync log block right after a flush
        log.extend(entry(900, 8, 0, 6)); // data after it
        log.extend(entry(0, 0, LOG_FLUSH, 0));
        log.extend(entry(300, 16, 0, 7)); // two blocks after a flush: not a FUA pair's write
        let w = WriteLog::parse(&log).unwrap();
        assert_eq!(w.volatile(false), 1);
        assert_eq!(w.volatile(true), 1);
        let v = w.variants(&mut Rng(1), true);
        let mut want = vec![true; 10];
        want[9] = false;
        assert_eq!(v[0].1, want);
        // Only the last write is past the last flush; before it, what the flushes cover.
        let v = w.variants(&mut Rng(1), false);
        assert!(!v[0].1[9]);
        // Without the flushes after them, the one-block writes after a flush count as FUA
        // (NVMe) or not.
        let mut short = vec![0u8; LOG_SECTOR as usize];
        short.extend(entry(100, 8, 0, 1));
        short.extend(entry(0, 0, LOG_FLUSH, 0));
        short.extend(entry(800, 8, 0, 2)); // log block
        short.extend(entry(200, 8, 0, 3)); // data of the next operation
        let w = WriteLog::parse(&short).unwrap();
        assert_eq!(w.volatile(false), 2);
        assert_eq!(w.volatile(true), 1);
        assert_eq!(
            w.variants(&mut Rng(1), true)[0].1,
            vec![true, true, true, false]
        );
        assert_eq!(
            w.variants(&mut Rng(1), false)[0].1,
            vec![true, true, false, false]
        );
    }

    #[test]
    fn final_line() {
        assert_eq!(
            summary(10, 0, 10, 0),
            "10 cuts, 0 acknowledged writes lost, 10/10 fsck-clean"
        );
        assert_eq!(
            summary(3, 2, 2, 1),
            "3 cuts, 2 acknowledged writes lost, 2/3 fsck-clean, 1 cuts failed to run"
        );
    }
}
