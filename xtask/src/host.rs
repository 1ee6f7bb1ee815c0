//! Host tests: `cargo test` of every workspace crate that builds for the host, and the loom
//! models of `blk` (`--cfg loom`, in a target directory of their own).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::workspace;

/// Counts from cargo's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
}

/// Runs the host tests, printing one line per test; returns the counts. A `cargo test` that
/// fails without a failing test (a build error) counts as one failure.
pub fn run() -> Result<HostCounts> {
    let mut cmd = workspace::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "kernel",
        "--no-fail-fast",
    ]);
    run_cargo_test(cmd, "cargo test")
}

/// Directory (under the target directory) of the loom build: `--cfg loom` changes every crate's
/// flags, so it gets a target directory of its own and never rebuilds the normal test binaries.
const LOOM_TARGET: &str = "blk-loom";

/// The `cargo test` that runs the loom models of `blk` (`kernel/blk/src/loom.rs`: the free
/// list, the per-CPU magazines and the tag bitmap under every interleaving loom explores).
fn loom_command() -> Command {
    let mut cmd = workspace::cargo();
    cmd.args(["test", "-p", "blk", "--release", "--lib", "loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env(
            "CARGO_TARGET_DIR",
            workspace::target_dir().join(LOOM_TARGET),
        );
    cmd
}

/// Runs the loom models of `blk`, printing one line per model; returns the counts (a build
/// error, or no model at all, counts as one failure).
pub fn run_loom() -> Result<HostCounts> {
    let mut counts = run_cargo_test(loom_command(), "loom models")?;
    if counts.passed + counts.failed == 0 {
        println!("[host] FAIL loom models: no model ran");
        counts.failed = 1;
    }
    Ok(counts)
}

/// Runs `cmd` (a `cargo test`), printing one line per test; returns the counts. A run that
/// fails without a failing test (a build error) counts as one failure.
fn run_cargo_test(mut cmd: Command, what: &str) -> Result<HostCounts> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut counts = HostCounts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(result) = parse_result(&line) {
            counts.passed += result.passed;
            counts.failed += result.failed;
            counts.ignored += result.ignored;
        } else if let Some(shown) = format_test_line(&line) {
            println!("{shown}");
        } else if !line.trim().is_empty() && !line.starts_with("running ") {
            println!("{line}");
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        println!(
            "[host] FAIL {what}: {status} without a failing test \
             (a build error or a crashed test binary, see above)"
        );
        counts.failed = 1;
    }
    Ok(counts)
}

/// `test a::b ... ok` becomes `[host] ok   a::b`.
fn format_test_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("test ")?;
    let (name, outcome) = rest.rsplit_once(" ... ")?;
    let tag = match outcome {
        "ok" => "ok  ",
        "FAILED" => "FAIL",
        o if o.starts_with("ignored") => "skip",
        _ => return None,
    };
    Some(format!("[host] {tag} {name}"))
}

/// Parses `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; ...`.
fn parse_result(line: &str) -> Option<HostCounts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, fields) = rest.split_once(". ")?;
    let mut counts = HostCounts::default();
    for field in fields.split(';') {
        let mut words = field.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some(HostCounts {
                passed: 12,
                failed: 0,
                ignored: 1
            })
        );
        assert_eq!(
            parse_result("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured"),
            Some(HostCounts {
                passed: 3,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(parse_result("running 3 tests"), None);
    }

    #[test]
    fn loom_runs_in_its_own_target_dir() {
        let cmd = loom_command();
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["test", "-p", "blk", "--release", "--lib", "loom"]);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("RUSTFLAGS".as_ref(), Some("--cfg loom".as_ref()))));
        let dir = envs
            .iter()
            .find(|(k, _)| *k == "CARGO_TARGET_DIR")
            .and_then(|(_, v)| *v)
            .expect("a target directory of its own");
        assert!(std::path::Path::new(dir).ends_with(LOOM_TARGET));
    }

    #[test]
    fn test_lines() {
        assert_eq!(
            format_test_line("test slab::tests::aba ... ok").unwrap(),
            "[host] ok   slab::tests::aba"
        );
        assert_eq!(
            format_test_line("test a ... FAILED").unwrap(),
            "[host] FAIL a"
        );
        assert_eq!(
            format_test_line("test src/lib.rs - Bio (line 12) ... ignored, needs hardware")
                .unwrap(),
            "[host] skip src/lib.rs - Bio (line 12)"
        );
        assert_eq!(format_test_line("test result: ok. 1 passed"), None);
    }
}
