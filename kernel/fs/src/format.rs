//! On-disk format, version 1 (`docs/tinyfs-format.md`): constants, encoding and validating
//! decoding of superblocks, inode-table blocks, inodes and extents.
//!
//! Decoders never trust the disk: every field is range-checked and every failure is a
//! `&'static str` naming what was wrong, turned into `FsError::Corrupt` by the caller.

use crate::crc::crc32c;
use crate::error::FsError;

/// Bytes per block.
pub const BLOCK_SIZE: usize = 4096;
/// Sectors of 512 bytes per block.
pub const SECTORS_PER_BLOCK: u64 = (BLOCK_SIZE / 512) as u64;
/// `T F S 1`.
pub const MAGIC: u32 = 0x3153_4654;
/// Format version.
pub const VERSION: u16 = 1;
/// Header kind of a superblock.
pub const KIND_SUPER: u16 = 1;
/// Header kind of an inode-table block.
pub const KIND_INODES: u16 = 2;
/// Size of the common metadata header.
pub const HDR_SIZE: usize = 32;
/// Offset of the CRC32C trailer.
pub const CRC_OFF: usize = BLOCK_SIZE - 4;
/// Blocks holding superblock slots (0 and 1).
pub const SUPER_BLOCKS: u64 = 2;
/// Bytes per on-disk inode.
pub const INODE_SIZE: usize = 256;
/// Inodes per inode-table block.
pub const INODES_PER_BLOCK: usize = 15;
/// Longest name in bytes.
pub const NAME_MAX: usize = 56;
/// Extents stored in an inode.
pub const EXTENTS_PER_INODE: usize = 11;
/// Most inode-table blocks a superblock can point to.
pub const MAX_INODE_BLOCKS: usize = 64;
/// Largest file, in blocks.
pub const MAX_FILE_BLOCKS: u64 = 1 << 28;
/// Largest file, in bytes (1 TiB).
pub const MAX_FILE_SIZE: u64 = MAX_FILE_BLOCKS * BLOCK_SIZE as u64;
/// The root directory's inode number.
pub const ROOT_INO: u32 = 0;
/// Generations are below this (a superblock claiming more is invalid, and the commit that
/// would reach it is refused): the counter never wraps.
pub const GENERATION_LIMIT: u64 = 1 << 63;

const SB_BLOCK_COUNT: usize = 32;
const SB_INODE_BLOCKS: usize = 40;
const SB_TABLE: usize = 64;

/// One block of bytes.
pub type Block = [u8; BLOCK_SIZE];

