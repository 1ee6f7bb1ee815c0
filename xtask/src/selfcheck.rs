//! The harness checking itself: boots that must fail (or must not write) in a known way, each
//! counted as passed only when the harness sees exactly that.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::boot::{self, Accel, BootSpec, Limits, Verbosity};
use crate::ktest::{Problem, Verdict};
use crate::profile::{Disk, Profile};
use crate::workspace::{self, Kernel};
use crate::{HANG_TIMEOUT, SelfTest, is_test, test_spec, test_words};

/// One self-check's result: what it checks, and what was seen (`Ok`) or what went wrong.
pub struct Check {
    pub title: String,
    pub outcome: Result<String, String>,
}

/// Runs every self-check on `base` (the x86_64 profile without a disk) with its kernel.
pub fn run_all(base: &Profile, kernel: &Kernel, accel: Accel, logs: &Path) -> Result<Vec<Check>> {
    let mut checks = vec![
        Check {
            title: "catches a disk that does not attach".into(),
            outcome: attach_check(base, kernel, accel, logs)?,
        },
        Check {
            title: "checks run mode with a disk that does not attach".into(),
            outcome: run_attach_check(base, kernel, accel, logs)?,
        },
        Check {
            title: "checks run mode on a disk it does not recognise".into(),
            outcome: foreign_disk_check(base, kernel, accel, logs)?,
        },
    ];
    // The plain `cargo xtask run` machine: the run profile of the base's architecture, whose
    // kernel is the base's when they build with the same features.
    let run = crate::by_name(&crate::profiles()?, &format!("{}-run", base.arch))?;
    if run.features == base.features {
        checks.push(Check {
            title: "checks plain run mode twice on a new image".into(),
            outcome: run_twice_check(&run, kernel, accel, logs)?,
        });
    }
    for selftest in [SelfTest::Fail, SelfTest::Hang] {
        checks.push(Check {
            title: format!("catches {}", selftest.word()),
            outcome: self_check(base, kernel, accel, selftest, logs)?,
        });
    }
    Ok(checks)
}

/// Boots with a deliberately failing or hanging test and checks that the harness reports
/// exactly that. `Ok` carries what was caught, `Err` what happened instead.
fn self_check(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    selftest: SelfTest,
    logs: &Path,
) -> Result<Result<String, String>> {
    let mut words = test_words(profile);
    words.push(selftest.word().into());
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: HANG_TIMEOUT,
    };
    let log = logs.join(format!("{}-{}.log", profile.name, selftest.test_name()));
    let spec = test_spec(profile, kernel, accel, words)?;
    let verdict = boot::test(&spec, limits, Verbosity::Quiet, &log)?;
    let name = selftest.test_name();
    let caught = match selftest {
        // The whole message (well past the 100 bytes it was once cut at) and its location.
        SelfTest::Fail => verdict
            .failed
            .iter()
            .find(|(test, _)| is_test(test, name))
            .filter(|_| verdict.problems.is_empty())
            .filter(|(_, reason)| full_failure_message(reason))
            .map(|(test, reason)| format!("FAIL {test}: {reason}")),
        SelfTest::Hang => verdict
            .problems
            .iter()
            .find(|p| matches!(p, Problem::Timeout { test: Some(t), .. } if is_test(t, name)))
            .map(ToString::to_string),
    };
    Ok(caught.ok_or_else(|| {
        let mut seen: Vec<String> = verdict
            .failed
            .iter()
            .map(|(t, r)| format!("FAIL {t}: {r}"))
            .collect();
        seen.extend(verdict.problems.iter().map(ToString::to_string));
        if seen.is_empty() {
            seen.push(format!(
                "{} tests passed and nothing failed",
                verdict.passed.len()
            ));
        }
        format!(
            "expected {name} to be caught, saw: {} (log: {})",
            seen.join("; "),
            log.display()
        )
    }))
}

/// Whether the failure reason of `selftest_fail` arrived whole: its last words and the
/// location of the failed check.
fn full_failure_message(reason: &str) -> bool {
    reason.len() > 200
        && reason.contains("END-OF-SELFTEST-MESSAGE at ")
        && reason.contains("src/tests/selftest.rs:")
}

