//! The fsync log (`docs/tinyfs-v2.md`, "What `fsync` and `sync` guarantee"; format in
//! `docs/tinyfs-format.md`, "Fsync log"): `fsync(ino)` makes one file durable with one log
//! block written `PREFLUSH | FUA` after its data, instead of a commit. A log block records the
//! file's current mapping of every file block changed since the file's last fsync (or the
//! last commit) and its inode; each record is absolute state, so replaying a record twice, or
//! an older one before a newer one, gives the same tree.
//!
//! The chain: every commit names, in the superblock's `log_root`, a block it keeps allocated.
//! The first fsync after it writes its log block there (generation = the durable
//! generation, sequence 1) and names in it the next block, allocated in the open
//! transaction; each later fsync writes there and allocates the next. A log block is valid
//! only with the durable generation, the filesystem's identity (the superblock's `fsid`,
//! chosen at mkfs), its sequence number, the chain's root and its CRC, so a torn write, a
//! stale block (of an older chain, or of an earlier filesystem on the device) and the end of
//! the chain read as the end. Blocks the log names
//! (its own chain and the data it maps) are held ([`super::space::FreeSpace::hold`]): never handed out
//! again before the next commit, even if freed. The next commit folds everything into the
//! tree (it is already there in memory), frees the chain and names a new root.
//!
//! Mount (read-write) replays the chain into the open transaction: it first claims every
//! block the log names that the durable bitmaps have free (so nothing the replay allocates
//! can overwrite them), then applies the records in order, then commits. A crash during the
//! replay leaves the durable superblock and its chain as they were: the next mount replays
//! the same records again.

use super::file::{CSUM_ITEM, CSUMS};
use super::key::{Key, kind};
use super::node::{MAGIC, VERSION, rd64, wr64};
use super::space::Space;
use super::superblock::Superblock;
use super::volume::{DIRENT_HDR, INODE_SIZE, Inode, Kind, NAME_MAX, Volume};
use crate::crc::crc32c;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{BlockIo, Run, WriteFlags};

/// Header kind of a log block.
pub const KIND_LOG: u16 = 6;
/// Log blocks one chain holds at most; an fsync past that commits instead.
pub const LOG_MAX: usize = 256;
/// Files with changes not yet logged that are tracked at once (each a range of file blocks);
/// past that, `fsync` commits.
pub const DIRTY_MAX: usize = 32;
/// Checksums one range record carries at most (longer ranges are split).
pub const RECORD_CSUMS: u64 = 64;
/// Files created since the last commit whose creation the chain holds, remembered so that
/// their later fsyncs do not log it again (past that, a creation is logged again: harmless).
const CREATED_MAX: usize = 8;

const O_SEQ: usize = 24;
const O_COUNT: usize = 28;
const O_END: usize = 30;
const O_HEAD: usize = 32;
const O_NEXT: usize = 40;
const O_FSID: usize = 48;
/// First record byte.
pub const LOG_HDR: usize = 56;
/// Record tags.
const REC_INODE: u8 = 1;
const REC_RANGE: u8 = 2;
const REC_CREATE: u8 = 3;
const INODE_REC: usize = 1 + 8 + INODE_SIZE;
const RANGE_REC: usize = 1 + 8 + 8 + 4 + 8;
/// A creation record without its name: tag, inode, directory, entry offset, the file's inode
/// item, the directory's inode item, the name's length.
const CREATE_REC: usize = 1 + 8 + 8 + 8 + 2 * INODE_SIZE + 1;

/// File blocks `[lo, hi)` of `ino` changed since its last fsync (`lo == hi`: only the inode).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Dirty {
    ino: u64,
    lo: u64,
    hi: u64,
}

