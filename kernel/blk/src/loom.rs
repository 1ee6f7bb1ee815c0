//! Atomics facade: `core` atomics normally, loom's under `cfg(loom)` so the model checker can
//! explore the lock-free free list and tag bitmap.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
