//! fsck for version 2 (`docs/tinyfs-v2.md`, "Checking a volume"): every structure of a volume,
//! each problem reported with its block through a callback, in memory bounded by the caller's
//! scratch and time bounded by the metadata (one walk of the tree per window of groups).
//!
//! Passes: (1) the tree walked in key order from the newest valid superblock, every node
//! validated (checksum, header, level, generation, key order and the range its parent gives),
//! every item's layout, and per inode its link count, back references (each matched with its
//! directory entry, both ways, by lookups), extents (no overlap inside the file, inside the
//! filesystem) and data checksums; (2) for each window of groups the scratch's bits cover: the
//! tree walked again marking every block it references (nodes, extents), plus the superblock
//! slots, the bitmap slots and the selectors, a block marked twice is shared; the marks are
//! compared with the group's durable bitmap (found by its selector bit). The first window's
//! walk also follows each directory's parents up to the root (a loop is reported).

use super::key::{Key, kind};
use super::log::{self, LOG_MAX};
use super::node::{self, HDR, MAX_HEIGHT};
use super::space::{KIND_BITMAP, KIND_SELECTOR};
use super::superblock::{FLAG_DATA_CSUM, SELECTOR_BITS, SLOTS, Superblock};
use super::tree::Tree;
use super::volume::{ORPHANS, ROOT};
use crate::crc::crc32c;
use crate::error::{FsError, IoOp, Result};
use crate::format::BLOCK_SIZE;
use crate::io::BlockIo;

/// Node frames the checker's lookups use (the fewest the tree allows).
const FRAMES: usize = super::cache::MIN_FRAMES;
/// Blocks of scratch [`check`] needs at least: lookup frames, a path of nodes, a bitmap
/// block and one block of marks (one group or more per window).
pub const MIN_SCRATCH_BLOCKS: usize = FRAMES + MAX_HEIGHT + 2;
const BS: u64 = BLOCK_SIZE as u64;
const EXTENT_SIZE: usize = 16;
const CSUMS: u64 = 240;
const CSUM_ITEM: usize = CSUMS as usize * 4;
const INODE_SIZE: usize = 40;
const DIRENT_HDR: usize = 9;
const NAME_MAX: usize = 255;
const FILE: u8 = 1;
const DIR: u8 = 2;

