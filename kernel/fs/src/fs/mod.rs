//! The filesystem: mount, the namespace and file operations, and the copy-on-write commit.

use crate::bitmap::Bitmap;
use crate::check::{self, Problem};
use crate::extent::{ExtList, Mapping};
use crate::format::{
    BLOCK_SIZE, Block, EXTENTS_PER_INODE, Extent, INODES_PER_BLOCK, Inode, Kind, MAX_FILE_BLOCKS,
    MAX_FILE_SIZE, MAX_INODE_BLOCKS, NAME_MAX, ROOT_INO, SUPER_BLOCKS, Superblock, check_name,
    decode_inode_block, encode_inode_block,
};
use crate::io::{BlockIo, IoError, Run, WriteFlags};
use crate::{FsError, Result};

const BS: u64 = BLOCK_SIZE as u64;
/// Most runs one write batch carries.
const MAX_RUNS: usize = 16;

/// An inode number: the handle of an open file or directory.
///
/// Handles are plain inode numbers: after `unlink`, a handle to the removed file may later name
/// a new file that reuses the slot. Callers close (forget) handles of files they unlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u32);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(ROOT_INO);
}

/// How the filesystem is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not mounted.
    Unmounted,
    /// Read-write.
    ReadWrite,
    /// Read-only: every change fails with `ReadOnly`, nothing is written.
    ReadOnly,
}

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

/// Result of [`Fs::stat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Data blocks allocated.
    pub blocks: u64,
    /// Generation of the commit that last changed the inode.
    pub mtime_gen: u64,
}

/// Result of [`Fs::statfs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes per block.
    pub block_size: u32,
    /// Filesystem size in blocks.
    pub blocks: u64,
    /// Blocks that can be allocated now.
    pub free_blocks: u64,
    /// Inode slots, root included.
    pub inodes: u32,
    /// Free inode slots.
    pub free_inodes: u32,
    /// Generation of the last durable commit.
    pub generation: u64,
    /// Longest name.
    pub name_max: u32,
}

/// One directory entry from [`Fs::readdir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's inode.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    name_len: u8,
    name: [u8; NAME_MAX],
}

impl DirEntry {
    /// The name bytes.
    pub fn name(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(NAME_MAX)]
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

/// A tinyfs instance over device `D`.
///
/// `IB` is the most inode-table blocks this instance can hold (15 inodes each, ≤ 64); `BW` the
/// words of its block bitmaps (it handles filesystems up to `64 * BW` blocks). Everything lives
/// inside the struct: place it in a `static` (it has a `const fn new`) or on a large enough
/// stack. The buffer given to [`Fs::new`] is the only memory I/O is done to (it must be DMA-able
/// in a kernel); its size, a multiple of 4096 of at least 8 KiB, bounds the largest single I/O.
pub struct Fs<'b, D: BlockIo, const IB: usize, const BW: usize> {
    dev: D,
    buf: &'b mut [u8],
    sb: Superblock,
    inodes: [[Inode; INODES_PER_BLOCK]; IB],
    dirty: u64,
    used: Bitmap<BW>,
    pinned: Bitmap<BW>,
    cursor: u64,
    mode: Mode,
    failed: bool,
    /// Buffer offset where the next write-behind chunk goes (see [`Fs::write`]).
    ring: usize,
}

/// The file a write is changing: its inode and extents as the write goes.
#[derive(Clone, Copy, Debug)]
struct WriteState {
    ino: Ino,
    n: Inode,
    ext: ExtList,
}

/// One chunk of a write: file blocks `[fb, fb + k)` go to new blocks `[phys, phys + k)` from
/// the buffer at `base`; bytes `[pos, end)` of the file are new.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    fb: u64,
    phys: u64,
    k: u64,
    base: usize,
    behind: bool,
    pos: u64,
    end: u64,
}

impl Chunk {
    /// Where the chunk's new bytes go in the buffer.
    fn span(&self) -> (usize, usize) {
        let at = |x: u64| self.base + (x - self.fb * BS) as usize;
        (at(self.pos), at(self.end))
    }
}

/// A region of the filesystem's I/O buffer lent for a zero-copy write ([`Fs::write_buffer`]).
///
/// It holds the filesystem borrowed: nothing else runs until it is committed or dropped.
/// Dropping it without [`WriteBuf::commit`] gives its blocks back and leaves the file as it
/// was.
pub struct WriteBuf<'f, 'b, D: BlockIo, const IB: usize, const BW: usize> {
    fs: &'f mut Fs<'b, D, IB, BW>,
    st: WriteState,
    c: Chunk,
    live: bool,
}

