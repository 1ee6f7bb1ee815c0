//! Whole-tree invariants (those that need more than one inode) and the problem record `fsck`
//! reports.

use crate::format::{INODES_PER_BLOCK, Inode, Kind, ROOT_INO, Superblock};

/// One problem found by a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The block the problem is in (or is about).
    pub block: u64,
    /// The inode, when the problem is about one.
    pub ino: Option<u32>,
    /// What is wrong.
    pub what: &'static str,
}

fn get(inodes: &[[Inode; INODES_PER_BLOCK]], ino: u32) -> Inode {
    let i = ino as usize;
    inodes
        .get(i / INODES_PER_BLOCK)
        .and_then(|b| b.get(i % INODES_PER_BLOCK))
        .copied()
        .unwrap_or(Inode::FREE)
}

/// Parent links name directories, every inode reaches the root, names are unique per directory.
pub fn tree(
    inodes: &[[Inode; INODES_PER_BLOCK]],
    sb: &Superblock,
    report: &mut dyn FnMut(u32, &'static str),
) {
    let n = sb.inode_count() as u32;
    for ino in 1..n {
        let x = get(inodes, ino);
        if x.kind == Kind::Free {
            continue;
        }
        if get(inodes, x.parent).kind != Kind::Dir {
            report(ino, "parent is not a directory");
            continue;
        }
        let mut cur = x.parent;
        let mut steps = 0;
        while cur != ROOT_INO && steps <= n {
            cur = get(inodes, cur).parent;
            steps += 1;
        }
        if cur != ROOT_INO {
            report(ino, "not reachable from the root (directory cycle)");
        }
        for other in (ino + 1)..n {
            let y = get(inodes, other);
            if y.kind != Kind::Free && y.parent == x.parent && y.name() == x.name() {
                report(other, "duplicate name in a directory");
            }
        }
    }
}
