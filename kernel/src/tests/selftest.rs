//! Deliberately broken tests, run only when asked for on the command line, so the host harness
//! can prove it notices a failing and a hanging test.

ktest! {
    #[only_with = "selftest=fail"]
    fn selftest_fail() -> TestResult {
        check!(1 + 1 == 3, "this test fails on purpose");
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
