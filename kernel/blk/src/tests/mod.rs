//! Host tests that span modules.
mod driver;
pub(crate) mod harness;
mod io;
mod mempool;
mod mq;
mod partitions;
mod props;
mod rescue;
mod stacking;