/// The state of the fsync log in the open transaction.
#[derive(Debug)]
pub(super) struct LogState {
    /// The durable superblock's `log_root` (0: none, `fsync` commits).
    pub head: u64,
    /// The block the next log block goes to, when it is not `head` (allocated and held).
    pub tail: u64,
    /// Blocks of the chain past `head` written in this transaction (held).
    pub written: [u64; LOG_MAX],
    pub nwritten: usize,
    /// Sequence number of the next log block (1: nothing logged since the commit).
    pub seq: u32,
    /// Inodes from this number on were created after the last commit: their fsync logs
    /// their creation too.
    pub first_ino: u64,
    /// A namespace change other than the creation of a file (a directory created, a name
    /// removed or renamed) since the last commit: an fsync of a file created since commits.
    pub names: bool,
    dirty: [Dirty; DIRTY_MAX],
    ndirty: usize,
    /// A change was not tracked (the table was full): fsync commits.
    overflow: bool,
    /// Files whose creation a log block of the chain holds (a ring of the latest).
    created: [u64; CREATED_MAX],
    ncreated: usize,
    /// Fsyncs done with a log block, and fsyncs that committed instead.
    pub logged: u64,
    pub committed: u64,
}

impl LogState {
    pub(super) fn new(head: u64, first_ino: u64) -> Self {
        LogState {
            head,
            tail: 0,
            written: [0; LOG_MAX],
            nwritten: 0,
            seq: 1,
            first_ino,
            names: false,
            dirty: [Dirty::default(); DIRTY_MAX],
            ndirty: 0,
            overflow: false,
            created: [0; CREATED_MAX],
            ncreated: 0,
            logged: 0,
            committed: 0,
        }
    }

    /// After a commit: an empty chain at `head`.
    pub(super) fn reset(&mut self, head: u64, first_ino: u64) {
        let (logged, committed) = (self.logged, self.committed);
        *self = LogState::new(head, first_ino);
        self.logged = logged;
        self.committed = committed;
    }

    /// Whether the chain holds log blocks (the commit must free it and move the root).
    pub(super) fn used(&self) -> bool {
        self.seq > 1
    }

    /// Notes that file blocks `[lo, hi)` of `ino` (or only its inode, `lo == hi`) changed.
    pub(super) fn touch(&mut self, ino: u64, lo: u64, hi: u64) {
        let (mut lo, mut hi) = (lo, hi);
        let mut i = 0;
        while i < self.ndirty {
            let d = self.dirty[i];
            if d.ino == ino && (lo == hi || d.lo == d.hi || (lo <= d.hi && d.lo <= hi)) {
                if lo == hi {
                    return;
                }
                // Absorb the entry (then look for others the union now touches).
                if d.lo != d.hi {
                    lo = lo.min(d.lo);
                    hi = hi.max(d.hi);
                }
                self.ndirty -= 1;
                self.dirty[i] = self.dirty[self.ndirty];
                i = 0;
                continue;
            }
            i += 1;
        }
        if self.ndirty == DIRTY_MAX {
            self.overflow = true;
            return;
        }
        self.dirty[self.ndirty] = Dirty { ino, lo, hi };
        self.ndirty += 1;
    }

    /// Notes a file just created (its inode number is new, so the table has no entry of it).
    pub(super) fn track_new(&mut self, ino: u64) {
        if self.ndirty == DIRTY_MAX {
            self.overflow = true;
            return;
        }
        self.dirty[self.ndirty] = Dirty { ino, lo: 0, hi: 0 };
        self.ndirty += 1;
    }

    /// Forgets the changes of `ino` (logged, or the file is gone).
    pub(super) fn forget(&mut self, ino: u64) {
        let mut i = 0;
        while i < self.ndirty {
            if self.dirty[i].ino == ino {
                self.ndirty -= 1;
                self.dirty[i] = self.dirty[self.ndirty];
            } else {
                i += 1;
            }
        }
    }
}

fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Checks a log block read from `at` as block `seq` of the chain of superblock `sb`: header,
/// CRC over its used bytes, generation, filesystem identity, chain root and sequence number.
/// `None` if it is not the expected block (the end of the chain).
pub fn validate(b: &[u8], at: u64, sb: &Superblock, seq: u32) -> Option<LogBlock> {
    if b.len() < BLOCK_SIZE
        || rd32(b, 0) != MAGIC
        || rd16(b, 4) != KIND_LOG
        || rd16(b, 6) != VERSION
        || rd64(b, 16) != at
        || rd64(b, 8) != sb.generation
        || rd32(b, O_SEQ) != seq
        || rd64(b, O_HEAD) != sb.log_root
        || rd64(b, O_FSID) != sb.fsid
    {
        return None;
    }
    let end = rd16(b, O_END) as usize;
    if !(LOG_HDR..=BLOCK_SIZE - 4).contains(&end) || crc32c(&b[..end]) != rd32(b, end) {
        return None;
    }
    Some(LogBlock {
        count: rd16(b, O_COUNT) as usize,
        end,
        next: rd64(b, O_NEXT),
    })
}

/// A valid log block's fields.
#[derive(Clone, Copy, Debug)]
pub struct LogBlock {
    /// Records in it.
    pub count: usize,
    /// Where its records end (its CRC is there).
    pub end: usize,
    /// The block the next log block of the chain goes to.
    pub next: u64,
}

/// One record of a log block.
#[derive(Clone, Copy, Debug)]
// A record lives on the stack for one step of the replay or the check; no heap to box into.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    /// The inode item of `ino`.
    Inode {
        /// The inode.
        ino: u64,
        /// Its item's value.
        value: [u8; INODE_SIZE],
    },
    /// File blocks `[first, first + count)` of `ino` are device blocks `[phys, ..)`, or a hole
    /// (`phys == 0`); with data checksums `crcs[..count]` are their checksums.
    Range {
        /// The file.
        ino: u64,
        /// First file block.
        first: u64,
        /// Blocks.
        count: u64,
        /// First device block, 0 for a hole.
        phys: u64,
        /// Checksums (only with data checksums and `phys != 0`).
        crcs: [u32; RECORD_CSUMS as usize],
    },
    /// File `ino` was created as `name` in directory `dir` (entry key offset `offset`):
    /// its inode item, its entry, its back reference and the directory's inode item.
    Create {
        /// The new file.
        ino: u64,
        /// Its directory (in the durable tree).
        dir: u64,
        /// The entry's key offset in `dir` (`crc32c(name) << 16 | n`).
        offset: u64,
        /// The file's inode item.
        inode: [u8; INODE_SIZE],
        /// The directory's inode item.
        dir_inode: [u8; INODE_SIZE],
        /// The name's bytes (`name[..len]`).
        name: [u8; NAME_MAX],
        /// The name's length.
        len: usize,
    },
}

