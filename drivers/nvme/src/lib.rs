//! NVMe over PCIe as a `blk` hardware queue.
//!
//! Bring-up from BAR0 (reset, admin queue, enable, Identify Controller, the active namespaces
//! and the first [`MAX_NS_QUEUES`] usable ones with their write protection, number of queues,
//! volatile write cache), one I/O queue pair shared by the namespaces' queues ([`NsQueue`]:
//! each its own range of command slots, completions routed by command id), data pointers from `Request::map_sg` (PRP
//! lists chained over a per-tag page budget, or SGLs when the controller has them), completion
//! by command id from the interrupt handler (or `poll`), every completion checked against the
//! ids in flight, abort then controller reset on a timeout or a fatal status. Admin commands go
//! through the same queue as passthrough requests. See `docs/nvme.md`.
//!
//! Wire format: [`regs`] (BAR0), [`spec`] (opcodes, Identify, status), [`cmd`] (commands),
//! [`queue`] (rings, command ids), [`prp`] (PRPs and SGLs). The driver: `ctrl` (the
//! controller and its bring-up), [`ns`] (which namespaces are active, which ones are attached), `io` (the request path), `complete` (reaping and the interrupt
//! handler), `reset` (timeouts, abort, controller reset), `passthrough` (admin commands from
//! the block layer), `stats` (the counters). The plumbing every driver has (counters,
//! completions delivered after the locks, scatter-gather lists on the stack, block ranges)
//! comes from `blk::driver`.
//!
//! Feature `fake` (host only, needs `std`; the kernel never enables it): module `fake`, the
//! controller model the host tests run against, for host programs such as
//! `examples/host_disk.rs`.
#![cfg_attr(not(any(test, feature = "fake")), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cmd;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod spec;

mod complete;
mod ctrl;
mod io;
pub mod ns;
mod passthrough;
mod reset;
mod stats;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
#[cfg(any(test, feature = "fake"))]
mod test_support;
#[cfg(test)]
mod tests;

pub use crate::ctrl::{
    ADMIN_ENTRIES, Config, CtrlInfo, IO_QUEUE_ENTRIES_MAX, IO_QUEUE_ENTRIES_MIN, InitError,
    LIST_PAGES, MAX_IO_QUEUES, MAX_SEGMENTS, Mode, Nvme, QUEUE_DEPTH,
};
pub use crate::io::NsQueue;
pub use crate::ns::{MAX_NAMESPACES, MAX_NS_QUEUES, Namespace, Namespaces, NsQueueInfo, NsState};
pub use crate::passthrough::pt;
pub use crate::reset::device_error;
pub use crate::stats::DriverStats;

/// The interrupt line, when the kernel wants to keep it next to the driver.
pub type Line = hal::IrqLine;