impl<D: BlockIo, const IB: usize, const BW: usize> WriteBuf<'_, '_, D, IB, BW> {
    /// The bytes to fill: file bytes `[offset, offset + len)`. They hold whatever the buffer
    /// held (for a partial block's old part, see [`Fs::write_buffer`]: that part is outside).
    pub fn buf(&mut self) -> &mut [u8] {
        let (lo, hi) = self.c.span();
        &mut self.fs.buf[lo..hi]
    }

    /// Bytes lent (at most the `len` asked for).
    pub fn len(&self) -> usize {
        (self.c.end - self.c.pos) as usize
    }

    /// Never empty (a zero-length request is refused); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// File offset of the first byte.
    pub fn offset(&self) -> u64 {
        self.c.pos
    }

    /// Writes the region to the file; returns the bytes written ([`WriteBuf::len`]). Same
    /// durability as [`Fs::write`]: part of the next commit.
    pub fn commit(mut self) -> Result<usize> {
        self.live = false;
        let (mut st, c) = (self.st, self.c);
        self.fs.write_finish(&mut st, &c)?;
        Ok((c.end - c.pos) as usize)
    }
}

impl<D: BlockIo, const IB: usize, const BW: usize> Drop for WriteBuf<'_, '_, D, IB, BW> {
    /// Not committed: the blocks allocated for the region are free again.
    fn drop(&mut self) {
        if self.live {
            Fs::<D, IB, BW>::free_range(&mut self.fs.used, self.c.phys, self.c.k);
        }
    }
}

fn io(_: IoError) -> FsError {
    FsError::Io
}

fn block_mut(buf: &mut [u8], i: usize) -> Result<&mut Block> {
    buf.get_mut(i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE)
        .and_then(|s| s.try_into().ok())
        .ok_or(FsError::BufferTooSmall)
}

/// Fills `buf[..k blocks]` with file blocks `[fb, fb + k)`: one read per contiguous device run,
/// zeros for holes.
fn read_file_blocks<D: BlockIo>(
    dev: &mut D,
    buf: &mut [u8],
    ext: &ExtList,
    fb: u64,
    k: u64,
) -> Result<()> {
    let mut i = 0u64;
    while i < k {
        let (n, phys) = match ext.lookup(fb + i) {
            Mapping::Mapped { phys, len } => (len.min(k - i), Some(phys)),
            Mapping::Hole { len } => (len.min(k - i), None),
        };
        let dst = buf
            .get_mut((i * BS) as usize..((i + n) * BS) as usize)
            .ok_or(FsError::BufferTooSmall)?;
        match phys {
            Some(p) => dev.read(p, dst).map_err(io)?,
            None => dst.fill(0),
        }
        i += n;
    }
    Ok(())
}

impl<'b, D: BlockIo, const IB: usize, const BW: usize> Fs<'b, D, IB, BW> {
    /// An unmounted instance over `dev`, doing I/O through `buf`.
    pub const fn new(dev: D, buf: &'b mut [u8]) -> Self {
        Fs {
            dev,
            buf,
            sb: Superblock {
                generation: 0,
                block_count: 0,
                inode_blocks: 0,
                table: [0; MAX_INODE_BLOCKS],
            },
            inodes: [[Inode::FREE; INODES_PER_BLOCK]; IB],
            dirty: 0,
            used: Bitmap::new(),
            pinned: Bitmap::new(),
            cursor: SUPER_BLOCKS,
            mode: Mode::Unmounted,
            failed: false,
            ring: 0,
        }
    }