fn rd16(b: &Block, o: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[o..o + 2]);
    u16::from_le_bytes(a)
}
fn rd32(b: &Block, o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn rd64(b: &Block, o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn wr16(b: &mut Block, o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr32(b: &mut Block, o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr64(b: &mut Block, o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The common header of a metadata block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Block kind.
    pub kind: u16,
    /// Generation of the commit that wrote the block.
    pub generation: u64,
    /// Where the block was written.
    pub self_block: u64,
    /// Inode-table position.
    pub index: u32,
}

/// Writes header fields into a zeroed `b`; call [`seal`] after the body.
pub fn put_header(b: &mut Block, h: Header) {
    wr32(b, 0, MAGIC);
    wr16(b, 4, h.kind);
    wr16(b, 6, VERSION);
    wr64(b, 8, h.generation);
    wr64(b, 16, h.self_block);
    wr32(b, 24, h.index);
    wr32(b, 28, 0);
}

/// Stores the CRC32C trailer.
pub fn seal(b: &mut Block) {
    let c = crc32c(&b[..CRC_OFF]);
    wr32(b, CRC_OFF, c);
}

/// Checks magic, version, kind, CRC and the self block number.
pub fn check_header(b: &Block, kind: u16, at: u64) -> Result<Header, &'static str> {
    if rd32(b, 0) != MAGIC {
        return Err("bad magic");
    }
    if rd32(b, CRC_OFF) != crc32c(&b[..CRC_OFF]) {
        return Err("checksum mismatch");
    }
    if rd16(b, 6) != VERSION {
        return Err("unsupported version");
    }
    let h = Header {
        kind: rd16(b, 4),
        generation: rd64(b, 8),
        self_block: rd64(b, 16),
        index: rd32(b, 24),
    };
    if h.kind != kind {
        return Err("wrong block kind");
    }
    if h.self_block != at {
        return Err("block written to the wrong place");
    }
    if rd32(b, 28) != 0 {
        return Err("reserved header field not zero");
    }
    Ok(h)
}

/// The generation a superblock slot claims in its header, read without trusting the rest of
/// the block: `Some` when magic and kind are those of a superblock and the generation belongs
/// in slot `at`, whatever the checksum says. Tells a torn or damaged newer superblock from an
/// older one.
pub fn claimed_generation(b: &Block, at: u64) -> Option<u64> {
    let generation = rd64(b, 8);
    (rd32(b, 0) == MAGIC && rd16(b, 4) == KIND_SUPER && Superblock::slot_of(generation) == at)
        .then_some(generation)
}

/// A decoded superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Filesystem generation.
    pub generation: u64,
    /// Filesystem size in blocks.
    pub block_count: u64,
    /// Inode-table blocks in use.
    pub inode_blocks: u32,
    /// Where inode-table block `i` lives.
    pub table: [u64; MAX_INODE_BLOCKS],
}

impl Superblock {
    /// Number of inodes.
    pub fn inode_count(&self) -> usize {
        self.inode_blocks as usize * INODES_PER_BLOCK
    }

    /// The slot generation `g` is written to.
    pub fn slot_of(generation: u64) -> u64 {
        generation % 2
    }

    /// Encodes into `b` (written to slot `slot_of(generation)`).
    pub fn encode(&self, b: &mut Block) {
        b.fill(0);
        let at = Self::slot_of(self.generation);
        put_header(
            b,
            Header {
                kind: KIND_SUPER,
                generation: self.generation,
                self_block: at,
                index: 0,
            },
        );
        wr64(b, SB_BLOCK_COUNT, self.block_count);
        wr32(b, SB_INODE_BLOCKS, self.inode_blocks);
        for (i, &p) in self.table.iter().enumerate() {
            wr64(b, SB_TABLE + 8 * i, p);
        }
        seal(b);
    }

    /// Decodes and validates a superblock read from slot `at`.
    pub fn decode(b: &Block, at: u64) -> Result<Superblock, &'static str> {
        let h = check_header(b, KIND_SUPER, at)?;
        if Self::slot_of(h.generation) != at {
            return Err("generation in the wrong slot");
        }
        if h.generation >= GENERATION_LIMIT {
            return Err("generation out of range");
        }
        if h.index != 0 {
            return Err("superblock index not zero");
        }
        let block_count = rd64(b, SB_BLOCK_COUNT);
        let inode_blocks = rd32(b, SB_INODE_BLOCKS);
        if inode_blocks == 0 || inode_blocks as usize > MAX_INODE_BLOCKS {
            return Err("inode block count out of range");
        }
        if block_count < SUPER_BLOCKS + inode_blocks as u64 + 1 {
            return Err("filesystem too small for its inode table");
        }
        if rd32(b, 44) != 0 || b[48..64].iter().any(|&x| x != 0) {
            return Err("reserved superblock field not zero");
        }
        let mut table = [0u64; MAX_INODE_BLOCKS];
        for (i, t) in table.iter_mut().enumerate() {
            let p = rd64(b, SB_TABLE + 8 * i);
            if i < inode_blocks as usize {
                if p < SUPER_BLOCKS || p >= block_count {
                    return Err("inode table block out of range");
                }
            } else if p != 0 {
                return Err("unused inode table pointer not zero");
            }
            *t = p;
        }
        if b[SB_TABLE + 8 * MAX_INODE_BLOCKS..CRC_OFF]
            .iter()
            .any(|&x| x != 0)
        {
            return Err("reserved superblock area not zero");
        }
        Ok(Superblock {
            generation: h.generation,
            block_count,
            inode_blocks,
            table,
        })
    }
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Unused slot.
    Free,
    /// Regular file.
    File,
    /// Directory.
    Dir,
}

/// A run of file blocks mapped to device blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Extent {
    /// First file block.
    pub fblock: u32,
    /// Number of blocks.
    pub len: u32,
    /// First device block.
    pub phys: u64,
}

impl Extent {
    /// One past the last file block.
    pub fn fend(&self) -> u64 {
        self.fblock as u64 + self.len as u64
    }
}

/// An inode in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Kind.
    pub kind: Kind,
    /// Containing directory.
    pub parent: u32,
    /// Size in bytes.
    pub size: u64,
    /// Generation of the commit that last changed it.
    pub mtime_gen: u64,
    /// Name length.
    pub name_len: u8,
    /// Name bytes.
    pub name: [u8; NAME_MAX],
    /// Number of valid extents.
    pub nextents: u16,
    /// Extents.
    pub extents: [Extent; EXTENTS_PER_INODE],
}

