//! Booting a kernel under QEMU: the command line, the supervision loop, and the test report.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::console::{Console, Line};
use crate::firmware;
use crate::guest::{self, Guest};
use crate::ktest::{Ending, Event, Suite, Verdict};
use crate::profile::{Placeholders, Profile};
use crate::workspace::{self, Kernel};

/// QEMU accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Everything one boot needs beyond the profile.
pub struct BootSpec<'a> {
    pub profile: &'a Profile,
    pub kernel: &'a Kernel,
    pub accel: Accel,
    /// Kernel command-line words (mode, selftest, ...); the profile's own words are added.
    pub words: Vec<String>,
    /// Halt at reset and wait for gdb on :1234.
    pub gdb: bool,
    /// Passed to QEMU after everything else.
    pub extra: Vec<String>,
    /// Path for `{image}`, created beforehand.
    pub image: Option<PathBuf>,
}

impl BootSpec<'_> {
    pub fn command(&self) -> Result<Command> {
        let profile = self.profile;
        let mut cmd = Command::new(profile.arch.qemu_binary());
        let mut words = self.words.clone();
        words.extend(profile.expect_word());
        if profile.smp > 1 {
            // What the kernel's SMP tests compare the CPUs online with.
            words.push(format!("cpus={}", profile.smp));
        }
        words.extend(profile.cmdline.iter().cloned());
        let words = words.join(" ");
        // Through firmware: the command line goes into the medium, which the profile places.
        let boot = match profile.boot {
            Some(path) => {
                let out = firmware::medium_path(&profile.name, path);
                firmware::build(
                    path,
                    &self.kernel.elf,
                    &words,
                    &out,
                    firmware::RISCV_VIRT_RAM,
                )?;
                Some((path, out))
            }
            None => None,
        };
        cmd.args(profile.qemu_args(&Placeholders {
            image: self.image.clone(),
            boot: boot.as_ref().map(|(_, out)| out.clone()),
        })?);
        cmd.args(["-accel", self.accel.name(), "-serial", "stdio"]);
        match &boot {
            Some((path, out)) => {
                cmd.args(firmware::qemu_args(*path, &out.with_extension("vars.fd"))?);
            }
            None => {
                cmd.arg("-kernel").arg(&self.kernel.elf);
                cmd.arg("-append").arg(&words);
            }
        }
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        cmd.args(&self.extra);
        cmd.current_dir(workspace::root());
        Ok(cmd)
    }
}

/// Image path for a profile: kept between runs, fresh for every test boot.
pub fn image_path(profile: &Profile, for_test: bool) -> Option<PathBuf> {
    profile.image.as_ref()?;
    let suffix = if for_test { "-test" } else { "" };
    Some(
        workspace::target_dir()
            .join("qemu")
            .join(format!("{}{suffix}.img", profile.name)),
    )
}

/// Time limits of a test boot.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub test_timeout: Duration,
}

/// Feeds the guest's output through the console and the test parser until it exits or (with
/// `limits`) runs out of time, in which case it is killed.
pub fn supervise(
    guest: &mut Guest,
    console: &mut Console,
    limits: Option<Limits>,
    mut on_line: impl FnMut(&Line, Option<Event>),
) -> Result<(Suite, Ending)> {
    let boot = Instant::now();
    let mut suite = Suite::new();
    let mut feed = |suite: &mut Suite, lines: Vec<Line>| {
        for line in lines {
            let event = line
                .message()
                .and_then(|m| suite.observe(m, Instant::now()));
            on_line(&line, event);
        }
    };
    let ending = loop {
        let deadline = limits.map(|l| suite.deadline(boot, l.timeout, l.test_timeout));
        match guest.next_event(deadline.map(|(at, _)| at))? {
            guest::Event::Output(bytes) => {
                let lines = console.feed(&bytes);
                feed(&mut suite, lines);
            }
            guest::Event::Exited(status) => break Ending::Exited(status.code()),
            guest::Event::Deadline => {
                guest.kill()?;
                let limit = deadline.map(|(_, limit)| limit).unwrap_or_default();
                break Ending::TimedOut(limit);
            }
        }
    };
    let rest = console.finish();
    feed(&mut suite, rest);
    Ok((suite, ending))
}

