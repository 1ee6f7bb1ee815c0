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

#[test]
fn misplaced_image_stops_with_a_message() {
    // U-Boot's booti honours text_offset; an Image built for a RAM base 2 MiB below the real
    // one lands 2 MiB above its link address. The kernel must say so and power off, not hang.
    use crate::firmware::{self, BootPath};
    use crate::guest::{Event, Guest};
    use std::process::Command;
    use std::time::Instant;
    firmware::ensure_tools(BootPath::Uboot).unwrap();
    let kernel = workspace::build_kernel(Arch::Riscv64, BuildProfile::Release, &[]).unwrap();
    let out = workspace::target_dir().join("qemu/boot/e2e-misplaced.img");
    firmware::build(BootPath::Uboot, &kernel.elf, "mode=run", &out, 0x7fe0_0000).unwrap();
    let mut cmd = Command::new(Arch::Riscv64.qemu_binary());
    cmd.args([
        "-machine",
        "virt",
        "-m",
        "256M",
        "-display",
        "none",
        "-nodefaults",
    ])
    .args(["-no-reboot", "-serial", "stdio", "-device", "ahci,id=ahci"])
    .arg("-drive")
    .arg(format!("if=none,id=b,format=raw,file={}", out.display()))
    .args(["-device", "ide-hd,drive=b,bus=ahci.0"])
    .args(firmware::qemu_args(BootPath::Uboot, &out.with_extension("vars.fd")).unwrap());
    let mut guest = Guest::spawn(cmd, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut text = Vec::new();
    let exited = loop {
        match guest.next_event(Some(deadline)).unwrap() {
            Event::Output(bytes) => text.extend(bytes),
            Event::Exited(_) => break true,
            Event::Deadline => break false,
        }
    };
    let text = String::from_utf8_lossy(&text);
    assert!(exited, "QEMU still running after 120 s: {text}");
    assert!(
        text.contains("boot stopped: the kernel was not loaded at its link address 0x80200000"),
        "{text}"
    );
}
