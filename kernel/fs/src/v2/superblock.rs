//! The version-2 superblock (`docs/tinyfs-format.md`, version 2, "Superblock"): the commit
//! record. Generation `g` lives in slot `g % 2` (blocks 0 and 1).

use super::node::{self, KIND_SUPER, MAX_HEIGHT, rd64, wr64};
use crate::crc::crc32c;

/// Superblock slots (blocks 0 and 1).
pub const SLOTS: u64 = 2;
/// Largest filesystem, in blocks (16 TiB of 4 KiB blocks).
pub const MAX_BLOCKS: u64 = 1 << 32;
/// Generations stay below this; a superblock claiming more is invalid.
pub const GENERATION_LIMIT: u64 = 1 << 63;
/// Most blocks a free-space group covers: the bits of one bitmap block.
pub const GROUP_BLOCKS_MAX: u32 = ((super::node::DATA_END - super::node::HDR) * 8) as u32;
/// Groups one selector block covers (one bit each).
pub const SELECTOR_BITS: u64 = GROUP_BLOCKS_MAX as u64;
/// Selector blocks a superblock points to: enough for 2^32 blocks in groups of
/// [`GROUP_BLOCKS_MAX`] (132,235 groups); smaller groups allow smaller filesystems.
pub const SELECTORS: usize = 5;
/// Fewest blocks a free-space group covers.
pub const GROUP_BLOCKS_MIN: u32 = 64;

const O_BLOCKS: usize = 32;
const O_ROOT: usize = 40;
const O_HEIGHT: usize = 48;
const O_NEXT_INO: usize = 56;
const O_FLAGS: usize = 64;
const O_FREE: usize = 72;
const O_LOG_ROOT: usize = 80;
const O_GROUP_BLOCKS: usize = 88;
const O_GROUPS_READY: usize = 96;
const O_SELECTORS: usize = 104;
const O_FSID: usize = 144;

/// Superblock flag: data blocks carry checksums.
pub const FLAG_DATA_CSUM: u64 = 1;

/// The fields of a superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// The commit this superblock records.
    pub generation: u64,
    /// Filesystem size in blocks.
    pub block_count: u64,
    /// The tree's root node.
    pub root: u64,
    /// Levels of the tree (the root's level + 1).
    pub height: u8,
    /// The next inode number to hand out.
    pub next_ino: u64,
    /// Feature flags ([`FLAG_DATA_CSUM`]).
    pub flags: u64,
    /// Free blocks, for `statfs`.
    pub free_blocks: u64,
    /// The first block of the fsync log (`docs/tinyfs-format.md`, "Fsync log"): a block this
    /// commit keeps allocated, where the first log block of this generation goes; 0 = none
    /// (then `fsync` commits).
    pub log_root: u64,
    /// Blocks per free-space group (one bitmap block each), chosen at mkfs.
    pub group_blocks: u32,
    /// Groups `0..groups_ready` have bitmap blocks; later groups are untouched (all free).
    pub groups_ready: u64,
    /// Selector blocks: bit `g % SELECTOR_BITS` of block `g / SELECTOR_BITS` names the slot
    /// holding group `g`'s durable bitmap; 0 = not written yet (every bit 0).
    pub selectors: [u64; SELECTORS],
    /// The filesystem's identity, chosen at mkfs ([`FsidSeed`]), never 0: every fsync log
    /// block carries it, so a log block left on the device by an earlier filesystem is not
    /// part of this one's chain.
    pub fsid: u64,
}

impl Superblock {
    /// The slot generation `g` is written to.
    pub const fn slot_of(generation: u64) -> u64 {
        generation % SLOTS
    }