/// The base profile with an NVMe controller that cannot attach (it has no namespace), so the
/// profile expects an NVMe disk the kernel cannot bring up.
fn unattachable(base: &Profile) -> Profile {
    let mut p = base.clone();
    p.name = format!("{}-nvme-no-namespace", base.name);
    p.description = format!(
        "{} with an NVMe controller without a namespace",
        base.description
    );
    p.disk = Disk::Nvme;
    p.expect = None;
    p.devices.push("-device nvme,serial=nonamespace".into());
    p
}

/// Boots [`unattachable`] and checks that the boot fails with the driver's error: the
/// attach check fails naming the NVMe driver's error, NVMe tests fail instead of skipping, and
/// nothing else goes wrong. `Ok` carries what was caught, `Err` what happened instead.
fn attach_check(
    base: &Profile,
    kernel: &Kernel,
    accel: Accel,
    logs: &Path,
) -> Result<Result<String, String>> {
    let profile = unattachable(base);
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: Duration::from_secs(profile.test_timeout),
    };
    let log = logs.join(format!("{}.log", profile.name));
    let spec = test_spec(&profile, kernel, accel, test_words(&profile))?;
    let verdict = boot::test(&spec, limits, Verbosity::Quiet, &log)?;
    Ok(judge_attach_failure(&verdict).map_err(|e| format!("{e} (log: {})", log.display())))
}

/// What [`attach_check`] requires of the verdict.
fn judge_attach_failure(verdict: &Verdict) -> Result<String, String> {
    let check = verdict
        .failed
        .iter()
        .find(|(test, _)| is_test(test, "expected_disks_attached"))
        .ok_or_else(|| {
            format!(
                "no failed expected_disks_attached check; failed: {:?}, problems: {:?}",
                verdict.failed, verdict.problems
            )
        })?;
    if !check.1.contains("none attached: nvme: ") {
        return Err(format!(
            "the failure does not carry the driver's error: {}",
            check.1
        ));
    }
    let nvme_failed = verdict
        .failed
        .iter()
        .filter(|(test, _)| test.contains("::nvme::"))
        .count();
    let nvme_skipped: Vec<_> = verdict
        .skipped
        .iter()
        .filter(|(test, _)| test.contains("::nvme::"))
        .collect();
    if nvme_failed == 0 || !nvme_skipped.is_empty() {
        return Err(format!(
            "NVMe tests must fail, not skip: {nvme_failed} failed, skipped: {nvme_skipped:?}"
        ));
    }
    if !verdict.problems.is_empty() {
        return Err(format!("unexpected problems: {:?}", verdict.problems));
    }
    Ok(format!(
        "FAIL {}: {}; {nvme_failed} NVMe tests failed, none skipped",
        check.0, check.1
    ))
}

/// Boots `profile` in run mode (quietly, with the test limits) and returns the verdict and the
/// console transcript.
fn boot_run_mode(
    profile: &Profile,
    kernel: &Kernel,
    accel: Accel,
    image: Option<PathBuf>,
    log: &Path,
) -> Result<(Verdict, String)> {
    let spec = BootSpec {
        profile,
        kernel,
        accel,
        words: vec!["mode=run".into()],
        gdb: false,
        extra: Vec::new(),
        image,
    };
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: Duration::from_secs(profile.test_timeout),
    };
    let verdict = boot::test(&spec, limits, Verbosity::Quiet, log)?;
    let console = std::fs::read_to_string(log).unwrap_or_default();
    Ok((verdict, console))
}

/// Run mode on [`unattachable`]: the kernel must exit with failure and name the driver's error
/// (it used to say "no disk" and exit 0).
fn run_attach_check(
    base: &Profile,
    kernel: &Kernel,
    accel: Accel,
    logs: &Path,
) -> Result<Result<String, String>> {
    let profile = unattachable(base);
    let log = logs.join(format!("{}-run.log", profile.name));
    let (verdict, console) = boot_run_mode(&profile, kernel, accel, None, &log)?;
    let failed = verdict.problems.iter().any(
        |p| matches!(p, Problem::ExitStatus { got: Some(c), .. } if *c == profile.exit.failure),
    );
    let named = console.contains("none attached: nvme: ");
    Ok(if failed && named {
        Ok(format!(
            "QEMU exit status {}, driver's error logged",
            profile.exit.failure
        ))
    } else {
        Err(format!(
            "expected exit status {} and the driver's error; problems: {:?} (log: {})",
            profile.exit.failure,
            verdict.problems,
            log.display()
        ))
    })
}

