//! A working copy of an inode's extent list with room for the intermediate states of an edit.

use crate::format::{EXTENTS_PER_INODE, Extent, Inode};

const CAP: usize = 2 * EXTENTS_PER_INODE + 4;

/// Where a file block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// `len` blocks starting at device block `phys`.
    Mapped {
        /// Device block.
        phys: u64,
        /// Contiguous blocks from here to the end of the extent.
        len: u64,
    },
    /// A hole of `len` blocks (up to the next extent, or `u64::MAX` after the last).
    Hole {
        /// Blocks until the next extent.
        len: u64,
    },
}

/// Sorted, non-overlapping extents.
#[derive(Clone, Copy, Debug)]
pub struct ExtList {
    e: [Extent; CAP],
    n: usize,
}

/// The list would exceed its working capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl ExtList {
    /// The extents of `inode`.
    pub fn of(inode: &Inode) -> Self {
        let mut l = ExtList {
            e: [Extent::default(); CAP],
            n: 0,
        };
        for x in inode.extents() {
            l.e[l.n] = *x;
            l.n += 1;
        }
        l
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The extents.
    pub fn as_slice(&self) -> &[Extent] {
        &self.e[..self.n]
    }

    /// Stores into `inode` if it fits the on-disk limit.
    pub fn store(&self, inode: &mut Inode) -> Result<(), Full> {
        if self.n > EXTENTS_PER_INODE {
            return Err(Full);
        }
        inode.extents = [Extent::default(); EXTENTS_PER_INODE];
        inode.extents[..self.n].copy_from_slice(&self.e[..self.n]);
        inode.nextents = self.n as u16;
        Ok(())
    }

    /// Where file block `fb` lives.
    pub fn lookup(&self, fb: u64) -> Mapping {
        for x in self.as_slice() {
            if fb < x.fblock as u64 {
                return Mapping::Hole {
                    len: x.fblock as u64 - fb,
                };
            }
            if fb < x.fend() {
                let d = fb - x.fblock as u64;
                return Mapping::Mapped {
                    phys: x.phys + d,
                    len: x.len as u64 - d,
                };
            }
        }
        Mapping::Hole { len: u64::MAX }
    }

    fn push(out: &mut [Extent; CAP], n: &mut usize, x: Extent) -> Result<(), Full> {
        if *n > 0 {
            let p = &mut out[*n - 1];
            if p.fend() == x.fblock as u64 && p.phys + p.len as u64 == x.phys {
                p.len += x.len;
                return Ok(());
            }
        }
        let slot = out.get_mut(*n).ok_or(Full)?;
        *slot = x;
        *n += 1;
        Ok(())
    }

    /// Unmaps file blocks `[start, end)`, calling `free(phys, len)` for each device range.
    pub fn punch(
        &mut self,
        start: u64,
        end: u64,
        free: &mut dyn FnMut(u64, u64),
    ) -> Result<(), Full> {
        let mut out = [Extent::default(); CAP];
        let mut n = 0;
        for &x in self.as_slice() {
            let (fs, fe) = (x.fblock as u64, x.fend());
            if fe <= start || fs >= end {
                Self::push(&mut out, &mut n, x)?;
                continue;
            }
            if fs < start {
                Self::push(
                    &mut out,
                    &mut n,
                    Extent {
                        fblock: x.fblock,
                        len: (start - fs) as u32,
                        phys: x.phys,
                    },
                )?;
            }
            let ms = fs.max(start);
            let me = fe.min(end);
            free(x.phys + (ms - fs), me - ms);
            if fe > end {
                Self::push(
                    &mut out,
                    &mut n,
                    Extent {
                        fblock: end as u32,
                        len: (fe - end) as u32,
                        phys: x.phys + (end - fs),
                    },
                )?;
            }
        }
        self.e = out;
        self.n = n;
        Ok(())
    }

    /// Maps `x`, whose file range must be unmapped; merges with neighbours.
    pub fn insert(&mut self, x: Extent) -> Result<(), Full> {
        let mut out = [Extent::default(); CAP];
        let mut n = 0;
        let mut placed = false;
        for &y in self.as_slice() {
            if !placed && x.fblock < y.fblock {
                Self::push(&mut out, &mut n, x)?;
                placed = true;
            }
            Self::push(&mut out, &mut n, y)?;
        }
        if !placed {
            Self::push(&mut out, &mut n, x)?;
        }
        self.e = out;
        self.n = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punch_and_insert() {
        let mut n = Inode::FREE;
        n.nextents = 1;
        n.extents[0] = Extent {
            fblock: 0,
            len: 10,
            phys: 100,
        };
        let mut l = ExtList::of(&n);
        let mut freed = [0u64; 2];
        l.punch(3, 5, &mut |p, k| freed = [p, k]).unwrap();
        assert_eq!(freed, [103, 2]);
        assert_eq!(l.len(), 2);
        assert_eq!(l.lookup(3), Mapping::Hole { len: 2 });
        l.insert(Extent {
            fblock: 3,
            len: 2,
            phys: 103,
        })
        .unwrap();
        assert_eq!(
            l.as_slice(),
            &[Extent {
                fblock: 0,
                len: 10,
                phys: 100
            }]
        );
        assert_eq!(l.lookup(12), Mapping::Hole { len: u64::MAX });
        assert_eq!(l.lookup(4), Mapping::Mapped { phys: 104, len: 6 });
    }
}