    /// Encodes into a block (header, fields, zeros, CRC).
    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        node::put_header(
            b,
            KIND_SUPER,
            self.generation,
            Self::slot_of(self.generation),
        );
        wr64(b, O_BLOCKS, self.block_count);
        wr64(b, O_ROOT, self.root);
        b[O_HEIGHT] = self.height;
        wr64(b, O_NEXT_INO, self.next_ino);
        wr64(b, O_FLAGS, self.flags);
        wr64(b, O_FREE, self.free_blocks);
        wr64(b, O_LOG_ROOT, self.log_root);
        b[O_GROUP_BLOCKS..O_GROUP_BLOCKS + 4].copy_from_slice(&self.group_blocks.to_le_bytes());
        wr64(b, O_GROUPS_READY, self.groups_ready);
        for (i, &p) in self.selectors.iter().enumerate() {
            wr64(b, O_SELECTORS + 8 * i, p);
        }
        wr64(b, O_FSID, self.fsid);
        node::seal(b);
    }

    /// Decodes and validates the superblock read from slot `at`.
    pub fn decode(b: &[u8], at: u64) -> Result<Superblock, &'static str> {
        let generation = node::check_header(b, KIND_SUPER, at)?;
        if generation == 0 || generation >= GENERATION_LIMIT {
            return Err("generation out of range");
        }
        if Self::slot_of(generation) != at {
            return Err("generation in the wrong slot");
        }
        if b[24..32].iter().any(|&x| x != 0) {
            return Err("reserved header bytes set");
        }
        let s = Superblock {
            generation,
            block_count: rd64(b, O_BLOCKS),
            root: rd64(b, O_ROOT),
            height: b[O_HEIGHT],
            next_ino: rd64(b, O_NEXT_INO),
            flags: rd64(b, O_FLAGS),
            free_blocks: rd64(b, O_FREE),
            log_root: rd64(b, O_LOG_ROOT),
            group_blocks: u32::from_le_bytes([
                b[O_GROUP_BLOCKS],
                b[O_GROUP_BLOCKS + 1],
                b[O_GROUP_BLOCKS + 2],
                b[O_GROUP_BLOCKS + 3],
            ]),
            groups_ready: rd64(b, O_GROUPS_READY),
            selectors: core::array::from_fn(|i| rd64(b, O_SELECTORS + 8 * i)),
            fsid: rd64(b, O_FSID),
        };
        if s.fsid == 0 {
            // Images made before the identity existed (no compatibility with them).
            return Err("no filesystem identity");
        }
        if s.block_count <= SLOTS || s.block_count > MAX_BLOCKS {
            return Err("block count out of range");
        }
        if s.root < SLOTS || s.root >= s.block_count {
            return Err("root outside the filesystem");
        }
        if s.height == 0 || s.height as usize > MAX_HEIGHT {
            return Err("tree height out of range");
        }
        if s.flags & !FLAG_DATA_CSUM != 0 {
            return Err("unknown feature flags");
        }
        if s.free_blocks > s.block_count {
            return Err("free count larger than the filesystem");
        }
        if s.log_root != 0 && (s.log_root < SLOTS || s.log_root >= s.block_count) {
            return Err("log root outside the filesystem");
        }
        if !(GROUP_BLOCKS_MIN..=GROUP_BLOCKS_MAX).contains(&s.group_blocks) {
            return Err("group size out of range");
        }
        if s.groups_ready > s.groups() {
            return Err("more groups ready than the filesystem has");
        }
        if s.groups() > SELECTORS as u64 * SELECTOR_BITS {
            return Err("too many groups for the selector blocks");
        }
        if s.selectors
            .iter()
            .any(|&p| p != 0 && (p < SLOTS || p >= s.block_count))
        {
            return Err("selector block outside the filesystem");
        }
        Ok(s)
    }

    /// Free-space groups of the filesystem (the last one may be short).
    pub fn groups(&self) -> u64 {
        self.block_count.div_ceil(self.group_blocks.max(1) as u64)
    }
}

/// One step of mixing 64 bits (xor-shifts and multiplications by odd constants): a
/// bijection of `u64` in which every input bit moves about half the output bits.
const fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 29)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^ (x >> 32)
}

/// Builds the identity of a filesystem being made from what mkfs knows:
/// the caller's clock, the geometry, and what the device's superblock slots held before.
#[derive(Clone, Copy, Debug)]
pub struct FsidSeed {
    h: u64,
    previous: [u64; SLOTS as usize],
}