/// One problem found, naming the block it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No usable superblock (block 0 or 1), or the newest one's tree does not validate and
    /// the older one was checked instead.
    Superblock {
        /// The slot.
        block: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A tree node that does not validate or lies outside its parent's key range (its
    /// subtree is not checked further).
    Node {
        /// The node's block.
        block: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// An item whose layout or references are wrong.
    Item {
        /// The leaf holding it.
        block: u64,
        /// Its key.
        key: Key,
        /// What is wrong.
        what: &'static str,
    },
    /// An inode whose link count or directory entries are wrong, or that no directory names.
    Inode {
        /// The inode number.
        ino: u64,
        /// The leaf holding its inode item (0 if it has none).
        block: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A selector or bitmap block that does not validate (its groups are not compared).
    FreeSpace {
        /// The block.
        block: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// A block referenced twice (by two nodes, extents or metadata).
    Shared {
        /// The block.
        block: u64,
    },
    /// A block the bitmap marks used that nothing references.
    Leaked {
        /// The block.
        block: u64,
    },
    /// A referenced block the bitmap marks free.
    MarkedFree {
        /// The block.
        block: u64,
    },
    /// An fsync log block (valid for its chain: the right generation, filesystem identity,
    /// root, sequence number and CRC) holding a record that replay would refuse.
    Log {
        /// The log block.
        block: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The superblock's free count differs from the bitmaps'.
    FreeCount {
        /// In the superblock.
        recorded: u64,
        /// Counted in the bitmaps.
        counted: u64,
    },
}

/// What [`check`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems reported.
    pub problems: u64,
    /// The generation checked.
    pub generation: u64,
    /// Tree nodes.
    pub nodes: u64,
    /// Items in leaves.
    pub items: u64,
    /// Inodes.
    pub inodes: u64,
    /// Blocks referenced (metadata and data).
    pub used_blocks: u64,
    /// Tree walks made (one per window of groups, plus one).
    pub walks: u64,
    /// Valid blocks of the fsync log chain (a read-write mount replays them).
    pub log_blocks: u64,
    /// Records in them.
    pub log_records: u64,
}

#[derive(Clone, Copy, Default)]
struct Cur {
    ino: u64,
    have: bool,
    kind: u8,
    nlink: u32,
    size: u64,
    block: u64,
    subdirs: u64,
    parents: u64,
    ext_end: u64,
}

enum Pass<'m> {
    Items,
    Mark {
        base: u64,
        end: u64,
        bits: &'m mut [u8],
        loops: bool,
    },
}

struct Checker<'r, 'b, D: BlockIo> {
    dev: &'r mut D,
    tree: Tree<'b, FRAMES>,
    sb: Superblock,
    report: &'r mut dyn FnMut(&Problem),
    r: Report,
    cur: Cur,
    last: Option<Key>,
    dirs: u64,
    root: bool,
}

/// Checks the volume on `dev` without changing it: every problem goes to `report`, which
/// sees each once. `scratch` must hold [`MIN_SCRATCH_BLOCKS`] blocks; more makes the windows
/// of groups compared per tree walk larger (one block of marks covers 32,768 blocks). Errors
/// are I/O errors and a scratch too small; a corrupt volume is reported, never an error.
pub fn check<D: BlockIo>(
    dev: &mut D,
    scratch: &mut [u8],
    report: &mut dyn FnMut(&Problem),
) -> Result<Report> {
    if scratch.len() < MIN_SCRATCH_BLOCKS * BLOCK_SIZE {
        return Err(FsError::BufferTooSmall);
    }
    let (frames, rest) = scratch.split_at_mut(FRAMES * BLOCK_SIZE);
    let (path, rest) = rest.split_at_mut(MAX_HEIGHT * BLOCK_SIZE);
    let (blk, bits) = rest.split_at_mut(BLOCK_SIZE);
    let mut r = Report::default();
    let (tree, info) = match Tree::<FRAMES>::mount(dev, frames, true) {
        Ok(t) => t,
        Err(FsError::Corrupt { block, what }) => {
            report(&Problem::Superblock { block, what });
            r.problems = 1;
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let sb = *tree.superblock();
    r.generation = sb.generation;
    let mut c = Checker {
        dev,
        tree,
        sb,
        report,
        r,
        cur: Cur::default(),
        last: None,
        dirs: 0,
        root: false,
    };
    if info.rolled_back {
        c.problem(Problem::Superblock {
            block: Superblock::slot_of(sb.generation + 1),
            what: "the newest commit's tree does not validate (the older one was checked)",
        });
    }
    // Pass 1: structure and items.
    for p in sb.selectors {
        if p != 0 {
            c.past_ready(p, 1);
        }
    }
    if sb.log_root != 0 {
        c.past_ready(sb.log_root, 1);
    }
    c.walk(&mut Pass::Items, path)?;
    if !info.rolled_back {
        c.check_log(blk)?;
    }
    c.finish_inode();
    if !c.root {
        c.problem(Problem::Inode {
            ino: ROOT,
            block: 0,
            what: "no root directory",
        });
    }
    // Pass 2: references against the bitmaps, window by window.
    // Groups never brought into use are all free (pass 1 reported any reference into
    // them), so only groups in use are walked: time is bounded by the metadata.
    let gb = sb.group_blocks as u64;
    let per = ((bits.len() as u64 * 8) / gb).max(1);
    let (groups, ready) = (sb.groups(), sb.groups_ready.min(sb.groups()));
    let ready_end = (ready * gb).min(sb.block_count);
    // Their bitmap slots are counted used from mkfs on.
    let mut counted = (sb.block_count - ready_end).saturating_sub(2 * (groups - ready));
    let mut g0 = 0;
    while g0 < ready {
        let g1 = (g0 + per).min(ready);
        let (base, end) = (g0 * gb, (g1 * gb).min(sb.block_count));
        let nbits = &mut bits[..((end - base) as usize).div_ceil(8)];
        nbits.fill(0);
        c.mark_fixed(base, end, nbits);
        let mut pass = Pass::Mark {
            base,
            end,
            bits: nbits,
            loops: g0 == 0,
        };
        c.walk(&mut pass, path)?;
        let Pass::Mark { bits: nbits, .. } = pass else {
            unreachable!()
        };
        for g in g0..g1 {
            counted += c.compare_group(g, base, nbits, blk)?;
        }
        g0 = g1;
    }
    if counted != sb.free_blocks {
        c.problem(Problem::FreeCount {
            recorded: sb.free_blocks,
            counted,
        });
    }
    Ok(c.r)
}

fn get_bit(b: &[u8], i: u64) -> bool {
    b[(i / 8) as usize] & (1 << (i % 8)) != 0
}

fn rd64(b: &[u8], o: usize) -> u64 {
    node::rd64(b, o)
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// A 64-bit FNV-1a digest of a name: two log creations in one directory whose entry offsets
/// share the name's CRC32C and whose names share this digest name one name (different names
/// agreeing in both are not expected in practice).
fn name_digest(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn valid_name(name: &[u8]) -> bool {
    !(name.is_empty()
        || name.len() > NAME_MAX
        || name == b"."
        || name == b".."
        || name.iter().any(|&c| c == b'/' || c == 0))
}

impl<D: BlockIo> Checker<'_, '_, D> {
    fn problem(&mut self, p: Problem) {
        self.r.problems += 1;
        (self.report)(&p);
    }

    fn item_problem(&mut self, block: u64, key: Key, what: &'static str) {
        self.problem(Problem::Item { block, key, what });
    }

    fn item_bad(&mut self, block: u64, key: Key, what: &'static str) -> Result<()> {
        self.item_problem(block, key, what);
        Ok(())
    }

    /// Marks `[b, b + n)` in the window; a block marked twice is shared.
    fn mark(&mut self, pass: &mut Pass<'_>, b: u64, n: u64) {
        let Pass::Mark {
            base, end, bits, ..
        } = pass
        else {
            return;
        };
        let lo = b.max(*base);
        let hi = b.saturating_add(n).min(*end);
        for x in lo..hi {
            let i = x - *base;
            let byte = &mut bits[(i / 8) as usize];
            if *byte & (1 << (i % 8)) != 0 {
                self.r.problems += 1;
                (self.report)(&Problem::Shared { block: x });
            } else {
                *byte |= 1 << (i % 8);
                self.r.used_blocks += 1;
            }
        }
    }

    /// A reference into groups never brought into use (all free): the first such block.
    fn past_ready(&mut self, b: u64, n: u64) {
        let gb = self.sb.group_blocks as u64;
        let ready_end = self.sb.groups_ready.saturating_mul(gb);
        if b.saturating_add(n) > ready_end {
            self.problem(Problem::MarkedFree {
                block: b.max(ready_end),
            });
        }
    }

    /// The superblock slots, the bitmap slots of groups in use and the selectors.
    fn mark_fixed(&mut self, base: u64, end: u64, bits: &mut [u8]) {
        let mut pass = Pass::Mark {
            base,
            end,
            bits,
            loops: false,
        };
        self.mark(&mut pass, 0, SLOTS);
        let gb = self.sb.group_blocks as u64;
        let (g0, g1) = (base / gb, end.div_ceil(gb).min(self.sb.groups_ready));
        for g in g0..g1 {
            self.mark(&mut pass, g * gb + SLOTS, 2);
        }
        for s in self.sb.selectors {
            if s != 0 {
                self.mark(&mut pass, s, 1);
            }
        }
        if self.sb.log_root != 0 {
            self.mark(&mut pass, self.sb.log_root, 1);
        }
    }

    /// Whether blocks `[b, b + n)` include a superblock slot or a group's bitmap slot.
    fn covers_fixed(&self, b: u64, n: u64) -> bool {
        let gb = self.sb.group_blocks as u64;
        if b < SLOTS {
            return true;
        }
        let end = b + n;
        (b / gb..=(end - 1) / gb).any(|g| {
            let s = g * gb + SLOTS;
            s < end && s + 2 > b
        })
    }

    /// Follows the fsync log chain as mount would and checks each record: its layout, the
    /// blocks it maps inside the filesystem, its inode a file. The chain's blocks and the data
    /// it maps are free in the durable bitmaps (the replay claims them), so pass 2 does not
    /// mark them.
    fn check_log(&mut self, blk: &mut [u8]) -> Result<()> {
        let csums = self.sb.flags & FLAG_DATA_CSUM != 0;
        let mut at = self.sb.log_root;
        let mut seq = 1u32;
        // Files the chain created so far: (inode, directory, entry offset). One creation per
        // log block at most is written, so the chain's length bounds them.
        let mut created = [(0u64, 0u64, 0u64); LOG_MAX];
        // And a 64-bit digest of each one's name: two creations of one name in one directory
        // share the entry offset's hash but not the slot (replay refuses the second).
        let mut digests = [0u64; LOG_MAX];
        let mut ncreated = 0;
        while at != 0 && (seq as usize) <= LOG_MAX {
            if at < SLOTS || at >= self.sb.block_count {
                break;
            }
            self.read(at, blk)?;
            let Some(lb) = log::validate(blk, at, &self.sb, seq) else {
                break;
            };
            self.r.log_blocks += 1;
            let mut o = log::LOG_HDR;
            for _ in 0..lb.count {
                let (rec, next) = match log::record(blk, o, lb.end, csums) {
                    Ok(x) => x,
                    Err(what) => {
                        self.problem(Problem::Log { block: at, what });
                        break;
                    }
                };
                o = next;
                self.r.log_records += 1;
                let ino = match rec {
                    log::Record::Inode { ino, value } => {
                        if value[0] != FILE {
                            self.problem(Problem::Log {
                                block: at,
                                what: "log inode record not of a file",
                            });
                        }
                        ino
                    }
                    log::Record::Range {
                        ino, count, phys, ..
                    } => {
                        if phys != 0
                            && (phys < SLOTS
                                || phys
                                    .checked_add(count)
                                    .is_none_or(|e| e > self.sb.block_count))
                        {
                            self.problem(Problem::Log {
                                block: at,
                                what: "log range outside the filesystem",
                            });
                        } else if phys != 0 && self.covers_fixed(phys, count) {
                            self.problem(Problem::Log {
                                block: at,
                                what: "log range over a superblock or bitmap slot",
                            });
                        }
                        ino
                    }
                    log::Record::Create {
                        ino,
                        dir,
                        offset,
                        inode,
                        dir_inode,
                        name,
                        len,
                    } => {
                        let what = match created[..ncreated].iter().find(|c| c.0 == ino) {
                            Some(&c) if c == (ino, dir, offset) => None,
                            Some(_) => Some("log creates a file twice differently"),
                            None if created[..ncreated]
                                .iter()
                                .any(|c| c.1 == dir && c.2 == offset) =>
                            {
                                Some("log creates two files in one entry slot")
                            }
                            None if ncreated == LOG_MAX => Some("log creates too many files"),
                            None if created[..ncreated].iter().zip(&digests).any(|(c, &d)| {
                                c.1 == dir
                                    && c.2 >> 16 == offset >> 16
                                    && d == name_digest(&name[..len])
                            }) =>
                            {
                                Some("log creates one name in two entry slots")
                            }
                            None => {
                                created[ncreated] = (ino, dir, offset);
                                digests[ncreated] = name_digest(&name[..len]);
                                ncreated += 1;
                                self.check_create(
                                    ino,
                                    dir,
                                    offset,
                                    &inode,
                                    &dir_inode,
                                    &name[..len],
                                )?
                            }
                        };
                        if let Some(what) = what {
                            self.problem(Problem::Log { block: at, what });
                        }
                        continue;
                    }
                };
                if created[..ncreated].iter().any(|c| c.0 == ino) {
                    continue;
                }
                let mut v = [0u8; 40];
                match self
                    .tree
                    .get(self.dev, &Key::new(ino, kind::INODE, 0), &mut v)
                {
                    Ok(Some(40)) if v[0] == 1 => {}
                    Ok(_) | Err(FsError::Corrupt { .. }) => self.problem(Problem::Log {
                        block: at,
                        what: "log record of an inode that is not a file",
                    }),
                    Err(e) => return Err(e),
                }
            }
            at = lb.next;
            seq += 1;
        }
        Ok(())
    }

    /// Checks a creation record of the log against the durable tree as replay would take it
    /// (`Volume::apply_create`): what is wrong, if anything.
    fn check_create(
        &mut self,
        ino: u64,
        dir: u64,
        offset: u64,
        inode: &[u8; INODE_SIZE],
        dir_inode: &[u8; INODE_SIZE],
        name: &[u8],
    ) -> Result<Option<&'static str>> {
        let nlink = |v: &[u8]| u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
        if !valid_name(name) || crc32c(name) as u64 != offset >> 16 {
            return Ok(Some("log creation with a name not matching its entry"));
        }
        if inode[0] != FILE || nlink(inode) != 1 || dir_inode[0] != DIR {
            return Ok(Some("log creation with inodes of the wrong kind"));
        }
        if ino < self.sb.next_ino || ino == u64::MAX || dir >= self.sb.next_ino {
            return Ok(Some("log creation of an inode number in use"));
        }
        let mut v = [0u8; INODE_SIZE];
        match self
            .tree
            .get(self.dev, &Key::new(dir, kind::INODE, 0), &mut v)
        {
            Ok(Some(INODE_SIZE)) if v[0] == DIR && nlink(&v) == nlink(dir_inode) => {}
            Ok(_) | Err(FsError::Corrupt { .. }) => {
                return Ok(Some("log creation in a directory that changed"));
            }
            Err(e) => return Err(e),
        }
        // The slot free and the name in no other slot of its hash.
        let base = offset >> 16 << 16;
        let mut from = Key::new(dir, kind::DIRENT, base);
        let mut e = [0u8; DIRENT_HDR + NAME_MAX];
        loop {
            let (k, n) = match self.tree.next(self.dev, &from, &mut e) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(FsError::Corrupt { .. }) => {
                    return Ok(Some("log creation in a directory that does not read"));
                }
                Err(e) => return Err(e),
            };
            if k.id != dir || k.kind != kind::DIRENT || k.offset > base | 0xffff {
                break;
            }
            if k.offset == offset {
                return Ok(Some("log creation in an entry slot in use"));
            }
            if n <= e.len() && &e[DIRENT_HDR.min(n)..n] == name {
                return Ok(Some("log creation of a name in use"));
            }
            match k.successor() {
                Some(s) => from = s,
                None => break,
            }
        }
        Ok(None)
    }

    /// Compares group `g`'s durable bitmap with the marks; returns its free blocks.
    fn compare_group(&mut self, g: u64, base: u64, bits: &[u8], blk: &mut [u8]) -> Result<u64> {
        let gb = self.sb.group_blocks as u64;
        let start = g * gb;
        let len = (self.sb.block_count - start).min(gb);
        let marked = |x: u64| get_bit(bits, x - base);
        let s = (g / SELECTOR_BITS) as usize;
        let sel = self.sb.selectors[s];
        let mut slot = 0;
        if sel != 0 {
            self.read(sel, blk)?;
            match node::check_header(blk, KIND_SELECTOR, sel) {
                Ok(gen_) if gen_ <= self.sb.generation => {
                    slot = u64::from(get_bit(&blk[HDR..], g % SELECTOR_BITS));
                }
                Ok(_) => {
                    self.problem(Problem::FreeSpace {
                        block: sel,
                        what: "selector newer than the superblock",
                    });
                    return Ok(0);
                }
                Err(what) => {
                    self.problem(Problem::FreeSpace { block: sel, what });
                    return Ok(0);
                }
            }
        }
        let at = start + SLOTS + slot;
        self.read(at, blk)?;
        let what = match node::check_header(blk, KIND_BITMAP, at) {
            Err(what) => Some(what),
            Ok(gen_) if gen_ > self.sb.generation => Some("bitmap newer than the superblock"),
            Ok(_) if rd32(blk, 24) as u64 != g => Some("bitmap of another group"),
            Ok(_) => None,
        };
        if let Some(what) = what {
            self.problem(Problem::FreeSpace { block: at, what });
            return Ok(0);
        }
        let mut free = 0;
        for x in start..start + len {
            let used = get_bit(&blk[HDR..], x - start);
            free += u64::from(!used);
            match (used, marked(x)) {
                (true, false) => self.problem(Problem::Leaked { block: x }),
                (false, true) => self.problem(Problem::MarkedFree { block: x }),
                _ => {}
            }
        }
        if free != rd32(blk, 28) as u64 {
            self.problem(Problem::FreeSpace {
                block: at,
                what: "bitmap free count does not match its bits",
            });
        }
        Ok(free)
    }

    fn read(&mut self, block: u64, buf: &mut [u8]) -> Result<()> {
        self.dev
            .read(block, buf)
            .map_err(|e| FsError::io(IoOp::ReadNode, e))
    }

    fn walk(&mut self, pass: &mut Pass<'_>, path: &mut [u8]) -> Result<()> {
        self.r.walks += 1;
        self.last = None;
        let (root, lvl, g) = (self.sb.root, self.sb.height - 1, self.sb.generation);
        self.node(pass, path, root, lvl, g, Key::MIN, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        pass: &mut Pass<'_>,
        path: &mut [u8],
        block: u64,
        level: u8,
        max_gen: u64,
        lo: Key,
        hi: Option<Key>,
    ) -> Result<()> {
        let items = matches!(pass, Pass::Items);
        if block < SLOTS || block >= self.sb.block_count {
            if items {
                self.problem(Problem::Node {
                    block,
                    what: "node outside the filesystem",
                });
            }
            return Ok(());
        }
        self.mark(pass, block, 1);
        if items {
            self.past_ready(block, 1);
        }
        let b = &mut path[..BLOCK_SIZE];
        self.read(block, b)?;
        let what = match node::check(b, block) {
            Err(what) => Some(what),
            Ok(_) if node::level(b) != level => Some("node at the wrong level"),
            Ok(gen_) if gen_ > max_gen => Some("node newer than its parent"),
            Ok(_) => {
                let n = node::nitems(b);
                if n > 0 && (node::key(b, 0) < lo || hi.is_some_and(|h| node::key(b, n - 1) >= h)) {
                    Some("key outside the range its parent gives")
                } else {
                    None
                }
            }
        };
        if let Some(what) = what {
            if items {
                self.problem(Problem::Node { block, what });
            }
            return Ok(());
        }
        if items {
            self.r.nodes += 1;
        }
        let n = node::nitems(b);
        if level == 0 {
            for i in 0..n {
                let k = node::key(b, i);
                if self.last.is_some_and(|l| k <= l) {
                    if items {
                        self.item_problem(block, k, "key not after the previous leaf's");
                    }
                    continue;
                }
                self.last = Some(k);
                self.item(pass, block, k, node::value(b, i))?;
            }
            return Ok(());
        }
        let g = node::generation(b);
        for i in 0..n {
            let (b, below) = path.split_at_mut(BLOCK_SIZE);
            let c = node::child(b, i);
            let clo = node::key(b, i);
            let chi = if i + 1 < n {
                Some(node::key(b, i + 1))
            } else {
                hi
            };
            self.node(pass, below, c, level - 1, g, clo, chi)?;
        }
        Ok(())
    }

    fn item(&mut self, pass: &mut Pass<'_>, block: u64, k: Key, v: &[u8]) -> Result<()> {
        match pass {
            Pass::Items => self.check_item(block, k, v),
            Pass::Mark { loops, .. } => {
                if k.kind == kind::EXTENT && v.len() == EXTENT_SIZE {
                    let (start, phys) = (rd64(v, 0), rd64(v, 8));
                    if start < k.offset {
                        self.mark(pass, phys, k.offset - start);
                    }
                } else if *loops && k.kind == kind::PARENT && v.len() == 8 {
                    self.check_loop(block, k)?;
                }
                Ok(())
            }
        }
    }

    /// A directory's parents lead to the root within as many steps as there are directories.
    fn check_loop(&mut self, block: u64, k: Key) -> Result<()> {
        let mut ib = [0u8; INODE_SIZE];
        match self
            .tree
            .get(self.dev, &Key::new(k.id, kind::INODE, 0), &mut ib)
        {
            Ok(Some(INODE_SIZE)) if ib[0] == DIR => {}
            _ => return Ok(()),
        }
        let mut x = k.offset;
        for _ in 0..=self.dirs {
            if x == ROOT {
                return Ok(());
            }
            match self
                .tree
                .next(self.dev, &Key::new(x, kind::PARENT, 0), &mut [])
            {
                Ok(Some((p, _))) if p.id == x && p.kind == kind::PARENT => x = p.offset,
                _ => return Ok(()),
            }
        }
        self.problem(Problem::Inode {
            ino: k.id,
            block,
            what: "directory not reachable from the root (a loop of parents)",
        });
        Ok(())
    }

    fn finish_inode(&mut self) {
        let c = self.cur;
        if !c.have {
            return;
        }
        let bad = |what| Problem::Inode {
            ino: c.ino,
            block: c.block,
            what,
        };
        if c.ino == ROOT {
            self.root = true;
            if c.kind != DIR {
                self.problem(bad("root is not a directory"));
            } else if c.parents != 0 {
                self.problem(bad("root has a directory entry"));
            }
        } else if c.parents == 0 && c.kind == FILE && c.nlink == 0 {
            // Unlinked, its blocks being freed: the orphan list must name it.
            let key = Key::new(ORPHANS, kind::ORPHAN, c.ino);
            if !matches!(self.tree.get(self.dev, &key, &mut []), Ok(Some(0))) {
                self.problem(bad("unlinked file not on the orphan list"));
            }
            return;
        } else if c.parents == 0 {
            self.problem(bad("orphan: no directory entry names it"));
        } else if c.parents > 1 {
            self.problem(bad("more than one directory entry names it"));
        }
        let want = if c.kind == DIR { 2 + c.subdirs } else { 1 };
        if c.nlink as u64 != want {
            self.problem(bad("wrong link count"));
        }
    }

    fn check_item(&mut self, block: u64, k: Key, v: &[u8]) -> Result<()> {
        self.r.items += 1;
        if k.id == ORPHANS {
            if k.kind != kind::ORPHAN || !v.is_empty() {
                self.item_problem(block, k, "unknown item under the orphan list");
                return Ok(());
            }
            let mut ib = [0u8; INODE_SIZE];
            match self
                .tree
                .get(self.dev, &Key::new(k.offset, kind::INODE, 0), &mut ib)
            {
                Ok(Some(INODE_SIZE)) if ib[0] == FILE && rd32(&ib, 4) == 0 => {}
                Ok(_) | Err(FsError::Corrupt { .. }) => {
                    self.item_problem(
                        block,
                        k,
                        "orphan item of an inode that is not an unlinked file",
                    );
                }
                Err(e) => return Err(e),
            }
            return Ok(());
        }
        if k.id != self.cur.ino || !self.cur.have {
            if k.id != self.cur.ino {
                self.finish_inode();
                self.cur = Cur {
                    ino: k.id,
                    ..Cur::default()
                };
            }
            if k.kind != kind::INODE {
                self.item_problem(block, k, "item of an inode that does not exist");
                return Ok(());
            }
        }
        if k.id < ROOT || k.id >= self.sb.next_ino {
            self.item_problem(block, k, "inode number never handed out");
            return Ok(());
        }
        match k.kind {
            kind::INODE => {
                if k.offset != 0 || v.len() != INODE_SIZE {
                    return self.item_bad(block, k, "inode item of the wrong layout");
                }
                if v[0] != FILE && v[0] != DIR {
                    return self.item_bad(block, k, "unknown inode kind");
                }
                self.r.inodes += 1;
                self.dirs += u64::from(v[0] == DIR);
                self.cur.have = true;
                self.cur.kind = v[0];
                self.cur.nlink = rd32(v, 4);
                self.cur.size = rd64(v, 8);
                self.cur.block = block;
            }
            kind::DIRENT => self.check_dirent(block, k, v)?,
            kind::PARENT => self.check_parent(block, k, v)?,
            kind::EXTENT => self.check_extent(block, k, v)?,
            kind::CSUM => {
                if self.sb.flags & FLAG_DATA_CSUM == 0 {
                    self.item_problem(block, k, "checksum item without data checksums");
                } else if v.len() != CSUM_ITEM
                    || !k.offset.is_multiple_of(CSUMS)
                    || self.cur.kind != FILE
                {
                    self.item_problem(block, k, "checksum item of the wrong layout");
                }
            }
            _ => self.item_problem(block, k, "unknown item kind"),
        }
        Ok(())
    }

    fn check_dirent(&mut self, block: u64, k: Key, v: &[u8]) -> Result<()> {
        if self.cur.kind != DIR {
            return self.item_bad(block, k, "directory entry in a file");
        }
        if v.len() <= DIRENT_HDR || !valid_name(&v[DIRENT_HDR..]) {
            return self.item_bad(block, k, "directory entry of the wrong layout");
        }
        if crc32c(&v[DIRENT_HDR..]) as u64 != k.offset >> 16 {
            return self.item_bad(block, k, "name does not match its hash");
        }
        let (child, ck) = (rd64(v, 0), v[8]);
        if ck != FILE && ck != DIR {
            return self.item_bad(block, k, "directory entry of an unknown kind");
        }
        if child <= ROOT || child >= self.sb.next_ino {
            return self.item_bad(block, k, "entry names an inode never handed out");
        }
        self.cur.subdirs += u64::from(ck == DIR);
        let mut b = [0u8; 8];
        match self
            .tree
            .get(self.dev, &Key::new(child, kind::PARENT, k.id), &mut b)
        {
            Ok(Some(8)) if u64::from_le_bytes(b) == k.offset => {}
            Ok(_) => self.item_problem(block, k, "entry without its back reference"),
            Err(FsError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn check_parent(&mut self, block: u64, k: Key, v: &[u8]) -> Result<()> {
        if v.len() != 8 {
            return self.item_bad(block, k, "back reference of the wrong layout");
        }
        self.cur.parents += 1;
        let mut b = [0u8; DIRENT_HDR];
        let key = Key::new(k.offset, kind::DIRENT, rd64(v, 0));
        match self.tree.get(self.dev, &key, &mut b) {
            Ok(Some(n)) if n > DIRENT_HDR && rd64(&b, 0) == k.id => {
                if b[8] != self.cur.kind {
                    self.item_problem(block, k, "entry's kind differs from the inode's");
                }
            }
            Ok(_) => self.item_problem(block, k, "back reference without its entry"),
            Err(FsError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn check_extent(&mut self, block: u64, k: Key, v: &[u8]) -> Result<()> {
        if self.cur.kind != FILE || v.len() != EXTENT_SIZE {
            return self.item_bad(block, k, "extent item of the wrong layout");
        }
        let (start, phys, end) = (rd64(v, 0), rd64(v, 8), k.offset);
        if start >= end || start < self.cur.ext_end {
            return self.item_bad(block, k, "extent overlaps the file's previous one");
        }
        self.cur.ext_end = end;
        if end > self.cur.size.div_ceil(BS) {
            self.item_problem(block, k, "extent past the end of the file");
        }
        let fits = phys
            .checked_add(end - start)
            .is_some_and(|e| e <= self.sb.block_count);
        if phys < SLOTS || !fits {
            return self.item_bad(block, k, "extent outside the filesystem");
        }
        self.past_ready(phys, end - start);
        if self.sb.flags & FLAG_DATA_CSUM == 0 {
            return Ok(());
        }
        let mut c = [0u8; CSUM_ITEM];
        let mut fb = start;
        while fb < end {
            let base = fb / CSUMS * CSUMS;
            let stop = (base + CSUMS).min(end);
            let key = Key::new(self.cur.ino, kind::CSUM, base);
            let ok = match self.tree.get(self.dev, &key, &mut c) {
                Ok(Some(CSUM_ITEM)) => (fb..stop).all(|x| rd32(&c, 4 * (x - base) as usize) != 0),
                Ok(_) => false,
                Err(FsError::Corrupt { .. }) => true,
                Err(e) => return Err(e),
            };
            if !ok {
                return self.item_bad(block, k, "mapped block without a data checksum");
            }
            fb = stop;
        }
        Ok(())
    }
}
