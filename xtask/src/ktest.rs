//! The in-kernel test protocol, read from decoded console messages.
//!
//! ```text
//! KTEST start <name>
//! KTEST pass <name>
//! KTEST fail <name>: <reason>
//! KTEST skip <name>: <reason>
//! KTEST done passed=<n> failed=<n> skipped=<n>
//! PANIC <message> at <file>:<line>:<col>
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use crate::profile::ExitCodes;

/// Something worth printing while the suite runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Pass(String),
    Fail { test: String, reason: String },
    Skip { test: String, reason: String },
}

/// The counts on the `KTEST done` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "passed={} failed={} skipped={}",
            self.passed, self.failed, self.skipped
        )
    }
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited with this status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// xtask killed the guest after this long.
    TimedOut(Duration),
}

/// A failure the harness found, beyond `KTEST fail` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    Timeout {
        after: Duration,
        test: Option<String>,
    },
    Panic {
        test: Option<String>,
        message: String,
    },
    MissingDone,
    DoneMismatch {
        reported: Counts,
        counted: Counts,
    },
    ExitStatus {
        got: Option<i32>,
        expected: i32,
    },
    StartWithoutResult(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Timeout { after, test } => {
                write!(f, "TIMEOUT after {}s ", after.as_secs())?;
                match test {
                    Some(test) => write!(f, "in test {test}"),
                    None => write!(f, "outside any test"),
                }
            }
            Problem::Panic { test, message } => {
                write!(f, "FAIL {}: {message}", test.as_deref().unwrap_or("(boot)"))
            }
            Problem::MissingDone => write!(f, "FAIL (suite): the kernel never sent KTEST done"),
            Problem::DoneMismatch { reported, counted } => write!(
                f,
                "FAIL (suite): KTEST done says {reported}, but the stream had {counted}"
            ),
            Problem::ExitStatus { got, expected } => match got {
                Some(code) => write!(
                    f,
                    "FAIL (suite): QEMU exited with status {code}, expected {expected}"
                ),
                None => write!(f, "FAIL (suite): QEMU was killed by a signal"),
            },
            Problem::StartWithoutResult(test) => {
                write!(f, "FAIL {test}: started but never reported a result")
            }
        }
    }
}

/// Follows one boot's test stream.
#[derive(Debug, Default)]
pub struct Suite {
    pub passed: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    pub done: Option<Counts>,
    pub panic: Option<String>,
    /// The test started last and not finished yet, with when it started.
    current: Option<(String, Instant)>,
    /// The test started last, finished or not.
    last_started: Option<String>,
    orphans: Vec<String>,
}

/// What a whole boot amounted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub passed: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub skipped: Vec<(String, String)>,
    pub problems: Vec<Problem>,
}

impl Verdict {
    pub fn failures(&self) -> usize {
        self.failed.len() + self.problems.len()
    }

    pub fn ok(&self) -> bool {
        self.failures() == 0
    }
}

impl Suite {
    pub fn new() -> Self {
        Suite::default()
    }