    /// Waits for the data writes [`Fs::write`] left in flight. Done before anything that reads
    /// the device, reuses the buffer from its start, frees blocks, or commits; an error among
    /// those writes fails the instance (changes are refused until it is mounted again).
    fn quiesce(&mut self) -> Result<()> {
        self.ring = 0;
        if self.dev.drain().is_err() {
            self.failed = true;
            return Err(FsError::Io);
        }
        Ok(())
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Gives the device back.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// How the filesystem is mounted.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Generation of the last durable commit.
    pub fn generation(&self) -> u64 {
        self.sb.generation
    }

    fn cap_blocks(&self) -> u64 {
        (self.buf.len() / BLOCK_SIZE) as u64
    }

    fn check_buf(&self) -> Result<()> {
        if !self.buf.len().is_multiple_of(BLOCK_SIZE) || self.buf.len() < 2 * BLOCK_SIZE {
            return Err(FsError::BufferTooSmall);
        }
        Ok(())
    }

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

    /// Commits everything and unmounts.
    pub fn unmount(&mut self) -> Result<()> {
        let drained = self.quiesce();
        if self.mode == Mode::ReadWrite && !self.failed {
            self.sync()?;
        }
        self.mode = Mode::Unmounted;
        drained
    }

    fn mounted(&self) -> Result<()> {
        match self.mode {
            Mode::Unmounted => Err(FsError::NotMounted),
            _ => Ok(()),
        }
    }

    fn writable(&self) -> Result<()> {
        match self.mode {
            Mode::Unmounted => Err(FsError::NotMounted),
            Mode::ReadOnly => Err(FsError::ReadOnly),
            Mode::ReadWrite if self.failed => Err(FsError::Io),
            Mode::ReadWrite => Ok(()),
        }
    }

    fn inode(&self, ino: u32) -> Inode {
        let i = ino as usize;
        self.inodes
            .get(i / INODES_PER_BLOCK)
            .and_then(|b| b.get(i % INODES_PER_BLOCK))
            .copied()
            .unwrap_or(Inode::FREE)
    }

    fn set_inode(&mut self, ino: u32, mut n: Inode) {
        let i = ino as usize;
        n.mtime_gen = self.sb.generation + 1;
        if let Some(slot) = self
            .inodes
            .get_mut(i / INODES_PER_BLOCK)
            .and_then(|b| b.get_mut(i % INODES_PER_BLOCK))
        {
            *slot = n;
            self.dirty |= 1 << (i / INODES_PER_BLOCK);
        }
    }

    fn ninodes(&self) -> u32 {
        self.sb.inode_count() as u32
    }

    // ---- space ------------------------------------------------------------------------

    fn free_blocks(&self) -> u64 {
        let n = self.sb.block_count;
        n - Bitmap::count_union(&self.used, &self.pinned, n).min(n)
    }

    fn is_free(&self, b: u64) -> bool {
        b < self.sb.block_count && Bitmap::free_in_both(&self.used, &self.pinned, b)
    }

    /// Allocates up to `want` contiguous blocks (next fit), keeping `reserve` blocks free.
    fn alloc_run(&mut self, want: u64, reserve: u64) -> Result<(u64, u64)> {
        // Exact when fewer than `want + reserve` blocks are free; otherwise enough.
        let free = Bitmap::free_at_least(
            &self.used,
            &self.pinned,
            self.sb.block_count,
            self.cursor,
            want.saturating_add(reserve),
        );
        if free <= reserve || want == 0 {
            return Err(FsError::NoSpace);
        }
        let want = want.min(free - reserve);
        let n = self.sb.block_count;
        let mut start = self.cursor.clamp(SUPER_BLOCKS, n.saturating_sub(1));
        let mut scanned = 0;
        while scanned < n && !self.is_free(start) {
            start = if start + 1 >= n {
                SUPER_BLOCKS
            } else {
                start + 1
            };
            scanned += 1;
        }
        if !self.is_free(start) {
            return Err(FsError::NoSpace);
        }
        // Within the filesystem's blocks (`start < n`: `is_free` checked it).
        let len = Bitmap::free_run(&self.used, &self.pinned, start, want.min(n - start));
        self.used.set_range(start, len);
        self.cursor = start + len;
        Ok((start, len))
    }

    /// Allocates exactly `want` contiguous blocks, first fit.
    fn alloc_exact(&mut self, want: u64, reserve: u64) -> Result<u64> {
        if want == 0 || self.free_blocks() < want + reserve {
            return Err(FsError::NoSpace);
        }
        let mut run = 0;
        for b in SUPER_BLOCKS..self.sb.block_count {
            if self.is_free(b) {
                run += 1;
                if run == want {
                    let s = b + 1 - want;
                    for x in s..=b {
                        self.used.set(x);
                    }
                    return Ok(s);
                }
            } else {
                run = 0;
            }
        }
        Err(FsError::NoSpace)
    }

    fn free_range(used: &mut Bitmap<BW>, phys: u64, len: u64) {
        for b in phys..phys + len {
            used.clear(b);
        }
    }

    /// Blocks kept free for the next commit's inode-table blocks.
    fn reserve(&self) -> u64 {
        self.sb.inode_blocks as u64
    }

    // ---- names ------------------------------------------------------------------------

    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        (1..self.ninodes()).find(|&i| {
            let n = self.inode(i);
            n.kind != Kind::Free && n.parent == dir && n.name() == name
        })
    }

