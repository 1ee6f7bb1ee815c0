//! Host tests that span modules.
mod harness;
mod io;
mod mempool;
mod props;
mod stacking;