/// Decodes the record at byte `o` of a log block whose records end at `end`; returns it and
/// the offset of the next one. `csums`: the volume has data checksums.
pub fn record(
    b: &[u8],
    o: usize,
    end: usize,
    csums: bool,
) -> core::result::Result<(Record, usize), &'static str> {
    match b.get(o) {
        Some(&REC_INODE) if o + INODE_REC <= end => {
            let mut value = [0u8; INODE_SIZE];
            value.copy_from_slice(&b[o + 9..o + INODE_REC]);
            Ok((
                Record::Inode {
                    ino: rd64(b, o + 1),
                    value,
                },
                o + INODE_REC,
            ))
        }
        Some(&REC_RANGE) if o + RANGE_REC <= end => {
            let ino = rd64(b, o + 1);
            let first = rd64(b, o + 9);
            let count = rd32(b, o + 17) as u64;
            let phys = rd64(b, o + 21);
            if count == 0
                || first
                    .checked_add(count)
                    .is_none_or(|e| e > super::file::MAX_FILE_BLOCKS)
            {
                return Err("log range out of bounds");
            }
            let mut crcs = [0u32; RECORD_CSUMS as usize];
            let mut next = o + RANGE_REC;
            if csums && phys != 0 {
                if count > RECORD_CSUMS || next + 4 * count as usize > end {
                    return Err("log range checksums out of bounds");
                }
                for (i, c) in crcs.iter_mut().take(count as usize).enumerate() {
                    *c = rd32(b, next + 4 * i);
                }
                next += 4 * count as usize;
            }
            Ok((
                Record::Range {
                    ino,
                    first,
                    count,
                    phys,
                    crcs,
                },
                next,
            ))
        }
        Some(&REC_CREATE) if o + CREATE_REC <= end => {
            let len = b[o + CREATE_REC - 1] as usize;
            if len == 0 || o + CREATE_REC + len > end {
                return Err("log creation record past the end");
            }
            let mut inode = [0u8; INODE_SIZE];
            inode.copy_from_slice(&b[o + 25..o + 25 + INODE_SIZE]);
            let mut dir_inode = [0u8; INODE_SIZE];
            dir_inode.copy_from_slice(&b[o + 25 + INODE_SIZE..o + 25 + 2 * INODE_SIZE]);
            let mut name = [0u8; NAME_MAX];
            name[..len].copy_from_slice(&b[o + CREATE_REC..o + CREATE_REC + len]);
            Ok((
                Record::Create {
                    ino: rd64(b, o + 1),
                    dir: rd64(b, o + 9),
                    offset: rd64(b, o + 17),
                    inode,
                    dir_inode,
                    name,
                    len,
                },
                o + CREATE_REC + len,
            ))
        }
        _ => Err("log record of unknown type or past the end"),
    }
}

fn corrupt(block: u64, what: &'static str) -> FsError {
    FsError::Corrupt { block, what }
}

impl<'b, D: BlockIo, const N: usize, const G: usize> Volume<'b, D, N, G> {
    /// Makes file `ino` durable: its data and inode as of now survive a crash. When the file
    /// existed at the last commit and its changes since its last fsync fit one log block,
    /// this writes that block (`PREFLUSH | FUA`, after the file's data, which is already
    /// written) and nothing else; otherwise (a new file, a directory, a full log, no log
    /// root yet) it commits everything ([`Volume::sync`]). A file with no change since its
    /// last fsync costs no I/O.
    pub fn fsync(&mut self, ino: u64) -> Result<()> {
        self.fsync_inner(ino, false)
    }

    /// [`Volume::fsync`] of a file only: `IsDir` for a directory (the path API's `fsync`).
    pub fn fsync_file(&mut self, ino: u64) -> Result<()> {
        self.fsync_inner(ino, true)
    }

    fn fsync_inner(&mut self, ino: u64, file_only: bool) -> Result<()> {
        let inode = self.stat(ino)?;
        if inode.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if file_only && inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if self.failed {
            return Err(FsError::Failed {
                durable: self.tree.generation(),
            });
        }
        self.tree.writable()?;
        // The file's data written behind must be complete before the log block's PREFLUSH.
        self.quiesce()?;
        if inode.kind == Kind::Dir
            || self.log.head == 0
            || self.log.overflow
            || self.log.nwritten + 1 >= LOG_MAX
            || (ino >= self.log.first_ino && self.log.names)
        {
            self.log.committed += 1;
            return self.sync();
        }
        if !self.log.dirty[..self.log.ndirty]
            .iter()
            .any(|d| d.ino == ino)
        {
            return Ok(());
        }
        // A file created since the last commit: its creation goes in the log block too, when
        // its directory is in the durable tree (and no namespace change but file creations
        // since the commit, checked above: so the durable tree plus the logged creations is a
        // consistent tree whatever prefix of the chain a crash keeps), unless an earlier
        // block of the chain holds it (replay applies the chain in order, to its first
        // invalid block, so this block is replayed only after that one).
        let created = if ino >= self.log.first_ino && !self.log.created.contains(&ino) {
            let (dir, offset) = self.entry_of(ino)?;
            if dir >= self.log.first_ino {
                self.log.committed += 1;
                return self.sync();
            }
            Some((dir, offset))
        } else {
            None
        };
        if self.write_log(ino, &inode, created)? {
            if created.is_some() {
                // Later log blocks of the chain are replayed only after this one.
                self.log.created[self.log.ncreated % CREATED_MAX] = ino;
                self.log.ncreated += 1;
            }
            self.log.forget(ino);
            self.log.logged += 1;
            Ok(())
        } else {
            self.log.committed += 1;
            self.sync()
        }
    }