    /// The test running now.
    pub fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|(name, _)| name.as_str())
    }

    /// When the guest must be killed: the whole-boot limit or the running test's limit,
    /// whichever comes first.
    /// Also returns the limit that applies, for the report.
    pub fn deadline(
        &self,
        boot: Instant,
        timeout: Duration,
        test_timeout: Duration,
    ) -> (Instant, Duration) {
        let whole = boot + timeout;
        match &self.current {
            Some((_, started)) if *started + test_timeout < whole => {
                (*started + test_timeout, test_timeout)
            }
            _ => (whole, timeout),
        }
    }

    /// Reads one console message at time `now`.
    pub fn observe(&mut self, message: &str, now: Instant) -> Option<Event> {
        let message = message.trim();
        if let Some(panic) = message.strip_prefix("PANIC ") {
            self.panic.get_or_insert_with(|| panic.to_owned());
            return None;
        }
        let rest = message.strip_prefix("KTEST ")?;
        let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
        match verb {
            "start" => {
                let name = args.trim().to_owned();
                if let Some((unfinished, _)) = self.current.take() {
                    self.orphans.push(unfinished);
                }
                self.last_started = Some(name.clone());
                self.current = Some((name, now));
                None
            }
            "pass" => {
                let name = args.trim().to_owned();
                self.finish_current(&name);
                self.passed.push(name.clone());
                Some(Event::Pass(name))
            }
            "fail" | "skip" => {
                let (name, reason) = args.split_once(": ").unwrap_or((args, ""));
                let (name, reason) = (name.trim().to_owned(), reason.trim().to_owned());
                self.finish_current(&name);
                if verb == "fail" {
                    self.failed.push((name.clone(), reason.clone()));
                    Some(Event::Fail { test: name, reason })
                } else {
                    self.skipped.push((name.clone(), reason.clone()));
                    Some(Event::Skip { test: name, reason })
                }
            }
            "done" => {
                self.done = parse_done(args);
                if self.done.is_none() {
                    // An unreadable done line counts as missing; keep it visible in the log.
                    eprintln!("warning: unreadable KTEST done line: {message}");
                }
                None
            }
            _ => None,
        }
    }

    fn finish_current(&mut self, name: &str) {
        if self.current.as_ref().is_some_and(|(cur, _)| cur == name) {
            self.current = None;
        }
    }

    /// Judges the boot once the guest has ended.
    pub fn verdict(&self, ending: &Ending, exit: ExitCodes) -> Verdict {
        let mut problems = Vec::new();
        let counted = Counts {
            passed: self.passed.len(),
            failed: self.failed.len(),
            skipped: self.skipped.len(),
        };
        let in_test = self.current().map(str::to_owned);
        match ending {
            Ending::TimedOut(after) => problems.push(Problem::Timeout {
                after: *after,
                test: in_test.or_else(|| self.last_started.clone()),
            }),
            Ending::Exited(code) => {
                if let Some(message) = &self.panic {
                    problems.push(Problem::Panic {
                        test: in_test,
                        message: format!("PANIC {message}"),
                    });
                } else {
                    for orphan in self.orphans.iter().chain(in_test.as_ref()) {
                        problems.push(Problem::StartWithoutResult(orphan.clone()));
                    }
                    match self.done {
                        None => problems.push(Problem::MissingDone),
                        Some(reported) if reported != counted => {
                            problems.push(Problem::DoneMismatch { reported, counted })
                        }
                        Some(_) => {}
                    }
                }
                let expected = if self.failed.is_empty() && self.panic.is_none() {
                    exit.success
                } else {
                    exit.failure
                };
                if *code != Some(expected) {
                    problems.push(Problem::ExitStatus {
                        got: *code,
                        expected,
                    });
                }
            }
        }
        Verdict {
            passed: self.passed.clone(),
            failed: self.failed.clone(),
            skipped: self.skipped.clone(),
            problems,
        }
    }
}