impl Inode {
    /// A free inode.
    pub const FREE: Inode = Inode {
        kind: Kind::Free,
        parent: 0,
        size: 0,
        mtime_gen: 0,
        name_len: 0,
        name: [0; NAME_MAX],
        nextents: 0,
        extents: [Extent {
            fblock: 0,
            len: 0,
            phys: 0,
        }; EXTENTS_PER_INODE],
    };

    /// The name bytes.
    pub fn name(&self) -> &[u8] {
        &self.name[..(self.name_len as usize).min(NAME_MAX)]
    }

    /// The valid extents.
    pub fn extents(&self) -> &[Extent] {
        &self.extents[..(self.nextents as usize).min(EXTENTS_PER_INODE)]
    }

    /// Blocks mapped by extents.
    pub fn mapped_blocks(&self) -> u64 {
        self.extents().iter().map(|e| e.len as u64).sum()
    }

    fn encode(&self, b: &mut Block, off: usize) {
        let k = match self.kind {
            Kind::Free => return,
            Kind::File => 1,
            Kind::Dir => 2,
        };
        b[off] = k;
        b[off + 1] = self.name_len;
        wr16(b, off + 2, self.nextents);
        wr32(b, off + 4, self.parent);
        wr64(b, off + 8, self.size);
        wr64(b, off + 16, self.mtime_gen);
        b[off + 24..off + 24 + NAME_MAX].copy_from_slice(&self.name);
        for (i, e) in self.extents().iter().enumerate() {
            let o = off + 80 + 16 * i;
            wr32(b, o, e.fblock);
            wr32(b, o + 4, e.len);
            wr64(b, o + 8, e.phys);
        }
    }

    /// Decodes inode `ino` at `off` and checks the rules that need no other inode.
    fn decode(
        b: &Block,
        off: usize,
        ino: u32,
        ninodes: u32,
        block_count: u64,
    ) -> Result<Inode, &'static str> {
        let raw = &b[off..off + INODE_SIZE];
        let kind = match raw[0] {
            0 => {
                if raw.iter().any(|&x| x != 0) {
                    return Err("free inode not zeroed");
                }
                return Ok(Inode::FREE);
            }
            1 => Kind::File,
            2 => Kind::Dir,
            _ => return Err("unknown inode kind"),
        };
        let mut n = Inode::FREE;
        n.kind = kind;
        n.name_len = raw[1];
        n.nextents = rd16(b, off + 2);
        n.parent = rd32(b, off + 4);
        n.size = rd64(b, off + 8);
        n.mtime_gen = rd64(b, off + 16);
        n.name.copy_from_slice(&raw[24..24 + NAME_MAX]);
        if ino == ROOT_INO {
            if kind != Kind::Dir || n.parent != ROOT_INO || n.name_len != 0 {
                return Err("bad root inode");
            }
        } else {
            if n.parent >= ninodes || n.parent == ino {
                return Err("parent out of range");
            }
            check_name(n.name()).map_err(|_| "invalid name")?;
        }
        if n.name_len as usize > NAME_MAX {
            return Err("name too long");
        }
        if n.name[n.name_len as usize..].iter().any(|&x| x != 0) {
            return Err("name padding not zero");
        }
        if n.nextents as usize > EXTENTS_PER_INODE {
            return Err("too many extents");
        }
        if n.size > MAX_FILE_SIZE {
            return Err("file too large");
        }
        if kind == Kind::Dir && (n.size != 0 || n.nextents != 0) {
            return Err("directory with size or extents");
        }
        let size_blocks = n.size.div_ceil(BLOCK_SIZE as u64);
        let mut prev_end = 0u64;
        for i in 0..EXTENTS_PER_INODE {
            let o = off + 80 + 16 * i;
            let e = Extent {
                fblock: rd32(b, o),
                len: rd32(b, o + 4),
                phys: rd64(b, o + 8),
            };
            if i >= n.nextents as usize {
                if e != Extent::default() {
                    return Err("unused extent not zero");
                }
                continue;
            }
            if e.len == 0 {
                return Err("empty extent");
            }
            if (e.fblock as u64) < prev_end && i > 0 {
                return Err("extents unsorted or overlapping");
            }
            if e.fend() > size_blocks || e.fend() > MAX_FILE_BLOCKS {
                return Err("extent past end of file");
            }
            let pend = e
                .phys
                .checked_add(e.len as u64)
                .ok_or("extent address overflow")?;
            if e.phys < SUPER_BLOCKS || pend > block_count {
                return Err("extent outside the filesystem");
            }
            prev_end = e.fend();
            n.extents[i] = e;
        }
        Ok(n)
    }
}