impl FsidSeed {
    /// Starts from the caller's clock (`now`) and the new filesystem's superblock.
    pub fn new(now: u64, sb: &Superblock) -> Self {
        let mut h = mix(now ^ 0x5446_5332_6673_6964);
        h = mix(h ^ sb.block_count);
        h = mix(h ^ ((sb.group_blocks as u64) << 32) ^ sb.flags);
        FsidSeed {
            h,
            previous: [0; SLOTS as usize],
        }
    }

    /// Mixes in the bytes superblock slot `at` holds before mkfs overwrites it, and notes
    /// the identity of the filesystem they belong to if they are a valid superblock.
    pub fn slot(&mut self, at: u64, b: &[u8]) {
        self.h = mix(self.h ^ crc32c(b) as u64 ^ (at << 32));
        if let Ok(old) = Superblock::decode(b, at) {
            self.previous[at as usize] = old.fsid;
            self.h = mix(self.h ^ old.fsid);
        }
    }

    /// The identity: never 0, and never that of a filesystem whose superblock a slot held,
    /// even when everything else mixed in (the clock, the geometry) is the same.
    pub fn fsid(&self) -> u64 {
        // `mix` is a bijection: four distinct inputs give four distinct outputs, and at most
        // three values are excluded.
        let mut k = 0;
        loop {
            let id = mix(self.h.wrapping_add(k));
            if id != 0 && !self.previous.contains(&id) {
                return id;
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BLOCK_SIZE;

    #[test]
    fn round_trip_and_slot_checks() {
        let s = Superblock {
            generation: 7,
            block_count: 1 << 32,
            root: 9,
            height: 3,
            next_ino: 17,
            flags: FLAG_DATA_CSUM,
            free_blocks: 100,
            log_root: 11,
            group_blocks: GROUP_BLOCKS_MAX,
            groups_ready: 3,
            selectors: [0, 5, 0, 0, 0],
            fsid: 0x1234_5678_9abc_def0,
        };
        let mut b = [0u8; BLOCK_SIZE];
        s.encode(&mut b);
        assert_eq!(Superblock::decode(&b, 1), Ok(s));
        assert_eq!(
            Superblock::decode(&b, 0),
            Err("block written elsewhere (self mismatch)")
        );
        let mut big = s;
        big.block_count = (1 << 32) + 1;
        big.encode(&mut b);
        assert_eq!(Superblock::decode(&b, 1), Err("block count out of range"));
        let mut bad = s;
        bad.root = 1;
        bad.encode(&mut b);
        assert_eq!(
            Superblock::decode(&b, 1),
            Err("root outside the filesystem")
        );
    }

    #[test]
    fn a_new_identity_differs_from_the_one_it_replaces() {
        // mkfs again and again over the same slots with the same clock: each identity is new
        // (never 0, never the previous one), and blank slots give one too.
        let mut sb = Superblock {
            generation: 1,
            block_count: 1024,
            root: 4,
            height: 1,
            next_ino: 17,
            flags: 0,
            free_blocks: 1000,
            log_root: 5,
            group_blocks: 128,
            groups_ready: 1,
            selectors: [0; SELECTORS],
            fsid: 0,
        };
        let mut slots = [[0u8; BLOCK_SIZE], [0u8; BLOCK_SIZE]];
        let mut seen = std::vec::Vec::new();
        for _ in 0..100 {
            let mut seed = FsidSeed::new(7, &sb);
            for (at, b) in slots.iter().enumerate() {
                seed.slot(at as u64, b);
            }
            let id = seed.fsid();
            assert_ne!(id, 0);
            assert!(!seen.contains(&id), "identity {id:#x} again");
            seen.push(id);
            sb.fsid = id;
            sb.encode(&mut slots[1]);
            slots[0].fill(0);
        }
        // The previous identity is excluded even if everything mixed in leads to it.
        let mut seed = FsidSeed::new(7, &sb);
        seed.previous = [mix(seed.h), mix(seed.h + 1)];
        let id = seed.fsid();
        assert!(id != 0 && !seed.previous.contains(&id));
        // A superblock without an identity is refused.
        sb.fsid = 0;
        sb.encode(&mut slots[1]);
        assert_eq!(
            Superblock::decode(&slots[1], 1),
            Err("no filesystem identity")
        );
    }
}
