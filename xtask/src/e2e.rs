//! End to end: build the real kernel and boot its test suite in QEMU.
//! Runs with `cargo test -p xtask --features e2e` (needs QEMU and the bare-metal targets).

use std::time::Duration;

use crate::boot::{self, Accel, BootSpec, Limits, Verbosity};
use crate::ktest::Problem;
use crate::profile::{self, Arch, Disk};
use crate::workspace::{self, BuildProfile};

fn boot_suite(arch: Arch, extra_words: &[&str], test_timeout: u64) -> crate::ktest::Verdict {
    let all = profile::load_all(&workspace::root().join("qemu")).unwrap();
    let profile = profile::select_for_run(&all, arch, Disk::None).unwrap();
    let kernel =
        workspace::build_test_kernel(arch, BuildProfile::Release, &profile.features).unwrap();
    let mut words = vec!["mode=test".to_owned()];
    words.extend(profile.expect_pci_word());
    words.extend(extra_words.iter().map(|w| w.to_string()));
    let spec = BootSpec {
        profile: &profile,
        kernel: &kernel,
        accel: Accel::Tcg,
        words,
        gdb: false,
        extra: Vec::new(),
        image: None,
    };
    let limits = Limits {
        timeout: Duration::from_secs(profile.timeout),
        test_timeout: Duration::from_secs(test_timeout),
    };
    let log = workspace::target_dir()
        .join("qemu")
        .join("logs")
        .join(format!("e2e-{arch}{}.log", extra_words.join("-")));
    boot::test(&spec, limits, Verbosity::Quiet, &log).unwrap()
}

#[test]
fn suite_passes_on_both_arches() {
    for arch in [Arch::X86_64, Arch::Riscv64] {
        let verdict = boot_suite(arch, &[], 120);
        assert!(verdict.ok(), "{arch}: {verdict:?}");
        assert!(!verdict.passed.is_empty(), "{arch}: no tests ran");
    }
}

#[test]
fn deliberate_failure_is_caught() {
    let verdict = boot_suite(Arch::X86_64, &["selftest=fail"], 120);
    assert!(verdict.problems.is_empty(), "{verdict:?}");
    assert!(
        verdict
            .failed
            .iter()
            .any(|(test, _)| crate::is_test(test, "selftest_fail")),
        "{verdict:?}"
    );
}

#[test]
fn deliberate_hang_is_caught() {
    let verdict = boot_suite(Arch::X86_64, &["selftest=hang"], 10);
    assert!(
        verdict.problems.iter().any(
            |p| matches!(p, Problem::Timeout { test: Some(t), .. } if crate::is_test(t, "selftest_hang"))
        ),
        "{verdict:?}"
    );
}

#[test]
fn harness_self_checks_pass() {
    // A disk that does not attach (test and run mode), run mode on a foreign disk, and the
    // deliberate failure and hang: each must be seen exactly the expected way.
    let all = profile::load_all(&workspace::root().join("qemu")).unwrap();
    let base = profile::select_for_run(&all, Arch::X86_64, Disk::None).unwrap();
    let kernel =
        workspace::build_test_kernel(Arch::X86_64, BuildProfile::Release, &base.features).unwrap();
    let logs = workspace::target_dir().join("qemu").join("logs");
    for check in crate::selfcheck::run_all(&base, &kernel, Accel::Tcg, &logs).unwrap() {
        assert!(
            check.outcome.is_ok(),
            "{}: {:?}",
            check.title,
            check.outcome
        );
    }
}
