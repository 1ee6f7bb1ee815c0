//! The profiling hooks of `mode=bench`, shared by the raw jobs (`bench`) and the filesystem
//! jobs (`bench_fs`): the `benchprof` command-line request and the two marker functions whose
//! addresses `cargo xtask prof` counts instructions between.

/// `benchprof=J:N`: run only raw job `J` (index into the job table of [`crate::bench`]) with
/// `N` I/Os, between calls of [`profile_mark_begin`] and [`profile_mark_end`], and no filesystem
/// jobs; `J` = [`FS_PROFILE_JOB`](crate::bench::FS_PROFILE_JOB) runs only the data phase of the
/// filesystem's zero-copy sequential write between the marks (256 writes of 128 KiB, whatever
/// `N`). For instruction profiles from a QEMU execution trace: the trace is counted between the
/// two marks' addresses.
pub(crate) fn profile_request() -> Option<(usize, u32)> {
    let v = crate::boot::cmdline_arg(crate::boot_info().cmdline, "benchprof")?;
    let (j, n) = v.split_once(':')?;
    Some((j.parse().ok()?, n.parse().ok()?))
}

/// Start of the profiled job (its address is looked up in the kernel's symbols).
// `no_mangle` so xtask can find the address by name; the two names are unique in the kernel, so
// no other symbol is displaced.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn profile_mark_begin() {
    core::hint::black_box(());
}

/// End of the profiled job.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn profile_mark_end() {
    core::hint::black_box(1u8);
}
