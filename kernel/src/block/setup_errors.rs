//! Problems met while the block layer was set up that leave the boot going: a pool whose
//! reserve could not be filled at [`super::init`], a `dm=` table refused, a mapped device's
//! mirror that could not be resynced at creation, or a disk's interrupt that could not be set
//! up (its queues would never complete: MSI-X programming, a vector or a line refused). Each is
//! logged as an error by [`record`], where it happens, and also kept here, so that the in-kernel test run fails on it (`kernel::ktest::block_setup_clean`,
//! before any test) and run mode lists it again after the devices ([`super::registry::print`]).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use spin::Mutex;

use crate::text::Bounded;

/// Problems kept (more are counted, not kept).
pub const MAX_KEPT: usize = 8;
/// Bytes of one kept message (a longer one is cut).
pub const MESSAGE_BYTES: usize = 160;

static KEPT: Mutex<heapless::Vec<heapless::String<MESSAGE_BYTES>, MAX_KEPT>> =
    Mutex::new(heapless::Vec::new());
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Logs a problem as an error and records it (a message longer than [`MESSAGE_BYTES`] is
/// cut; past [`MAX_KEPT`] problems it is counted and logged, not kept).
pub fn record(what: fmt::Arguments<'_>) {
    COUNT.fetch_add(1, Ordering::AcqRel);
    let mut s = heapless::String::new();
    // A cut message is still logged and kept: `Bounded` reports the cut, nothing else fails.
    let _ = Bounded::new(&mut s).write_fmt(what);
    defmt::error!("{=str}", s.as_str());
    // Full: counted above, and `count` is what fails the test run.
    let _ = KEPT.lock().push(s);
}

/// Problems recorded so far.
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// Calls `f` with each kept problem, in order.
pub fn for_each(mut f: impl FnMut(&str)) {
    for s in KEPT.lock().iter() {
        f(s);
    }
}
