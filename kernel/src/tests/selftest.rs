//! Deliberately broken tests, run only when asked for on the command line, so the host harness
//! can prove it notices a failing and a hanging test.

ktest! {
    #[only_with = "selftest=fail"]
    fn selftest_fail() -> TestResult {
        // A message well past the old 100-byte limit, with a last word the harness looks for:
        // failure messages arrive whole, with the location of the check.
        check!(
            1 + 1 == 3,
            "this test fails on purpose; {0}{0}{0}the whole message and its location must reach \
             the host: END-OF-SELFTEST-MESSAGE",
            "padding that makes the message longer than the 100 bytes it used to be cut at; "
        );
        Ok(())
    }
}

ktest! {
    #[only_with = "selftest=hang"]
    fn selftest_hang() -> TestResult {
        loop {
            crate::arch::wait_for_interrupt();
        }
    }
}
