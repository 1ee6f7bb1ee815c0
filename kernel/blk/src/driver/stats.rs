//! [`driver_stats!`](crate::driver_stats): the counters struct every driver keeps.

/// Declares a struct of counters, each a relaxed `AtomicU64`, with a `const fn new()` (for a
/// `static` or a `const` constructor), `NAMES`, `for_each` (name and value of every counter),
/// `snapshot` (the values in declaration order) and `add_from` (totals over several sets, for a
/// driver that keeps one set per hardware queue so that CPUs on different queues write no
/// common cache line).
///
/// ```
/// use core::sync::atomic::Ordering;
///
/// blk::driver_stats! {
///     /// Counters of one controller (relaxed atomics).
///     pub struct DriverStats {
///         /// Requests taken by `queue_rq`.
///         requests,
///         /// Requests completed with an error.
///         errors,
///     }
/// }
///
/// static STATS: DriverStats = DriverStats::new();
/// STATS.requests.fetch_add(2, Ordering::Relaxed);
/// assert_eq!(STATS.snapshot(), [2, 0]);
/// assert_eq!(DriverStats::NAMES, ["requests", "errors"]);
/// ```
#[macro_export]
macro_rules! driver_stats {
    (
        $(#[$sm:meta])*
        $vis:vis struct $Name:ident {
            $( $(#[$m:meta])* $name:ident ),* $(,)?
        }
    ) => {
        $(#[$sm])*
        #[derive(Debug, Default)]
        $vis struct $Name {
            $( $(#[$m])* pub $name: ::core::sync::atomic::AtomicU64, )*
        }

        impl $Name {
            /// Every counter at zero.
            #[allow(clippy::new_without_default)]
            pub const fn new() -> Self {
                $Name { $( $name: ::core::sync::atomic::AtomicU64::new(0), )* }
            }

            /// The counters' names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Calls `f` with the name and value of every counter, in declaration order.
            pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
                $( f(stringify!($name), self.$name.load(::core::sync::atomic::Ordering::Relaxed)); )*
            }

            /// The values of every counter, in declaration order (each load is relaxed: the
            /// counters are not read at one instant).
            pub fn snapshot(&self) -> [u64; [$(stringify!($name)),*].len()] {
                [$( self.$name.load(::core::sync::atomic::Ordering::Relaxed) ),*]
            }

            /// Adds every counter of `other` to this set's (relaxed loads and adds): for totals
            /// over sets kept per hardware queue. Only for sets whose counters are all counts:
            /// a high-water mark kept in a counter would be added, not maxed.
            pub fn add_from(&self, other: &Self) {
                $(
                    self.$name.fetch_add(
                        other.$name.load(::core::sync::atomic::Ordering::Relaxed),
                        ::core::sync::atomic::Ordering::Relaxed,
                    );
                )*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::Ordering;

    crate::driver_stats! {
        /// Test counters.
        struct Counters {
            /// First.
            a,
            /// Second.
            b,
            /// Third.
            c,
        }
    }

    static STATIC: Counters = Counters::new();

    #[test]
    fn counters_start_at_zero_and_count() {
        let s = Counters::new();
        assert_eq!(s.snapshot(), [0, 0, 0]);
        s.b.fetch_add(3, Ordering::Relaxed);
        s.c.fetch_add(1, Ordering::Relaxed);
        s.b.fetch_add(1, Ordering::Relaxed);
        assert_eq!(s.snapshot(), [0, 4, 1]);
        let mut seen = [("", 0u64); 3];
        let mut i = 0;
        s.for_each(|n, v| {
            seen[i] = (n, v);
            i += 1;
        });
        assert_eq!(seen, [("a", 0), ("b", 4), ("c", 1)]);
        assert_eq!(Counters::NAMES, ["a", "b", "c"]);
        STATIC.a.fetch_add(7, Ordering::Relaxed);
        assert_eq!(STATIC.snapshot()[0], 7);
        let total = Counters::new();
        total.add_from(&s);
        total.add_from(&STATIC);
        assert_eq!(total.snapshot(), [7, 4, 1]);
    }
}