/// Bytes of the disk [`foreign_disk_check`] boots with.
const FOREIGN_DISK_BYTES: usize = 4 << 20;

/// What [`foreign_disk_check`]'s disk holds: no filesystem the project knows, no zero block.
fn foreign_disk_contents() -> Vec<u8> {
    (0..FOREIGN_DISK_BYTES)
        .map(|i| (i as u32).wrapping_mul(0x9e37_79b9).to_le_bytes()[3] | 1)
        .collect()
}

/// Run mode with a virtio-blk disk holding data that is not a tinyfs filesystem (a user's
/// disk) on which every write fails: the kernel must succeed without writing and leave every
/// byte as it was (the demo used to write over the disk's last MiB and put it back).
fn foreign_disk_check(
    base: &Profile,
    kernel: &Kernel,
    accel: Accel,
    logs: &Path,
) -> Result<Result<String, String>> {
    let mut profile = base.clone();
    profile.name = format!("{}-run-foreign-disk", base.name);
    profile.description = format!(
        "{} with a virtio-blk disk of foreign data",
        base.description
    );
    profile.disk = Disk::Virtio;
    profile.expect = None;
    profile
        .devices
        .push("-device virtio-blk-pci,drive=d0,disable-legacy=on".into());
    // Every write that reaches the device fails (blkdebug EIO on all sectors): a demo that
    // writes, even one that puts the old contents back, fails the run.
    profile.drives.push(
        "-drive if=none,id=d0,driver=raw,file.driver=blkdebug,\
         file.inject-error.0.event=write_aio,file.inject-error.0.errno=5,\
         file.image.driver=file,file.image.filename={image}"
            .into(),
    );
    let path = workspace::target_dir()
        .join("qemu")
        .join(format!("{}.img", profile.name));
    let contents = foreign_disk_contents();
    std::fs::create_dir_all(path.parent().context("image directory")?)?;
    std::fs::write(&path, &contents).with_context(|| format!("writing {}", path.display()))?;
    let log = logs.join(format!("{}.log", profile.name));
    let (verdict, console) = boot_run_mode(&profile, kernel, accel, Some(path.clone()), &log)?;
    let after = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // Run mode prints no KTEST lines: the missing done line is expected, anything else is not.
    let only_no_done = verdict.problems == [Problem::MissingDone];
    let changed = contents
        .chunks(512)
        .zip(after.chunks(512))
        .filter(|(a, b)| a != b)
        .count()
        + contents.len().abs_diff(after.len()) / 512;
    let read = console.contains("reads agree");
    Ok(if only_no_done && changed == 0 && read {
        Ok(format!(
            "{} MiB read, exit 0, every sector unchanged",
            FOREIGN_DISK_BYTES >> 20
        ))
    } else {
        Err(format!(
            "{changed} sectors changed, demo read {}, problems {:?} (log: {})",
            if read { "ok" } else { "missing" },
            verdict.problems,
            log.display()
        ))
    })
}