    /// Writes the log block of `ino`'s changes; `false` (nothing written) when they do not
    /// fit one block or the holds run out.
    fn write_log(&mut self, ino: u64, inode: &Inode, created: Option<(u64, u64)>) -> Result<bool> {
        let csums = self.data_checksums();
        let mut o = LOG_HDR;
        let mut count = 0u16;
        if let Some((dir, offset)) = created {
            o = self.log_create(ino, inode, dir, offset)?;
            count += 1;
        }
        let mut i = 0;
        while i < self.log.ndirty {
            let d = self.log.dirty[i];
            i += 1;
            if d.ino != ino {
                continue;
            }
            let mut at = d.lo;
            while at < d.hi {
                let (n, phys) = match self.extent_from(ino, at)? {
                    Some((s, e, p)) if s <= at => ((e - at).min(d.hi - at), p + (at - s)),
                    Some((s, _, _)) => ((s - at).min(d.hi - at), 0),
                    None => (d.hi - at, 0),
                };
                let n = if csums && phys != 0 {
                    n.min(RECORD_CSUMS)
                } else {
                    n.min(u32::MAX as u64)
                };
                let len = RANGE_REC
                    + if csums && phys != 0 {
                        4 * n as usize
                    } else {
                        0
                    };
                if o + len + INODE_REC + 4 > BLOCK_SIZE || (phys != 0 && !self.space.hold(phys, n))
                {
                    return Ok(false);
                }
                if csums && phys != 0 {
                    self.log_csums(ino, at, n, o + RANGE_REC)?;
                }
                let b = &mut self.data[..BLOCK_SIZE];
                b[o] = REC_RANGE;
                wr64(b, o + 1, ino);
                wr64(b, o + 9, at);
                b[o + 17..o + 21].copy_from_slice(&(n as u32).to_le_bytes());
                wr64(b, o + 21, phys);
                o += len;
                count += 1;
                at += n;
            }
        }
        let Ok(next) = self.space.alloc(&mut self.dev) else {
            return Ok(false);
        };
        if !self.space.hold(next, 1) {
            self.space.free(&mut self.dev, next)?;
            return Ok(false);
        }
        let generation = self.tree.generation();
        let fsid = self.tree.superblock().fsid;
        let head = self.log.head;
        let target = if self.log.tail != 0 {
            self.log.tail
        } else {
            head
        };
        let seq = self.log.seq;
        let b = &mut self.data[..BLOCK_SIZE];
        b[o] = REC_INODE;
        wr64(b, o + 1, ino);
        b[o + 9..o + INODE_REC].copy_from_slice(&inode.encode());
        o += INODE_REC;
        count += 1;
        super::node::put_header(b, KIND_LOG, generation, target);
        b[O_SEQ..O_SEQ + 4].copy_from_slice(&seq.to_le_bytes());
        b[O_COUNT..O_COUNT + 2].copy_from_slice(&count.to_le_bytes());
        b[O_END..O_END + 2].copy_from_slice(&(o as u16).to_le_bytes());
        wr64(b, O_HEAD, head);
        wr64(b, O_NEXT, next);
        wr64(b, O_FSID, fsid);
        // Bytes past the CRC are not part of the block (whatever the buffer held: this
        // file's data, which its own blocks hold anyway); zeroing them cost more than the
        // rest of the fsync.
        let c = crc32c(&b[..o]);
        b[o..o + 4].copy_from_slice(&c.to_le_bytes());
        if self.log.tail != 0 {
            self.log.written[self.log.nwritten] = self.log.tail;
            self.log.nwritten += 1;
        }
        self.log.tail = next;
        self.log.seq += 1;
        let run = Run {
            block: target,
            data: &self.data[..BLOCK_SIZE],
        };
        if let Err(e) = self.dev.write(&[run], WriteFlags::COMMIT) {
            self.failed = true;
            return Err(FsError::io(IoOp::WriteSuperblock, e));
        }
        Ok(true)
    }

