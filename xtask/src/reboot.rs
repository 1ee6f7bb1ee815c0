//! The reboot test for profiles with a virtio disk: files written in one boot must be there,
//! byte for byte, in the next boot on the same image, and the host's tinyfs must agree.
//!
//! 1. A blank image; boot `fs_phase=write` (the kernel mkfs's the blank disk, writes and
//!    fsyncs known files, writes one more file without syncing, and goes down unmounted).
//! 2. The host's fsck on that image (the state the guest left without unmounting).
//! 3. Boot `fs_phase=verify` on the same image: contents byte-exact, the unsynced file absent,
//!    clean unmount and fsck in the guest.
//! 4. The host's fsck again, and `crate::image::read_file` of every file compared with the expected
//!    contents.
//!
//! Both boots pass `ktest=gated`, so only the phase's own test runs and nothing else touches
//! the disk. Each step is one test line in the summary.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::boot::{self, Accel, BootSpec, Limits, Verbosity};
use crate::ktest::Verdict;
use crate::profile::{Disk, Profile};
use crate::workspace::{self, Kernel};

/// The files the guest writes: path, seed, size. `kernel/src/tests/fs.rs` (`REBOOT_FILES`) has
/// the same list; keep the two identical.
const FILES: [(&str, u64, u64); 3] = [
    ("/reboot/small.txt", 1, 1000),
    ("/reboot/big.bin", 2, 1_572_987),
    ("/reboot/sub/deep.bin", 3, 70_001),
];

/// Word `n` of the contents made from `seed` (bytes `8n .. 8n + 8`, little-endian).
///
/// The same formula as `pattern_word` in `kernel/src/fs.rs`; keep the two identical.
fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ n.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 29)
}

/// The expected contents of a file.
fn pattern(seed: u64, size: u64) -> Vec<u8> {
    let mut out: Vec<u8> = (0..size.div_ceil(8))
        .flat_map(|n| pattern_word(seed, n).to_le_bytes())
        .collect();
    out.truncate(size as usize);
    out
}

/// Whether the reboot test runs on `profile`: a virtio disk on an image file, in a profile that
/// does not gate its own tests (`ktest=gated`: the fault and timeout profiles leave their disk,
/// with its injected faults, to those tests).
fn applies(profile: &Profile) -> bool {
    // Not on a read-only disk: the first boot writes.
    let read_only = profile.drives.iter().any(|d| d.contains("readonly=on"));
    profile.disk == Disk::Virtio
        && profile.image.is_some()
        && !read_only
        && !profile.cmdline.iter().any(|w| w == "ktest=gated")
}

fn image_path(profile: &Profile) -> PathBuf {
    workspace::target_dir()
        .join("qemu")
        .join(format!("{}-reboot.img", profile.name))
}

/// Runs the reboot test on `profile` (nothing when it has no virtio disk image), printing one
/// line per step; returns (passed, failed).
pub fn run(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    logs: &Path,
) -> Result<(usize, usize)> {
    let Some(spec) = profile.image.as_ref().filter(|_| applies(profile)) else {
        return Ok((0, 0));
    };
    let image = image_path(profile);
    if let Some(dir) = image.parent() {
        fs::create_dir_all(dir)?;
    }
    // A blank (all-zero) image, used by both boots.
    let file = fs::File::create(&image).with_context(|| format!("creating {}", image.display()))?;
    file.set_len(spec.size_mib * 1024 * 1024)?;
    drop(file);

    let label = &profile.name;
    let mut counts = (0, 0);
    let mut report = |what: String, result: Result<String, String>| match result {
        Ok(detail) => {
            println!("[{label}] ok   reboot: {what} ({detail})");
            counts.0 += 1;
        }
        Err(why) => {
            println!("[{label}] FAIL reboot: {what}: {why}");
            counts.1 += 1;
        }
    };

    let write = phase(profile, kernel, accel, &image, "write", logs)?;
    report("phase 1 writes and fsyncs files".into(), write);
    report(
        "host fsck after phase 1 (no unmount)".into(),
        host_fsck(&image),
    );
    let verify = phase(profile, kernel, accel, &image, "verify", logs)?;
    report("phase 2 reads them back after a reboot".into(), verify);
    report("host fsck after phase 2".into(), host_fsck(&image));
    report(
        format!("host get of {} files matches", FILES.len()),
        host_get(&image, &logs.join(format!("{label}-reboot-get.bin"))),
    );
    Ok(counts)
}

