//! The in-kernel test runner.
//!
//! Tests register themselves with [`ktest!`](macro@crate::ktest): each becomes a [`KTest`] in the
//! `.ktests` linker section, which the runner walks in link order. Each test reports
//! `KTEST start <name>`, then `KTEST pass <name>`, `KTEST fail <name>: <why> at <file>:<line>`
//! or `KTEST skip <name>: <why>`; the run ends with
//! `KTEST done passed=N failed=N skipped=N` and the exit code. The host side
//! (`cargo xtask test`) parses exactly these lines.
//!
//! Skipping is decided here, not by each test: a test that needs a disk kind returns
//! [`Outcome::NoDisk`], and the runner skips it only when the command line does not expect that
//! kind (`expect=`); when it does, the test fails with the driver's reason. Before any test,
//! a boot that expects a disk kind which did not attach reports the failing check
//! `kernel::ktest::expected_disks_attached`, and a boot whose block setup met a problem it
//! went on after (a refused `dm=` table, a pool not filled: `block::setup_errors`) reports
//! `kernel::ktest::block_setup_clean`.

use core::fmt::{self, Write};
use core::panic::Location;

use spin::Mutex;

use crate::block::{self, DiskKind};
use crate::text::Bounded;

/// Bytes a failure message may take; a longer one is cut and ends with [`TRUNCATED`].
pub const FAIL_MESSAGE_BYTES: usize = 512;
/// The end of a failure message that did not fit in [`FAIL_MESSAGE_BYTES`].
pub const TRUNCATED: &str = crate::text::CUT_MARK;

/// Why a test did not pass.
#[derive(Debug)]
pub enum Outcome {
    /// The test failed: what was expected, why it is not so, and where.
    Fail(Failure),
    /// The test could not run here for a reason other than a missing disk (an option off,
    /// a device the profile does not configure).
    Skip(&'static str),
    /// The test needs a disk of this kind and none attached: a skip when the command line
    /// does not expect the kind, a failure when it does.
    NoDisk(DiskKind),
}

/// A failure: the source location that raised it, and which message of [`MESSAGE`] is its own.
///
/// The message itself lives in one static buffer (tests run one at a time and return their
/// first failure), so that a `Result<_, Outcome>` stays small on the stack.
#[derive(Debug)]
pub struct Failure {
    /// Which [`fail`] call wrote the message.
    seq: u32,
    location: &'static Location<'static>,
}

/// The message of the newest failure: the number of the [`fail`] call that wrote it, and the
/// text (at most [`FAIL_MESSAGE_BYTES`], ending with [`TRUNCATED`] when cut).
static MESSAGE: Mutex<(u32, heapless::String<FAIL_MESSAGE_BYTES>)> =
    Mutex::new((0, heapless::String::new()));

impl Failure {
    /// Where the failure was raised.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// Calls `f` with the message, or with a note when a later failure (one built and then
    /// dropped) has taken the buffer since.
    pub fn with_message<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let m = MESSAGE.lock();
        if m.0 == self.seq {
            f(&m.1)
        } else {
            f("(message replaced by a later failure)")
        }
    }
}
/// What a test body returns.
pub type TestResult = Result<(), Outcome>;

/// One registered test.
#[repr(C)]
pub struct KTest {
    /// Name reported over serial (the function path).
    pub name: &'static str,
    /// Only run when this word is on the command line (e.g. `selftest=fail`).
    pub only_with: Option<&'static str>,
    /// The body.
    pub run: fn() -> TestResult,
}

/// Builds a failure with a formatted message, located at the caller.
#[track_caller]
pub fn fail(args: fmt::Arguments<'_>) -> Outcome {
    let mut m = MESSAGE.lock();
    let seq = m.0.wrapping_add(1);
    m.0 = seq;
    m.1.clear();
    let _ = Bounded::new(&mut m.1).write_fmt(args);
    Outcome::Fail(Failure {
        seq,
        location: Location::caller(),
    })
}

/// Registers a test: `ktest!(fn name() -> TestResult { ... })`.
#[macro_export]
macro_rules! ktest {
    ($(#[only_with = $word:literal])? fn $name:ident() -> TestResult $body:block) => {
        fn $name() -> $crate::ktest::TestResult $body
        const _: () = {
            // `.ktests` holds only `KTest` values (this macro is its only writer), which `all`
            // reads back as one array.
            #[unsafe(link_section = ".ktests")]
            #[used]
            static TEST: $crate::ktest::KTest = $crate::ktest::KTest {
                name: concat!(module_path!(), "::", stringify!($name)),
                only_with: $crate::ktest::__only_with!($($word)?),
                run: $name,
            };
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __only_with {
    () => {
        None
    };
    ($w:literal) => {
        Some($w)
    };
}
pub use crate::__only_with;

/// Fails the test unless `cond` holds: `check!(cond, "fmt", args..)`.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::ktest::fail(format_args!(
                "{}: {}", stringify!($cond), format_args!($($arg)+)
            )));
        }
    };
}

/// Fails the test unless `a == b`, printing both.
#[macro_export]
macro_rules! check_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err($crate::ktest::fail(format_args!(
                "{} == {}: {:?} != {:?}",
                stringify!($a),
                stringify!($b),
                a,
                b
            )));
        }
    }};
}

fn all() -> &'static [KTest] {
    // Bounds of `.ktests` from the linker script; only their addresses are used.
    unsafe extern "C" {
        static __ktests_start: u8;
        static __ktests_end: u8;
    }
    // SAFETY: the linker script places every `.ktests` entry, each a `KTest` emitted by
    // `ktest!` (same type, so same size and alignment, no padding between array elements),
    // contiguously between these two symbols; the section is read-only data for the whole run.
    unsafe {
        let start = (&raw const __ktests_start).cast::<KTest>();
        let end = (&raw const __ktests_end).cast::<KTest>();
        let n = (end as usize - start as usize) / core::mem::size_of::<KTest>();
        core::slice::from_raw_parts(start, n)
    }
}