    /// The directory and entry key offset of file `ino` (from its back reference).
    fn entry_of(&mut self, ino: u64) -> Result<(u64, u64)> {
        let mut v = [0u8; 8];
        match self
            .tree
            .next(&mut self.dev, &Key::new(ino, kind::PARENT, 0), &mut v)?
        {
            Some((k, 8)) if k.id == ino && k.kind == kind::PARENT => {
                Ok((k.offset, u64::from_le_bytes(v)))
            }
            _ => Err(corrupt(0, "file without a back reference")),
        }
    }

    /// Writes the creation record of `ino` (entry `offset` in `dir`) at the start of the log
    /// block being built; returns where the next record goes.
    #[inline(never)]
    fn log_create(&mut self, ino: u64, inode: &Inode, dir: u64, offset: u64) -> Result<usize> {
        let mut e = [0u8; DIRENT_HDR + NAME_MAX];
        let n = match self
            .tree
            .get(&mut self.dev, &Key::new(dir, kind::DIRENT, offset), &mut e)?
        {
            Some(n) if n > DIRENT_HDR && n <= e.len() && rd64(&e, 0) == ino => n,
            _ => return Err(corrupt(0, "back reference without its entry")),
        };
        let d = self.stat(dir)?;
        let o = LOG_HDR;
        let b = &mut self.data[..BLOCK_SIZE];
        b[o] = REC_CREATE;
        wr64(b, o + 1, ino);
        wr64(b, o + 9, dir);
        wr64(b, o + 17, offset);
        b[o + 25..o + 25 + INODE_SIZE].copy_from_slice(&inode.encode());
        b[o + 25 + INODE_SIZE..o + 25 + 2 * INODE_SIZE].copy_from_slice(&d.encode());
        b[o + CREATE_REC - 1] = (n - DIRENT_HDR) as u8;
        b[o + CREATE_REC..o + CREATE_REC + n - DIRENT_HDR].copy_from_slice(&e[DIRENT_HDR..n]);
        Ok(o + CREATE_REC + n - DIRENT_HDR)
    }

    /// Copies the recorded checksums of file blocks `[fb, fb + n)` of `ino` into the log
    /// block being built, from byte `o` on.
    fn log_csums(&mut self, ino: u64, fb: u64, n: u64, o: usize) -> Result<()> {
        let mut v = [0u8; CSUM_ITEM];
        let mut loaded = None;
        for x in fb..fb + n {
            let base = x / CSUMS * CSUMS;
            if loaded != Some(base) {
                match self
                    .tree
                    .get(&mut self.dev, &Key::new(ino, kind::CSUM, base), &mut v)?
                {
                    Some(CSUM_ITEM) => {}
                    Some(_) => return Err(corrupt(0, "checksum item of the wrong size")),
                    None => v.fill(0),
                }
                loaded = Some(base);
            }
            let s = ((x - base) * 4) as usize;
            let d = o + 4 * (x - fb) as usize;
            self.data[d..d + 4].copy_from_slice(&v[s..s + 4]);
        }
        Ok(())
    }

    /// Reads log block `at` into the data buffer and validates it as block `seq` of the chain.
    fn read_log(&mut self, at: u64, seq: u32) -> Result<Option<LogBlock>> {
        let sb = *self.tree.superblock();
        if at < super::superblock::SLOTS || at >= sb.block_count {
            return Ok(None);
        }
        self.dev
            .read(at, &mut self.data[..BLOCK_SIZE])
            .map_err(|e| FsError::io(IoOp::ReadNode, e))?;
        Ok(validate(&self.data[..BLOCK_SIZE], at, &sb, seq))
    }