fn parse_done(args: &str) -> Option<Counts> {
    let mut counts = [None; 3];
    for field in args.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        let slot = match key {
            "passed" => 0,
            "failed" => 1,
            "skipped" => 2,
            _ => return None,
        };
        counts[slot] = Some(value.parse().ok()?);
    }
    Some(Counts {
        passed: counts[0]?,
        failed: counts[1]?,
        skipped: counts[2]?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: ExitCodes = ExitCodes {
        success: 33,
        failure: 35,
    };

    fn feed(lines: &[&str]) -> Suite {
        let mut suite = Suite::new();
        let now = Instant::now();
        for line in lines {
            suite.observe(line, now);
        }
        suite
    }

    #[test]
    fn clean_run() {
        let suite = feed(&[
            "kernel banner",
            "KTEST start pci_enumeration",
            "some log in between",
            "KTEST pass pci_enumeration",
            "KTEST start msi",
            "KTEST skip msi: no MSI capability",
            "KTEST done passed=1 failed=0 skipped=1",
        ]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.passed, ["pci_enumeration"]);
        assert_eq!(v.skipped, [("msi".into(), "no MSI capability".into())]);
    }

    #[test]
    fn events_are_reported() {
        let mut suite = Suite::new();
        let now = Instant::now();
        assert_eq!(suite.observe("KTEST start a", now), None);
        assert_eq!(suite.current(), Some("a"));
        assert_eq!(
            suite.observe("KTEST fail a: expected 1, got 2", now),
            Some(Event::Fail {
                test: "a".into(),
                reason: "expected 1, got 2".into()
            })
        );
        assert_eq!(suite.current(), None);
        assert_eq!(
            suite.observe("  KTEST pass b  ", now),
            Some(Event::Pass("b".into()))
        );
    }

    #[test]
    fn failing_test_with_failure_exit_is_one_failure() {
        let suite = feed(&[
            "KTEST start selftest_fail",
            "KTEST fail selftest_fail: deliberate failure",
            "KTEST done passed=0 failed=1 skipped=0",
        ]);
        let v = suite.verdict(&Ending::Exited(Some(35)), EXIT);
        assert_eq!(v.failures(), 1);
        assert!(v.problems.is_empty());
    }

    #[test]
    fn failing_test_with_success_exit_is_also_an_exit_problem() {
        let suite = feed(&["KTEST fail a: x", "KTEST done passed=0 failed=1 skipped=0"]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert_eq!(
            v.problems,
            [Problem::ExitStatus {
                got: Some(33),
                expected: 35
            }]
        );
    }

    #[test]
    fn done_mismatch() {
        let suite = feed(&[
            "KTEST start a",
            "KTEST pass a",
            "KTEST done passed=2 failed=0 skipped=0",
        ]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert!(matches!(v.problems[..], [Problem::DoneMismatch { .. }]));
        assert!(v.problems[0].to_string().contains("passed=2"));
    }

    #[test]
    fn missing_done() {
        let suite = feed(&["KTEST start a", "KTEST pass a"]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert_eq!(v.problems, [Problem::MissingDone]);
    }

    #[test]
    fn unreadable_done_counts_as_missing() {
        let suite = feed(&["KTEST done passed=one"]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert_eq!(v.problems, [Problem::MissingDone]);
    }

    #[test]
    fn panic_in_test() {
        let suite = feed(&[
            "KTEST start bio_split",
            "PANIC index out of bounds at kernel/blk/src/split.rs:10:5",
        ]);
        let v = suite.verdict(&Ending::Exited(Some(35)), EXIT);
        assert_eq!(v.failures(), 1);
        let text = v.problems[0].to_string();
        assert_eq!(
            text,
            "FAIL bio_split: PANIC index out of bounds at kernel/blk/src/split.rs:10:5"
        );
    }

    #[test]
    fn panic_with_success_exit_is_two_failures() {
        let suite = feed(&["PANIC oops at a.rs:1:1"]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert_eq!(v.failures(), 2);
        assert!(
            v.problems[0]
                .to_string()
                .starts_with("FAIL (boot): PANIC oops")
        );
    }

    #[test]
    fn timeout_names_the_running_test() {
        let suite = feed(&["KTEST start a", "KTEST pass a", "KTEST start selftest_hang"]);
        let v = suite.verdict(&Ending::TimedOut(Duration::from_secs(20)), EXIT);
        assert_eq!(v.failures(), 1);
        assert_eq!(
            v.problems[0].to_string(),
            "TIMEOUT after 20s in test selftest_hang"
        );
    }

    #[test]
    fn timeout_between_tests_names_the_last_started() {
        let suite = feed(&["KTEST start a", "KTEST pass a"]);
        let v = suite.verdict(&Ending::TimedOut(Duration::from_secs(300)), EXIT);
        assert_eq!(v.problems[0].to_string(), "TIMEOUT after 300s in test a");
        let v = Suite::new().verdict(&Ending::TimedOut(Duration::from_secs(3)), EXIT);
        assert_eq!(
            v.problems[0].to_string(),
            "TIMEOUT after 3s outside any test"
        );
    }

    #[test]
    fn started_test_without_result() {
        let suite = feed(&[
            "KTEST start a",
            "KTEST start b",
            "KTEST pass b",
            "KTEST done passed=1 failed=0 skipped=0",
        ]);
        let v = suite.verdict(&Ending::Exited(Some(33)), EXIT);
        assert_eq!(v.problems, [Problem::StartWithoutResult("a".into())]);
    }

    #[test]
    fn deadline_uses_the_test_limit_while_a_test_runs() {
        let boot = Instant::now();
        let mut suite = Suite::new();
        let whole = Duration::from_secs(300);
        let per_test = Duration::from_secs(20);
        assert_eq!(suite.deadline(boot, whole, per_test), (boot + whole, whole));
        let started = boot + Duration::from_secs(5);
        suite.observe("KTEST start slow", started);
        assert_eq!(
            suite.deadline(boot, whole, per_test),
            (started + per_test, per_test)
        );
        suite.observe("KTEST pass slow", started);
        assert_eq!(suite.deadline(boot, whole, per_test), (boot + whole, whole));
        // Near the end of the boot limit, the boot limit wins.
        suite.observe("KTEST start late", boot + Duration::from_secs(290));
        assert_eq!(suite.deadline(boot, whole, per_test), (boot + whole, whole));
    }
}
