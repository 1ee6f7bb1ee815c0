//! The block layer: bios, BioSets with front_pad, static slabs and lock-free mempools, queue
//! limits, split and chain, plugging and merging, tags and requests, `map_sg`, completion,
//! timeouts, stacking (partitions, linear, striped) and a RAM disk.
//!
//! The driver side: [`driver`] is the contract (what a driver implements, [`HwQueue`], and
//! calls, [`TagComplete`], in which context) plus the plumbing drivers share
//! ([`driver_stats!`], [`with_sg`], [`CompletionBatch`], [`TagMaskBatch`], [`CompletionSink`],
//! [`block_range`]); [`request`] is the [`Request`] a driver reads; [`queue`] is the [`Queue`]
//! that owns requests (dispatch, requeue, completion, timeouts, passthrough).
//!
//! `no_std`, no `alloc`. blk knows no hardware: it never turns an address into a pointer; the
//! CPU reaches segment memory only through `hal::mem` (RAM disk, bounce buffers), with the
//! segment contract of [`BioVec::new`] as the reason it may. The crate denies `unsafe` except in
//! `slab` (lock-free slab, mempools, slot handles), `mem` (DMA regions, the RAM disk's store),
//! the segment constructor and the calls into `hal::mem` in `bounce` and `ramdisk`. See
//! `docs/blk.md` for the design and `docs/drivers.md` for how to add a driver.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod loom;

pub mod freelist;
pub mod handoff;
pub mod handover;
pub mod magazine;
pub mod reserve;
pub mod slot_state;
pub mod tag;

#[cfg(not(loom))]
pub mod bio;
#[cfg(not(loom))]
pub mod bioset;
#[cfg(not(loom))]
pub mod bounce;
#[cfg(not(loom))]
pub mod device;
#[cfg(not(loom))]
pub mod dm;
#[cfg(not(loom))]
pub mod driver;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod limits;
#[cfg(not(loom))]
pub mod map_sg;
#[cfg(not(loom))]
#[allow(unsafe_code)]
pub mod mem;
#[cfg(not(loom))]
pub mod partition;
#[cfg(not(loom))]
pub mod queue;
#[cfg(not(loom))]
pub mod ramdisk;
#[cfg(not(loom))]
pub mod request;
#[cfg(not(loom))]
#[allow(unsafe_code)]
pub mod slab;
#[cfg(not(loom))]
pub mod split;
#[cfg(not(loom))]
pub mod stack;
#[cfg(not(loom))]
pub mod stats;
#[cfg(not(loom))]
pub mod wait;

#[cfg(not(loom))]
pub use crate::{
    bio::{
        Bio, BioFlags, BioIter, BioList, BioVec, EndIo, Op, SECTOR_SIZE, bio_endio, bio_io_error,
    },
    bioset::{BioSet, BioSlab, BvecPools, BvecSlabs},
    bounce::{BouncePad, BouncePage, Bouncer},
    device::{BlockDevice, CpuCtx, Plug, submit_bio},
    driver::{
        BlockRange, Completion, CompletionBatch, CompletionSink, Deliver, Delivered, HwQueue,
        PtCmd, PtResult, QueueRqError, TagComplete, TagMaskBatch, TimeoutAction, block_range,
        with_sg,
    },
    error::{BlkError, BlkStatus},
    limits::QueueLimits,
    map_sg::{SgEntry, map_sg},
    queue::{Queue, QueueConfig},
    request::{MAX_ABORTS, Request},
    slab::{Mempool, MempoolStats, PoolBox, Slab, Wait},
    split::bio_split,
    stats::{BlkStats, StatsSnapshot},
    wait::{BioFuture, submit_bio_async, submit_bio_wait},
};
pub use tag::TagSet;

#[cfg(all(test, not(loom)))]
#[allow(unsafe_code)] // builds test segments over test buffers (`tests::harness::seg`)
mod tests;