/// Boots one phase; `Ok` names the test that passed, `Err` says what went wrong.
fn phase(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    image: &Path,
    phase: &str,
    logs: &Path,
) -> Result<Result<String, String>> {
    let mut words = vec!["mode=test".to_owned()];
    words.extend(profile.expect_pci_word());
    words.push("ktest=gated".into());
    words.push(format!("fs_phase={phase}"));
    let spec = BootSpec {
        profile,
        kernel,
        accel,
        words,
        gdb: false,
        extra: Vec::new(),
        image: Some(image.to_owned()),
    };
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: Duration::from_secs(profile.test_timeout),
    };
    let log = logs.join(format!("{}-reboot-{phase}.log", profile.name));
    let verdict = boot::test(&spec, limits, Verbosity::Quiet, &log)?;
    Ok(judge(&verdict, &format!("fs_reboot_phase_{phase}"))
        .map_err(|why| format!("{why} (log: {})", log.display())))
}

/// The phase passed when its test (and nothing else) ran and passed.
fn judge(verdict: &Verdict, test: &str) -> Result<String, String> {
    let is = |name: &str| name.rsplit("::").next() == Some(test);
    if let Some((name, reason)) = verdict.failed.first() {
        return Err(format!("FAIL {name}: {reason}"));
    }
    if let Some(problem) = verdict.problems.first() {
        return Err(problem.to_string());
    }
    if let Some((name, reason)) = verdict.skipped.iter().find(|(n, _)| is(n)) {
        return Err(format!("{name} skipped: {reason}"));
    }
    match verdict.passed.iter().find(|n| is(n)) {
        Some(name) if verdict.passed.len() == 1 => Ok(name.clone()),
        Some(_) => Err(format!(
            "other tests ran in the phase boot: {}",
            verdict.passed.join(", ")
        )),
        None => Err(format!("{test} did not run")),
    }
}

fn host_fsck(image: &Path) -> Result<String, String> {
    let report = crate::image::fsck(image).map_err(|e| format!("fsck could not run: {e:#}"))?;
    if !report.is_clean() {
        let problems: Vec<String> = report
            .problems
            .iter()
            .take(5)
            .map(crate::image::problem_line)
            .collect();
        return Err(format!(
            "{} problems: {}",
            report.problems.len(),
            problems.join("; ")
        ));
    }
    let s = report.report;
    Ok(format!(
        "clean: generation {}, {} inodes, {} blocks used",
        s.generation, s.inodes, s.used_blocks
    ))
}

fn host_get(image: &Path, scratch: &Path) -> Result<String, String> {
    let mut bytes = 0u64;
    for (path, seed, size) in FILES {
        let got = crate::image::read_file(image, path).map_err(|e| format!("get {path}: {e:#}"))?;
        let want = pattern(seed, size);
        if got.len() != want.len() {
            return Err(format!(
                "{path}: {} bytes, expected {}",
                got.len(),
                want.len()
            ));
        }
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(format!("{path}: differs at byte {at}"));
        }
        bytes += size;
    }
    let _ = fs::remove_file(scratch);
    Ok(format!("{bytes} bytes byte-exact"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_stable() {
        // Pinned so a change to this copy of the formula is noticed (the kernel's copy must
        // change with it).
        assert_eq!(pattern_word(2, 0), 0xedd8_3f83_cb06_8cc1);
        let p = pattern(2, 13);
        assert_eq!(p.len(), 13);
        assert_eq!(p[..8], pattern_word(2, 0).to_le_bytes());
        assert_eq!(p[8..], pattern_word(2, 1).to_le_bytes()[..5]);
    }

    #[test]
    fn judge_wants_exactly_the_phase_test() {
        let mut v = Verdict {
            passed: vec!["kernel::tests::fs::fs_reboot_phase_write".into()],
            failed: vec![],
            skipped: vec![],
            problems: vec![],
        };
        assert!(judge(&v, "fs_reboot_phase_write").is_ok());
        assert!(judge(&v, "fs_reboot_phase_verify").is_err());
        v.passed
            .push("kernel::tests::cpu::clock_is_monotonic".into());
        assert!(judge(&v, "fs_reboot_phase_write").is_err());
        v.passed.truncate(1);
        v.failed.push((
            "kernel::tests::fs::fs_reboot_phase_write".into(),
            "x".into(),
        ));
        assert!(judge(&v, "fs_reboot_phase_write").is_err());
    }
}