/// What plain `cargo xtask run` does, twice, on a fresh image (the run profile's image made as
/// `run` makes it, at a path of its own): both runs succeed, show the GPT partitions and mount
/// `root=vda1`; the first finds no earlier files, the second finds the first's intact; the
/// partition's filesystem is fsck-clean on the host afterwards and holds the files.
fn run_twice_check(
    run: &Profile,
    kernel: &Kernel,
    accel: Accel,
    logs: &Path,
) -> Result<Result<String, String>> {
    let path = workspace::target_dir()
        .join("qemu")
        .join(format!("{}-selfcheck.img", run.name));
    let _ = std::fs::remove_file(&path);
    let mut seen = Vec::new();
    for k in 1..=2u32 {
        let image = crate::run_image(run, Some(&path))?;
        let log = logs.join(format!("{}-selfcheck-{k}.log", run.name));
        let (verdict, console) = boot_run_mode(run, kernel, accel, image, &log)?;
        let wants: &[&str] = if k == 1 {
            &["the first run on this filesystem", "now says 1:"]
        } else {
            &[
                "found the files of an earlier run: /demo/runs.txt says 1 earlier run(s); \
                 /demo/big.bin 393339 bytes, contents intact",
                "now says 2:",
            ]
        };
        let common = [
            "vda1 partition",
            "gpt \"tinyfs\"",
            "vda2 partition",
            "reads agree",
            "fs: tinyfs mounted (existing filesystem)",
            "fs: unmounted cleanly",
        ];
        let missing: Vec<&str> = common
            .iter()
            .chain(wants)
            .copied()
            .filter(|w| !console.contains(w))
            .collect();
        // Run mode prints no KTEST lines: the missing done line is expected, nothing else.
        if verdict.problems != [Problem::MissingDone] || !missing.is_empty() {
            return Ok(Err(format!(
                "run {k}: problems {:?}, missing from the console: {missing:?} (log: {})",
                verdict.problems,
                log.display()
            )));
        }
        seen.push(wants[0].split(':').next().unwrap_or_default().to_owned());
    }
    // The filesystem of partition 1, checked by the host's fsck.
    let (start, len) = crate::parts::GPT_TINYFS_P1;
    let bytes = std::fs::read(&path)?;
    let part = path.with_extension("p1");
    let window = bytes
        .get(start as usize..(start + len) as usize)
        .context("image shorter than its partition")?;
    std::fs::write(&part, window)?;
    let fsck = crate::image::fsck(&part)?;
    let demo = crate::image::ls(&part, "/demo")?;
    let _ = std::fs::remove_file(&part);
    let names: Vec<&str> = demo.iter().map(|e| e.name.as_str()).collect();
    Ok(if fsck.is_clean() && names.contains(&"runs.txt") {
        Ok(format!(
            "2 boots of {}: {}; vda1 fsck-clean on the host, /demo holds {}",
            run.name,
            seen.join(", then "),
            names.join(" ")
        ))
    } else {
        Err(format!(
            "after two runs: fsck {:?} ({}), /demo holds {names:?}",
            fsck.status, fsck.summary
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Arch;

    fn verdict(failed: &[(&str, &str)], skipped: &[(&str, &str)]) -> Verdict {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        Verdict {
            passed: Vec::new(),
            failed: pairs(failed),
            skipped: pairs(skipped),
            problems: Vec::new(),
        }
    }

    #[test]
    fn attach_failure_is_judged_strictly() {
        const CHECK: &str = "kernel::ktest::expected_disks_attached";
        const WHY: &str = "the profile expects an NVMe disk (expect=nvme), but none attached: \
                           nvme: BadIdentify at kernel/src/ktest.rs:200";
        const NVME: &str = "kernel::tests::nvme::nvme_past_end_refused";
        assert!(judge_attach_failure(&verdict(&[(CHECK, WHY), (NVME, WHY)], &[])).is_ok());
        // What the kernel did before: one log line, NVMe tests skipped, the run green.
        assert!(judge_attach_failure(&verdict(&[], &[(NVME, "no NVMe controller")])).is_err());
        // A failure without the driver's error, or with NVMe tests still skipping.
        let vague = "the profile expects an NVMe disk, none attached";
        assert!(judge_attach_failure(&verdict(&[(CHECK, vague), (NVME, WHY)], &[])).is_err());
        assert!(
            judge_attach_failure(&verdict(
                &[(CHECK, WHY), (NVME, WHY)],
                &[(
                    "kernel::tests::nvme::nvme_flush_and_fua",
                    "needs an NVMe disk"
                )]
            ))
            .is_err()
        );
        assert!(judge_attach_failure(&verdict(&[(CHECK, WHY)], &[])).is_err());
    }

    #[test]
    fn failure_messages_must_arrive_whole() {
        let whole = format!(
            "1 + 1 == 3: this test fails on purpose; {}the whole message and its location must \
             reach the host: END-OF-SELFTEST-MESSAGE at kernel/src/tests/selftest.rs:9",
            "padding ".repeat(30)
        );
        assert!(full_failure_message(&whole));
        // Cut at 100 bytes, or without a location: what the runner did before.
        assert!(!full_failure_message(&whole[..100]));
        let unlocated = whole.split(" at kernel/").next().unwrap();
        assert!(!full_failure_message(unlocated));
    }

    #[test]
    fn unattachable_profile_expects_nvme() {
        let all = crate::profiles().unwrap();
        let base = crate::profile::select_for_run(&all, Arch::X86_64, Disk::None).unwrap();
        let p = unattachable(&base);
        assert_eq!(p.expect_word().unwrap(), "expect=nvme");
        assert!(p.devices.iter().any(|d| d.starts_with("-device nvme,")));
        assert!(
            p.image.is_none() && p.drives.is_empty(),
            "no namespace, no drive"
        );
    }
}
