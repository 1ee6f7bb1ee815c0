//! The in-kernel test runner.
//!
//! Tests register themselves with [`ktest!`](crate::ktest): each becomes a [`KTest`] in the
//! `.ktests` linker section, which the runner walks in link order. Each test reports
//! `KTEST start <name>`, then `KTEST pass <name>`, `KTEST fail <name>: <why>` or
//! `KTEST skip <name>: <why>`; the run ends with `KTEST done passed=N failed=N skipped=N` and
//! the exit code. The host side (`cargo xtask test`) parses exactly these lines.

use core::fmt::Write;

/// Why a test did not pass.
#[derive(Debug)]
pub enum Outcome {
    /// The test failed: the message says what was expected.
    Fail(heapless::String<100>),
    /// The test could not run here (missing device, option off).
    Skip(&'static str),
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

/// Builds a failure with a formatted message (truncated to fit).
pub fn fail(args: core::fmt::Arguments<'_>) -> Outcome {
    let mut s = heapless::String::new();
    let _ = s.write_fmt(args); // truncation is fine: the message is a diagnostic
    Outcome::Fail(s)
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
                "{} ({}:{})", format_args!($($arg)+), file!(), line!()
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
                "{} == {}: {:?} != {:?} ({}:{})",
                stringify!($a),
                stringify!($b),
                a,
                b,
                file!(),
                line!()
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
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
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
        match (t.run)() {
            Ok(()) => {
                passed += 1;
                defmt::println!("KTEST pass {=str}", t.name);
            }
            Err(Outcome::Fail(msg)) => {
                failed += 1;
                defmt::println!("KTEST fail {=str}: {=str}", t.name, msg.as_str());
            }
            Err(Outcome::Skip(why)) => {
                skipped += 1;
                defmt::println!("KTEST skip {=str}: {=str}", t.name, why);
            }
        }
    }
    defmt::println!(
        "KTEST done passed={=u32} failed={=u32} skipped={=u32}",
        passed,
        failed,
        skipped
    );
    failed == 0
}
