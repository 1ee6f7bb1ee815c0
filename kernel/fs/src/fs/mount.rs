//! Mount, mkfs, fsck and unmount: finding the newest superblock whose tree validates and
//! loading it into memory.

use super::{BS, Fs, Mode, block_mut, io};
use crate::bitmap::Bitmap;
use crate::check::{self, Problem};
use crate::error::{FsError, Result};
use crate::extent::{ExtList, Mapping};
use crate::format::{
    BLOCK_SIZE, INODES_PER_BLOCK, Inode, Kind, MAX_INODE_BLOCKS, ROOT_INO, SUPER_BLOCKS,
    Superblock, decode_inode_block, encode_inode_block,
};
use crate::io::{BlockIo, Run, WriteFlags};

/// Parameters of [`Fs::mkfs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Filesystem size in blocks (`None`: the whole device).
    pub blocks: Option<u64>,
    /// Inode-table blocks (15 inodes each), 1 ..= 64.
    pub inode_blocks: u32,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            blocks: None,
            inode_blocks: 8,
        }
    }
}

/// Counts from [`Fs::fsck`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckStats {
    /// Problems reported.
    pub problems: u32,
    /// Generation checked.
    pub generation: u64,
    /// Files.
    pub files: u32,
    /// Directories (root included).
    pub dirs: u32,
    /// Blocks in use (superblocks, inode table, data).
    pub used_blocks: u64,
}

