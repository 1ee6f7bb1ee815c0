//! Running work on every CPU.
//!
//! Only the boot CPU runs so far, so [`on_each_cpu`] runs the work there. Bringing up the other
//! CPUs makes it run the work on each of them at once.

use crate::arch;

/// Runs `work(cpu)` on every online CPU (`cpu` in `0..arch::cpus_online()`), concurrently where
/// several CPUs are online, and returns when every call has returned. Thread context only.
#[allow(dead_code)] // the multi-CPU tests and benchmarks are its users
pub fn on_each_cpu(work: fn(usize)) {
    for cpu in 0..arch::cpus_online() {
        debug_assert_eq!(cpu, arch::cpu_id());
        work(cpu);
    }
}
