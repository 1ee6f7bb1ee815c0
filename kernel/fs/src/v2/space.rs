//! What the tree needs from free-space management.
//!
//! The tree allocates a block for every node it copies or creates and frees the block of every
//! node it replaces or merges away. The contract that makes copy-on-write crash consistent is
//! here: a block freed in the open transaction must stay allocated until the commit that stops
//! referencing it is durable, because the durable tree may still reference it.

use crate::error::Result;

/// Block allocation for the tree.
pub trait Space {
    /// A block free in both the in-memory tree and the last durable commit.
    /// `FsError::NoSpace` when there is none.
    fn alloc(&mut self) -> Result<u64>;
    /// Gives `block` back once the next commit is durable (not before: the durable tree may
    /// reference it).
    fn free(&mut self, block: u64) -> Result<()>;
}