impl<D: BlockIo, const IB: usize, const BW: usize> Fs<'_, D, IB, BW> {
    /// Writes an empty filesystem (root directory only). The instance stays unmounted.
    pub fn mkfs(&mut self, opts: MkfsOptions) -> Result<()> {
        self.check_buf()?;
        if self.mode != Mode::Unmounted {
            return Err(FsError::Busy);
        }
        self.quiesce()?;
        let blocks = opts.blocks.unwrap_or(self.dev.block_count());
        if blocks > self.dev.block_count() {
            return Err(FsError::InvalidArgument);
        }
        let ib = opts.inode_blocks;
        if ib == 0 || ib as usize > MAX_INODE_BLOCKS || ib as usize > IB {
            return Err(FsError::Unsupported(
                "inode table larger than this instance holds",
            ));
        }
        if blocks < SUPER_BLOCKS + ib as u64 + 1 {
            return Err(FsError::NoSpace);
        }
        if blocks > Bitmap::<BW>::bits() {
            return Err(FsError::Unsupported(
                "filesystem larger than this instance's bitmap",
            ));
        }
        let mut table = [0u64; MAX_INODE_BLOCKS];
        let mut root = [Inode::FREE; INODES_PER_BLOCK];
        root[0].kind = Kind::Dir;
        let empty = [Inode::FREE; INODES_PER_BLOCK];
        // Inode-table blocks 2 .. 2 + ib, written in batches of the buffer's size.
        let cap = self.cap_blocks();
        let mut i = 0u64;
        while i < ib as u64 {
            let k = cap.min(ib as u64 - i);
            for j in 0..k {
                let at = SUPER_BLOCKS + i + j;
                table[(i + j) as usize] = at;
                let src = if i + j == 0 { &root } else { &empty };
                encode_inode_block(block_mut(self.buf, j as usize)?, src, (i + j) as u32, 1, at);
            }
            let data = &self.buf[..(k * BS) as usize];
            self.dev
                .write(
                    &[Run {
                        block: SUPER_BLOCKS + i,
                        data,
                    }],
                    WriteFlags::NONE,
                )
                .map_err(io)?;
            i += k;
        }
        // Generation 0 in slot 0 and 1 in slot 1, both naming the same table: no older
        // superblock from a previous filesystem on the device can win.
        for g in [0u64, 1] {
            let sb = Superblock {
                generation: g,
                block_count: blocks,
                inode_blocks: ib,
                table,
            };
            let b = block_mut(self.buf, 0)?;
            // The generation-0 slot must not name blocks newer than itself.
            sb.encode(b);
            let data = &self.buf[..BLOCK_SIZE];
            self.dev
                .write(
                    &[Run {
                        block: Superblock::slot_of(g),
                        data,
                    }],
                    WriteFlags::COMMIT,
                )
                .map_err(io)?;
        }
        Ok(())
    }

    /// Mounts read-write, or read-only when `read_only` (then nothing is ever written).
    pub fn mount(&mut self, read_only: bool) -> Result<()> {
        if self.mode != Mode::Unmounted {
            return Err(FsError::Busy);
        }
        self.quiesce()?;
        let mut first: Option<FsError> = None;
        let r = self.load(&mut |p: Problem| {
            if first.is_none() {
                first = Some(FsError::Corrupt {
                    block: p.block,
                    what: p.what,
                });
            }
        });
        match (r, first) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(e)) => Err(e),
            (Ok(_), None) => {
                self.mode = if read_only {
                    Mode::ReadOnly
                } else {
                    Mode::ReadWrite
                };
                self.failed = false;
                Ok(())
            }
        }
    }

    /// Checks every invariant of the filesystem on the device and reports each problem. The
    /// instance must be unmounted and stays so. `Ok` carries the counts (`problems == 0` means
    /// clean); `Err` means the check could not run (I/O error, instance too small).
    pub fn fsck(&mut self, report: &mut dyn FnMut(Problem)) -> Result<FsckStats> {
        if self.mode != Mode::Unmounted {
            return Err(FsError::Busy);
        }
        self.quiesce()?;
        let mut problems = 0u32;
        let mut rep = |p: Problem| {
            problems += 1;
            report(p);
        };
        let mut stats = self.load(&mut rep)?;
        // Tail bytes of each file's last block must be zero.
        for ino in 0..self.sb.inode_count() as u32 {
            let n = self.inode(ino);
            if n.kind != Kind::File || n.size.is_multiple_of(BS) {
                continue;
            }
            let ext = ExtList::of(&n);
            if let Mapping::Mapped { phys, .. } = ext.lookup(n.size / BS) {
                let b = block_mut(self.buf, 0)?;
                self.dev.read(phys, b).map_err(io)?;
                if b[(n.size % BS) as usize..].iter().any(|&x| x != 0) {
                    rep(Problem {
                        block: phys,
                        ino: Some(ino),
                        what: "bytes past end of file not zero",
                    });
                }
            }
        }
        self.mode = Mode::Unmounted;
        stats.problems = problems;
        Ok(stats)
    }

    /// Reads both superblock slots and loads the newest one whose tree validates.
    fn load(&mut self, report: &mut dyn FnMut(Problem)) -> Result<FsckStats> {
        self.check_buf()?;
        if self.dev.block_count() < SUPER_BLOCKS + 2 {
            report(Problem {
                block: 0,
                ino: None,
                what: "device too small for a filesystem",
            });
            return Err(FsError::Corrupt {
                block: 0,
                what: "device too small for a filesystem",
            });
        }
        let mut cands: [Option<Superblock>; 2] = [None, None];
        let mut why: [&'static str; 2] = [""; 2];
        for slot in 0..SUPER_BLOCKS {
            let b = block_mut(self.buf, 0)?;
            self.dev.read(slot, b).map_err(io)?;
            match Superblock::decode(b, slot) {
                Ok(sb) => cands[slot as usize] = Some(sb),
                Err(e) => why[slot as usize] = e,
            }
        }
        let order = match (cands[0], cands[1]) {
            (Some(a), Some(b)) if b.generation > a.generation => [1usize, 0],
            (Some(_), _) => [0, 1],
            (None, _) => [1, 0],
        };
        let mut first_err: Option<(u64, &'static str)> = None;
        for &slot in &order {
            let Some(sb) = cands[slot] else { continue };
            // A dry run first: only a tree with no problem is used; the report sees the problems
            // of the newest superblock when no slot is clean.
            let mut bad: Option<(u64, &'static str)> = None;
            let stats = self.load_tree(&sb, &mut |p| {
                if bad.is_none() {
                    bad = Some((p.block, p.what));
                }
            })?;
            match bad {
                None => {
                    self.sb = sb;
                    self.pinned.copy_from(&self.used);
                    self.dirty = 0;
                    self.cursor = SUPER_BLOCKS;
                    return Ok(FsckStats {
                        generation: sb.generation,
                        ..stats
                    });
                }
                Some(b) => {
                    if first_err.is_none() {
                        first_err = Some(b);
                    }
                }
            }
        }
        // Nothing loads cleanly: report in full against the newest valid superblock.
        if let Some(sb) = order.iter().find_map(|&s| cands[s]) {
            let stats = self.load_tree(&sb, report)?;
            self.sb = sb;
            self.pinned.copy_from(&self.used);
            self.dirty = 0;
            let _ = first_err;
            return Ok(FsckStats {
                generation: sb.generation,
                ..stats
            });
        }
        report(Problem {
            block: 0,
            ino: None,
            what: why[0],
        });
        report(Problem {
            block: 1,
            ino: None,
            what: why[1],
        });
        Err(FsError::Corrupt {
            block: 0,
            what: "no valid superblock",
        })
    }

    /// Loads the tree of `sb` into memory, reporting every problem.
    fn load_tree(&mut self, sb: &Superblock, report: &mut dyn FnMut(Problem)) -> Result<FsckStats> {
        let slot = Superblock::slot_of(sb.generation);
        let mut st = FsckStats::default();
        for blk in self.inodes.iter_mut() {
            *blk = [Inode::FREE; INODES_PER_BLOCK];
        }
        self.used.clear_all();
        self.sb = *sb;
        if sb.block_count > self.dev.block_count() {
            report(Problem {
                block: slot,
                ino: None,
                what: "filesystem larger than its device",
            });
            return Ok(st);
        }
        if sb.block_count > Bitmap::<BW>::bits() {
            return Err(FsError::Unsupported(
                "filesystem larger than this instance's bitmap",
            ));
        }
        if sb.inode_blocks as usize > IB {
            return Err(FsError::Unsupported(
                "inode table larger than this instance holds",
            ));
        }
        self.used.set(0);
        self.used.set(1);
        for i in 0..sb.inode_blocks as usize {
            let at = sb.table[i];
            if self.used.set(at) {
                report(Problem {
                    block: at,
                    ino: None,
                    what: "inode table block referenced twice",
                });
                continue;
            }
            let b = block_mut(self.buf, 0)?;
            self.dev.read(at, b).map_err(io)?;
            let Some(dst) = self.inodes.get_mut(i) else {
                continue;
            };
            decode_inode_block(b, i as u32, at, sb, dst, &mut |ino, what| {
                report(Problem {
                    block: at,
                    ino,
                    what,
                })
            });
        }
        for ino in 0..sb.inode_count() as u32 {
            let n = self.inode(ino);
            let at = sb.table[ino as usize / INODES_PER_BLOCK];
            match n.kind {
                Kind::Free => continue,
                Kind::File => st.files += 1,
                Kind::Dir => st.dirs += 1,
            }
            for e in n.extents() {
                for b in e.phys..e.phys + e.len as u64 {
                    if self.used.set(b) {
                        report(Problem {
                            block: at,
                            ino: Some(ino),
                            what: "data block referenced twice",
                        });
                        break;
                    }
                }
            }
        }
        if self.inode(ROOT_INO).kind != Kind::Dir {
            report(Problem {
                block: sb.table[0],
                ino: Some(ROOT_INO),
                what: "root directory missing",
            });
        }
        check::tree(&self.inodes, sb, &mut |ino, what| {
            let at = sb.table[ino as usize / INODES_PER_BLOCK];
            report(Problem {
                block: at,
                ino: Some(ino),
                what,
            });
        });
        st.used_blocks = self.used.count(sb.block_count);
        Ok(st)
    }

    /// Commits everything and unmounts. After a failure ([`FsError::Failed`]) it unmounts
    /// but returns that error: the changes since the last durable commit were not written.
    pub fn unmount(&mut self) -> Result<()> {
        let was_failed = self.failed;
        let drained = self.quiesce();
        if self.mode == Mode::ReadWrite && !self.failed {
            self.sync()?;
        }
        let failed = self.mode == Mode::ReadWrite && was_failed;
        self.mode = Mode::Unmounted;
        drained?;
        if failed {
            return Err(FsError::Failed {
                durable: self.sb.generation,
            });
        }
        Ok(())
    }
}