/// Checks a single name component (format rules).
pub fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(FsError::InvalidName);
    }
    Ok(())
}

/// Encodes inode-table block `index` (inodes `index*15 ..`) written at `at`.
pub fn encode_inode_block(
    b: &mut Block,
    inodes: &[Inode; INODES_PER_BLOCK],
    index: u32,
    generation: u64,
    at: u64,
) {
    b.fill(0);
    put_header(
        b,
        Header {
            kind: KIND_INODES,
            generation,
            self_block: at,
            index,
        },
    );
    for (i, n) in inodes.iter().enumerate() {
        n.encode(b, HDR_SIZE + INODE_SIZE * i);
    }
    seal(b);
}

/// Decodes inode-table block `index` read from `at`; `sb` is the referencing superblock.
/// On failure returns the slot that failed (or `None` for the block as a whole) and why.
pub fn decode_inode_block(
    b: &Block,
    index: u32,
    at: u64,
    sb: &Superblock,
    out: &mut [Inode; INODES_PER_BLOCK],
    report: &mut dyn FnMut(Option<u32>, &'static str),
) -> bool {
    let h = match check_header(b, KIND_INODES, at) {
        Ok(h) => h,
        Err(e) => {
            report(None, e);
            return false;
        }
    };
    let mut ok = true;
    if h.index != index {
        report(None, "inode block index mismatch");
        ok = false;
    }
    if h.generation > sb.generation {
        report(None, "inode block newer than its superblock");
        ok = false;
    }
    if b[HDR_SIZE + INODE_SIZE * INODES_PER_BLOCK..CRC_OFF]
        .iter()
        .any(|&x| x != 0)
    {
        report(None, "inode block padding not zero");
        ok = false;
    }
    let ninodes = sb.inode_count() as u32;
    for (i, slot) in out.iter_mut().enumerate() {
        let ino = index * INODES_PER_BLOCK as u32 + i as u32;
        match Inode::decode(b, HDR_SIZE + INODE_SIZE * i, ino, ninodes, sb.block_count) {
            Ok(n) => *slot = n,
            Err(e) => {
                report(Some(ino), e);
                *slot = Inode::FREE;
                ok = false;
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip() {
        let mut t = [0u64; MAX_INODE_BLOCKS];
        t[0] = 2;
        t[1] = 7;
        let sb = Superblock {
            generation: 5,
            block_count: 100,
            inode_blocks: 2,
            table: t,
        };
        let mut b = [0u8; BLOCK_SIZE];
        sb.encode(&mut b);
        assert_eq!(Superblock::decode(&b, 1), Ok(sb));
        assert!(Superblock::decode(&b, 0).is_err());
        b[100] ^= 1;
        assert_eq!(Superblock::decode(&b, 1), Err("checksum mismatch"));
        // A generation the counter could wrap from (found by the image fuzzer: a commit on it
        // wrapped to generation 0, and the next mount used the old superblock again).
        for g in [GENERATION_LIMIT + 1, u64::MAX] {
            let huge = Superblock {
                generation: g,
                ..sb
            };
            huge.encode(&mut b);
            assert_eq!(Superblock::decode(&b, 1), Err("generation out of range"));
        }
    }

    #[test]
    fn inode_block_round_trip() {
        let mut t = [0u64; MAX_INODE_BLOCKS];
        t[0] = 2;
        let sb = Superblock {
            generation: 3,
            block_count: 100,
            inode_blocks: 1,
            table: t,
        };
        let mut inodes = [Inode::FREE; INODES_PER_BLOCK];
        inodes[0].kind = Kind::Dir;
        inodes[3].kind = Kind::File;
        inodes[3].name_len = 3;
        inodes[3].name[..3].copy_from_slice(b"abc");
        inodes[3].size = 5000;
        inodes[3].nextents = 1;
        inodes[3].extents[0] = Extent {
            fblock: 1,
            len: 1,
            phys: 9,
        };
        let mut b = [0u8; BLOCK_SIZE];
        encode_inode_block(&mut b, &inodes, 0, 3, 2);
        let mut out = [Inode::FREE; INODES_PER_BLOCK];
        assert!(decode_inode_block(&b, 0, 2, &sb, &mut out, &mut |_, _| {}));
        assert_eq!(out, inodes);
    }
}