fn console_for(kernel: &Kernel) -> Console<'_> {
    match &kernel.table {
        Some(table) => Console::defmt(table, kernel.locations.as_ref(), Some(workspace::root())),
        None => Console::text(),
    }
}

/// Boots interactively: streams the console and returns QEMU's exit status.
pub fn run(spec: &BootSpec) -> Result<Option<i32>> {
    let cmd = spec.command()?;
    eprintln!(
        "booting {} ({})",
        spec.profile.name, spec.profile.description
    );
    if spec.gdb {
        let elf = relative_to_cwd(&spec.kernel.elf);
        eprintln!(
            "QEMU waits for a debugger. In another terminal:\n    {} {} -ex 'target remote :1234'",
            spec.profile.arch.gdb(),
            elf.display()
        );
    }
    let mut guest = Guest::spawn(cmd, false)?;
    let mut console = console_for(spec.kernel);
    let stdout = std::io::stdout();
    let (_, ending) = supervise(&mut guest, &mut console, None, |line, _| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })?;
    Ok(match ending {
        Ending::Exited(code) => code,
        Ending::TimedOut(_) => None,
    })
}

fn relative_to_cwd(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// How much of a test boot to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing while running (used for the harness self-checks).
    Quiet,
    /// One line per test, console tail on failure.
    Tests,
    /// The whole console as it comes.
    Console,
}

/// Boots the in-kernel suite and judges it. Writes the full console to `log`.
pub fn test(spec: &BootSpec, limits: Limits, verbosity: Verbosity, log: &Path) -> Result<Verdict> {
    let label = &spec.profile.name;
    let cmd = spec.command()?;
    let mut guest = Guest::spawn(cmd, true)?;
    let mut console = console_for(spec.kernel);
    let mut transcript = Vec::new();
    let (suite, ending) = supervise(&mut guest, &mut console, Some(limits), |line, event| {
        transcript.push(line.to_string());
        if verbosity == Verbosity::Console {
            println!("  {line}");
        }
        if verbosity != Verbosity::Quiet
            && let Some(event) = event
        {
            println!("{}", format_event(label, &event));
        }
    })?;
    let verdict = suite.verdict(&ending, spec.profile.exit);
    let stderr = guest.stderr();

    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut text = transcript.join("\n");
    text.push('\n');
    if !stderr.is_empty() {
        text.push_str("--- QEMU stderr ---\n");
        text.push_str(&stderr);
    }
    fs::write(log, text).with_context(|| format!("writing {}", log.display()))?;

    if verbosity != Verbosity::Quiet {
        for problem in &verdict.problems {
            println!("[{label}] {problem}");
        }
        if !verdict.ok() && verbosity == Verbosity::Tests {
            print_tail(&transcript, &stderr, log);
        }
    }
    Ok(verdict)
}

pub fn format_event(label: &str, event: &Event) -> String {
    match event {
        Event::Pass(test) => format!("[{label}] ok   {test}"),
        Event::Fail { test, reason } => format!("[{label}] FAIL {test}: {reason}"),
        Event::Skip { test, reason } => format!("[{label}] skip {test}: {reason}"),
    }
}