    fn components(path: &str) -> impl Iterator<Item = &[u8]> {
        path.as_bytes()
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty())
    }

    fn check_path(path: &str) -> Result<()> {
        Self::components(path).try_for_each(check_name)
    }

    fn resolve(&self, path: &str) -> Result<u32> {
        Self::check_path(path)?;
        let mut cur = ROOT_INO;
        for c in Self::components(path) {
            check_name(c)?;
            if self.inode(cur).kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            cur = self.child(cur, c).ok_or(FsError::NotFound)?;
        }
        Ok(cur)
    }

    /// The directory a path's last component lives in, and that component.
    fn resolve_parent<'p>(&self, path: &'p str) -> Result<(u32, &'p [u8])> {
        Self::check_path(path)?;
        let mut it = Self::components(path).peekable();
        let mut cur = ROOT_INO;
        while let Some(c) = it.next() {
            check_name(c)?;
            if it.peek().is_none() {
                if self.inode(cur).kind != Kind::Dir {
                    return Err(FsError::NotDir);
                }
                return Ok((cur, c));
            }
            if self.inode(cur).kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
            cur = self.child(cur, c).ok_or(FsError::NotFound)?;
        }
        Err(FsError::InvalidName)
    }

    fn new_inode(&mut self, parent: u32, name: &[u8], kind: Kind) -> Result<u32> {
        if self.child(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        let ino = (1..self.ninodes())
            .find(|&i| self.inode(i).kind == Kind::Free)
            .ok_or(FsError::NoInodes)?;
        let mut n = Inode::FREE;
        n.kind = kind;
        n.parent = parent;
        n.name_len = name.len() as u8;
        n.name[..name.len()].copy_from_slice(name);
        self.set_inode(ino, n);
        Ok(ino)
    }

    /// Creates an empty file; `Exists` if the name is taken.
    pub fn create(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.new_inode(dir, name, Kind::File).map(Ino)
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, path: &str) -> Result<Ino> {
        self.writable()?;
        let (dir, name) = self.resolve_parent(path)?;
        self.new_inode(dir, name, Kind::Dir).map(Ino)
    }

    /// Looks a path up (file or directory).
    pub fn open(&self, path: &str) -> Result<Ino> {
        self.mounted()?;
        self.resolve(path).map(Ino)
    }

    /// Stat of an inode.
    pub fn stat(&self, ino: Ino) -> Result<Stat> {
        self.mounted()?;
        let n = self.inode(ino.0);
        if n.kind == Kind::Free || ino.0 >= self.ninodes() {
            return Err(FsError::NotFound);
        }
        Ok(Stat {
            ino,
            kind: n.kind,
            size: n.size,
            blocks: n.mapped_blocks(),
            mtime_gen: n.mtime_gen,
        })
    }

    /// Stat of a path.
    pub fn stat_path(&self, path: &str) -> Result<Stat> {
        let ino = self.open(path)?;
        self.stat(ino)
    }

    /// Filesystem counts.
    pub fn statfs(&self) -> Result<StatFs> {
        self.mounted()?;
        let free_inodes = (1..self.ninodes())
            .filter(|&i| self.inode(i).kind == Kind::Free)
            .count() as u32;
        Ok(StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: self.sb.block_count,
            free_blocks: self.free_blocks().saturating_sub(self.reserve()),
            inodes: self.ninodes(),
            free_inodes,
            generation: self.sb.generation,
            name_max: NAME_MAX as u32,
        })
    }

    /// The entry after position `cookie` in directory `dir` (start with 0), and the cookie of
    /// the next call; `None` at the end.
    pub fn readdir(&self, dir: Ino, cookie: u32) -> Result<Option<(DirEntry, u32)>> {
        self.mounted()?;
        let d = self.inode(dir.0);
        if d.kind == Kind::Free {
            return Err(FsError::NotFound);
        }
        if d.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        for i in cookie.max(1)..self.ninodes() {
            let n = self.inode(i);
            if n.kind != Kind::Free && n.parent == dir.0 {
                let e = DirEntry {
                    ino: Ino(i),
                    kind: n.kind,
                    size: n.size,
                    name_len: n.name_len,
                    name: n.name,
                };
                return Ok(Some((e, i + 1)));
            }
        }
        Ok(None)
    }

    fn file(&self, ino: Ino) -> Result<Inode> {
        let n = self.inode(ino.0);
        match n.kind {
            Kind::File if ino.0 < self.ninodes() => Ok(n),
            Kind::Dir => Err(FsError::IsDir),
            _ => Err(FsError::NotFound),
        }
    }

    /// Reads from `off`; returns the bytes read (short at end of file).
    pub fn read(&mut self, ino: Ino, off: u64, out: &mut [u8]) -> Result<usize> {
        self.mounted()?;
        self.quiesce()?;
        let n = self.file(ino)?;
        if off >= n.size || out.is_empty() {
            return Ok(0);
        }
        let end = n.size.min(off.saturating_add(out.len() as u64));
        let ext = ExtList::of(&n);
        let cap = self.cap_blocks();
        let mut pos = off;
        while pos < end {
            let fb = pos / BS;
            let k = ((end - 1) / BS - fb + 1).min(cap);
            read_file_blocks(&mut self.dev, self.buf, &ext, fb, k)?;
            let chunk_end = end.min((fb + k) * BS);
            let src = &self.buf[(pos - fb * BS) as usize..(chunk_end - fb * BS) as usize];
            let dst = out
                .get_mut((pos - off) as usize..(chunk_end - off) as usize)
                .ok_or(FsError::InvalidArgument)?;
            dst.copy_from_slice(src);
            pos = chunk_end;
        }
        Ok((end - off) as usize)
    }

    /// Writes `data` at `off` (past the end and into holes included).
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        let n = self.file(ino)?;
        if data.is_empty() {
            return Ok(0);
        }
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        let mut st = WriteState {
            ino,
            n,
            ext: ExtList::of(&n),
        };
        let mut pos = off;
        while pos < end {
            let c = self.write_prepare(&mut st, pos, end)?;
            let (lo, hi) = c.span();
            self.buf[lo..hi].copy_from_slice(&data[(pos - off) as usize..(c.end - off) as usize]);
            self.write_finish(&mut st, &c)?;
            pos = c.end;
        }
        Ok(data.len())
    }

    /// Lends the part of the I/O buffer that the next chunk of a write of `len` bytes at `off`
    /// goes out from: fill [`WriteBuf::buf`] in place, then [`WriteBuf::commit`] writes it,
    /// with no copy (zero-copy write). The region may be shorter than `len` (the buffer size,
    /// the end of the buffer's ring, a short free run): call again from
    /// `off + WriteBuf::len()`. Dropping the `WriteBuf` without committing changes nothing.
    ///
    /// An append at a block boundary (the streaming case) is written behind like [`Fs::write`]
    /// writes it: the region comes from the next unused part of the buffer and `commit`
    /// returns once its bios are submitted. Anything else (overwrites, unaligned starts) first
    /// waits for the writes in flight and reads the partial first and last blocks into the
    /// region before lending it, so the caller only supplies the new bytes.
    pub fn write_buffer(
        &mut self,
        ino: Ino,
        off: u64,
        len: usize,
    ) -> Result<WriteBuf<'_, 'b, D, IB, BW>> {
        self.writable()?;
        let n = self.file(ino)?;
        if len == 0 {
            return Err(FsError::InvalidArgument);
        }
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        let mut st = WriteState {
            ino,
            n,
            ext: ExtList::of(&n),
        };
        let c = self.write_prepare(&mut st, off, end)?;
        Ok(WriteBuf {
            fs: self,
            st,
            c,
            live: true,
        })
    }

    /// First half of one chunk of a write from `pos` towards `end`: room in the extent list,
    /// the place in the buffer (waiting for what still reads it), the new blocks, and the old
    /// contents of partial first and last blocks. The chunk's bytes are then put at
    /// [`Chunk::span`] and [`Fs::write_finish`] writes them.
    fn write_prepare(&mut self, st: &mut WriteState, pos: u64, end: u64) -> Result<Chunk> {
        if st.ext.len() + 2 > EXTENTS_PER_INODE {
            self.compact(&mut st.ext)?;
            st.ext
                .store(&mut st.n)
                .map_err(|_| FsError::TooFragmented)?;
            self.set_inode(st.ino.0, st.n);
        }
        let cap = self.cap_blocks();
        let fb = pos / BS;
        let mut want = ((end - 1) / BS - fb + 1).min(cap);
        // Write-behind: a block-aligned chunk past every mapped block of the file (an
        // append) reads nothing from the device and frees nothing, so it is written from the
        // next unused part of the buffer and not waited for; whatever reads the device,
        // frees blocks or commits waits for such writes first (`quiesce`).
        let behind = pos.is_multiple_of(BS) && fb >= st.n.size.div_ceil(BS);
        let base = if behind {
            if self.ring + BLOCK_SIZE > self.buf.len() {
                self.ring = 0;
            }
            want = want.min(((self.buf.len() - self.ring) / BLOCK_SIZE) as u64);
            let region = &self.buf[self.ring..self.ring + (want * BS) as usize];
            if self.dev.wait_for(region).is_err() {
                self.failed = true;
                return Err(FsError::Io);
            }
            self.ring
        } else {
            self.quiesce()?;
            0
        };
        let (phys, k) = self.alloc_run(want, self.reserve())?;
        let c = Chunk {
            fb,
            phys,
            k,
            base,
            behind,
            pos,
            end: end.min((fb + k) * BS),
        };
        if let Err(e) = self.read_partial(&st.ext, &c) {
            Self::free_range(&mut self.used, phys, k);
            return Err(e);
        }
        Ok(c)
    }

    /// Partial first and last blocks of a chunk start from their old contents (zeros in a
    /// hole or past the end).
    fn read_partial(&mut self, ext: &ExtList, c: &Chunk) -> Result<()> {
        let buf = &mut self.buf[c.base..];
        if !c.pos.is_multiple_of(BS) {
            read_file_blocks(&mut self.dev, buf, ext, c.fb, 1)?;
        }
        if !c.end.is_multiple_of(BS) && (c.end / BS != c.fb || c.pos.is_multiple_of(BS)) {
            let lb = c.end / BS;
            let i = (lb - c.fb) as usize;
            let tail = buf
                .get_mut(i * BLOCK_SIZE..)
                .ok_or(FsError::BufferTooSmall)?;
            read_file_blocks(&mut self.dev, tail, ext, lb, 1)?;
        }
        Ok(())
    }

    /// Second half of a chunk: writes its blocks from the buffer (behind, or waited) and maps
    /// them into the file.
    fn write_finish(&mut self, st: &mut WriteState, c: &Chunk) -> Result<()> {
        let run = Run {
            block: c.phys,
            data: &self.buf[c.base..c.base + (c.k * BS) as usize],
        };
        let r = if c.behind {
            self.ring = c.base + (c.k * BS) as usize;
            self.dev.write_behind(&[run])
        } else {
            self.dev.write(&[run], WriteFlags::NONE)
        };
        if r.is_err() {
            Self::free_range(&mut self.used, c.phys, c.k);
            self.failed = true;
            return Err(FsError::Io);
        }
        let used = &mut self.used;
        st.ext
            .punch(c.fb, c.fb + c.k, &mut |p, l| Self::free_range(used, p, l))
            .map_err(|_| FsError::TooFragmented)?;
        st.ext
            .insert(Extent {
                fblock: c.fb as u32,
                len: c.k as u32,
                phys: c.phys,
            })
            .map_err(|_| FsError::TooFragmented)?;
        st.ext
            .store(&mut st.n)
            .map_err(|_| FsError::TooFragmented)?;
        st.n.size = st.n.size.max(c.end);
        self.set_inode(st.ino.0, st.n);
        Ok(())
    }

    /// Appends `data`; returns the offset it was written at.
    pub fn append(&mut self, ino: Ino, data: &[u8]) -> Result<u64> {
        self.writable()?;
        let off = self.file(ino)?.size;
        self.write(ino, off, data)?;
        Ok(off)
    }

    /// Rewrites a file's mapped range into one contiguous extent (holes inside become zeros).
    fn compact(&mut self, ext: &mut ExtList) -> Result<()> {
        self.quiesce()?;
        let (Some(first), Some(last)) = (
            ext.as_slice().first().copied(),
            ext.as_slice().last().copied(),
        ) else {
            return Ok(());
        };
        let (start, end) = (first.fblock as u64, last.fend());
        let total = end - start;
        let dst = self.alloc_exact(total, self.reserve())?;
        let cap = self.cap_blocks();
        let mut i = 0;
        while i < total {
            let k = cap.min(total - i);
            read_file_blocks(&mut self.dev, self.buf, ext, start + i, k)?;
            let run = Run {
                block: dst + i,
                data: &self.buf[..(k * BS) as usize],
            };
            if self.dev.write(&[run], WriteFlags::NONE).is_err() {
                Self::free_range(&mut self.used, dst, total);
                self.failed = true;
                return Err(FsError::Io);
            }
            i += k;
        }
        let used = &mut self.used;
        ext.punch(start, end, &mut |p, l| Self::free_range(used, p, l))
            .map_err(|_| FsError::TooFragmented)?;
        ext.insert(Extent {
            fblock: start as u32,
            len: total as u32,
            phys: dst,
        })
        .map_err(|_| FsError::TooFragmented)
    }

    /// Sets the size: shrinking frees blocks past the end, growing leaves a hole.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let mut n = self.file(ino)?;
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooLarge);
        }
        if size >= n.size {
            n.size = size;
            self.set_inode(ino.0, n);
            return Ok(());
        }
        let mut ext = ExtList::of(&n);
        let used = &mut self.used;
        ext.punch(size.div_ceil(BS), MAX_FILE_BLOCKS, &mut |p, l| {
            Self::free_range(used, p, l)
        })
        .map_err(|_| FsError::TooFragmented)?;
        let fb = size / BS;
        if !size.is_multiple_of(BS)
            && let Mapping::Mapped { phys: old, .. } = ext.lookup(fb)
        {
            // Copy the new last block with its tail zeroed, so growing later reads zeros.
            if ext.len() + 2 > EXTENTS_PER_INODE {
                self.compact(&mut ext)?;
            }
            let b = block_mut(self.buf, 0)?;
            self.dev.read(old, b).map_err(io)?;
            b[(size % BS) as usize..].fill(0);
            let (phys, _) = self.alloc_run(1, self.reserve())?;
            if self
                .dev
                .write(
                    &[Run {
                        block: phys,
                        data: &self.buf[..BLOCK_SIZE],
                    }],
                    WriteFlags::NONE,
                )
                .is_err()
            {
                self.used.clear(phys);
                self.failed = true;
                return Err(FsError::Io);
            }
            let used = &mut self.used;
            ext.punch(fb, fb + 1, &mut |p, l| Self::free_range(used, p, l))
                .map_err(|_| FsError::TooFragmented)?;
            ext.insert(Extent {
                fblock: fb as u32,
                len: 1,
                phys,
            })
            .map_err(|_| FsError::TooFragmented)?;
        }
        ext.store(&mut n).map_err(|_| FsError::TooFragmented)?;
        n.size = size;
        self.set_inode(ino.0, n);
        Ok(())
    }

    fn remove(&mut self, ino: u32) {
        let n = self.inode(ino);
        for e in n.extents() {
            Self::free_range(&mut self.used, e.phys, e.len as u64);
        }
        let i = ino as usize;
        if let Some(slot) = self
            .inodes
            .get_mut(i / INODES_PER_BLOCK)
            .and_then(|b| b.get_mut(i % INODES_PER_BLOCK))
        {
            *slot = Inode::FREE;
            self.dirty |= 1 << (i / INODES_PER_BLOCK);
        }
    }

    fn has_children(&self, dir: u32) -> bool {
        (1..self.ninodes()).any(|i| {
            let n = self.inode(i);
            n.kind != Kind::Free && n.parent == dir
        })
    }

    /// Removes a file.
    pub fn unlink(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let ino = self.resolve(path)?;
        self.file(Ino(ino))?;
        self.remove(ino);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let ino = self.resolve(path)?;
        if ino == ROOT_INO {
            return Err(FsError::InvalidArgument);
        }
        if self.inode(ino).kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if self.has_children(ino) {
            return Err(FsError::NotEmpty);
        }
        self.remove(ino);
        Ok(())
    }

    /// Moves `from` to `to`, atomically replacing a file (or an empty directory, when `from`
    /// is a directory) already at `to`.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        let src = self.resolve(from)?;
        if src == ROOT_INO {
            return Err(FsError::InvalidArgument);
        }
        let (dir, name) = self.resolve_parent(to)?;
        let sn = self.inode(src);
        if sn.kind == Kind::Dir {
            // The destination directory must not be inside the moved one.
            let mut cur = dir;
            for _ in 0..=self.ninodes() {
                if cur == src {
                    return Err(FsError::InvalidArgument);
                }
                if cur == ROOT_INO {
                    break;
                }
                cur = self.inode(cur).parent;
            }
        }
        if let Some(dst) = self.child(dir, name) {
            if dst == src {
                return Ok(());
            }
            let dn = self.inode(dst);
            match (sn.kind, dn.kind) {
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir),
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir),
                (Kind::Dir, Kind::Dir) if self.has_children(dst) => return Err(FsError::NotEmpty),
                _ => {}
            }
            self.remove(dst);
        }
        let mut n = sn;
        n.parent = dir;
        n.name = [0; NAME_MAX];
        n.name_len = name.len() as u8;
        n.name[..name.len()].copy_from_slice(name);
        self.set_inode(src, n);
        Ok(())
    }

    /// Makes a file durable. (A commit is whole-filesystem: this is [`Fs::sync`].)
    pub fn fsync(&mut self, ino: Ino) -> Result<()> {
        self.writable()?;
        self.file(ino)?;
        self.sync()
    }

    /// Commits every change: new inode-table blocks, then the superblock with PREFLUSH | FUA.
    pub fn sync(&mut self) -> Result<()> {
        self.writable()?;
        self.quiesce()?;
        if self.dirty == 0 {
            return Ok(());
        }
        let generation = self.sb.generation + 1;
        let mut sb = self.sb;
        sb.generation = generation;
        let ndirty = self.dirty.count_ones() as u64;
        if self.free_blocks() < ndirty {
            return Err(FsError::NoSpace);
        }
        let cap = self.cap_blocks() as usize;
        let mut idx = 0usize;
        while idx < sb.inode_blocks as usize {
            // Fill the buffer with up to `cap` dirty table blocks.
            let mut k = 0usize;
            let mut runs: [Run<'_>; MAX_RUNS] = [Run {
                block: 0,
                data: &[],
            }; MAX_RUNS];
            let mut places = [(0u64, 0usize); MAX_RUNS]; // (first block, buffer slot) of each run
            let mut lens = [0usize; MAX_RUNS];
            let mut nruns = 0usize;
            while idx < sb.inode_blocks as usize && k < cap {
                if self.dirty & (1 << idx) != 0 {
                    let (at, _) = match self.alloc_run(1, 0) {
                        Ok(r) => r,
                        Err(e) => {
                            self.failed = true;
                            return Err(e);
                        }
                    };
                    let extends = nruns > 0 && places[nruns - 1].0 + lens[nruns - 1] as u64 == at;
                    if !extends && nruns == MAX_RUNS {
                        // Out of run slots: give the block back; this table block goes in the
                        // next batch.
                        self.used.clear(at);
                        break;
                    }
                    let Some(src) = self.inodes.get(idx).copied() else {
                        self.used.clear(at);
                        break;
                    };
                    self.used.clear(sb.table[idx]);
                    sb.table[idx] = at;
                    encode_inode_block(block_mut(self.buf, k)?, &src, idx as u32, generation, at);
                    if extends {
                        lens[nruns - 1] += 1;
                    } else {
                        places[nruns] = (at, k);
                        lens[nruns] = 1;
                        nruns += 1;
                    }
                    k += 1;
                }
                idx += 1;
            }
            for r in 0..nruns {
                let (at, slot) = places[r];
                runs[r] = Run {
                    block: at,
                    data: &self.buf[slot * BLOCK_SIZE..(slot + lens[r]) * BLOCK_SIZE],
                };
            }
            if nruns > 0 && self.dev.write(&runs[..nruns], WriteFlags::NONE).is_err() {
                self.failed = true;
                return Err(FsError::Io);
            }
        }
        let b = block_mut(self.buf, 0)?;
        sb.encode(b);
        let run = Run {
            block: Superblock::slot_of(generation),
            data: &self.buf[..BLOCK_SIZE],
        };
        if self.dev.write(&[run], WriteFlags::COMMIT).is_err() {
            self.failed = true;
            return Err(FsError::Io);
        }
        self.sb = sb;
        self.dirty = 0;
        self.pinned.copy_from(&self.used);
        // First fit again: blocks this commit released are reused soonest.
        self.cursor = SUPER_BLOCKS;
        Ok(())
    }
}