    /// Replays the fsync log of the mounted superblock and commits it; returns the log blocks
    /// replayed (0: none, nothing written).
    pub(super) fn replay(&mut self) -> Result<u32> {
        let sb = *self.tree.superblock();
        if sb.log_root == 0 {
            return Ok(0);
        }
        let csums = self.data_checksums();
        // Pass 1: find the chain, claim every block it names.
        let mut blocks = [0u64; LOG_MAX];
        let mut n = 0;
        let mut at = sb.log_root;
        while n < LOG_MAX {
            let Some(lb) = self.read_log(at, n as u32 + 1)? else {
                break;
            };
            if n > 0 {
                // A block the durable state uses cannot be part of the chain (only a
                // corruption makes it look like one): the chain ends before it.
                if !self.space.claim(&mut self.dev, at)? {
                    break;
                }
                if !self.space.hold(at, 1) {
                    return Err(corrupt(at, "log chain too long"));
                }
            }
            blocks[n] = at;
            n += 1;
            let mut o = LOG_HDR;
            for _ in 0..lb.count {
                let (r, next) = record(&self.data[..BLOCK_SIZE], o, lb.end, csums)
                    .map_err(|what| corrupt(at, what))?;
                o = next;
                if let Record::Range { count, phys: p, .. } = r
                    && p != 0
                {
                    for b in p..p
                        .checked_add(count)
                        .ok_or(corrupt(at, "log range out of bounds"))?
                    {
                        self.space.claim(&mut self.dev, b)?;
                    }
                }
            }
            at = lb.next;
        }
        if n == 0 {
            return Ok(0);
        }
        // Pass 2: apply the records in order.
        for (i, &at) in blocks[..n].iter().enumerate() {
            let Some(lb) = self.read_log(at, i as u32 + 1)? else {
                return Err(corrupt(at, "log block changed during replay"));
            };
            let mut o = LOG_HDR;
            for _ in 0..lb.count {
                let (r, next) = record(&self.data[..BLOCK_SIZE], o, lb.end, csums)
                    .map_err(|what| corrupt(at, what))?;
                o = next;
                self.apply(r)?;
                // The records are read from the data buffer, which applying does not use.
            }
        }
        self.log.written[..n - 1].copy_from_slice(&blocks[1..n]);
        self.log.nwritten = n - 1;
        self.log.seq = n as u32 + 1;
        self.sync()?;
        Ok(n as u32)
    }

    /// Applies one log record to the open transaction.
    fn apply(&mut self, r: Record) -> Result<()> {
        match r {
            Record::Inode { ino, value } => {
                let i = Inode::decode(&value)?;
                if i.kind != Kind::File || self.stat(ino)?.kind != Kind::File {
                    return Err(corrupt(0, "log inode record of a non-file"));
                }
                self.put_inode(ino, &i)
            }
            Record::Range {
                ino,
                first,
                count,
                phys,
                crcs,
            } => {
                if self.stat(ino)?.kind != Kind::File {
                    return Err(corrupt(0, "log range record of a non-file"));
                }
                if phys == 0 {
                    return self.cut_range(ino, first, count);
                }
                // Blocks the durable bitmaps have are the durable mapping already (data
                // never moves within or between files): map only the others.
                let mut i = 0;
                while i < count {
                    let fresh = self.space.claim(&mut self.dev, phys + i)?;
                    let mut j = i + 1;
                    while j < count && self.space.claim(&mut self.dev, phys + j)? == fresh {
                        j += 1;
                    }
                    if fresh {
                        self.map_range(ino, first + i, j - i, phys + i)?;
                        // A record may repeat a mapping already applied (an older record,
                        // or a replay that crashed): cutting it freed these blocks again.
                        for b in phys + i..phys + j {
                            self.space.claim(&mut self.dev, b)?;
                        }
                        if self.data_checksums() {
                            self.set_csums(ino, first + i, &crcs[i as usize..j as usize])?;
                        }
                    }
                    i = j;
                }
                Ok(())
            }
            Record::Create {
                ino,
                dir,
                offset,
                inode,
                dir_inode,
                name,
                len,
            } => self.apply_create(ino, dir, offset, &inode, &dir_inode, &name[..len]),
        }
    }