fn print_tail(transcript: &[String], stderr: &str, log: &Path) {
    const TAIL: usize = 30;
    let start = transcript.len().saturating_sub(TAIL);
    println!(
        "    --- last {} console lines (all in {}) ---",
        transcript.len() - start,
        relative_to_cwd(log).display()
    );
    for line in &transcript[start..] {
        println!("    | {line}");
    }
    for line in stderr.lines() {
        println!("    qemu: {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ExitCodes;

    const EXIT: ExitCodes = ExitCodes {
        success: 33,
        failure: 35,
    };

    fn fake(script: &str) -> Guest {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        Guest::spawn(cmd, true).unwrap()
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(60),
        test_timeout: Duration::from_secs(30),
    };

    #[test]
    fn canned_stream_passes() {
        let mut guest = fake(
            "printf 'OpenSBI banner\\nKTEST start a\\nKTEST pass a\\nKTEST start b\\n'; \
             printf 'KTEST skip b: no disk\\nKTEST done passed=1 failed=0 skipped=1\\n'; exit 33",
        );
        let mut events = Vec::new();
        let (suite, ending) = supervise(&mut guest, &mut Console::text(), Some(LIMITS), |_, e| {
            events.extend(e.map(|e| format_event("x86_64", &e)))
        })
        .unwrap();
        assert_eq!(ending, Ending::Exited(Some(33)));
        assert!(suite.verdict(&ending, EXIT).ok());
        assert_eq!(events, ["[x86_64] ok   a", "[x86_64] skip b: no disk"]);
    }

    #[test]
    fn canned_failure_is_reported() {
        let mut guest = fake(
            "printf 'KTEST start selftest_fail\\nKTEST fail selftest_fail: deliberate\\n'; \
             printf 'KTEST done passed=0 failed=1 skipped=0\\n'; exit 35",
        );
        let mut events = Vec::new();
        let (suite, ending) = supervise(&mut guest, &mut Console::text(), Some(LIMITS), |_, e| {
            events.extend(e.map(|e| format_event("x86_64", &e)))
        })
        .unwrap();
        let verdict = suite.verdict(&ending, EXIT);
        assert_eq!(verdict.failures(), 1);
        assert_eq!(events, ["[x86_64] FAIL selftest_fail: deliberate"]);
    }

    #[test]
    fn hung_test_is_killed_after_the_test_timeout() {
        // The guest starts a test and then never says anything again.
        let mut guest = fake("printf 'KTEST start selftest_hang\\n'; exec sleep 1000");
        let limits = Limits {
            timeout: Duration::from_secs(60),
            test_timeout: Duration::from_secs(1),
        };
        let start = Instant::now();
        let (suite, ending) =
            supervise(&mut guest, &mut Console::text(), Some(limits), |_, _| {}).unwrap();
        assert!(start.elapsed() < Duration::from_secs(20));
        assert_eq!(ending, Ending::TimedOut(Duration::from_secs(1)));
        let verdict = suite.verdict(&ending, EXIT);
        assert_eq!(
            verdict.problems[0].to_string(),
            "TIMEOUT after 1s in test selftest_hang"
        );
    }

    #[test]
    fn silent_guest_is_killed_after_the_boot_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let mut guest = Guest::spawn(cmd, true).unwrap();
        let limits = Limits {
            timeout: Duration::from_secs(1),
            test_timeout: Duration::from_secs(30),
        };
        let (suite, ending) =
            supervise(&mut guest, &mut Console::text(), Some(limits), |_, _| {}).unwrap();
        assert_eq!(ending, Ending::TimedOut(Duration::from_secs(1)));
        assert_eq!(
            suite.verdict(&ending, EXIT).problems[0].to_string(),
            "TIMEOUT after 1s outside any test"
        );
    }

    #[test]
    fn crash_without_done_is_a_failure() {
        let mut guest = fake("printf 'KTEST start a\\nPANIC boom at k.rs:1:2\\n'; exit 35");
        let (suite, ending) =
            supervise(&mut guest, &mut Console::text(), Some(LIMITS), |_, _| {}).unwrap();
        let verdict = suite.verdict(&ending, EXIT);
        assert_eq!(verdict.failures(), 1);
        assert_eq!(
            verdict.problems[0].to_string(),
            "FAIL a: PANIC boom at k.rs:1:2"
        );
    }
}