/// Runs every test whose gate the command line opens; returns whether all passed.
pub fn run_all(cmdline: &str) -> bool {
    let mut counts = Counts::default();
    // The expected disks first: a boot whose expected disk did not attach fails here with the
    // driver's reason, whichever tests run after.
    if block::missing_expected(cmdline) != 0 {
        let name = "kernel::ktest::expected_disks_attached";
        defmt::println!("KTEST start {=str}", name);
        let mut why = heapless::String::<FAIL_MESSAGE_BYTES>::new();
        let mut w = Bounded::new(&mut why);
        for kind in DiskKind::ALL {
            if block::is_expected(cmdline, kind) && !kind.attached() {
                if !w.is_empty() {
                    let _ = w.write_str("; ");
                }
                let _ = block::why_missing(kind, &mut w);
            }
        }
        if why.is_empty() {
            let _ = why.push_str("expect= names an unknown disk kind");
        }
        counts.report(name, Err(fail(format_args!("{}", why))), cmdline);
    }
    // Problems of the block layer's setup that the boot went on after (a refused `dm=`
    // table, a pool not filled): logged at boot, failed here whichever tests run.
    if block::setup_errors::count() != 0 {
        let name = "kernel::ktest::block_setup_clean";
        defmt::println!("KTEST start {=str}", name);
        let mut why = heapless::String::<FAIL_MESSAGE_BYTES>::new();
        let mut w = Bounded::new(&mut why);
        block::setup_errors::for_each(|s| {
            if !w.is_empty() {
                let _ = w.write_str("; ");
            }
            let _ = w.write_str(s);
        });
        counts.report(name, Err(fail(format_args!("{}", why))), cmdline);
    }
    // `ktest=gated`: only the tests whose gate word is on the command line, for a boot that
    // must leave the disk to them (one phase of a test spanning reboots on the same image).
    let gated_only = cmdline.split_ascii_whitespace().any(|w| w == "ktest=gated");
    for t in all() {
        if gated_only && t.only_with.is_none() {
            continue;
        }
        if let Some(word) = t.only_with
            && !cmdline.split_ascii_whitespace().any(|w| w == word)
        {
            continue;
        }
        defmt::println!("KTEST start {=str}", t.name);
        counts.report(t.name, (t.run)(), cmdline);
    }
    defmt::println!(
        "KTEST done passed={=u32} failed={=u32} skipped={=u32}",
        counts.passed,
        counts.failed,
        counts.skipped
    );
    counts.failed == 0
}

#[derive(Default)]
struct Counts {
    passed: u32,
    failed: u32,
    skipped: u32,
}

impl Counts {
    /// Prints one test's result line and counts it. A missing disk is a skip only when the
    /// command line does not expect that kind.
    fn report(&mut self, name: &str, result: TestResult, cmdline: &str) {
        let result = match result {
            Err(Outcome::NoDisk(kind)) if block::is_expected(cmdline, kind) => {
                let mut why = heapless::String::<FAIL_MESSAGE_BYTES>::new();
                let _ = block::why_missing(kind, &mut Bounded::new(&mut why));
                Err(fail(format_args!("needs {}: {}", kind.a_disk(), why)))
            }
            other => other,
        };
        match result {
            Ok(()) => {
                self.passed += 1;
                defmt::println!("KTEST pass {=str}", name);
            }
            Err(Outcome::Fail(f)) => {
                self.failed += 1;
                f.with_message(|why| {
                    defmt::println!(
                        "KTEST fail {=str}: {=str} at {=str}:{=u32}",
                        name,
                        why,
                        f.location().file(),
                        f.location().line()
                    )
                });
            }
            Err(Outcome::Skip(why)) => {
                self.skipped += 1;
                defmt::println!("KTEST skip {=str}: {=str}", name, why);
            }
            Err(Outcome::NoDisk(kind)) => {
                self.skipped += 1;
                defmt::println!("KTEST skip {=str}: needs {=str}", name, kind.a_disk());
            }
        }
    }
}

ktest! {
    fn failure_messages_are_whole_up_to_the_buffer_and_cut_visibly() -> TestResult {
        // Built here, inspected and dropped: a failure message of 400 bytes arrives whole, one
        // of 600 ends with the mark, and both know where they were raised.
        let short = fail(format_args!("{}", Repeat("0123456789", 40)));
        let Outcome::Fail(f) = short else {
            return Err(fail(format_args!("fail() built no failure")));
        };
        let (len, cut) = f.with_message(|m| (m.len(), m.ends_with(TRUNCATED)));
        check!(len == 400 && !cut, "400-byte message stored as {} bytes (cut: {})", len, cut);
        check_eq!(f.location().file(), file!());
        let long = fail(format_args!("{}", Repeat("0123456789", 60)));
        let Outcome::Fail(g) = long else {
            return Err(fail(format_args!("fail() built no failure")));
        };
        let (len, cut) = g.with_message(|m| (m.len(), m.ends_with(TRUNCATED)));
        check!(len <= FAIL_MESSAGE_BYTES && cut, "600-byte message: {} bytes, cut mark {}", len, cut);
        // The older failure's message has been replaced, and says so.
        let replaced = f.with_message(|m| m.starts_with("(message replaced"));
        check!(replaced, "an overwritten message was reported as its own");
        Ok(())
    }
}

/// `self.0` written `self.1` times.
struct Repeat(&'static str, usize);

impl fmt::Display for Repeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for _ in 0..self.1 {
            f.write_str(self.0)?;
        }
        Ok(())
    }
}
