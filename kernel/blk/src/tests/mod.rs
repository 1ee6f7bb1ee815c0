//! Host tests that span modules.
mod mempool;
