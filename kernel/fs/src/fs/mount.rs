//! Mount, mkfs, fsck and unmount: finding the newest superblock whose tree validates and
//! loading it into memory.

use super::report::{BadSlot, Fallback, FsckStats, FsckStatus, MountOptions, MountReport};
use super::{BS, Fs, Mode, block_mut, io};
use crate::bitmap::Bitmap;
use crate::check::{self, Problem};
use crate::error::{FsError, IoOp, Result};
use crate::extent::{ExtList, Mapping};
use crate::format::{
    BLOCK_SIZE, INODES_PER_BLOCK, Inode, Kind, MAX_INODE_BLOCKS, ROOT_INO, SUPER_BLOCKS,
    Superblock, claimed_generation, decode_inode_block, encode_inode_block,
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

/// The outcome of [`Fs::load`].
struct Loaded {
    stats: FsckStats,
    /// The first problem of the tree that was loaded (it then does not mount).
    first: Option<Problem>,
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
                .map_err(io(IoOp::Format))?;
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
                .map_err(io(IoOp::Format))?;
        }
        Ok(())
    }

    /// Mounts read-write, or read-only when `read_only` (then nothing is ever written):
    /// [`Fs::mount_with`] without accepting a rollback.
    pub fn mount(&mut self, read_only: bool) -> Result<MountReport> {
        self.mount_with(MountOptions {
            read_only,
            accept_rollback: false,
        })
    }

    /// Mounts the newest generation whose tree validates and says which one it used and why
    /// (see [`MountReport`]). When the newest superblock is valid but its tree is not and an
    /// older generation is used, the mount is read-only unless `opts.accept_rollback`. A
    /// read-write mount of a device that refuses writes fails with
    /// [`FsError::DeviceReadOnly`].
    pub fn mount_with(&mut self, opts: MountOptions) -> Result<MountReport> {
        if self.mode != Mode::Unmounted {
            return Err(FsError::Busy);
        }
        if !opts.read_only && self.dev.read_only() {
            return Err(FsError::DeviceReadOnly);
        }
        self.quiesce()?;
        let loaded = self.load(&mut |_| {})?;
        if let Some(p) = loaded.first {
            return Err(FsError::Corrupt {
                block: p.block,
                what: p.what,
            });
        }
        let st = loaded.stats;
        let refuse = matches!(st.fell_back_from, Some(Fallback::CorruptTree { .. }))
            && !opts.accept_rollback;
        self.mode = if opts.read_only || refuse {
            Mode::ReadOnly
        } else {
            Mode::ReadWrite
        };
        self.failed = false;
        Ok(MountReport {
            generation: st.generation,
            mode: self.mode,
            fell_back_from: st.fell_back_from,
            damaged_older: st.damaged_older,
        })
    }

    /// Checks every invariant of the filesystem on the device and reports each problem: every
    /// metadata block that fails validation, the older superblock slot included, and the
    /// reasons of a fallback. The instance must be unmounted and stays so. `Ok` carries the
    /// counts and the verdict ([`FsckStats::status`]); `Err` means the check could not run (I/O
    /// error, instance too small) or found no superblock.
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
        let loaded = self.load(&mut rep)?;
        let mut stats = loaded.stats;
        let mut bad_tree = loaded.first.is_some();
        // Tail bytes of each file's last block must be zero.
        for ino in 0..self.sb.inode_count() as u32 {
            let n = self.inode(ino);
            if n.kind != Kind::File || n.size.is_multiple_of(BS) {
                continue;
            }
            let ext = ExtList::of(&n);
            if let Mapping::Mapped { phys, .. } = ext.lookup(n.size / BS) {
                let b = block_mut(self.buf, 0)?;
                self.dev.read(phys, b).map_err(io(IoOp::ReadData))?;
                if b[(n.size % BS) as usize..].iter().any(|&x| x != 0) {
                    bad_tree = true;
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
        stats.status = if bad_tree || stats.damaged_older.is_some() {
            FsckStatus::Corrupt
        } else {
            match stats.fell_back_from {
                None => FsckStatus::Clean,
                Some(Fallback::TornSuperblock(_)) => FsckStatus::RolledBackTorn,
                Some(Fallback::CorruptTree { .. }) => FsckStatus::RolledBackCorrupt,
            }
        };
        Ok(stats)
    }

    /// Reads both superblock slots and loads the newest one whose tree validates, falling back
    /// to the other slot when the newest is unreadable or its tree is not valid. `report` sees
    /// every problem: a slot that fails validation, the newest tree's problems (also when it
    /// falls back). When no tree loads cleanly the newest valid superblock's tree stays
    /// loaded and [`Loaded::first`] is its first problem.
    fn load(&mut self, report: &mut dyn FnMut(Problem)) -> Result<Loaded> {
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
        let mut bad: [Option<BadSlot>; 2] = [None, None];
        for slot in 0..SUPER_BLOCKS {
            let b = block_mut(self.buf, 0)?;
            self.dev.read(slot, b).map_err(io(IoOp::ReadSuperblock))?;
            match Superblock::decode(b, slot) {
                Ok(sb) => cands[slot as usize] = Some(sb),
                Err(what) => {
                    bad[slot as usize] = Some(BadSlot {
                        slot,
                        claimed: claimed_generation(b, slot),
                        what,
                    })
                }
            }
        }
        for s in bad.iter().flatten() {
            report(Problem {
                block: s.slot,
                ino: None,
                what: s.what,
            });
        }
        let (newest, older) = match (cands[0], cands[1]) {
            (Some(a), Some(b)) if b.generation > a.generation => (b, Some(a)),
            (Some(a), Some(b)) => (a, Some(b)),
            (Some(a), None) => (a, None),
            (None, Some(b)) => (b, None),
            (None, None) => {
                return Err(FsError::Corrupt {
                    block: 0,
                    what: "no valid superblock",
                });
            }
        };
        let mut stats = FsckStats::default();
        // The other slot, when it fails: newer (a torn commit record) when its header claims a
        // newer generation or is unreadable, older otherwise.
        if let Some(s) = bad[(1 - Superblock::slot_of(newest.generation)) as usize] {
            match s.claimed {
                Some(g) if g < newest.generation => stats.damaged_older = Some(s),
                _ => stats.fell_back_from = Some(Fallback::TornSuperblock(s)),
            }
        }
        let mut first: Option<Problem> = None;
        let tree = self.load_tree(&newest, &mut |p| {
            first.get_or_insert(p);
            report(p);
        })?;
        if first.is_none() {
            return Ok(self.loaded(&newest, tree, stats, None));
        }
        if let Some(old) = older {
            let mut clean = true;
            let tree = self.load_tree(&old, &mut |_| clean = false)?;
            if clean {
                let p = first.unwrap_or(Problem {
                    block: 0,
                    ino: None,
                    what: "",
                });
                stats.fell_back_from = Some(Fallback::CorruptTree {
                    generation: newest.generation,
                    block: p.block,
                    ino: p.ino,
                    what: p.what,
                });
                return Ok(self.loaded(&old, tree, stats, None));
            }
            // Neither tree is clean: the newest one stays loaded, with its problems.
            let tree = self.load_tree(&newest, &mut |_| {})?;
            return Ok(self.loaded(&newest, tree, stats, first));
        }
        Ok(self.loaded(&newest, tree, stats, first))
    }

    /// Makes `sb` (whose tree `load_tree` just loaded) the current generation.
    fn loaded(
        &mut self,
        sb: &Superblock,
        tree: FsckStats,
        stats: FsckStats,
        first: Option<Problem>,
    ) -> Loaded {
        self.sb = *sb;
        self.pinned.copy_from(&self.used);
        self.dirty = 0;
        self.cursor = SUPER_BLOCKS;
        Loaded {
            stats: FsckStats {
                generation: sb.generation,
                block_count: sb.block_count,
                files: tree.files,
                dirs: tree.dirs,
                used_blocks: tree.used_blocks,
                ..stats
            },
            first,
        }
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
            self.dev.read(at, b).map_err(io(IoOp::ReadInodeTable))?;
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