    /// Applies a creation record: the file's inode item, its entry and back reference, the
    /// directory's inode item, and the inode counter moved past it. The same creation again
    /// (an older fsync of the file, a replay that crashed) finds them in place and rewrites
    /// them; anything else that does not fit the tree (an inode number the durable tree may
    /// use, a directory created since, the name or the slot taken by another inode, a changed
    /// link count) is corruption.
    fn apply_create(
        &mut self,
        ino: u64,
        dir: u64,
        offset: u64,
        inode: &[u8; INODE_SIZE],
        dir_inode: &[u8; INODE_SIZE],
        name: &[u8],
    ) -> Result<()> {
        let bad = |what| Err(corrupt(0, what));
        let i = Inode::decode(inode)?;
        let di = Inode::decode(dir_inode)?;
        super::volume::check_name(name).or(bad("log creation of an invalid name"))?;
        if i.kind != Kind::File || i.nlink != 1 || di.kind != Kind::Dir {
            return bad("log creation with inodes of the wrong kind");
        }
        if ino < self.log.first_ino || dir >= self.log.first_ino || ino == u64::MAX {
            return bad("log creation of an inode number in use");
        }
        if super::volume::name_hash(name) != offset >> 16 {
            return bad("log creation with an entry not matching its name");
        }
        let cur = match self.stat(dir) {
            Err(FsError::NotFound) => return bad("log creation in a directory that changed"),
            r => r?,
        };
        if cur.kind != Kind::Dir || cur.nlink != di.nlink {
            return bad("log creation in a directory that changed");
        }
        let key = Key::new(dir, kind::DIRENT, offset);
        match self.find(dir, name)? {
            super::volume::Slot::Found { key: k, ino: x, .. } if k == key && x == ino => {}
            super::volume::Slot::Found { .. } => return bad("log creation of a name in use"),
            super::volume::Slot::Free(_) => {
                if self.tree.get(&mut self.dev, &key, &mut [])?.is_some() {
                    return bad("log creation in an entry slot in use");
                }
                match self.stat(ino) {
                    Err(FsError::NotFound) => {}
                    Ok(_) => return bad("log creation of an inode that exists"),
                    Err(e) => return Err(e),
                }
            }
        }
        self.put_inode(ino, &i)?;
        self.put_entry(key, ino, Kind::File, name)?;
        self.put_inode(dir, &di)?;
        let sb = self.tree.superblock_mut();
        sb.next_ino = sb.next_ino.max(ino + 1);
        Ok(())
    }

    /// Before a commit: moves the log root. A chain that was used is freed (its root at the
    /// commit, as the durable state still names it; the rest stays held until the commit is
    /// durable) and the block its last block named becomes the new root (or a new one).
    pub(super) fn log_before_commit(&mut self) -> Result<u64> {
        if self.log.used() {
            self.space.free(&mut self.dev, self.log.head)?;
            for i in 0..self.log.nwritten {
                let b = self.log.written[i];
                self.space.free(&mut self.dev, b)?;
            }
            if self.log.tail != 0 {
                return Ok(self.log.tail);
            }
            return self.space.alloc(&mut self.dev);
        }
        if self.log.head == 0 {
            return self.space.alloc(&mut self.dev);
        }
        Ok(self.log.head)
    }

    /// Fsyncs that wrote a log block, and fsyncs that committed instead (tests, benches).
    pub fn fsync_stats(&self) -> (u64, u64) {
        (self.log.logged, self.log.committed)
    }
}

const _: () = assert!(
    LOG_HDR + CREATE_REC + NAME_MAX + RANGE_REC + 4 * RECORD_CSUMS as usize + INODE_REC + 4
        <= BLOCK_SIZE
);
